//! The scenarios, each an open-model schedule against the gateway's public gRPC API with its
//! own SLO checks. Rates and durations come from a [`Profile`]: `smoke` (seconds, for
//! `cargo xtask test`) or `full` (the runs whose figures the README records).

use std::time::Duration;

use keel_proto::public as pb;
use pb::document_service_client::DocumentServiceClient;
use pb::inference_service_client::InferenceServiceClient;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::engine::{Class, Outcome, Recorder, Stage, arrivals, drive};
use crate::report::{Check, ScenarioReport};

/// SLO: CRUD p95 (the system's objective).
pub const CRUD_P95_MS: f64 = 300.0;
/// SLO: inference p95, whole answer.
pub const INFERENCE_P95_MS: f64 = 2000.0;
/// SLO: availability 99.9 %: errors (not refusals) per call.
pub const MAX_ERROR_RATE: f64 = 0.001;
/// Refusals must be cheap: a client told to back off is told at once.
pub const REFUSAL_P99_MS: f64 = 100.0;
/// The smoke profile runs debug builds inside the test suite on a shared machine: it checks
/// that refusals are immediate rather than queued (before the in-flight fix they took seconds),
/// not the full profile's latency target.
pub const SMOKE_REFUSAL_P99_MS: f64 = 1000.0;
/// Calls the generator keeps in flight at most (beyond: it is itself saturated, and says so).
const MAX_IN_FLIGHT: usize = 20_000;
/// Every call's own deadline: nothing the generator sends can hang.
const CALL_DEADLINE: Duration = Duration::from_secs(15);

pub const ALL: &[&str] = &[
    "crud",
    "stream",
    "ramp",
    "timeouts",
    "backpressure",
    "cache-storm",
    "noisy-tenant",
];

/// A call of either of a scenario's kinds.
type Call = std::pin::Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// One authenticated caller (a user of a tenant) and documents it may read and update.
#[derive(Clone, Debug)]
pub struct Caller {
    pub tenant: String,
    pub token: String,
    pub documents: Vec<String>,
}

/// What the scenarios run against.
#[derive(Clone)]
pub struct Target {
    /// Connections to the gateway (calls are spread over them; HTTP/2 multiplexes the rest).
    pub channels: Vec<Channel>,
    /// Callers of tenants on the top tier (the main load).
    pub callers: Vec<Caller>,
    /// Callers of one tenant on the smallest tier (the noisy neighbour).
    pub noisy: Vec<Caller>,
    /// The free tier's per-tenant limit (requests/s), to size the noisy tenant's excess.
    pub noisy_limit_per_s: f64,
    /// The gateway's OpenAI-compatible HTTP surface (the stream scenario also drives it).
    pub http: Option<std::net::SocketAddr>,
    /// The inference service's Prometheus endpoint, to count model calls (cache storms).
    pub inference_metrics: Option<std::net::SocketAddr>,
    /// The first-token timeout inference is configured with (timeouts scenario).
    pub first_token_timeout: Duration,
    /// The gateway's bound on calls in flight (`KEEL_GATEWAY_MAX_IN_FLIGHT`): the backpressure
    /// scenario offers about three times what it can hold.
    pub gateway_max_in_flight: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Smoke,
    Full,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Smoke => "smoke",
            Profile::Full => "full",
        }
    }

    /// The refusal-latency limit of this profile.
    fn refusal_p99_ms(self) -> f64 {
        self.pick(SMOKE_REFUSAL_P99_MS, REFUSAL_P99_MS)
    }

    fn pick<T>(self, smoke: T, full: T) -> T {
        match self {
            Profile::Smoke => smoke,
            Profile::Full => full,
        }
    }
}

/// Options a run may override.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Requests per second for fixed-rate scenarios.
    pub rate: Option<f64>,
    /// Seconds of the main phase.
    pub seconds: Option<f64>,
    /// Skip the peak search of `ramp` and `backpressure`.
    pub peak: Option<f64>,
}

