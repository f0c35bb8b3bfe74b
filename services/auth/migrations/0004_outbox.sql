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
