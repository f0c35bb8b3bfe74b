-- Documents of every tenant placed on this shard. tenant_id leads every key: a tenant's rows
-- are contiguous, and a query without a tenant cannot use an index by accident.
CREATE TABLE documents (
    tenant_id   text        NOT NULL,
    id          uuid        NOT NULL,
    title       text        NOT NULL,
    content     text        NOT NULL,
    version     bigint      NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);

-- Creating writes with an idempotency key: the first request's body hash and result.
CREATE TABLE idempotency_keys (
    tenant_id    text        NOT NULL,
    key          text        NOT NULL,
    request_hash bytea       NOT NULL,
    document_id  uuid        NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);

-- Transactional outbox: written in the same transaction as the change it announces; the relay
-- publishes rows to JetStream (Nats-Msg-Id = id) and sets sent_time only after the PubAck.
CREATE TABLE outbox (
    id             uuid        PRIMARY KEY,
    tenant_id      text        NOT NULL,
    kind           text        NOT NULL,
    event_type     text        NOT NULL,
    schema_version integer     NOT NULL,
    payload        bytea       NOT NULL,
    traceparent    text,
    create_time    timestamptz NOT NULL DEFAULT now(),
    sent_time      timestamptz
);

CREATE INDEX outbox_unsent ON outbox (create_time, id) WHERE sent_time IS NULL;
CREATE INDEX outbox_sent ON outbox (sent_time) WHERE sent_time IS NOT NULL;
