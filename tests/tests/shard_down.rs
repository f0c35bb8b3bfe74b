//! One PostgreSQL shard down: only its tenants see errors. Shard 0 lives on the shared server,
//! shard 1 on a server of this test's own. Tenants on both run a steady, open-model stream of
//! document calls (create, get, list) through the gateway, each call with a client deadline;
//! mid-run shard 1's server is SIGKILLed (postmaster and every backend), left down for a few
//! seconds and restarted (crash recovery). Counted: shard 0's tenants saw no error at all;
//! shard 1's tenants saw only clean errors — UNAVAILABLE or DEADLINE_EXCEEDED carrying a keel
//! reason, or their own deadline firing (counted apart: the gateway answered too late to say
//! why) — none outside the outage, no call outlived its deadline, and they succeeded again
//! within seconds of the restart; every create acknowledged to a client is readable afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keel_proto::public as pb;
use keel_proto::public::document_service_client::DocumentServiceClient;
use keel_tests::faults::{Call, Outcome, Tenant, classify};
use keel_tests::{Servers, TestStack, authed, create_databases, own, unique};
use tonic::transport::Channel;

/// The deadline every client call carries (`grpc-timeout`).
const CLIENT_DEADLINE: Duration = Duration::from_secs(3);
/// The gateway's own upstream deadline, shorter than the client's, so the gateway's answer
/// (with a reason) is due a second before the client would give up.
const UPSTREAM_TIMEOUT: &str = "2s";
/// How late after its deadline a call may come back before it counts as hung (scheduling on a
/// loaded 2-core machine).
const SLACK: Duration = Duration::from_millis(1500);
/// One call per tenant this often, whether or not earlier calls have answered (open model).
const PERIOD: Duration = Duration::from_millis(150);
const TENANTS_PER_SHARD: usize = 3;
const BEFORE: Duration = Duration::from_secs(3);
const OUTAGE: Duration = Duration::from_secs(4);
const AFTER: Duration = Duration::from_secs(8);
/// Shard 1's tenants must be served again within this of the restart.
const RECOVERY_LIMIT: Duration = Duration::from_secs(5);

async fn one_call(
    mut docs: DocumentServiceClient<Channel>,
    tenants: Arc<Vec<Tenant>>,
    i: usize,
    seq: u64,
) -> Call {
    let t = &tenants[i];
    let latest = t.acked.lock().unwrap().last().cloned();
    let op = match (seq % 3, latest) {
        (0, _) | (1, None) => "create",
        (1, Some(_)) => "get",
        _ => "list",
    };
    let start = Instant::now();
    let call = async {
        let r = match op {
            "create" => {
                let mut req = authed(
                    pb::CreateDocumentRequest {
                        title: format!("doc {seq}"),
                        content: format!("written by {} as call {seq}", t.name),
                        idempotency_key: String::new(),
                    },
                    &t.token,
                );
                req.set_timeout(CLIENT_DEADLINE);
                docs.create_document(req)
                    .await
                    .map(|r| t.acked.lock().unwrap().push(r.into_inner().id))
            }
            "get" => {
                let id = t.acked.lock().unwrap().last().cloned().unwrap_or_default();
                let mut req = authed(pb::GetDocumentRequest { id }, &t.token);
                req.set_timeout(CLIENT_DEADLINE);
                docs.get_document(req).await.map(drop)
            }
            _ => {
                let mut req = authed(
                    pb::ListDocumentsRequest {
                        page_size: 10,
                        omit_content: true,
                        ..Default::default()
                    },
                    &t.token,
                );
                req.set_timeout(CLIENT_DEADLINE);
                docs.list_documents(req).await.map(drop)
            }
        };
        r.map_or_else(|st| classify(&st), |()| Outcome::Ok)
    };
    let outcome = tokio::time::timeout(CLIENT_DEADLINE + SLACK, call)
        .await
        .unwrap_or(Outcome::Hung);
    Call {
        tenant: i,
        op,
        start,
        took: start.elapsed(),
        outcome,
    }
}

