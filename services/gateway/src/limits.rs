//! Rate limits tied to contract tiers, shared by every gateway replica.
//!
//! GCRA (the generic cell rate algorithm: a token bucket kept as one "theoretical arrival
//! time" per key) in one Redis Lua script, so a call is checked against its tenant's and its
//! user's buckets **atomically** across replicas: either both admit it (and both are charged)
//! or it is refused and neither is. Time is Redis's own (`TIME`), so replicas' clocks do not
//! matter. Anonymous methods (the login flows) are limited per source address.
//!
//! When Redis cannot be reached the limiter falls back to the same algorithm in process (each
//! replica enforcing the full limit itself), says so in `keel_gateway_ratelimit_redis_up` and a
//! throttled warning, and returns to Redis as soon as it answers; with `fail_closed` it refuses
//! instead.
//!
//! **Leases** keep Redis off the hot path for large budgets: a replica takes a small batch of a
//! caller's budget at once (a twentieth of the smaller burst, so nothing for the free tier) and
//! spends it locally for at most [`LEASE_TTL`]. Leased calls are charged to the shared buckets
//! when taken, so replicas together never exceed the limit; an unused lease lapses (stricter,
//! never looser).
//!
//! Costs are in requests today; the same buckets take a token cost (`check` with `cost` > 1)
//! for inference.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keel_tenancy::TenantId;

/// A sustained rate and the burst allowed on top of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    /// Microseconds between two requests at the sustained rate.
    fn interval_us(self) -> f64 {
        1_000_000.0 / self.per_second.max(1e-6)
    }
    /// How far ahead of now the bucket may run (the burst, in time).
    fn tolerance_us(self) -> f64 {
        f64::from(self.burst.max(1)) * self.interval_us()
    }
}

/// A tier's limits: per tenant (all its users together) and per user (or service client).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TierLimits {
    pub tenant: Rate,
    pub user: Rate,
}

/// The tier table (requests per second). One noisy user cannot take the tenant's whole share,
/// and one tenant's share is its contract's.
pub fn tier_limits(tier: &str) -> TierLimits {
    match tier {
        "enterprise" => TierLimits {
            tenant: Rate {
                per_second: 2000.0,
                burst: 4000,
            },
            user: Rate {
                per_second: 500.0,
                burst: 1000,
            },
        },
        "pro" => TierLimits {
            tenant: Rate {
                per_second: 200.0,
                burst: 400,
            },
            user: Rate {
                per_second: 50.0,
                burst: 100,
            },
        },
        // "free", and anything unknown gets the smallest contract.
        _ => TierLimits {
            tenant: Rate {
                per_second: 20.0,
                burst: 40,
            },
            user: Rate {
                per_second: 10.0,
                burst: 20,
            },
        },
    }
}

/// Model tokens (prompt and output) per tenant and minute, by tier; the burst is a minute's
/// worth. Reserved up front from an estimate, settled to the model's count at the end.
pub fn token_rate(tier: &str) -> Rate {
    let per_minute: f64 = match tier {
        "enterprise" => 2_000_000.0,
        "pro" => 200_000.0,
        _ => 20_000.0,
    };
    Rate {
        per_second: per_minute / 60.0,
        burst: per_minute as u32,
    }
}

/// Anonymous methods (login, MFA verification, refresh, logout), per source address: enough for
/// people and apps, far too little for credential stuffing from one address. Deployments where
/// many users share an address (NAT, a proxy) raise it (`KEEL_GATEWAY_ANONYMOUS_RATE`,
/// `KEEL_GATEWAY_ANONYMOUS_BURST`).
pub const ANONYMOUS: Rate = Rate {
    per_second: 5.0,
    burst: 20,
};

/// The outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    Allowed {
        /// The tightest bucket's burst.
        limit: u32,
        /// Calls left in the tightest bucket right now.
        remaining: u32,
        /// Until the tightest bucket is full again.
        reset: Duration,
    },
    Denied {
        limit: u32,
        retry_after: Duration,
    },
}

