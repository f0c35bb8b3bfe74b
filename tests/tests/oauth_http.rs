//! The OAuth HTTP endpoints of each tenant's issuer: the token endpoint's refresh grant (with
//! the same rotation and reuse detection as gRPC) and RFC 7009 revocation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use keel_proto::public as pb;
use keel_tests::{TestStack, authed, eventually, http_post_form};

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

async fn works(stack: &TestStack, token: &str) -> bool {
    let mut docs = stack.documents().await.unwrap();
    docs.list_documents(authed(pb::ListDocumentsRequest::default(), token))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_endpoint_rotates_refresh_tokens_and_refuses_what_rfc_9700_forbids() {
    let stack = TestStack::start().await.unwrap();
    stack.create_tenant("acme").await.unwrap();
    stack
        .create_user("acme", "alice", &["member"])
        .await
        .unwrap();
    let (_, rt1) = stack.login("acme", "alice").await.unwrap();
    let http = stack.auth.as_ref().unwrap().http_addr().unwrap();

    let (code, body) = http_post_form(
        http,
        "/t/acme/token",
        &format!("grant_type=refresh_token&refresh_token={rt1}"),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let t = json(&body);
    assert_eq!(t["token_type"], "Bearer");
    let (at2, rt2) = (
        t["access_token"].as_str().unwrap().to_owned(),
        t["refresh_token"].as_str().unwrap().to_owned(),
    );
    assert_ne!(rt1, rt2);
    assert!(works(&stack, &at2).await);

    // R-4 over HTTP: the used token is refused, and the family dies with it.
    let (code, body) = http_post_form(
        http,
        "/t/acme/token",
        &format!("grant_type=refresh_token&refresh_token={rt1}"),
    )
    .await
    .unwrap();
    assert_eq!(
        (code, json(&body)["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (code, _) = http_post_form(
        http,
        "/t/acme/token",
        &format!("grant_type=refresh_token&refresh_token={rt2}"),
    )
    .await
    .unwrap();
    assert_eq!(code, 400);

    // RFC 9700 §2.4 / ASVS 10.4.4: no password or implicit grant; unknown grants and bad forms.
    for (form, want) in [
        (
            "grant_type=password&username=alice&password=x",
            "unsupported_grant_type",
        ),
        ("grant_type=implicit", "unsupported_grant_type"),
        ("grant_type=urn:evil", "unsupported_grant_type"),
        ("refresh_token=x", "invalid_request"),
        ("grant_type=refresh_token", "invalid_request"),
        (
            "grant_type=refresh_token&grant_type=refresh_token&refresh_token=x",
            "invalid_request",
        ),
        (
            "grant_type=refresh_token&refresh_token=rt1.globex.abc",
            "invalid_grant",
        ),
        ("%zz", "invalid_request"),
    ] {
        let (code, body) = http_post_form(http, "/t/acme/token", form).await.unwrap();
        assert_eq!(
            (code, json(&body)["error"].as_str()),
            (400, Some(want)),
            "{form}: {body}"
        );
    }
    let (code, _) = http_post_form(
        http,
        "/t/NOT-A-TENANT/token",
        "grant_type=refresh_token&refresh_token=x",
    )
    .await
    .unwrap();
    assert_eq!(code, 404);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rfc_7009_revocation_ends_sessions_and_answers_200_for_unknown_tokens() {
    let stack = TestStack::start().await.unwrap();
    stack.create_tenant("acme").await.unwrap();
    stack
        .create_user("acme", "alice", &["member"])
        .await
        .unwrap();
    let http = stack.auth.as_ref().unwrap().http_addr().unwrap();

    // Revoking a refresh token ends its session: its access token stops working.
    let (at1, rt1) = stack.login("acme", "alice").await.unwrap();
    let (code, _) = http_post_form(
        http,
        "/t/acme/revoke",
        &format!("token={rt1}&token_type_hint=refresh_token"),
    )
    .await
    .unwrap();
    assert_eq!(code, 200);
    eventually(Duration::from_secs(10), "the session to end", || async {
        Ok((!works(&stack, &at1).await).then_some(()))
    })
    .await
    .unwrap();

    // Revoking an access token ends its session too.
    let (at2, rt2) = stack.login("acme", "alice").await.unwrap();
    let (code, _) = http_post_form(http, "/t/acme/revoke", &format!("token={at2}"))
        .await
        .unwrap();
    assert_eq!(code, 200);
    eventually(Duration::from_secs(10), "the session to end", || async {
        Ok((!works(&stack, &at2).await).then_some(()))
    })
    .await
    .unwrap();
    let (code, _) = http_post_form(
        http,
        "/t/acme/token",
        &format!("grant_type=refresh_token&refresh_token={rt2}"),
    )
    .await
    .unwrap();
    assert_eq!(code, 400, "the refresh family of a revoked session is dead");

    // Unknown, foreign or garbage tokens: 200 and nothing happens; unknown hints are refused.
    let (at3, _) = stack.login("acme", "alice").await.unwrap();
    for form in [
        "token=garbage",
        "token=rt1.acme.nothing",
        "token=rt1.globex.x",
        "token=eyJhbGciOiJub25lIn0.e30.",
    ] {
        let (code, body) = http_post_form(http, "/t/acme/revoke", form).await.unwrap();
        assert_eq!(code, 200, "{form}: {body}");
    }
    stack.create_tenant("globex").await.unwrap();
    let (code, _) = http_post_form(http, "/t/globex/revoke", &format!("token={at3}"))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(
        works(&stack, &at3).await,
        "another issuer cannot revoke acme's session"
    );
    // Unknown hints are ignored (RFC 7009 §2.1: the server extends its search).
    let (code, _) = http_post_form(http, "/t/acme/revoke", "token=x&token_type_hint=id_token")
        .await
        .unwrap();
    assert_eq!(code, 200);
    let (code, _) = http_post_form(http, "/t/acme/revoke", "").await.unwrap();
    assert_eq!(code, 400);
    stack.shutdown().await;
}
