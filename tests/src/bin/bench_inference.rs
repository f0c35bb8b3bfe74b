//! `cargo xtask bench inference`: the inference service under a realistic data set, in one run.
//!
//! 1. **Seed**: N documents (default 1,000,000) over 20 tenants (one holding half, a long tail)
//!    bulk-loaded with `COPY` into `inference.documents` on each tenant's shard, then `ANALYZE`.
//! 2. **CRUD**: an open-model load (requests sent on a fixed schedule, latency measured from the
//!    *intended* send time) straight to `keel.inference.v1.DocumentStore`: 60 % Get of seeded
//!    documents, 20 % List (first page of 20, no content), 10 % Create, 10 % Update.
//! 3. **Generation**: closed-loop throughput of `Embed` (8 inputs a call) and `Complete`, cold
//!    (every request new) and hot (a small set already seen once), with keel-tiny's simulated
//!    pacing off so the figures measure the service and its cache, not the model's sleep.
//! 4. **Storm**: 500 identical new `Complete` calls at once; how many model calls they cost
//!    (`keel_inference_model_calls_total` before and after).
//!
//! Flags: `--documents N`, `--rate R` (CRUD requests/s), `--smoke` (20,000 documents, short
//! phases). The last line is one `key=value` summary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keel_proto::inference::document_store_client::DocumentStoreClient;
use keel_proto::inference::generation_client::GenerationClient;
use keel_proto::public as pb;
use keel_tests::seed::{COPY_STREAMS_PER_SHARD, Rng, content, copy_corpus, document_ids, title};
use keel_tests::{TestStack, connect};
use tonic::transport::Channel;
use uuid::Uuid;

/// Tenants of the data set: the first holds half the documents, the rest a 1/k tail.
const TENANTS: &[&str] = &[
    "acme",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "stark",
    "wayne",
    "wonka",
    "tyrell",
    "cyberdyne",
    "soylent",
    "massive-dynamic",
    "aperture",
    "black-mesa",
    "vandelay",
    "gringotts",
    "oscorp",
    "duff",
    "monarch",
    "nakatomi",
];
/// Connections per target (HTTP/2 multiplexes the rest).
const CONNECTIONS: usize = 8;
/// Closed-loop callers of the generation phases.
const CALLERS: usize = 32;
/// Inputs per `Embed` call.
const EMBED_BATCH: usize = 8;
/// Distinct requests of a hot phase (each sent once before it is timed).
const HOT_SET: usize = 50;
/// Identical calls of the storm.
const STORM: usize = 500;
const MODEL_CALLS_METRIC: &str = "keel_inference_model_calls_total";

struct Settings {
    documents: usize,
    rate: u32,
    crud: Duration,
    crud_warmup: Duration,
    closed: Duration,
}

fn settings() -> Settings {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let value = |flag: &str| -> Option<String> {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args.get(i + 1).cloned().unwrap_or_default())
    };
    for a in &args {
        let known = ["--smoke", "--documents", "--rate", "--"];
        if a.starts_with("--") && !known.contains(&a.as_str()) {
            panic!("unknown flag {a:?}; flags: --documents N, --rate R, --smoke");
        }
    }
    let documents = value("--documents")
        .map(|v| v.replace('_', "").parse().expect("--documents N"))
        .unwrap_or(if smoke { 20_000 } else { 1_000_000 });
    let rate = value("--rate")
        .map(|v| v.parse().expect("--rate R"))
        .unwrap_or(300);
    assert!(documents >= TENANTS.len() * 10, "--documents is too small");
    assert!(rate > 0, "--rate must be positive");
    if smoke {
        Settings {
            documents,
            rate,
            crud: Duration::from_secs(4),
            crud_warmup: Duration::from_millis(500),
            closed: Duration::from_secs(1),
        }
    } else {
        Settings {
            documents,
            rate,
            crud: Duration::from_secs(20),
            crud_warmup: Duration::from_secs(2),
            closed: Duration::from_secs(5),
        }
    }
}

/// Documents per tenant: half to the first, the rest in proportion to 1/k.
fn split(documents: usize) -> Vec<usize> {
    let tail: f64 = (1..TENANTS.len()).map(|k| 1.0 / k as f64).sum();
    let mut counts = vec![0; TENANTS.len()];
    for (k, c) in counts.iter_mut().enumerate().skip(1) {
        *c = ((documents as f64 / 2.0) * (1.0 / k as f64) / tail).floor() as usize;
    }
    counts[0] = documents - counts.iter().sum::<usize>();
    counts
}

