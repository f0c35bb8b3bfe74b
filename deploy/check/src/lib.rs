//! keel's delivery checks.
//!
//! This crate owns the proofs about the files under `deploy/` (and the Dockerfile and CI file
//! they build on) that can be given without a cluster:
//!
//! * [`kustomize`] — every overlay of `deploy/k8s` renders (`kubectl kustomize`, or a
//!   standalone `kustomize`), into plain objects;
//! * [`policy`] — the Rego gates of `deploy/policy` (run in-process by the `regorus` engine):
//!   over every rendered object, and over the gateway's route table;
//! * [`routes`] — the route table as the policy reads it, built from
//!   `keel_gateway::routes::ROUTES` and the limits the gate applies to each kind of access;
//! * [`gitlab`] — `.gitlab-ci.yml`: stages, jobs with `extends:` merged, their commands, the
//!   stage order of `needs:`, and a scanner for secret literals;
//! * [`dockerfile`] and [`workspace`] — what the Dockerfile copies and names, against the
//!   repository and the workspace's binaries (`cargo metadata`);
//! * [`yaml`] and [`objects`] — multi-document YAML into JSON values, and reading them.
//!
//! The checks themselves are the integration tests in `tests/`; this library holds what they
//! share. Nothing here talks to a cluster or a registry.

pub mod dockerfile;
pub mod gitlab;
pub mod kustomize;
pub mod objects;
pub mod policy;
pub mod routes;
pub mod workspace;
pub mod yaml;

use std::path::{Path, PathBuf};

/// The repository's root (this crate lives at `deploy/check`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid YAML: {source}")]
    Yaml {
        path: String,
        source: yaml_serde::Error,
    },
    #[error("{what}: invalid JSON: {source}")]
    Json {
        what: String,
        source: serde_json::Error,
    },
    /// A tool the check needs is not installed; the message says what to install.
    #[error("{tool} is not installed: {hint}")]
    ToolMissing { tool: String, hint: String },
    #[error("`{command}` failed ({status}):\n{stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("policy: {0}")]
    Policy(String),
    /// A pipeline file GitLab would refuse, or one this crate cannot read.
    #[error("{what}: {msg}")]
    Pipeline { what: String, msg: String },
}
