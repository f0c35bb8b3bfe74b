//! The circuit breaker state machine.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// The sliding window the rates are computed over.
    pub window: Duration,
    /// Fewer calls than this in the window never open the breaker (no verdict on 2 calls).
    pub min_calls: u32,
    /// Open when at least this share of the window's calls failed...
    pub failure_rate: f64,
    /// ...or when at least `slow_rate` of them took longer than `slow_call`.
    pub slow_call: Duration,
    pub slow_rate: f64,
    /// How long an open breaker refuses before letting probes through.
    pub open_for: Duration,
    /// Probes in half-open state; all must succeed to close.
    pub probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: Duration::from_secs(10),
            min_calls: 20,
            failure_rate: 0.5,
            // CRUD calls answer in milliseconds; a second is already an outage to a client.
            slow_call: Duration::from_secs(1),
            slow_rate: 0.8,
            open_for: Duration::from_secs(5),
            probes: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    fn gauge(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::HalfOpen => 1.0,
            State::Open => 2.0,
        }
    }
}

/// Ten buckets over the window.
const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    start: Option<Instant>,
    calls: u32,
    failures: u32,
    slow: u32,
}

#[derive(Debug)]
struct Inner {
    state: State,
    opened_at: Option<Instant>,
    buckets: [Bucket; BUCKETS],
    probes_out: u32,
    probe_successes: u32,
}

/// Permission to make one call; hand it back with its outcome.
#[derive(Debug)]
#[must_use = "record the outcome"]
pub struct Permit {
    probe: bool,
}

pub struct Breaker {
    name: String,
    cfg: BreakerConfig,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub fn new(name: impl Into<String>, cfg: BreakerConfig) -> Self {
        let name = name.into();
        metrics::gauge!("keel_breaker_state", "downstream" => name.clone()).set(0.0);
        Breaker {
            name,
            cfg,
            inner: Mutex::new(Inner {
                state: State::Closed,
                opened_at: None,
                buckets: [Bucket::default(); BUCKETS],
                probes_out: 0,
                probe_successes: 0,
            }),
        }
    }

    pub fn state(&self) -> State {
        self.inner.lock().map(|i| i.state).unwrap_or(State::Open)
    }

    fn transition(&self, inner: &mut Inner, to: State, now: Instant) {
        if inner.state == to {
            return;
        }
        tracing::warn!(downstream = %self.name, from = ?inner.state, to = ?to, "circuit breaker");
        metrics::gauge!("keel_breaker_state", "downstream" => self.name.clone()).set(to.gauge());
        metrics::counter!("keel_breaker_transitions_total", "downstream" => self.name.clone(), "to" => format!("{to:?}").to_lowercase()).increment(1);
        inner.state = to;
        match to {
            State::Open => inner.opened_at = Some(now),
            State::HalfOpen => {
                inner.probes_out = 0;
                inner.probe_successes = 0;
            }
            State::Closed => {
                inner.buckets = [Bucket::default(); BUCKETS];
                inner.opened_at = None;
            }
        }
    }

    /// May a call go through now? `None`: the breaker is open (fail fast).
    pub fn try_acquire(&self, now: Instant) -> Option<Permit> {
        let mut inner = self.inner.lock().ok()?;
        match inner.state {
            State::Closed => Some(Permit { probe: false }),
            State::Open => {
                let since = inner
                    .opened_at
                    .map_or(Duration::MAX, |t| now.saturating_duration_since(t));
                if since < self.cfg.open_for {
                    return None;
                }
                self.transition(&mut inner, State::HalfOpen, now);
                inner.probes_out = 1;
                Some(Permit { probe: true })
            }
            State::HalfOpen => {
                if inner.probes_out >= self.cfg.probes {
                    return None;
                }
                inner.probes_out += 1;
                Some(Permit { probe: true })
            }
        }
    }

