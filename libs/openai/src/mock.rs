//! A mock OpenAI-compatible upstream, in process, for tests and benchmarks: it answers chat
//! completions (JSON and streamed) and embeddings deterministically, counts the calls it gets,
//! and can be told at run time to be slow, fail, fail every Nth call, stall or drop the
//! connection mid-stream, or never answer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::sse::encode_data;
use crate::wire::*;

/// How the mock answers the next calls.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    Healthy,
    /// Waits this long before the first byte of the answer.
    Slow(Duration),
    /// Answers every call with this HTTP status and an OpenAI error body.
    Fail(u16),
    /// Every Nth call (counting from the first) fails with 503; the others succeed.
    FailEvery(u64),
    /// Streams this many chunks, then stops sending without closing (the call hangs).
    Stall {
        after: usize,
    },
    /// Streams this many chunks, then breaks the connection (no terminating chunk).
    Drop {
        after: usize,
    },
    /// Accepts the request and never answers.
    Hang,
}

struct Inner {
    behaviour: Mutex<Behaviour>,
    per_token: Mutex<Duration>,
    calls: AtomicU64,
    sent: AtomicU64,
}

/// A running mock; stops when dropped.
pub struct MockUpstream {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    _stop: oneshot::Sender<()>,
}

impl MockUpstream {
    /// Binds 127.0.0.1 on a free port and serves until dropped.
    pub async fn start() -> std::io::Result<MockUpstream> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            behaviour: Mutex::new(Behaviour::Healthy),
            per_token: Mutex::new(Duration::ZERO),
            calls: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        });
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(embeddings))
            .with_state(inner.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        // The mock is test support: its one task lives exactly as long as the handle.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(MockUpstream {
            addr,
            inner,
            _stop: stop,
        })
    }

    /// `http://127.0.0.1:PORT/v1`, what a provider is configured with.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn set(&self, b: Behaviour) {
        if let Ok(mut g) = self.inner.behaviour.lock() {
            *g = b;
        }
    }

    /// Delay between streamed chunks.
    pub fn set_per_token(&self, d: Duration) {
        if let Ok(mut g) = self.inner.per_token.lock() {
            *g = d;
        }
    }

    /// Calls received so far (chat and embeddings).
    pub fn calls(&self) -> u64 {
        self.inner.calls.load(Ordering::SeqCst)
    }

    /// Streamed chunks handed to the connection so far (stops growing when a client leaves).
    pub fn sent(&self) -> u64 {
        self.inner.sent.load(Ordering::SeqCst)
    }
}

/// The deterministic answer: "echo" and the words of the last message, up to `max`.
pub fn answer_words(req: &ChatRequest) -> Vec<String> {
    let last = req
        .messages
        .last()
        .map(|m| m.content.as_str())
        .unwrap_or("");
    let max = req.max_tokens.unwrap_or(16).max(1) as usize;
    std::iter::once("echo".to_owned())
        .chain(last.split_whitespace().map(str::to_owned))
        .take(max)
        .collect()
}

fn error(status: u16, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = ErrorBody {
        error: ErrorDetail {
            message: message.into(),
            kind: "server_error".into(),
            param: None,
            code: None,
        },
    };
    (code, Json(body)).into_response()
}

/// Decides the fate of one call; `Err` is the response to give at once.
async fn admit(inner: &Inner) -> Result<Behaviour, Response> {
    let n = inner.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let b = inner
        .behaviour
        .lock()
        .map(|b| b.clone())
        .unwrap_or(Behaviour::Healthy);
    match b {
        Behaviour::Fail(status) => Err(error(status, "the mock was told to fail")),
        Behaviour::FailEvery(k) if k > 0 && n.is_multiple_of(k) => {
            Err(error(503, "the mock fails every Nth call"))
        }
        Behaviour::Slow(d) => {
            tokio::time::sleep(d).await;
            Ok(b)
        }
        Behaviour::Hang => {
            futures::future::pending::<()>().await;
            Ok(b)
        }
        _ => Ok(b),
    }
}