pub async fn run(
    scenario: &str,
    target: &Target,
    profile: Profile,
    opts: Options,
) -> anyhow::Result<ScenarioReport> {
    let started = Instant::now();
    let rec = Recorder::new();
    let mut checks = Vec::new();
    let mut figures = Vec::new();
    match scenario {
        "crud" => crud(target, profile, opts, &rec, &mut checks, &mut figures).await,
        "stream" => stream(target, profile, opts, &rec, &mut checks, &mut figures).await?,
        "ramp" => ramp(target, profile, opts, &rec, &mut checks, &mut figures).await,
        "timeouts" => timeouts(target, profile, opts, &rec, &mut checks, &mut figures).await,
        "backpressure" => {
            backpressure(target, profile, opts, &rec, &mut checks, &mut figures).await;
        }
        "cache-storm" => {
            cache_storm(target, profile, opts, &rec, &mut checks, &mut figures).await?;
        }
        "noisy-tenant" => noisy(target, profile, opts, &rec, &mut checks, &mut figures).await,
        other => anyhow::bail!("unknown scenario {other:?}; one of {}", ALL.join(", ")),
    }
    let ops = rec.snapshot();
    let overflow: u64 = ops
        .values()
        .map(|s| s.codes.get("GENERATOR_OVERFLOW").copied().unwrap_or(0))
        .sum();
    checks.push(Check::equal(
        "the generator kept its schedule (no overflow)",
        overflow,
        0,
    ));
    Ok(ScenarioReport {
        scenario: scenario.to_owned(),
        profile: profile.name().to_owned(),
        elapsed: started.elapsed(),
        ops,
        checks,
        figures,
    })
}

fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Ok(v) = format!("Bearer {token}").parse() {
        req.metadata_mut().insert("authorization", v);
    }
    req.set_timeout(CALL_DEADLINE);
    req
}

fn outcome<T>(r: Result<T, tonic::Status>) -> Outcome {
    match r {
        Ok(_) => Outcome::ok(),
        Err(st) => Outcome::from_status(&st),
    }
}

fn fig(figures: &mut Vec<(String, String)>, k: &str, v: impl std::fmt::Display) {
    figures.push((k.to_owned(), v.to_string()));
}

fn f2(v: f64) -> String {
    format!("{:.2}", v)
}

/// One CRUD operation of the mix (60 % get, 20 % list, 10 % create, 10 % update).
fn crud_call(
    ch: Channel,
    c: Caller,
    i: u64,
) -> (&'static str, impl Future<Output = Outcome> + Send + 'static) {
    let kind = match i % 10 {
        0..=5 => "crud.get",
        6 | 7 => "crud.list",
        8 => "crud.create",
        _ => "crud.update",
    };
    let fut = async move {
        let mut docs = DocumentServiceClient::new(ch);
        let doc = if c.documents.is_empty() {
            String::new()
        } else {
            c.documents[(i as usize / 10) % c.documents.len()].clone()
        };
        match kind {
            "crud.get" => outcome(
                docs.get_document(authed(pb::GetDocumentRequest { id: doc }, &c.token))
                    .await,
            ),
            "crud.list" => outcome(
                docs.list_documents(authed(
                    pb::ListDocumentsRequest {
                        page_size: 20,
                        page_token: String::new(),
                        omit_content: true,
                    },
                    &c.token,
                ))
                .await,
            ),
            "crud.create" => outcome(
                docs.create_document(authed(
                    pb::CreateDocumentRequest {
                        title: format!("load {i}"),
                        content: format!("a document written under load, number {i}"),
                        idempotency_key: String::new(),
                    },
                    &c.token,
                ))
                .await,
            ),
            _ => outcome(
                docs.update_document(authed(
                    pb::UpdateDocumentRequest {
                        id: doc,
                        title: format!("updated {i}"),
                        content: format!("updated under load, number {i}"),
                        expected_version: 0,
                    },
                    &c.token,
                ))
                .await,
            ),
        }
    };
    (kind, fut)
}

fn pick<'a>(target: &'a Target, callers: &'a [Caller], i: u64) -> (Channel, Caller) {
    let ch = target.channels[i as usize % target.channels.len()].clone();
    let c = callers[(i as usize / 3) % callers.len()].clone();
    (ch, c)
}

