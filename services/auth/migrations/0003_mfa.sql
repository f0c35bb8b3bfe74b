-- TOTP credentials. The secret is sealed like signing keys. last_step is the highest time step
-- accepted so far: a code is accepted only for a later step (RFC 6238 §5.2, each OTP once).
CREATE TABLE totp_credentials (
    tenant_id     text        NOT NULL,
    user_id       uuid        NOT NULL,
    sealed_secret bytea       NOT NULL,
    confirmed     boolean     NOT NULL DEFAULT false,
    last_step     bigint      NOT NULL DEFAULT 0,
    create_time   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);

-- Recovery codes: 128 random bits each, stored as SHA-256, usable once.
CREATE TABLE recovery_codes (
    tenant_id text        NOT NULL,
    user_id   uuid        NOT NULL,
    code_hash bytea       NOT NULL,
    used_at   timestamptz,
    PRIMARY KEY (tenant_id, user_id, code_hash)
);
