//! Stalls: a server paused with SIGSTOP (its connections stay open, nothing answers) while a
//! steady, open-model stream of calls runs through the gateway, then resumed with SIGCONT.
//! Deadlines fire, nothing hangs, and everything works again after the SIGCONT:
//!
//! * PostgreSQL (shard 1; shard 0 stays on the shared server): the shard's calls fail within
//!   their client deadline, the other shard's tenants are not touched, acknowledged writes are
//!   all there afterwards.
//! * Redis: the gateway serves on (per-replica limits, revocation unchecked) and inference
//!   bypasses its cache, with bounded latency; afterwards both use Redis again.
//! * nats-server: writes are still acknowledged (the outbox holds their events); afterwards
//!   every outbox event reaches the stream exactly once and each completion is metered once.
//!
//! Each test prints one line with what it injected and what it counted. The three run one at a
//! time: their latency bounds are about the fault, not about sharing two cores.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_proto::public as pb;
use keel_proto::public::document_service_client::DocumentServiceClient;
use keel_proto::public::inference_service_client::InferenceServiceClient;
use keel_tests::faults::{Call, Outcome, Tenant, classify};
use keel_tests::{Servers, TestStack, authed, connect, create_databases, eventually, own, unique};
use tonic::transport::Channel;

/// One stall at a time (see the module comment).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long the server is stopped.
const STALL: Duration = Duration::from_secs(4);
/// One call per tenant this often, whether or not earlier calls have answered (open model).
const PERIOD: Duration = Duration::from_millis(150);

/// The calls a stream makes, in turn.
#[derive(Clone)]
struct Load {
    docs: DocumentServiceClient<Channel>,
    inference: InferenceServiceClient<Channel>,
    tenants: Arc<Vec<Tenant>>,
    ops: &'static [&'static str],
    deadline: Duration,
    slack: Duration,
}

fn prompt(text: String) -> pb::GenerateRequest {
    pb::GenerateRequest {
        model: "keel-tiny".into(),
        messages: vec![pb::ChatMessage {
            role: "user".into(),
            content: text,
        }],
        max_output_tokens: 8,
        ..Default::default()
    }
}

impl Load {
    async fn call(mut self, i: usize, seq: usize) -> Call {
        let t = &self.tenants[i];
        let latest = t.acked.lock().unwrap().last().cloned();
        let op = match (self.ops[seq % self.ops.len()], latest) {
            ("get", None) => "create",
            (op, _) => op,
        };
        let deadline = self.deadline;
        let req = |msg| {
            let mut r = authed(msg, &t.token);
            r.set_timeout(deadline);
            r
        };
        let start = Instant::now();
        let call = async {
            let r = match op {
                "create" => self
                    .docs
                    .create_document(req(pb::CreateDocumentRequest {
                        title: format!("doc {seq}"),
                        content: format!("written by {} as call {seq}", t.name),
                        idempotency_key: String::new(),
                    }))
                    .await
                    .map(|r| t.acked.lock().unwrap().push(r.into_inner().id)),
                "get" => {
                    let id = t.acked.lock().unwrap().last().cloned().unwrap_or_default();
                    let mut r = authed(pb::GetDocumentRequest { id }, &t.token);
                    r.set_timeout(deadline);
                    self.docs.get_document(r).await.map(drop)
                }
                "list" => {
                    let mut r = authed(
                        pb::ListDocumentsRequest {
                            page_size: 10,
                            omit_content: true,
                            ..Default::default()
                        },
                        &t.token,
                    );
                    r.set_timeout(deadline);
                    self.docs.list_documents(r).await.map(drop)
                }
                // Deterministic (temperature 0) and repeated: the cache's path.
                "complete" => {
                    let mut r = authed(prompt(format!("stall prompt {}", seq % 5)), &t.token);
                    r.set_timeout(deadline);
                    self.inference.complete(r).await.map(drop)
                }
                _ => {
                    let mut r = authed(prompt(format!("streamed prompt {seq}")), &t.token);
                    r.set_timeout(deadline);
                    match self.inference.generate(r).await {
                        Ok(s) => {
                            let mut s = s.into_inner();
                            loop {
                                match s.message().await {
                                    Ok(Some(_)) => {}
                                    Ok(None) => break Ok(()),
                                    Err(st) => break Err(st),
                                }
                            }
                        }
                        Err(st) => Err(st),
                    }
                }
            };
            r.map_or_else(|st| classify(&st), |()| Outcome::Ok)
        };
        let outcome = tokio::time::timeout(self.deadline + self.slack, call)
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

    /// Every tenant's stream, a call every `PERIOD` each, until `stop`; then every answer.
    async fn run(self, stop: Arc<AtomicBool>) -> Vec<Call> {
        let mut streams = tokio::task::JoinSet::new();
        for i in 0..self.tenants.len() {
            let (load, stop) = (self.clone(), stop.clone());
            streams.spawn(async move {
                let mut calls = tokio::task::JoinSet::new();
                let mut tick = tokio::time::interval(PERIOD);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    calls.spawn(load.clone().call(i, seq));
                    seq += 1;
                }
                calls.join_all().await
            });
        }
        streams.join_all().await.into_iter().flatten().collect()
    }
}

