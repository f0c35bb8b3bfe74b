-- Per-tenant signing keys. The private key is sealed with the deployment's master key
-- (AES-256-GCM, the kid and tenant as associated data, so a sealed key cannot be moved to
-- another record).
CREATE TABLE signing_keys (
    kid           text        PRIMARY KEY,
    tenant_id     text        NOT NULL,
    alg           text        NOT NULL DEFAULT 'EdDSA' CHECK (alg = 'EdDSA'),
    public_key    bytea       NOT NULL,
    sealed_secret bytea       NOT NULL,
    state         text        NOT NULL CHECK (state IN ('pending', 'active', 'retained', 'revoked')),
    valid_from    timestamptz NOT NULL,
    verify_until  timestamptz,
    create_time   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX signing_keys_tenant ON signing_keys (tenant_id, state);
-- At most one active key per tenant.
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (tenant_id) WHERE state = 'active';

CREATE TABLE users (
    tenant_id        text        NOT NULL,
    user_id          uuid        NOT NULL,
    username         text        NOT NULL,
    password_hash    text        NOT NULL,
    roles            text[]      NOT NULL DEFAULT '{}',
    disabled         boolean     NOT NULL DEFAULT false,
    -- Consecutive failed logins (reserved before each password check, reset on success).
    failed_logins    integer     NOT NULL DEFAULT 0,
    locked_until     timestamptz,
    create_time      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id),
    UNIQUE (tenant_id, username)
);

CREATE TABLE sessions (
    tenant_id   text        NOT NULL,
    sid         text        NOT NULL,
    user_id     uuid        NOT NULL,
    client_id   text        NOT NULL,
    acr         text        NOT NULL,
    amr         text[]      NOT NULL,
    auth_time   timestamptz NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    PRIMARY KEY (tenant_id, sid)
);
CREATE INDEX sessions_user ON sessions (tenant_id, user_id) WHERE revoked_at IS NULL;

-- Refresh tokens rotate on every use; a family is one login's chain of them.
CREATE TABLE refresh_families (
    tenant_id        text        NOT NULL,
    family_id        uuid        NOT NULL,
    sid              text        NOT NULL,
    user_id          uuid        NOT NULL,
    client_id        text        NOT NULL,
    generation       bigint      NOT NULL,
    state            text        NOT NULL CHECK (state IN ('active', 'revoked')),
    idle_expires     timestamptz NOT NULL,
    absolute_expires timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, family_id)
);

CREATE TABLE refresh_tokens (
    token_hash     bytea       PRIMARY KEY,
    tenant_id      text        NOT NULL,
    family_id      uuid        NOT NULL,
    generation     bigint      NOT NULL,
    state          text        NOT NULL CHECK (state IN ('active', 'used', 'revoked')),
    successor_hash bytea,
    used_at        timestamptz,
    create_time    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (tenant_id, family_id);
