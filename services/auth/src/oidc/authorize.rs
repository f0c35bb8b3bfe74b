//! `/authorize`: the code flow's front half, with a minimal server-rendered login page.
//!
//! 1. `GET /authorize?…` — the request is parsed; until the client and the redirect URI are
//!    known to match a registration, errors are shown on a page, never redirected (RFC 6749
//!    §4.1.2.1). After that, errors go back to the client with `state` and `iss` (RFC 9207).
//!    A valid request is parked in Redis (10 minutes) under a random ID, bound to this browser
//!    by a random cookie (so a third party cannot complete someone else's request: login CSRF),
//!    and the login page is shown.
//! 2. `POST /authorize/login` — the password, through the same per-account and per-source
//!    limits as every login. A user with MFA gets the MFA page.
//! 3. `POST /authorize/mfa` — the TOTP or recovery code (each accepted once).
//!
//! On success the parked request is consumed (once) and the browser is sent to the redirect URI
//! with a one-time code.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keel_oauth::form::{Params, encode};
use keel_oauth::request::AuthorizeRequest;
use keel_oauth::{ErrorCode, OAuthError};
use keel_tenancy::TenantId;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::tenant_of;
use crate::clients::GRANT_CODE;
use crate::codes::CodeRequest;
use crate::identity::{Authenticated, Error, Identity, OIDC_SCOPES, Principal};

/// How long a login page stays usable.
pub const PENDING_TTL_SECS: i64 = 600;
const COOKIE_PREFIX: &str = "keel_authz_";

/// A parked authorization request, waiting for its user to sign in.
#[derive(serde::Serialize, serde::Deserialize)]
struct Pending {
    request: CodeRequest,
    state: Option<String>,
    /// SHA-256 of the browser-binding cookie.
    cookie_hash: String,
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

/// A page with headers that keep it out of frames, caches and referrers.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{t}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:22rem;margin:4rem auto;padding:0 1rem}}label,input,button{{display:block;width:100%;margin:.4rem 0}}input{{padding:.4rem}}.error{{color:#b00020}}</style>\
         </head><body><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                // No form-action: Chrome and Safari apply it to the redirect after the form (to
                // the client), which would stop the flow.
                "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
            ),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        html,
    )
        .into_response()
}

fn error_page(status: StatusCode, message: &str) -> Response {
    page(
        status,
        "Sign-in failed",
        &format!("<p class=\"error\">{}</p>", escape(message)),
    )
}

fn error_line(error: Option<&str>) -> String {
    error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default()
}

/// `action_base`: how to reach `/authorize/…` relative to the page's own URL.
fn login_page(
    status: StatusCode,
    action_base: &str,
    request_id: &str,
    client: &str,
    error: Option<&str>,
) -> Response {
    page(
        status,
        "Sign in",
        &format!(
            "<p>to continue to <b>{client}</b></p>{err}\
             <form method=\"post\" action=\"{action_base}login\">\
             <input type=\"hidden\" name=\"request\" value=\"{rid}\">\
             <label>Username<input name=\"username\" autocomplete=\"username\" required autofocus></label>\
             <label>Password<input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
             <button type=\"submit\">Sign in</button></form>",
            client = escape(client),
            err = error_line(error),
            rid = escape(request_id),
        ),
    )
}

fn mfa_page(
    status: StatusCode,
    request_id: &str,
    mfa_token: &str,
    error: Option<&str>,
) -> Response {
    page(
        status,
        "Two-step verification",
        &format!(
            "<p>Enter the code from your authenticator app, or a recovery code.</p>{err}\
             <form method=\"post\" action=\"mfa\">\
             <input type=\"hidden\" name=\"request\" value=\"{rid}\">\
             <input type=\"hidden\" name=\"mfa_token\" value=\"{mt}\">\
             <label>Code<input name=\"code\" autocomplete=\"one-time-code\" inputmode=\"numeric\" required autofocus></label>\
             <button type=\"submit\">Verify</button></form>",
            err = error_line(error),
            rid = escape(request_id),
            mt = escape(mfa_token),
        ),
    )
}