/// Creates `per_shard` tenants on each physical shard (named `{prefix}-{n}`), with tokens.
async fn tenants(stack: &TestStack, prefix: &str, per_shard: usize) -> Arc<Vec<Tenant>> {
    let mut out = Vec::new();
    let mut counts = [0usize; 2];
    for n in 0.. {
        if counts.iter().all(|c| *c == per_shard) {
            break;
        }
        let name = format!("{prefix}-{n}");
        let shard = stack.shard_of(&name);
        if counts[shard] == per_shard {
            continue;
        }
        counts[shard] += 1;
        let token = stack.tenant_token(&name).await.unwrap();
        out.push(Tenant::new(name, token, shard));
    }
    Arc::new(out)
}

async fn load(
    stack: &TestStack,
    tenants: &Arc<Vec<Tenant>>,
    ops: &'static [&'static str],
    deadline: Duration,
    slack: Duration,
) -> Load {
    let channel = connect(&stack.gateway_url()).await.unwrap();
    Load {
        docs: DocumentServiceClient::new(channel.clone()),
        inference: InferenceServiceClient::new(channel),
        tenants: tenants.clone(),
        ops,
        deadline,
        slack,
    }
}

/// Acknowledged creates that cannot be read back now.
async fn lost(stack: &TestStack, tenants: &[Tenant]) -> (usize, Vec<String>) {
    let mut docs = stack.documents().await.unwrap();
    let (mut acked, mut lost) = (0, Vec::new());
    for t in tenants {
        let ids = t.acked.lock().unwrap().clone();
        for id in &ids {
            acked += 1;
            let mut req = authed(pb::GetDocumentRequest { id: id.clone() }, &t.token);
            req.set_timeout(Duration::from_secs(5));
            if let Err(st) = docs.get_document(req).await {
                lost.push(format!("{}/{id}: {:?} {}", t.name, st.code(), st.message()));
            }
        }
    }
    (acked, lost)
}

fn max_took<'a>(calls: impl Iterator<Item = &'a Call>) -> Duration {
    calls.map(|c| c.took).max().unwrap_or_default()
}

fn describe(calls: &[&Call], tenants: &[Tenant], at: Instant) -> Vec<String> {
    calls
        .iter()
        .map(|c| {
            format!(
                "{} {} at +{}ms took {}ms: {:?}",
                tenants[c.tenant].name,
                c.op,
                c.start.saturating_duration_since(at).as_millis(),
                c.took.as_millis(),
                c.outcome
            )
        })
        .collect()
}

