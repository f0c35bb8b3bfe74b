-- Dedupe records: one row per (consumer, event) whose effect has committed. Written in the
-- same transaction as the effect, so a redelivered event finds its row and changes nothing.
CREATE TABLE processed_events (
    consumer       text        NOT NULL,
    event_id       text        NOT NULL,
    tenant_id      text        NOT NULL,
    processed_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- What postproc knows of each document (the retrieval index builds on this row).
CREATE TABLE document_records (
    tenant_id     text        NOT NULL,
    document_id   uuid        NOT NULL,
    version       bigint      NOT NULL,
    title         text        NOT NULL,
    content_bytes bigint      NOT NULL,
    deleted       boolean     NOT NULL DEFAULT false,
    last_event_id text        NOT NULL,
    update_time   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, document_id)
);

-- Per-tenant counters: deliberately not idempotent by themselves, so the tests can see that a
-- redelivery changes nothing only because of the dedupe record.
CREATE TABLE tenant_document_stats (
    tenant_id text   PRIMARY KEY,
    created   bigint NOT NULL DEFAULT 0,
    updated   bigint NOT NULL DEFAULT 0,
    deleted   bigint NOT NULL DEFAULT 0
);
