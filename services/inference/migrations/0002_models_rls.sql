-- A/B splits of a tenant's traffic for a model: `percent_b` % of its users (bucketed by a hash
-- of tenant, model and user) get `version_b`, the rest the model's default version.
CREATE TABLE model_splits (
    tenant_id   text        NOT NULL,
    model       text        NOT NULL,
    version_b   text        NOT NULL,
    percent_b   integer     NOT NULL CHECK (percent_b BETWEEN 1 AND 100),
    update_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, model)
);

-- Row-level security: every tenant-scoped transaction (`Shards::begin`) runs as the role
-- `keel_inference_tenant` with `keel.tenant_id` set, and this role sees and writes only rows of
-- that tenant, so a query that forgets its `WHERE tenant_id` still cannot cross tenants. The
-- owner (migrations, the outbox relay, bulk loads) is not subject to the policies.
DO $$
BEGIN
    CREATE ROLE keel_inference_tenant NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL; -- another database of this cluster created it first
END
$$;

DO $$
BEGIN
    EXECUTE format('GRANT keel_inference_tenant TO %I', current_user);
EXCEPTION WHEN duplicate_object OR unique_violation OR invalid_grant_operation THEN
    NULL; -- already a member, or a superuser (who needs no membership)
END
$$;

GRANT USAGE ON SCHEMA inference TO keel_inference_tenant;
GRANT SELECT, INSERT, UPDATE, DELETE ON documents, idempotency_keys, model_splits
    TO keel_inference_tenant;
GRANT INSERT ON outbox TO keel_inference_tenant;

ALTER TABLE documents ENABLE ROW LEVEL SECURITY;
ALTER TABLE idempotency_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE model_splits ENABLE ROW LEVEL SECURITY;
ALTER TABLE outbox ENABLE ROW LEVEL SECURITY;

CREATE POLICY tenant_rows ON documents
    USING (tenant_id = current_setting('keel.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('keel.tenant_id', true));
CREATE POLICY tenant_rows ON idempotency_keys
    USING (tenant_id = current_setting('keel.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('keel.tenant_id', true));
CREATE POLICY tenant_rows ON model_splits
    USING (tenant_id = current_setting('keel.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('keel.tenant_id', true));
-- A tenant transaction may announce its own changes and nothing else.
CREATE POLICY tenant_rows ON outbox
    USING (tenant_id = current_setting('keel.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('keel.tenant_id', true));
