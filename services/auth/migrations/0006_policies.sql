-- Each tenant's auth policy (keel-authspec's TenantPolicy as JSON), on the tenant's shard.
-- No row: the deployment's default policy.
CREATE TABLE tenant_policies (
    tenant_id   text        PRIMARY KEY,
    policy      jsonb       NOT NULL,
    update_time timestamptz NOT NULL DEFAULT now()
);
