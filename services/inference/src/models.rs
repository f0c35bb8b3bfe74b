//! The built-in models, which need nothing installed:
//!
//! * `keel-tiny` — a chat model that produces the same tokens every time for the same prompt,
//!   seed and temperature (temperature 0: the prompt alone decides), streamed with a
//!   configurable time to first token and per-token delay, so it behaves like a real model
//!   under load.
//! * `keel-embed` — a deterministic embedding model: 64 dimensions, unit length, built from
//!   hashed character trigrams, so texts that share words land close together.

use std::time::Duration;

pub const TINY: &str = "keel-tiny";
pub const TINY_VERSION: &str = "keel-tiny@1";
pub const EMBED: &str = "keel-embed";
pub const EMBED_VERSION: &str = "keel-embed@1";
pub const EMBED_DIMENSIONS: usize = 64;
/// Tokens generated when the request names no bound.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u32 = 32;
/// keel-tiny's context: prompt and output tokens together.
pub const MAX_OUTPUT_TOKENS: u32 = 1024;
pub const MAX_PROMPT_TOKENS: u32 = 4096;
pub const MAX_EMBED_INPUTS: usize = 256;
pub const MAX_EMBED_INPUT_CHARS: usize = 8192;

const VOCABULARY: &[&str] = &[
    "the",
    "model",
    "answers",
    "with",
    "care",
    "and",
    "keeps",
    "every",
    "tenant",
    "apart",
    "data",
    "flows",
    "through",
    "the",
    "gateway",
    "to",
    "inference",
    "then",
    "events",
    "reach",
    "postproc",
    "which",
    "stores",
    "results",
    "quickly",
    "safely",
    "while",
    "tokens",
    "stream",
    "back",
    "one",
    "by",
    "a",
    "small",
    "deterministic",
    "voice",
    "speaks",
    "clearly",
    "about",
    "documents",
    "questions",
    "ideas",
    "plans",
    "systems",
    "people",
    "time",
    "light",
    "water",
    "stone",
    "river",
];

/// How keel-tiny paces its output.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub first_token: Duration,
    pub per_token: Duration,
}

/// A generation plan: everything decided before the first token.
#[derive(Debug, Clone)]
pub struct Plan {
    pub input_tokens: u32,
    pub max_output_tokens: u32,
    state: u64,
}

