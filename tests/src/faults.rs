//! What the fault tests (`shard_down.rs`, `stalls.rs`) count: the tenants of a steady,
//! open-model stream of calls, each call's outcome, and how a refusal is classified. A fault
//! may cost calls, but only cleanly: a keel reason, or the client's own deadline; never a wrong
//! code, never a call that outlives its deadline.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::Code;

/// A tenant of the stream of calls.
pub struct Tenant {
    pub name: String,
    pub token: String,
    /// The database shard its data lives on.
    pub shard: usize,
    /// IDs of the creates the gateway acknowledged.
    pub acked: Mutex<Vec<String>>,
}

impl Tenant {
    pub fn new(name: String, token: String, shard: usize) -> Self {
        Tenant {
            name,
            token,
            shard,
            acked: Mutex::default(),
        }
    }
}

/// How one call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok,
    /// The server answered UNAVAILABLE or DEADLINE_EXCEEDED with a keel reason.
    Clean(String),
    /// The client's own deadline fired first (tonic reports that as CANCELLED "Timeout
    /// expired"; other gRPC clients as DEADLINE_EXCEEDED): bounded, but without a reason.
    Deadline,
    /// Anything else: a wrong code, or no reason.
    Unclean(String),
    /// No answer even the test's slack after the deadline.
    Hung,
}

/// One call of the stream.
pub struct Call {
    /// Index of its tenant.
    pub tenant: usize,
    pub op: &'static str,
    pub start: Instant,
    pub took: Duration,
    pub outcome: Outcome,
}

impl Call {
    pub fn failed(&self) -> bool {
        self.outcome != Outcome::Ok
    }
}

/// The outcome of a refused call.
pub fn classify(st: &tonic::Status) -> Outcome {
    use tonic_types::StatusExt;
    let keel_reason = st
        .get_details_error_info()
        .is_some_and(|i| i.domain == keel_errors::DOMAIN);
    match st.code() {
        Code::Unavailable | Code::DeadlineExceeded if keel_reason => {
            Outcome::Clean(format!("{:?}/{}", st.code(), crate::reason(st)))
        }
        Code::Cancelled if st.message() == "Timeout expired" => Outcome::Deadline,
        c => Outcome::Unclean(format!("{c:?}: {}", st.message())),
    }
}