/// PostgreSQL of shard 1 stopped for `STALL` under document calls of tenants on both shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_stall_fires_deadlines_and_recovers() {
    const DEADLINE: Duration = Duration::from_secs(2);
    const SLACK: Duration = Duration::from_millis(500);
    const RECOVERY_LIMIT: Duration = Duration::from_secs(5);
    let _serial = SERIAL.lock().await;
    let servers = Servers::from_env();
    let pg = own::Postgres::start().await;
    let id = unique("stall");
    let shard0 = create_databases(&servers, &id, 1).await.unwrap().remove(0);
    let shard1 = pg.create_databases(&id, 1).await.remove(0);
    let urls = format!("{shard0},{shard1}");
    let stack = TestStack::start_with(|e| e.with("KEEL_DATABASE_URLS", urls))
        .await
        .unwrap();
    let tenants = tenants(&stack, "pgstall", 2).await;
    let load = load(
        &stack,
        &tenants,
        &["create", "get", "list"],
        DEADLINE,
        SLACK,
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let running = load.run(stop.clone());
    let fault = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        pg.pause();
        let paused_at = Instant::now();
        tokio::time::sleep(STALL).await;
        pg.resume();
        let resumed_at = Instant::now();
        tokio::time::sleep(Duration::from_secs(7)).await;
        stop.store(true, Ordering::Relaxed);
        (paused_at, resumed_at)
    };
    let (calls, (paused_at, resumed_at)) = tokio::join!(running, fault);

    let affected: Vec<&Call> = calls
        .iter()
        .filter(|c| tenants[c.tenant].shard == 1)
        .collect();
    let unaffected_errors: Vec<&Call> = calls
        .iter()
        .filter(|c| tenants[c.tenant].shard == 0 && c.failed())
        .collect();
    let errors: Vec<&Call> = affected.iter().copied().filter(|c| c.failed()).collect();
    let bad: Vec<&Call> = errors
        .iter()
        .copied()
        .filter(|c| matches!(c.outcome, Outcome::Unclean(_) | Outcome::Hung))
        .collect();
    let before: Vec<&Call> = errors
        .iter()
        .copied()
        .filter(|c| c.start + c.took < paused_at)
        .collect();
    let count = |f: fn(&Outcome) -> bool| errors.iter().filter(|c| f(&c.outcome)).count();
    // From the SIGCONT to the first call after which all of the shard's calls succeeded.
    let last_error = errors.iter().map(|c| c.start).max();
    let settled = affected
        .iter()
        .filter(|c| last_error.is_none_or(|e| c.start > e))
        .map(|c| c.start)
        .min()
        .unwrap_or_else(Instant::now);
    let recovery = settled.saturating_duration_since(resumed_at);
    let max_call = max_took(calls.iter());
    let (acked, lost) = lost(&stack, &tenants).await;
    eprintln!(
        "injected=SIGSTOP postgres shard 1 {:.1}s calls={} errors_affected={} \
         (server_answered={} client_deadline={} unclean={} hung={}) errors_unaffected={} \
         max_call_ms={} deadline_ms={} recovered_ms={} acknowledged_creates={acked} lost={}",
        resumed_at.duration_since(paused_at).as_secs_f64(),
        calls.len(),
        errors.len(),
        count(|o| matches!(o, Outcome::Clean(_))),
        count(|o| *o == Outcome::Deadline),
        count(|o| matches!(o, Outcome::Unclean(_))),
        count(|o| *o == Outcome::Hung),
        unaffected_errors.len(),
        max_call.as_millis(),
        DEADLINE.as_millis(),
        recovery.as_millis(),
        lost.len(),
    );
    assert!(
        !errors.is_empty(),
        "the stall was felt by shard 1's tenants"
    );
    assert!(
        bad.is_empty(),
        "errors other than a deadline or a clean refusal: {:#?}",
        describe(&bad, &tenants, paused_at)
    );
    assert!(
        max_call <= DEADLINE + SLACK,
        "a call outlived its deadline: {max_call:?}"
    );
    assert!(
        before.is_empty(),
        "errors before the stall: {:#?}",
        describe(&before, &tenants, paused_at)
    );
    assert!(
        unaffected_errors.is_empty(),
        "tenants of the other shard saw errors: {:#?}",
        describe(&unaffected_errors, &tenants, paused_at)
    );
    assert!(
        recovery <= RECOVERY_LIMIT,
        "shard 1 served again only {recovery:?} after SIGCONT"
    );
    assert!(lost.is_empty(), "acknowledged creates lost: {lost:#?}");
    stack.shutdown().await;
}

