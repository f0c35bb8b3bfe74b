//! The OpenID Connect provider over HTTP: discovery, the authorization-code flow with PKCE and
//! its login and MFA pages, one-time codes, client credentials, introspection and userinfo,
//! against the running services (R-IDs from auth.md in the test names).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keel_oauth::form::encode;
use keel_oauth::pkce::s256_challenge;
use keel_proto::auth::OAuthClient;
use keel_proto::public as pb;
use keel_tests::{HttpResponse, TEST_PASSWORD, TestStack, authed, eventually, http_request};

const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const REDIRECT: &str = "http://127.0.0.1/cb";

fn web_client(tenant: &str) -> OAuthClient {
    OAuthClient {
        tenant_id: tenant.into(),
        client_id: "web".into(),
        display_name: "Acme Web".into(),
        confidential: false,
        redirect_uris: vec![REDIRECT.into(), "https://app.example.com/cb".into()],
        grant_types: vec!["authorization_code".into(), "refresh_token".into()],
        ..Default::default()
    }
}

async fn stack_with_user(roles: &[&str]) -> TestStack {
    let stack = TestStack::start().await.unwrap();
    stack.create_tenant("acme").await.unwrap();
    stack.create_user("acme", "alice", roles).await.unwrap();
    stack.put_client(web_client("acme")).await.unwrap();
    stack
}

fn authorize_query(extra: &[(&str, &str)]) -> String {
    let challenge = s256_challenge(VERIFIER);
    let mut p: Vec<(&str, &str)> = vec![
        ("response_type", "code"),
        ("client_id", "web"),
        ("redirect_uri", REDIRECT),
        ("scope", "openid profile documents:read"),
        ("state", "st-1"),
        ("nonce", "n-1"),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ];
    for (k, v) in extra {
        p.retain(|(pk, _)| pk != k);
        if !v.is_empty() {
            p.push((k, v));
        }
    }
    encode(&p)
}

fn hidden(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    Some(html[start..].split('"').next()?.to_owned())
}

/// A minimal browser: remembers the binding cookie between the pages of one sign-in.
struct Browser {
    addr: std::net::SocketAddr,
    cookie: String,
}

impl Browser {
    async fn open(stack: &TestStack, query: &str) -> (Browser, HttpResponse) {
        let addr = stack.auth_http();
        let r = http_request(addr, "GET", &format!("/t/acme/authorize?{query}"), &[], b"")
            .await
            .unwrap();
        let cookie = r
            .header("set-cookie")
            .map(|c| c.split(';').next().unwrap().to_owned())
            .unwrap_or_default();
        (Browser { addr, cookie }, r)
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> HttpResponse {
        http_request(
            self.addr,
            "POST",
            path,
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Cookie", &self.cookie),
            ],
            encode(form).as_bytes(),
        )
        .await
        .unwrap()
    }
}

/// Query parameters of a redirect's Location.
fn location_params(r: &HttpResponse) -> Vec<(String, String)> {
    let loc = r.header("location").expect("a redirect");
    let q = loc.split_once('?').map(|(_, q)| q).unwrap_or("");
    serde_urlencoded::from_str(q).unwrap()
}

fn param<'a>(ps: &'a [(String, String)], k: &str) -> Option<&'a str> {
    ps.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.as_str())
}