/// The seeded IDs, per tenant, sorted; `starts[t]` is tenant t's first global index.
struct Corpus {
    ids: Vec<Arc<Vec<Uuid>>>,
    starts: Vec<usize>,
    total: usize,
}

impl Corpus {
    /// A uniformly random seeded document (so tenants are picked by their share of the data).
    fn pick(&self, rng: &mut Rng) -> (usize, Uuid) {
        let g = rng.below(self.total);
        let t = self.starts.partition_point(|&s| s <= g) - 1;
        (t, self.ids[t][g - self.starts[t]])
    }
}

fn generate_ids(counts: &[usize], now_ms: u64) -> Corpus {
    let mut rng = Rng(0x6b65_656c);
    let mut ids = Vec::new();
    let mut starts = Vec::new();
    let mut total = 0;
    for &n in counts {
        starts.push(total);
        total += n;
        ids.push(Arc::new(document_ids(&mut rng, n, now_ms)));
    }
    Corpus { ids, starts, total }
}

/// Seeds the corpus; returns the seconds the `COPY` took.
async fn seed(stack: &TestStack, corpus: &Corpus) -> f64 {
    for s in 0..stack.database_urls.len() {
        let mine: Vec<&str> = TENANTS
            .iter()
            .copied()
            .filter(|t| stack.shard_of(t) == s)
            .collect();
        println!("  shard {s}: {} tenants ({})", mine.len(), mine.join(", "));
    }
    let tenants: Vec<_> = TENANTS
        .iter()
        .enumerate()
        .map(|(t, name)| {
            (
                Arc::from(*name),
                stack.shard_of(name),
                corpus.ids[t].clone(),
            )
        })
        .collect();
    let started = Instant::now();
    let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let copied = copy_corpus(&stack.database_urls, &tenants, 0x5eed, progress)
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(copied as usize, corpus.total, "rows copied");
    secs
}

fn with_tenant<T>(msg: T, tenant: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("keel-tenant-id", tenant.parse().unwrap());
    req
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Get,
    List,
    Create,
    Update,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::List => "list",
            Op::Create => "create",
            Op::Update => "update",
        }
    }
}

/// One planned CRUD call (decided before the run, so sending does no work but the call).
struct Call {
    op: Op,
    tenant: &'static str,
    id: Uuid,
    title: String,
    content: String,
}

fn plan(corpus: &Corpus, n: usize, seed: u64) -> Vec<Call> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| {
            let r = rng.below(100);
            let op = match r {
                0..60 => Op::Get,
                60..80 => Op::List,
                80..90 => Op::Create,
                _ => Op::Update,
            };
            let (t, id) = corpus.pick(&mut rng);
            let (title, content) = if matches!(op, Op::Create | Op::Update) {
                (title(&mut rng), content(&mut rng))
            } else {
                (String::new(), String::new())
            };
            Call {
                op,
                tenant: TENANTS[t],
                id,
                title,
                content,
            }
        })
        .collect()
}

async fn crud_call(ch: Channel, c: Call) -> Result<(), tonic::Code> {
    let mut client = DocumentStoreClient::new(ch);
    let r = match c.op {
        Op::Get => client
            .get_document(with_tenant(
                pb::GetDocumentRequest {
                    id: c.id.to_string(),
                },
                c.tenant,
            ))
            .await
            .map(drop),
        Op::List => client
            .list_documents(with_tenant(
                pb::ListDocumentsRequest {
                    page_size: 20,
                    page_token: String::new(),
                    omit_content: true,
                },
                c.tenant,
            ))
            .await
            .map(drop),
        Op::Create => client
            .create_document(with_tenant(
                pb::CreateDocumentRequest {
                    title: c.title,
                    content: c.content,
                    idempotency_key: String::new(),
                },
                c.tenant,
            ))
            .await
            .map(drop),
        Op::Update => client
            .update_document(with_tenant(
                pb::UpdateDocumentRequest {
                    id: c.id.to_string(),
                    title: c.title,
                    content: c.content,
                    expected_version: 0,
                },
                c.tenant,
            ))
            .await
            .map(drop),
    };
    r.map_err(|s| s.code())
}

struct CrudStats {
    all: Vec<f64>,
    by_op: BTreeMap<Op, Vec<f64>>,
    errors: BTreeMap<String, usize>,
    sent: usize,
}

