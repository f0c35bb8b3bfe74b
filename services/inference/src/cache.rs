//! The read-through cache in Redis, tenant-prefixed: embeddings (by model version and text
//! hash) and deterministic completions (by model version and every sampling parameter).
//!
//! * **Storms:** concurrent misses of one key in a process make one model call (single
//!   flight); across processes a short Redis lock (`SET NX PX`) elects one computer, and the
//!   others poll for its result until the lock lapses.
//! * **TTLs carry jitter** (±10 %), so keys written together do not expire together.
//! * **Redis unavailable ⇒ bypass:** every Redis call has a short timeout and goes through a
//!   breaker; when Redis fails the cache answers "miss" at once and stores nothing, and the
//!   service keeps serving from the models.
//! * **Popularity:** each deterministic chat lookup counts its key in the tenant's popularity
//!   set, so warm-up and the hourly prefetch know the top prompts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_resilience::{Breaker, BreakerConfig};
use keel_tenancy::TenantId;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::Error;

/// Cached answers live an hour: long enough to absorb repeats, short enough that a model
/// redeployed under the same version name is not masked for long.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// A Redis round trip on a healthy network is well under a millisecond; past this, the cache
/// is slower than it is worth and the call goes to the model.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(250);
/// The cross-process lock outlives a normal completion; a crashed holder blocks no one longer.
pub const LOCK_TTL: Duration = Duration::from_secs(10);
/// How often a process that lost the lock looks for the winner's result.
const LOCK_POLL: Duration = Duration::from_millis(20);
/// The popularity set keeps this many prompts per tenant.
pub const POPULAR_KEEP: isize = 1000;

type Flight = Arc<OnceCell<Result<Arc<[u8]>, tonic::Status>>>;

pub struct Cache {
    /// First part of every key (`KEEL_REDIS_PREFIX`): deployments sharing a Redis stay apart.
    prefix: String,
    redis: deadpool_redis::Pool,
    ttl: Duration,
    op_timeout: Duration,
    breaker: Breaker,
    flights: Mutex<HashMap<String, Flight>>,
}

/// The outcome of a read-through.
pub struct Fetched {
    pub bytes: Arc<[u8]>,
    /// No model call was made for this caller (a cached value, or another caller's call).
    pub hit: bool,
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

fn outcome(result: &'static str) {
    metrics::counter!("keel_inference_cache_total", "result" => result).increment(1);
}

impl Cache {
    pub fn new(
        prefix: String,
        redis: deadpool_redis::Pool,
        ttl: Duration,
        op_timeout: Duration,
    ) -> Self {
        Cache {
            prefix,
            redis,
            ttl,
            op_timeout,
            breaker: Breaker::new(
                "redis:cache",
                BreakerConfig {
                    min_calls: 5,
                    open_for: Duration::from_secs(2),
                    slow_call: op_timeout,
                    ..BreakerConfig::default()
                },
            ),
            flights: Mutex::new(HashMap::new()),
        }
    }

    /// `<prefix>:<tenant>:inference:<kind>:<version>:<sha256 of parts>`.
    pub fn key(&self, tenant: &TenantId, kind: &str, version: &str, parts: &[&[u8]]) -> String {
        format!(
            "{}:{tenant}:inference:{kind}:{version}:{}",
            self.prefix,
            sha256_hex(parts)
        )
    }

    fn popular_key(&self, tenant: &TenantId) -> String {
        format!("{}:{tenant}:inference:popular", self.prefix)
    }

    pub fn request_key(&self, tenant: &TenantId, key: &str) -> String {
        format!(
            "{}:{tenant}:inference:request:{}",
            self.prefix,
            sha256_hex(&[key.as_bytes()])
        )
    }

    /// The set of tenants with popular prompts (for the prefetch).
    fn tenants_key(&self) -> String {
        format!("{}:inference:popular-tenants", self.prefix)
    }

    fn ttl_ms(&self) -> u64 {
        let base = self.ttl.as_millis() as u64;
        let jitter = base / 10;
        base - jitter + fastrand::u64(0..=2 * jitter)
    }

