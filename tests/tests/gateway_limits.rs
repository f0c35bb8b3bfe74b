//! The gateway's admission of every public method and its tier rate limits: the route table
//! walked (every method needs a token or is limited per source, and every one is limited),
//! limits shared by two gateway replicas through Redis, the limit metadata, and Redis going
//! away mid-test (fail-open with per-replica limits; fail-closed refuses).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use keel_gateway::routes::{Access, ROUTES};
use keel_proto::public as pb;
use keel_tests::{TestStack, authed, connect};
use tonic::Code;
use tonic::transport::Channel;

/// Calls any method with an empty message (every request type decodes from zero bytes).
async fn call(channel: Channel, path: &str, token: Option<&str>) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut req = tonic::Request::new(());
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    grpc.unary(req, path.parse().unwrap(), codec)
        .await
        .map(|_| ())
}

async fn tenant_on_tier(stack: &TestStack, tenant: &str, tier: &str) -> String {
    stack
        .directory()
        .await
        .unwrap()
        .create_tenant(keel_proto::auth::CreateTenantRequest {
            tenant_id: tenant.into(),
            display_name: tenant.into(),
            tier: tier.into(),
        })
        .await
        .unwrap();
    stack
        .create_user(tenant, "member", &["member"])
        .await
        .unwrap();
    stack.login(tenant, "member").await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_public_method_needs_a_token_or_a_source_budget_and_every_one_is_limited() {
    // The deployment default per-source budget (the harness raises it for other tests).
    let stack = TestStack::start_with(|e| {
        e.with(
            "KEEL_GATEWAY_ANONYMOUS_BURST",
            keel_gateway::limits::ANONYMOUS.burst.to_string(),
        )
    })
    .await
    .unwrap();
    let gw = connect(&stack.gateway_url()).await.unwrap();
    let token = tenant_on_tier(&stack, "acme", "free").await;
    // Without a token: every authenticated method refuses; anonymous ones run out of their
    // per-source budget.
    for route in ROUTES {
        match route.access {
            Access::Token(_) | Access::StepUp(_) => {
                let st = call(gw.clone(), route.path, None).await.unwrap_err();
                assert_eq!(st.code(), Code::Unauthenticated, "{}", route.path);
            }
            Access::Anonymous => {
                let mut limited = false;
                for _ in 0..=keel_gateway::limits::ANONYMOUS.burst {
                    if let Err(st) = call(gw.clone(), route.path, None).await
                        && st.code() == Code::ResourceExhausted
                    {
                        assert!(st.metadata().get("retry-after").is_some());
                        limited = true;
                        break;
                    }
                }
                assert!(limited, "{} is not limited per source", route.path);
            }
        }
    }
    // With a token: once the user's budget is spent, every authenticated method refuses.
    // (The bucket refills at 10/s, so a call may slip into a fresh token: each route gets a few
    // tries right after the budget was emptied; an unlimited route would never be refused.)
    let exhaust = || async {
        for _ in 0..1000 {
            if let Err(st) = call(
                gw.clone(),
                "/keel.v1.DocumentService/ListDocuments",
                Some(&token),
            )
            .await
                && st.code() == Code::ResourceExhausted
            {
                return;
            }
        }
        panic!("the user's budget never ran out");
    };
    for route in ROUTES {
        if let Access::Token(_) | Access::StepUp(_) = route.access {
            let mut refused = false;
            for _ in 0..3 {
                exhaust().await;
                if let Err(st) = call(gw.clone(), route.path, Some(&token)).await
                    && st.code() == Code::ResourceExhausted
                {
                    refused = true;
                    break;
                }
            }
            assert!(refused, "{} is not rate-limited", route.path);
        }
    }
    stack.shutdown().await;
}

async fn list(
    channel: Channel,
    token: &str,
) -> Result<tonic::metadata::MetadataMap, tonic::Status> {
    let mut docs = pb::document_service_client::DocumentServiceClient::new(channel);
    docs.list_documents(authed(pb::ListDocumentsRequest::default(), token))
        .await
        .map(|r| r.metadata().clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_hold_across_two_gateway_replicas_sharing_redis() {
    two_replicas("free").await;
}

/// Pro budgets are large enough for leases (a batch of the budget per replica): the shared
/// limit still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leased_limits_hold_across_two_gateway_replicas_too() {
    two_replicas("pro").await;
}

async fn two_replicas(tier: &str) {
    let stack = TestStack::start().await.unwrap();
    let token = tenant_on_tier(&stack, "acme", tier).await;
    let (second, second_url) = stack.gateway_replica(|e| e).await.unwrap();
    let replicas = [
        connect(&stack.gateway_url()).await.unwrap(),
        connect(&second_url).await.unwrap(),
    ];
    let rate = keel_gateway::limits::tier_limits(tier).user;
    let started = Instant::now();
    let (mut allowed, mut refused) = (0u32, 0u32);
    let mut first_md = None;
    for i in 0..(rate.burst * 3) {
        match list(replicas[i as usize % 2].clone(), &token).await {
            Ok(md) => {
                allowed += 1;
                first_md.get_or_insert(md);
            }
            Err(st) => {
                assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
                assert_eq!(keel_tests::reason(&st), "RATE_LIMITED");
                let after: u64 = st
                    .metadata()
                    .get("retry-after")
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=2).contains(&after), "retry-after {after}");
                refused += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // One shared budget: the burst plus what refilled meanwhile, not twice the burst (leases
    // that lapse unused may make it a little less).
    let ceiling = rate.burst as f64 + rate.per_second * elapsed + 1.0;
    assert!(
        (allowed as f64) <= ceiling && allowed >= rate.burst / 2,
        "allowed {allowed} (burst {}, ceiling {ceiling:.1}, {elapsed:.2}s), refused {refused}",
        rate.burst
    );
    let md = first_md.unwrap();
    assert_eq!(
        md.get("x-ratelimit-limit").unwrap().to_str().unwrap(),
        rate.burst.to_string()
    );
    assert!(md.get("x-ratelimit-remaining").is_some() && md.get("x-ratelimit-reset").is_some());
    // The gateway says where the time went, and exports its own overhead.
    let timing = md.get("server-timing").unwrap().to_str().unwrap();
    assert!(
        timing.starts_with("total;dur=") && timing.contains("upstream;dur="),
        "{timing}"
    );
    let (_, metrics) =
        keel_tests::admin_get(stack.gateway.as_ref().unwrap().admin_addr(), "/metrics")
            .await
            .unwrap();
    assert!(metrics.contains("keel_rpc_overhead_seconds"), "{metrics}");
    second.shutdown().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_redis_dies_the_gateway_serves_with_local_limits_or_refuses_if_fail_closed() {
    let mut redis = keel_tests::own::Redis::start().await;
    let url = redis.url.clone();
    let stack = TestStack::start_with(|e| e.with("KEEL_REDIS_URL", url))
        .await
        .unwrap();
    let token = tenant_on_tier(&stack, "acme", "free").await;
    let (closed, closed_url) = stack
        .gateway_replica(|e| e.with("KEEL_GATEWAY_REDIS_FAIL_CLOSED", "true"))
        .await
        .unwrap();
    let open = connect(&stack.gateway_url()).await.unwrap();
    let closed_ch = connect(&closed_url).await.unwrap();
    list(open.clone(), &token).await.unwrap();
    list(closed_ch.clone(), &token).await.unwrap();

    redis.kill();

    // Fail-open (the default): still serving, still limiting (per replica now).
    let md = list(open.clone(), &token).await.unwrap();
    assert!(md.get("x-ratelimit-remaining").is_some());
    let burst = keel_gateway::limits::tier_limits("free").user.burst;
    let mut refused = false;
    for _ in 0..=burst * 2 {
        if let Err(st) = list(open.clone(), &token).await {
            assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
            refused = true;
            break;
        }
    }
    assert!(refused, "the local limiter still limits");
    // Fail-closed: refuses while Redis is away.
    let st = list(closed_ch.clone(), &token).await.unwrap_err();
    assert_eq!(st.code(), Code::Unavailable, "{st:?}");
    closed.shutdown().await;
    stack.shutdown().await;
}

/// A slow caller with a large budget (leases of many calls, most lapsing unused) is charged for
/// the calls it made, not for whole leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lapsed_leases_give_their_unused_calls_back() {
    // 5/s with a burst of 1,000: leases of 50 calls; without refunds, twenty lapsed leases
    // would spend the whole burst.
    let stack = TestStack::start_with(|e| {
        e.with("KEEL_GATEWAY_ANONYMOUS_RATE", "5")
            .with("KEEL_GATEWAY_ANONYMOUS_BURST", "1000")
    })
    .await
    .unwrap();
    let gw = connect(&stack.gateway_url()).await.unwrap();
    for i in 0..25 {
        tokio::time::sleep(keel_gateway::limits::LEASE_TTL + Duration::from_millis(20)).await;
        if let Err(st) = call(gw.clone(), "/keel.v1.AuthenticationService/Logout", None).await {
            assert_ne!(st.code(), Code::ResourceExhausted, "call {i}: {st:?}");
        }
    }
    stack.shutdown().await;
}
