//! `/token`, `/revoke`, `/introspect` and `/userinfo`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keel_oauth::form::Params;
use keel_oauth::request::{ClientAuth, Grant, TokenRequest, client_auth};
use keel_oauth::{ErrorCode, OAuthError};
use keel_tenancy::TenantId;

use super::{header_str, no_store, no_such_issuer, oauth_error, tenant_of, unavailable};
use crate::clients::{Client, GRANT_CLIENT_CREDENTIALS, GRANT_CODE, GRANT_REFRESH};
use crate::identity::{Error, Identity};

fn invalid_grant() -> Response {
    oauth_error(&OAuthError::new(
        ErrorCode::InvalidGrant,
        "the grant is invalid, expired, used or revoked",
    ))
}

fn invalid_client() -> Response {
    oauth_error(&OAuthError::new(
        ErrorCode::InvalidClient,
        "client authentication failed",
    ))
}

fn unauthorized_client(grant: &str) -> Response {
    oauth_error(&OAuthError::new(
        ErrorCode::UnauthorizedClient,
        format!("this client may not use the {grant} grant"),
    ))
}

/// Authenticates the client the request names; `Ok(None)` when it names none.
async fn authenticated(
    id: &Identity,
    tenant: &TenantId,
    auth: Option<&ClientAuth>,
) -> Result<Option<Client>, Response> {
    let Some(auth) = auth else {
        return Ok(None);
    };
    match id.clients.authenticate(tenant, auth).await {
        Ok(c) => Ok(Some(c)),
        Err(Error::InvalidClient) => Err(invalid_client()),
        Err(e) => Err(unavailable(&e)),
    }
}

/// The authenticated client of a grant that needs one, allowed to use it.
async fn client_for(
    id: &Identity,
    tenant: &TenantId,
    auth: Option<&ClientAuth>,
    grant: &'static str,
) -> Result<Client, Response> {
    match authenticated(id, tenant, auth).await? {
        Some(c) if c.allows(grant) => Ok(c),
        Some(_) => Err(unauthorized_client(grant)),
        None => Err(invalid_client()),
    }
}

pub async fn token(
    State(id): State<Identity>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(tenant) = tenant_of(&tenant) else {
        return no_such_issuer();
    };
    let req = match TokenRequest::parse(&body, header_str(&headers, header::AUTHORIZATION)) {
        Ok(r) => r,
        Err(e) => return oauth_error(&e),
    };
    match req.grant {
        Grant::AuthorizationCode {
            code,
            redirect_uri,
            code_verifier,
        } => {
            let client = match client_for(&id, &tenant, req.client.as_ref(), GRANT_CODE).await {
                Ok(c) => c,
                Err(r) => return r,
            };
            match id
                .redeem_code(&tenant, &client, &code, &redirect_uri, &code_verifier)
                .await
            {
                Ok(t) => {
                    let mut body = serde_json::json!({
                        "access_token": t.issued.access_token,
                        "token_type": "Bearer",
                        "expires_in": t.issued.expires_in,
                        "scope": t.issued.scope,
                    });
                    if client.allows(GRANT_REFRESH) {
                        body["refresh_token"] = t.issued.refresh_token.into();
                    }
                    if let Some(idt) = t.id_token {
                        body["id_token"] = idt.into();
                    }
                    no_store(body)
                }
                Err(Error::InvalidGrant) => invalid_grant(),
                Err(e) => unavailable(&e),
            }
        }
        Grant::RefreshToken { refresh_token, .. } => {
            // A refresh token names its tenant; it must be this issuer's.
            if refresh_token.split('.').nth(1) != Some(tenant.as_str()) {
                return invalid_grant();
            }
            // Public clients (and keel's first-party ones) identify themselves; confidential
            // clients must authenticate, which `refresh` enforces for their tokens.
            let (client_id, authed) = match &req.client {
                Some(auth @ ClientAuth::Secret { .. }) => {
                    match authenticated(&id, &tenant, Some(auth)).await {
                        Ok(Some(c)) if c.allows(GRANT_REFRESH) => (c.spec.client_id, true),
                        Ok(_) => return unauthorized_client(GRANT_REFRESH),
                        Err(r) => return r,
                    }
                }
                Some(ClientAuth::None { client_id }) => (client_id.clone(), false),
                None => (String::new(), false),
            };
            match id.refresh(&refresh_token, &client_id, authed).await {
                Ok(i) => no_store(serde_json::json!({
                    "access_token": i.access_token,
                    "token_type": "Bearer",
                    "expires_in": i.expires_in,
                    "refresh_token": i.refresh_token,
                    "scope": i.scope,
                })),
                Err(Error::InvalidClient) => invalid_client(),
                Err(Error::InvalidGrant) => invalid_grant(),
                Err(e) => unavailable(&e),
            }
        }
        Grant::ClientCredentials { scope } => {
            let client =
                match client_for(&id, &tenant, req.client.as_ref(), GRANT_CLIENT_CREDENTIALS).await
                {
                    Ok(c) => c,
                    Err(r) => return r,
                };
            let scope = match scope {
                None => client.spec.scopes.clone(),
                Some(asked) => {
                    if let Some(s) = asked.iter().find(|s| !client.spec.scopes.contains(s)) {
                        return oauth_error(&OAuthError::new(
                            ErrorCode::InvalidScope,
                            format!("scope {s:?} is not granted to this client"),
                        ));
                    }
                    asked
                }
            };
            match id.client_token(&client, &scope).await {
                Ok(i) => no_store(serde_json::json!({
                    "access_token": i.access_token,
                    "token_type": "Bearer",
                    "expires_in": i.expires_in,
                    "scope": i.scope,
                })),
                Err(Error::InvalidClient) => invalid_client(),
                Err(e) => unavailable(&e),
            }
        }
    }
}

