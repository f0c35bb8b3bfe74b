-- Each tenant's audit log, append-only: the event ID is the key (a redelivery inserts
-- nothing), and the table refuses updates and deletes.
CREATE TABLE audit_log (
    tenant_id   text        NOT NULL,
    event_id    text        NOT NULL,
    kind        text        NOT NULL,
    user_id     text        NOT NULL DEFAULT '',
    session_id  text        NOT NULL DEFAULT '',
    occur_time  timestamptz NOT NULL,
    details     jsonb       NOT NULL DEFAULT '{}',
    record_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, event_id)
);

CREATE INDEX audit_log_newest ON audit_log (tenant_id, occur_time DESC, event_id DESC);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END
$$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
