//! auth.md's JWT attack table replayed at both of the gateway's public surfaces (gRPC and the
//! OpenAI-compatible HTTP): tokens crafted here, some signed with the tenant's real key (opened
//! from the database with the master key, as an insider with both would). Every one must be
//! refused — UNAUTHENTICATED on gRPC, 401 with a `WWW-Authenticate` challenge and OpenAI's error
//! shape on HTTP — without echoing the token; the genuine token next to them must pass. Then
//! token replay: a reused refresh token, an access token after logout, after its session is
//! revoked, and a tenant's token presented for another tenant.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::Signer;
use keel_proto::public as pb;
use keel_tests::{HttpResponse, TestStack, authed, eventually, http_request};
use serde_json::{Value, json};
use sqlx::Row;
use tonic::Code;

fn parts(token: &str) -> (Value, Value) {
    let mut it = token.split('.');
    let h = serde_json::from_slice(&B64.decode(it.next().unwrap()).unwrap()).unwrap();
    let c = serde_json::from_slice(&B64.decode(it.next().unwrap()).unwrap()).unwrap();
    (h, c)
}

/// Signs any header and claims with an Ed25519 key.
fn sign(header: &Value, claims: &Value, key: &ed25519_dalek::SigningKey) -> String {
    let input = format!(
        "{}.{}",
        B64.encode(serde_json::to_vec(header).unwrap()),
        B64.encode(serde_json::to_vec(claims).unwrap())
    );
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", B64.encode(sig.to_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_jwt_attack_table_is_refused_at_the_gateway() {
    let stack = TestStack::start().await.unwrap();
    let genuine = stack.tenant_token("acme").await.unwrap();
    let other = stack.tenant_token("globex").await.unwrap();
    let (header, claims) = parts(&genuine);
    let kid = header["kid"].as_str().unwrap().to_owned();

    // The tenant's private key, opened as an insider with the database and master key would.
    let pool = stack.shard(stack.shard_of("acme")).await.unwrap();
    let row = sqlx::query("SELECT sealed_secret FROM auth.signing_keys WHERE kid = $1")
        .bind(&kid)
        .fetch_one(&pool)
        .await
        .unwrap();
    let sealer =
        keel_auth::seal::Sealer::from_base64(stack.env.raw("KEEL_AUTH_MASTER_KEY").unwrap())
            .unwrap();
    let tenant = keel_tenancy::TenantId::parse("acme").unwrap();
    let seed: [u8; 32] = sealer
        .open(
            &row.try_get::<Vec<u8>, _>("sealed_secret").unwrap(),
            &keel_auth::keys::aad(&kid, &tenant),
        )
        .unwrap()
        .try_into()
        .unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    // Sanity: re-signing the genuine header and claims gives a token that passes.
    let resigned = sign(&header, &claims, &key);

    let with_header = |k: &str, v: Value| {
        let mut h = header.clone();
        h[k] = v;
        sign(&h, &claims, &key)
    };
    let with_claim = |k: &str, v: Value| {
        let mut c = claims.clone();
        c[k] = v;
        sign(&header, &c, &key)
    };
    let now = claims["iat"].as_i64().unwrap();
    let attacker = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let (h64, c64) = {
        let mut it = genuine.split('.');
        (it.next().unwrap().to_owned(), it.next().unwrap().to_owned())
    };
    let unsigned_none = format!(
        "{}.{c64}.",
        B64.encode(br#"{"alg":"none","typ":"at+jwt","kid":"x"}"#)
    );
    let mut flipped = genuine.clone().into_bytes();
    let n = flipped.len();
    flipped[n - 3] = if flipped[n - 3] == b'A' { b'B' } else { b'A' };
    let rows: Vec<(&str, String)> = vec![
        ("row 1: alg none", with_header("alg", json!("none"))),
        ("row 1: unsigned none", unsigned_none),
        ("row 2: empty signature", format!("{h64}.{c64}.")),
        (
            "row 3: altered signature",
            String::from_utf8(flipped).unwrap(),
        ),
        (
            "rows 4-5: HS256 keyed with the public key",
            with_header("alg", json!("HS256")),
        ),
        (
            "row 6: embedded jwk",
            with_header(
                "jwk",
                json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(attacker.verifying_key().as_bytes())}),
            ),
        ),
        (
            "row 7: jku",
            with_header("jku", json!("https://attacker.example/jwks.json")),
        ),
        ("R-16: crit", with_header("crit", json!(["exp"]))),
        (
            "row 8: hostile kid",
            with_header("kid", json!("../../etc/passwd")),
        ),
        (
            "row 9: unknown kid",
            with_header("kid", json!("AAAAAAAAAAAAAAAAAAAAAA")),
        ),
        ("row 10: another tenant's kid", {
            let (oh, _) = parts(&other);
            let mut h = header.clone();
            h["kid"] = oh["kid"].clone();
            sign(&h, &claims, &attacker)
        }),
        ("row 11: expired", with_claim("exp", json!(now - 3600))),
        (
            "row 12: not yet valid",
            with_claim("iat", json!(now + 3600)),
        ),
        (
            "row 13: string exp",
            with_claim("exp", json!(format!("{}", now + 300))),
        ),
        (
            "row 14: float exp",
            with_claim("exp", json!((now + 300) as f64 + 0.5)),
        ),
        (
            "row 15: another audience",
            with_claim("aud", json!("keel-api:globex")),
        ),
        (
            "row 16: another issuer",
            with_claim("iss", json!("https://evil.example/t/acme")),
        ),
        (
            "R-3: another tenant claimed",
            with_claim("tenant_id", json!("globex")),
        ),
        ("row 18: ID-token type", with_header("typ", json!("JWT"))),
        ("row 22: two segments", format!("{h64}.{c64}")),
        (
            "row 25: huge token",
            format!("{h64}.{}.{}", "A".repeat(9_000), "A"),
        ),
        (
            "forged by an attacker key",
            sign(&header, &claims, &attacker),
        ),
        (
            "lifetime beyond the maximum",
            with_claim("exp", json!(now + 86_400)),
        ),
    ];
    let mut docs = stack.documents().await.unwrap();
    docs.list_documents(authed(pb::ListDocumentsRequest::default(), &resigned))
        .await
        .expect("the re-signed genuine token passes (the harness is sound)");
    let ok = models_over_http(&stack, &resigned).await;
    assert_eq!(
        ok.status,
        200,
        "the genuine token passes over HTTP: {}",
        ok.text()
    );
    for (name, token) in rows {
        let r = models_over_http(&stack, &token).await;
        assert_refused_over_http(&r, name, &token);
        let st = docs
            .list_documents(authed(pb::ListDocumentsRequest::default(), &token))
            .await
            .expect_err(name);
        assert_eq!(st.code(), Code::Unauthenticated, "{name}: {st:?}");
        assert!(
            !st.message().contains(&token[..token.len().min(40)]),
            "{name}: the error must not echo the token"
        );
    }
    stack.shutdown().await;
}

