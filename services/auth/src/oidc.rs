//! The auth service's public HTTP surface, one issuer per tenant under `<base>/t/<tenant>`.
//! Today: each tenant's JWKS (`/t/<tenant>/jwks.json`: pending, active and retained keys, so
//! caches learn a key before it signs). Discovery, the authorization-code flow with PKCE, the
//! token, revocation, introspection and userinfo endpoints are still to come (issue #3).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keel_tenancy::TenantId;

use crate::keys::KeyStore;

/// How long clients may cache a JWKS. Rotations publish a key at least this long before it
/// signs (`RotateSigningKey` with `activate_after_seconds` ≥ this), as auth.md requires.
pub const JWKS_MAX_AGE_SECS: u32 = 300;

fn error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": code, "error_description": description })),
    )
        .into_response()
}

async fn jwks(State(keys): State<KeyStore>, Path(tenant): Path<String>) -> Response {
    let Ok(tenant) = TenantId::parse(&tenant) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such issuer");
    };
    match keys.published(&tenant).await {
        Ok(keys) if !keys.is_empty() => (
            [(
                header::CACHE_CONTROL,
                format!("public, max-age={JWKS_MAX_AGE_SECS}"),
            )],
            axum::Json(
                serde_json::json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() }),
            ),
        )
            .into_response(),
        // A tenant that has never signed (or does not exist) has no keys to publish.
        Ok(_) => error(StatusCode::NOT_FOUND, "not_found", "no such issuer"),
        Err(e) => {
            tracing::warn!(error = %e, "jwks unavailable");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "retry shortly",
            )
        }
    }
}

pub fn router(keys: KeyStore) -> Router {
    Router::new()
        .route("/t/{tenant}/jwks.json", get(jwks))
        .with_state(keys)
}
