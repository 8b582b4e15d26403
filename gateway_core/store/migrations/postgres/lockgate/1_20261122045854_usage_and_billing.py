from tortoise import BaseDBAsyncClient

RUN_IN_TRANSACTION = True


async def upgrade(db: BaseDBAsyncClient) -> str:
    return """
        CREATE TABLE IF NOT EXISTS "balances" (
    "id" BIGSERIAL NOT NULL PRIMARY KEY,
    "owner_type" VARCHAR(8) NOT NULL,
    "owner_id" VARCHAR(200) NOT NULL,
    "amount" DECIMAL(18,8) NOT NULL,
    "updated_at" TIMESTAMPTZ NOT NULL,
    CONSTRAINT "uid_balances_owner_t_e0d922" UNIQUE ("owner_type", "owner_id")
);
COMMENT ON COLUMN "balances"."owner_type" IS 'USER: user\nORG: org';
COMMENT ON TABLE "balances" IS 'The prepaid amount (USD) of a user or an organization.';
        CREATE TABLE IF NOT EXISTS "billing_records" (
    "id" BIGSERIAL NOT NULL PRIMARY KEY,
    "created_at" TIMESTAMPTZ NOT NULL,
    "owner_type" VARCHAR(8) NOT NULL,
    "owner_id" VARCHAR(200) NOT NULL,
    "kind" VARCHAR(16) NOT NULL,
    "amount" DECIMAL(18,8) NOT NULL,
    "balance_after" DECIMAL(18,8),
    "request_id" VARCHAR(128),
    "note" TEXT NOT NULL,
    "actor" VARCHAR(200)
);
CREATE INDEX IF NOT EXISTS "idx_billing_rec_created_e0ea90" ON "billing_records" ("created_at");
CREATE INDEX IF NOT EXISTS "idx_billing_rec_request_b2ab53" ON "billing_records" ("request_id");
CREATE INDEX IF NOT EXISTS "idx_billing_rec_owner_t_a6517f" ON "billing_records" ("owner_type", "owner_id", "created_at");
COMMENT ON COLUMN "billing_records"."owner_type" IS 'USER: user\nORG: org';
COMMENT ON COLUMN "billing_records"."kind" IS 'TOPUP: topup\nCHARGE: charge\nADJUSTMENT: adjustment';
COMMENT ON COLUMN "billing_records"."actor" IS 'The admin user who made it; None for charges made by the gateway.';
COMMENT ON TABLE "billing_records" IS 'One movement of a balance: a top-up (positive), a charge (negative) or an adjustment.';
        CREATE TABLE IF NOT EXISTS "price_overrides" (
    "created_at" TIMESTAMPTZ NOT NULL,
    "updated_at" TIMESTAMPTZ NOT NULL,
    "id" BIGSERIAL NOT NULL PRIMARY KEY,
    "model" VARCHAR(200) NOT NULL,
    "provider" VARCHAR(100),
    "input_per_mtok" DECIMAL(18,8) NOT NULL,
    "output_per_mtok" DECIMAL(18,8) NOT NULL,
    "cached_input_per_mtok" DECIMAL(18,8),
    "cache_write_per_mtok" DECIMAL(18,8),
    "source" TEXT NOT NULL,
    CONSTRAINT "uid_price_overr_model_d21537" UNIQUE ("model", "provider")
);
COMMENT ON COLUMN "price_overrides"."model" IS 'An exact model name or a glob.';
COMMENT ON COLUMN "price_overrides"."provider" IS 'Only for this provider; None for every provider.';
COMMENT ON TABLE "price_overrides" IS 'A price (USD per million tokens) set at run time; wins over the built-in price table.';
        CREATE TABLE IF NOT EXISTS "usage_records" (
    "id" BIGSERIAL NOT NULL PRIMARY KEY,
    "event_id" VARCHAR(32) NOT NULL UNIQUE,
    "request_id" VARCHAR(128) NOT NULL,
    "created_at" TIMESTAMPTZ NOT NULL,
    "key_id" VARCHAR(200),
    "user_id" VARCHAR(200),
    "org_id" VARCHAR(200),
    "endpoint" VARCHAR(32) NOT NULL,
    "model" VARCHAR(200) NOT NULL,
    "model_group" VARCHAR(200),
    "deployment_id" VARCHAR(200),
    "provider" VARCHAR(100),
    "upstream_model" VARCHAR(200),
    "prompt_tokens" INT NOT NULL,
    "completion_tokens" INT NOT NULL,
    "cached_tokens" INT NOT NULL,
    "cache_write_tokens" INT NOT NULL,
    "reasoning_tokens" INT NOT NULL,
    "total_tokens" INT NOT NULL,
    "cost" DECIMAL(18,8),
    "price_known" BOOL NOT NULL,
    "latency_ms" INT NOT NULL,
    "ttfb_ms" INT,
    "status" SMALLINT NOT NULL,
    "error_type" VARCHAR(100),
    "attempts" SMALLINT NOT NULL,
    "stream" BOOL NOT NULL,
    "dialect" VARCHAR(16) NOT NULL
);
CREATE INDEX IF NOT EXISTS "idx_usage_recor_created_abe4dd" ON "usage_records" ("created_at");
CREATE INDEX IF NOT EXISTS "idx_usage_recor_key_id_272548" ON "usage_records" ("key_id", "created_at");
CREATE INDEX IF NOT EXISTS "idx_usage_recor_org_id_df8b87" ON "usage_records" ("org_id", "created_at");
CREATE INDEX IF NOT EXISTS "idx_usage_recor_model_bc90cc" ON "usage_records" ("model", "created_at");
COMMENT ON COLUMN "usage_records"."event_id" IS 'Unique per record (the writer''s idempotency key: replaying a record twice stores it once).';
COMMENT ON COLUMN "usage_records"."request_id" IS 'The request''s ``x-request-id`` (the client may choose it, so it is not unique).';
COMMENT ON COLUMN "usage_records"."created_at" IS 'When the request started.';
COMMENT ON COLUMN "usage_records"."model" IS 'The model name the client asked for.';
COMMENT ON COLUMN "usage_records"."cost" IS 'USD; None when the price is unknown (not zero).';
COMMENT ON COLUMN "usage_records"."ttfb_ms" IS 'Time to the first byte of the answer; None when nothing was sent.';
COMMENT ON TABLE "usage_records" IS 'One request the gateway answered (or refused): who, which model, tokens, cost, timing.';
        CREATE TABLE IF NOT EXISTS "usage_rollups" (
    "id" BIGSERIAL NOT NULL PRIMARY KEY,
    "bucket" TIMESTAMPTZ NOT NULL,
    "model" VARCHAR(200) NOT NULL,
    "provider" VARCHAR(100) NOT NULL,
    "key_id" VARCHAR(200) NOT NULL,
    "user_id" VARCHAR(200) NOT NULL,
    "org_id" VARCHAR(200) NOT NULL,
    "requests" BIGINT NOT NULL,
    "errors" BIGINT NOT NULL,
    "prompt_tokens" BIGINT NOT NULL,
    "completion_tokens" BIGINT NOT NULL,
    "cached_tokens" BIGINT NOT NULL,
    "cost" DECIMAL(18,8) NOT NULL,
    "unknown_cost_requests" BIGINT NOT NULL,
    "latency_sum_ms" BIGINT NOT NULL,
    "latency_histogram" JSONB NOT NULL,
    CONSTRAINT "uid_usage_rollu_bucket_5275c3" UNIQUE ("bucket", "model", "provider", "key_id", "user_id", "org_id")
);
COMMENT ON COLUMN "usage_rollups"."bucket" IS 'Start of the UTC hour.';
COMMENT ON COLUMN "usage_rollups"."cost" IS 'USD of the requests with a known price.';
COMMENT ON TABLE "usage_rollups" IS 'Usage summed per UTC hour and dimensions; the stats read these, not the raw records.';"""