/// The issuer's tenant, the form and the client authentication it carries, or the error.
fn form_and_client(
    tenant: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(TenantId, Params, Option<ClientAuth>), Response> {
    let tenant = tenant_of(tenant).ok_or_else(no_such_issuer)?;
    let form = Params::parse(body).map_err(|e| oauth_error(&e))?;
    let auth = client_auth(&form, header_str(headers, header::AUTHORIZATION))
        .map_err(|e| oauth_error(&e))?;
    Ok((tenant, form, auth))
}

/// RFC 7009: a refresh token ends its family and session, an access token its session (a
/// client-credentials token is left to expire: it stands for its client, which is disabled to
/// end it). The caller must be the client the token was issued to: authenticated, for a
/// confidential client's tokens (§2.1). Always 200 for tokens it does not know; unknown hints
/// are ignored (§2.1: the server extends its search).
pub async fn revoke(
    State(id): State<Identity>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (tenant, form, auth) = match form_and_client(&tenant, &headers, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Some(a @ ClientAuth::Secret { .. }) = &auth
        && let Err(r) = authenticated(&id, &tenant, Some(a)).await
    {
        return r;
    }
    let Some(token) = form.take("token") else {
        return oauth_error(&OAuthError::invalid_request("token is required"));
    };
    let refresh = token.starts_with("rt1.");
    let token_client = if refresh {
        if token.split('.').nth(1) != Some(tenant.as_str()) {
            return StatusCode::OK.into_response();
        }
        id.refresh_token_client(&tenant, &token).await
    } else {
        match id.verify_access_token(&token).await {
            Ok(v) if v.tenant == tenant => Ok(Some(v.claims.client_id)),
            Ok(_) | Err(Error::InvalidCredentials) => Ok(None),
            Err(e) => Err(e),
        }
    };
    let token_client = match token_client {
        Ok(Some(c)) => c,
        Ok(None) => return StatusCode::OK.into_response(),
        Err(e) => return unavailable(&e),
    };
    let confidential = match id.clients.get(&tenant, &token_client).await {
        Ok(c) => c.is_some_and(|c| c.spec.confidential),
        Err(e) => return unavailable(&e),
    };
    let owner = match &auth {
        Some(ClientAuth::Secret { client_id, .. }) => *client_id == token_client,
        _ if confidential => false,
        Some(ClientAuth::None { client_id }) => *client_id == token_client,
        // A public or first-party client's token: holding it is the proof.
        None => true,
    };
    if !owner {
        return oauth_error(&OAuthError::new(
            ErrorCode::UnauthorizedClient,
            "the token was not issued to this client",
        ));
    }
    let result = if refresh {
        id.logout(&token).await
    } else {
        id.revoke_access_token(&tenant, &token).await
    };
    match result {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => unavailable(&e),
    }
}

/// RFC 7662, for confidential clients of this tenant (resource servers register as such).
pub async fn introspect(
    State(id): State<Identity>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (tenant, form, auth) = match form_and_client(&tenant, &headers, &body) {
        Ok((t, f, Some(a @ ClientAuth::Secret { .. }))) => (t, f, a),
        Ok(_) => return invalid_client(),
        Err(r) => return r,
    };
    if let Err(r) = authenticated(&id, &tenant, Some(&auth)).await {
        return r;
    }
    let Some(token) = form.take("token") else {
        return oauth_error(&OAuthError::invalid_request("token is required"));
    };
    let inactive = || no_store(serde_json::json!({ "active": false }));
    if token.starts_with("rt1.") {
        return match id.introspect_refresh(&tenant, &token).await {
            Ok(Some(r)) => no_store(serde_json::json!({
                "active": true,
                "token_type": "refresh_token",
                "client_id": r.client_id,
                "sub": r.user_id.to_string(),
                "exp": r.expires,
                "scope": r.scope,
                "sid": r.sid,
                "iss": keel_token::issuer(&id.issuer_base, &tenant),
                "tenant_id": tenant.as_str(),
            })),
            Ok(None) => inactive(),
            Err(e) => unavailable(&e),
        };
    }
    match id.verify_access_token(&token).await {
        Ok(v) if v.tenant == tenant => {
            let c = &v.claims;
            no_store(serde_json::json!({
                "active": true,
                "token_type": "access_token",
                "scope": c.scope,
                "client_id": c.client_id,
                "sub": c.sub,
                "aud": c.aud,
                "iss": c.iss,
                "exp": c.exp,
                "iat": c.iat,
                "jti": c.jti,
                "sid": c.sid,
                "acr": c.acr,
                "auth_time": c.auth_time,
                "tenant_id": c.tenant_id,
                "tier": c.tier,
            }))
        }
        Ok(_) | Err(Error::InvalidCredentials) => inactive(),
        Err(e) => unavailable(&e),
    }
}

fn bearer_error(status: StatusCode, code: &str, description: &str) -> Response {
    let mut r = super::error(status, code, description);
    if let Ok(v) = header::HeaderValue::from_str(&format!(
        "Bearer error=\"{code}\", error_description=\"{description}\""
    )) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// OIDC Core §5.3 for access tokens carrying `openid`.
pub async fn userinfo(
    State(id): State<Identity>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(tenant) = tenant_of(&tenant) else {
        return no_such_issuer();
    };
    let Some(token) = header_str(&headers, header::AUTHORIZATION).and_then(|h| {
        h.strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
    }) else {
        return bearer_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request",
            "a Bearer access token is required",
        );
    };
    let v = match id.verify_access_token(token).await {
        Ok(v) if v.tenant == tenant => v,
        Ok(_) | Err(Error::InvalidCredentials) => {
            return bearer_error(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the access token is not valid",
            );
        }
        Err(e) => return unavailable(&e),
    };
    if !v.claims.scopes().any(|s| s == "openid") {
        return bearer_error(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "the token lacks the openid scope",
        );
    }
    let mut body = serde_json::json!({ "sub": v.claims.sub, "tenant_id": v.claims.tenant_id });
    if v.claims.scopes().any(|s| s == "profile") {
        match id.username(&tenant, &v.claims.sub).await {
            Ok(Some(name)) => body["preferred_username"] = name.into(),
            Ok(None) => {}
            Err(e) => return unavailable(&e),
        }
    }
    no_store(body)
}
