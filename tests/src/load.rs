//! A throwaway stack prepared for `keel-loadtest`: tiers' tenants and users with tokens and
//! documents, the gateway's in-flight bound and inference's deadlines set so every scenario's
//! effect is reachable on one small machine. Used by `cargo xtask load` (`bin/load.rs`) and by
//! the smoke profile in the test suite.

use std::time::Duration;

use anyhow::Result;
use keel_loadtest::{Caller, Target};
use keel_proto::public as pb;

use crate::{TestStack, authed, connect};

/// The gateway sheds beyond this many calls in flight (production default: 2048): low enough
/// that the backpressure scenario reaches it with slow model calls on two cores.
pub const GATEWAY_MAX_IN_FLIGHT: usize = 256;
/// Inference's first-token deadline for the timeouts scenario.
pub const FIRST_TOKEN_TIMEOUT: Duration = Duration::from_secs(1);
/// Top-tier tenants and users in each: enough tier capacity (2,000/s per tenant, 500/s per
/// user) that the main load measures the system, not the limits.
const TENANTS: usize = 6;
const USERS: usize = 6;
const DOCUMENTS_PER_USER: usize = 4;
/// Connections to the gateway.
const CONNECTIONS: usize = 8;

/// Starts the stack for load: bigger pools, the bounds above.
pub async fn start_stack() -> Result<TestStack> {
    TestStack::start_with(|e| {
        e.with(
            "KEEL_DB_MAX_CONNECTIONS",
            keel_store::DEFAULT_MAX_CONNECTIONS.to_string(),
        )
        .with(
            "KEEL_GATEWAY_MAX_IN_FLIGHT",
            GATEWAY_MAX_IN_FLIGHT.to_string(),
        )
        .with(
            "KEEL_INFERENCE_FIRST_TOKEN_TIMEOUT",
            format!("{}ms", FIRST_TOKEN_TIMEOUT.as_millis()),
        )
        .with("KEEL_GATEWAY_ANONYMOUS_BURST", "1000000")
        .with("RUST_LOG", "error")
    })
    .await
}

async fn callers_of(
    stack: &TestStack,
    tenant: &str,
    tier: &str,
    users: usize,
) -> Result<Vec<Caller>> {
    stack
        .directory()
        .await?
        .create_tenant(keel_proto::auth::CreateTenantRequest {
            tenant_id: tenant.into(),
            display_name: format!("Load {tenant}"),
            tier: tier.into(),
        })
        .await?;
    let mut docs = stack.documents().await?;
    let mut out = Vec::new();
    for u in 0..users {
        let user = format!("u{u}");
        stack.create_user(tenant, &user, &["member"]).await?;
        let (token, _) = stack.login(tenant, &user).await?;
        let mut documents = Vec::new();
        for d in 0..DOCUMENTS_PER_USER {
            documents.push(
                docs.create_document(authed(
                    pb::CreateDocumentRequest {
                        title: format!("seed {d}"),
                        content: "load test seed document ".repeat(20),
                        idempotency_key: String::new(),
                    },
                    &token,
                ))
                .await?
                .into_inner()
                .id,
            );
        }
        out.push(Caller {
            tenant: tenant.into(),
            token,
            documents,
        });
    }
    Ok(out)
}

/// Tenants, users, tokens and documents for the scenarios.
pub async fn target(stack: &TestStack) -> Result<Target> {
    let mut callers = Vec::new();
    for t in 0..TENANTS {
        callers.extend(callers_of(stack, &format!("load{t}"), "enterprise", USERS).await?);
    }
    // The free tier: 20/s per tenant, 10/s per user.
    let noisy = callers_of(stack, "noisy", "free", 4).await?;
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(connect(&stack.gateway_url()).await?);
    }
    Ok(Target {
        channels,
        callers,
        noisy,
        noisy_limit_per_s: 20.0,
        http: Some(stack.gateway_http()),
        inference_metrics: stack.inference.as_ref().map(|h| h.admin_addr()),
        first_token_timeout: FIRST_TOKEN_TIMEOUT,
        gateway_max_in_flight: GATEWAY_MAX_IN_FLIGHT,
    })
}
