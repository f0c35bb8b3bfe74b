//! Model calls on behalf of a tenant (`keel.inference.v1.Generation`): resolve the version
//! (registry and A/B split), validate against its limits, answer from the read-through cache
//! when the call is deterministic, otherwise call the provider (breaker, timeouts, fallback),
//! and record one `InferenceCompleted` event per call.
//!
//! Generate streams one chunk per token as the model produces it; the stream is lazy, so when
//! the caller goes away (the gateway drops the stream when its client does) the model stops —
//! `keel_inference_generations_total{outcome="cancelled"}` counts those, and the event records
//! the tokens produced until then. Complete and Embed coalesce concurrent identical misses
//! into one model call; Generate caches a stream only once it completed.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use keel_proto::inference as inf;
use keel_proto::public as pb;
use keel_runtime::Tasks;
use keel_runtime::context::tenant;
use keel_tenancy::TenantId;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use crate::Error;
use crate::cache::{self, Cache};
use crate::events::{Completed, Events};
use crate::models;
use crate::provider::{ChatCall, Finish, Piece, Providers};
use crate::registry::{Kind, ModelSpec, Registry};
use crate::retrieval::Retrieval;

/// keel-tiny's default pacing: fast enough for tests and benchmarks, slow enough to stream.
pub const DEFAULT_FIRST_TOKEN: Duration = Duration::from_millis(20);
pub const DEFAULT_PER_TOKEN: Duration = Duration::from_millis(5);

/// Everything a model call needs; shared by the gRPC services and the prefetch.
pub struct Inference {
    pub registry: Arc<Registry>,
    pub providers: Providers,
    pub cache: Cache,
    pub events: Events,
    pub tasks: Tasks,
}

/// A cached (or coalesced) chat answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub version: String,
    pub pieces: Vec<String>,
    pub finish: Finish,
    pub time_to_first_token_ms: u32,
    pub fallback_from: Option<String>,
}

/// The request as the prefetch replays it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Replay {
    pub model: String,
    pub version: String,
    pub messages: Vec<(String, String)>,
    pub max_output_tokens: u32,
    pub temperature: f32,
    pub seed: Option<u64>,
}

fn invalid(field: &'static str, problem: impl Into<String>) -> Error {
    Error::InvalidArgument {
        field,
        problem: problem.into(),
    }
}

/// Validates a chat request against the version that will serve it.
pub fn chat_call(
    messages: Vec<(String, String)>,
    max_output_tokens: i32,
    temperature: f32,
    seed: Option<u64>,
    spec: &ModelSpec,
) -> Result<ChatCall, Error> {
    if messages.is_empty() {
        return Err(invalid("messages", "name at least one message"));
    }
    if let Some((role, _)) = messages
        .iter()
        .find(|(r, _)| !matches!(r.as_str(), "system" | "user" | "assistant"))
    {
        return Err(invalid(
            "messages.role",
            format!(
                "{:?} is not system, user or assistant",
                role.chars().take(20).collect::<String>()
            ),
        ));
    }
    if !(0.0..=2.0).contains(&temperature) || temperature.is_nan() {
        return Err(invalid("temperature", "must be between 0 and 2"));
    }
    if max_output_tokens < 0 || max_output_tokens as u32 > spec.max_output_tokens {
        return Err(invalid(
            "max_output_tokens",
            format!("must be between 0 and {}", spec.max_output_tokens),
        ));
    }
    let max_output_tokens = match max_output_tokens {
        0 => models::DEFAULT_MAX_OUTPUT_TOKENS.min(spec.max_output_tokens),
        n => n as u32,
    };
    let prompt = messages
        .iter()
        .map(|(role, content)| format!("{role}: {content}"))
        .collect::<Vec<_>>()
        .join("\n");
    let input_tokens = models::count_tokens(&prompt);
    let room = spec.context_length.saturating_sub(max_output_tokens);
    if input_tokens > room {
        return Err(invalid(
            "messages",
            format!(
                "the prompt is {input_tokens} tokens; {} takes at most {room} with {max_output_tokens} output tokens",
                spec.version
            ),
        ));
    }
    Ok(ChatCall {
        messages,
        prompt,
        input_tokens,
        max_output_tokens,
        temperature,
        seed,
    })
}