async fn chat(State(inner): State<Arc<Inner>>, Json(req): Json<ChatRequest>) -> Response {
    let behaviour = match admit(&inner).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let words = answer_words(&req);
    let prompt_tokens: u32 = req
        .messages
        .iter()
        .map(|m| m.content.split_whitespace().count() as u32)
        .sum();
    let usage = Usage {
        prompt_tokens,
        completion_tokens: words.len() as u32,
        total_tokens: prompt_tokens + words.len() as u32,
    };
    let finish = if words.len() as u32 >= req.max_tokens.unwrap_or(16) {
        "length"
    } else {
        "stop"
    };
    if !req.stream {
        return Json(ChatCompletion {
            id: "chatcmpl-mock".into(),
            object: "chat.completion".into(),
            created: 0,
            model: req.model.clone(),
            choices: vec![Choice {
                index: 0,
                message: Message {
                    role: "assistant".into(),
                    content: words.join(" "),
                },
                finish_reason: Some(finish.into()),
            }],
            usage: Some(usage),
        })
        .into_response();
    }
    let per_token = inner.per_token.lock().map(|d| *d).unwrap_or(Duration::ZERO);
    let model = req.model.clone();
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    let chunk = move |content: Option<String>, finish: Option<&str>, usage: Option<Usage>| {
        let c = ChatChunk {
            id: "chatcmpl-mock".into(),
            object: "chat.completion.chunk".into(),
            created: 0,
            model: model.clone(),
            choices: if usage.is_some() {
                Vec::new()
            } else {
                vec![ChunkChoice {
                    index: 0,
                    delta: Delta {
                        role: None,
                        content,
                    },
                    finish_reason: finish.map(str::to_owned),
                }]
            },
            usage,
        };
        Bytes::from(encode_data(&serde_json::to_string(&c).unwrap_or_default()))
    };
    let mut frames: Vec<Bytes> = words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            chunk(
                Some(if i == 0 { w.clone() } else { format!(" {w}") }),
                None,
                None,
            )
        })
        .collect();
    frames.push(chunk(None, Some(finish), None));
    if include_usage {
        frames.push(chunk(None, None, Some(usage)));
    }
    frames.push(Bytes::from(encode_data(DONE)));
    let counter = inner.clone();
    let stream = futures::stream::unfold(
        (frames.into_iter().enumerate(), behaviour),
        move |(mut it, b)| {
            let counter = counter.clone();
            async move {
                let (i, frame) = it.next()?;
                match b {
                    Behaviour::Stall { after } if i >= after => {
                        futures::future::pending::<()>().await;
                    }
                    Behaviour::Drop { after } if i >= after => {
                        // Let what was sent reach the client first (hyper discards its write
                        // buffer when a body fails), then break the connection.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        return Some((
                            Err(std::io::Error::other("the mock drops the connection")),
                            (it, b),
                        ));
                    }
                    _ => {}
                }
                if i > 0 && !per_token.is_zero() {
                    tokio::time::sleep(per_token).await;
                }
                counter.sent.fetch_add(1, Ordering::SeqCst);
                Some((Ok::<_, std::io::Error>(frame), (it, b)))
            }
        },
    );
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| error(500, "response"))
}

/// A deterministic 8-dimensional unit vector per text.
pub fn mock_embedding(text: &str) -> Vec<f32> {
    let step = |h: u64, b: u8| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    let seed = text.bytes().fold(0xcbf2_9ce4_8422_2325, step);
    let v: Vec<f32> = (0..8u8)
        .map(|i| (step(seed, i) >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    v.iter().map(|x| x / norm).collect()
}

async fn embeddings(
    State(inner): State<Arc<Inner>>,
    Json(req): Json<EmbeddingsRequest>,
) -> Response {
    if let Err(r) = admit(&inner).await {
        return r;
    }
    let tokens: u32 = req
        .input
        .iter()
        .map(|t| t.split_whitespace().count() as u32)
        .sum();
    Json(EmbeddingsResponse {
        object: "list".into(),
        data: req
            .input
            .iter()
            .enumerate()
            .map(|(i, t)| EmbeddingData {
                object: "embedding".into(),
                index: i as u32,
                embedding: mock_embedding(t),
            })
            .collect(),
        model: req.model,
        usage: Some(Usage {
            prompt_tokens: tokens,
            completion_tokens: 0,
            total_tokens: tokens,
        }),
    })
    .into_response()
}
