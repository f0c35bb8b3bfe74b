//! The OpenAI-compatible JSON bodies of `keel-openai` on arbitrary input: the requests
//! (chat completions, embeddings) the mock upstream parses and inference sends, and the answers
//! (completion, chunk, embeddings, error) inference parses from an upstream. Nothing may panic,
//! and whatever parses is stable: serialize → parse → serialize gives the same text.
#![no_main]

use keel_openai::{
    ChatChunk, ChatCompletion, ChatRequest, EmbeddingsRequest, EmbeddingsResponse, ErrorBody,
};
use libfuzzer_sys::fuzz_target;
use serde::{Serialize, de::DeserializeOwned};

fn stable<T: Serialize + DeserializeOwned>(data: &[u8]) -> Option<T> {
    let v: T = serde_json::from_slice(data).ok()?;
    let once = serde_json::to_string(&v).expect("a parsed body serializes");
    let again: T = serde_json::from_str(&once)
        .unwrap_or_else(|e| panic!("a serialized body parses again: {e}: {once}"));
    let twice = serde_json::to_string(&again).expect("serializes");
    assert_eq!(once, twice);
    Some(v)
}

fuzz_target!(|data: &[u8]| {
    if let Some(r) = stable::<ChatRequest>(data) {
        assert!(r.temperature.is_none_or(f32::is_finite));
    }
    let _ = stable::<EmbeddingsRequest>(data);
    let _ = stable::<ChatCompletion>(data);
    let _ = stable::<ChatChunk>(data);
    if let Some(e) = stable::<EmbeddingsResponse>(data) {
        assert!(
            e.data
                .iter()
                .all(|d| d.embedding.iter().all(|x| x.is_finite())),
            "an embedding value that is not a finite f32 was accepted"
        );
    }
    let _ = stable::<ErrorBody>(data);
});