/// Where a decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Redis,
    Local,
}

/// Redis is unreachable and the limiter is configured to fail closed.
#[derive(Debug, thiserror::Error)]
#[error("rate limiter unavailable")]
pub struct Unavailable;

/// KEYS: the buckets. ARGV[1]: cost; then per key: interval (µs), tolerance (µs).
/// Returns {1, remaining, reset_us, limit_index} or {0, retry_after_us, 0, limit_index}.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local tats = {}
local worst_retry, tight, remaining, reset = 0, 1, nil, 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i])
  local tolerance = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + cost * interval
  local allow_at = new_tat - tolerance
  if allow_at > now then
    if allow_at - now > worst_retry then worst_retry = allow_at - now; tight = i end
  else
    local left = math.floor((tolerance - (new_tat - now)) / interval)
    if remaining == nil or left < remaining then remaining = left; tight = i end
    if new_tat - now > reset then reset = new_tat - now end
  end
  tats[i] = new_tat
end
if worst_retry > 0 then return {0, math.ceil(worst_retry), 0, tight} end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', math.ceil((tats[i] - now) / 1000) + 1000)
end
return {1, remaining, math.ceil(reset), tight}
"#;

/// The same algorithm in process, for when Redis is away.
#[derive(Default)]
struct Local {
    tats: HashMap<String, f64>,
}

impl Local {
    fn check(&mut self, now_us: f64, keys: &[(String, Rate)], cost: u32) -> Decision {
        let cost = f64::from(cost);
        let mut new_tats = Vec::with_capacity(keys.len());
        let mut worst: Option<(f64, u32)> = None;
        let mut tight: Option<(f64, u32, f64)> = None;
        for (k, rate) in keys {
            let tat = self.tats.get(k).copied().unwrap_or(now_us).max(now_us);
            let new_tat = tat + cost * rate.interval_us();
            let allow_at = new_tat - rate.tolerance_us();
            if allow_at > now_us {
                if worst.is_none_or(|(w, _)| allow_at - now_us > w) {
                    worst = Some((allow_at - now_us, rate.burst));
                }
            } else {
                let left =
                    ((rate.tolerance_us() - (new_tat - now_us)) / rate.interval_us()).floor();
                let reset = new_tat - now_us;
                if tight.is_none_or(|(l, _, _)| left < l) {
                    tight = Some((left, rate.burst, reset));
                }
            }
            new_tats.push((k.clone(), new_tat));
        }
        if let Some((retry, limit)) = worst {
            return Decision::Denied {
                limit,
                retry_after: Duration::from_micros(retry.ceil() as u64),
            };
        }
        if self.tats.len() > 100_000 {
            self.tats.retain(|_, tat| *tat > now_us);
        }
        for (k, t) in new_tats {
            self.tats.insert(k, t);
        }
        let (left, limit, reset) = tight.unwrap_or((0.0, 0, 0.0));
        Decision::Allowed {
            limit,
            remaining: left.max(0.0) as u32,
            reset: Duration::from_micros(reset.max(0.0) as u64),
        }
    }
}

/// A lease is spent within this long or lapses.
pub const LEASE_TTL: Duration = Duration::from_millis(250);
/// Leases are this share of the smallest burst among the buckets (1 means no lease).
const LEASE_SHARE: u32 = 20;

/// Calls a replica may still make on a lease.
struct Lease {
    left: u32,
    until: Instant,
    limit: u32,
    reset: Duration,
}

