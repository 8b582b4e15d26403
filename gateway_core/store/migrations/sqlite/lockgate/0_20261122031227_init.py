from tortoise import BaseDBAsyncClient

RUN_IN_TRANSACTION = True


async def upgrade(db: BaseDBAsyncClient) -> str:
    return """
        CREATE TABLE IF NOT EXISTS "deployments" (
    "created_at" TIMESTAMP NOT NULL,
    "updated_at" TIMESTAMP NOT NULL,
    "id" CHAR(36) NOT NULL PRIMARY KEY,
    "model_name" VARCHAR(200) NOT NULL /* The model group (client-facing model name) this deployment serves. */,
    "provider" VARCHAR(100) NOT NULL,
    "upstream_model" VARCHAR(200),
    "base_url" VARCHAR(1000),
    "api_key_encrypted" TEXT /* The upstream API key, encrypted with the gateway's secret key (Fernet); never returned. */,
    "weight" REAL NOT NULL,
    "settings" JSON NOT NULL /* Everything else of a configuration deployment: options, timeout, headers, proxy, drop_params. */,
    "enabled" INT NOT NULL
) /* A deployment managed at run time; adds to or overrides the configuration's model groups. */;
CREATE INDEX IF NOT EXISTS "idx_deployments_model_n_bccc3c" ON "deployments" ("model_name");
CREATE TABLE IF NOT EXISTS "organizations" (
    "created_at" TIMESTAMP NOT NULL,
    "updated_at" TIMESTAMP NOT NULL,
    "id" CHAR(36) NOT NULL PRIMARY KEY,
    "name" VARCHAR(200) NOT NULL UNIQUE,
    "metadata" JSON NOT NULL,
    "budget_limit" VARCHAR(40),
    "budget_period" VARCHAR(8) /* DAY: day\nMONTH: month\nTOTAL: total */,
    "parent_id" CHAR(36) REFERENCES "organizations" ("id") ON DELETE RESTRICT
);
CREATE TABLE IF NOT EXISTS "routing_rules" (
    "created_at" TIMESTAMP NOT NULL,
    "updated_at" TIMESTAMP NOT NULL,
    "id" CHAR(36) NOT NULL PRIMARY KEY,
    "pattern" VARCHAR(200) NOT NULL,
    "target" VARCHAR(200) NOT NULL,
    "priority" INT NOT NULL /* Lower runs first. */,
    "enabled" INT NOT NULL
) /* Sends model names matching ``pattern`` (exact or glob) to the model group ``target``. */;
CREATE TABLE IF NOT EXISTS "users" (
    "created_at" TIMESTAMP NOT NULL,
    "updated_at" TIMESTAMP NOT NULL,
    "id" CHAR(36) NOT NULL PRIMARY KEY,
    "email" VARCHAR(320) NOT NULL UNIQUE,
    "name" VARCHAR(200) NOT NULL,
    "role" VARCHAR(8) NOT NULL /* ADMIN: admin\nWRITE: write\nREAD: read */,
    "password_hash" VARCHAR(255) /* argon2 hash (passlib); None for users that only own keys and never log in. */,
    "is_active" INT NOT NULL,
    "last_login_at" TIMESTAMP,
    "budget_limit" VARCHAR(40),
    "budget_period" VARCHAR(8) /* DAY: day\nMONTH: month\nTOTAL: total */,
    "org_id" CHAR(36) REFERENCES "organizations" ("id") ON DELETE RESTRICT
);
CREATE TABLE IF NOT EXISTS "api_keys" (
    "created_at" TIMESTAMP NOT NULL,
    "updated_at" TIMESTAMP NOT NULL,
    "id" CHAR(36) NOT NULL PRIMARY KEY,
    "name" VARCHAR(200) NOT NULL,
    "prefix" VARCHAR(16) NOT NULL /* The first characters of the key, shown in listings so people can tell keys apart. */,
    "digest" VARCHAR(64) NOT NULL UNIQUE /* SHA-256 hex digest of the whole key; the key itself is shown once and never stored. */,
    "last_used_at" TIMESTAMP,
    "expires_at" TIMESTAMP,
    "revoked_at" TIMESTAMP,
    "allowed_models" JSON /* Model names or globs the key may use; None means every model. */,
    "scopes" JSON NOT NULL,
    "metadata" JSON NOT NULL,
    "rpm_limit" INT,
    "tpm_limit" INT,
    "max_parallel" INT,
    "budget_limit" VARCHAR(40),
    "budget_period" VARCHAR(8) /* DAY: day\nMONTH: month\nTOTAL: total */,
    "org_id" CHAR(36) REFERENCES "organizations" ("id") ON DELETE CASCADE,
    "user_id" CHAR(36) REFERENCES "users" ("id") ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS "idx_api_keys_prefix_10c459" ON "api_keys" ("prefix");
CREATE TABLE IF NOT EXISTS "aerich" (
    "id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    "version" VARCHAR(255) NOT NULL,
    "app" VARCHAR(100) NOT NULL,
    "content" JSON NOT NULL
);"""