    /// One Redis call through the breaker and the timeout; `None` when Redis is not usable.
    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Pipeline) -> Option<T> {
        let now = Instant::now();
        let Some(permit) = self.breaker.try_acquire(now) else {
            outcome("bypass");
            return None;
        };
        let fut = async {
            let mut conn = self.redis.get().await.map_err(|e| e.to_string())?;
            cmd.query_async::<T>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        };
        let result = match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err("timed out".into()),
        };
        self.breaker
            .record(permit, Instant::now(), result.is_err(), now.elapsed());
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(error = %e, "cache unavailable; serving without it");
                outcome("bypass");
                None
            }
        }
    }

    /// Looks `key` up; with `popular`, also counts it in the tenant's popularity set.
    pub async fn get(&self, key: &str, popular: Option<&TenantId>) -> Option<Vec<u8>> {
        let mut p = redis::pipe();
        p.cmd("GET").arg(key);
        if let Some(t) = popular {
            p.cmd("ZINCRBY")
                .arg(self.popular_key(t))
                .arg(1)
                .arg(key)
                .ignore();
        }
        let (v,): (Option<Vec<u8>>,) = self.run(p).await?;
        outcome(if v.is_some() { "hit" } else { "miss" });
        v
    }

    pub async fn get_many(&self, keys: &[String]) -> Vec<Option<Vec<u8>>> {
        if keys.is_empty() {
            return Vec::new();
        }
        let mut p = redis::pipe();
        p.cmd("MGET").arg(keys);
        match self.run::<(Vec<Option<Vec<u8>>>,)>(p).await {
            Some((v,)) if v.len() == keys.len() => {
                for x in &v {
                    outcome(if x.is_some() { "hit" } else { "miss" });
                }
                v
            }
            _ => vec![None; keys.len()],
        }
    }

    pub async fn put_many(&self, items: &[(String, Vec<u8>)]) {
        if items.is_empty() {
            return;
        }
        let mut p = redis::pipe();
        for (k, v) in items {
            p.cmd("SET")
                .arg(k)
                .arg(v)
                .arg("PX")
                .arg(self.ttl_ms())
                .ignore();
        }
        let _: Option<()> = self.run(p).await;
    }

    /// Stores a deterministic chat answer and the request that produced it (for prefetch).
    pub async fn put_chat(&self, tenant: &TenantId, key: &str, value: &[u8], request: &[u8]) {
        let ttl = self.ttl_ms();
        let mut p = redis::pipe();
        p.cmd("SET").arg(key).arg(value).arg("PX").arg(ttl).ignore();
        p.cmd("SET")
            .arg(self.request_key(tenant, key))
            .arg(request)
            .arg("PX")
            .arg(ttl * 2)
            .ignore();
        p.cmd("SADD")
            .arg(self.tenants_key())
            .arg(tenant.as_str())
            .ignore();
        let _: Option<()> = self.run(p).await;
    }

    /// The tenant's most requested chat keys, most popular first (and trims the set).
    pub async fn popular(&self, tenant: &TenantId, n: usize) -> Vec<String> {
        let mut p = redis::pipe();
        p.cmd("ZREVRANGE")
            .arg(self.popular_key(tenant))
            .arg(0)
            .arg(n.saturating_sub(1));
        p.cmd("ZREMRANGEBYRANK")
            .arg(self.popular_key(tenant))
            .arg(0)
            .arg(-POPULAR_KEEP - 1)
            .ignore();
        self.run::<(Vec<String>,)>(p)
            .await
            .map(|(v,)| v)
            .unwrap_or_default()
    }

    pub async fn tenants(&self) -> Vec<String> {
        let mut p = redis::pipe();
        p.cmd("SMEMBERS").arg(self.tenants_key());
        self.run::<(Vec<String>,)>(p)
            .await
            .map(|(v,)| v)
            .unwrap_or_default()
    }

    pub async fn get_raw(&self, key: &str) -> Option<Vec<u8>> {
        let mut p = redis::pipe();
        p.cmd("GET").arg(key);
        self.run::<(Option<Vec<u8>>,)>(p).await.and_then(|(v,)| v)
    }

    /// Tries to become the process that computes `key`.
    async fn lock(&self, key: &str) -> Lock {
        let mut p = redis::pipe();
        p.cmd("SET")
            .arg(format!("{key}:lock"))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(LOCK_TTL.as_millis() as u64);
        match self.run::<(Option<String>,)>(p).await {
            Some((Some(_),)) => Lock::Held,
            Some((None,)) => Lock::Taken,
            None => Lock::NoRedis,
        }
    }

    async fn unlock(&self, key: &str) {
        let mut p = redis::pipe();
        p.cmd("DEL").arg(format!("{key}:lock")).ignore();
        let _: Option<()> = self.run(p).await;
    }

    /// The value under `key`: cached, or computed once however many callers ask at once.
    /// `compute` returns the value and whether it may be stored; `store` stores it (so the
    /// caller decides what else to write alongside).
    /// `across_processes`: also elect one computer among replicas (worth a lock round trip
    /// when the model call is slow or costly; not for a built-in that answers in microseconds).
    #[tracing::instrument(
        name = "cache.read_through",
        skip_all,
        fields(db.system = "redis", cache.hit = tracing::field::Empty, cache.result = tracing::field::Empty)
    )]
    pub async fn read_through<C, CF, S, SF>(
        &self,
        key: &str,
        popular: Option<&TenantId>,
        across_processes: bool,
        compute: C,
        store: S,
    ) -> Result<Fetched, tonic::Status>
    where
        C: FnOnce() -> CF,
        CF: Future<Output = Result<(Vec<u8>, bool), Error>>,
        S: FnOnce(Vec<u8>) -> SF,
        SF: Future<Output = ()>,
    {
        let span = tracing::Span::current();
        if let Some(v) = self.get(key, popular).await {
            span.record("cache.hit", true).record("cache.result", "hit");
            return Ok(Fetched {
                bytes: v.into(),
                hit: true,
            });
        }
        let flight = {
            let Ok(mut flights) = self.flights.lock() else {
                return Err(tonic::Status::internal("internal error"));
            };
            flights.entry(key.to_owned()).or_default().clone()
        };
        let mut computed_here = false;
        let result = flight
            .get_or_init(|| async {
                let lock = if across_processes {
                    self.lock(key).await
                } else {
                    Lock::NoRedis
                };
                if let Lock::Taken = lock {
                    // Another process computes it: wait for its result while its lock lasts.
                    let until = Instant::now() + LOCK_TTL;
                    while Instant::now() < until {
                        tokio::time::sleep(LOCK_POLL).await;
                        if let Some(v) = self.get_raw(key).await {
                            return Ok(Arc::from(v));
                        }
                    }
                }
                computed_here = true;
                let computed = compute().await;
                let out = match computed {
                    Ok((v, cacheable)) => {
                        let bytes: Arc<[u8]> = Arc::from(v.as_slice());
                        if cacheable {
                            store(v).await;
                        }
                        Ok(bytes)
                    }
                    Err(e) => Err(tonic::Status::from(e)),
                };
                if let Lock::Held = lock {
                    self.unlock(key).await;
                }
                out
            })
            .await
            .clone();
        if let Ok(mut flights) = self.flights.lock()
            && flights.get(key).is_some_and(|f| Arc::ptr_eq(f, &flight))
        {
            flights.remove(key);
        }
        if !computed_here {
            outcome("coalesced");
        }
        span.record("cache.hit", !computed_here).record(
            "cache.result",
            if computed_here { "miss" } else { "coalesced" },
        );
        result.map(|bytes| Fetched {
            bytes,
            hit: !computed_here,
        })
    }
}

enum Lock {
    Held,
    Taken,
    NoRedis,
}

/// Embedding vectors as little-endian f32s (a quarter of their JSON size).
pub fn encode_vector(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn decode_vector(b: &[u8]) -> Option<Vec<f32>> {
    if !b.len().is_multiple_of(4) {
        return None;
    }
    Some(
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_tenant_prefixed_and_unambiguous() {
        let pool = deadpool_redis::Config::from_url("redis://127.0.0.1:1")
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .unwrap();
        let c = Cache::new("keel".into(), pool, DEFAULT_TTL, DEFAULT_OP_TIMEOUT);
        let t = TenantId::parse("acme").unwrap();
        let a = c.key(&t, "chat", "v@1", &[b"ab", b"c"]);
        let b = c.key(&t, "chat", "v@1", &[b"a", b"bc"]);
        assert!(a.starts_with("keel:acme:inference:chat:v@1:"));
        assert_ne!(a, b, "part boundaries are part of the key");
    }

    #[test]
    fn vectors_round_trip() {
        let v = vec![0.25f32, -1.0, 3.5];
        assert_eq!(decode_vector(&encode_vector(&v)).unwrap(), v);
        assert!(decode_vector(&[1, 2, 3]).is_none());
    }
}
