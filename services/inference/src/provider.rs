//! Calling a model version, whoever serves it: the built-in models (with their failure
//! variants) or an OpenAI-compatible upstream. Every call goes through the version's circuit
//! breaker and its two timeouts (first token, whole call), and a chat call that fails before
//! its first token falls back along the version's fallback chain.
//!
//! A chat call is a lazy stream of [`Piece`]s ending in [`Piece::Done`]: dropping it stops the
//! model (the built-in one stops producing; an upstream's connection is closed).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use keel_resilience::{Breaker, BreakerConfig};
use tracing::Instrument;

use crate::Error;
use crate::models::{self, Pace, Plan};
use crate::registry::{Backend, Fault, ModelSpec, Registry};
use crate::upstream::{self, Upstream};

/// What a chat call asks for, validated against the version's limits.
#[derive(Debug, Clone)]
pub struct ChatCall {
    /// (role, content), in order.
    pub messages: Vec<(String, String)>,
    /// The conversation rendered as the built-in model reads it (and as the cache keys it).
    pub prompt: String,
    pub input_tokens: u32,
    pub max_output_tokens: u32,
    pub temperature: f32,
    pub seed: Option<u64>,
}

impl ChatCall {
    /// Deterministic calls (temperature 0, or a fixed seed) can be cached.
    pub fn is_deterministic(&self) -> bool {
        self.temperature == 0.0 || self.seed.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Finish {
    pub reason: String,
    pub input_tokens: u32,
    pub output_tokens: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Done(Finish),
}

pub type Pieces = Pin<Box<dyn Stream<Item = Result<Piece, Error>> + Send>>;

/// Model calls are slow by nature: a call is "slow" for the breaker only past this.
pub const MODEL_SLOW_CALL: Duration = Duration::from_secs(30);
/// Fewer calls than this in the window never open a model's breaker.
pub const MODEL_BREAKER_MIN_CALLS: u32 = 5;

pub struct Providers {
    pace: Pace,
    breakers: HashMap<String, Arc<Breaker>>,
    upstreams: HashMap<String, Upstream>,
    /// Calls per version, for the fail-every-Nth variant.
    counts: HashMap<String, AtomicU64>,
}

impl Providers {
    pub fn new(registry: &Registry, pace: Pace, open_for: Duration) -> Self {
        let client = upstream::http_client();
        let mut breakers = HashMap::new();
        let mut upstreams = HashMap::new();
        let mut counts = HashMap::new();
        for spec in registry.versions() {
            breakers.insert(
                spec.version.clone(),
                Arc::new(Breaker::new(
                    format!("model:{}", spec.version),
                    BreakerConfig {
                        min_calls: MODEL_BREAKER_MIN_CALLS,
                        slow_call: MODEL_SLOW_CALL,
                        open_for,
                        ..BreakerConfig::default()
                    },
                )),
            );
            counts.insert(spec.version.clone(), AtomicU64::new(0));
            if let Backend::OpenAi {
                base_url,
                upstream_model,
                api_key,
            } = &spec.backend
            {
                upstreams.insert(
                    spec.version.clone(),
                    Upstream {
                        client: client.clone(),
                        version: spec.version.clone(),
                        base_url: base_url.clone(),
                        upstream_model: upstream_model.clone(),
                        api_key: api_key.clone(),
                    },
                );
            }
        }
        Providers {
            pace,
            breakers,
            upstreams,
            counts,
        }
    }

    fn breaker(&self, spec: &ModelSpec) -> Option<Arc<Breaker>> {
        self.breakers.get(&spec.version).cloned()
    }

    /// Lets one call to `spec` through its breaker (or refuses it at once) and counts it.
    fn admit(&self, spec: &ModelSpec) -> Result<Accounting, Error> {
        let started = Instant::now();
        let breaker = self.breaker(spec);
        let permit = match &breaker {
            Some(b) => Some(
                b.try_acquire(started)
                    .ok_or_else(|| Error::ModelUnavailable {
                        version: spec.version.clone(),
                        why: "its circuit breaker is open".into(),
                    })?,
            ),
            None => None,
        };
        metrics::counter!("keel_inference_model_calls_total", "model_version" => spec.version.clone())
            .increment(1);
        Ok(Accounting {
            breaker,
            permit,
            started,
            failed: false,
        })
    }

    /// Opens a chat call on exactly this version (no fallback), with its breaker and timeouts.
    pub async fn open_chat(&self, spec: &ModelSpec, call: &ChatCall) -> Result<Pieces, Error> {
        let span = model_span(spec);
        let mut guard = match self.admit(spec) {
            Ok(g) => g,
            Err(e) => {
                fail_span(&span, &e);
                return Err(e);
            }
        };
        let started = guard.started;
        let first_by = started + spec.first_token_timeout;
        let opened = tokio::time::timeout_at(
            first_by.into(),
            self.raw_chat(spec, call).instrument(span.clone()),
        )
        .await;
        let inner = match opened {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                guard.failed = e.is_model_failure();
                fail_span(&span, &e);
                return Err(e);
            }
            Err(_) => {
                guard.failed = true;
                let e = Error::ModelTimeout {
                    version: spec.version.clone(),
                    phase: "first_token",
                };
                fail_span(&span, &e);
                return Err(e);
            }
        };
        let state = Timed {
            inner,
            span,
            version: spec.version.clone(),
            first_by,
            end_by: started + spec.timeout,
            got_first: false,
            first_at: None,
            over: false,
            guard,
        };
        Ok(futures::stream::unfold(state, |mut t| async move {
            let item = t.next().await?;
            Some((item, t))
        })
        .boxed())
    }

    async fn raw_chat(&self, spec: &ModelSpec, call: &ChatCall) -> Result<Pieces, Error> {
        match &spec.backend {
            Backend::Tiny { salt, fault } => {
                let n = self
                    .counts
                    .get(&spec.version)
                    .map_or(1, |c| c.fetch_add(1, Ordering::Relaxed) + 1);
                if let Fault::FailEvery(k) = fault
                    && n.is_multiple_of(*k)
                {
                    return Err(Error::ModelUnavailable {
                        version: spec.version.clone(),
                        why: format!("{} fails every {k}th call", spec.name),
                    });
                }
                Ok(tiny_stream(call, self.pace, *salt, *fault))
            }
            Backend::OpenAi { .. } => match self.upstreams.get(&spec.version) {
                Some(up) => up.chat(call).await,
                None => Err(Error::ModelUnavailable {
                    version: spec.version.clone(),
                    why: "no upstream configured".into(),
                }),
            },
            Backend::Embed => Err(Error::InvalidArgument {
                field: "model",
                problem: format!("{:?} is an embedding model", spec.name),
            }),
        }
    }

    /// Opens a chat call on `spec`, or on its fallbacks when it fails before the first token.
    /// Returns the version that serves it, with the first piece already in the stream.
    pub async fn open_chat_with_fallback(
        &self,
        registry: &Registry,
        spec: Arc<ModelSpec>,
        call: &ChatCall,
    ) -> Result<(Arc<ModelSpec>, Pieces), Error> {
        let mut at = spec;
        loop {
            let e = match self.open_chat(&at, call).await {
                Ok(mut s) => match s.next().await {
                    Some(Ok(first)) => {
                        return Ok((
                            at,
                            futures::stream::once(async move { Ok(first) })
                                .chain(s)
                                .boxed(),
                        ));
                    }
                    Some(Err(e)) => e,
                    None => Error::ModelUnavailable {
                        version: at.version.clone(),
                        why: "answered nothing".into(),
                    },
                },
                Err(e) => e,
            };
            let next = at
                .fallback
                .as_deref()
                .filter(|_| e.is_model_failure())
                .and_then(|v| registry.version(v));
            match next {
                Some(n) => {
                    tracing::warn!(
                        from = %at.version,
                        to = %n.version,
                        error = %e,
                        "model failed before its first token; falling back"
                    );
                    metrics::counter!("keel_inference_fallbacks_total", "from" => at.version.clone(), "to" => n.version.clone())
                        .increment(1);
                    at = n;
                }
                None => return Err(e),
            }
        }
    }

    /// Embeds `inputs` with this version (breaker and whole-call timeout apply).
    pub async fn embed(&self, spec: &ModelSpec, inputs: &[String]) -> Result<Vec<Vec<f32>>, Error> {
        let mut guard = self.admit(spec)?;
        let result = match &spec.backend {
            Backend::Embed => Ok(inputs.iter().map(|t| models::embed(t)).collect()),
            Backend::OpenAi { .. } => match self.upstreams.get(&spec.version) {
                Some(up) => match tokio::time::timeout(spec.timeout, up.embed(inputs)).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::ModelTimeout {
                        version: spec.version.clone(),
                        phase: "call",
                    }),
                },
                None => Err(Error::ModelUnavailable {
                    version: spec.version.clone(),
                    why: "no upstream configured".into(),
                }),
            },
            Backend::Tiny { .. } => Err(Error::InvalidArgument {
                field: "model",
                problem: format!("{:?} is a chat model", spec.name),
            }),
        };
        if let Err(e) = &result {
            guard.failed = e.is_model_failure();
        }
        result
    }
}