    /// Records how a permitted call went.
    pub fn record(&self, permit: Permit, now: Instant, failed: bool, elapsed: Duration) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let slow = elapsed >= self.cfg.slow_call;
        if permit.probe {
            if inner.state != State::HalfOpen {
                return;
            }
            if failed || slow {
                self.transition(&mut inner, State::Open, now);
            } else {
                inner.probe_successes += 1;
                if inner.probe_successes >= self.cfg.probes {
                    self.transition(&mut inner, State::Closed, now);
                }
            }
            return;
        }
        if inner.state != State::Closed {
            return;
        }
        let width = self.cfg.window / BUCKETS as u32;
        let slot = {
            // Reuse the newest bucket while it is current, else recycle the oldest.
            let newest = (0..BUCKETS)
                .filter_map(|i| inner.buckets[i].start.map(|s| (i, s)))
                .max_by_key(|(_, s)| *s);
            match newest {
                Some((i, s)) if now.saturating_duration_since(s) < width => i,
                _ => {
                    let oldest = (0..BUCKETS)
                        .min_by_key(|i| inner.buckets[*i].start)
                        .unwrap_or(0);
                    inner.buckets[oldest] = Bucket {
                        start: Some(now),
                        ..Bucket::default()
                    };
                    oldest
                }
            }
        };
        let b = &mut inner.buckets[slot];
        b.calls += 1;
        b.failures += u32::from(failed);
        b.slow += u32::from(slow);
        let (mut calls, mut failures, mut slows) = (0u32, 0u32, 0u32);
        for b in &inner.buckets {
            if let Some(s) = b.start
                && now.saturating_duration_since(s) < self.cfg.window
            {
                calls += b.calls;
                failures += b.failures;
                slows += b.slow;
            }
        }
        if calls >= self.cfg.min_calls
            && (f64::from(failures) >= self.cfg.failure_rate * f64::from(calls)
                || f64::from(slows) >= self.cfg.slow_rate * f64::from(calls))
        {
            self.transition(&mut inner, State::Open, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            window: Duration::from_secs(10),
            min_calls: 4,
            failure_rate: 0.5,
            slow_call: Duration::from_millis(100),
            slow_rate: 0.8,
            open_for: Duration::from_secs(5),
            probes: 2,
        }
    }

    const FAST: Duration = Duration::from_millis(1);

    #[test]
    fn failures_open_it_probes_close_it() {
        let b = Breaker::new("t", cfg());
        let t0 = Instant::now();
        for i in 0..4 {
            let p = b.try_acquire(t0).unwrap();
            b.record(p, t0, i % 2 == 0, FAST);
        }
        assert_eq!(b.state(), State::Open, "2 of 4 failed");
        assert!(
            b.try_acquire(t0 + Duration::from_secs(1)).is_none(),
            "fails fast"
        );
        let later = t0 + Duration::from_secs(6);
        let p1 = b.try_acquire(later).unwrap();
        let p2 = b.try_acquire(later).unwrap();
        assert!(b.try_acquire(later).is_none(), "only the probes");
        assert_eq!(b.state(), State::HalfOpen);
        b.record(p1, later, false, FAST);
        b.record(p2, later, false, FAST);
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn a_failed_probe_reopens_and_slow_calls_count() {
        let b = Breaker::new("t", cfg());
        let t0 = Instant::now();
        for _ in 0..4 {
            let p = b.try_acquire(t0).unwrap();
            b.record(p, t0, false, Duration::from_millis(500));
        }
        assert_eq!(b.state(), State::Open, "all slow");
        let later = t0 + Duration::from_secs(6);
        let p = b.try_acquire(later).unwrap();
        b.record(p, later, true, FAST);
        assert_eq!(b.state(), State::Open);
        assert!(b.try_acquire(later + Duration::from_secs(1)).is_none());
    }

    #[test]
    fn old_failures_leave_the_window() {
        let b = Breaker::new("t", cfg());
        let t0 = Instant::now();
        for _ in 0..3 {
            let p = b.try_acquire(t0).unwrap();
            b.record(p, t0, true, FAST);
        }
        let later = t0 + Duration::from_secs(11);
        for _ in 0..4 {
            let p = b.try_acquire(later).unwrap();
            b.record(p, later, false, FAST);
        }
        assert_eq!(b.state(), State::Closed);
    }

    proptest! {
        /// Whatever the sequence of calls and outcomes: ordinary calls pass only while closed;
        /// an open breaker lets nothing through before `open_for`; half-open never has more than
        /// `probes` calls out.
        #[test]
        fn the_state_machine_keeps_its_promises(events in proptest::collection::vec((0u64..3000, any::<bool>(), any::<bool>()), 1..200)) {
            let c = cfg();
            let b = Breaker::new("p", c.clone());
            let mut now = Instant::now();
            let mut out: Vec<Permit> = Vec::new();
            for (dt, fail, finish) in events {
                now += Duration::from_millis(dt);
                let (before, opened_at) = {
                    let i = b.inner.lock().unwrap();
                    (i.state, i.opened_at)
                };
                let permit = b.try_acquire(now);
                let after = b.state();
                match &permit {
                    Some(p) if !p.probe => prop_assert_eq!(after, State::Closed),
                    Some(_) => prop_assert_eq!(after, State::HalfOpen),
                    None => prop_assert_ne!(after, State::Closed),
                }
                if before == State::Open
                    && let Some(at) = opened_at
                    && now.duration_since(at) < c.open_for
                {
                    prop_assert!(permit.is_none(), "open breaker let a call through early");
                }
                if after == State::HalfOpen {
                    prop_assert!(b.inner.lock().unwrap().probes_out <= c.probes);
                }
                if let Some(p) = permit {
                    out.push(p);
                }
                if finish && let Some(p) = out.pop() {
                    b.record(p, now, fail, FAST);
                }
            }
        }
    }
}
