//! keel's open-model load generator (issue #8): arrivals on a fixed schedule independent of
//! responses, latency from the intended send time (no coordinated omission), HdrHistograms,
//! per-scenario mixes against the gateway's public gRPC API, SLO checks, a text summary, an
//! HTML report with latency-over-time and throughput charts, and a last `key=value` line with
//! the verdict.
//!
//! * [`engine`] — schedules ([`engine::Stage`]), [`engine::drive`], the [`engine::Recorder`].
//! * [`scenarios`] — crud, stream, ramp, timeouts, backpressure, cache-storm, noisy-tenant.
//! * [`report`] — [`report::ScenarioReport`]: text, HTML, summary line.
//!
//! It knows nothing of how the stack was started: a [`scenarios::Target`] (gateway channels,
//! callers with tokens and documents) is handed to it. `cargo xtask load` builds one against a
//! throwaway local stack (`tests/src/bin/load.rs`).

pub mod engine;
pub mod report;
pub mod scenarios;

pub use report::ScenarioReport;
pub use scenarios::{ALL, Caller, Options, Profile, Target, run};
