-- The tenant directory. Each tenant's row lives on the tenant's own shard, like all its data.
CREATE TABLE tenants (
    tenant_id    text        PRIMARY KEY,
    display_name text        NOT NULL,
    tier         text        NOT NULL CHECK (tier IN ('free', 'pro', 'enterprise')),
    status       text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    create_time  timestamptz NOT NULL DEFAULT now()
);
