//! The one error table of keel: every failure any crate reports is a [`Reason`]; each reason
//! has exactly one gRPC code and one HTTP status, and travels to clients as a
//! `google.rpc.ErrorInfo` detail (domain [`DOMAIN`]) so they can branch on it.
//!
//! Crates keep their own `thiserror` enums and implement [`KeelError`] for them; the edge turns
//! them into a [`tonic::Status`] with [`to_status`] (or an HTTP response with [`Reason::http`]).
//! Clients turn a `Status` back into a reason with [`reason_of`], keeping `UNAVAILABLE` and
//! `DEADLINE_EXCEEDED` distinct for retry decisions.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every error keel produces.
pub const DOMAIN: &str = "keel.dev";

/// Metadata key that repeats the reason in plain text, for clients without rich-status support.
pub const REASON_METADATA_KEY: &str = "keel-error-reason";

/// Machine-readable reasons. The names are the `keel.v1.ErrorReason` values of
/// `proto/keel/v1/errors.proto` (a test keeps the two in step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    TenantUnknown,
    TenantMismatch,
    TenantIdMissing,
    TenantIdMalformed,
    NotFound,
    IdempotencyKeyReused,
    VersionConflict,
    RateLimited,
    Unavailable,
    DeadlineExceeded,
    Internal,
    PageTokenInvalid,
    NotImplemented,
}

impl Reason {
    pub const ALL: [Reason; 16] = [
        Reason::InvalidArgument,
        Reason::Unauthenticated,
        Reason::PermissionDenied,
        Reason::TenantUnknown,
        Reason::TenantMismatch,
        Reason::TenantIdMissing,
        Reason::TenantIdMalformed,
        Reason::NotFound,
        Reason::IdempotencyKeyReused,
        Reason::VersionConflict,
        Reason::RateLimited,
        Reason::Unavailable,
        Reason::DeadlineExceeded,
        Reason::Internal,
        Reason::PageTokenInvalid,
        Reason::NotImplemented,
    ];