/// Redis stopped for `STALL` under document and model calls: everything keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn b_a_redis_stall_is_served_through_and_recovers() {
    /// Every call must answer within this, stall or not, and well before the SIGCONT: the
    /// gateway waits for Redis at most 1 s per call (`REDIS_OP_TIMEOUT`, then Redis counts as
    /// away for a moment), inference's cache 250 ms per round trip behind a breaker; model calls
    /// measured 1.6–2.2 s at worst on a loaded 2-core machine. Before the gateway bounded its
    /// round trips, every call waited for the SIGCONT (≈ 4 s).
    const BOUND: Duration = Duration::from_secs(3);
    const DEADLINE: Duration = Duration::from_secs(5);
    let _serial = SERIAL.lock().await;
    let redis = own::Redis::start().await;
    let url = redis.url.clone();
    let stack = TestStack::start_with(|e| e.with("KEEL_REDIS_URL", url))
        .await
        .unwrap();
    let tenants = tenants(&stack, "redisstall", 1).await;
    let ops = &["create", "complete", "get", "generate", "list"];
    let load = load(&stack, &tenants, ops, DEADLINE, Duration::from_secs(1)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let running = load.clone().run(stop.clone());
    let fault = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        redis.pause();
        let paused_at = Instant::now();
        tokio::time::sleep(STALL).await;
        redis.resume();
        let resumed_at = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        (paused_at, resumed_at)
    };
    let (calls, (paused_at, resumed_at)) = tokio::join!(running, fault);
    let during: Vec<&Call> = calls
        .iter()
        .filter(|c| c.start + c.took > paused_at && c.start < resumed_at)
        .collect();
    let errors: Vec<&Call> = calls.iter().filter(|c| c.failed()).collect();
    let max_call = max_took(calls.iter());
    let max_before = max_took(calls.iter().filter(|c| c.start + c.took < paused_at));
    let max_during = max_took(during.iter().copied());

    // Afterwards Redis is in use again: the limiter's buckets and the cache's entries come
    // back after a flush (the cache's breaker may first need its pause to pass).
    let mut conn = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let prefix = stack.env.raw("KEEL_REDIS_PREFIX").unwrap().to_owned();
    let tenant = tenants[0].name.clone();
    let after = eventually(Duration::from_secs(15), "redis in use again", || {
        let (load, mut conn) = (load.clone(), conn.clone());
        let (limiter, cache) = (
            format!("{prefix}:rl:*:{tenant}:*"),
            format!("{prefix}:{tenant}:inference:chat:*"),
        );
        async move {
            // Calls 1 and 4 of the stream: a complete and a list.
            let c = load.clone().call(0, 1).await;
            let l = load.call(0, 4).await;
            assert_eq!((&c.outcome, &l.outcome), (&Outcome::Ok, &Outcome::Ok));
            let mut found = 0;
            for pattern in [limiter, cache] {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(pattern)
                    .query_async(&mut conn)
                    .await?;
                if keys.is_empty() {
                    return Ok(None);
                }
                found += keys.len();
            }
            Ok(Some(found))
        }
    })
    .await
    .unwrap();
    let (acked, lost) = lost(&stack, &tenants).await;
    eprintln!(
        "injected=SIGSTOP redis {:.1}s calls={} during_stall={} errors={} max_call_ms={} \
         (before {} during {}) bound_ms={} redis_keys_after={after} acknowledged_creates={acked} lost={}",
        resumed_at.duration_since(paused_at).as_secs_f64(),
        calls.len(),
        during.len(),
        errors.len(),
        max_call.as_millis(),
        max_before.as_millis(),
        max_during.as_millis(),
        BOUND.as_millis(),
        lost.len(),
    );
    assert!(
        errors.is_empty(),
        "served through the stall: {:#?}",
        describe(&errors, &tenants, paused_at)
    );
    assert!(!during.is_empty());
    assert!(max_call < BOUND, "a call took {max_call:?}");
    assert!(lost.is_empty(), "acknowledged creates lost: {lost:#?}");
    stack.shutdown().await;
}

/// Rows of `schema.outbox` over the shards: (all, unsent, of `kind` if given).
async fn outbox(pools: &[sqlx::PgPool], schema: &str, kind: &str) -> sqlx::Result<(i64, i64, i64)> {
    let (mut all, mut unsent, mut of_kind) = (0, 0, 0);
    for p in pools {
        let (a, u, k): (i64, i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*), count(*) FILTER (WHERE sent_time IS NULL), \
             count(*) FILTER (WHERE kind = $1) FROM {schema}.outbox"
        )))
        .bind(kind)
        .fetch_one(p)
        .await?;
        all += a;
        unsent += u;
        of_kind += k;
    }
    Ok((all, unsent, of_kind))
}

/// Documents counted by post-processing, per tenant.
async fn document_effects(pools: &[sqlx::PgPool], tenant: &str) -> sqlx::Result<i64> {
    let mut n = 0;
    for p in pools {
        let c: Option<i64> = sqlx::query_scalar(
            "SELECT created FROM postproc.tenant_document_stats WHERE tenant_id = $1",
        )
        .bind(tenant)
        .fetch_optional(p)
        .await?;
        n += c.unwrap_or(0);
    }
    Ok(n)
}

/// Where the events of a stack stand.
#[derive(Debug, PartialEq)]
struct Settled {
    /// Outbox rows of inference and auth over the shards, and how many are unsent.
    rows: i64,
    unsent: i64,
    /// Messages in the event stream.
    messages: u64,
    /// `inference.completed` outbox rows, and (requests metered, usage dedupe records).
    completions: i64,
    metered: (i64, i64),
    /// Per tenant: (documents post-processing counted, creates acknowledged).
    effects: Vec<(i64, i64)>,
}

impl Settled {
    fn done(&self) -> bool {
        self.unsent == 0
            && self.messages == self.rows as u64
            && self.metered == (self.completions, self.completions)
            && self.effects.iter().all(|(seen, acked)| seen == acked)
    }
}

