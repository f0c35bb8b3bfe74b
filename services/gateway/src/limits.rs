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
//! when taken, so replicas together never exceed the limit. A lease in use is **topped up in the
//! background** (charging exactly the calls spent from it) once half of it or half of its time
//! is gone, so a busy caller never waits on Redis; a lapsed lease is renewed by charging only
//! what was spent of it, so a slow caller pays for the calls it made, not for whole leases. A
//! replica never holds more than one lease's worth of a caller's budget unspent (stricter,
//! never looser); near the limit the top-up is refused and calls go to Redis one by one.
//!
//! Costs are in requests today; the same buckets take a token cost (`check` with `cost` > 1)
//! for inference.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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
#[derive(Debug, Clone, PartialEq)]
struct Lease {
    /// The lease's full size: at most this many calls are held unspent.
    size: u32,
    left: u32,
    until: Instant,
    limit: u32,
    reset: Duration,
    /// A top-up is on its way (one at a time per lease).
    topping_up: bool,
    /// Redis refused a top-up (the caller is near its limit): the lease runs out, and then
    /// calls are checked one by one.
    exhausted: bool,
}

/// What spending one call of a lease found.
#[derive(Debug, PartialEq)]
enum Spend {
    /// Admitted on the lease; `top_up` calls should be charged to refill it.
    Spent { decision: Decision, top_up: u32 },
    /// No usable lease (it lapsed or ran out).
    Renew,
}

impl Lease {
    /// Spends one call at `now`.
    fn spend(&mut self, now: Instant) -> Spend {
        if self.until <= now || self.left == 0 {
            return Spend::Renew;
        }
        self.left -= 1;
        let spent = self.size - self.left;
        let half_gone = self.left <= self.size / 2
            || self.until.saturating_duration_since(now) <= LEASE_TTL / 2;
        let top_up = if half_gone && !self.topping_up && !self.exhausted {
            self.topping_up = true;
            spent
        } else {
            0
        };
        Spend::Spent {
            decision: Decision::Allowed {
                limit: self.limit,
                remaining: self.left,
                reset: self.reset,
            },
            top_up,
        }
    }

    /// A top-up of `charged` calls came back at `now`.
    fn topped_up(&mut self, charged: u32, outcome: TopUp, now: Instant) {
        self.topping_up = false;
        match outcome {
            TopUp::Granted { limit, reset } => {
                self.left = (self.left + charged).min(self.size);
                self.until = now + LEASE_TTL;
                self.limit = limit;
                self.reset = reset;
            }
            TopUp::Refused => self.exhausted = true,
            // Redis away: the lease runs out, then calls take the fallback (or retry a top-up).
            TopUp::Failed => {}
        }
    }

    /// What renewing this lease at `now` charges: the calls spent of it when it lapsed a
    /// moment ago (its unused calls were charged and are reused), a whole lease when it lapsed
    /// longer ago (the buckets have refilled meanwhile; reusing old charges would be looser).
    fn renewal_cost(&self, now: Instant) -> u32 {
        if now < self.until + LEASE_TTL {
            self.size - self.left
        } else {
            self.size
        }
    }
}

/// How a top-up of a lease went.
#[derive(Debug, Clone, Copy, PartialEq)]
enum TopUp {
    Granted { limit: u32, reset: Duration },
    Refused,
    Failed,
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
    /// Owns the background lease top-ups.
    tasks: keel_runtime::Tasks,
}