fn crud_checks(rec: &Recorder, checks: &mut Vec<Check>, prefix: &str) {
    let mut total = 0u64;
    let mut errors = 0u64;
    for op in ["crud.get", "crud.list", "crud.create", "crud.update"] {
        let s = rec.op(op);
        total += s.total();
        errors += s.errors;
        checks.push(Check::below(
            format!("{prefix}{op} p95"),
            s.ms(0.95),
            CRUD_P95_MS,
            "ms",
        ));
    }
    checks.push(Check::below(
        format!("{prefix}CRUD error rate"),
        errors as f64 / total.max(1) as f64,
        MAX_ERROR_RATE,
        "",
    ));
}

async fn crud(
    target: &Target,
    profile: Profile,
    opts: Options,
    rec: &Recorder,
    checks: &mut Vec<Check>,
    figures: &mut Vec<(String, String)>,
) {
    let rate = opts.rate.unwrap_or(profile.pick(100.0, 1000.0));
    let secs = opts.seconds.unwrap_or(profile.pick(3.0, 30.0));
    drive(
        &[Stage::constant(rate, Duration::from_secs_f64(secs))],
        MAX_IN_FLIGHT,
        rec,
        |i| {
            let (ch, c) = pick(target, &target.callers, i);
            crud_call(ch, c, i)
        },
    )
    .await;
    crud_checks(rec, checks, "");
    let refused: u64 = ["crud.get", "crud.list", "crud.create", "crud.update"]
        .iter()
        .map(|op| rec.op(op).refused)
        .sum();
    checks.push(Check::equal(
        "no refusals within the tier's limits",
        refused,
        0,
    ));
    let get = rec.op("crud.get");
    fig(figures, "rate", rate);
    fig(figures, "get_p50_ms", f2(get.ms(0.5)));
    fig(figures, "get_p95_ms", f2(get.ms(0.95)));
    fig(figures, "get_p99_ms", f2(get.ms(0.99)));
}

/// A streamed generation; its outcome carries when the first chunk came.
async fn generate(
    ch: Channel,
    token: String,
    model: &str,
    prompt: String,
    max_tokens: i32,
) -> (Outcome, String) {
    let mut client = InferenceServiceClient::new(ch);
    let req = authed(
        pb::GenerateRequest {
            model: model.to_owned(),
            messages: vec![pb::ChatMessage {
                role: "user".into(),
                content: prompt,
            }],
            max_output_tokens: max_tokens,
            temperature: 0.0,
            seed: Some(7),
            user: String::new(),
            retrieve_top_k: 0,
        },
        &token,
    );
    let mut stream = match client.generate(req).await {
        Ok(s) => s.into_inner(),
        Err(st) => return (Outcome::from_status(&st), String::new()),
    };
    let mut first = None;
    let mut text = String::new();
    loop {
        match stream.message().await {
            Ok(Some(chunk)) => {
                first.get_or_insert_with(Instant::now);
                text.push_str(&chunk.text);
            }
            Ok(None) => break,
            Err(st) => return (Outcome::from_status(&st), text),
        }
    }
    match first {
        Some(at) => (Outcome::streamed(at), text),
        None => (Outcome::error("EMPTY_STREAM"), text),
    }
}

/// `POST /v1/chat/completions` with `stream: true` over a fresh HTTP/1.1 connection, read to
/// the end; the outcome carries when the first server-sent event arrived.
async fn openai_chat(addr: std::net::SocketAddr, token: String, prompt: String) -> Outcome {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = format!(
        r#"{{"model":"keel-tiny","stream":true,"temperature":0,"seed":7,"max_tokens":32,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        prompt.replace(['"', '\\'], " ")
    );
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let call = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(request.as_bytes()).await?;
        let mut got = Vec::new();
        let mut first = None;
        let mut buf = [0u8; 8192];
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if first.is_none() && got.windows(5).any(|w| w == b"data:") {
                first = Some(Instant::now());
            }
        }
        std::io::Result::Ok((got, first))
    };
    match tokio::time::timeout(CALL_DEADLINE, call).await {
        Err(_) => Outcome::error("HTTP_TIMEOUT"),
        Ok(Err(_)) => Outcome::error("HTTP_IO"),
        Ok(Ok((got, first))) => {
            let head = String::from_utf8_lossy(&got[..got.len().min(64)]).into_owned();
            let status = head.split_whitespace().nth(1).unwrap_or("");
            let text = String::from_utf8_lossy(&got);
            match (status, first) {
                ("200", Some(at)) if text.contains("data: [DONE]") => Outcome::streamed(at),
                ("200", _) => Outcome::error("HTTP_200_INCOMPLETE"),
                ("429", _) => Outcome {
                    class: Class::Refused,
                    code: "HTTP_429".into(),
                    first: None,
                },
                (other, _) => Outcome::error(&format!("HTTP_{other}")),
            }
        }
    }
}

