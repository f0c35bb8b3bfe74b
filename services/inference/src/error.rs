//! The inference service's errors and their one mapping onto keel's reasons.

use keel_errors::{KeelError, Reason};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {problem}")]
    InvalidArgument {
        field: &'static str,
        problem: String,
    },
    #[error("document {0} not found")]
    DocumentNotFound(uuid::Uuid),
    #[error("no model {0:?}")]
    ModelNotFound(String),
    #[error("idempotency key was already used with a different request")]
    IdempotencyKeyReused,
    #[error("expected version {expected}, found {actual}")]
    VersionConflict { expected: i64, actual: i64 },
    #[error("page token is not valid for this query")]
    PageTokenInvalid,
    #[error("model {version} gave no {phase} within its timeout")]
    ModelTimeout {
        version: String,
        /// "first_token" or "call".
        phase: &'static str,
    },
    #[error("model {version} is unavailable: {why}")]
    ModelUnavailable { version: String, why: String },
    /// The upstream refused the request itself (a 4xx that is the request's fault).
    #[error("model {version} refused the request: {message}")]
    ModelRejected { version: String, message: String },
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] keel_store::StoreError),
}

impl Error {
    /// Whether the failure says something about the model's health (counts against its
    /// breaker, and lets a fallback version serve) rather than about the request.
    pub fn is_model_failure(&self) -> bool {
        matches!(
            self,
            Error::ModelTimeout { .. } | Error::ModelUnavailable { .. }
        )
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Store(e.into())
    }
}

impl KeelError for Error {
    fn reason(&self) -> Reason {
        match self {
            Error::InvalidArgument { .. } => Reason::InvalidArgument,
            Error::DocumentNotFound(_) | Error::ModelNotFound(_) => Reason::NotFound,
            Error::IdempotencyKeyReused => Reason::IdempotencyKeyReused,
            Error::VersionConflict { .. } => Reason::VersionConflict,
            Error::PageTokenInvalid => Reason::PageTokenInvalid,
            Error::ModelTimeout { .. } => Reason::DeadlineExceeded,
            Error::ModelUnavailable { .. } => Reason::Unavailable,
            Error::ModelRejected { .. } => Reason::InvalidArgument,
            Error::Unavailable(_) => Reason::Unavailable,
            Error::Store(e) => e.reason(),
        }
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        match self {
            Error::InvalidArgument { field, .. } => vec![("field", (*field).to_owned())],
            Error::DocumentNotFound(id) => vec![("resource", format!("documents/{id}"))],
            Error::ModelNotFound(m) => vec![
                ("resource", format!("models/{m}")),
                ("field", "model".into()),
            ],
            Error::PageTokenInvalid => vec![("field", "page_token".into())],
            Error::ModelTimeout { version, phase } => vec![
                ("model_version", version.clone()),
                ("timeout", (*phase).to_owned()),
            ],
            Error::ModelUnavailable { version, .. } => vec![("model_version", version.clone())],
            Error::ModelRejected { version, .. } => vec![
                ("model_version", version.clone()),
                ("field", "messages".into()),
            ],
            Error::Store(e) => e.details(),
            _ => Vec::new(),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        keel_errors::to_status(&e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
