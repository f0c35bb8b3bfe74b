//! OAuth 2.0 and OpenID Connect wire formats, with no I/O: everything here is a pure function
//! of its input, so it can be fuzzed (`cargo xtask fuzz authorize_request|token_request`) and
//! shared by the auth service (which serves the endpoints) and keelctl (which validates tenant
//! auth specs against the same rules).
//!
//! * [`form`] — `application/x-www-form-urlencoded` bodies and queries: every parameter at most
//!   once (RFC 6749 §3.1), empty values treated as absent, size-capped.
//! * [`request`] — the authorization request (RFC 6749 §4.1.1 + RFC 7636 + OIDC Core §3.1.2.1)
//!   and the token request with client authentication (RFC 6749 §2.3.1, §4.1.3, §4.4.2, §6).
//! * [`pkce`] — RFC 7636 S256 only: `plain` and a missing method are refused.
//! * [`redirect`] — which redirect URIs may be registered, and exact matching.
//! * [`scope`] — RFC 6749 §3.3 scope syntax.

pub mod form;
pub mod pkce;
pub mod redirect;
pub mod request;
pub mod scope;

use std::borrow::Cow;

/// RFC 6749 §4.1.2.1 / §5.2 error codes (and OIDC Core §3.1.2.6 `login_required`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    UnsupportedResponseType,
    InvalidScope,
    AccessDenied,
    LoginRequired,
    UnsupportedTokenType,
    ServerError,
    TemporarilyUnavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::InvalidGrant => "invalid_grant",
            ErrorCode::UnauthorizedClient => "unauthorized_client",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::UnsupportedResponseType => "unsupported_response_type",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::AccessDenied => "access_denied",
            ErrorCode::LoginRequired => "login_required",
            ErrorCode::UnsupportedTokenType => "unsupported_token_type",
            ErrorCode::ServerError => "server_error",
            ErrorCode::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }
}

/// An OAuth error: the code a client switches on and a human-readable description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub code: ErrorCode,
    pub description: Cow<'static, str>,
}

impl OAuthError {
    pub fn new(code: ErrorCode, description: impl Into<Cow<'static, str>>) -> Self {
        OAuthError {
            code,
            description: description.into(),
        }
    }

    pub fn invalid_request(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::InvalidRequest, description)
    }
}

impl std::fmt::Display for OAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.description)
    }
}

impl std::error::Error for OAuthError {}