/// Sends `calls` at `rate` a second on a fixed schedule (open model).
async fn open_model(channels: &[Channel], calls: Vec<Call>, rate: u32) -> CrudStats {
    let n = calls.len();
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let mut set = tokio::task::JoinSet::new();
    for (i, c) in calls.into_iter().enumerate() {
        let intended = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
        let ch = channels[i % channels.len()].clone();
        set.spawn(async move {
            tokio::time::sleep_until(intended).await;
            let op = c.op;
            let r = crud_call(ch, c).await;
            (op, intended.elapsed().as_secs_f64() * 1000.0, r)
        });
    }
    let mut stats = CrudStats {
        all: Vec::with_capacity(n),
        by_op: BTreeMap::new(),
        errors: BTreeMap::new(),
        sent: n,
    };
    while let Some(r) = set.join_next().await {
        let (op, ms, r) = r.unwrap();
        stats.all.push(ms);
        stats.by_op.entry(op).or_default().push(ms);
        if let Err(code) = r {
            *stats
                .errors
                .entry(format!("{}:{code:?}", op.name()))
                .or_default() += 1;
        }
    }
    stats.all.sort_by(|a, b| a.total_cmp(b));
    for v in stats.by_op.values_mut() {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    stats
}

/// `CALLERS` callers each sending its next request as soon as the last answered, for `dur`.
/// `call(caller, i)` is the caller's i-th request. Returns (successful calls, failed, seconds).
async fn closed_loop<F, Fut>(dur: Duration, call: F) -> (u64, u64, f64)
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let started = Instant::now();
    let deadline = started + dur;
    let mut set = tokio::task::JoinSet::new();
    for w in 0..CALLERS {
        let call = call.clone();
        set.spawn(async move {
            let (mut ok, mut failed, mut i) = (0u64, 0u64, 0u64);
            while Instant::now() < deadline {
                if call(w, i).await {
                    ok += 1;
                } else {
                    failed += 1;
                }
                i += 1;
            }
            (ok, failed)
        });
    }
    let (mut ok, mut failed) = (0, 0);
    while let Some(r) = set.join_next().await {
        let (o, f) = r.unwrap();
        ok += o;
        failed += f;
    }
    (ok, failed, started.elapsed().as_secs_f64())
}

fn complete_request(prompt: String) -> pb::GenerateRequest {
    pb::GenerateRequest {
        model: "keel-tiny".into(),
        messages: vec![pb::ChatMessage {
            role: "user".into(),
            content: prompt,
        }],
        max_output_tokens: 16,
        temperature: 0.0,
        seed: None,
        user: String::new(),
        retrieve_top_k: 0,
    }
}

async fn embed(ch: Channel, tenant: &str, inputs: Vec<String>) -> bool {
    GenerationClient::new(ch)
        .embed(with_tenant(
            pb::EmbedRequest {
                model: "keel-embed".into(),
                inputs,
            },
            tenant,
        ))
        .await
        .is_ok_and(|r| r.into_inner().embeddings.len() == EMBED_BATCH)
}

async fn complete(ch: Channel, tenant: &str, prompt: String) -> bool {
    GenerationClient::new(ch)
        .complete(with_tenant(complete_request(prompt), tenant))
        .await
        .is_ok()
}

/// A sentence of ~10 words, different for every `n`.
fn sentence(n: u64) -> String {
    let mut rng = Rng(n ^ 0x7e57);
    let mut s = content(&mut rng);
    s.truncate(s.find('.').unwrap_or(s.len()) + 1);
    s
}

/// The sum of a counter over all its label sets in a Prometheus text page (0 when absent).
fn counter_sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

