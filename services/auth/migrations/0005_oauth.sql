-- OAuth clients of a tenant. Public clients (browser and native apps) have no secret and must
-- use PKCE; confidential clients (servers, service clients) authenticate with a secret of 256
-- random bits, stored as its SHA-256 (a fast hash is enough for a secret that cannot be guessed).
CREATE TABLE oauth_clients (
    tenant_id     text        NOT NULL,
    client_id     text        NOT NULL,
    display_name  text        NOT NULL,
    secret_hash   bytea,
    redirect_uris text[]      NOT NULL DEFAULT '{}',
    grant_types   text[]      NOT NULL,
    -- Scopes a client_credentials token may carry (service clients have no user roles).
    scopes        text[]      NOT NULL DEFAULT '{}',
    disabled      boolean     NOT NULL DEFAULT false,
    create_time   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, client_id)
);

-- Authorization codes: stored hashed, single use. used_at is set by the one redemption that
-- wins; sid is the session that redemption started, revoked if the code is presented again
-- (RFC 6749 §4.1.2, R-8).
CREATE TABLE authorization_codes (
    code_hash      bytea       PRIMARY KEY,
    tenant_id      text        NOT NULL,
    client_id      text        NOT NULL,
    redirect_uri   text        NOT NULL,
    user_id        uuid        NOT NULL,
    scope          text        NOT NULL,
    nonce          text,
    code_challenge text        NOT NULL,
    acr            text        NOT NULL,
    amr            text[]      NOT NULL,
    auth_time      timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    used_at        timestamptz,
    sid            text
);
CREATE INDEX authorization_codes_expiry ON authorization_codes (expires_at);

-- The scope granted to a session when it was asked for (the code flow); NULL means "what the
-- user's roles grant" (first-party logins).
ALTER TABLE sessions ADD COLUMN scope text;
