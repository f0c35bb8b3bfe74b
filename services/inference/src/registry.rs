//! The model registry: which models exist, in which versions, served by which provider, with
//! which limits, visible to which tenants — and the per-tenant A/B split that decides which
//! version a user gets.
//!
//! The catalogue is the built-in models plus what the operator declares in TOML
//! (`KEEL_INFERENCE_MODELS`, or a file named by `KEEL_INFERENCE_MODELS_FILE`):
//!
//! ```toml
//! [[model]]
//! name = "llama"                      # what clients ask for
//! version = "llama@3.1-8b"            # what is reported and cached under
//! kind = "chat"                       # or "embedding"
//! provider = "openai"                 # an OpenAI-compatible server: vLLM, llama.cpp, Ollama…
//! base_url = "http://10.0.0.5:8000/v1"
//! upstream_model = "meta-llama/Llama-3.1-8B-Instruct"
//! api_key_env = "LLAMA_API_KEY"       # the variable holding the key, never the key
//! context_length = 8192
//! max_output_tokens = 1024
//! first_token_timeout = "10s"
//! timeout = "120s"
//! fallback = "keel-tiny@1"            # served when this version fails before its first token
//! tenants = ["acme"]                  # visibility; omitted: every tenant
//! ```
//!
//! The first version declared for a name is its default; splits (stored per tenant on the
//! tenant's shard, changed at run time through `keel.inference.v1.Models/SetSplit`) send a
//! stable share of users to another version.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_config::{ConfigError, Env};
use keel_store::Shards;
use keel_tenancy::TenantId;
use serde::Deserialize;
use sqlx::Row;

use crate::Error;
use crate::models;

/// How long a replica trusts the split it read (a change reaches every replica within this).
pub const DEFAULT_SPLIT_TTL: Duration = Duration::from_secs(2);
/// A model that answers nothing for this long is not going to (a real model's first token
/// comes in well under a second on a warm server).
pub const DEFAULT_FIRST_TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole call, however long the output: 1,024 tokens at 20 tokens/s is under a minute.
pub const DEFAULT_MODEL_TIMEOUT: Duration = Duration::from_secs(120);
/// Fallback chains longer than this are refused at start (they are loops or mistakes).
pub const MAX_FALLBACK_CHAIN: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Chat,
    Embedding,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Chat => "chat",
            Kind::Embedding => "embedding",
        }
    }
}

/// The failure modes the built-in chat model can reproduce, like TensorZero's dummy provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Ten times slower to the first token and between tokens.
    Slow,
    /// Produces a few tokens, then nothing more (the call hangs until a timeout).
    Stall {
        after: u32,
    },
    /// Every Nth call fails with UNAVAILABLE.
    FailEvery(u64),
    /// Never produces a first token.
    Timeout,
}

#[derive(Debug, Clone)]
pub enum Backend {
    /// keel-tiny: `salt` distinguishes versions (different output for the same prompt).
    Tiny { salt: u64, fault: Fault },
    /// keel-embed.
    Embed,
    /// An OpenAI-compatible server.
    OpenAi {
        base_url: String,
        upstream_model: String,
        api_key: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub version: String,
    pub kind: Kind,
    pub backend: Backend,
    pub context_length: u32,
    pub max_output_tokens: u32,
    pub embedding_dimension: u32,
    pub first_token_timeout: Duration,
    pub timeout: Duration,
    /// Another version, served when this one fails before its first token.
    pub fallback: Option<String>,
    /// Tenants that may call it; `None`: every tenant.
    pub tenants: Option<Vec<TenantId>>,
}

impl ModelSpec {
    pub fn visible_to(&self, tenant: &TenantId) -> bool {
        self.tenants.as_ref().is_none_or(|t| t.contains(tenant))
    }
}

/// The operator's declaration of one model version.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Declared {
    name: String,
    version: String,
    kind: Kind,
    provider: String,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    upstream_model: Option<String>,
    #[serde(default)]
    api_key_env: Option<String>,
    #[serde(default)]
    context_length: Option<u32>,
    #[serde(default)]
    max_output_tokens: Option<u32>,
    #[serde(default)]
    embedding_dimension: Option<u32>,
    #[serde(default)]
    first_token_timeout: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    fallback: Option<String>,
    #[serde(default)]
    tenants: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Declaration {
    #[serde(default)]
    model: Vec<Declared>,
}

/// Per-tenant split of one model's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub version_b: String,
    pub percent_b: u32,
}

