//! Tenant authentication, declared rather than hand-coded.
//!
//! * [`policy`] — [`TenantPolicy`]: what the auth service enforces for one tenant (token
//!   lifetimes, roles → scopes, MFA by role, step-up by scope, key algorithm and rotation), its
//!   safe bounds, and the built-in default every tenant starts with.
//! * [`client`] — [`ClientSpec`]: one OAuth client registration and its rules (exact redirect
//!   URIs, no wildcard, no plain http off loopback, `client_credentials` only for confidential
//!   clients). The auth service checks registrations with the same code.
//! * [`spec`] — the versioned TOML spec file a tenant keeps in its repository: parsed with
//!   unknown fields refused, checked, every problem reported with its line and reason.
//! * [`plan`] — the changes that applying a spec to the current state would make.
//! * [`remote`] — planning and applying against a running auth service (keelctl, tests).
//! * [`wire`] — conversions to and from the `keel.auth.v1` messages (auth's edge and keelctl).
//! * [`generate`] — what app teams need: each client's OIDC configuration and a typed Rust
//!   snippet for obtaining and refreshing tokens.

pub mod client;
pub mod generate;
pub mod plan;
pub mod policy;
pub mod remote;
pub mod spec;
pub mod wire;

pub use client::ClientSpec;
pub use policy::TenantPolicy;
pub use spec::{Spec, SpecError};
