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
    #[error(transparent)]
    Store(#[from] keel_store::StoreError),
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