/// Records the call's outcome in its breaker when the call ends, however it ends (a caller
/// that cancels is neither a success nor a failure of the model: it is recorded as a success
/// so a probe never stays outstanding).
struct Accounting {
    breaker: Option<Arc<Breaker>>,
    permit: Option<keel_resilience::Permit>,
    started: Instant,
    failed: bool,
}

impl Accounting {
    /// Records the outcome now (once): a stream that ended tells its breaker at once, before
    /// the caller can make its next call.
    fn settle(&mut self) {
        if let (Some(b), Some(p)) = (&self.breaker, self.permit.take()) {
            let now = Instant::now();
            b.record(p, now, self.failed, now - self.started);
        }
    }
}

impl Drop for Accounting {
    fn drop(&mut self) {
        self.settle();
    }
}

/// A stream with a first-token and a whole-call deadline, that must end in `Done`.
struct Timed {
    inner: Pieces,
    /// The model call's span: open until the answer ends (or is dropped).
    span: tracing::Span,
    version: String,
    first_by: Instant,
    end_by: Instant,
    got_first: bool,
    /// When the first piece came (time per output token is measured from it).
    first_at: Option<Instant>,
    over: bool,
    guard: Accounting,
}

impl Timed {
    async fn next(&mut self) -> Option<Result<Piece, Error>> {
        if self.over {
            return None;
        }
        let limit = if self.got_first {
            self.end_by
        } else {
            self.first_by.min(self.end_by)
        };
        let item = match tokio::time::timeout_at(limit.into(), self.inner.next()).await {
            Ok(Some(Ok(p))) => {
                if !self.got_first {
                    self.got_first = true;
                    self.first_at = Some(Instant::now());
                    let ttft = self.guard.started.elapsed().as_secs_f64();
                    metrics::histogram!("keel_inference_time_to_first_token_seconds", "model_version" => self.version.clone())
                        .record(ttft);
                    self.span.record("gen_ai.server.time_to_first_token", ttft);
                }
                if let Piece::Done(f) = &p {
                    self.over = true;
                    self.guard.settle();
                    // Time per output token after the first (the decode speed users feel).
                    if f.output_tokens > 1
                        && let Some(first) = self.first_at
                    {
                        metrics::histogram!("keel_inference_time_per_output_token_seconds", "model_version" => self.version.clone())
                            .record(
                                first.elapsed().as_secs_f64() / f64::from(f.output_tokens - 1),
                            );
                    }
                    self.span
                        .record("gen_ai.usage.input_tokens", i64::from(f.input_tokens))
                        .record("gen_ai.usage.output_tokens", i64::from(f.output_tokens));
                    metrics::counter!("keel_inference_tokens_total", "model_version" => self.version.clone(), "direction" => "input")
                        .increment(u64::from(f.input_tokens));
                    metrics::counter!("keel_inference_tokens_total", "model_version" => self.version.clone(), "direction" => "output")
                        .increment(u64::from(f.output_tokens));
                }
                Ok(p)
            }
            Ok(Some(Err(e))) => Err(e),
            Ok(None) => Err(Error::ModelUnavailable {
                version: self.version.clone(),
                why: "the answer ended before the model finished".into(),
            }),
            Err(_) => Err(Error::ModelTimeout {
                version: self.version.clone(),
                phase: if self.got_first {
                    "call"
                } else {
                    "first_token"
                },
            }),
        };
        if let Err(e) = &item {
            self.over = true;
            self.guard.failed = e.is_model_failure();
            self.guard.settle();
            fail_span(&self.span, e);
        }
        Some(item)
    }
}