async def downgrade(db: BaseDBAsyncClient) -> str:
    return """
        """


MODELS_STATE = (
    "eJztXG1T2zoW/isaf1mYoUyhwGXonZ0JJGyzBdIJYe/du90xiq0kGmzJV5IJ2S7//UqyHb"
    "/GjQMBE/ylJZKOJT/Psc6Ljv3DcKh1N4YC7bY8/BXNjBPwwyDQRfKPXN8OMKDnJXtUk4BD"
    "Rw+HHjbv0IzrcUMuGLSEbB9BhyPZZCNuMewJTIlsJb7jqEZqyYGYjOMmn+A/fWQKOkZigp"
    "js+M9/ZTMmNnpAPPrp3ZkjjBw7tWBsq7l1uylmnm67uem2z/VINd3QtKjjuyQe7c3EhJL5"
    "cN/H9q6SUX1jRBCTt2knbkOtMrzjqClYsWwQzEfzpdpxg41G0HcUGMavI59YCgOgZ1L/HP"
    "w9XFpimGle9QbmdWdgmkYF7CxKFO6YCAXUj8fgujEgutVQE5x9afW3Ph1tawgoF2OmOzVc"
    "xqMWhAIGohr0GGWLIYWJCUUe7bbsEdhFxYinJTPI26HobvTHKgxEDTEFsfpF4EbwrQFwQ9"
    "6g3SPOLOS+hIBB97JzPWhdflPTuZz/6Wj8WoOO6tnXrbNM61bAF5VPVvDIzS8CfusOvgD1"
    "E/zRu+pkWZ2PG/xhqDVBX1CT0KkJ7YSaRq0RanJkzLrv2SuynpZsWK8L6xFGCdrD1ces6/"
    "9zfJ9NICvmOhqfYVmi9RZ5deGD6SAyFhP5c//jxxJi/9Xq6y1VjsqwdRV27Qd9jyl8PYZG"
    "+KEKwrHEujDOGa3qEBuDCQIjzLgAlrwT6QggxgEdAWnRgfQRdgCf0CkBmAAHcyFJ4IBT4C"
    "HqOQhYkACBHEeN5AB6kIldI8PYemYoVYC9oyX438s+rDH9qivNvo3HiBfsp4vZjyWeh/2f"
    "eywrkH/9pfVh//AITNADCBYcETOdUEfT8zniCWDBkTMCmIeEUWIhAIkNCLpHDHBBGbLz9K"
    "9pjlIFODpYQgGODhYqgOpKK4ADuTB9vpJZzco+g2ENya/L/vt27WjefUIPHpaXW4HntGTD"
    "cp1ZZuie3q30NKclG5brzDJ0HDqVXLnURg7PM/3P695VMct5ySzT2BLg/9plqQ3HxqVaLV"
    "B3Lz0sBsYOHfK5bXXhDEgr9BlcUYKAiyDhQFlV2aPE8pb7yVdbXrMUESmlimzx1mXr96yZ"
    "PrvonWa1RV3gNGOzuUXVHBVYjyWexPZK4VEi4TT0sSMdYb6r5nuNnNNa6HCRgCpVVYWQpE"
    "w9KFHTbgwlzHNNB7u4wAh2iVhg/5IyGU7kfdRmM1w+eTBWi/iwv3fwy8Hxp6ODYzlEr3Pe"
    "8ksJL92rQQZUsQKoogG1HFQV3sngX5pl5FTANSvWQJuHdujbYyQWqWwbWdiFTjG8WdHsFh"
    "3I7obXeHtQl+DY7px1L1sXW3vHO4GHK7dlLPRtRxvzQS6JGOLlIYZpwQmYyiZ1iO9qsLty"
    "JZBYaBHo8UVWSjC9kEfabv37BNhw9p1c9q4GX06kd0jE5DsZ9AatC7kKKgK9qJrjPV4iwX"
    "O8ML9znCWGsrFZ7UwylnjCueTbUfefnkImzp84YhXBTIg0aD4+qmPz0V3hka5CKo/sOWUI"
    "j8lXNMttHRk855UCN+GF3iSmcWu8RAan80KDpELJm5fxKAq25rPW9Vmr3TGyD/+zQNpjY0"
    "jw/6C+qY2FNt74ipFVyjuE1t0UMttMabHqofs00zIfm+9y991sCyRwrLFRN6GWPEe/jTyH"
    "zlxERB9ZlKXrTRaP2ikvlbHn45erljFaIBYB4XIBFID5BKiE4GcAbZtLw6dSKvQeMYblFX"
    "RaRUI/wmOfaQX6Gw8SKWDMqO/xfHZmnRM1lT01sAI7oKnseT81Hk1lz3tkfZnKHr07m1Xr"
    "e9JSda9ASVggsGU5WNq0DyNoScbDLnUj29J4YZ40e9LLu0cFtvF5LvkaRUb0XlrpAg+/rM"
    "woltnAYq69pXDeK8F5L4+z9HOE3DDc4HivCtp5yRpnX+pUPzeEHJk+qwR2UmbzYJZ6uaRq"
    "l+p2Dumwut9ExGIzT2GTg3yAHhYkzAuFa4y93uqjhxK0vnWDksL58sEUi4kOelRoN4UzGe"
    "5wJJ1goU+xt84RI0hsfw4LzGS7LxsKytjWOE+FAozO74PyQ8C553LRu/pHNDx7MpjWlynC"
    "40mBR3nuULhAS2KRjGqMlMy6bM7e7seXD9LavZvTiw741u+cda+74Rns3D3Unensf7/Tus"
    "gWIiCh61rzGJeUIiRk3u7Jt9FRJSHSx5JeF5KTqNJPmM4/JJyvE0C1IN/RGQzqix0wkX49"
    "YrJF+jkP8omzGfX0kZ5b4PetfbZXPq9HRJFasKGfUuogSBbUJcZSGU0aSrF1qVAUGrzs43"
    "ra612kYD/tZrfAm8vTjjSrmUO74Fw0l3l/rWxmKpdcmMnMZpvLspg0MbZ566/JDTa5wTeV"
    "JWpyg++R9fq/9beOd5LqlLNoKlZrV7HaFKutQkVTrLZJxWoyHpXha8USq5RQU2RVWmQVYF"
    "WQEWtqgoprglLKlSoL6ksPp989G5TVBeVS1wWJstNQ8vxrHzlzNBehHn8GZzPwTj3+1gQ7"
    "tsT7qSBtpmrmSlGfrEybVSn5uN68VZ/6Km3d9zUmBWmr5ICd8qwVC4aaTI5dsvruGhGbJ8"
    "735d9QWDohfHvrQSEQI7e3YAs9yMtELzVuqyI5kSkZuL0VkEnX5fa24JMG65qlya3VwDHY"
    "aXJr7yjL0uTW3iPry+TWwo28SnotIbKBpVhrybEF9q8KyLFEg/GyZYWYMixmeZQXvjibFF"
    "nppdnVKjw+VqzwMC7oVJXT+IQH3xjLO2uFI9b8Sm1zTv9ezul1cFgY6ERhY1mEM49Pm/P4"
    "JmZoYoa34j02McN7ZH2ZmAG5EFcqcZ8LbNyJ/Kf9ZTxZOWqhJ6v70o5V/b9ybKzLOL1AnM"
    "CoswDdnx/0RrIviLTaRiqibbTal92rEwBtF5Pv5Ld+d9A5AVMZ6aDvpN9ptU/A/KqvfcjL"
    "+ZRKB3UC+aRaDiIjWOcTdxnKU7IP1FLBllq5g4fb4TcFR5QB7SADMYECUGkwgPomcPAl6P"
    "k3gR06Bpjk477nvXT5w3h4uMzDeHi4+GFUfWkFwNyUAQG+L3giS6PIlFwTR5bHkblPPEvK"
    "MVn1G89J4ebDsPVx0/LeeVNGtgrNTRnZJpWRNd88+4m6r15A1nxRKgHtql+UakrHngPsNd"
    "T7PP4F706olQ=="
)