async fn model_calls(stack: &TestStack) -> f64 {
    let addr = stack.inference.as_ref().unwrap().admin_addr();
    let (status, page) = keel_tests::admin_get(addr, "/metrics").await.unwrap();
    assert_eq!(status, 200, "inference /metrics");
    counter_sum(&page, MODEL_CALLS_METRIC)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let s = settings();
    let cfg = keel_telemetry::TelemetryConfig::from_env(
        "keel-bench",
        &keel_config::Env::from_pairs([("RUST_LOG", "error")]),
    )
    .unwrap();
    let _telemetry = keel_telemetry::init(cfg).unwrap();
    let pool = keel_store::DEFAULT_MAX_CONNECTIONS.to_string();
    let stack = TestStack::start_with(|e| {
        e.with("KEEL_DB_MAX_CONNECTIONS", pool)
            .with("KEEL_INFERENCE_TINY_FIRST_TOKEN", "0ms")
            .with("KEEL_INFERENCE_TINY_PER_TOKEN", "0ms")
    })
    .await
    .unwrap();
    // Different on every run, so "cold" requests are new even to a cache that outlived one.
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;

    // 1. Seed.
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let counts = split(s.documents);
    println!(
        "seed: {} documents over {} tenants (largest {} = {}, smallest {} = {}), {} shard databases, COPY ({} streams per shard)",
        s.documents,
        TENANTS.len(),
        TENANTS[0],
        counts[0],
        TENANTS[TENANTS.len() - 1],
        counts[TENANTS.len() - 1],
        stack.database_urls.len(),
        COPY_STREAMS_PER_SHARD,
    );
    let corpus = generate_ids(&counts, now_ms);
    let seed_s = seed(&stack, &corpus).await;
    println!(
        "seed: {} documents in {seed_s:.1} s ({:.0} docs/s)",
        corpus.total,
        corpus.total as f64 / seed_s
    );
    let analyzed = Instant::now();
    for i in 0..stack.database_urls.len() {
        let pool = stack.shard(i).await.unwrap();
        sqlx::query("ANALYZE inference.documents")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    println!("seed: ANALYZE in {:.1} s", analyzed.elapsed().as_secs_f64());

    let url = stack.inference_url();
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(connect(&url).await.unwrap());
    }

    // 2. CRUD, open model.
    let warm = (f64::from(s.rate) * s.crud_warmup.as_secs_f64()) as usize;
    let n = (f64::from(s.rate) * s.crud.as_secs_f64()) as usize;
    open_model(&channels, plan(&corpus, warm, 1), s.rate).await;
    let crud = open_model(&channels, plan(&corpus, n, 2), s.rate).await;
    let crud_errors: usize = crud.errors.values().sum();
    let (c50, c95, c99) = (
        pct(&crud.all, 0.50),
        pct(&crud.all, 0.95),
        pct(&crud.all, 0.99),
    );
    println!(
        "crud: open model at {}/s for {:?} (after {:?} warm-up), 60% get / 20% list / 10% create / 10% update, straight to inference; latency from the intended send time",
        s.rate, s.crud, s.crud_warmup
    );
    println!(
        "crud: all     p50 {c50:>7.2} ms  p95 {c95:>7.2} ms  p99 {c99:>7.2} ms  ({} sent, {crud_errors} errors)",
        crud.sent
    );
    for (op, v) in &crud.by_op {
        println!(
            "crud: {:<7} p50 {:>7.2} ms  p95 {:>7.2} ms  p99 {:>7.2} ms  ({} calls)",
            op.name(),
            pct(v, 0.50),
            pct(v, 0.95),
            pct(v, 0.99),
            v.len()
        );
    }
    if !crud.errors.is_empty() {
        println!("crud: errors {:?}", crud.errors);
    }

    // 3. Generation throughput, cold and hot.
    println!(
        "generation: {CALLERS} closed-loop callers, {:?} per phase; keel-tiny pacing set to 0ms (KEEL_INFERENCE_TINY_FIRST_TOKEN/PER_TOKEN), so this measures the service and its cache, not the simulated model",
        s.closed
    );
    let channels = Arc::new(channels);
    let tenant_of = |k: usize| TENANTS[k % TENANTS.len()];

    let ch = channels.clone();
    let (ok, failed, secs) = closed_loop(s.closed, move |w, i| {
        let ch = ch[w % ch.len()].clone();
        let inputs = (0..EMBED_BATCH)
            .map(|j| format!("{nonce} cold {w}/{i}/{j}: {}", sentence(i * 64 + j as u64)))
            .collect();
        async move { embed(ch, tenant_of(w), inputs).await }
    })
    .await;
    let embed_cold = (ok * EMBED_BATCH as u64) as f64 / secs;
    println!(
        "embed cold: {embed_cold:>9.0} embeddings/s ({:.0} calls/s of {EMBED_BATCH}, {failed} failed)",
        ok as f64 / secs
    );

    let hot_embed: Arc<Vec<Vec<String>>> = Arc::new(
        (0..HOT_SET)
            .map(|k| {
                (0..EMBED_BATCH)
                    .map(|j| format!("{nonce} hot {k}/{j}: {}", sentence((k * 64 + j) as u64)))
                    .collect()
            })
            .collect(),
    );
    for (k, inputs) in hot_embed.iter().enumerate() {
        assert!(
            embed(channels[0].clone(), tenant_of(k), inputs.clone()).await,
            "priming the hot embed set"
        );
    }
    let (ch, set) = (channels.clone(), hot_embed.clone());
    let (ok, failed, secs) = closed_loop(s.closed, move |w, i| {
        let ch = ch[w % ch.len()].clone();
        let k = (w * 7 + i as usize) % HOT_SET;
        let inputs = set[k].clone();
        async move { embed(ch, tenant_of(k), inputs).await }
    })
    .await;
    let embed_hot = (ok * EMBED_BATCH as u64) as f64 / secs;
    println!(
        "embed hot:  {embed_hot:>9.0} embeddings/s ({:.0} calls/s, {HOT_SET} distinct requests seen once before, {failed} failed)",
        ok as f64 / secs
    );

    let ch = channels.clone();
    let (ok, failed, secs) = closed_loop(s.closed, move |w, i| {
        let ch = ch[w % ch.len()].clone();
        let prompt = format!("{nonce} cold {w}/{i}: {}", sentence(i ^ ((w as u64) << 40)));
        async move { complete(ch, tenant_of(w), prompt).await }
    })
    .await;
    let complete_cold = ok as f64 / secs;
    println!(
        "complete cold: {complete_cold:>6.0} completions/s (keel-tiny, temperature 0, max 16 tokens, {failed} failed)"
    );

    let hot_prompts: Arc<Vec<String>> = Arc::new(
        (0..HOT_SET)
            .map(|k| format!("{nonce} hot {k}: {}", sentence(k as u64 + 1_000_000)))
            .collect(),
    );
    for (k, p) in hot_prompts.iter().enumerate() {
        assert!(
            complete(channels[0].clone(), tenant_of(k), p.clone()).await,
            "priming the hot completion set"
        );
    }
    let (ch, set) = (channels.clone(), hot_prompts.clone());
    let (ok, failed, secs) = closed_loop(s.closed, move |w, i| {
        let ch = ch[w % ch.len()].clone();
        let k = (w * 7 + i as usize) % HOT_SET;
        let prompt = set[k].clone();
        async move { complete(ch, tenant_of(k), prompt).await }
    })
    .await;
    let complete_hot = ok as f64 / secs;
    println!(
        "complete hot:  {complete_hot:>6.0} completions/s ({HOT_SET} distinct requests seen once before, {failed} failed)"
    );

    // 4. Storm: many identical new requests at once.
    let before = model_calls(&stack).await;
    let prompt = format!(
        "{nonce} storm: {} What should we tell the customer?",
        sentence(nonce)
    );
    let gate = Arc::new(tokio::sync::Barrier::new(STORM + 1));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..STORM {
        let ch = channels[i % channels.len()].clone();
        let (gate, prompt) = (gate.clone(), prompt.clone());
        set.spawn(async move {
            gate.wait().await;
            complete(ch, TENANTS[0], prompt).await
        });
    }
    gate.wait().await;
    let fired = Instant::now();
    let mut storm_ok = 0;
    while let Some(r) = set.join_next().await {
        storm_ok += usize::from(r.unwrap());
    }
    let storm_s = fired.elapsed().as_secs_f64();
    let after = model_calls(&stack).await;
    let storm_calls = (after - before).max(0.0) as u64;
    println!(
        "storm: {STORM} identical new Complete calls at once: {storm_ok} succeeded in {:.0} ms; {MODEL_CALLS_METRIC} went {before} -> {after}",
        storm_s * 1000.0
    );

    stack.shutdown().await;
    println!(
        "documents={} seed_s={seed_s:.1} embed_per_s_cold={embed_cold:.0} embed_per_s_hot={embed_hot:.0} complete_per_s_cold={complete_cold:.0} complete_per_s_hot={complete_hot:.0} crud_p50_ms={c50:.2} crud_p95_ms={c95:.2} crud_p99_ms={c99:.2} crud_errors={crud_errors} storm_provider_calls={storm_calls}",
        corpus.total
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_over_label_sets() {
        let page = "# TYPE keel_inference_model_calls_total counter\n\
            keel_inference_model_calls_total{model=\"keel-tiny\"} 3\n\
            keel_inference_model_calls_total{model=\"keel-embed\"} 4\n\
            keel_inference_model_calls_total_other 100\n";
        assert_eq!(counter_sum(page, MODEL_CALLS_METRIC), 7.0);
        assert_eq!(counter_sum("", MODEL_CALLS_METRIC), 0.0);
    }

    #[test]
    fn split_gives_half_to_the_largest() {
        let c = split(1_000_000);
        assert_eq!(c.iter().sum::<usize>(), 1_000_000);
        assert!((500_000..=500_100).contains(&c[0]));
        assert!(c.windows(2).skip(1).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn generated_text_is_copy_safe_and_short() {
        let mut rng = Rng(1);
        for _ in 0..1000 {
            let c = content(&mut rng);
            assert!((170..=245).contains(&c.len()), "{}", c.len());
            assert!(!c.contains(['\t', '\n', '\\']));
            assert!(!title(&mut rng).contains(['\t', '\n', '\\']));
        }
    }
}