/// One tenant's stream: a call every `PERIOD` until `stop`, then every answer.
async fn tenant_stream(
    docs: DocumentServiceClient<Channel>,
    tenants: Arc<Vec<Tenant>>,
    i: usize,
    stop: Arc<AtomicBool>,
) -> Vec<Call> {
    let mut calls = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        calls.spawn(one_call(docs.clone(), tenants.clone(), i, seq));
        seq += 1;
    }
    calls.join_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_shard_down_only_its_tenants_see_errors() {
    let servers = Servers::from_env();
    let mut pg = own::Postgres::start().await;
    let id = unique("shard");
    let shard0 = create_databases(&servers, &id, 1).await.unwrap().remove(0);
    let shard1 = pg.create_databases(&id, 1).await.remove(0);
    let urls = format!("{shard0},{shard1}");
    let stack = TestStack::start_with(|e| {
        e.with("KEEL_DATABASE_URLS", urls)
            .with("KEEL_GATEWAY_UPSTREAM_TIMEOUT", UPSTREAM_TIMEOUT)
    })
    .await
    .unwrap();

    // Everyone is created (through auth, on their own shard) before the fault.
    let mut tenants = Vec::new();
    let mut per_shard = [0usize; 2];
    for n in 0.. {
        if per_shard.iter().all(|c| *c == TENANTS_PER_SHARD) {
            break;
        }
        let name = format!("sd-{n}");
        let shard = stack.shard_of(&name);
        if per_shard[shard] == TENANTS_PER_SHARD {
            continue;
        }
        per_shard[shard] += 1;
        let token = stack.tenant_token(&name).await.unwrap();
        tenants.push(Tenant::new(name, token, shard));
    }
    let tenants = Arc::new(tenants);
    let docs = stack.documents().await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let mut streams = tokio::task::JoinSet::new();
    for i in 0..tenants.len() {
        streams.spawn(tenant_stream(
            docs.clone(),
            tenants.clone(),
            i,
            stop.clone(),
        ));
    }
    tokio::time::sleep(BEFORE).await;
    pg.kill();
    let killed_at = Instant::now();
    // Readiness stays SERVING on the shard that answers (a balancer must not pull every
    // replica, and with it every tenant, for one shard), and says which shard is down.
    tokio::time::sleep(OUTAGE / 2).await;
    for (name, host) in [
        ("auth", stack.auth.as_ref()),
        ("inference", stack.inference.as_ref()),
        ("postproc", stack.postproc.as_ref()),
    ] {
        let host = host.unwrap();
        let url = format!("http://{}", host.grpc_addr());
        assert_eq!(
            keel_tests::health_status(&url).await.unwrap(),
            1,
            "{name} went NOT_SERVING for one shard of two"
        );
    }
    // A ping of the dead shard ends at the pool's acquire timeout (2 s): poll for its verdict.
    let admin = stack.inference.as_ref().unwrap().admin_addr();
    keel_tests::eventually(
        OUTAGE / 2,
        "keel_db_shard_up of shard 1 to read 0",
        || async move {
            let metrics = keel_tests::admin_get(admin, "/metrics").await?.1;
            Ok(metrics
                .lines()
                .any(|l| {
                    l.starts_with("keel_db_shard_up{")
                        && l.contains("schema=\"inference\"")
                        && l.contains("shard=\"1\"")
                        && l.ends_with(" 0")
                })
                .then_some(()))
        },
    )
    .await
    .unwrap();
    tokio::time::sleep((killed_at + OUTAGE).saturating_duration_since(Instant::now())).await;
    pg.restart().await;
    let restarted_at = Instant::now();
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::Relaxed);
    let calls: Vec<Call> = streams.join_all().await.into_iter().flatten().collect();

    let affected = |c: &&Call| tenants[c.tenant].shard == 1;
    let errors = |c: &&Call| c.outcome != Outcome::Ok;
    let unaffected_errors: Vec<String> = calls
        .iter()
        .filter(|c| !affected(c))
        .filter(errors)
        .map(|c| {
            format!(
                "{} {} at +{}ms: {:?}",
                tenants[c.tenant].name,
                c.op,
                c.start.saturating_duration_since(killed_at).as_millis(),
                c.outcome
            )
        })
        .collect();
    let affected_errors: Vec<&Call> = calls.iter().filter(affected).filter(errors).collect();
    let unclean: Vec<String> = affected_errors
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Unclean(_) | Outcome::Hung))
        .map(|c| format!("{} {}: {:?}", tenants[c.tenant].name, c.op, c.outcome))
        .collect();
    // An affected call that ended before the kill had no reason to fail.
    let before_fault: Vec<&&Call> = affected_errors
        .iter()
        .filter(|c| c.start + c.took < killed_at)
        .collect();
    let max_call = calls.iter().map(|c| c.took).max().unwrap_or_default();
    let max_unaffected = calls
        .iter()
        .filter(|c| !affected(c))
        .map(|c| c.took)
        .max()
        .unwrap_or_default();
    // Recovery of a tenant: from the restart to the first call after which all succeeded.
    let recovery = tenants
        .iter()
        .enumerate()
        .filter(|(_, t)| t.shard == 1)
        .map(|(i, _)| {
            let last_error = calls
                .iter()
                .filter(|c| c.tenant == i && c.outcome != Outcome::Ok)
                .map(|c| c.start)
                .max();
            let settled = calls
                .iter()
                .filter(|c| c.tenant == i && last_error.is_none_or(|e| c.start > e))
                .map(|c| c.start)
                .min()
                // Still failing at the end: not recovered within the run.
                .unwrap_or_else(Instant::now);
            settled.saturating_duration_since(restarted_at)
        })
        .max()
        .unwrap_or_default();
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for c in &affected_errors {
        *kinds.entry(format!("{:?}", c.outcome)).or_default() += 1;
    }

    // Every acknowledged create is readable now.
    let mut docs = docs;
    let (mut acked, mut lost) = (0, Vec::new());
    for t in tenants.iter() {
        let ids = t.acked.lock().unwrap().clone();
        for id in &ids {
            acked += 1;
            let mut req = authed(pb::GetDocumentRequest { id: id.clone() }, &t.token);
            req.set_timeout(CLIENT_DEADLINE);
            if let Err(st) = docs.get_document(req).await {
                lost.push(format!("{}/{id}: {:?} {}", t.name, st.code(), st.message()));
            }
        }
    }

    eprintln!(
        "injected=SIGKILL postgres shard 1 for {:.1}s (restart took {:.1}s) tenants={}+{} calls={} \
         errors_unaffected={} errors_affected={} {kinds:?} hung={} max_call_ms={} \
         max_call_unaffected_ms={} client_deadline_ms={} recovered_ms={} \
         acknowledged_creates={acked} lost={}",
        OUTAGE.as_secs_f64(),
        restarted_at
            .duration_since(killed_at + OUTAGE)
            .as_secs_f64(),
        TENANTS_PER_SHARD,
        TENANTS_PER_SHARD,
        calls.len(),
        unaffected_errors.len(),
        affected_errors.len(),
        calls.iter().filter(|c| c.outcome == Outcome::Hung).count(),
        max_call.as_millis(),
        max_unaffected.as_millis(),
        CLIENT_DEADLINE.as_millis(),
        recovery.as_millis(),
        lost.len(),
    );
    assert!(
        unaffected_errors.is_empty(),
        "tenants on the healthy shard saw errors: {unaffected_errors:#?}"
    );
    assert!(
        !affected_errors.is_empty(),
        "the outage was felt by the tenants of shard 1"
    );
    assert!(unclean.is_empty(), "unclean errors: {unclean:#?}");
    assert!(
        before_fault.is_empty(),
        "{} errors before the fault",
        before_fault.len()
    );
    assert!(
        max_call <= CLIENT_DEADLINE + SLACK,
        "a call took {max_call:?}"
    );
    assert!(
        recovery <= RECOVERY_LIMIT,
        "shard 1's tenants were served again only {recovery:?} after the restart"
    );
    assert!(lost.is_empty(), "acknowledged creates lost: {lost:#?}");
    stack.shutdown().await;
}
