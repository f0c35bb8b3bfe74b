//! `keelctl auth plan|apply|generate FILE`: a tenant's auth, declared in a spec file
//! (see `keel_authspec::spec` for the format).
//!
//! * `plan` validates the file and shows what `apply` would change (nothing for a spec already
//!   applied).
//! * `apply` makes those changes through the auth service's admin API, idempotently; secrets of
//!   newly registered confidential clients are printed once.
//! * `generate` writes each client's OIDC configuration and a Rust snippet for app teams; it
//!   needs no server.

use std::path::Path;

use anyhow::{Context, Result};
use keel_authspec::Spec;
use keel_authspec::remote::Remote;
use serde_json::{Value, json};

/// Reads and checks a spec; every problem is reported as `FILE:LINE: reason`.
pub fn load(path: &Path) -> Result<Spec> {
    let src =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Spec::parse(&src).map_err(|errors| {
        let lines: Vec<String> = errors
            .iter()
            .map(|e| format!("{}:{}: {}", path.display(), e.line, e.reason))
            .collect();
        anyhow::anyhow!(
            "the spec is not valid ({} problem{}):\n{}",
            lines.len(),
            if lines.len() == 1 { "" } else { "s" },
            lines.join("\n")
        )
    })
}

pub async fn plan(spec: &Spec, remote: &mut Remote) -> Result<Value> {
    let changes = remote.plan(spec).await?;
    Ok(json!({
        "tenant": spec.tenant,
        "up_to_date": changes.is_empty(),
        "changes": changes.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
    }))
}

pub async fn apply(spec: &Spec, remote: &mut Remote) -> Result<Value> {
    let applied = remote.apply(spec).await?;
    Ok(json!({
        "tenant": spec.tenant,
        "applied": applied.changes.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        // Shown once: only hashes are stored.
        "client_secrets": applied.client_secrets.into_iter().map(|(k, v)| (k, Value::from(v))).collect::<serde_json::Map<_, _>>(),
    }))
}

pub fn generate(path: &Path, issuer_base: &str) -> Result<String> {
    let spec = load(path)?;
    Ok(keel_authspec::generate::generate(&spec, issuer_base))
}