async fn stream(
    target: &Target,
    profile: Profile,
    opts: Options,
    rec: &Recorder,
    checks: &mut Vec<Check>,
    figures: &mut Vec<(String, String)>,
) -> anyhow::Result<()> {
    // Repeatable: the same prompt, temperature 0 and seed give the same tokens.
    let c = &target.callers[0];
    let prompt = format!("repeatability check {}", fastrand::u64(..));
    let (a, ta) = generate(
        target.channels[0].clone(),
        c.token.clone(),
        "keel-tiny",
        prompt.clone(),
        16,
    )
    .await;
    let (b, tb) = generate(
        target.channels[0].clone(),
        c.token.clone(),
        "keel-tiny",
        prompt,
        16,
    )
    .await;
    checks.push(Check {
        name: "same prompt, temperature 0 and seed: same tokens".into(),
        passed: a.class == Class::Ok && b.class == Class::Ok && !ta.is_empty() && ta == tb,
        detail: format!("{:?} vs {:?}", ta, tb),
    });
    let rate = opts.rate.unwrap_or(profile.pick(20.0, 100.0));
    let secs = opts.seconds.unwrap_or(profile.pick(3.0, 30.0));
    let run = fastrand::u64(..);
    drive(
        &[Stage::constant(rate, Duration::from_secs_f64(secs))],
        MAX_IN_FLIGHT,
        rec,
        |i| {
            let (ch, c) = pick(target, &target.callers, i);
            // Distinct prompts: every call is a cache miss and really generates.
            let prompt = format!("tell me about load run {run} call {i}");
            // One in four through the OpenAI-compatible HTTP surface, when there is one.
            match target.http {
                Some(addr) if i % 4 == 3 => {
                    let call: Call = Box::pin(openai_chat(addr, c.token, prompt));
                    ("stream.openai_http", call)
                }
                _ => {
                    let call: Call =
                        Box::pin(
                            async move { generate(ch, c.token, "keel-tiny", prompt, 32).await.0 },
                        );
                    ("stream.generate", call)
                }
            }
        },
    )
    .await;
    if target.http.is_some() {
        let h = rec.op("stream.openai_http");
        checks.push(Check::below(
            "OpenAI HTTP stream: whole answer p95",
            h.ms(0.95),
            INFERENCE_P95_MS,
            "ms",
        ));
        checks.push(Check::below(
            "OpenAI HTTP stream: error rate",
            h.error_rate(),
            MAX_ERROR_RATE,
            "",
        ));
        checks.push(Check::at_least(
            "OpenAI HTTP stream: calls completed",
            h.ok as f64,
            1.0,
            "calls",
        ));
        fig(figures, "http_ttft_p95_ms", f2(h.first_ms(0.95)));
        fig(figures, "http_total_p95_ms", f2(h.ms(0.95)));
    }
    let s = rec.op("stream.generate");
    checks.push(Check::below(
        "stream time to first token p95",
        s.first_ms(0.95),
        INFERENCE_P95_MS,
        "ms",
    ));
    checks.push(Check::below(
        "stream whole answer p95",
        s.ms(0.95),
        INFERENCE_P95_MS,
        "ms",
    ));
    checks.push(Check::below(
        "stream error rate",
        s.error_rate(),
        MAX_ERROR_RATE,
        "",
    ));
    fig(figures, "rate", rate);
    fig(figures, "ttft_p50_ms", f2(s.first_ms(0.5)));
    fig(figures, "ttft_p95_ms", f2(s.first_ms(0.95)));
    fig(figures, "total_p95_ms", f2(s.ms(0.95)));
    Ok(())
}