async def downgrade(db: BaseDBAsyncClient) -> str:
    return """
        DROP TABLE IF EXISTS "usage_rollups";
        DROP TABLE IF EXISTS "price_overrides";
        DROP TABLE IF EXISTS "usage_records";
        DROP TABLE IF EXISTS "balances";
        DROP TABLE IF EXISTS "billing_records";"""


MODELS_STATE = (
    "eJztXe9T2zrW/lc0/rIwkzItbSlL39mZAOlt9gLpQHjv7l7uOIqtJFpsyWvJhOx9+7+/km"
    "zHv40dSHCCv9BG1pHt58jS0dFzjv7ULGrcTyFHB10H/4oW2gn4UyPQRuI/mWsdoEHHiV+R"
    "RRyOLVUdOli/Rwum6o0Zd6HBRfkEWgyJIhMxw8UOx5SIUuJZliykhqiIyTQq8gj+j4d0Tq"
    "eIz5ArLvz+hyjGxESPiIU/nXt9gpFlJh4Ym/LeqlznC0eV3d72z7+pmvJ2Y92glmeTqLaz"
    "4DNKltU9D5sHUkZemyKCXPGaZuw15FMGbxwW+U8sCrjroeWjmlGBiSbQsyQY2v9MPGJIDI"
    "C6k/zz6W/Bo8Wq6frVYKjf9Ia6rtXAzqBE4o4Jl0D9+dNvNwJElWryBmffu9d7H4/2FQSU"
    "8amrLiq4tJ9KEHLoiyrQI5QNF0lMdMizaJ+LKxzbKB/xpGQKeTMQPQj/s4oGwoJIBVH3C8"
    "EN4VsD4Jp4QXNArEWg+xIFDPuXvZth9/KHvJ3N2H8shV932JNXDlXpIlW65+uLii/L/+SW"
    "jYDf+sPvQP4E/xpc9dJaXdYb/kuTzwQ9TnVC5zo0Y900LA1REzUjrXuOuaLWk5Kt1pui9R"
    "CjmNqDp4+0rv7N6PtsBt18XYf1U1oWaG2jXm34qFuITPlM/Dx8/75Esf/bvVZDqqiV0tZV"
    "cOnQv/Yzga/jogl+rINwJLEujDOTVn2IteEMgQl2GQeGeBNhCCCXAToBYkYHwkboADajcw"
    "IwARZmXCiBAUaBg6hjIWBAAjiyLFmTAehAlx9oKY2t5w6lHeDDUQX9f0h/rJH65aWk9k08"
    "RSxnPC3WfiTxMtp/2mJZQfk337vvDj8fgRl6BP4Dh4qZz6il1PM11BPAnCFrAjALFEaJgQ"
    "AkJiDoAbmAceoiM6v+Nd2jtAMcfarQAY4+FXYAeSnZASzIuO6xlabVtOwLTKyB8psy/m7v"
    "PJo1n9Cjg0VzK+g5KdlqucladtEDvV/pa05KtlpuspahZdG50JVNTWSxrKb/fjO4ytdyVj"
    "KtaWxw8H/KZGmMjrVL+bRAvr2wsFwwteiYLedWGy6AmIW+gitKELARJAzIWVVckWLZmfvZ"
    "rVXvWVIRiU4VzsV7l91/pKfps4vBabq3yAZOU3M2M6i8Rw2tRxLP0vZKy6OYw2nsYUsYwu"
    "xA3u81fE5rUYeNOJSuqjoKics0QyXytjujEtexdQvbOGcS7BNeMP/FZVI6Ee/RmMGwuvNg"
    "Kh/i3eGHT18+HX88+nQsqqjnXJZ8KdFL/2qYApWvACpvQS0HVS7vxOJfTMvIqoFrWqyFNg"
    "vt2DOniBd12XNkYBta+fCmRdNDtC97ELSxfVCX4HjeO+tfdi/2Phx3fAtXDMuYq9cOB+ZP"
    "GSdigJeDXExzdsCkN6lHPFuB3RdPAomBikCPGlnJwbQhi/S8+88TYMLFHbkcXA2/nwjrkP"
    "DZHRkOht0L8RSU+/2iro/3uIKD57jQv3OcVgx1p3q9PclI4hn7ktvT3Z/chYztPzHk1gQz"
    "JtKi+fOn3Daf3Odu6Uqkssh+oy7CU/IrWmSGjhSeS6bAbdDQVmIalUaP6ML5kmgQ71Di5c"
    "V6FPlD81n35qx73tPSH/+LQDpwp5Dg/0L1UjsLbTTw5SMrO+8YGvdz6Jp6ohfLK/SQpkqW"
    "dbOX7EM7XQIJnCps5EvIR16ifwotpaBcXkx4sVNOjBn71aoRY9TGluMiB2ITQJt6hIO925"
    "vzfbm/AaVzxJVuE0jE36hj5O+PrdZMDgHnd43ORa/zO6fEW/0S+vrjOdScUzwtNLFzh+0c"
    "wzroS5ve46prVv/18PDjxy+H7z8eHX/+9OXL5+P3S/s6e6nM0D7t/yJt7YQFEhrfxZSdpP"
    "ZWMQ+TLTR5e1+7veldn6gefkcG17+cgGAkfm1jMPxmcjVQYA7GZJqMeZMoFf5gV3PJGQk9"
    "e7G5EuTvN28txpaax5WXmi0LrLhr7xYLLLNaeDULDFuWwP0aGdRN2hQFVZ6yxvzKuqtqVz"
    "TKBnI3ij4gGxHuW1CBUXci/sup885zwJ5AHXP8gPY7olCykqYI7BEknkAWBuYWNP/tMS7b"
    "ydpsa7vL05zqQguvk6Dt/tEaeI008LaLk71R/WznsFyFkt1a9a1V3wzTZ/1W/b14tVV7eS"
    "jbZKy14eDH7Q+5deF4zh2ROPzSOwnm9zvSPf/77c3wsnc1PInN7av0/5dnMW/lguvVt/eq"
    "r7kCG1CHE57npS/fSk3Lvs291Opgu0i8FuM1R/Sk1Jp2TjdqNSXHjMMqs6aoVTxqHGZmTk"
    "J5jt0yRI8FC4aw/uZGcU3bfKcd9v4xTJifGULW0gS9GFz9ElZPs7RSI7TBac7IUdyflwJN"
    "JgHIHQ5o2pj4uxnzGQU2NBHAPKCPTsRa2J9AmX9lvFBEU+kSmMNF/p7Js1vcjG3UGPfMOX"
    "IsupDWSJmHJlOrU+6kMZf1KzpouiASAcHjAsiB6xEgF65fhWJNJswr6SChD8h1sWhBKU8o"
    "bIKnnqt2wP7CfKYxmLrUc1i2j6zzRm3o+yaG2Db0vfWztKHvb1rrVULf1eis1w2AT0o1PU"
    "Q7NgOBPcPCYk57N4GG0HhwSb7Ivpi8MItPe8I4ekA5c+PLNPkaUfj0QczStUzkuEyTHUur"
    "Lvkq4fyhBOcPWZyFncPFgGH78W910M5KNnhl0iS/6RgypHtuLbDjMrsHs+iXFbt2ad/O8k"
    "789Fc6Ioa7cCQ2GciLnRu5wg3GXg314UcJuj/6fs6N5eODOeaz+NJYLHcYEkYwV2Gee9+Q"
    "SxDf/xpkYBDlnijIyfOwxvu8slNmjvB0lmNRfrMoLOglkUiqa0ykzLrmnA8Hr8FOGtyeXv"
    "TAj+veWf+mHwQpLs1DdTHp0r3udS/SkbqIq8QvWYxLYnVjMtsbGqr1ZMy0sLGE1YXETXwy"
    "ScL/EDO+TgBVgqyjPBjU4x0wE3Y9ckWJsHMexRdnutRRMW92jt239ru9ckArIlKpeQQXSi"
    "0ESX5XikmletJYiK2rC4VLg81+rqeDwUUC9tN+egi8vTztiWk1tRPjU1sa481MBFvkejLT"
    "4RhlXsw4tb5Ni9n6Blvf4FZ5iVrf4FvUehXf4OumxXxdvuv6fRZtSpfGpXRpszmsooo2m8"
    "MuZXMQ61GxfK2ZgyAh1GYhKM1C4GOV4xFrg+bzg+YTnSsRN38tLJzr/tmwLHA+47rOcZSd"
    "BpLffr1G1hLNItSjcyJ2A+/E52/MsGUKvJ8L0m52zUyulmd3pt1KJfJzvX6rHy420CBgm2"
    "m5jqtklU6558qRlfUlfa2S70rrAiWm8kwAYXoAW4ZaCpuY03tE2D5giCepcnNhKCuSnNrC"
    "UabzO0yCZtTD5BHw1nSX3LwX0X5zuN/fprxoIyJbx0zrjmu13hh3XG060fNYRJsKCewSgB"
    "7FjBsjzqnwfpUzO2difLL6G2HWbchtIb8lFRGiuIzhU8ciRfzE5eGFvHQP9RvYPGkPE8dT"
    "niTdFhZWTedfVrgN93zC/0c9/gzAc6RbxJ9A3IDGTMz8z+rohW28TXd3TfD1uSsqPgv7nC"
    "Za6MuhZ9RzjVoxuJFEG4VbifDZGGLTtZgYZIoszypwD8UrdMqdQ65fVXdF3YquoRtETBYz"
    "TGX4LDcUY3A0ciDnyCWjEdjzDdjgWJh9GUXJUzEloxGX8bd8NMo5FG5dd2nJVw3YOeq03p"
    "43tO5vvT1vUetVvD3BQF7LpRCJNNnj0yQSlj//1QE5kmgxruodw1SsWhZZlAs3ieIiKx07"
    "tFoI0PuaIUDaBZ3LeCuPMP+U5qyxlltjzYcStYEcbyWQ45aJK2UZaeIVnljveLJq/XzBQV"
    "KweHQigISJXo9MsEdlNOJEnt+8fyIzDXXEH2zM/FVIJ9jM7gBDzJ0qUEroMz9h8Mvf5o7c"
    "kd/EIMOROj99LNdQ8rDOiX/AdnhDManOZAKk0Si4rfhkXHSg0BqNwpDLGRUKkz5s2xHPiB"
    "65aL5vIsKx0KXLAHQRcCzRNYH/WgzsESq935Lypc5n3+/Ik9tnWB7TvQBi7WnhBySTB0iy"
    "kxkc4U5MlbOpah6d3zUZbZtNb9wBv8eOIklfWW4btRmRG7//LzpfAVmz2IKJyzSXqq/dqt"
    "YV98UflMCeOvheOkDdvzCATWQ7VHy9xkJ+HSeilvjCFtINAkMJPpfkF/lJiU8Jc0CJgfaz"
    "A8x6b1VqcX08rGBwfTwstLfkpYbkdtzUhvEwGp2Fbkajx3fBr3fYlH4vlYRMpWRRBy0bM0"
    "qZzG6nBlihGcwAoRz4j5nTG9bQ/ubzTm6Xq+glxovfZmIij8/cTCzVeF62hdKaO3yie2QM"
    "VB0VIokGUxSatNYtPL+xJOlP4fmNLcj5IBcdOFqSi77owNEW4nyIETEdivPCVErsyphMkw"
    "2IFXF+eUttRwl9UX48Rc6LmUuQ3YulrFj1liXVKxd6hThdletQbZjW1lUk1o47lcCOEujU"
    "HOEzgi3gb526uiLMbU7InenZtsN13/dba+8pJbe5Dah1ZaB76Q0mQyBkIfkU9eHNlW0hzk"
    "DsM23rw5uWa6HNhTYg0q6Gb0a4BTkNspiyGCWSP1kb4jzRFuA0wCpfSH1w02ItsNnJjdVN"
    "/hOKbAkVX7u9OQ/ir+ahK9wPE8cMeOSe0DmR+9Mc/Be5NG+/rL78mkn+fiS/unPOdnQZ7S"
    "Ul2VJfyqkvcdAtqLZEdbvOAJQUaoefzLjOJ+N6iMYkVoJzU7nUsfTr+UEIigoHxguusijL"
    "Ep/LEx9VxPihYhrmUCY7zztI/EVaXLM6GYfcy9HmjZgQrEKVRlI784F8PPxytART/ijD8U"
    "ZMABc5xEbXpWVHQRfsSySkds97shaHlaSS2w6v3XPjcm3fTQwE0otX0ziJhDZolyxLttYw"
    "MTG0kFFr8zIm0uTNtVWHiBc5DrthtGdqWZ6jldCe/QqdSrRnVbci7Vm1Dphn28hUpMHb4R"
    "mYUc9VBF1TWCWEyVz4X5UdIudyBmSgkvwp25MrI0U/gvOAPZhz2sQ6biIpz+ehJPA7P1Pc"
    "ZTAa3Wl32mikMnLcaUQYTXca2GO+deX3ahD1MZ+K7DDkitvOqXsPRINXtxcX7yzE2B0J2t"
    "4/EA2HFr/iNk9daIu7GPJcdBYSsJh6wbFn3CMuzbc8rvVBTLw4kZnfhhpGMinNOnE+U4x1"
    "E5BD2oxnW8F4jjRch9QYSW1PFKR2I2mJ4XIm/Pxz4sELq+0wl3EbuDNry+mwq7yAJqO8ll"
    "XWxhm5TUZ4Vwi5bw7jjfNx3xzCoZ1cz/CMS+2ML2Yj5mfK5VgT90imRX011J/gbpWBv7v0"
    "rQ3roALJq0wPu83z2rQuytlgpXrYWULYxr+H1+OFbAJ+yeoIvQhLv5w6eBoCn9KhqBK5bJ"
    "CqcmtmgQTcE13irq9mMxU20X42q302ofeXeXYuraFMGVnZVgvP08LSiZ5VRPGpg7nCzTh+"
    "UN5vq48fbNCemtpDyd1M81165btowVlI7dnPbfrRZuSU2Ox2+3YmomzTj75FredssGXSjy"
    "Ib4lr7a0uB5qaUWjnwv4pHV9QqCf3PLFVe92ztnfeXU6sA3acPFQ5lN4i0HEZqoq11zy/7"
    "VycAmjaWiQyv+8PeiZ+x7I5c97rnJ2DZ6msfKMzYnAoDdQbZrE6Xzwg2mLqrQXdKySGQjw"
    "r25JNbeLwfO+RIGciAz6DMDGctgPSLLHM6+jkkLToFmGT9Ky/bdPnH+PlzlY/x8+fij1Fe"
    "Sx2txHSxIMAPOV9kKfk1IdfG5dSJy2FcFyrHZAWjLSP8AnZbw+jz22umZa3zsWeK5bJuYR"
    "vX9U6nRbckevEl1BzzLh9V9i4HeDnIxbSA7fC0dZFppMmT2nn3nyfAhIs7cjm4Gn4/ATYl"
    "fHZHhoNh90I8hYwlboCFUcQ/KfYAFfJP6niBtqe7P+HzyfggE9Bmcf3mp63+FS0yff1tHQ"
    "cvil04X/ojY91KYOBn7pbF12KUv+6fiWm62Lkbi7xysC7NtxxrqdbJ8l0HCw3tDthrOFv+"
    "5/8Duq82ng=="
)