/// Appends query parameters to a redirect URI (which may already carry a query).
fn redirect_with(uri: &str, params: &[(&str, &str)]) -> Response {
    let sep = if uri.contains('?') { '&' } else { '?' };
    let location = format!("{uri}{sep}{}", encode(params));
    match HeaderValue::from_str(&location) {
        Ok(v) => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, v),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
        )
            .into_response(),
        Err(_) => error_page(StatusCode::BAD_REQUEST, "the redirect URI is not usable"),
    }
}

fn redirect_error(
    id: &Identity,
    tenant: &TenantId,
    uri: &str,
    state: Option<&str>,
    e: &OAuthError,
) -> Response {
    let iss = keel_token::issuer(&id.issuer_base, tenant);
    let mut params = vec![
        ("error", e.code.as_str()),
        ("error_description", e.description.as_ref()),
    ];
    if let Some(s) = state {
        params.push(("state", s));
    }
    params.push(("iss", &iss));
    redirect_with(uri, &params)
}

fn hash_b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(s.as_bytes()))
}

fn random_b64() -> Result<String, Error> {
    keel_token::keys::random_bytes::<32>()
        .map(|b| URL_SAFE_NO_PAD.encode(b))
        .map_err(|_| Error::Corrupt("random source"))
}

/// The path cookies are scoped to: the issuer's path plus `/authorize`.
fn cookie_path(id: &Identity, tenant: &TenantId) -> String {
    let iss = keel_token::issuer(&id.issuer_base, tenant);
    let after_scheme = iss.split_once("://").map(|(_, r)| r).unwrap_or(&iss);
    let path = after_scheme
        .find('/')
        .map(|i| &after_scheme[i..])
        .unwrap_or("/");
    format!("{path}/authorize")
}

fn cookie_name(request_id: &str) -> String {
    format!("{COOKIE_PREFIX}{}", &request_id[..request_id.len().min(12)])
}

fn read_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn redis_err(e: impl std::fmt::Display) -> Error {
    Error::Redis(e.to_string())
}

impl Identity {
    fn pending_key(&self, tenant: &TenantId, request_id: &str) -> String {
        self.redis_key(tenant, "authreq", &hash_b64(request_id))
    }

    async fn park(&self, tenant: &TenantId, p: &Pending) -> Result<String, Error> {
        let request_id = random_b64()?;
        let json = serde_json::to_string(p).map_err(|_| Error::Corrupt("pending request"))?;
        let mut conn = self.redis.get().await.map_err(redis_err)?;
        redis::cmd("SET")
            .arg(self.pending_key(tenant, &request_id))
            .arg(json)
            .arg("EX")
            .arg(PENDING_TTL_SECS)
            .query_async::<()>(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(request_id)
    }

    /// The parked request, if it exists and this browser holds its cookie.
    async fn parked(
        &self,
        tenant: &TenantId,
        request_id: &str,
        headers: &HeaderMap,
    ) -> Result<Option<Pending>, Error> {
        if request_id.is_empty() || request_id.len() > 64 {
            return Ok(None);
        }
        let mut conn = self.redis.get().await.map_err(redis_err)?;
        let json: Option<String> = redis::cmd("GET")
            .arg(self.pending_key(tenant, request_id))
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        let Some(p) = json.and_then(|j| serde_json::from_str::<Pending>(&j).ok()) else {
            return Ok(None);
        };
        let cookie = read_cookie(headers, &cookie_name(request_id)).unwrap_or("");
        let matches: bool = hash_b64(cookie)
            .as_bytes()
            .ct_eq(p.cookie_hash.as_bytes())
            .into();
        Ok(matches.then_some(p))
    }

    /// Consumes the parked request (once) and redirects with a fresh code.
    async fn complete(
        &self,
        tenant: &TenantId,
        request_id: &str,
        pending: &Pending,
        principal: &Principal,
    ) -> Result<Response, Error> {
        let mut conn = self.redis.get().await.map_err(redis_err)?;
        let deleted: i64 = redis::cmd("DEL")
            .arg(self.pending_key(tenant, request_id))
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        if deleted != 1 {
            return Ok(expired());
        }
        let code = self.issue_code(principal, &pending.request).await?;
        let iss = keel_token::issuer(&self.issuer_base, tenant);
        let mut params = vec![("code", code.as_str())];
        if let Some(s) = &pending.state {
            params.push(("state", s));
        }
        params.push(("iss", &iss));
        let mut r = redirect_with(&pending.request.redirect_uri, &params);
        // The binding cookie has done its job.
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{}=; Path={}; Max-Age=0; HttpOnly; SameSite=Lax",
            cookie_name(request_id),
            cookie_path(self, tenant)
        )) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
        tracing::info!(tenant = %tenant, client_id = %pending.request.client_id, "authorization code issued");
        Ok(r)
    }
}

