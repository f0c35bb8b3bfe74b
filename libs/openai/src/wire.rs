//! Request and response bodies, as the OpenAI API defines them (the fields keel uses; unknown
//! fields in responses are ignored, so newer servers keep working).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StreamOptions {
    pub include_usage: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "finite::option"
    )]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u32,
    #[serde(default)]
    pub completion_tokens: u32,
    #[serde(default)]
    pub total_tokens: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Choice {
    #[serde(default)]
    pub index: u32,
    pub message: Message,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatCompletion {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub model: String,
    pub choices: Vec<Choice>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkChoice {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub delta: Delta,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// One `data:` event of a streamed chat completion.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatChunk {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub input: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbeddingData {
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub index: u32,
    #[serde(deserialize_with = "finite::vec")]
    pub embedding: Vec<f32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbeddingsResponse {
    #[serde(default)]
    pub object: String,
    pub data: Vec<EmbeddingData>,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub param: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
}

/// `{"error": {...}}`: every non-2xx answer of an OpenAI-compatible server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The terminal `data:` payload of a stream.
pub const DONE: &str = "[DONE]";

/// `f32` fields that must be finite. serde_json reads a number beyond `f32`'s range (`1e39`)
/// as infinity, which JSON cannot carry back (it is written as `null`): such a number is
/// refused like any other invalid value instead of travelling on as infinity.
mod finite {
    use serde::{Deserialize, Deserializer, de::Error};

    fn check<E: Error>(v: f32) -> Result<f32, E> {
        if v.is_finite() {
            Ok(v)
        } else {
            Err(E::custom("number out of range for a 32-bit float"))
        }
    }

    pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f32>, D::Error> {
        Option::<f32>::deserialize(d)?.map(check).transpose()
    }

    pub fn vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
        Vec::<f32>::deserialize(d)?.into_iter().map(check).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vllm_style_chunk_with_extra_fields_parses() {
        let raw = r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",
            "system_fingerprint":"x","choices":[{"index":0,"delta":{"content":"hi"},"logprobs":null,
            "finish_reason":null}]}"#;
        let c: ChatChunk = serde_json::from_str(raw).unwrap();
        assert_eq!(c.choices[0].delta.content.as_deref(), Some("hi"));
        let usage_only =
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
        let c: ChatChunk = serde_json::from_str(usage_only).unwrap();
        assert_eq!(c.usage.unwrap().completion_tokens, 2);
    }

    /// Found by the `openai_request` fuzz target: `"temperature": 6e38` parsed as infinity,
    /// which serialized as `null`, so the body did not survive a round trip; an upstream's
    /// embedding value beyond `f32` became an infinite component.
    #[test]
    fn numbers_beyond_f32_are_refused_not_read_as_infinity() {
        let hot = r#"{"model":"m","messages":[],"temperature":6e38}"#;
        assert!(serde_json::from_str::<ChatRequest>(hot).is_err());
        let r: ChatRequest =
            serde_json::from_str(r#"{"model":"m","messages":[],"temperature":0.5}"#).unwrap();
        assert_eq!(r.temperature, Some(0.5));
        let r: ChatRequest = serde_json::from_str(r#"{"model":"m","messages":[]}"#).unwrap();
        assert_eq!(r.temperature, None);
        let big = r#"{"data":[{"embedding":[0.5,-1e39]}]}"#;
        assert!(serde_json::from_str::<EmbeddingsResponse>(big).is_err());
        let max = r#"{"data":[{"embedding":[0.5,3.4028235e38]}]}"#;
        let e: EmbeddingsResponse = serde_json::from_str(max).unwrap();
        assert_eq!(e.data[0].embedding, vec![0.5, f32::MAX]);
    }

    #[test]
    fn requests_omit_what_is_unset() {
        let r = ChatRequest {
            model: "m".into(),
            messages: vec![Message {
                role: "user".into(),
                content: "hi".into(),
            }],
            ..Default::default()
        };
        let s = serde_json::to_string(&r).unwrap();
        assert!(!s.contains("seed") && !s.contains("max_tokens"), "{s}");
    }
}