/// A split as read from the shard, and when.
type CachedSplit = (Instant, Option<Split>);

/// The catalogue plus the split cache.
pub struct Registry {
    /// Every version, in declaration order.
    versions: Vec<Arc<ModelSpec>>,
    by_version: HashMap<String, Arc<ModelSpec>>,
    /// Name → default version.
    defaults: HashMap<String, Arc<ModelSpec>>,
    splits: Mutex<HashMap<(TenantId, String), CachedSplit>>,
    split_ttl: Duration,
    shards: Shards,
}

fn builtin(
    name: &str,
    version: &str,
    backend: Backend,
    first_token_timeout: Duration,
    timeout: Duration,
) -> ModelSpec {
    let embedding = matches!(backend, Backend::Embed);
    ModelSpec {
        name: name.into(),
        version: version.into(),
        kind: if embedding {
            Kind::Embedding
        } else {
            Kind::Chat
        },
        backend,
        context_length: if embedding {
            models::MAX_EMBED_INPUT_CHARS as u32
        } else {
            models::MAX_PROMPT_TOKENS + models::MAX_OUTPUT_TOKENS
        },
        max_output_tokens: if embedding {
            0
        } else {
            models::MAX_OUTPUT_TOKENS
        },
        embedding_dimension: if embedding {
            models::EMBED_DIMENSIONS as u32
        } else {
            0
        },
        first_token_timeout,
        timeout,
        fallback: None,
        tenants: None,
    }
}

/// keel-tiny@2 answers differently from @1 (so an A/B split is visible in the output).
const TINY_V2_SALT: u64 = 0x9e37_79b9_7f4a_7c15;
/// keel-tiny-flaky fails every third call.
pub const FLAKY_EVERY: u64 = 3;
/// keel-tiny-stall stops after this many tokens.
pub const STALL_AFTER: u32 = 3;

fn builtins(first: Duration, total: Duration, faults: bool) -> Vec<ModelSpec> {
    let tiny = |fault| Backend::Tiny { salt: 0, fault };
    let mut all = vec![
        builtin(
            models::TINY,
            models::TINY_VERSION,
            tiny(Fault::None),
            first,
            total,
        ),
        builtin(
            models::TINY,
            "keel-tiny@2",
            Backend::Tiny {
                salt: TINY_V2_SALT,
                fault: Fault::None,
            },
            first,
            total,
        ),
        builtin(
            models::EMBED,
            models::EMBED_VERSION,
            Backend::Embed,
            first,
            total,
        ),
    ];
    if !faults {
        return all;
    }
    all.extend([
        builtin(
            "keel-tiny-slow",
            "keel-tiny-slow@1",
            tiny(Fault::Slow),
            first,
            total,
        ),
        builtin(
            "keel-tiny-stall",
            "keel-tiny-stall@1",
            tiny(Fault::Stall { after: STALL_AFTER }),
            first,
            total,
        ),
        builtin(
            "keel-tiny-flaky",
            "keel-tiny-flaky@1",
            tiny(Fault::FailEvery(FLAKY_EVERY)),
            first,
            total,
        ),
        builtin(
            "keel-tiny-timeout",
            "keel-tiny-timeout@1",
            tiny(Fault::Timeout),
            first,
            total,
        ),
    ]);
    all
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        shown: "<model declaration>".into(),
        problem: problem.into(),
    }
}

/// Reads the operator's declarations (inline or from a file) and checks them whole.
pub fn catalogue_from_env(env: &Env) -> Result<Vec<ModelSpec>, ConfigError> {
    let first = env.duration(
        "KEEL_INFERENCE_FIRST_TOKEN_TIMEOUT",
        DEFAULT_FIRST_TOKEN_TIMEOUT,
    )?;
    let total = env.duration("KEEL_INFERENCE_MODEL_TIMEOUT", DEFAULT_MODEL_TIMEOUT)?;
    let (key, text) = match (
        env.raw("KEEL_INFERENCE_MODELS"),
        env.raw("KEEL_INFERENCE_MODELS_FILE"),
    ) {
        (Some(t), _) => ("KEEL_INFERENCE_MODELS", t.to_owned()),
        (None, Some(path)) => (
            "KEEL_INFERENCE_MODELS_FILE",
            std::fs::read_to_string(path)
                .map_err(|e| invalid("KEEL_INFERENCE_MODELS_FILE", format!("{path}: {e}")))?,
        ),
        (None, None) => ("KEEL_INFERENCE_MODELS", String::new()),
    };
    let declared: Declaration = toml::from_str(&text).map_err(|e| invalid(key, e.to_string()))?;
    // The failure variants are for tests and local stacks, never a production catalogue.
    let faults = env.bool("KEEL_INFERENCE_FAULT_MODELS", false)?;
    let mut all = builtins(first, total, faults);
    for d in declared.model {
        all.push(declared_spec(key, d, env, first, total)?);
    }
    check(key, &all)?;
    Ok(all)
}

