//! keel's access tokens: RFC 9068 JWTs signed with per-tenant Ed25519 keys, and the one strict
//! verifier every resource server (the gateway) and the auth service itself use.
//!
//! * [`keys`] — key material, states (pending → active → retained → revoked), random `kid`s.
//! * [`AccessClaims`] — the claim set, with no unknown or duplicate claims accepted.
//! * [`sign`] — issue a token with a tenant's active key.
//! * [`VerifiedCache`] — skip re-verifying the same bytes, re-checking expiry and key each hit.
//! * [`Verifier::verify`] — the checks in the order RFC 8725 and auth.md give: size cap, shape,
//!   header (`typ`, no `crit`/`cty`/`jku`/`x5u`/`jwk`/…), `kid` lookup, algorithm **from the key
//!   record**, signature, key state, then claims (`iss`/`aud`/tenant bound to the key's tenant,
//!   `exp`/`nbf`/`iat` with a small leeway).
//!
//! Nothing in a token is trusted or reflected before its signature verifies; errors never echo
//! token content.

pub mod cache;
pub mod keys;

pub use cache::VerifiedCache;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::Signer;
use keel_tenancy::TenantId;
use serde::{Deserialize, Serialize};

pub use keys::{KeyRecord, KeyState, SigningKey};

/// Tokens larger than this are refused before any decoding (ours are well under 1 KiB).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// RFC 9068 §2.1 header type of access tokens.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// The only JWS algorithm keel signs with.
pub const ALG_EDDSA: &str = "EdDSA";
/// Clock skew tolerated on `exp`, `nbf` and `iat`: small, because tokens live 5 minutes.
pub const LEEWAY_SECS: i64 = 5;
/// Longest lifetime a token may claim (`exp − iat`); longer ones are refused as policy.
pub const MAX_LIFETIME_SECS: i64 = 3600;

/// Seconds since the Unix epoch, from an injectable source (tests use a manual clock).
pub trait Clock: Send + Sync {
    fn now(&self) -> i64;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told (rotation rehearsals, expiry tests).
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    pub fn at(t: i64) -> Self {
        ManualClock(std::sync::atomic::AtomicI64::new(t))
    }
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, std::sync::atomic::Ordering::SeqCst);
    }
    pub fn set(&self, t: i64) {
        self.0.store(t, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The issuer base URL when a deployment configures none (`KEEL_AUTH_ISSUER_BASE`): the local
/// auth service's HTTP port. Auth and every verifier must agree on it.
pub const DEFAULT_ISSUER_BASE: &str = "http://127.0.0.1:8081";

/// The issuer URL of a tenant: one issuer per tenant under a deployment's base URL.
pub fn issuer(base: &str, tenant: &TenantId) -> String {
    format!("{}/t/{tenant}", base.trim_end_matches('/'))
}

/// The audience of a tenant's access tokens: the keel API of that tenant and nothing else.
pub fn audience(tenant: &TenantId) -> String {
    format!("keel-api:{tenant}")
}

/// RFC 9068 claims plus keel's own. Unknown and duplicate claims are refused on decode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub client_id: String,
    pub iat: i64,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub jti: String,
    /// Space-delimited scopes.
    pub scope: String,
    pub tenant_id: String,
    pub tier: String,
    /// Session ID: revoking the session revokes every token carrying it.
    pub sid: String,
    /// Authentication context: `pwd` (one factor) or `mfa`.
    pub acr: String,
    pub amr: Vec<String>,
    pub auth_time: i64,
}

impl AccessClaims {
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split(' ').filter(|s| !s.is_empty())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    typ: String,
    kid: String,
}

/// Issues an access token: `claims` signed with `key` (which must be the tenant's active key).
pub fn sign(claims: &AccessClaims, key: &SigningKey) -> String {
    sign_jws(ACCESS_TOKEN_TYP, claims, key)
}

/// `typ` of OpenID Connect ID tokens. Distinct from [`ACCESS_TOKEN_TYP`], so neither kind of
/// token passes for the other (RFC 8725 §3.11–3.12, R-14).
pub const ID_TOKEN_TYP: &str = "JWT";

/// Signs any claims set as a compact JWS with the given `typ` (ID tokens use [`ID_TOKEN_TYP`]).
pub fn sign_jws<T: Serialize>(typ: &str, claims: &T, key: &SigningKey) -> String {
    let header = Header {
        alg: ALG_EDDSA.to_owned(),
        typ: typ.to_owned(),
        kid: key.kid.clone(),
    };
    // Serialising these plain structs cannot fail.
    let h = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap_or_default());
    let c = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signing_input = format!("{h}.{c}");
    let sig = key.secret.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

/// Why a token was refused. The variants are for logs and tests; every one of them reaches a
/// client as the same UNAUTHENTICATED "the access token is not valid".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token too large")]
    TooLarge,
    #[error("token is not three base64url segments")]
    Malformed,
    #[error("token header is not acceptable")]
    Header,
    #[error("token type is not at+jwt")]
    Type,
    #[error("token key is unknown")]
    UnknownKey,
    #[error("token algorithm does not match its key")]
    Algorithm,
    #[error("token signature does not verify")]
    Signature,
    #[error("token key is not valid for verification now")]
    KeyNotUsable,
    #[error("token claims are not acceptable")]
    Claims,
    #[error("token issuer, audience or tenant does not match its key")]
    Binding,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("key directory unavailable")]
    KeysUnavailable,
}

