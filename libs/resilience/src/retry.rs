//! Retries: only for idempotent calls, only for transient failures, with capped exponential
//! backoff and full jitter, inside a budget.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::{Code, Status};

use crate::Breaker;

/// Codes worth another try: the downstream did not do the work (or could not be reached).
/// DEADLINE_EXCEEDED is not among them: the caller's time is spent.
pub fn is_transient(code: Code) -> bool {
    matches!(code, Code::Unavailable)
}

/// Answers that count against a downstream's health: the codes of an unhealthy server, unless
/// the downstream attributes them to a model behind it (it answered; the model failed).
fn is_failure(st: &Status) -> bool {
    matches!(
        st.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Internal | Code::Unknown
    ) && !keel_errors::is_model_failure(st)
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(20),
            cap: Duration::from_millis(200),
        }
    }
}

impl RetryPolicy {
    /// Full jitter: uniform in [0, min(cap, base · 2^retry)).
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX))
            .min(self.cap);
        ceiling.mul_f64(fastrand::f64())
    }
}

/// Retries may add at most `ratio` of the calls (plus `floor` per second), so retries cannot
/// multiply the load on a downstream that is already failing.
pub struct RetryBudget {
    ratio: f64,
    floor_per_sec: f64,
    inner: Mutex<(f64, Instant)>,
}

impl RetryBudget {
    pub fn new(ratio: f64, floor_per_sec: f64) -> Self {
        RetryBudget {
            ratio,
            floor_per_sec,
            inner: Mutex::new((floor_per_sec, Instant::now())),
        }
    }

    fn refill(&self, tokens: &mut f64, last: &mut Instant) {
        let now = Instant::now();
        *tokens = (*tokens + self.floor_per_sec * now.duration_since(*last).as_secs_f64())
            .min(self.cap());
        *last = now;
    }

    fn cap(&self) -> f64 {
        (self.floor_per_sec * 10.0).max(10.0)
    }

    /// A call was made: it earns a share of a retry.
    pub fn deposit(&self) {
        if let Ok(mut g) = self.inner.lock() {
            let (tokens, last) = &mut *g;
            self.refill(tokens, last);
            *tokens = (*tokens + self.ratio).min(self.cap());
        }
    }

    /// May one retry happen?
    pub fn withdraw(&self) -> bool {
        let Ok(mut g) = self.inner.lock() else {
            return false;
        };
        let (tokens, last) = &mut *g;
        self.refill(tokens, last);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Makes one call through the breaker, retrying it (when `idempotent`) on transient failures.
/// A breaker that is open answers at once with `open()`.
pub async fn call<T, F, Fut>(
    breaker: &Breaker,
    budget: &RetryBudget,
    policy: &RetryPolicy,
    idempotent: bool,
    open: impl Fn() -> Status,
    mut attempt: F,
) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    budget.deposit();
    let mut tries = 0u32;
    loop {
        tries += 1;
        let Some(permit) = breaker.try_acquire(Instant::now()) else {
            metrics::counter!("keel_breaker_rejected_total").increment(1);
            tracing::info!("refused by an open circuit breaker");
            return Err(open());
        };
        let started = Instant::now();
        let result = attempt().await;
        let failed = matches!(&result, Err(st) if is_failure(st));
        breaker.record(permit, Instant::now(), failed, started.elapsed());
        match result {
            Err(st)
                if idempotent
                    // A connection that broke mid-call is UNAVAILABLE too, whatever code tonic
                    // gave it (see `keel_errors::is_transport_failure`).
                    && (is_transient(st.code()) || keel_errors::is_transport_failure(&st))
                    && tries < policy.max_attempts
                    && budget.withdraw() =>
            {
                metrics::counter!("keel_retries_total").increment(1);
                let delay = policy.backoff(tries - 1);
                // A span event on the caller's span: the trace shows each retry and why.
                tracing::info!(
                    retry.attempt = tries,
                    rpc.grpc.status_code = st.code() as i32,
                    retry.delay_ms = delay.as_millis() as u64,
                    "retrying"
                );
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::BreakerConfig;

    fn open() -> Status {
        Status::unavailable("open")
    }

    fn quick() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(2),
        }
    }

    #[tokio::test]
    async fn a_broken_connection_is_retried_like_unavailable() {
        let breaker = Breaker::new("r", BreakerConfig::default());
        let budget = RetryBudget::new(0.2, 100.0);
        let calls = AtomicU32::new(0);
        let r: Result<(), Status> = call(&breaker, &budget, &quick(), true, open, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Status::from_error(Box::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "connection reset",
            ))))
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn idempotent_calls_are_retried_on_transient_failures_others_never() {
        let breaker = Breaker::new("r", BreakerConfig::default());
        let budget = RetryBudget::new(0.2, 100.0);
        let calls = AtomicU32::new(0);
        let r: Result<(), Status> = call(&breaker, &budget, &quick(), true, open, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Status::unavailable("down"))
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        calls.store(0, Ordering::SeqCst);
        let _ = call(&breaker, &budget, &quick(), false, open, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Status::unavailable("down"))
        })
        .await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "not idempotent: never retried"
        );
        calls.store(0, Ordering::SeqCst);
        let _ = call(&breaker, &budget, &quick(), true, open, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Status::invalid_argument("bad"))
        })
        .await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "not transient: never retried"
        );
    }

    #[tokio::test]
    async fn the_budget_caps_retries() {
        let breaker = Breaker::new(
            "b",
            BreakerConfig {
                min_calls: u32::MAX,
                ..BreakerConfig::default()
            },
        );
        let budget = RetryBudget::new(0.1, 0.0);
        let calls = AtomicU32::new(0);
        for _ in 0..100 {
            let _ = call(&breaker, &budget, &quick(), true, open, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(Status::unavailable("down"))
            })
            .await;
        }
        let n = calls.load(Ordering::SeqCst);
        assert!(n <= 100 + 12, "at most ~10% retries, got {} calls", n);
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let p = RetryPolicy::default();
        for retry in 0..40 {
            assert!(p.backoff(retry) <= p.cap);
        }
    }
}