/// Steps up the rate of gets until a step is not sustained (p99 over the CRUD objective or any
/// error or refusal); the last sustained rate is the peak.
async fn find_peak(target: &Target, profile: Profile) -> f64 {
    let steps: &[f64] = match profile {
        Profile::Smoke => &[50.0, 100.0, 200.0],
        Profile::Full => &[
            250.0, 500.0, 1000.0, 1500.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 8000.0,
        ],
    };
    let step = profile.pick(Duration::from_secs(1), Duration::from_secs(3));
    let mut peak = steps[0];
    for &rate in steps {
        let rec = Recorder::new();
        drive(&[Stage::constant(rate, step)], MAX_IN_FLIGHT, &rec, |i| {
            let (ch, c) = pick(target, &target.callers, i);
            ("peak.get", async move {
                let mut docs = DocumentServiceClient::new(ch);
                let id = c.documents.first().cloned().unwrap_or_default();
                outcome(
                    docs.get_document(authed(pb::GetDocumentRequest { id }, &c.token))
                        .await,
                )
            })
        })
        .await;
        let s = rec.op("peak.get");
        if s.errors + s.refused > 0 || s.ms(0.99) > CRUD_P95_MS {
            break;
        }
        peak = rate;
    }
    peak
}

async fn ramp(
    target: &Target,
    profile: Profile,
    opts: Options,
    rec: &Recorder,
    checks: &mut Vec<Check>,
    figures: &mut Vec<(String, String)>,
) {
    let peak = match opts.peak {
        Some(p) => p,
        None => find_peak(target, profile).await,
    };
    let secs = opts.seconds.unwrap_or(profile.pick(4.0, 30.0));
    let stages = [
        Stage::ramp(0.25 * peak, 2.0 * peak, Duration::from_secs_f64(secs)),
        Stage::constant(2.0 * peak, Duration::from_secs_f64(secs / 3.0)),
        Stage::constant(0.0, Duration::from_secs_f64(secs / 6.0)),
        Stage::constant(0.5 * peak, Duration::from_secs_f64(secs / 3.0)),
    ];
    let up = arrivals(&stages[..1]).len() as u64;
    let over = up + arrivals(&stages[1..2]).len() as u64;
    drive(&stages, MAX_IN_FLIGHT, rec, |i| {
        let (ch, c) = pick(target, &target.callers, i);
        let op = if i < up {
            "ramp.up"
        } else if i < over {
            "ramp.over"
        } else {
            "ramp.recover"
        };
        let fut = async move {
            let mut docs = DocumentServiceClient::new(ch);
            let id = c.documents.first().cloned().unwrap_or_default();
            outcome(
                docs.get_document(authed(pb::GetDocumentRequest { id }, &c.token))
                    .await,
            )
        };
        (op, fut)
    })
    .await;
    let over = rec.op("ramp.over");
    let recover = rec.op("ramp.recover");
    let over_secs = secs / 3.0;
    checks.push(Check::below(
        "at 2× peak: errors other than fast refusals",
        over.error_rate(),
        0.01,
        "",
    ));
    if over.refused > 0 {
        checks.push(Check::below(
            "at 2× peak: refusals p99",
            over.refused_ms(0.99),
            profile.refusal_p99_ms(),
            "ms",
        ));
    }
    checks.push(Check::at_least(
        "at 2× peak: no collapse (served/s vs. peak)",
        over.ok as f64 / over_secs / peak,
        0.5,
        "",
    ));
    checks.push(Check::below(
        "after the burst: p95",
        recover.ms(0.95),
        CRUD_P95_MS,
        "ms",
    ));
    checks.push(Check::below(
        "after the burst: error rate",
        recover.error_rate() + recover.refused as f64 / recover.total().max(1) as f64,
        0.01,
        "",
    ));
    fig(figures, "peak", peak);
    fig(figures, "over_served_per_s", f2(over.ok as f64 / over_secs));
    fig(figures, "over_refused", over.refused);
    fig(figures, "over_p99_ms", f2(over.ms(0.99)));
    fig(figures, "recover_p95_ms", f2(recover.ms(0.95)));
}