/// The span of one model call, by the OpenTelemetry GenAI conventions: `chat <version>`, the
/// requested model and the version that answers, and (as the answer comes) time to first token
/// and token usage. It stays open until the answer ends, so its duration is the call's.
fn model_span(spec: &ModelSpec) -> tracing::Span {
    tracing::info_span!(
        "gen_ai.chat",
        otel.name = %format!("chat {}", spec.version),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = if matches!(spec.backend, Backend::OpenAi { .. }) { "openai" } else { "keel" },
        gen_ai.request.model = %spec.name,
        gen_ai.response.model = %spec.version,
        gen_ai.server.time_to_first_token = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

fn fail_span(span: &tracing::Span, e: &Error) {
    span.record("otel.status_code", "ERROR");
    span.record("error.type", keel_errors::KeelError::reason(e).as_str());
}

/// keel-tiny (and its failure variants) as a lazy stream.
fn tiny_stream(call: &ChatCall, pace: Pace, salt: u64, fault: Fault) -> Pieces {
    let pace = match fault {
        Fault::Slow => Pace {
            first_token: pace.first_token * 10,
            per_token: pace.per_token * 10,
        },
        _ => pace,
    };
    let plan = Plan::new(
        &call.prompt,
        call.max_output_tokens,
        call.temperature,
        call.seed,
        salt,
    );
    struct Run {
        plan: Plan,
        produced: u32,
        pace: Pace,
        fault: Fault,
        finished: bool,
    }
    let run = Run {
        plan,
        produced: 0,
        pace,
        fault,
        finished: false,
    };
    futures::stream::unfold(run, |mut run| async move {
        if run.finished {
            return None;
        }
        let stalls = match run.fault {
            Fault::Timeout => true,
            Fault::Stall { after } => run.produced >= after,
            _ => false,
        };
        if stalls {
            futures::future::pending::<()>().await;
        }
        let wait = if run.produced == 0 {
            run.pace.first_token
        } else {
            run.pace.per_token
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let next = if run.produced < run.plan.max_output_tokens {
            run.plan.next_token(run.produced)
        } else {
            None
        };
        let piece = match next {
            Some(t) => {
                run.produced += 1;
                Piece::Text(format!("{t} "))
            }
            None => {
                run.finished = true;
                Piece::Done(Finish {
                    reason: if run.produced >= run.plan.max_output_tokens {
                        "length"
                    } else {
                        "stop"
                    }
                    .into(),
                    input_tokens: run.plan.input_tokens,
                    output_tokens: run.produced,
                })
            }
        };
        Some((Ok(piece), run))
    })
    .boxed()
}
