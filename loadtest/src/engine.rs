//! The open-model engine: arrivals on a fixed schedule that does not wait for responses, and
//! latency measured from each request's *intended* send time, so a server that queues cannot
//! hide it (no coordinated omission). Results go to a [`Recorder`]: an HdrHistogram per
//! operation plus a per-second series for the report's charts.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

/// Latencies are recorded in microseconds, up to this (longer ones are clamped).
const MAX_LATENCY_US: u64 = 120_000_000;
/// Significant figures of the histograms (3: 0.1 % resolution).
const SIGFIGS: u8 = 3;
/// The per-second histograms only feed the charts: two figures are plenty.
const SERIES_SIGFIGS: u8 = 2;

/// What one request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Ok,
    /// Refused by design (rate limit, load shedding): counted apart from errors.
    Refused,
    Error,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub class: Class,
    /// The gRPC code's name (`OK`, `RESOURCE_EXHAUSTED`, ...) or a generator-side reason.
    pub code: String,
    /// When the first streamed item arrived, for streaming calls.
    pub first: Option<Instant>,
}

impl Outcome {
    pub fn ok() -> Outcome {
        Outcome {
            class: Class::Ok,
            code: "OK".into(),
            first: None,
        }
    }

    pub fn streamed(first: Instant) -> Outcome {
        Outcome {
            first: Some(first),
            ..Outcome::ok()
        }
    }

    /// `RESOURCE_EXHAUSTED` (a limit) and `UNAVAILABLE` with `retry-after` (the gateway shedding
    /// load) are refusals; everything else is an error.
    pub fn from_status(st: &tonic::Status) -> Outcome {
        let class = match st.code() {
            tonic::Code::ResourceExhausted => Class::Refused,
            tonic::Code::Unavailable if st.metadata().get("retry-after").is_some() => {
                Class::Refused
            }
            _ => Class::Error,
        };
        Outcome {
            class,
            code: code_name(st.code()).into(),
            first: None,
        }
    }

    pub fn error(code: &str) -> Outcome {
        Outcome {
            class: Class::Error,
            code: code.into(),
            first: None,
        }
    }
}

pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

// The bounds are constants within the library's limits (low ≥ 1, high ≥ 2·low, sigfigs ≤ 5).
#[allow(clippy::expect_used)]
fn histogram(sigfigs: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, sigfigs).expect("valid histogram bounds")
}

/// One second of one operation, for the charts.
#[derive(Clone)]
pub struct Second {
    pub ok: u64,
    pub refused: u64,
    pub errors: u64,
    /// Latency of successful calls in this second (µs).
    pub latency: Histogram<u64>,
}

impl Second {
    fn new() -> Second {
        Second {
            ok: 0,
            refused: 0,
            errors: 0,
            latency: histogram(SERIES_SIGFIGS),
        }
    }
}

/// Everything recorded for one operation.
#[derive(Clone)]
pub struct OpStats {
    /// Successful calls, from intended send to completion (µs).
    pub latency: Histogram<u64>,
    /// Refused calls, the same way: refusals must be fast.
    pub refused_latency: Histogram<u64>,
    /// Time to the first streamed item (µs), from the intended send time.
    pub first: Histogram<u64>,
    pub ok: u64,
    pub refused: u64,
    pub errors: u64,
    pub codes: BTreeMap<String, u64>,
    /// Indexed by whole seconds since the run started (by completion time).
    pub series: Vec<Second>,
}

impl OpStats {
    fn new() -> OpStats {
        OpStats {
            latency: histogram(SIGFIGS),
            refused_latency: histogram(SIGFIGS),
            first: histogram(SIGFIGS),
            ok: 0,
            refused: 0,
            errors: 0,
            codes: BTreeMap::new(),
            series: Vec::new(),
        }
    }

    pub fn total(&self) -> u64 {
        self.ok + self.refused + self.errors
    }

    pub fn error_rate(&self) -> f64 {
        if self.total() == 0 {
            return 0.0;
        }
        self.errors as f64 / self.total() as f64
    }

    /// A quantile of successful latency, in milliseconds (NaN without data).
    pub fn ms(&self, q: f64) -> f64 {
        quantile_ms(&self.latency, q)
    }

    pub fn first_ms(&self, q: f64) -> f64 {
        quantile_ms(&self.first, q)
    }

    pub fn refused_ms(&self, q: f64) -> f64 {
        quantile_ms(&self.refused_latency, q)
    }
}

pub fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return f64::NAN;
    }
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Collects outcomes from every in-flight request of a run.
pub struct Recorder {
    start: Instant,
    ops: Mutex<BTreeMap<String, OpStats>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            ops: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    /// Records a call that ended now.
    pub fn record(&self, op: &str, intended: Instant, outcome: &Outcome) {
        self.record_at(op, intended, Instant::now(), outcome);
    }