async fn timeouts(
    target: &Target,
    profile: Profile,
    opts: Options,
    rec: &Recorder,
    checks: &mut Vec<Check>,
    figures: &mut Vec<(String, String)>,
) {
    let rate = opts.rate.unwrap_or(profile.pick(10.0, 40.0));
    let secs = opts.seconds.unwrap_or(profile.pick(3.0, 20.0));
    let run = fastrand::u64(..);
    drive(
        &[Stage::constant(rate, Duration::from_secs_f64(secs))],
        MAX_IN_FLIGHT,
        rec,
        |i| {
            let (ch, c) = pick(target, &target.callers, i);
            let prompt = format!("timeouts run {run} call {i}");
            if i % 2 == 0 {
                // A model that never answers: the first-token deadline must fire.
                let call: Call = Box::pin(async move {
                    let (o, _) = generate(ch, c.token, "keel-tiny-timeout", prompt, 8).await;
                    // Ending cleanly: the deadline, or the model's breaker, once open, failing
                    // fast with UNAVAILABLE (it names the model version).
                    match (o.class, o.code.as_str()) {
                        (_, "DEADLINE_EXCEEDED" | "UNAVAILABLE") => Outcome {
                            class: Class::Ok,
                            ..o
                        },
                        (Class::Ok, _) => Outcome::error("ANSWERED"),
                        _ => o,
                    }
                });
                ("timeouts.never_answers", call)
            } else {
                // Healthy traffic beside it is not held up.
                let call: Call =
                    Box::pin(async move { generate(ch, c.token, "keel-tiny", prompt, 16).await.0 });
                ("timeouts.healthy", call)
            }
        },
    )
    .await;
    let never = rec.op("timeouts.never_answers");
    let healthy = rec.op("timeouts.healthy");
    let limit = target.first_token_timeout.as_secs_f64() * 1000.0 + 1000.0;
    checks.push(Check::equal(
        "every call to the silent model ends cleanly (deadline, or its open breaker)",
        never.ok,
        never.total(),
    ));
    checks.push(Check::at_least(
        "the deadline fired before the breaker opened",
        never.codes.get("DEADLINE_EXCEEDED").copied().unwrap_or(0) as f64,
        1.0,
        "calls",
    ));
    checks.push(Check::below(
        "the deadline fires on time (max)",
        never.ms(1.0),
        limit,
        "ms",
    ));
    checks.push(Check::below(
        "healthy calls beside it: p95",
        healthy.ms(0.95),
        INFERENCE_P95_MS,
        "ms",
    ));
    checks.push(Check::below(
        "healthy calls beside it: error rate",
        healthy.error_rate(),
        MAX_ERROR_RATE,
        "",
    ));
    fig(
        figures,
        "deadline_exceeded",
        never.codes.get("DEADLINE_EXCEEDED").copied().unwrap_or(0),
    );
    fig(
        figures,
        "breaker_fast_fails",
        never.codes.get("UNAVAILABLE").copied().unwrap_or(0),
    );
    fig(figures, "deadline_p50_ms", f2(never.ms(0.5)));
    fig(figures, "deadline_max_ms", f2(never.ms(1.0)));
    fig(figures, "healthy_p95_ms", f2(healthy.ms(0.95)));
}

/// Resident memory of this process (the in-process stack included), in MiB.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