impl keel_errors::KeelError for TokenError {
    fn reason(&self) -> keel_errors::Reason {
        match self {
            TokenError::KeysUnavailable => keel_errors::Reason::Unavailable,
            _ => keel_errors::Reason::Unauthenticated,
        }
    }
}

/// A token that passed every check, with the tenant of the key that signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub tenant: TenantId,
    pub claims: AccessClaims,
    pub kid: String,
}

/// Where verification keys come from. `kid`s are opaque: implementations look them up as map
/// keys or bind parameters, never as paths or SQL text.
pub trait KeySource {
    fn key(&self, kid: &str) -> Result<Option<KeyRecord>, TokenError>;
}

/// Checks tokens for one deployment (issuer base URL) against a key source and a clock.
pub struct Verifier<'a> {
    pub issuer_base: &'a str,
    pub clock: &'a dyn Clock,
}

fn decode_segment(s: &str) -> Result<Vec<u8>, TokenError> {
    if s.is_empty() {
        return Err(TokenError::Malformed);
    }
    URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenError::Malformed)
}

/// Only what a random `kid` of ours can look like: bounded, URL-safe characters.
pub fn kid_is_well_formed(kid: &str) -> bool {
    (8..=64).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The `kid` of a token, after the checks that need no key (size, shape, header, type). Callers
/// use it to make sure the key is at hand (fetching it if not) before [`Verifier::verify`]; it
/// is an opaque lookup key, trusted for nothing.
pub fn peek_kid(token: &str) -> Result<String, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge);
    }
    let h64 = token.split('.').next().ok_or(TokenError::Malformed)?;
    let header: Header =
        serde_json::from_slice(&decode_segment(h64)?).map_err(|_| TokenError::Header)?;
    let typ = header.typ.to_ascii_lowercase();
    if typ != ACCESS_TOKEN_TYP && typ != "application/at+jwt" {
        return Err(TokenError::Type);
    }
    if !kid_is_well_formed(&header.kid) {
        return Err(TokenError::UnknownKey);
    }
    Ok(header.kid)
}

impl Verifier<'_> {
    pub fn verify(&self, token: &str, keys: &dyn KeySource) -> Result<Verified, TokenError> {
        // 1. Size, before anything is decoded.
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        // 2. Exactly three non-empty base64url segments.
        let mut parts = token.split('.');
        let (Some(h64), Some(c64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header_bytes = decode_segment(h64)?;
        let sig_bytes = decode_segment(s64)?;
        // 3. Header: exactly alg, typ, kid (so no crit, cty, jku, x5u, jwk, x5c...), no duplicates.
        let header: Header =
            serde_json::from_slice(&header_bytes).map_err(|_| TokenError::Header)?;
        let typ = header.typ.to_ascii_lowercase();
        if typ != ACCESS_TOKEN_TYP && typ != "application/at+jwt" {
            return Err(TokenError::Type);
        }
        if !kid_is_well_formed(&header.kid) {
            return Err(TokenError::UnknownKey);
        }
        // 4. The key, by opaque kid; the algorithm comes from the key record, not the header.
        let key = keys.key(&header.kid)?.ok_or(TokenError::UnknownKey)?;
        if header.alg != key.alg() {
            return Err(TokenError::Algorithm);
        }
        // 5. Signature (strict Ed25519: canonical S, no small-order keys or R).
        let sig =
            ed25519_dalek::Signature::from_slice(&sig_bytes).map_err(|_| TokenError::Signature)?;
        let signing_input = &token[..h64.len() + 1 + c64.len()];
        key.public
            .verify_strict(signing_input.as_bytes(), &sig)
            .map_err(|_| TokenError::Signature)?;
        // 6. The key must be usable for verification now.
        let now = self.clock.now();
        if !key.verifies_at(now) {
            return Err(TokenError::KeyNotUsable);
        }
        // 7. Claims: typed, no unknown or duplicate members, NumericDates as integers.
        let claims_bytes = decode_segment(c64)?;
        let claims: AccessClaims =
            serde_json::from_slice(&claims_bytes).map_err(|_| TokenError::Claims)?;
        // 8. Bound to the key's tenant: issuer, audience and tenant claim all name it.
        if claims.tenant_id != key.tenant.as_str()
            || claims.iss != issuer(self.issuer_base, &key.tenant)
            || claims.aud != audience(&key.tenant)
        {
            return Err(TokenError::Binding);
        }
        if claims.sub.is_empty()
            || claims.client_id.is_empty()
            || claims.jti.is_empty()
            || claims.sid.is_empty()
            || claims.iat <= 0
            || claims.auth_time <= 0
            || claims.auth_time > claims.iat + LEEWAY_SECS
            || claims.exp <= claims.iat
            || claims.exp - claims.iat > MAX_LIFETIME_SECS
        {
            return Err(TokenError::Claims);
        }
        if claims.exp <= now - LEEWAY_SECS {
            return Err(TokenError::Expired);
        }
        if claims.iat > now + LEEWAY_SECS || claims.nbf.is_some_and(|n| n > now + LEEWAY_SECS) {
            return Err(TokenError::NotYetValid);
        }
        Ok(Verified {
            tenant: key.tenant.clone(),
            claims,
            kid: header.kid,
        })
    }
}

#[cfg(test)]
mod tests;