    /// Records a call that ended at `done`.
    pub fn record_at(&self, op: &str, intended: Instant, done: Instant, outcome: &Outcome) {
        let us = done
            .saturating_duration_since(intended)
            .as_micros()
            .clamp(1, u128::from(MAX_LATENCY_US)) as u64;
        let second = done.saturating_duration_since(self.start).as_secs() as usize;
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let stats = ops.entry(op.to_owned()).or_insert_with(OpStats::new);
        if stats.series.len() <= second {
            stats.series.resize_with(second + 1, Second::new);
        }
        let s = &mut stats.series[second];
        match outcome.class {
            Class::Ok => {
                stats.ok += 1;
                s.ok += 1;
                let _ = stats.latency.record(us);
                let _ = s.latency.record(us);
                if let Some(first) = outcome.first {
                    let first_us = first
                        .saturating_duration_since(intended)
                        .as_micros()
                        .clamp(1, u128::from(MAX_LATENCY_US))
                        as u64;
                    let _ = stats.first.record(first_us);
                }
            }
            Class::Refused => {
                stats.refused += 1;
                s.refused += 1;
                let _ = stats.refused_latency.record(us);
            }
            Class::Error => {
                stats.errors += 1;
                s.errors += 1;
            }
        }
        *stats.codes.entry(outcome.code.clone()).or_default() += 1;
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> BTreeMap<String, OpStats> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One operation's figures (empty if it never completed).
    pub fn op(&self, name: &str) -> OpStats {
        self.ops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .unwrap_or_else(OpStats::new)
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

/// A stretch of the schedule: the arrival rate moves linearly from `from` to `to` per second.
#[derive(Debug, Clone, Copy)]
pub struct Stage {
    pub duration: Duration,
    pub from: f64,
    pub to: f64,
}

impl Stage {
    pub fn constant(rate: f64, duration: Duration) -> Stage {
        Stage {
            duration,
            from: rate,
            to: rate,
        }
    }

    pub fn ramp(from: f64, to: f64, duration: Duration) -> Stage {
        Stage { duration, from, to }
    }
}

/// Below this rate a stage sends nothing (a pause).
const MIN_RATE: f64 = 0.01;

/// The intended send times (offsets from the start) of a schedule. Within a stage the rate
/// moves linearly, so the expected count by time `t` is `N(t) = from·t + (to − from)·t²/2L`;
/// the k-th arrival is where `N(t) = k` (solved exactly, so long runs do not drift).
pub fn arrivals(stages: &[Stage]) -> Vec<Duration> {
    let mut out = Vec::new();
    let mut base = 0.0f64;
    for st in stages {
        let len = st.duration.as_secs_f64();
        let (from, to) = (st.from.max(0.0), st.to.max(0.0));
        if len > 0.0 && from.max(to) >= MIN_RATE {
            let a = (to - from) / (2.0 * len);
            let expected = from * len + a * len * len;
            let mut k = 0.0f64;
            while k < expected - 1e-9 {
                let t = if a.abs() < 1e-12 {
                    k / from
                } else {
                    (-from + (from * from + 4.0 * a * k).max(0.0).sqrt()) / (2.0 * a)
                };
                if !t.is_finite() || t >= len {
                    break;
                }
                out.push(Duration::from_secs_f64(base + t));
                k += 1.0;
            }
        }
        base += len;
    }
    out
}

/// Runs a schedule: at each intended time, `call(i)` names the operation and gives the future
/// that performs it; it is started at that time whether or not earlier calls have returned.
/// At most `max_in_flight` run at once: beyond that the generator itself is saturated and
/// records a `GENERATOR_OVERFLOW` error instead of sending (a run with any is not valid).
pub async fn drive<F, Fut>(stages: &[Stage], max_in_flight: usize, rec: &Recorder, mut call: F)
where
    F: FnMut(u64) -> (&'static str, Fut),
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let start = Instant::now() + Duration::from_millis(10);
    let mut set = tokio::task::JoinSet::new();
    for (i, offset) in arrivals(stages).into_iter().enumerate() {
        let intended = start + offset;
        tokio::time::sleep_until(intended).await;
        while let Some(done) = set.try_join_next() {
            if let Ok((op, intended, at, outcome)) = done {
                rec.record_at(op, intended, at, &outcome);
            }
        }
        let (op, fut) = call(i as u64);
        if set.len() >= max_in_flight {
            rec.record(op, intended, &Outcome::error("GENERATOR_OVERFLOW"));
            continue;
        }
        set.spawn(async move {
            let outcome = fut.await;
            (op, intended, Instant::now(), outcome)
        });
    }
    while let Some(done) = set.join_next().await {
        if let Ok((op, intended, at, outcome)) = done {
            rec.record_at(op, intended, at, &outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_stage_sends_rate_times_duration() {
        let a = arrivals(&[Stage::constant(100.0, Duration::from_secs(3))]);
        assert_eq!(a.len(), 300);
        assert_eq!(a[1] - a[0], Duration::from_millis(10));
        assert_eq!(a[299], Duration::from_millis(2990));
    }

    #[test]
    fn a_ramp_sends_its_average_rate_and_accelerates() {
        let a = arrivals(&[Stage::ramp(100.0, 300.0, Duration::from_secs(2))]);
        // Average 200/s over 2 s.
        assert_eq!(a.len(), 400);
        let first_gap = a[1] - a[0];
        let last_gap = a[a.len() - 1] - a[a.len() - 2];
        assert!(last_gap < first_gap);
    }

    #[test]
    fn a_ramp_from_nothing_starts_slowly() {
        let a = arrivals(&[Stage::ramp(0.0, 100.0, Duration::from_secs(2))]);
        assert_eq!(a.len(), 100);
        assert!(a[1] - a[0] > a[99] - a[98]);
    }

    #[test]
    fn stages_follow_each_other() {
        let a = arrivals(&[
            Stage::constant(10.0, Duration::from_secs(1)),
            Stage::constant(0.0, Duration::from_secs(1)),
            Stage::constant(10.0, Duration::from_secs(1)),
        ]);
        assert_eq!(a.len(), 20);
        assert!(a[10] >= Duration::from_secs(2), "the pause is kept");
    }

    proptest::proptest! {
        #[test]
        fn arrivals_are_ordered_inside_the_schedule_and_as_many_as_the_rates_say(
            stages in proptest::collection::vec((0.0f64..500.0, 0.0f64..500.0, 1u64..3000), 1..5)
        ) {
            let stages: Vec<Stage> = stages
                .into_iter()
                .map(|(from, to, ms)| Stage::ramp(from, to, Duration::from_millis(ms)))
                .collect();
            let a = arrivals(&stages);
            let total: Duration = stages.iter().map(|s| s.duration).sum();
            proptest::prop_assert!(a.windows(2).all(|w| w[0] <= w[1]));
            proptest::prop_assert!(a.last().is_none_or(|l| *l < total));
            let expected: f64 = stages
                .iter()
                .map(|s| (s.from + s.to) / 2.0 * s.duration.as_secs_f64())
                .sum();
            let slack = stages.len() as f64 + 1.0;
            proptest::prop_assert!(
                (a.len() as f64 - expected).abs() <= slack,
                "{} arrivals, expected {expected}", a.len()
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn latency_counts_from_the_intended_time_not_from_when_the_call_started() {
        let rec = Recorder::new();
        // One call at a time would be a closed model; here every call takes 100 ms and they
        // are sent every 10 ms regardless.
        drive(
            &[Stage::constant(100.0, Duration::from_secs(1))],
            10_000,
            &rec,
            |_| {
                ("op", async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Outcome::ok()
                })
            },
        )
        .await;
        let op = rec.op("op");
        assert_eq!(op.ok, 100);
        let p50 = op.ms(0.5);
        assert!((99.0..=101.0).contains(&p50), "p50 {p50}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_saturated_generator_says_so() {
        let rec = Recorder::new();
        drive(
            &[Stage::constant(100.0, Duration::from_secs(1))],
            5,
            &rec,
            |_| {
                ("op", async {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    Outcome::ok()
                })
            },
        )
        .await;
        let op = rec.op("op");
        assert_eq!(op.ok, 5);
        assert_eq!(op.errors, 95);
        assert_eq!(op.codes.get("GENERATOR_OVERFLOW"), Some(&95));
    }

    #[test]
    fn refusals_and_errors_are_told_apart() {
        let r = Outcome::from_status(&tonic::Status::resource_exhausted("rate limited"));
        assert_eq!(r.class, Class::Refused);
        let mut shed = tonic::Status::unavailable("at capacity");
        shed.metadata_mut()
            .insert("retry-after", tonic::metadata::MetadataValue::from(1u32));
        let o = Outcome::from_status(&shed);
        assert_eq!(o.class, Class::Refused);
        let e = Outcome::from_status(&tonic::Status::unavailable("connection refused"));
        assert_eq!(e.class, Class::Error);
        assert_eq!(e.code, "UNAVAILABLE");
    }
}
