//! The gRPC edge of model calls: `keel.inference.v1.Generation` over the built-in models
//! ([`crate::models`]). Generate streams one chunk per token as it is produced; the stream is
//! lazy, so when the caller goes away (the gateway drops the stream when its client does)
//! nothing more is generated — `keel_inference_generations_total{outcome="cancelled"}` counts
//! those.

use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::Stream;
use keel_proto::inference as inf;
use keel_proto::public as pb;
use keel_runtime::context::tenant;
use tonic::{Request, Response, Status};

use crate::Error;
use crate::models::{self, Pace, Plan};

/// keel-tiny's default pacing: fast enough for tests and benchmarks, slow enough to stream.
pub const DEFAULT_FIRST_TOKEN: Duration = Duration::from_millis(20);
pub const DEFAULT_PER_TOKEN: Duration = Duration::from_millis(5);

pub struct GenerationService {
    pace: Pace,
}

impl GenerationService {
    pub fn new(pace: Pace) -> Self {
        GenerationService { pace }
    }
}

fn prompt_of(req: &pb::GenerateRequest) -> Result<String, Error> {
    match req.model.as_str() {
        models::TINY => {}
        "" => {
            return Err(Error::InvalidArgument {
                field: "model",
                problem: format!("is required (e.g. {:?})", models::TINY),
            });
        }
        other => return Err(Error::ModelNotFound(other.chars().take(100).collect())),
    }
    if req.messages.is_empty() {
        return Err(Error::InvalidArgument {
            field: "messages",
            problem: "name at least one message".into(),
        });
    }
    if let Some(m) = req
        .messages
        .iter()
        .find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant"))
    {
        return Err(Error::InvalidArgument {
            field: "messages.role",
            problem: format!(
                "{:?} is not system, user or assistant",
                m.role.chars().take(20).collect::<String>()
            ),
        });
    }
    Ok(req
        .messages
        .iter()
        .map(|m| format!("{}: {}", m.role, m.content))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Counts how a generation ended; a stream dropped before its end is a cancellation.
struct Outcome {
    done: bool,
}

impl Drop for Outcome {
    fn drop(&mut self) {
        let outcome = if self.done { "completed" } else { "cancelled" };
        metrics::counter!("keel_inference_generations_total", "model" => models::TINY, "outcome" => outcome)
            .increment(1);
        if !self.done {
            tracing::info!("generation cancelled by the caller");
        }
    }
}

struct Run {
    plan: Plan,
    produced: u32,
    pace: Pace,
    finished: bool,
    outcome: Outcome,
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::GenerateChunk, Status>> + Send>>;

#[tonic::async_trait]
impl inf::generation_server::Generation for GenerationService {
    type GenerateStream = ChunkStream;

    async fn generate(
        &self,
        req: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let _tenant = tenant(&req)?;
        let r = req.into_inner();
        let prompt = prompt_of(&r)?;
        let plan = Plan::new(&prompt, r.max_output_tokens, r.temperature, r.seed)?;
        let run = Run {
            plan,
            produced: 0,
            pace: self.pace,
            finished: false,
            outcome: Outcome { done: false },
        };
        let stream = futures::stream::unfold(run, |mut run| async move {
            if run.finished {
                return None;
            }
            let wait = if run.produced == 0 {
                run.pace.first_token
            } else {
                run.pace.per_token
            };
            tokio::time::sleep(wait).await;
            let next = if run.produced < run.plan.max_output_tokens {
                run.plan.next_token(run.produced)
            } else {
                None
            };
            let chunk = match next {
                Some(t) => {
                    run.produced += 1;
                    pb::GenerateChunk {
                        text: format!("{t} "),
                        ..Default::default()
                    }
                }
                None => {
                    run.finished = true;
                    run.outcome.done = true;
                    let reason = if run.produced >= run.plan.max_output_tokens {
                        "length"
                    } else {
                        "stop"
                    };
                    pb::GenerateChunk {
                        text: String::new(),
                        finish_reason: reason.into(),
                        usage: Some(pb::TokenUsage {
                            input_tokens: run.plan.input_tokens,
                            output_tokens: run.produced,
                        }),
                        model_version: models::TINY_VERSION.into(),
                    }
                }
            };
            Some((Ok(chunk), run))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn complete(
        &self,
        req: Request<pb::GenerateRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        let _tenant = tenant(&req)?;
        let started = Instant::now();
        let r = req.into_inner();
        let prompt = prompt_of(&r)?;
        let mut plan = Plan::new(&prompt, r.max_output_tokens, r.temperature, r.seed)?;
        let mut outcome = Outcome { done: false };
        tokio::time::sleep(self.pace.first_token).await;
        let ttft = started.elapsed();
        let mut text = String::new();
        let mut produced = 0;
        while produced < plan.max_output_tokens {
            match plan.next_token(produced) {
                Some(t) => {
                    if produced > 0 {
                        tokio::time::sleep(self.pace.per_token).await;
                    }
                    text.push_str(t);
                    text.push(' ');
                    produced += 1;
                }
                None => break,
            }
        }
        outcome.done = true;
        Ok(Response::new(pb::CompleteResponse {
            text,
            finish_reason: if produced >= plan.max_output_tokens {
                "length"
            } else {
                "stop"
            }
            .into(),
            usage: Some(pb::TokenUsage {
                input_tokens: plan.input_tokens,
                output_tokens: produced,
            }),
            model_version: models::TINY_VERSION.into(),
            time_to_first_token_ms: ttft.as_millis() as u32,
        }))
    }

    async fn embed(
        &self,
        req: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let _tenant = tenant(&req)?;
        let r = req.into_inner();
        match r.model.as_str() {
            models::EMBED => {}
            other => return Err(Error::ModelNotFound(other.chars().take(100).collect()).into()),
        }
        if r.inputs.is_empty() || r.inputs.len() > models::MAX_EMBED_INPUTS {
            return Err(Error::InvalidArgument {
                field: "inputs",
                problem: format!("name 1 to {} texts", models::MAX_EMBED_INPUTS),
            }
            .into());
        }
        if r.inputs
            .iter()
            .any(|t| t.chars().count() > models::MAX_EMBED_INPUT_CHARS)
        {
            return Err(Error::InvalidArgument {
                field: "inputs",
                problem: format!(
                    "each text is at most {} characters",
                    models::MAX_EMBED_INPUT_CHARS
                ),
            }
            .into());
        }
        Ok(Response::new(pb::EmbedResponse {
            embeddings: r
                .inputs
                .iter()
                .map(|t| pb::Embedding {
                    values: models::embed(t),
                })
                .collect(),
            model_version: models::EMBED_VERSION.into(),
            usage: Some(pb::TokenUsage {
                input_tokens: r.inputs.iter().map(|t| models::count_tokens(t)).sum(),
                output_tokens: 0,
            }),
        }))
    }
}
