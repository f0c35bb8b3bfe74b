//! Per-tenant signing keys.
//!
//! A key's life: **pending** (`valid_from` in the future: published in the JWKS so caches learn
//! it, never signing, tokens signed with it refused) → **active** (signs) → **retained** (no
//! longer signs; verifies until `verify_until`, past the lifetime of every token it signed) →
//! **revoked** (refused at once). `kid`s are random and carry no meaning; the key record binds
//! each to its tenant.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keel_tenancy::TenantId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Pending,
    Active,
    Retained,
    Revoked,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::Retained => "retained",
            KeyState::Revoked => "revoked",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(KeyState::Pending),
            "active" => Some(KeyState::Active),
            "retained" => Some(KeyState::Retained),
            "revoked" => Some(KeyState::Revoked),
            _ => None,
        }
    }
}

/// The public half of a key and its validity, as verifiers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub kid: String,
    pub tenant: TenantId,
    pub public: ed25519_dalek::VerifyingKey,
    pub state: KeyState,
    /// Unix seconds from which the key may sign and verify.
    pub valid_from: i64,
    /// Unix seconds after which a retained key no longer verifies.
    pub verify_until: Option<i64>,
}

impl KeyRecord {
    /// The JWS algorithm of this key (one algorithm per key, RFC 8725 §3.1).
    pub fn alg(&self) -> &'static str {
        crate::ALG_EDDSA
    }

    /// Whether a token signed by this key may be accepted at `now`.
    pub fn verifies_at(&self, now: i64) -> bool {
        match self.state {
            KeyState::Revoked | KeyState::Pending => false,
            KeyState::Active => now >= self.valid_from,
            KeyState::Retained => {
                now >= self.valid_from && self.verify_until.is_some_and(|until| now < until)
            }
        }
    }

    /// The key as a JWK (RFC 8037 OKP), for the tenant's JWKS.
    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.public.as_bytes()),
            "kid": self.kid,
            "alg": crate::ALG_EDDSA,
            "use": "sig",
        })
    }
}

/// A private key that can sign.
pub struct SigningKey {
    pub kid: String,
    pub tenant: TenantId,
    pub secret: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b)?;
    Ok(b)
}

impl SigningKey {
    /// A fresh key for `tenant` with a random 128-bit `kid`.
    pub fn generate(tenant: &TenantId) -> Result<Self, getrandom::Error> {
        let seed: [u8; 32] = random_bytes()?;
        let kid: [u8; 16] = random_bytes()?;
        Ok(SigningKey {
            kid: URL_SAFE_NO_PAD.encode(kid),
            tenant: tenant.clone(),
            secret: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    pub fn from_seed(kid: String, tenant: TenantId, seed: &[u8; 32]) -> Self {
        SigningKey {
            kid,
            tenant,
            secret: ed25519_dalek::SigningKey::from_bytes(seed),
        }
    }

    pub fn seed(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }

    pub fn public(&self) -> ed25519_dalek::VerifyingKey {
        self.secret.verifying_key()
    }
}