fn chat_key(cache: &Cache, tenant: &TenantId, version: &str, call: &ChatCall) -> String {
    cache.key(
        tenant,
        "chat",
        version,
        &[
            call.prompt.as_bytes(),
            &call.max_output_tokens.to_le_bytes(),
            &call.temperature.to_bits().to_le_bytes(),
            &call.seed.map_or([0u8; 9], |s| {
                let mut b = [1u8; 9];
                b[1..].copy_from_slice(&s.to_le_bytes());
                b
            }),
        ],
    )
}

/// The event of a call answered whole (from the cache or the model).
fn answered(model: &str, answer: &Answer, ttft_ms: u32, started: Instant, hit: bool) -> Completed {
    Completed {
        model: model.to_owned(),
        model_version: answer.version.clone(),
        input_tokens: answer.finish.input_tokens,
        output_tokens: answer.finish.output_tokens,
        time_to_first_token_ms: ttft_ms,
        duration_ms: millis(started.elapsed()),
        finish_reason: answer.finish.reason.clone(),
        cache_hit: hit,
        fallback_from: answer.fallback_from.clone(),
        output_text: {
            let mut t = String::new();
            for p in &answer.pieces {
                crate::events::keep_text(&mut t, p);
            }
            t
        },
    }
}

fn millis(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}

impl Inference {
    /// Runs a chat call to its end (with fallback) and returns the whole answer.
    async fn answer(&self, spec: Arc<ModelSpec>, call: &ChatCall) -> Result<Answer, Error> {
        let started = Instant::now();
        let (served, mut stream) = self
            .providers
            .open_chat_with_fallback(&self.registry, spec.clone(), call)
            .await?;
        let ttft = millis(started.elapsed());
        let mut pieces = Vec::new();
        while let Some(p) = stream.next().await {
            match p? {
                Piece::Text(t) => pieces.push(t),
                Piece::Done(finish) => {
                    return Ok(Answer {
                        version: served.version.clone(),
                        pieces,
                        finish,
                        time_to_first_token_ms: ttft,
                        fallback_from: (served.version != spec.version)
                            .then(|| spec.version.clone()),
                    });
                }
            }
        }
        Err(Error::ModelUnavailable {
            version: served.version.clone(),
            why: "the answer ended early".into(),
        })
    }

    /// A deterministic chat call through the cache (one model call per key at a time).
    async fn cached_answer(
        &self,
        tenant: &TenantId,
        model: &str,
        spec: Arc<ModelSpec>,
        call: &ChatCall,
    ) -> Result<(Answer, bool), Status> {
        let key = chat_key(&self.cache, tenant, &spec.version, call);
        let replay = serde_json::to_vec(&Replay {
            model: model.to_owned(),
            version: spec.version.clone(),
            messages: call.messages.clone(),
            max_output_tokens: call.max_output_tokens,
            temperature: call.temperature,
            seed: call.seed,
        })
        .unwrap_or_default();
        let fetched = self
            .cache
            .read_through(
                &key,
                Some(tenant),
                true,
                || async {
                    let a = self.answer(spec.clone(), call).await?;
                    let cacheable = a.fallback_from.is_none();
                    let bytes = serde_json::to_vec(&a).map_err(|e| Error::ModelUnavailable {
                        version: spec.version.clone(),
                        why: e.to_string(),
                    })?;
                    Ok((bytes, cacheable))
                },
                |bytes| {
                    let key = key.clone();
                    async move { self.cache.put_chat(tenant, &key, &bytes, &replay).await }
                },
            )
            .await?;
        let answer: Answer = serde_json::from_slice(&fetched.bytes)
            .map_err(|_| Status::internal("internal error"))?;
        Ok((answer, fetched.hit))
    }

