from tortoise import BaseDBAsyncClient

RUN_IN_TRANSACTION = True


async def upgrade(db: BaseDBAsyncClient) -> str:
    return """
        CREATE TABLE IF NOT EXISTS "deployments" (
    "created_at" TIMESTAMPTZ NOT NULL,
    "updated_at" TIMESTAMPTZ NOT NULL,
    "id" UUID NOT NULL PRIMARY KEY,
    "model_name" VARCHAR(200) NOT NULL,
    "provider" VARCHAR(100) NOT NULL,
    "upstream_model" VARCHAR(200),
    "base_url" VARCHAR(1000),
    "api_key_encrypted" TEXT,
    "weight" DOUBLE PRECISION NOT NULL,
    "settings" JSONB NOT NULL,
    "enabled" BOOL NOT NULL
);
CREATE INDEX IF NOT EXISTS "idx_deployments_model_n_bccc3c" ON "deployments" ("model_name");
COMMENT ON COLUMN "deployments"."model_name" IS 'The model group (client-facing model name) this deployment serves.';
COMMENT ON COLUMN "deployments"."api_key_encrypted" IS 'The upstream API key, encrypted with the gateway''s secret key (Fernet); never returned.';
COMMENT ON COLUMN "deployments"."settings" IS 'Everything else of a configuration deployment: options, timeout, headers, proxy, drop_params.';
COMMENT ON TABLE "deployments" IS 'A deployment managed at run time; adds to or overrides the configuration''s model groups.';
CREATE TABLE IF NOT EXISTS "organizations" (
    "created_at" TIMESTAMPTZ NOT NULL,
    "updated_at" TIMESTAMPTZ NOT NULL,
    "id" UUID NOT NULL PRIMARY KEY,
    "name" VARCHAR(200) NOT NULL UNIQUE,
    "metadata" JSONB NOT NULL,
    "budget_limit" DECIMAL(18,6),
    "budget_period" VARCHAR(8),
    "parent_id" UUID REFERENCES "organizations" ("id") ON DELETE RESTRICT
);
COMMENT ON COLUMN "organizations"."budget_period" IS 'DAY: day\nMONTH: month\nTOTAL: total';
CREATE TABLE IF NOT EXISTS "routing_rules" (
    "created_at" TIMESTAMPTZ NOT NULL,
    "updated_at" TIMESTAMPTZ NOT NULL,
    "id" UUID NOT NULL PRIMARY KEY,
    "pattern" VARCHAR(200) NOT NULL,
    "target" VARCHAR(200) NOT NULL,
    "priority" INT NOT NULL,
    "enabled" BOOL NOT NULL
);
COMMENT ON COLUMN "routing_rules"."priority" IS 'Lower runs first.';
COMMENT ON TABLE "routing_rules" IS 'Sends model names matching ``pattern`` (exact or glob) to the model group ``target``.';
CREATE TABLE IF NOT EXISTS "users" (
    "created_at" TIMESTAMPTZ NOT NULL,
    "updated_at" TIMESTAMPTZ NOT NULL,
    "id" UUID NOT NULL PRIMARY KEY,
    "email" VARCHAR(320) NOT NULL UNIQUE,
    "name" VARCHAR(200) NOT NULL,
    "role" VARCHAR(8) NOT NULL,
    "password_hash" VARCHAR(255),
    "is_active" BOOL NOT NULL,
    "last_login_at" TIMESTAMPTZ,
    "budget_limit" DECIMAL(18,6),
    "budget_period" VARCHAR(8),
    "org_id" UUID REFERENCES "organizations" ("id") ON DELETE RESTRICT
);
COMMENT ON COLUMN "users"."role" IS 'ADMIN: admin\nWRITE: write\nREAD: read';
COMMENT ON COLUMN "users"."password_hash" IS 'argon2 hash (passlib); None for users that only own keys and never log in.';
COMMENT ON COLUMN "users"."budget_period" IS 'DAY: day\nMONTH: month\nTOTAL: total';
CREATE TABLE IF NOT EXISTS "api_keys" (
    "created_at" TIMESTAMPTZ NOT NULL,
    "updated_at" TIMESTAMPTZ NOT NULL,
    "id" UUID NOT NULL PRIMARY KEY,
    "name" VARCHAR(200) NOT NULL,
    "prefix" VARCHAR(16) NOT NULL,
    "digest" VARCHAR(64) NOT NULL UNIQUE,
    "last_used_at" TIMESTAMPTZ,
    "expires_at" TIMESTAMPTZ,
    "revoked_at" TIMESTAMPTZ,
    "allowed_models" JSONB,
    "scopes" JSONB NOT NULL,
    "metadata" JSONB NOT NULL,
    "rpm_limit" INT,
    "tpm_limit" INT,
    "max_parallel" INT,
    "budget_limit" DECIMAL(18,6),
    "budget_period" VARCHAR(8),
    "org_id" UUID REFERENCES "organizations" ("id") ON DELETE CASCADE,
    "user_id" UUID REFERENCES "users" ("id") ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS "idx_api_keys_prefix_10c459" ON "api_keys" ("prefix");
COMMENT ON COLUMN "api_keys"."prefix" IS 'The first characters of the key, shown in listings so people can tell keys apart.';
COMMENT ON COLUMN "api_keys"."digest" IS 'SHA-256 hex digest of the whole key; the key itself is shown once and never stored.';
COMMENT ON COLUMN "api_keys"."allowed_models" IS 'Model names or globs the key may use; None means every model.';
COMMENT ON COLUMN "api_keys"."budget_period" IS 'DAY: day\nMONTH: month\nTOTAL: total';
CREATE TABLE IF NOT EXISTS "aerich" (
    "id" SERIAL NOT NULL PRIMARY KEY,
    "version" VARCHAR(255) NOT NULL,
    "app" VARCHAR(100) NOT NULL,
    "content" JSONB NOT NULL
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
