//! The auth service's public HTTP surface, one issuer per tenant under `<base>/t/<tenant>`:
//!
//! * `GET /t/<tenant>/jwks.json` — pending, active and retained keys (caches learn a key
//!   before it signs);
//! * `POST /t/<tenant>/token` — RFC 6749 token endpoint, `refresh_token` grant (rotation and
//!   reuse detection as over gRPC). The password and implicit grants are never offered; the
//!   authorization-code grant (with PKCE) and client credentials are still to come;
//! * `POST /t/<tenant>/revoke` — RFC 7009: a refresh token ends its family and session, an
//!   access token ends its session; always 200 for tokens it does not know.
//!
//! Discovery waits for the code flow: a discovery document must name an authorization
//! endpoint, and we do not publish one we do not serve.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keel_tenancy::TenantId;

use crate::identity::{Error, Identity};
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

/// RFC 6749 §4.1.3/§6 form fields we read; any parameter given twice is refused by the parser.
#[derive(serde::Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    refresh_token: Option<String>,
    client_id: Option<String>,
}

#[derive(serde::Deserialize)]
struct RevokeForm {
    token: Option<String>,
    token_type_hint: Option<String>,
}

fn parse_form<T: serde::de::DeserializeOwned>(body: &[u8]) -> Option<T> {
    serde_urlencoded::from_bytes(body).ok()
}

fn malformed_form() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "the form is malformed or repeats a parameter",
    )
}

/// Token responses must not be cached (RFC 6749 §5.1).
fn no_store(body: serde_json::Value) -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        axum::Json(body),
    )
        .into_response()
}

async fn token(
    State(id): State<Identity>,
    Path(tenant): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(tenant) = TenantId::parse(&tenant) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such issuer");
    };
    let form: TokenForm = match parse_form(&body) {
        Some(f) => f,
        None => return malformed_form(),
    };
    match form.grant_type.as_deref() {
        Some("refresh_token") => {}
        Some("password") | Some("implicit") => {
            return error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "this grant is never offered (RFC 9700 §2.4)",
            );
        }
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only refresh_token is served today",
            );
        }
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required",
            );
        }
    }
    let Some(rt) = form.refresh_token.filter(|t| !t.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "refresh_token is required",
        );
    };
    // The token must belong to this issuer's tenant.
    if rt.split('.').nth(1) != Some(tenant.as_str()) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "the refresh token is not valid",
        );
    }
    match id
        .refresh(&rt, form.client_id.as_deref().unwrap_or(""))
        .await
    {
        Ok(i) => no_store(serde_json::json!({
            "access_token": i.access_token,
            "token_type": "Bearer",
            "expires_in": i.expires_in,
            "refresh_token": i.refresh_token,
        })),
        Err(Error::InvalidGrant) => error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "the refresh token is not valid",
        ),
        Err(e) => {
            tracing::warn!(error = %e, "token endpoint failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "retry shortly",
            )
        }
    }
}

async fn revoke(
    State(id): State<Identity>,
    Path(tenant): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(tenant) = TenantId::parse(&tenant) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such issuer");
    };
    let form: RevokeForm = match parse_form(&body) {
        Some(f) => f,
        None => return malformed_form(),
    };
    let Some(token) = form.token.filter(|t| !t.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token is required",
        );
    };
    if let Some(h) = form.token_type_hint.as_deref()
        && h != "refresh_token"
        && h != "access_token"
    {
        return error(
            StatusCode::BAD_REQUEST,
            "unsupported_token_type",
            "hint must be refresh_token or access_token",
        );
    }
    let result = if token.starts_with("rt1.") {
        if token.split('.').nth(1) == Some(tenant.as_str()) {
            id.logout(&token).await
        } else {
            Ok(())
        }
    } else {
        id.revoke_access_token(&tenant, &token).await
    };
    match result {
        // RFC 7009 §2.2: 200 whether or not the token was known.
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "revocation failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "retry shortly",
            )
        }
    }
}

pub fn router(keys: KeyStore, identity: Identity) -> Router {
    let oauth = Router::new()
        .route("/t/{tenant}/token", post(token))
        .route("/t/{tenant}/revoke", post(revoke))
        .with_state(identity);
    Router::new()
        .route("/t/{tenant}/jwks.json", get(jwks))
        .with_state(keys)
        .merge(oauth)
}
