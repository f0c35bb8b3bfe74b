//! Calling a downstream without making its trouble ours:
//!
//! * [`Breaker`] — a circuit breaker per downstream: a sliding window of outcomes (failures and
//!   slow calls by rate, once enough calls were seen) opens it; while open, calls fail at once;
//!   after a pause a few probes go through (half-open) and close it again, or reopen it. State
//!   is exported as `keel_breaker_state{downstream}` (0 closed, 1 half-open, 2 open).
//! * [`RetryBudget`] — retries may add at most a fixed share of the traffic (plus a small
//!   floor), so a struggling downstream is not hit by a retry storm.
//! * [`call`] — one call with both: retried only when the caller says the call is idempotent,
//!   only for transient codes, with capped exponential backoff and full jitter.

mod breaker;
mod retry;

pub use breaker::{Breaker, BreakerConfig, Permit, State};
pub use retry::{RetryBudget, RetryPolicy, call, is_transient};
