//! An independent OpenID Connect client (the `openidconnect` crate, used only here) against the
//! running provider: discovery, the authorization-code flow with PKCE, ID-token validation
//! (signature against the published JWKS, issuer, audience, nonce), userinfo and refresh.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keel_oauth::form::encode;
use keel_proto::auth::OAuthClient;
use keel_tests::{TEST_PASSWORD, TestStack, http_request};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreJwsSigningAlgorithm, CoreProviderMetadata,
    CoreUserInfoClaims,
};
use openidconnect::{
    AuthorizationCode, ClientId, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, RedirectUrl, Scope, TokenResponse,
};

const REDIRECT: &str = "http://127.0.0.1/callback";

/// The crate's HTTP client interface over our raw HTTP helper (loopback only).
async fn http(
    req: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, std::io::Error> {
    let other = |e: anyhow::Error| std::io::Error::other(e.to_string());
    let uri = req.uri();
    let addr: std::net::SocketAddr = uri
        .authority()
        .ok_or_else(|| std::io::Error::other("no authority"))?
        .as_str()
        .parse()
        .map_err(|_| std::io::Error::other("not an IP:port authority"))?;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = http_request(addr, req.method().as_str(), path, &h, req.body())
        .await
        .map_err(other)?;
    let mut b = http::Response::builder().status(r.status);
    for (k, v) in &r.headers {
        b = b.header(k, v);
    }
    b.body(r.body)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).expect("hidden field") + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_independent_oidc_client_completes_discovery_code_flow_id_token_userinfo_and_refresh() {
    let stack = TestStack::start().await.unwrap();
    stack.create_tenant("acme").await.unwrap();
    stack
        .create_user("acme", "alice", &["member"])
        .await
        .unwrap();
    stack
        .put_client(OAuthClient {
            tenant_id: "acme".into(),
            client_id: "spa".into(),
            display_name: "Acme SPA".into(),
            redirect_uris: vec![REDIRECT.into()],
            grant_types: vec!["authorization_code".into(), "refresh_token".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let addr = stack.auth_http();
    let issuer = IssuerUrl::new(format!("http://{addr}/t/acme")).unwrap();

    // Discovery (the crate checks that the document's issuer is the one asked for).
    let meta = CoreProviderMetadata::discover_async(issuer, &http)
        .await
        .unwrap();
    let client = CoreClient::from_provider_metadata(meta, ClientId::new("spa".into()), None)
        .set_redirect_uri(RedirectUrl::new(REDIRECT.into()).unwrap());

    // The authorization request, with PKCE S256.
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, csrf, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("profile".into()))
        .add_scope(Scope::new("documents:read".into()))
        .set_pkce_challenge(challenge)
        .url();
    let path = format!("{}?{}", url.path(), url.query().unwrap());

    // The user signs in on the page.
    let page = http_request(addr, "GET", &path, &[], b"").await.unwrap();
    assert_eq!(page.status, 200, "{}", page.text());
    let cookie = page
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let form = encode(&[
        ("request", &hidden(&page.text(), "request")),
        ("username", "alice"),
        ("password", TEST_PASSWORD),
    ]);
    let r = http_request(
        addr,
        "POST",
        "/t/acme/authorize/login",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &cookie),
        ],
        form.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 303, "{}", r.text());
    let back = url::Url::parse(r.header("location").unwrap()).unwrap();
    let q: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
    assert_eq!(q.get("state"), Some(csrf.secret()));

    // The code exchange, with the verifier; then ID-token validation against the JWKS.
    let tokens = client
        .exchange_code(AuthorizationCode::new(q["code"].clone()))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .unwrap();
    let id_token = tokens.id_token().expect("an ID token for the openid scope");
    let id_verifier = client
        .id_token_verifier()
        .set_allowed_algs(vec![CoreJwsSigningAlgorithm::EdDsa]);
    let claims = id_token.claims(&id_verifier, &nonce).unwrap();
    assert_eq!(claims.issuer().as_str(), format!("http://{addr}/t/acme"));
    assert!(claims.audiences().iter().any(|a| a.as_str() == "spa"));
    // A wrong nonce fails validation (replayed ID tokens are caught).
    assert!(
        id_token
            .claims(&id_verifier, &Nonce::new("another".into()))
            .is_err()
    );

    // userinfo, for the same subject.
    let info: CoreUserInfoClaims = client
        .user_info(
            tokens.access_token().clone(),
            Some(claims.subject().clone()),
        )
        .unwrap()
        .request_async(&http)
        .await
        .unwrap();
    assert_eq!(info.preferred_username().map(|u| u.as_str()), Some("alice"));

    // Refresh: a new refresh token every time; the old one is refused afterwards.
    let rt1 = tokens.refresh_token().unwrap().clone();
    let refreshed = client
        .exchange_refresh_token(&rt1)
        .unwrap()
        .request_async(&http)
        .await
        .unwrap();
    let rt2 = refreshed.refresh_token().unwrap();
    assert_ne!(rt1.secret(), rt2.secret());
    assert!(
        client
            .exchange_refresh_token(&rt1)
            .unwrap()
            .request_async(&http)
            .await
            .is_err(),
        "a used refresh token is refused"
    );
    stack.shutdown().await;
}