fn declared_spec(
    key: &str,
    d: Declared,
    env: &Env,
    first: Duration,
    total: Duration,
) -> Result<ModelSpec, ConfigError> {
    let at = |what: &str| format!("model {:?}: {what}", d.version);
    if d.provider != "openai" {
        return Err(invalid(
            key,
            at("provider must be \"openai\" (any OpenAI-compatible server)"),
        ));
    }
    let base_url = d
        .base_url
        .ok_or_else(|| invalid(key, at("base_url is required")))?;
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        return Err(invalid(key, at("base_url must be http:// or https://")));
    }
    let api_key = match &d.api_key_env {
        Some(var) => Some(
            env.raw(var)
                .ok_or_else(|| invalid(key, at(&format!("{var} (api_key_env) is not set"))))?
                .to_owned(),
        ),
        None => None,
    };
    let duration = |v: &Option<String>, default| match v {
        Some(s) => keel_config::parse_duration(s).map_err(|e| invalid(key, at(&e))),
        None => Ok(default),
    };
    let tenants = match d.tenants {
        Some(list) => Some(
            list.iter()
                .map(|t| TenantId::parse(t).map_err(|e| invalid(key, at(&e.to_string()))))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None => None,
    };
    Ok(ModelSpec {
        name: d.name.clone(),
        version: d.version.clone(),
        kind: d.kind,
        backend: Backend::OpenAi {
            base_url: base_url.trim_end_matches('/').to_owned(),
            upstream_model: d.upstream_model.unwrap_or(d.name),
            api_key,
        },
        context_length: d.context_length.unwrap_or(8192),
        max_output_tokens: match d.kind {
            Kind::Chat => d.max_output_tokens.unwrap_or(1024),
            Kind::Embedding => 0,
        },
        embedding_dimension: d.embedding_dimension.unwrap_or(0),
        first_token_timeout: duration(&d.first_token_timeout, first)?,
        timeout: duration(&d.timeout, total)?,
        fallback: d.fallback,
        tenants,
    })
}

/// Versions unique, fallbacks exist with the same kind, chains end.
fn check(key: &str, all: &[ModelSpec]) -> Result<(), ConfigError> {
    let mut seen = HashMap::new();
    for m in all {
        if m.name.is_empty() || m.version.is_empty() || m.name.len() > 100 || m.version.len() > 100
        {
            return Err(invalid(key, "names and versions are 1 to 100 characters"));
        }
        if seen.insert(m.version.as_str(), m).is_some() {
            return Err(invalid(
                key,
                format!("version {:?} is declared twice", m.version),
            ));
        }
    }
    for m in all {
        if let Some(d) = all.iter().find(|d| d.name == m.name && d.kind != m.kind) {
            return Err(invalid(
                key,
                format!(
                    "{:?} is both a chat and an embedding model ({})",
                    m.name, d.version
                ),
            ));
        }
        let mut at = m;
        let mut hops = 0;
        while let Some(next) = &at.fallback {
            let Some(n) = seen.get(next.as_str()) else {
                return Err(invalid(
                    key,
                    format!("{:?} falls back to unknown version {next:?}", m.version),
                ));
            };
            if n.kind != m.kind {
                return Err(invalid(
                    key,
                    format!(
                        "{:?} falls back to {next:?}, a model of another kind",
                        m.version
                    ),
                ));
            }
            hops += 1;
            if hops > MAX_FALLBACK_CHAIN {
                return Err(invalid(
                    key,
                    format!("the fallback chain of {:?} loops or is too long", m.version),
                ));
            }
            at = n;
        }
    }
    Ok(())
}