async fn settled(
    pools: &[sqlx::PgPool],
    stream: &async_nats::jetstream::stream::Stream,
    tenants: &[Tenant],
) -> anyhow::Result<Settled> {
    let (inference, inference_unsent, completions) =
        outbox(pools, "inference", "inference.completed").await?;
    let (auth, auth_unsent, _) = outbox(pools, "auth", "").await?;
    let mut effects = Vec::new();
    for t in tenants {
        let acked = t.acked.lock().unwrap().len() as i64;
        effects.push((document_effects(pools, &t.name).await?, acked));
    }
    Ok(Settled {
        rows: inference + auth,
        unsent: inference_unsent + auth_unsent,
        messages: stream.get_info().await?.state.messages,
        completions,
        metered: keel_tests::metering::metered(pools).await?,
        effects,
    })
}

/// nats-server stopped for `STALL` under document writes and model calls: writes are still
/// acknowledged, and afterwards the outbox drains into the stream exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn c_a_nats_stall_loses_and_duplicates_no_event() {
    const DEADLINE: Duration = Duration::from_secs(5);
    let _serial = SERIAL.lock().await;
    let nats = own::Nats::start().await;
    let url = nats.url.clone();
    let stack = TestStack::start_with(|e| e.with("KEEL_NATS_URL", url))
        .await
        .unwrap();
    let tenants = tenants(&stack, "natsstall", 1).await;
    let ops = &["create", "complete", "get"];
    let load = load(&stack, &tenants, ops, DEADLINE, Duration::from_secs(1)).await;

    let pools: Vec<sqlx::PgPool> = {
        let mut v = Vec::new();
        for i in 0..stack.database_urls.len() {
            v.push(stack.shard(i).await.unwrap());
        }
        v
    };

    let stop = Arc::new(AtomicBool::new(false));
    let running = load.run(stop.clone());
    let fault = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        nats.pause();
        let paused_at = Instant::now();
        tokio::time::sleep(STALL).await;
        // The stall is felt: events wait in the outbox.
        let (_, waiting, _) = outbox(&pools, "inference", "").await.unwrap();
        nats.resume();
        let resumed_at = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        (paused_at, resumed_at, waiting)
    };
    let (calls, (paused_at, resumed_at, waiting)) = tokio::join!(running, fault);
    let errors: Vec<&Call> = calls.iter().filter(|c| c.failed()).collect();
    let written_during = calls
        .iter()
        .filter(|c| c.op == "create" && c.outcome == Outcome::Ok)
        .filter(|c| c.start > paused_at && c.start < resumed_at)
        .count();
    let max_call = max_took(calls.iter());

    // Settled: every outbox row sent, the stream holding exactly one message per row, every
    // completion metered once, every acknowledged create counted by post-processing.
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream_name = stack.env.raw("KEEL_NATS_STREAM").unwrap().to_owned();
    let stream = js.get_stream(&stream_name).await.unwrap();
    let last = Mutex::new(None);
    let drained = || async {
        eventually(Duration::from_secs(60), "the backlog drained", || async {
            let s = settled(&pools, &stream, &tenants).await?;
            let done = s.done();
            *last.lock().unwrap() = Some(format!("{s:?}"));
            Ok(done.then_some(s))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}", last.lock().unwrap()))
    };
    drained().await;
    // Anything redelivered or republished late would land now; the counts must still agree.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = drained().await;
    let bus = keel_bus::Bus::connect(keel_bus::BusConfig::from_env(&stack.env).unwrap())
        .await
        .unwrap();
    let dead = bus.dead_letters(10).await.unwrap();
    let Settled {
        rows,
        messages,
        completions,
        metered,
        ..
    } = &again;
    eprintln!(
        "injected=SIGSTOP nats-server {:.1}s calls={} errors={} max_call_ms={} \
         creates_acknowledged_during_stall={written_during} unsent_at_sigcont={waiting} \
         outbox_events={rows} \
         stream_messages={messages} completions={completions} metered={} dedupe_records={} \
         duplicated={} lost={} dead_letters={}",
        resumed_at.duration_since(paused_at).as_secs_f64(),
        calls.len(),
        errors.len(),
        max_call.as_millis(),
        metered.0,
        metered.1,
        (*messages as i64 - rows).max(0),
        (rows - *messages as i64).max(0),
        dead.len(),
    );
    assert!(
        errors.is_empty(),
        "writes acknowledged through the stall: {:#?}",
        describe(&errors, &tenants, paused_at)
    );
    assert!(written_during > 0, "writes were made during the stall");
    assert!(waiting > 0, "events waited in the outbox during the stall");
    assert!(max_call < DEADLINE, "a call took {max_call:?}");
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:?}");
    for p in pools {
        p.close().await;
    }
    stack.shutdown().await;
}