fn fnv(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Counts tokens the way keel-tiny does: whitespace-separated words (at least one per message).
pub fn count_tokens(text: &str) -> u32 {
    text.split_whitespace().count() as u32
}

impl Plan {
    /// `prompt`: the conversation, rendered; `seed`: the caller's (or `None`); `salt`: the
    /// version's (0 for keel-tiny@1). Limits are checked by the caller against the version.
    pub fn new(
        prompt: &str,
        max_output_tokens: u32,
        temperature: f32,
        seed: Option<u64>,
        salt: u64,
    ) -> Plan {
        let h = fnv(prompt.as_bytes(), FNV_OFFSET);
        let h = if salt == 0 {
            h
        } else {
            fnv(&salt.to_le_bytes(), h)
        };
        // Temperature 0 is greedy: the prompt alone decides. Otherwise the seed does (a random
        // one when the caller gives none), together with the temperature.
        let state = if temperature == 0.0 {
            h
        } else {
            let seed = seed.unwrap_or_else(|| fastrand::u64(..));
            fnv(
                &temperature.to_bits().to_le_bytes(),
                fnv(&seed.to_le_bytes(), h),
            )
        };
        Plan {
            input_tokens: count_tokens(prompt),
            max_output_tokens,
            state: state | 1,
        }
    }

    fn next_u64(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The next token, or `None` when the model chooses to stop (never before 4 tokens).
    pub fn next_token(&mut self, produced: u32) -> Option<&'static str> {
        let r = self.next_u64();
        if produced >= 4 && r.is_multiple_of(23) {
            return None;
        }
        Some(VOCABULARY[(r >> 8) as usize % VOCABULARY.len()])
    }
}

/// keel-embed: hashed character trigrams (of the lower-cased text, padded), signed, summed and
/// scaled to unit length.
pub fn embed(text: &str) -> Vec<f32> {
    let mut v = vec![0f32; EMBED_DIMENSIONS];
    let padded: Vec<char> = format!("  {}  ", text.to_lowercase()).chars().collect();
    for w in padded.windows(3) {
        let s: String = w.iter().collect();
        let h = fnv(s.as_bytes(), FNV_OFFSET);
        let i = (h % EMBED_DIMENSIONS as u64) as usize;
        v[i] += if (h >> 32) & 1 == 0 { 1.0 } else { -1.0 };
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// The exportable artefact of a built-in model: everything needed to reproduce its output
/// (a JSON manifest with the parameters; keel-tiny's are its vocabulary and salt).
pub fn artefact(name: &str, version: &str, salt: Option<u64>) -> Vec<u8> {
    let body = match salt {
        Some(salt) => serde_json::json!({
            "format": "keel-model/1",
            "name": name,
            "version": version,
            "kind": "chat",
            "algorithm": "FNV-1a 64 of the rendered prompt (salted per version), mixed with seed and temperature unless temperature is 0; xorshift64* draws; token = vocabulary[(draw >> 8) % len]; stop when draw % 23 == 0 after 4 tokens",
            "salt": salt,
            "max_prompt_tokens": MAX_PROMPT_TOKENS,
            "max_output_tokens": MAX_OUTPUT_TOKENS,
            "vocabulary": VOCABULARY,
        }),
        None => serde_json::json!({
            "format": "keel-model/1",
            "name": name,
            "version": version,
            "kind": "embedding",
            "algorithm": "lower-cased text padded with two spaces; each character trigram hashed with FNV-1a 64; index = hash % dimensions, sign = bit 32; summed, then scaled to unit length",
            "dimensions": EMBED_DIMENSIONS,
        }),
    };
    serde_json::to_vec_pretty(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(prompt: &str, temperature: f32, seed: Option<u64>) -> Vec<&'static str> {
        let mut p = Plan::new(prompt, 50, temperature, seed, 0);
        let mut out = Vec::new();
        while (out.len() as u32) < p.max_output_tokens {
            match p.next_token(out.len() as u32) {
                Some(t) => out.push(t),
                None => break,
            }
        }
        out
    }

    #[test]
    fn the_same_prompt_seed_and_temperature_give_the_same_tokens() {
        assert_eq!(
            run("hello there", 0.0, None),
            run("hello there", 0.0, Some(9))
        );
        assert_eq!(
            run("hello there", 0.7, Some(42)),
            run("hello there", 0.7, Some(42))
        );
        assert_ne!(
            run("hello there", 0.7, Some(42)),
            run("hello there", 0.7, Some(43))
        );
        assert_ne!(run("hello there", 0.0, None), run("goodbye now", 0.0, None));
        assert!(run("x", 0.0, None).len() >= 4);
    }

    #[test]
    fn versions_answer_differently() {
        let mut a = Plan::new("hello there", 20, 0.0, None, 0);
        let mut b = Plan::new("hello there", 20, 0.0, None, 7);
        let ta: Vec<_> = (0..4).filter_map(|i| a.next_token(i)).collect();
        let tb: Vec<_> = (0..4).filter_map(|i| b.next_token(i)).collect();
        assert_ne!(ta, tb);
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn embeddings_are_unit_length_and_similar_texts_are_close() {
        let a = embed("the quick brown fox jumps");
        let b = embed("the quick brown fox leaps");
        let c = embed("quarterly revenue grew in europe");
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        assert_eq!(a, embed("the quick brown fox jumps"), "deterministic");
        assert!(
            cosine(&a, &b) > cosine(&a, &c) + 0.2,
            "{} vs {}",
            cosine(&a, &b),
            cosine(&a, &c)
        );
    }
}