/// Which bucket (0..100) a user falls in for a tenant's model: stable, and independent across
/// models and tenants. An anonymous caller gets a random bucket.
pub fn bucket(tenant: &TenantId, model: &str, user: &str) -> u32 {
    if user.is_empty() {
        return fastrand::u32(..100);
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tenant
        .as_str()
        .bytes()
        .chain([0])
        .chain(model.bytes())
        .chain([0])
        .chain(user.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Fold the high bits in: FNV's low bits alone are weakly mixed.
    ((h ^ (h >> 32)) % 100) as u32
}

impl Registry {
    pub fn new(catalogue: Vec<ModelSpec>, shards: Shards, split_ttl: Duration) -> Self {
        let versions: Vec<Arc<ModelSpec>> = catalogue.into_iter().map(Arc::new).collect();
        let mut defaults = HashMap::new();
        for v in &versions {
            defaults.entry(v.name.clone()).or_insert_with(|| v.clone());
        }
        Registry {
            by_version: versions
                .iter()
                .map(|v| (v.version.clone(), v.clone()))
                .collect(),
            versions,
            defaults,
            splits: Mutex::new(HashMap::new()),
            split_ttl,
            shards,
        }
    }

    /// Every version, in declaration order.
    pub fn versions(&self) -> &[Arc<ModelSpec>] {
        &self.versions
    }

    pub fn version(&self, version: &str) -> Option<Arc<ModelSpec>> {
        self.by_version.get(version).cloned()
    }

    /// The default version of each model the tenant may call, in declaration order.
    pub fn visible(&self, tenant: &TenantId) -> Vec<Arc<ModelSpec>> {
        self.versions
            .iter()
            .filter(|v| {
                self.defaults
                    .get(&v.name)
                    .is_some_and(|d| Arc::ptr_eq(d, v))
                    && v.visible_to(tenant)
            })
            .cloned()
            .collect()
    }

    /// The model's default version, if the tenant may call it (an invisible model is reported
    /// as not found, so its existence does not leak).
    pub fn default_for(&self, tenant: &TenantId, name: &str) -> Result<Arc<ModelSpec>, Error> {
        match self.defaults.get(name) {
            Some(m) if m.visible_to(tenant) => Ok(m.clone()),
            _ => Err(Error::ModelNotFound(name.chars().take(100).collect())),
        }
    }

    /// The version that serves this call: the default, or version B for users in the split.
    pub async fn resolve(
        &self,
        tenant: &TenantId,
        name: &str,
        user: &str,
        kind: Kind,
    ) -> Result<Arc<ModelSpec>, Error> {
        if name.is_empty() {
            return Err(Error::InvalidArgument {
                field: "model",
                problem: format!("is required (e.g. {:?})", models::TINY),
            });
        }
        let default = self.default_for(tenant, name)?;
        if default.kind != kind {
            return Err(Error::InvalidArgument {
                field: "model",
                problem: format!("{name:?} is a {} model", default.kind.as_str()),
            });
        }
        let split = self.split(tenant, name).await?;
        let spec = match split {
            Some(s) if bucket(tenant, name, user) < s.percent_b => self
                .version(&s.version_b)
                .filter(|v| v.visible_to(tenant))
                .unwrap_or(default),
            _ => default,
        };
        Ok(spec)
    }

    /// The tenant's split for `model`, from a short-lived cache in front of its shard.
    pub async fn split(&self, tenant: &TenantId, model: &str) -> Result<Option<Split>, Error> {
        let key = (tenant.clone(), model.to_owned());
        if let Ok(cache) = self.splits.lock()
            && let Some((at, s)) = cache.get(&key)
            && at.elapsed() < self.split_ttl
        {
            return Ok(s.clone());
        }
        let mut tx = self.shards.begin(tenant).await?;
        let row = sqlx::query(
            "SELECT version_b, percent_b FROM model_splits WHERE tenant_id = $1 AND model = $2",
        )
        .bind(tenant.as_str())
        .bind(model)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        let split = match row {
            Some(r) => Some(Split {
                version_b: r.try_get("version_b")?,
                percent_b: r.try_get::<i32, _>("percent_b")?.clamp(0, 100) as u32,
            }),
            None => None,
        };
        if let Ok(mut cache) = self.splits.lock() {
            if cache.len() > 100_000 {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), split.clone()));
        }
        Ok(split)
    }

    /// Sets (or, with 0 %, ends) the tenant's split of `model`.
    pub async fn set_split(
        &self,
        tenant: &TenantId,
        model: &str,
        version_b: &str,
        percent_b: u32,
    ) -> Result<Option<Split>, Error> {
        let default = self.default_for(tenant, model)?;
        if percent_b > 100 {
            return Err(Error::InvalidArgument {
                field: "percent_b",
                problem: "must be between 0 and 100".into(),
            });
        }
        let mut tx = self.shards.begin(tenant).await?;
        let split = if percent_b == 0 {
            sqlx::query("DELETE FROM model_splits WHERE tenant_id = $1 AND model = $2")
                .bind(tenant.as_str())
                .bind(model)
                .execute(&mut *tx)
                .await?;
            None
        } else {
            match self.version(version_b) {
                Some(v) if v.name == default.name && v.visible_to(tenant) => {}
                _ => {
                    return Err(Error::InvalidArgument {
                        field: "version_b",
                        problem: format!("is not a version of {model:?}"),
                    });
                }
            }
            sqlx::query(
                "INSERT INTO model_splits (tenant_id, model, version_b, percent_b)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (tenant_id, model) DO UPDATE
                 SET version_b = EXCLUDED.version_b, percent_b = EXCLUDED.percent_b,
                     update_time = now()",
            )
            .bind(tenant.as_str())
            .bind(model)
            .bind(version_b)
            .bind(percent_b as i32)
            .execute(&mut *tx)
            .await?;
            Some(Split {
                version_b: version_b.to_owned(),
                percent_b,
            })
        };
        tx.commit().await?;
        if let Ok(mut cache) = self.splits.lock() {
            cache.remove(&(tenant.clone(), model.to_owned()));
        }
        Ok(split)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        let tenant = t("acme");
        assert_eq!(bucket(&tenant, "m", "alice"), bucket(&tenant, "m", "alice"));
        let under_30 = (0..10_000)
            .filter(|i| bucket(&tenant, "m", &format!("user-{i}")) < 30)
            .count();
        assert!((2_700..3_300).contains(&under_30), "{under_30}");
        // Independent across models: a user in B for one model is not thereby in B for all.
        assert!((0..100).any(|i| {
            let u = format!("u{i}");
            bucket(&tenant, "m", &u) != bucket(&tenant, "n", &u)
        }));
        assert_ne!(
            bucket(&tenant, "m", "alice"),
            bucket(&t("globex"), "m", "alice")
        );
    }

    fn env(models: &str) -> Env {
        Env::from_pairs([
            ("KEEL_INFERENCE_MODELS", models),
            ("UP_KEY", "sk-test"),
            ("KEEL_INFERENCE_FAULT_MODELS", "true"),
        ])
    }

    #[test]
    fn declarations_are_checked_whole() {
        let ok = r#"
            [[model]]
            name = "llama"
            version = "llama@1"
            kind = "chat"
            provider = "openai"
            base_url = "http://127.0.0.1:9/v1/"
            api_key_env = "UP_KEY"
            fallback = "keel-tiny@1"
            tenants = ["acme"]
        "#;
        let all = catalogue_from_env(&env(ok)).unwrap();
        let llama = all.iter().find(|m| m.version == "llama@1").unwrap();
        assert!(
            matches!(&llama.backend, Backend::OpenAi { base_url, api_key: Some(k), .. }
            if base_url == "http://127.0.0.1:9/v1" && k == "sk-test")
        );
        for (bad, why) in [
            (ok.replace("keel-tiny@1", "nope@1"), "unknown version"),
            (ok.replace("keel-tiny@1", "keel-embed@1"), "another kind"),
            (ok.replace("UP_KEY", "NOT_SET"), "is not set"),
            (ok.replace("llama@1", "keel-tiny@1"), "declared twice"),
            (ok.replace("openai", "magic"), "provider"),
            (ok.replace("http://", "ftp://"), "base_url"),
            (format!("{ok}\nsurprise = 1"), "surprise"),
        ] {
            let e = catalogue_from_env(&env(&bad)).unwrap_err().to_string();
            assert!(e.contains(why), "{why}: {e}");
            assert!(!e.contains("sk-test"), "never echoes a key: {e}");
        }
        let looping = r#"
            [[model]]
            name = "a"
            version = "a@1"
            kind = "chat"
            provider = "openai"
            base_url = "http://x/v1"
            fallback = "a@2"
            [[model]]
            name = "a"
            version = "a@2"
            kind = "chat"
            provider = "openai"
            base_url = "http://x/v1"
            fallback = "a@1"
        "#;
        let e = catalogue_from_env(&env(looping)).unwrap_err().to_string();
        assert!(e.contains("loops"), "{e}");
    }
}
