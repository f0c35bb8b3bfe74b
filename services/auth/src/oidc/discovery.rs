//! OpenID Connect Discovery 1.0 and the JWKS.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{JWKS_MAX_AGE_SECS, no_such_issuer, tenant_of, unavailable};
use crate::identity::{Identity, OIDC_SCOPES};

/// The tenant of an issuer path, if it is an active tenant (suspended and unknown tenants have
/// no issuer).
async fn active_issuer(id: &Identity, raw: &str) -> Result<keel_tenancy::TenantId, Response> {
    let tenant = tenant_of(raw).ok_or_else(no_such_issuer)?;
    match id.tenants.get(&tenant).await {
        Ok(t) if t.active => Ok(tenant),
        Ok(_) | Err(crate::tenants::Error::Unknown(_)) => Err(no_such_issuer()),
        Err(e) => Err(unavailable(&e)),
    }
}

pub async fn jwks(State(id): State<Identity>, Path(tenant): Path<String>) -> Response {
    let tenant = match active_issuer(&id, &tenant).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    // A tenant that has never signed gets its first key now, so that clients can fetch the
    // JWKS before the first token exists.
    if let Err(e) = id.keys.signing_key(&tenant).await {
        return unavailable(&e);
    }
    match id.keys.published(&tenant).await {
        Ok(keys) => (
            [(
                header::CACHE_CONTROL,
                format!("public, max-age={JWKS_MAX_AGE_SECS}"),
            )],
            axum::Json(
                serde_json::json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() }),
            ),
        )
            .into_response(),
        Err(e) => unavailable(&e),
    }
}

/// The discovery document. Its `issuer` is exactly the URL it is served under (minus the
/// well-known suffix), as OIDC Discovery §4.3 requires clients to check.
pub async fn configuration(State(id): State<Identity>, Path(tenant): Path<String>) -> Response {
    let tenant = match active_issuer(&id, &tenant).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let iss = keel_token::issuer(&id.issuer_base, &tenant);
    let mut scopes: Vec<String> = OIDC_SCOPES.iter().map(|s| (*s).to_owned()).collect();
    scopes.extend(
        keel_authspec::policy::KNOWN_SCOPES
            .iter()
            .map(|s| (*s).to_owned()),
    );
    (
        [(
            header::CACHE_CONTROL,
            format!("public, max-age={JWKS_MAX_AGE_SECS}"),
        )],
        axum::Json(serde_json::json!({
            "issuer": iss,
            "authorization_endpoint": format!("{iss}/authorize"),
            "token_endpoint": format!("{iss}/token"),
            "jwks_uri": format!("{iss}/jwks.json"),
            "userinfo_endpoint": format!("{iss}/userinfo"),
            "revocation_endpoint": format!("{iss}/revoke"),
            "introspection_endpoint": format!("{iss}/introspect"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [keel_token::ALG_EDDSA],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "code_challenge_methods_supported": [keel_oauth::pkce::METHOD_S256],
            "scopes_supported": scopes,
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "sid", "azp", "preferred_username", "tenant_id"],
            "acr_values_supported": ["pwd", "mfa"],
            "prompt_values_supported": ["none", "login", "consent", "select_account"],
            "authorization_response_iss_parameter_supported": true,
            "request_parameter_supported": false,
            "request_uri_parameter_supported": false,
            "claims_parameter_supported": false,
        })),
    )
        .into_response()
}
