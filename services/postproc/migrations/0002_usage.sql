-- Metered usage per tenant, UTC day and model version, from InferenceCompleted events (each
-- applied once: its dedupe record commits in the same transaction).
CREATE TABLE usage_daily (
    tenant_id     text   NOT NULL,
    day           date   NOT NULL,
    model_version text   NOT NULL,
    requests      bigint NOT NULL DEFAULT 0,
    input_tokens  bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    cache_hits    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, day, model_version)
);