    /// Resolves and validates a chat request.
    /// `context`: retrieved text, added as a system message before the conversation.
    async fn prepare(
        &self,
        tenant: &TenantId,
        r: &pb::GenerateRequest,
        context: Option<String>,
    ) -> Result<(Arc<ModelSpec>, ChatCall), Error> {
        let spec = self
            .registry
            .resolve(tenant, &r.model, &r.user, Kind::Chat)
            .await?;
        let messages = context
            .map(|c| ("system".to_owned(), c))
            .into_iter()
            .chain(
                r.messages
                    .iter()
                    .map(|m| (m.role.clone(), m.content.clone())),
            )
            .collect();
        let call = chat_call(messages, r.max_output_tokens, r.temperature, r.seed, &spec)?;
        Ok((spec, call))
    }

    /// Embeds `inputs` with `spec` through the cache (one key per text; the texts missing from
    /// it in one model call, coalesced with identical concurrent misses). Returns the vectors
    /// in order and whether no model call was needed.
    pub async fn embeddings(
        &self,
        tenant: &TenantId,
        spec: &Arc<ModelSpec>,
        inputs: &[String],
    ) -> Result<(Vec<Vec<f32>>, bool), Status> {
        let keys: Vec<String> = inputs
            .iter()
            .map(|t| {
                self.cache
                    .key(tenant, "embed", &spec.version, &[t.as_bytes()])
            })
            .collect();
        let mut vectors: Vec<Option<Vec<f32>>> = self
            .cache
            .get_many(&keys)
            .await
            .into_iter()
            .map(|v| v.and_then(|b| cache::decode_vector(&b)))
            .collect();
        let missing: Vec<usize> = (0..vectors.len())
            .filter(|i| vectors[*i].is_none())
            .collect();
        let hit = missing.is_empty();
        if !missing.is_empty() {
            // One model call per distinct set of missing texts, however many ask at once.
            let texts: Vec<String> = missing.iter().map(|i| inputs[*i].clone()).collect();
            let flight_parts: Vec<&[u8]> = missing.iter().map(|i| keys[*i].as_bytes()).collect();
            let flight = self
                .cache
                .key(tenant, "embed-batch", &spec.version, &flight_parts);
            let fetched = self
                .cache
                .read_through(
                    &flight,
                    None,
                    !matches!(spec.backend, crate::registry::Backend::Embed),
                    || async {
                        let vs = self.providers.embed(spec, &texts).await?;
                        let mut items: Vec<(String, Vec<u8>)> = missing
                            .iter()
                            .zip(&vs)
                            .map(|(i, v)| (keys[*i].clone(), cache::encode_vector(v)))
                            .collect();
                        let flat: Vec<u8> =
                            vs.iter().flat_map(|v| cache::encode_vector(v)).collect();
                        // Under the batch key too (replicas that lost the lock poll it), in
                        // the same round trip.
                        items.push((flight.clone(), flat.clone()));
                        self.cache.put_many(&items).await;
                        Ok((flat, false))
                    },
                    |_| async {},
                )
                .await?;
            let flat = cache::decode_vector(&fetched.bytes).unwrap_or_default();
            let dim = if texts.is_empty() {
                0
            } else {
                flat.len() / texts.len()
            };
            for (n, i) in missing.iter().enumerate() {
                vectors[*i] = flat.get(n * dim..(n + 1) * dim).map(<[f32]>::to_vec);
            }
        }
        let vectors = vectors
            .into_iter()
            .map(|v| v.ok_or_else(|| Status::internal("internal error")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((vectors, hit))
    }

    /// Replays a popular request into the cache (warm-up and the hourly prefetch).
    pub async fn prefetch(&self, tenant: &TenantId, replay: Replay) -> Result<bool, Status> {
        let Some(spec) = self.registry.version(&replay.version) else {
            return Ok(false);
        };
        if !spec.visible_to(tenant) {
            return Ok(false);
        }
        let call = chat_call(
            replay.messages,
            replay.max_output_tokens as i32,
            replay.temperature,
            replay.seed,
            &spec,
        )?;
        let (_, hit) = self
            .cached_answer(tenant, &replay.model, spec, &call)
            .await?;
        Ok(!hit)
    }
}

pub struct GenerationService {
    inner: Arc<Inference>,
    retrieval: Arc<Retrieval>,
}

impl GenerationService {
    pub fn new(inner: Arc<Inference>, retrieval: Arc<Retrieval>) -> Self {
        GenerationService { inner, retrieval }
    }

    /// With `retrieve_top_k`, the tenant's chunks most similar to the last user message.
    async fn context(
        &self,
        tenant: &TenantId,
        r: &pb::GenerateRequest,
    ) -> Result<Option<String>, Status> {
        if r.retrieve_top_k == 0 {
            return Ok(None);
        }
        let Some(query) = r
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| m.content.as_str())
            .filter(|q| !q.trim().is_empty())
        else {
            return Err(invalid("retrieve_top_k", "needs a user message to search with").into());
        };
        if r.retrieve_top_k > crate::retrieval::MAX_TOP_K {
            return Err(invalid(
                "retrieve_top_k",
                format!("must be 0 to {}", crate::retrieval::MAX_TOP_K),
            )
            .into());
        }
        let (matches, _) = self
            .retrieval
            .search(tenant, query, r.retrieve_top_k)
            .await?;
        if matches.is_empty() {
            return Ok(None);
        }
        let lines: Vec<String> = matches
            .iter()
            .map(|m| format!("[{}#{}] {}", m.document_id, m.chunk_index, m.text))
            .collect();
        Ok(Some(format!(
            "Context from the tenant's documents:\n{}",
            lines.join("\n")
        )))
    }
}

/// Records a Generate stream's event however it ends; a stream dropped before its end is a
/// cancellation (counted, and metered for the tokens produced).
struct StreamEnd {
    inference: Arc<Inference>,
    tenant: TenantId,
    model: String,
    version: String,
    requested: String,
    started: Instant,
    ttft_ms: u32,
    input_tokens: u32,
    produced: u32,
    /// What was sent so far (bounded), for the event.
    text: String,
    done: bool,
}

impl StreamEnd {
    fn event(&self, finish_reason: &str, input: u32, output: u32) -> Completed {
        Completed {
            model: self.model.clone(),
            model_version: self.version.clone(),
            input_tokens: input,
            output_tokens: output,
            time_to_first_token_ms: self.ttft_ms,
            duration_ms: millis(self.started.elapsed()),
            finish_reason: finish_reason.into(),
            cache_hit: false,
            fallback_from: (self.version != self.requested).then(|| self.requested.clone()),
            output_text: self.text.clone(),
        }
    }
}

impl Drop for StreamEnd {
    fn drop(&mut self) {
        let outcome = if self.done { "completed" } else { "cancelled" };
        metrics::counter!("keel_inference_generations_total", "model_version" => self.version.clone(), "outcome" => outcome)
            .increment(1);
        if self.done {
            return;
        }
        tracing::info!("generation cancelled by the caller");
        let event = self.event("cancelled", self.input_tokens, self.produced);
        let (inference, tenant) = (self.inference.clone(), self.tenant.clone());
        self.inference
            .tasks
            .spawn("inference-cancelled-event", async move {
                inference.events.completed(&tenant, event).await;
            });
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::GenerateChunk, Status>> + Send>>;

fn chunk(text: String, version: &str) -> pb::GenerateChunk {
    pb::GenerateChunk {
        text,
        model_version: version.to_owned(),
        ..Default::default()
    }
}

fn last_chunk(finish: &Finish, version: &str) -> pb::GenerateChunk {
    pb::GenerateChunk {
        text: String::new(),
        finish_reason: finish.reason.clone(),
        usage: Some(pb::TokenUsage {
            input_tokens: finish.input_tokens,
            output_tokens: finish.output_tokens,
        }),
        model_version: version.to_owned(),
    }
}

#[tonic::async_trait]
impl inf::generation_server::Generation for GenerationService {
    type GenerateStream = ChunkStream;

    async fn generate(
        &self,
        req: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let inf = self.inner.clone();
        let started = Instant::now();
        let context = self.context(&tenant, &r).await?;
        let (spec, call) = inf.prepare(&tenant, &r, context).await?;
        let key = call
            .is_deterministic()
            .then(|| chat_key(&inf.cache, &tenant, &spec.version, &call));
        if let Some(key) = &key
            && let Some(bytes) = inf.cache.get(key, Some(&tenant)).await
            && let Ok(answer) = serde_json::from_slice::<Answer>(&bytes)
        {
            let mut out: Vec<Result<pb::GenerateChunk, Status>> = answer
                .pieces
                .iter()
                .map(|p| Ok(chunk(p.clone(), &answer.version)))
                .collect();
            out.push(Ok(last_chunk(&answer.finish, &answer.version)));
            let ttft = millis(started.elapsed());
            inf.events
                .completed(&tenant, answered(&r.model, &answer, ttft, started, true))
                .await;
            return Ok(Response::new(futures::stream::iter(out).boxed()));
        }
        let (served, pieces) = inf
            .providers
            .open_chat_with_fallback(&inf.registry, spec.clone(), &call)
            .await?;
        let end = StreamEnd {
            inference: inf.clone(),
            tenant: tenant.clone(),
            model: r.model.clone(),
            version: served.version.clone(),
            requested: spec.version.clone(),
            started,
            ttft_ms: millis(started.elapsed()),
            input_tokens: call.input_tokens,
            produced: 0,
            text: String::new(),
            done: false,
        };
        let replay = Replay {
            model: r.model.clone(),
            version: spec.version.clone(),
            messages: call.messages.clone(),
            max_output_tokens: call.max_output_tokens,
            temperature: call.temperature,
            seed: call.seed,
        };
        // Cache the stream once it completed, only when the requested version served it.
        let key = key.filter(|_| served.version == spec.version);
        struct Run {
            pieces: crate::provider::Pieces,
            end: StreamEnd,
            collected: Option<Vec<String>>,
            key: Option<String>,
            replay: Replay,
            over: bool,
        }
        let run = Run {
            pieces,
            collected: key.as_ref().map(|_| Vec::new()),
            end,
            key,
            replay,
            over: false,
        };
        let stream = futures::stream::unfold(run, |mut run| async move {
            if run.over {
                return None;
            }
            let version = run.end.version.clone();
            match run.pieces.next().await {
                Some(Ok(Piece::Text(t))) => {
                    run.end.produced += 1;
                    crate::events::keep_text(&mut run.end.text, &t);
                    if let Some(c) = &mut run.collected {
                        c.push(t.clone());
                    }
                    Some((Ok(chunk(t, &version)), run))
                }
                Some(Ok(Piece::Done(finish))) => {
                    run.over = true;
                    let inf = run.end.inference.clone();
                    let tenant = run.end.tenant.clone();
                    if let (Some(key), Some(pieces)) = (&run.key, run.collected.take()) {
                        let answer = Answer {
                            version: version.clone(),
                            pieces,
                            finish: finish.clone(),
                            time_to_first_token_ms: run.end.ttft_ms,
                            fallback_from: None,
                        };
                        if let (Ok(bytes), Ok(replay)) =
                            (serde_json::to_vec(&answer), serde_json::to_vec(&run.replay))
                        {
                            inf.cache.put_chat(&tenant, key, &bytes, &replay).await;
                        }
                    }
                    let event =
                        run.end
                            .event(&finish.reason, finish.input_tokens, finish.output_tokens);
                    inf.events.completed(&tenant, event).await;
                    run.end.done = true;
                    Some((Ok(last_chunk(&finish, &version)), run))
                }
                Some(Err(e)) => {
                    run.over = true;
                    let inf = run.end.inference.clone();
                    let event = run
                        .end
                        .event("error", run.end.input_tokens, run.end.produced);
                    inf.events.completed(&run.end.tenant, event).await;
                    run.end.done = true;
                    Some((Err(Status::from(e)), run))
                }
                None => None,
            }
        });
        Ok(Response::new(stream.boxed()))
    }

    async fn complete(
        &self,
        req: Request<pb::GenerateRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        let tenant = tenant(&req)?;
        let started = Instant::now();
        let r = req.into_inner();
        let inf = &self.inner;
        let context = self.context(&tenant, &r).await?;
        let (spec, call) = inf.prepare(&tenant, &r, context).await?;
        let result = if call.is_deterministic() {
            inf.cached_answer(&tenant, &r.model, spec.clone(), &call)
                .await
        } else {
            inf.answer(spec.clone(), &call)
                .await
                .map(|a| (a, false))
                .map_err(Status::from)
        };
        let (answer, hit) = match result {
            Ok(x) => x,
            Err(st) => {
                inf.events
                    .completed(
                        &tenant,
                        Completed {
                            model: r.model.clone(),
                            model_version: spec.version.clone(),
                            input_tokens: call.input_tokens,
                            output_tokens: 0,
                            time_to_first_token_ms: 0,
                            duration_ms: millis(started.elapsed()),
                            finish_reason: "error".into(),
                            cache_hit: false,
                            fallback_from: None,
                            output_text: String::new(),
                        },
                    )
                    .await;
                return Err(st);
            }
        };
        let ttft = if hit {
            millis(started.elapsed())
        } else {
            answer.time_to_first_token_ms
        };
        inf.events
            .completed(&tenant, answered(&r.model, &answer, ttft, started, hit))
            .await;
        Ok(Response::new(pb::CompleteResponse {
            text: answer.pieces.concat(),
            finish_reason: answer.finish.reason,
            usage: Some(pb::TokenUsage {
                input_tokens: answer.finish.input_tokens,
                output_tokens: answer.finish.output_tokens,
            }),
            model_version: answer.version,
            time_to_first_token_ms: ttft,
        }))
    }

    async fn embed(
        &self,
        req: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let tenant = tenant(&req)?;
        let started = Instant::now();
        let r = req.into_inner();
        let inf = &self.inner;
        let spec = inf
            .registry
            .resolve(&tenant, &r.model, "", Kind::Embedding)
            .await?;
        if r.inputs.is_empty() || r.inputs.len() > models::MAX_EMBED_INPUTS {
            return Err(invalid(
                "inputs",
                format!("name 1 to {} texts", models::MAX_EMBED_INPUTS),
            )
            .into());
        }
        if r.inputs
            .iter()
            .any(|t| t.chars().count() > spec.context_length as usize)
        {
            return Err(invalid(
                "inputs",
                format!("each text is at most {} characters", spec.context_length),
            )
            .into());
        }
        let (embeddings, hit) = inf.embeddings(&tenant, &spec, &r.inputs).await?;
        let embeddings = embeddings
            .into_iter()
            .map(|values| pb::Embedding { values })
            .collect();
        let input_tokens: u32 = r.inputs.iter().map(|t| models::count_tokens(t)).sum();
        inf.events
            .completed(
                &tenant,
                Completed {
                    model: r.model.clone(),
                    model_version: spec.version.clone(),
                    input_tokens,
                    output_tokens: 0,
                    time_to_first_token_ms: 0,
                    duration_ms: millis(started.elapsed()),
                    finish_reason: "stop".into(),
                    cache_hit: hit,
                    fallback_from: None,
                    output_text: String::new(),
                },
            )
            .await;
        Ok(Response::new(pb::EmbedResponse {
            embeddings,
            model_version: spec.version.clone(),
            usage: Some(pb::TokenUsage {
                input_tokens,
                output_tokens: 0,
            }),
        }))
    }
}
