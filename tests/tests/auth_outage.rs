//! Auth unreachable behind a gateway (a fault proxy between them resetting every connection):
//! tenants and keys the gateway confirmed recently keep being served, past the tenant cache's
//! freshness and the key refresh interval, because both are re-read in the background and
//! served stale while auth cannot answer; a tenant the gateway never saw is refused precisely
//! (UNAVAILABLE, dependency auth), not admitted blind. When auth is back, so is everything.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use keel_faultproxy::{Fault, FaultProxy};
use keel_proto::public as pb;
use keel_tests::{TestStack, authed, connect, detail};
use tonic::Code;
use tonic::transport::Channel;

async fn list(ch: Channel, token: &str) -> Result<(), tonic::Status> {
    pb::document_service_client::DocumentServiceClient::new(ch)
        .list_documents(authed(pb::ListDocumentsRequest::default(), token))
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn known_tenants_are_served_while_auth_is_unreachable() {
    let stack = TestStack::start().await.unwrap();
    stack.create_tenant("acme").await.unwrap();
    stack.create_tenant("globex").await.unwrap();
    for t in ["acme", "globex"] {
        stack.create_user(t, "alice", &["member"]).await.unwrap();
    }
    let (acme, _) = stack.login("acme", "alice").await.unwrap();
    let (globex, _) = stack.login("globex", "alice").await.unwrap();

    // A second gateway whose only way to auth is through the proxy.
    let auth_addr = stack
        .auth_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = FaultProxy::start(auth_addr).await.unwrap();
    let (gateway, gateway_url) = stack
        .gateway_replica(|e| e.with("KEEL_AUTH_URL", format!("http://{}", proxy.addr())))
        .await
        .unwrap();
    let ch = connect(&gateway_url).await.unwrap();
    list(ch.clone(), &acme).await.unwrap();

    proxy.set(Fault::Reset);
    // Past the tenant cache's freshness (and several key refreshes), acme's calls go on.
    let until = Instant::now() + keel_gateway::gate::TENANT_CACHE_TTL + Duration::from_secs(2);
    let mut calls = 0;
    while Instant::now() < until {
        if let Err(st) = list(ch.clone(), &acme).await {
            panic!("call {calls} refused while auth is unreachable: {st:?}");
        }
        calls += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(calls > 50, "{calls}");
    // globex was never seen by this gateway: it cannot be checked, so it is refused.
    let st = list(ch.clone(), &globex).await.unwrap_err();
    assert_eq!(st.code(), Code::Unavailable, "{st:?}");
    assert_eq!(detail(&st, "dependency").as_deref(), Some("auth"), "{st:?}");
    assert!(proxy.stats().resets > 0, "the gateway did try auth");

    proxy.set(Fault::None);
    keel_tests::eventually(Duration::from_secs(10), "globex served again", || {
        let ch = ch.clone();
        let globex = globex.clone();
        async move { Ok(list(ch, &globex).await.ok()) }
    })
    .await
    .unwrap();
    list(ch, &acme).await.unwrap();
    gateway.shutdown().await;
    proxy.shutdown().await;
    stack.shutdown().await;
}