    /// The wire name, as in `keel.v1.ErrorReason`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidArgument => "INVALID_ARGUMENT",
            Reason::Unauthenticated => "UNAUTHENTICATED",
            Reason::PermissionDenied => "PERMISSION_DENIED",
            Reason::TenantUnknown => "TENANT_UNKNOWN",
            Reason::TenantMismatch => "TENANT_MISMATCH",
            Reason::TenantIdMissing => "TENANT_ID_MISSING",
            Reason::TenantIdMalformed => "TENANT_ID_MALFORMED",
            Reason::NotFound => "NOT_FOUND",
            Reason::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Reason::VersionConflict => "VERSION_CONFLICT",
            Reason::RateLimited => "RATE_LIMITED",
            Reason::Unavailable => "UNAVAILABLE",
            Reason::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Reason::Internal => "INTERNAL",
            Reason::PageTokenInvalid => "PAGE_TOKEN_INVALID",
            Reason::NotImplemented => "NOT_IMPLEMENTED",
        }
    }

    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// The one gRPC code of this reason.
    pub const fn grpc(self) -> Code {
        match self {
            Reason::InvalidArgument
            | Reason::TenantIdMissing
            | Reason::TenantIdMalformed
            | Reason::PageTokenInvalid => Code::InvalidArgument,
            Reason::Unauthenticated | Reason::TenantUnknown => Code::Unauthenticated,
            Reason::PermissionDenied | Reason::TenantMismatch => Code::PermissionDenied,
            Reason::NotFound => Code::NotFound,
            Reason::IdempotencyKeyReused => Code::AlreadyExists,
            Reason::VersionConflict => Code::Aborted,
            Reason::RateLimited => Code::ResourceExhausted,
            Reason::Unavailable => Code::Unavailable,
            Reason::DeadlineExceeded => Code::DeadlineExceeded,
            Reason::Internal => Code::Internal,
            Reason::NotImplemented => Code::Unimplemented,
        }
    }

    /// The one HTTP status of this reason.
    pub fn http(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self.grpc() {
            Code::InvalidArgument => S::BAD_REQUEST,
            Code::Unauthenticated => S::UNAUTHORIZED,
            Code::PermissionDenied => S::FORBIDDEN,
            Code::NotFound => S::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted => S::CONFLICT,
            Code::ResourceExhausted => S::TOO_MANY_REQUESTS,
            Code::Unavailable => S::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded => S::GATEWAY_TIMEOUT,
            Code::Unimplemented => S::NOT_IMPLEMENTED,
            _ => S::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether a client may retry an idempotent call that failed with this reason.
    pub const fn retryable(self) -> bool {
        matches!(
            self,
            Reason::Unavailable | Reason::DeadlineExceeded | Reason::RateLimited
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Implemented by every crate's error enum: which reason it is, and any detail worth sending.
pub trait KeelError: std::fmt::Display {
    fn reason(&self) -> Reason;
    /// `ErrorInfo.metadata`, e.g. `("field", "title")`. Never secrets.
    fn details(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

/// Builds the status a client sees. Internal errors are logged here with their detail and reach
/// the client only as "internal error" (the correlation ID in the logs joins the two).
pub fn to_status(err: &(impl KeelError + ?Sized)) -> Status {
    let reason = err.reason();
    let message = match reason {
        Reason::Internal => {
            tracing::error!(error = %err, "internal error");
            "internal error".to_owned()
        }
        Reason::Unavailable => {
            tracing::warn!(error = %err, "dependency unavailable");
            err.to_string()
        }
        _ => err.to_string(),
    };
    status(reason, message, err.details())
}

/// A status with the given reason and message, carrying `ErrorInfo` and the reason metadata.
pub fn status(
    reason: Reason,
    message: impl Into<String>,
    details: Vec<(&'static str, String)>,
) -> Status {
    let metadata: HashMap<String, String> = details
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let mut st = Status::with_error_details(
        reason.grpc(),
        message,
        ErrorDetails::with_error_info(reason.as_str(), DOMAIN, metadata),
    );
    st.metadata_mut().insert(
        REASON_METADATA_KEY,
        tonic::metadata::MetadataValue::from_static(reason.as_str()),
    );
    st
}

/// The reason of a status received from a keel server, if it carries one. A status without one
/// (from a proxy or the transport) maps to the reason its code implies.
pub fn reason_of(st: &Status) -> Reason {
    if let Some(info) = st.get_details_error_info()
        && info.domain == DOMAIN
        && let Some(r) = Reason::from_name(&info.reason)
    {
        return r;
    }
    if is_transport_failure(st) {
        return Reason::Unavailable;
    }
    match st.code() {
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            Reason::InvalidArgument
        }
        Code::Unauthenticated => Reason::Unauthenticated,
        Code::PermissionDenied => Reason::PermissionDenied,
        Code::NotFound => Reason::NotFound,
        Code::AlreadyExists => Reason::IdempotencyKeyReused,
        Code::Aborted => Reason::VersionConflict,
        Code::ResourceExhausted => Reason::RateLimited,
        Code::Unavailable | Code::Cancelled => Reason::Unavailable,
        Code::DeadlineExceeded => Reason::DeadlineExceeded,
        Code::Unimplemented => Reason::NotImplemented,
        Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => Reason::Internal,
    }
}

/// Whether tonic made this status on our side of a call because the connection failed — reset,
/// closed mid-call (the peer was killed), or out of step after a network fault (an HTTP/2
/// protocol error) — rather than receiving it from the peer. tonic reports these as UNKNOWN
/// ("transport error") or INTERNAL ("h2 protocol error: …"), but the peer did not fail
/// internally: it could not be reached, which gRPC's status-code guide calls UNAVAILABLE
/// (retryable for idempotent calls). Such a status carries the transport error as its
/// `source()`; a status received from a peer never has one.
///
/// Found by `cargo xtask chaos`: with inference SIGKILLed, or the gateway's link to it
/// blackholed and restored, reads reached clients as INTERNAL "internal error" and were never
/// retried.
pub fn is_transport_failure(st: &Status) -> bool {
    matches!(st.code(), Code::Unknown | Code::Internal) && std::error::Error::source(st).is_some()
}

/// Re-raises a status received from another keel service unchanged in reason and code, so a
/// hop never turns a precise error into a vague one. Internal detail stays behind.
pub fn forward(st: Status) -> Status {
    let reason = reason_of(&st);
    let message = if reason == Reason::Internal {
        "internal error".to_owned()
    } else {
        st.message().to_owned()
    };
    let details = st
        .get_details_error_info()
        .map(|i| {
            i.metadata
                .into_iter()
                .filter_map(|(k, v)| known_detail_key(&k).map(|k| (k, v)))
                .collect()
        })
        .unwrap_or_default();
    status(reason, message, details)
}

/// Whether the status reports a model's failure (it names the `model_version`): the service
/// that answered is healthy, the model behind it is not. A caller's breaker for that service
/// must not count it, or one failing upstream model would cut off every other model.
pub fn is_model_failure(st: &Status) -> bool {
    st.get_details_error_info()
        .is_some_and(|i| i.domain == DOMAIN && i.metadata.contains_key("model_version"))
}

/// Detail keys that may cross a hop (ErrorInfo metadata keys are `&'static str` on our side).
fn known_detail_key(k: &str) -> Option<&'static str> {
    [
        "field",
        "resource",
        "tenant_id",
        "retry_after_ms",
        "dependency",
        "model_version",
        "timeout",
    ]
    .into_iter()
    .find(|known| *known == k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_connection_is_unavailable_not_internal() {
        // What tonic hands a client when the connection fails mid-call.
        let broken = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset",
        )));
        assert_eq!(broken.code(), Code::Unknown);
        assert!(is_transport_failure(&broken));
        assert_eq!(reason_of(&broken), Reason::Unavailable);
        assert_eq!(forward(broken).code(), Code::Unavailable);
        // The same codes received from a peer stay internal errors.
        for received in [Status::unknown("boom"), Status::internal("boom")] {
            assert!(!is_transport_failure(&received));
            assert_eq!(reason_of(&received), Reason::Internal);
        }
    }

    #[test]
    fn every_reason_is_in_the_proto_registry() {
        for r in Reason::ALL {
            assert!(
                keel_proto::public::ErrorReason::from_str_name(r.as_str()).is_some(),
                "{r} missing from keel.v1.ErrorReason"
            );
        }
    }

    #[test]
    fn reason_survives_a_round_trip_through_status() {
        for r in Reason::ALL {
            let st = status(r, "m", vec![("field", "title".into())]);
            assert_eq!(st.code(), r.grpc());
            assert_eq!(reason_of(&st), r);
            let fwd = forward(st);
            assert_eq!(reason_of(&fwd), r);
            assert_eq!(
                fwd.get_details_error_info()
                    .map(|i| i.metadata.get("field").cloned()),
                Some(Some("title".to_owned()))
            );
        }
    }

    #[test]
    fn client_errors_are_never_5xx() {
        for r in [
            Reason::InvalidArgument,
            Reason::TenantIdMalformed,
            Reason::TenantIdMissing,
            Reason::NotFound,
            Reason::TenantUnknown,
            Reason::TenantMismatch,
            Reason::PageTokenInvalid,
        ] {
            assert!(r.http().is_client_error(), "{r}");
        }
    }

    #[test]
    fn internal_detail_does_not_leak() {
        struct Boom;
        impl std::fmt::Display for Boom {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("password=hunter2 at db.internal:5432")
            }
        }
        impl KeelError for Boom {
            fn reason(&self) -> Reason {
                Reason::Internal
            }
        }
        let st = to_status(&Boom);
        assert_eq!(st.message(), "internal error");
    }
}
