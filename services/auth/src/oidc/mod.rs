//! The auth service's public HTTP surface: an OpenID Connect provider with one issuer per
//! tenant, `<base>/t/<tenant>`.
//!
//! * [`discovery`] — `/.well-known/openid-configuration` (its `issuer` is the URL it is served
//!   under) and `/jwks.json` (pending, active and retained keys: caches learn a key before it
//!   signs).
//! * [`authorize`] — `/authorize`: the authorization-code flow with PKCE S256 required, a
//!   server-rendered login page and MFA page, one-time codes bound to client, redirect URI and
//!   challenge.
//! * [`token`] — `/token` (authorization_code, refresh_token, client_credentials; never
//!   password or implicit), `/revoke` (RFC 7009), `/introspect` (RFC 7662, callers
//!   authenticated), `/userinfo`.
//!
//! Request parsing lives in `keel-oauth` (pure, fuzzed); this module does the I/O.

// Early-return helpers hand back the HTTP response itself as their error: it is what the
// handler returns either way, so boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

pub mod authorize;
pub mod discovery;
pub mod token;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keel_oauth::{ErrorCode, OAuthError};
use keel_tenancy::TenantId;

use crate::identity::Identity;

/// How long clients may cache a JWKS. Rotations publish a key at least this long before it
/// signs (`RotateSigningKey` with `activate_after_seconds` ≥ this), as auth.md requires.
pub const JWKS_MAX_AGE_SECS: u32 = 300;

/// A JSON error in the RFC 6749 §5.2 shape.
pub(crate) fn error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        axum::Json(serde_json::json!({ "error": code, "error_description": description })),
    )
        .into_response()
}

/// The status RFC 6749 §5.2 gives each error.
pub(crate) fn oauth_error(e: &OAuthError) -> Response {
    let status = match e.code {
        ErrorCode::InvalidClient => StatusCode::UNAUTHORIZED,
        ErrorCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut r = error(status, e.code.as_str(), &e.description);
    if e.code == ErrorCode::InvalidClient {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"keel\""),
        );
    }
    r
}

pub(crate) fn unavailable(e: &dyn std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "OIDC endpoint failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "retry shortly",
    )
}

pub(crate) fn no_such_issuer() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such issuer")
}

/// Token responses must not be cached (RFC 6749 §5.1).
pub(crate) fn no_store(body: serde_json::Value) -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        axum::Json(body),
    )
        .into_response()
}

/// The tenant of a path, if it is one (unknown tenants are found out later, like unknown
/// users: the same answers either way).
pub(crate) fn tenant_of(raw: &str) -> Option<TenantId> {
    TenantId::parse(raw).ok()
}

pub(crate) fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub fn router(identity: Identity) -> Router {
    Router::new()
        .route(
            "/t/{tenant}/.well-known/openid-configuration",
            get(discovery::configuration),
        )
        .route("/t/{tenant}/jwks.json", get(discovery::jwks))
        .route("/t/{tenant}/authorize", get(authorize::start))
        .route("/t/{tenant}/authorize/login", post(authorize::login))
        .route("/t/{tenant}/authorize/mfa", post(authorize::mfa))
        .route("/t/{tenant}/token", post(token::token))
        .route("/t/{tenant}/revoke", post(token::revoke))
        .route("/t/{tenant}/introspect", post(token::introspect))
        .route(
            "/t/{tenant}/userinfo",
            get(token::userinfo).post(token::userinfo),
        )
        .with_state(identity)
}
