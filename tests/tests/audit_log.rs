//! The audit log: auth's security events travel the outbox and JetStream to post-processing,
//! which keeps them per tenant, append-only; tenant admins read them through the gateway.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use keel_proto::public as pb;
use keel_tests::{TEST_PASSWORD, TestStack, authed, connect, eventually};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_admins_read_their_append_only_audit_log() {
    let stack = TestStack::start().await.unwrap();
    for t in ["acme", "globex"] {
        stack.create_tenant(t).await.unwrap();
        stack.create_user(t, "admin", &["admin"]).await.unwrap();
    }
    stack
        .create_user("acme", "member", &["member"])
        .await
        .unwrap();
    let channel = connect(&stack.gateway_url()).await.unwrap();
    let mut auth =
        pb::authentication_service_client::AuthenticationServiceClient::new(channel.clone());
    let st = auth
        .login(pb::LoginRequest {
            tenant_id: "acme".into(),
            username: "member".into(),
            password: format!("{TEST_PASSWORD}-wrong"),
            client_id: "t".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);
    let (admin, _) = stack.login("acme", "admin").await.unwrap();
    let (member, _) = stack.login("acme", "member").await.unwrap();
    let (other_admin, _) = stack.login("globex", "admin").await.unwrap();
    let mut audit = pb::audit_service_client::AuditServiceClient::new(channel);
    let list = |kind: &str, page_size: i32, page_token: String| pb::ListAuditEventsRequest {
        page_size,
        page_token,
        kind: kind.into(),
    };

    let entries = eventually(Duration::from_secs(20), "the audit log filled", || {
        let mut audit = audit.clone();
        let admin = admin.clone();
        async move {
            let r = audit
                .list_audit_events(authed(list("", 0, String::new()), &admin))
                .await?
                .into_inner();
            let kinds: Vec<&str> = r.entries.iter().map(|e| e.kind.as_str()).collect();
            let done = kinds.contains(&"login.failed")
                && kinds.iter().filter(|k| **k == "session.started").count() >= 2;
            Ok(done.then_some(r.entries))
        }
    })
    .await
    .unwrap();
    // Newest first.
    let times: Vec<i64> = entries
        .iter()
        .map(|e| e.occur_time.unwrap().seconds)
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");

    // A filter by kind, and paging one entry at a time through the same entries.
    let logins = audit
        .list_audit_events(authed(list("login", 0, String::new()), &admin))
        .await
        .unwrap()
        .into_inner();
    assert!(!logins.entries.is_empty());
    assert!(logins.entries.iter().all(|e| e.kind.starts_with("login.")));
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = audit
            .list_audit_events(authed(list("", 1, token), &admin))
            .await
            .unwrap()
            .into_inner();
        paged.extend(page.entries.into_iter().map(|e| e.event_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let all: Vec<String> = audit
        .list_audit_events(authed(list("", 0, String::new()), &admin))
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(paged, all);

    // Members may not read it; another tenant's admin sees only their own.
    let st = audit
        .list_audit_events(authed(list("", 0, String::new()), &member))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    let theirs = audit
        .list_audit_events(authed(list("", 0, String::new()), &other_admin))
        .await
        .unwrap()
        .into_inner();
    assert!(theirs.entries.iter().all(|e| !all.contains(&e.event_id)));

    // Append-only, even for the table's owner.
    let pool = stack.shard(stack.shard_of("acme")).await.unwrap();
    for sql in [
        "UPDATE postproc.audit_log SET kind = 'nothing happened' WHERE tenant_id = 'acme'",
        "DELETE FROM postproc.audit_log WHERE tenant_id = 'acme'",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
    }
    stack.shutdown().await;
}