async fn backpressure(
    target: &Target,
    profile: Profile,
    opts: Options,
    rec: &Recorder,
    checks: &mut Vec<Check>,
    figures: &mut Vec<(String, String)>,
) {
    // Slow streamed calls pile up at the gateway: at this rate, about three times its
    // in-flight bound would be open at once; the excess must be refused at once.
    let slow_call_s = 2.0;
    let rate = opts
        .rate
        .unwrap_or(3.0 * target.gateway_max_in_flight as f64 / slow_call_s);
    let secs = opts.seconds.unwrap_or(profile.pick(3.0, 15.0));
    let rss_before = rss_mib();
    let run = fastrand::u64(..);
    let stages = [
        Stage::constant(rate, Duration::from_secs_f64(secs)),
        Stage::constant(0.0, Duration::from_secs_f64(slow_call_s + 1.0)),
        Stage::constant(50.0, Duration::from_secs_f64(secs.min(5.0))),
    ];
    let burst = arrivals(&stages[..1]).len() as u64;
    drive(&stages, MAX_IN_FLIGHT, rec, |i| {
        let (ch, c) = pick(target, &target.callers, i);
        if i < burst {
            let prompt = format!("backpressure run {run} call {i}");
            let call: Call =
                Box::pin(
                    async move { generate(ch, c.token, "keel-tiny-slow", prompt, 40).await.0 },
                );
            ("backpressure.slow", call)
        } else {
            let (_, fut) = crud_call(ch, c, i * 10);
            let call: Call = Box::pin(fut);
            ("backpressure.after", call)
        }
    })
    .await;
    let rss_after = rss_mib();
    let slow = rec.op("backpressure.slow");
    let after = rec.op("backpressure.after");
    checks.push(Check::at_least(
        "beyond capacity: the excess is refused",
        slow.refused as f64,
        1.0,
        "calls",
    ));
    checks.push(Check::below(
        "refusals are fast (p99)",
        slow.refused_ms(0.99),
        profile.refusal_p99_ms(),
        "ms",
    ));
    checks.push(Check::below(
        "errors other than refusals",
        slow.error_rate(),
        0.01,
        "",
    ));
    checks.push(Check::below(
        "memory growth over the burst",
        rss_after - rss_before,
        512.0,
        "MiB",
    ));
    checks.push(Check::below(
        "recovered: p95 right after",
        after.ms(0.95),
        CRUD_P95_MS,
        "ms",
    ));
    checks.push(Check::equal(
        "recovered: no refusals or errors right after",
        after.refused + after.errors,
        0,
    ));
    fig(figures, "rate", rate);
    fig(figures, "served", slow.ok);
    fig(figures, "refused", slow.refused);
    fig(figures, "refused_p99_ms", f2(slow.refused_ms(0.99)));
    fig(figures, "rss_growth_mib", f2(rss_after - rss_before));
}

