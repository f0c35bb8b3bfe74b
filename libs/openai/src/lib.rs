//! The OpenAI-compatible wire format, with no I/O: the chat-completions and embeddings request
//! and response bodies, streamed chunks, the error shape, and a server-sent-events decoder that
//! takes bytes as they arrive.
//!
//! Used by inference's upstream provider (vLLM, llama.cpp server, Ollama, OpenAI all speak it)
//! and by the `mock` upstream (feature `mock`) that tests point it at.

pub mod sse;
pub mod wire;

#[cfg(feature = "mock")]
pub mod mock;

pub use sse::{SseDecoder, SseError, SseEvent};
pub use wire::*;