/// KEYS: the buckets; ARGV[1]: tokens to give back; then per key: interval (µs). Moves each
/// bucket's arrival time back (never before now).
const REFUND: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local amount = tonumber(ARGV[1])
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat then
    local new_tat = math.max(now, tat - amount * tonumber(ARGV[1 + i]))
    redis.call('SET', KEYS[i], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
  end
end
return 1
"#;

/// How often the fallback warns while Redis is away.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// One Redis round trip of the gateway (pool checkout included) gets this long. A healthy
/// Redis answers in well under a millisecond; the rest is room for a process saturated by
/// load, where a tighter bound (250 ms was tried) failed healthy round trips by the hundred.
pub const REDIS_OP_TIMEOUT: Duration = Duration::from_secs(1);
/// After a round trip failed, Redis counts as away this long: calls meanwhile decide at once
/// without it (fallback, unchecked revocation, or refusal when fail-closed) rather than each
/// waiting out its own timeout.
pub const REDIS_RETRY_AFTER: Duration = Duration::from_millis(500);

pub struct Limiter {
    redis: deadpool_redis::Pool,
    prefix: String,
    fail_closed: bool,
    anonymous: Rate,
    script: redis::Script,
    refund_script: redis::Script,
    local: Mutex<Local>,
    leases: Mutex<HashMap<String, Lease>>,
    last_warning: Mutex<Option<Instant>>,
    /// Set when a round trip failed: until then Redis is not tried ([`REDIS_RETRY_AFTER`]).
    away_until: Mutex<Option<Instant>>,
}

impl Limiter {
    pub fn new(
        redis: deadpool_redis::Pool,
        prefix: String,
        fail_closed: bool,
        anonymous: Rate,
    ) -> Self {
        metrics::gauge!("keel_gateway_ratelimit_redis_up").set(1.0);
        Limiter {
            redis,
            prefix,
            fail_closed,
            anonymous,
            script: redis::Script::new(GCRA),
            refund_script: redis::Script::new(REFUND),
            local: Mutex::default(),
            leases: Mutex::default(),
            last_warning: Mutex::new(None),
            away_until: Mutex::new(None),
        }
    }

    /// One Redis round trip (the limiter's, or the gate's revocation check), bounded by
    /// [`REDIS_OP_TIMEOUT`]; while Redis counts as away, an error at once. Without the bound a
    /// stalled Redis (SIGSTOP: connections open, nothing answers) held every call until it came
    /// back: the pool has no checkout timeout and the calls queued for its few connections
    /// (found by `tests/tests/stalls.rs`). A script that timed out may still run when Redis
    /// resumes: the call is charged twice, stricter, never looser.
    pub(crate) async fn round_trip<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        if let Ok(away) = self.away_until.lock()
            && away.is_some_and(|until| Instant::now() < until)
        {
            return Err("redis is away (a round trip failed moments ago)".into());
        }
        let r = tokio::time::timeout(REDIS_OP_TIMEOUT, op)
            .await
            .unwrap_or_else(|_| Err(format!("no answer from redis within {REDIS_OP_TIMEOUT:?}")));
        if let Ok(mut away) = self.away_until.lock() {
            *away = r.is_err().then(|| Instant::now() + REDIS_RETRY_AFTER);
        }
        r
    }

    /// The bucket keys of a tenant's caller: the tenant's and the user's.
    pub fn caller_keys(&self, tenant: &TenantId, subject: &str, tier: &str) -> Vec<(String, Rate)> {
        let limits = tier_limits(tier);
        vec![
            (
                tenant.redis_key(&format!("{}:rl:t", self.prefix), "all"),
                limits.tenant,
            ),
            (
                tenant.redis_key(&format!("{}:rl:u", self.prefix), subject),
                limits.user,
            ),
        ]
    }

    /// The token bucket of a tenant's model calls.
    pub fn token_keys(&self, tenant: &TenantId, tier: &str) -> Vec<(String, Rate)> {
        vec![(
            tenant.redis_key(&format!("{}:rl:tok", self.prefix), "all"),
            token_rate(tier),
        )]
    }

    /// Gives `amount` back to the buckets (a reservation larger than what was used). Best
    /// effort: a refund lost to a Redis outage only makes the limit stricter for a minute.
    pub async fn refund(&self, keys: &[(String, Rate)], amount: u32) {
        if amount == 0 {
            return;
        }
        let redis = self.round_trip(async {
            let mut conn = self.redis.get().await.map_err(|e| e.to_string())?;
            let mut inv = self.refund_script.prepare_invoke();
            inv.arg(amount);
            for (k, rate) in keys {
                inv.key(k).arg(rate.interval_us().round() as i64);
            }
            inv.invoke_async::<i64>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        });
        if redis.await.is_err()
            && let Ok(mut local) = self.local.lock()
        {
            let now_us = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as f64)
                .unwrap_or(0.0);
            for (k, rate) in keys {
                if let Some(tat) = local.tats.get_mut(k) {
                    *tat = (*tat - f64::from(amount) * rate.interval_us()).max(now_us);
                }
            }
        }
    }

    /// The bucket key of an anonymous call from `source`.
    pub fn source_keys(&self, source: Option<std::net::IpAddr>) -> Vec<(String, Rate)> {
        let who = source.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        vec![(format!("{}:rl:src:{who}", self.prefix), self.anonymous)]
    }

    /// Charges `cost` to every bucket, or to none when any of them is out.
    pub async fn check(
        &self,
        keys: &[(String, Rate)],
        cost: u32,
    ) -> Result<(Decision, Source), Unavailable> {
        let lease_size = keys
            .iter()
            .map(|(_, r)| r.burst / LEASE_SHARE)
            .min()
            .unwrap_or(0);
        if cost == 1 && lease_size > 1 {
            let lease_key = keys
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join("|");
            match self.spend_lease(&lease_key) {
                Ok(d) => {
                    metrics::counter!("keel_gateway_ratelimit_leased_total").increment(1);
                    return Ok((d, Source::Redis));
                }
                // A lease that lapsed unused gives its rest back, so slow callers are charged
                // for what they used, not for whole leases.
                Err(unused) => self.refund(keys, unused).await,
            }
            // Take a new lease (this call included); near the limit, fall back to one call.
            match self.check_redis(keys, lease_size).await {
                Ok(Decision::Allowed {
                    limit,
                    remaining,
                    reset,
                }) => {
                    metrics::gauge!("keel_gateway_ratelimit_redis_up").set(1.0);
                    if let Ok(mut leases) = self.leases.lock() {
                        if leases.len() > 100_000 {
                            leases.retain(|_, l| l.until > Instant::now());
                        }
                        leases.insert(
                            lease_key,
                            Lease {
                                left: lease_size - 1,
                                until: Instant::now() + LEASE_TTL,
                                limit,
                                reset,
                            },
                        );
                    }
                    return Ok((
                        Decision::Allowed {
                            limit,
                            remaining: remaining + lease_size - 1,
                            reset,
                        },
                        Source::Redis,
                    ));
                }
                Ok(Decision::Denied { .. }) => {}
                Err(_) => {}
            }
        }
        match self.check_redis(keys, cost).await {
            Ok(d) => {
                metrics::gauge!("keel_gateway_ratelimit_redis_up").set(1.0);
                Ok((d, Source::Redis))
            }
            Err(e) => {
                metrics::gauge!("keel_gateway_ratelimit_redis_up").set(0.0);
                metrics::counter!("keel_gateway_ratelimit_fallback_total").increment(1);
                self.warn(&e);
                if self.fail_closed {
                    return Err(Unavailable);
                }
                let now_us = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_micros() as f64)
                    .unwrap_or(0.0);
                let d = self
                    .local
                    .lock()
                    .map_err(|_| Unavailable)?
                    .check(now_us, keys, cost);
                Ok((d, Source::Local))
            }
        }
    }

    /// One call on a live lease; otherwise how many calls of a lapsed lease went unused.
    fn spend_lease(&self, key: &str) -> Result<Decision, u32> {
        let Ok(mut leases) = self.leases.lock() else {
            return Err(0);
        };
        let Some(l) = leases.get_mut(key) else {
            return Err(0);
        };
        if l.left == 0 || l.until <= Instant::now() {
            let unused = l.left;
            leases.remove(key);
            return Err(unused);
        }
        l.left -= 1;
        Ok(Decision::Allowed {
            limit: l.limit,
            remaining: l.left,
            reset: l.reset,
        })
    }

    async fn check_redis(&self, keys: &[(String, Rate)], cost: u32) -> Result<Decision, String> {
        let (ok, a, b, tight): (i64, i64, i64, usize) = self
            .round_trip(async {
                let mut conn = self.redis.get().await.map_err(|e| e.to_string())?;
                let mut inv = self.script.prepare_invoke();
                inv.arg(cost);
                for (k, rate) in keys {
                    inv.key(k)
                        .arg(rate.interval_us().round() as i64)
                        .arg(rate.tolerance_us().round() as i64);
                }
                inv.invoke_async(&mut conn).await.map_err(|e| e.to_string())
            })
            .await?;
        let limit = keys
            .get(tight.saturating_sub(1))
            .map_or(0, |(_, r)| r.burst);
        Ok(if ok == 1 {
            Decision::Allowed {
                limit,
                remaining: a.max(0) as u32,
                reset: Duration::from_micros(b.max(0) as u64),
            }
        } else {
            Decision::Denied {
                limit,
                retry_after: Duration::from_micros(a.max(0) as u64),
            }
        })
    }

    fn warn(&self, e: &str) {
        if let Ok(mut last) = self.last_warning.lock()
            && last.is_none_or(|at| at.elapsed() >= WARN_EVERY)
        {
            *last = Some(Instant::now());
            if self.fail_closed {
                tracing::error!(error = %e, "rate limiter: Redis unreachable; refusing calls (fail-closed)");
            } else {
                tracing::warn!(error = %e, "rate limiter: Redis unreachable; limiting per replica (fail-open)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_gcra_admits_the_burst_then_the_rate() {
        let mut l = Local::default();
        let rate = Rate {
            per_second: 10.0,
            burst: 5,
        };
        let keys = vec![("k".to_owned(), rate)];
        let t0 = 1e15;
        let admitted = (0..20)
            .filter(|_| matches!(l.check(t0, &keys, 1), Decision::Allowed { .. }))
            .count();
        assert_eq!(admitted, 5, "the burst at once");
        // 100 ms later, one more (10/s).
        assert!(matches!(
            l.check(t0 + 100_000.0, &keys, 1),
            Decision::Allowed { .. }
        ));
        match l.check(t0 + 100_000.0, &keys, 1) {
            Decision::Denied { retry_after, .. } => {
                assert!(retry_after <= Duration::from_millis(100), "{retry_after:?}")
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn a_refusal_by_one_bucket_charges_none() {
        let mut l = Local::default();
        let wide = Rate {
            per_second: 100.0,
            burst: 100,
        };
        let narrow = Rate {
            per_second: 1.0,
            burst: 1,
        };
        let keys = vec![("t".to_owned(), wide), ("u".to_owned(), narrow)];
        assert!(matches!(l.check(1e15, &keys, 1), Decision::Allowed { .. }));
        assert!(matches!(l.check(1e15, &keys, 1), Decision::Denied { .. }));
        // The tenant bucket was charged once, not twice: 99 left for another user.
        let other = vec![("t".to_owned(), wide), ("u2".to_owned(), wide)];
        match l.check(1e15, &other, 1) {
            Decision::Allowed { remaining, .. } => assert_eq!(remaining, 98),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn tiers_are_ordered() {
        let f = tier_limits("free");
        let p = tier_limits("pro");
        let e = tier_limits("enterprise");
        assert!(f.tenant.per_second < p.tenant.per_second);
        assert!(p.tenant.per_second < e.tenant.per_second);
        assert_eq!(tier_limits("unknown"), f);
        for t in [f, p, e] {
            assert!(t.user.per_second <= t.tenant.per_second);
        }
    }
}