impl Limiter {
    pub fn new(
        redis: deadpool_redis::Pool,
        prefix: String,
        fail_closed: bool,
        anonymous: Rate,
        tasks: keel_runtime::Tasks,
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
            tasks,
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
        self: &Arc<Self>,
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
            let now = Instant::now();
            let spent = match self.leases.lock() {
                Ok(mut leases) => leases.get_mut(&lease_key).map(|l| match l.spend(now) {
                    Spend::Spent { decision, top_up } => Ok((decision, top_up)),
                    Spend::Renew => Err(l.renewal_cost(now)),
                }),
                Err(_) => return Err(Unavailable),
            };
            let renewal = match spent {
                Some(Ok((decision, top_up))) => {
                    metrics::counter!("keel_gateway_ratelimit_leased_total").increment(1);
                    if top_up > 0 {
                        self.top_up(lease_key, keys.to_vec(), top_up);
                    }
                    return Ok((decision, Source::Redis));
                }
                Some(Err(cost)) => cost,
                None => lease_size,
            };
            // Renew the lease (this call included); near the limit, fall back to one call.
            if let Ok(Decision::Allowed {
                limit,
                remaining,
                reset,
            }) = self.check_redis(keys, renewal.max(1)).await
            {
                metrics::gauge!("keel_gateway_ratelimit_redis_up").set(1.0);
                if let Ok(mut leases) = self.leases.lock() {
                    if leases.len() > 100_000 {
                        let now = Instant::now();
                        leases.retain(|_, l| l.until + LEASE_TTL > now);
                    }
                    leases.insert(
                        lease_key,
                        Lease {
                            size: lease_size,
                            left: lease_size - 1,
                            until: Instant::now() + LEASE_TTL,
                            limit,
                            reset,
                            topping_up: false,
                            exhausted: false,
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

    /// Charges `charged` calls spent of the lease under `lease_key` and gives them back to it,
    /// in the background: the call that noticed the lease half gone does not wait.
    fn top_up(self: &Arc<Self>, lease_key: String, keys: Vec<(String, Rate)>, charged: u32) {
        let this = self.clone();
        self.tasks.spawn("lease-top-up", async move {
            let outcome = match this.check_redis(&keys, charged).await {
                Ok(Decision::Allowed { limit, reset, .. }) => TopUp::Granted { limit, reset },
                Ok(Decision::Denied { .. }) => TopUp::Refused,
                Err(_) => TopUp::Failed,
            };
            if let Ok(mut leases) = this.leases.lock()
                && let Some(l) = leases.get_mut(&lease_key)
            {
                l.topped_up(charged, outcome, Instant::now());
            }
        });
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

    fn lease(size: u32, now: Instant) -> Lease {
        Lease {
            size,
            left: size - 1,
            until: now + LEASE_TTL,
            limit: 1000,
            reset: Duration::ZERO,
            topping_up: false,
            exhausted: false,
        }
    }

    #[test]
    fn a_lease_asks_for_one_top_up_of_what_was_spent_when_half_gone() {
        let t0 = Instant::now();
        let mut l = lease(10, t0);
        // 9 left: spend down to 5 (half) before a top-up is asked for.
        for _ in 0..3 {
            assert!(matches!(l.spend(t0), Spend::Spent { top_up: 0, .. }));
        }
        assert!(matches!(l.spend(t0), Spend::Spent { top_up: 5, .. }));
        // One at a time.
        assert!(matches!(l.spend(t0), Spend::Spent { top_up: 0, .. }));
        l.topped_up(
            5,
            TopUp::Granted {
                limit: 1000,
                reset: Duration::ZERO,
            },
            t0,
        );
        assert_eq!(l.left, 9, "4 left + 5 charged");
        // Refused: the lease runs out and is not topped up again.
        for _ in 0..4 {
            l.spend(t0);
        }
        let Spend::Spent { top_up, .. } = l.spend(t0) else {
            panic!()
        };
        l.topped_up(top_up, TopUp::Refused, t0);
        while let Spend::Spent { top_up, .. } = l.spend(t0) {
            assert_eq!(top_up, 0, "no top-up after a refusal");
        }
        assert_eq!(l.left, 0);
    }

    #[test]
    fn a_slow_callers_lease_is_topped_up_by_time_and_renewed_at_cost() {
        let t0 = Instant::now();
        let mut l = lease(50, t0);
        // Past half its time, one call asks for the 2 calls spent.
        assert!(matches!(
            l.spend(t0 + LEASE_TTL / 2),
            Spend::Spent { top_up: 2, .. }
        ));
        l.topped_up(2, TopUp::Failed, t0 + LEASE_TTL / 2);
        // Lapsed: renewing charges what was spent of it, or all of it when long gone.
        assert_eq!(l.spend(t0 + LEASE_TTL), Spend::Renew);
        assert_eq!(l.renewal_cost(t0 + LEASE_TTL), 2);
        assert_eq!(l.renewal_cost(t0 + 2 * LEASE_TTL), 50);
    }

    proptest::proptest! {
        /// Whatever the calls, clocks and Redis answers: a lease never holds more than its size
        /// unspent, never admits a call it has not been charged for, and charges exactly the
        /// calls spent (granted top-ups refill what they charged, no more).
        #[test]
        fn a_lease_never_admits_uncharged_calls(
            size in 2u32..100,
            steps in proptest::collection::vec((0u8..4, 0u64..200), 1..400),
        ) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut l = lease(size, t0);
            let mut charged = u64::from(size);
            let mut admitted = 1u64;
            let mut pending: Option<u32> = None;
            for (op, dt) in steps {
                now += Duration::from_millis(dt % 60);
                match (op, pending) {
                    (0 | 1, _) => match l.spend(now) {
                        Spend::Spent { top_up, .. } => {
                            admitted += 1;
                            if top_up > 0 {
                                proptest::prop_assert!(pending.is_none());
                                pending = Some(top_up);
                            }
                        }
                        Spend::Renew => {
                            // The caller renews: a fresh lease (this call included), charged
                            // at the renewal cost.
                            charged += u64::from(l.renewal_cost(now));
                            l = lease(size, now);
                            admitted += 1;
                            pending = None;
                        }
                    },
                    (2, Some(c)) => {
                        charged += u64::from(c);
                        l.topped_up(c, TopUp::Granted { limit: 1, reset: Duration::ZERO }, now);
                        pending = None;
                    }
                    (3, Some(c)) => {
                        l.topped_up(c, if dt % 2 == 0 { TopUp::Refused } else { TopUp::Failed }, now);
                        pending = None;
                    }
                    _ => {}
                }
                proptest::prop_assert!(l.left <= l.size);
                // Admitted plus still spendable never exceeds what was charged.
                proptest::prop_assert!(admitted + u64::from(l.left) <= charged, "{admitted} + {} > {charged}", l.left);
            }
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