/// `keel_inference_model_calls_total` summed over model versions, from the Prometheus page.
async fn model_calls(addr: std::net::SocketAddr) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: metrics\r\n\r\n")
        .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    Ok(body
        .lines()
        .filter(|l| l.starts_with("keel_inference_model_calls_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

async fn complete(ch: Channel, token: String, prompt: String) -> Outcome {
    let mut client = InferenceServiceClient::new(ch);
    outcome(
        client
            .complete(authed(
                pb::GenerateRequest {
                    model: "keel-tiny".into(),
                    messages: vec![pb::ChatMessage {
                        role: "user".into(),
                        content: prompt,
                    }],
                    max_output_tokens: 16,
                    temperature: 0.0,
                    seed: Some(7),
                    user: String::new(),
                    retrieve_top_k: 0,
                },
                &token,
            ))
            .await,
    )
}

async fn cache_storm(
    target: &Target,
    profile: Profile,
    opts: Options,
    rec: &Recorder,
    checks: &mut Vec<Check>,
    figures: &mut Vec<(String, String)>,
) -> anyhow::Result<()> {
    let run = fastrand::u64(..);
    // One tenant's burst of the same new prompt (the cache is per tenant).
    let storm = profile.pick(200.0, 1000.0);
    let calls_before = match target.inference_metrics {
        Some(a) => Some(model_calls(a).await?),
        None => None,
    };
    let c = target.callers[0].clone();
    let storm_prompt = format!("the storm prompt of run {run}");
    drive(
        &[Stage::constant(storm * 10.0, Duration::from_millis(100))],
        MAX_IN_FLIGHT,
        rec,
        |i| {
            let ch = target.channels[i as usize % target.channels.len()].clone();
            let (token, prompt) = (c.token.clone(), storm_prompt.clone());
            ("storm.identical", complete(ch, token, prompt))
        },
    )
    .await;
    let calls_storm = match (target.inference_metrics, calls_before) {
        (Some(a), Some(before)) => Some(model_calls(a).await? - before),
        _ => None,
    };
    // Then many distinct cold prompts.
    let rate = opts.rate.unwrap_or(profile.pick(50.0, 300.0));
    let secs = opts.seconds.unwrap_or(profile.pick(3.0, 20.0));
    drive(
        &[Stage::constant(rate, Duration::from_secs_f64(secs))],
        MAX_IN_FLIGHT,
        rec,
        |i| {
            let (ch, c) = pick(target, &target.callers, i);
            let prompt = format!("distinct prompt {i} of run {run}");
            ("storm.distinct", complete(ch, c.token, prompt))
        },
    )
    .await;
    let identical = rec.op("storm.identical");
    let distinct = rec.op("storm.distinct");
    if let Some(calls) = calls_storm {
        checks.push(Check::below(
            "a storm of one new prompt costs one model call",
            calls,
            1.5,
            "calls",
        ));
        fig(figures, "storm_model_calls", calls);
    }
    checks.push(Check::below(
        "identical burst: errors",
        identical.error_rate(),
        MAX_ERROR_RATE,
        "",
    ));
    checks.push(Check::below(
        "identical burst: p95",
        identical.ms(0.95),
        INFERENCE_P95_MS,
        "ms",
    ));
    checks.push(Check::below(
        "distinct prompts: p95",
        distinct.ms(0.95),
        INFERENCE_P95_MS,
        "ms",
    ));
    checks.push(Check::below(
        "distinct prompts: errors",
        distinct.error_rate(),
        MAX_ERROR_RATE,
        "",
    ));
    fig(figures, "storm_size", identical.total());
    fig(figures, "storm_p95_ms", f2(identical.ms(0.95)));
    fig(figures, "distinct_p95_ms", f2(distinct.ms(0.95)));
    Ok(())
}

async fn noisy(
    target: &Target,
    profile: Profile,
    opts: Options,
    rec: &Recorder,
    checks: &mut Vec<Check>,
    figures: &mut Vec<(String, String)>,
) {
    let secs = opts.seconds.unwrap_or(profile.pick(3.0, 20.0));
    let quiet_rate = opts.rate.unwrap_or(profile.pick(100.0, 500.0));
    // Ten times its contract.
    let noisy_rate = 10.0 * target.noisy_limit_per_s;
    let d = Duration::from_secs_f64(secs);
    let (quiet_stages, noisy_stages) = (
        [Stage::constant(quiet_rate, d)],
        [Stage::constant(noisy_rate, d)],
    );
    let quiet = drive(&quiet_stages, MAX_IN_FLIGHT, rec, |i| {
        let (ch, c) = pick(target, &target.callers, i);
        let (_, fut) = crud_call(ch, c, (i / 6) * 10 + i % 6);
        ("quiet.get", fut)
    });
    let loud = drive(&noisy_stages, MAX_IN_FLIGHT, rec, |i| {
        let (ch, c) = pick(target, &target.noisy, i);
        let (_, fut) = crud_call(ch, c, (i / 6) * 10 + i % 6);
        ("noisy.get", fut)
    });
    tokio::join!(quiet, loud);
    let q = rec.op("quiet.get");
    let n = rec.op("noisy.get");
    // What its contract allows over the run: the rate plus one burst (twice the rate).
    let allowed = target.noisy_limit_per_s * (secs + 2.0);
    checks.push(Check::below(
        "the noisy tenant is held to its tier (served)",
        n.ok as f64,
        allowed * 1.2,
        "calls",
    ));
    checks.push(Check::at_least(
        "the noisy tenant's excess is refused",
        n.refused as f64,
        n.total() as f64 * 0.5,
        "calls",
    ));
    checks.push(Check::equal("quiet tenants: no refusals", q.refused, 0));
    checks.push(Check::below(
        "quiet tenants: p95",
        q.ms(0.95),
        CRUD_P95_MS,
        "ms",
    ));
    checks.push(Check::below(
        "quiet tenants: error rate",
        q.error_rate(),
        MAX_ERROR_RATE,
        "",
    ));
    fig(figures, "noisy_sent", n.total());
    fig(figures, "noisy_served", n.ok);
    fig(figures, "noisy_refused", n.refused);
    fig(figures, "quiet_p95_ms", f2(q.ms(0.95)));
}