/// `GET /v1/models` on the OpenAI-compatible surface with `token` as the bearer.
async fn models_over_http(stack: &TestStack, token: &str) -> HttpResponse {
    http_request(
        stack.gateway_http(),
        "GET",
        "/v1/models",
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    )
    .await
    .unwrap()
}

fn assert_refused_over_http(r: &HttpResponse, name: &str, token: &str) {
    assert_eq!(r.status, 401, "{name}: {}", r.text());
    assert!(
        r.header("www-authenticate")
            .is_some_and(|c| c.starts_with("Bearer")),
        "{name}: a 401 carries its Bearer challenge"
    );
    let e = r.json();
    assert_eq!(e["error"]["code"], "UNAUTHENTICATED", "{name}: {e}");
    assert!(e["error"]["message"].is_string(), "{name}: {e}");
    assert!(
        !r.text().contains(&token[..token.len().min(40)]),
        "{name}: the error must not echo the token"
    );
}

/// Refused at both surfaces (revocation reaches the gateway within seconds, so poll).
async fn wait_refused_everywhere(stack: &TestStack, token: &str, what: &str) {
    eventually(std::time::Duration::from_secs(10), what, || async {
        let mut docs = stack.documents().await.unwrap();
        let grpc = docs
            .list_documents(authed(pb::ListDocumentsRequest::default(), token))
            .await;
        let refused = matches!(&grpc, Err(st) if st.code() == Code::Unauthenticated);
        Ok(refused.then_some(()))
    })
    .await
    .unwrap();
    let r = models_over_http(stack, token).await;
    assert_refused_over_http(&r, what, token);
}