fn expired() -> Response {
    error_page(
        StatusCode::BAD_REQUEST,
        "This sign-in request has expired, was already used, or was started in another browser. Go back to the application and start again.",
    )
}

fn unavailable_page(e: &dyn std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "authorization endpoint failed");
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Sign-in is temporarily unavailable. Try again shortly.",
    )
}

/// Every scope some role can grant, plus the OpenID Connect ones.
fn known_scope(s: &str) -> bool {
    OIDC_SCOPES.contains(&s) || keel_authspec::policy::KNOWN_SCOPES.contains(&s)
}

pub async fn start(
    State(id): State<Identity>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(tenant) = tenant_of(&tenant) else {
        return error_page(StatusCode::NOT_FOUND, "no such issuer");
    };
    let req = match AuthorizeRequest::parse(query.as_deref().unwrap_or("")) {
        Ok(r) => r,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e.description),
    };
    let client = match id.clients.get(&tenant, &req.client_id).await {
        Ok(Some(c)) if !c.disabled && c.allows(GRANT_CODE) => c,
        Ok(_) => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "unknown client, or one not allowed to use this flow",
            );
        }
        Err(e) => return unavailable_page(&e),
    };
    if !client
        .spec
        .redirect_uris
        .iter()
        .any(|r| keel_oauth::redirect::matches(r, &req.redirect_uri))
    {
        return error_page(
            StatusCode::BAD_REQUEST,
            "redirect_uri does not match any registered for this client",
        );
    }
    // From here on, errors go back to the client.
    let checked = match req.check() {
        Ok(c) => c,
        Err(e) => return redirect_error(&id, &tenant, &req.redirect_uri, req.state(), &e),
    };
    if checked.prompt_none {
        let e = OAuthError::new(ErrorCode::LoginRequired, "the user must sign in");
        return redirect_error(&id, &tenant, &req.redirect_uri, req.state(), &e);
    }
    if let Some(s) = checked.scope.iter().find(|s| !known_scope(s)) {
        let e = OAuthError::new(ErrorCode::InvalidScope, format!("unknown scope {s:?}"));
        return redirect_error(&id, &tenant, &req.redirect_uri, req.state(), &e);
    }
    // A client registered with scopes may ask for those alone (and gets them when it names
    // none); the user's roles narrow the grant further at issuance.
    let mut scope = checked.scope.clone();
    if !client.spec.scopes.is_empty() {
        if let Some(s) = scope
            .iter()
            .find(|s| !OIDC_SCOPES.contains(&s.as_str()) && !client.spec.scopes.contains(s))
        {
            let e = OAuthError::new(
                ErrorCode::InvalidScope,
                format!("scope {s:?} is not registered for this client"),
            );
            return redirect_error(&id, &tenant, &req.redirect_uri, req.state(), &e);
        }
        if scope.is_empty() {
            scope = client.spec.scopes.clone();
        }
    }
    let cookie = match random_b64() {
        Ok(c) => c,
        Err(e) => return unavailable_page(&e),
    };
    let pending = Pending {
        request: CodeRequest {
            client_id: checked.client_id,
            redirect_uri: checked.redirect_uri,
            scope: scope.join(" "),
            nonce: checked.nonce,
            code_challenge: checked.code_challenge,
        },
        state: checked.state,
        cookie_hash: hash_b64(&cookie),
    };
    let request_id = match id.park(&tenant, &pending).await {
        Ok(r) => r,
        Err(e) => return unavailable_page(&e),
    };
    let secure = if id.issuer_base.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let mut r = login_page(
        StatusCode::OK,
        "authorize/",
        &request_id,
        &client.spec.display_name,
        None,
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{}={cookie}; Path={}; Max-Age={PENDING_TTL_SECS}; HttpOnly; SameSite=Lax{secure}",
        cookie_name(&request_id),
        cookie_path(&id, &tenant)
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// A form posted by one of the pages, with the parked request it continues.
struct Posted {
    tenant: TenantId,
    form: Params,
    request_id: String,
    pending: Pending,
}

/// The tenant, the form and its parked request (which this browser must hold the cookie of),
/// or the page to answer with.
async fn posted(
    id: &Identity,
    tenant: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Posted, Response> {
    let tenant =
        tenant_of(tenant).ok_or_else(|| error_page(StatusCode::NOT_FOUND, "no such issuer"))?;
    let form = Params::parse(body).map_err(|_| expired())?;
    let request_id = form.get("request").unwrap_or("").to_owned();
    match id.parked(&tenant, &request_id, headers).await {
        Ok(Some(pending)) => Ok(Posted {
            tenant,
            form,
            request_id,
            pending,
        }),
        Ok(None) => Err(expired()),
        Err(e) => Err(unavailable_page(&e)),
    }
}

pub async fn login(
    State(id): State<Identity>,
    Path(tenant): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Posted {
        tenant,
        form,
        request_id,
        pending,
    } = match posted(&id, &tenant, &headers, &body).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let request_id = request_id.as_str();
    let username = form.get("username").unwrap_or("");
    let password = form.take("password").unwrap_or_default();
    let client = pending.request.client_id.clone();
    match id
        .password_step(
            tenant.as_str(),
            username,
            password,
            &client,
            Some(peer.ip()),
        )
        .await
    {
        Ok(Authenticated::Done(p)) => id
            .complete(&tenant, request_id, &pending, &p)
            .await
            .unwrap_or_else(|e| unavailable_page(&e)),
        Ok(Authenticated::MfaRequired(t)) => mfa_page(StatusCode::OK, request_id, &t, None),
        Err(Error::InvalidCredentials) => login_page(
            StatusCode::UNAUTHORIZED,
            "",
            request_id,
            &client,
            Some("Invalid username or password."),
        ),
        Err(Error::SourceThrottled) => login_page(
            StatusCode::TOO_MANY_REQUESTS,
            "",
            request_id,
            &client,
            Some("Too many failed sign-ins from this address. Try again later."),
        ),
        Err(e) => unavailable_page(&e),
    }
}

pub async fn mfa(
    State(id): State<Identity>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Posted {
        tenant,
        form,
        request_id,
        pending,
    } = match posted(&id, &tenant, &headers, &body).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let request_id = request_id.as_str();
    let mfa_token = form.get("mfa_token").unwrap_or("");
    let code = form.get("code").unwrap_or("");
    match id.complete_mfa(mfa_token, code).await {
        Ok((p, client)) if p.tenant == tenant && client == pending.request.client_id => id
            .complete(&tenant, request_id, &pending, &p)
            .await
            .unwrap_or_else(|e| unavailable_page(&e)),
        Ok(_) => expired(),
        Err(Error::InvalidCredentials) => mfa_page(
            StatusCode::UNAUTHORIZED,
            request_id,
            mfa_token,
            Some("That code is not valid. Try the next one."),
        ),
        Err(e) => unavailable_page(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_what_they_echo() {
        assert_eq!(
            escape("<script>\"x\"&'y'</script>"),
            "&lt;script&gt;&quot;x&quot;&amp;&#x27;y&#x27;&lt;/script&gt;"
        );
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("keel_authz_abc=1; keel_authz_abcd=2"),
        );
        assert_eq!(read_cookie(&h, "keel_authz_abcd"), Some("2"));
        assert_eq!(read_cookie(&h, "keel_authz_abc"), Some("1"));
        assert_eq!(read_cookie(&h, "keel_authz_x"), None);
    }

    #[test]
    fn redirects_keep_an_existing_query() {
        let r = redirect_with("https://a.example/cb?x=1", &[("code", "c d")]);
        assert_eq!(
            r.headers().get(header::LOCATION).unwrap(),
            "https://a.example/cb?x=1&code=c+d"
        );
    }
}