/// Signs alice in through the pages; returns the authorization code.
async fn sign_in(stack: &TestStack, query: &str) -> String {
    let (browser, page) = Browser::open(stack, query).await;
    assert_eq!(page.status, 200, "{}", page.text());
    let request = hidden(&page.text(), "request").expect("a login form");
    let r = browser
        .post(
            "/t/acme/authorize/login",
            &[
                ("request", &request),
                ("username", "alice"),
                ("password", TEST_PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let ps = location_params(&r);
    param(&ps, "code").unwrap().to_owned()
}

async fn exchange(stack: &TestStack, code: &str, verifier: &str) -> HttpResponse {
    http_request(
        stack.auth_http(),
        "POST",
        "/t/acme/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        encode(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
            ("client_id", "web"),
        ])
        .as_bytes(),
    )
    .await
    .unwrap()
}

fn claims(jwt: &str) -> (serde_json::Value, serde_json::Value) {
    let mut parts = jwt.split('.');
    let h = URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
    let c = URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
    (
        serde_json::from_slice(&h).unwrap(),
        serde_json::from_slice(&c).unwrap(),
    )
}

async fn works(stack: &TestStack, token: &str) -> bool {
    let mut docs = stack.documents().await.unwrap();
    docs.list_documents(authed(pb::ListDocumentsRequest::default(), token))
        .await
        .is_ok()
}

async fn wait_dead(stack: &TestStack, token: &str) {
    eventually(Duration::from_secs(10), "token refused", || async {
        Ok((!works(stack, token).await).then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn discovery_names_the_issuer_it_is_served_under_and_only_safe_flows() {
    let stack = stack_with_user(&["member"]).await;
    let addr = stack.auth_http();
    let r = http_request(
        addr,
        "GET",
        "/t/acme/.well-known/openid-configuration",
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let d = r.json();
    assert_eq!(d["issuer"], format!("http://{addr}/t/acme"));
    assert_eq!(
        d["authorization_endpoint"],
        format!("http://{addr}/t/acme/authorize")
    );
    assert_eq!(
        d["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(d["response_types_supported"], serde_json::json!(["code"]));
    let grants = d["grant_types_supported"].as_array().unwrap();
    assert!(!grants.iter().any(|g| g == "password" || g == "implicit"));
    assert_eq!(
        d["id_token_signing_alg_values_supported"],
        serde_json::json!(["EdDSA"])
    );
    // Unknown tenants have no issuer.
    let r = http_request(
        addr,
        "GET",
        "/t/nobody/.well-known/openid-configuration",
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r2_r21_code_flow_with_pkce_issues_working_tokens_and_an_id_token_r14() {
    let stack = stack_with_user(&["member"]).await;
    let addr = stack.auth_http();
    let (browser, page) = Browser::open(&stack, &authorize_query(&[])).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert!(page.text().contains("Acme Web"));
    let request = hidden(&page.text(), "request").unwrap();
    assert!(
        browser.cookie.starts_with("keel_authz_"),
        "{}",
        browser.cookie
    );

    // No user enumeration: a wrong password and an unknown user look the same.
    let wrong = browser
        .post(
            "/t/acme/authorize/login",
            &[
                ("request", &request),
                ("username", "alice"),
                ("password", "wrong password!"),
            ],
        )
        .await;
    let unknown = browser
        .post(
            "/t/acme/authorize/login",
            &[
                ("request", &request),
                ("username", "mallory"),
                ("password", "wrong password!"),
            ],
        )
        .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(
        (wrong.status, wrong.text()),
        (unknown.status, unknown.text())
    );

    // The request cannot be completed from another browser (login CSRF).
    let other = Browser {
        addr,
        cookie: "keel_authz_x=y".into(),
    };
    let r = other
        .post(
            "/t/acme/authorize/login",
            &[
                ("request", &request),
                ("username", "alice"),
                ("password", TEST_PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.header("location").is_none());

    let r = browser
        .post(
            "/t/acme/authorize/login",
            &[
                ("request", &request),
                ("username", "alice"),
                ("password", TEST_PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let loc = r.header("location").unwrap();
    assert!(loc.starts_with("http://127.0.0.1/cb?code="), "{loc}");
    let ps = location_params(&r);
    assert_eq!(param(&ps, "state"), Some("st-1"));
    // RFC 9207: the issuer comes back with the code (mix-up defence).
    assert_eq!(
        param(&ps, "iss"),
        Some(format!("http://{addr}/t/acme").as_str())
    );
    let code = param(&ps, "code").unwrap().to_owned();

    // The same parked request cannot mint a second code.
    let again = browser
        .post(
            "/t/acme/authorize/login",
            &[
                ("request", &request),
                ("username", "alice"),
                ("password", TEST_PASSWORD),
            ],
        )
        .await;
    assert_eq!(again.status, 400);

    let t = exchange(&stack, &code, VERIFIER).await;
    assert_eq!(t.status, 200, "{}", t.text());
    assert_eq!(t.header("cache-control"), Some("no-store"));
    let t = t.json();
    let at = t["access_token"].as_str().unwrap();
    assert!(
        t["refresh_token"]
            .as_str()
            .unwrap()
            .starts_with("rt1.acme.")
    );
    assert_eq!(t["scope"], "openid profile documents:read");
    assert!(
        works(&stack, at).await,
        "the access token works at the gateway"
    );
    let (h, c) = claims(at);
    assert_eq!(h["typ"], "at+jwt");
    assert_eq!(c["client_id"], "web");
    assert_eq!(c["scope"], "openid profile documents:read");

    let idt = t["id_token"].as_str().unwrap();
    let (h, c) = claims(idt);
    assert_eq!(
        (h["typ"].as_str(), h["alg"].as_str()),
        (Some("JWT"), Some("EdDSA"))
    );
    assert_eq!(c["aud"], "web");
    assert_eq!(c["nonce"], "n-1");
    assert_eq!(c["iss"], format!("http://{addr}/t/acme"));
    assert_eq!(c["acr"], "pwd");
    // an ID token is not an access token.
    assert!(
        !works(&stack, idt).await,
        "an ID token must not pass as an access token"
    );
    // Nor on the OpenAI-compatible surface.
    let r = http_request(
        stack.gateway_http(),
        "GET",
        "/v1/models",
        &[("Authorization", &format!("Bearer {idt}"))],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401, "an ID token over HTTP: {}", r.text());

    // userinfo, with the profile scope.
    let u = http_request(
        addr,
        "GET",
        "/t/acme/userinfo",
        &[("Authorization", &format!("Bearer {at}"))],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(u.status, 200, "{}", u.text());
    assert_eq!(u.json()["preferred_username"], "alice");
    assert_eq!(u.json()["sub"], c["sub"]);
    let u = http_request(
        addr,
        "GET",
        "/t/acme/userinfo",
        &[("Authorization", &format!("Bearer {idt}"))],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(u.status, 401);
    assert!(
        u.header("www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r8_a_code_works_once_and_its_reuse_revokes_what_it_issued() {
    let stack = stack_with_user(&["member"]).await;
    let code = sign_in(&stack, &authorize_query(&[])).await;
    let first = exchange(&stack, &code, VERIFIER).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let at = first.json()["access_token"].as_str().unwrap().to_owned();
    let rt = first.json()["refresh_token"].as_str().unwrap().to_owned();
    assert!(works(&stack, &at).await);

    let second = exchange(&stack, &code, VERIFIER).await;
    assert_eq!(second.status, 400);
    assert_eq!(second.json()["error"], "invalid_grant");
    wait_dead(&stack, &at).await;
    let (status, body) = keel_tests::http_post_form(
        stack.auth_http(),
        "/t/acme/token",
        &format!("grant_type=refresh_token&refresh_token={rt}&client_id=web"),
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{body}");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r2_r21_pkce_is_required_and_verified_and_codes_bind_to_client_and_redirect() {
    let stack = stack_with_user(&["member"]).await;
    // No challenge, plain, or no method: refused back to the client, with state and iss.
    for extra in [
        vec![("code_challenge", ""), ("code_challenge_method", "")],
        vec![("code_challenge_method", "plain")],
        vec![("code_challenge_method", "")],
    ] {
        let (_, r) = Browser::open(&stack, &authorize_query(&extra)).await;
        assert_eq!(r.status, 303, "{extra:?}: {}", r.text());
        let ps = location_params(&r);
        assert_eq!(param(&ps, "error"), Some("invalid_request"), "{extra:?}");
        assert_eq!(param(&ps, "state"), Some("st-1"));
    }
    // Implicit is never served.
    let (_, r) = Browser::open(&stack, &authorize_query(&[("response_type", "token")])).await;
    assert_eq!(
        param(&location_params(&r), "error"),
        Some("unsupported_response_type")
    );

    // A wrong verifier burns the code.
    let code = sign_in(&stack, &authorize_query(&[])).await;
    let other = "A".repeat(43);
    let r = exchange(&stack, &code, &other).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let r = exchange(&stack, &code, VERIFIER).await;
    assert_eq!(r.status, 400, "a code is spent by a failed attempt too");

    // R-2 (downgrade): a token request without code_verifier is refused outright.
    let code = sign_in(&stack, &authorize_query(&[])).await;
    let r = http_request(
        stack.auth_http(),
        "POST",
        "/t/acme/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        encode(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", "web"),
        ])
        .as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("invalid_request"))
    );

    // The redirect URI of the exchange must be the one of the request.
    let code = sign_in(&stack, &authorize_query(&[])).await;
    let r = http_request(
        stack.auth_http(),
        "POST",
        "/t/acme/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        encode(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "https://app.example.com/cb"),
            ("code_verifier", VERIFIER),
            ("client_id", "web"),
        ])
        .as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r1_redirect_uris_match_exactly_and_mismatches_are_never_redirected() {
    let stack = stack_with_user(&["member"]).await;
    for bad in [
        "https://app.example.com/cb/extra",
        "https://app.example.com/cb?x=1",
        "https://APP.example.com/cb",
        "https://app.example.com./cb",
        "https://a@app.example.com/cb",
        "https://evil.example/cb",
        "http://127.0.0.1/cb2",
    ] {
        let (_, r) = Browser::open(&stack, &authorize_query(&[("redirect_uri", bad)])).await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(
            r.header("location").is_none(),
            "{bad} must not be redirected to"
        );
    }
    // A loopback redirect may use any port (RFC 8252 §7.3).
    let (_, r) = Browser::open(
        &stack,
        &authorize_query(&[("redirect_uri", "http://127.0.0.1:49152/cb")]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Unknown clients get a page, not a redirect.
    let (_, r) = Browser::open(&stack, &authorize_query(&[("client_id", "nobody")])).await;
    assert_eq!(r.status, 400);
    assert!(r.header("location").is_none());
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_with_mfa_pass_the_mfa_page_and_get_acr_mfa() {
    use keel_auth::totp;
    let stack = stack_with_user(&["member"]).await;
    let (at, _) = stack.login("acme", "alice").await.unwrap();
    let mut auth = pb::authentication_service_client::AuthenticationServiceClient::new(
        keel_tests::connect(&stack.gateway_url()).await.unwrap(),
    );
    let enrolled = auth
        .enroll_mfa(authed(pb::EnrollMfaRequest {}, &at))
        .await
        .unwrap()
        .into_inner();
    let secret = totp::base32_decode(&enrolled.secret).unwrap();
    let step = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        / 30;
    let recovery = auth
        .confirm_mfa(authed(
            pb::ConfirmMfaRequest {
                code: totp::code(totp::Alg::Sha1, &secret, step, totp::DIGITS),
            },
            &at,
        ))
        .await
        .unwrap()
        .into_inner()
        .recovery_codes;

    let (browser, page) = Browser::open(&stack, &authorize_query(&[])).await;
    let request = hidden(&page.text(), "request").unwrap();
    let r = browser
        .post(
            "/t/acme/authorize/login",
            &[
                ("request", &request),
                ("username", "alice"),
                ("password", TEST_PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mfa_token = hidden(&r.text(), "mfa_token").expect("the MFA page");
    let bad = browser
        .post(
            "/t/acme/authorize/mfa",
            &[
                ("request", &request),
                ("mfa_token", &mfa_token),
                ("code", "not-a-code"),
            ],
        )
        .await;
    assert_eq!(bad.status, 401);
    let r = browser
        .post(
            "/t/acme/authorize/mfa",
            &[
                ("request", &request),
                ("mfa_token", &mfa_token),
                ("code", &recovery[0]),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let code = param(&location_params(&r), "code").unwrap().to_owned();
    let t = exchange(&stack, &code, VERIFIER).await.json();
    let (_, c) = claims(t["access_token"].as_str().unwrap());
    assert_eq!(c["acr"], "mfa");
    assert_eq!(c["amr"], serde_json::json!(["pwd", "recovery"]));
    let (_, idc) = claims(t["id_token"].as_str().unwrap());
    assert_eq!(idc["acr"], "mfa");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_clients_get_scoped_tokens_introspection_needs_a_client_and_disabling_revokes() {
    let stack = stack_with_user(&["member"]).await;
    let secret = stack
        .put_client(OAuthClient {
            tenant_id: "acme".into(),
            client_id: "indexer".into(),
            display_name: "Indexer".into(),
            confidential: true,
            grant_types: vec!["client_credentials".into()],
            scopes: vec!["documents:read".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(secret.starts_with("cs1."));
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("indexer:{secret}"))
    );
    let addr = stack.auth_http();
    let post = |path: &'static str, auth: Option<String>, form: Vec<(&'static str, String)>| async move {
        let mut headers: Vec<(&str, String)> =
            vec![("Content-Type", "application/x-www-form-urlencoded".into())];
        if let Some(a) = auth {
            headers.push(("Authorization", a));
        }
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let f: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        http_request(addr, "POST", path, &h, encode(&f).as_bytes())
            .await
            .unwrap()
    };

    let wrong = post(
        "/t/acme/token",
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("indexer:cs1.wrong")
        )),
        vec![("grant_type", "client_credentials".into())],
    )
    .await;
    assert_eq!(
        (wrong.status, wrong.json()["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let over = post(
        "/t/acme/token",
        Some(basic.clone()),
        vec![
            ("grant_type", "client_credentials".into()),
            ("scope", "documents:write".into()),
        ],
    )
    .await;
    assert_eq!(over.json()["error"], "invalid_scope");

    let t = post(
        "/t/acme/token",
        Some(basic.clone()),
        vec![("grant_type", "client_credentials".into())],
    )
    .await;
    assert_eq!(t.status, 200, "{}", t.text());
    let t = t.json();
    assert!(
        t.get("refresh_token").is_none(),
        "no refresh token for client credentials"
    );
    let at = t["access_token"].as_str().unwrap().to_owned();
    let (_, c) = claims(&at);
    assert_eq!(
        (c["sub"].as_str(), c["scope"].as_str()),
        (Some("client:indexer"), Some("documents:read"))
    );
    assert!(works(&stack, &at).await, "documents:read lists documents");
    let mut docs = stack.documents().await.unwrap();
    let st = docs
        .create_document(authed(
            pb::CreateDocumentRequest {
                title: "t".into(),
                content: "b".into(),
                ..Default::default()
            },
            &at,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        st.code(),
        tonic::Code::PermissionDenied,
        "no documents:write"
    );

    // Introspection: callers must authenticate; then the token is described.
    let anon = post("/t/acme/introspect", None, vec![("token", at.clone())]).await;
    assert_eq!(anon.status, 401);
    let i = post(
        "/t/acme/introspect",
        Some(basic.clone()),
        vec![("token", at.clone())],
    )
    .await;
    assert_eq!(i.status, 200, "{}", i.text());
    assert_eq!(i.json()["active"], true);
    assert_eq!(i.json()["client_id"], "indexer");

    // A user's refresh token, introspected, then revoked (RFC 7009): inactive.
    let (uat, urt) = stack.login("acme", "alice").await.unwrap();
    let i = post(
        "/t/acme/introspect",
        Some(basic.clone()),
        vec![("token", urt.clone())],
    )
    .await;
    assert_eq!(i.json()["active"], true, "{}", i.text());
    assert_eq!(i.json()["token_type"], "refresh_token");
    // RFC 7009 §2.1: one client cannot revoke another's tokens.
    let r = post(
        "/t/acme/revoke",
        Some(basic.clone()),
        vec![("token", urt.clone())],
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("unauthorized_client"))
    );
    let i = post(
        "/t/acme/introspect",
        Some(basic.clone()),
        vec![("token", urt.clone())],
    )
    .await;
    assert_eq!(i.json()["active"], true, "still active");
    // Revoking a client-credentials token does not lock its client out.
    let r = post(
        "/t/acme/revoke",
        Some(basic.clone()),
        vec![("token", at.clone())],
    )
    .await;
    assert_eq!(r.status, 200);
    let fresh = post(
        "/t/acme/token",
        Some(basic.clone()),
        vec![("grant_type", "client_credentials".into())],
    )
    .await
    .json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(works(&stack, &fresh).await);
    let r = post("/t/acme/revoke", None, vec![("token", urt.clone())]).await;
    assert_eq!(r.status, 200);
    for tok in [urt, uat] {
        let i = post(
            "/t/acme/introspect",
            Some(basic.clone()),
            vec![("token", tok)],
        )
        .await;
        assert_eq!(i.json(), serde_json::json!({ "active": false }));
    }

    // Disabling the client kills its tokens everywhere within seconds.
    let mut admin = stack.admin().await.unwrap();
    admin
        .disable_client(keel_proto::auth::DisableClientRequest {
            tenant_id: "acme".into(),
            client_id: "indexer".into(),
        })
        .await
        .unwrap();
    wait_dead(&stack, &at).await;
    let again = post(
        "/t/acme/token",
        Some(basic.clone()),
        vec![("grant_type", "client_credentials".into())],
    )
    .await;
    assert_eq!(again.status, 401);
    // Registered again, it works again (its revocation is taken back).
    stack
        .put_client(OAuthClient {
            tenant_id: "acme".into(),
            client_id: "indexer".into(),
            display_name: "Indexer".into(),
            confidential: true,
            grant_types: vec!["client_credentials".into()],
            scopes: vec!["documents:read".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let back = post(
        "/t/acme/token",
        Some(basic.clone()),
        vec![("grant_type", "client_credentials".into())],
    )
    .await;
    assert_eq!(back.status, 200, "{}", back.text());
    assert!(works(&stack, back.json()["access_token"].as_str().unwrap()).await);

    // A client token can never act as a user: a client holding the account scope is still
    // refused by the account methods (its subject is no user).
    let secret = stack
        .put_client(OAuthClient {
            tenant_id: "acme".into(),
            client_id: "sneaky".into(),
            display_name: "Sneaky".into(),
            confidential: true,
            grant_types: vec!["client_credentials".into()],
            scopes: vec!["account".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let sneaky = post(
        "/t/acme/token",
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("sneaky:{secret}"))
        )),
        vec![("grant_type", "client_credentials".into())],
    )
    .await
    .json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut auth = pb::authentication_service_client::AuthenticationServiceClient::new(
        keel_tests::connect(&stack.gateway_url()).await.unwrap(),
    );
    let st = auth
        .enroll_mfa(authed(pb::EnrollMfaRequest {}, &sneaky))
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::Unauthenticated);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disabling_a_client_ends_its_users_sessions_and_refreshes_and_scopes_bound_requests() {
    let stack = stack_with_user(&["member"]).await;
    let code = sign_in(&stack, &authorize_query(&[])).await;
    let t = exchange(&stack, &code, VERIFIER).await.json();
    let at = t["access_token"].as_str().unwrap().to_owned();
    let rt = t["refresh_token"].as_str().unwrap().to_owned();
    assert!(works(&stack, &at).await);
    stack
        .admin()
        .await
        .unwrap()
        .disable_client(keel_proto::auth::DisableClientRequest {
            tenant_id: "acme".into(),
            client_id: "web".into(),
        })
        .await
        .unwrap();
    wait_dead(&stack, &at).await;
    let (status, body) = keel_tests::http_post_form(
        stack.auth_http(),
        "/t/acme/token",
        &format!("grant_type=refresh_token&refresh_token={rt}&client_id=web"),
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{body}");

    // A client registered with scopes may ask for those alone.
    let mut bounded = web_client("acme");
    bounded.scopes = vec!["documents:read".into()];
    stack.put_client(bounded).await.unwrap();
    let (_, r) = Browser::open(
        &stack,
        &authorize_query(&[("scope", "openid documents:write")]),
    )
    .await;
    assert_eq!(param(&location_params(&r), "error"), Some("invalid_scope"));
    let code = sign_in(&stack, &authorize_query(&[("scope", "")])).await;
    let t = exchange(&stack, &code, VERIFIER).await.json();
    assert_eq!(t["scope"], "documents:read");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsafe_client_registrations_are_refused_with_the_reason() {
    let stack = TestStack::start().await.unwrap();
    stack.create_tenant("acme").await.unwrap();
    for (uri, grants) in [
        ("https://*.example.com/cb", vec!["authorization_code"]),
        ("http://app.example.com/cb", vec!["authorization_code"]),
        ("https://app.example.com/cb#x", vec!["authorization_code"]),
        ("https://app.example.com/cb", vec!["password"]),
        ("https://app.example.com/cb", vec!["client_credentials"]),
    ] {
        let mut c = web_client("acme");
        c.redirect_uris = vec![uri.into()];
        c.grant_types = grants.iter().map(|g| (*g).to_owned()).collect();
        let st = stack.put_client(c).await.unwrap_err();
        let st = st.downcast_ref::<tonic::Status>().unwrap();
        assert_eq!(st.code(), tonic::Code::InvalidArgument, "{uri} {grants:?}");
    }
    // Applying the same registration twice changes nothing.
    let mut admin = stack.admin().await.unwrap();
    let put = |c| keel_proto::auth::PutClientRequest {
        client: Some(c),
        rotate_secret: false,
    };
    assert!(
        admin
            .put_client(put(web_client("acme")))
            .await
            .unwrap()
            .into_inner()
            .changed
    );
    assert!(
        !admin
            .put_client(put(web_client("acme")))
            .await
            .unwrap()
            .into_inner()
            .changed
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_confidential_clients_refresh_token_needs_its_secret_and_is_not_burned_without_it() {
    let stack = stack_with_user(&["member"]).await;
    let mut server = web_client("acme");
    server.client_id = "server".into();
    server.confidential = true;
    let secret = stack.put_client(server).await.unwrap();
    let query = authorize_query(&[("client_id", "server")]);
    let code = sign_in(&stack, &query).await;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("server:{secret}"))
    );
    let form = |grant: &[(&str, &str)]| encode(grant);
    let t = http_request(
        stack.auth_http(),
        "POST",
        "/t/acme/token",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Authorization", &basic),
        ],
        form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ])
        .as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(t.status, 200, "{}", t.text());
    let rt = t.json()["refresh_token"].as_str().unwrap().to_owned();
    // Without the secret: invalid_client, and the token is still good.
    for body in [
        form(&[("grant_type", "refresh_token"), ("refresh_token", &rt)]),
        form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt),
            ("client_id", "server"),
        ]),
    ] {
        let r = http_request(
            stack.auth_http(),
            "POST",
            "/t/acme/token",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            body.as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (401, Some("invalid_client")),
            "{}",
            r.text()
        );
    }
    let r = http_request(
        stack.auth_http(),
        "POST",
        "/t/acme/token",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Authorization", &basic),
        ],
        form(&[("grant_type", "refresh_token"), ("refresh_token", &rt)]).as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    stack.shutdown().await;
}