async fn works_everywhere(stack: &TestStack, token: &str) {
    let mut docs = stack.documents().await.unwrap();
    docs.list_documents(authed(pb::ListDocumentsRequest::default(), token))
        .await
        .unwrap();
    assert_eq!(models_over_http(stack, token).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replayed_tokens_are_refused_at_both_surfaces() {
    use pb::authentication_service_client::AuthenticationServiceClient;
    let stack = TestStack::start().await.unwrap();
    stack.create_tenant("acme").await.unwrap();
    stack.create_tenant("globex").await.unwrap();
    stack
        .create_user("acme", "alice", &["member"])
        .await
        .unwrap();
    let mut auth =
        AuthenticationServiceClient::new(keel_tests::connect(&stack.gateway_url()).await.unwrap());
    let refresh = |rt: String| {
        let mut auth = auth.clone();
        async move {
            auth.refresh(pb::RefreshRequest {
                refresh_token: rt,
                client_id: "keel-tests".into(),
            })
            .await
            .map(|r| r.into_inner())
        }
    };

    // 1. A refresh token used twice: the second use is refused and kills the whole family,
    //    including the access token the first use minted.
    let (at, rt) = stack.login("acme", "alice").await.unwrap();
    works_everywhere(&stack, &at).await;
    let next = refresh(rt.clone()).await.unwrap();
    works_everywhere(&stack, &next.access_token).await;
    let st = refresh(rt.clone()).await.unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated, "reused refresh: {st:?}");
    assert_eq!(
        refresh(next.refresh_token.clone())
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated,
        "the successor of a reused refresh token dies with its family"
    );
    wait_refused_everywhere(&stack, &next.access_token, "access after refresh reuse").await;

    // 2. An access token after logout.
    let (at, rt) = stack.login("acme", "alice").await.unwrap();
    works_everywhere(&stack, &at).await;
    auth.logout(pb::LogoutRequest { refresh_token: rt })
        .await
        .unwrap();
    wait_refused_everywhere(&stack, &at, "access after logout").await;

    // 3. An access token after its session is revoked from another session.
    let (victim, _) = stack.login("acme", "alice").await.unwrap();
    let (owner, _) = stack.login("acme", "alice").await.unwrap();
    let sessions = auth
        .list_sessions(authed(pb::ListSessionsRequest {}, &victim))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    let current = sessions.iter().find(|s| s.current).unwrap();
    auth.revoke_session(authed(
        pb::RevokeSessionRequest {
            session_id: current.session_id.clone(),
        },
        &owner,
    ))
    .await
    .unwrap();
    wait_refused_everywhere(&stack, &victim, "access after session revocation").await;
    works_everywhere(&stack, &owner).await;

    // 4. Tenant A's token presented at tenant B: the tenant comes from the token, and a
    //    `keel-tenant-id` that disagrees is refused on both surfaces.
    let mut docs = stack.documents().await.unwrap();
    let mut req = authed(pb::ListDocumentsRequest::default(), &owner);
    req.metadata_mut()
        .insert("keel-tenant-id", "globex".parse().unwrap());
    let st = docs.list_documents(req).await.unwrap_err();
    assert!(
        matches!(st.code(), Code::Unauthenticated | Code::PermissionDenied),
        "{st:?}"
    );
    let r = http_request(
        stack.gateway_http(),
        "GET",
        "/v1/models",
        &[
            ("Authorization", &format!("Bearer {owner}")),
            ("keel-tenant-id", "globex"),
        ],
        b"",
    )
    .await
    .unwrap();
    assert!(matches!(r.status, 401 | 403), "{}", r.text());
    // A genuine globex token does not open acme's documents either: each sees its own.
    let globex = stack.tenant_token("globex").await.unwrap();
    let id = docs
        .create_document(authed(
            pb::CreateDocumentRequest {
                title: "acme only".into(),
                content: "secret".into(),
                ..Default::default()
            },
            &owner,
        ))
        .await
        .unwrap()
        .into_inner()
        .id;
    let st = docs
        .get_document(authed(pb::GetDocumentRequest { id: id.clone() }, &globex))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound, "{st:?}");
    stack.shutdown().await;
}
