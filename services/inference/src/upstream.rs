//! The OpenAI-compatible upstream provider (vLLM, llama.cpp server, Ollama, OpenAI): chat
//! completions streamed as server-sent events and embeddings, over one pooled HTTP client
//! (HTTP/1.1 keep-alive, TLS with the Mozilla roots). Dropping a stream drops the response
//! body, which closes the connection: the upstream stops generating when our caller leaves.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use keel_openai as wire;

use crate::Error;
use crate::provider::{ChatCall, Finish, Piece, Pieces};

/// Idle pooled connections per upstream host (a busy model server is reused, not redialled).
pub const POOL_IDLE_PER_HOST: usize = 32;
/// Idle connections are closed after this (upstreams and proxies drop them around 60 s).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Error bodies are read up to this size (they are short JSON).
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Embeddings of 256 texts × 4,096 dimensions as JSON fit well within this.
const MAX_EMBEDDINGS_BODY: usize = 64 * 1024 * 1024;

pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One client for every upstream: its pool is keyed by host.
pub fn http_client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(https)
}

#[derive(Clone)]
pub struct Upstream {
    pub client: HttpClient,
    pub version: String,
    pub base_url: String,
    pub upstream_model: String,
    pub api_key: Option<String>,
}

impl Upstream {
    fn unavailable(&self, why: impl Into<String>) -> Error {
        Error::ModelUnavailable {
            version: self.version.clone(),
            why: why.into(),
        }
    }

    async fn post(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<http::Response<hyper::body::Incoming>, Error> {
        let mut req = http::Request::post(format!("{}{path}", self.base_url))
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(key) = &self.api_key {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| self.unavailable(format!("request: {e}")))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| self.unavailable(format!("connecting: {e}")))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_ERROR_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = serde_json::from_slice::<wire::ErrorBody>(&body)
            .map(|b| b.error.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(200).collect());
        tracing::warn!(
            model_version = %self.version,
            status,
            upstream_message = %message.chars().take(200).collect::<String>(),
            "upstream model refused a call"
        );
        // 4xx other than auth, not-found, timeout and rate limiting is the request's fault;
        // everything else is the upstream's (and counts against its breaker).
        Err(match status {
            400..=499 if !matches!(status, 401 | 403 | 404 | 408 | 429) => Error::ModelRejected {
                version: self.version.clone(),
                message: message.chars().take(200).collect(),
            },
            _ => self.unavailable(format!("HTTP {status}")),
        })
    }

    /// Opens a streamed chat completion.
    pub async fn chat(&self, call: &ChatCall) -> Result<Pieces, Error> {
        let req = wire::ChatRequest {
            model: self.upstream_model.clone(),
            messages: call
                .messages
                .iter()
                .map(|(role, content)| wire::Message {
                    role: role.clone(),
                    content: content.clone(),
                })
                .collect(),
            max_tokens: Some(call.max_output_tokens),
            temperature: Some(call.temperature),
            seed: call.seed,
            stream: true,
            stream_options: Some(wire::StreamOptions {
                include_usage: true,
            }),
            user: None,
        };
        let body = serde_json::to_vec(&req).map_err(|e| self.unavailable(e.to_string()))?;
        let resp = self.post("/chat/completions", body).await?;
        let state = Sse {
            body: resp.into_body(),
            decoder: wire::SseDecoder::new(),
            ready: VecDeque::new(),
            finish: None,
            usage: None,
            produced: 0,
            input_estimate: call.input_tokens,
            ended: false,
            up: self.clone(),
        };
        Ok(futures::stream::unfold(state, |mut s| async move {
            let item = s.next_piece().await?;
            Some((item, s))
        })
        .boxed())
    }

    /// Embeds `inputs`, in order.
    pub async fn embed(&self, inputs: &[String]) -> Result<Vec<Vec<f32>>, Error> {
        let req = wire::EmbeddingsRequest {
            model: self.upstream_model.clone(),
            input: inputs.to_vec(),
            encoding_format: Some("float".into()),
        };
        let body = serde_json::to_vec(&req).map_err(|e| self.unavailable(e.to_string()))?;
        let resp = self.post("/embeddings", body).await?;
        let bytes = http_body_util::Limited::new(resp.into_body(), MAX_EMBEDDINGS_BODY)
            .collect()
            .await
            .map_err(|e| self.unavailable(format!("reading embeddings: {e}")))?
            .to_bytes();
        let mut parsed: wire::EmbeddingsResponse = serde_json::from_slice(&bytes)
            .map_err(|e| self.unavailable(format!("embeddings are not valid JSON: {e}")))?;
        if parsed.data.len() != inputs.len() {
            return Err(self.unavailable(format!(
                "{} embeddings for {} inputs",
                parsed.data.len(),
                inputs.len()
            )));
        }
        parsed.data.sort_by_key(|d| d.index);
        Ok(parsed.data.into_iter().map(|d| d.embedding).collect())
    }
}

/// The state of one streamed completion.
struct Sse {
    body: hyper::body::Incoming,
    decoder: wire::SseDecoder,
    ready: VecDeque<Piece>,
    finish: Option<String>,
    usage: Option<wire::Usage>,
    produced: u32,
    input_estimate: u32,
    ended: bool,
    up: Upstream,
}

impl Sse {
    fn done(&mut self) -> Piece {
        self.ended = true;
        Piece::Done(Finish {
            reason: self.finish.take().unwrap_or_else(|| "stop".into()),
            input_tokens: self.usage.map_or(self.input_estimate, |u| u.prompt_tokens),
            output_tokens: self
                .usage
                .map_or(self.produced, |u| u.completion_tokens.max(self.produced)),
        })
    }

    /// Handles one event; `true` when the stream is complete.
    fn event(&mut self, data: &str) -> Result<bool, Error> {
        if data.trim() == wire::DONE {
            return Ok(true);
        }
        let chunk: wire::ChatChunk = serde_json::from_str(data).map_err(|e| {
            self.up
                .unavailable(format!("a streamed chunk is not valid: {e}"))
        })?;
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        for c in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(text) = c.delta.content.filter(|t| !t.is_empty()) {
                self.produced += 1;
                self.ready.push_back(Piece::Text(text));
            }
            if let Some(f) = c.finish_reason {
                self.finish = Some(f);
            }
        }
        Ok(false)
    }

    async fn next_piece(&mut self) -> Option<Result<Piece, Error>> {
        loop {
            if let Some(p) = self.ready.pop_front() {
                return Some(Ok(p));
            }
            if self.ended {
                return None;
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers
                    };
                    let events = match self.decoder.push(&data) {
                        Ok(ev) => ev,
                        Err(e) => {
                            self.ended = true;
                            return Some(Err(self.up.unavailable(e.to_string())));
                        }
                    };
                    for ev in events {
                        match self.event(&ev.data) {
                            Ok(true) => {
                                let done = self.done();
                                self.ready.push_back(done);
                                break;
                            }
                            Ok(false) => {}
                            Err(e) => {
                                self.ended = true;
                                return Some(Err(e));
                            }
                        }
                    }
                }
                Some(Err(e)) => {
                    self.ended = true;
                    return Some(Err(self
                        .up
                        .unavailable(format!("the connection broke mid-stream: {e}"))));
                }
                None => {
                    // Some servers end without `[DONE]` once they sent a finish reason.
                    if self.finish.is_some() {
                        let done = self.done();
                        return Some(Ok(done));
                    }
                    self.ended = true;
                    return Some(Err(self
                        .up
                        .unavailable("the stream ended before the model finished")));
                }
            }
        }
    }
}
