//! keel's service level objectives, as code.
//!
//! This crate owns the SLOs — defined once, as typed data in [`catalogue::SLOS`] — and everything
//! generated from them, committed under `deploy/`:
//!
//! * `deploy/prometheus/slo-rules.yml` — per objective, its error ratio recorded over 5m, 30m,
//!   1h, 2h, 6h, 1d and 3d (`slo:sli_error:ratio_rate<window>{slo, service}`) and the SRE
//!   workbook's multi-window, multi-burn-rate alerts (`severity="page"`: 14.4× over 1h and 5m or
//!   6× over 6h and 30m; `severity="ticket"`: 3× over 1d and 2h or 1× over 3d and 6h);
//! * `deploy/prometheus/slo-rules.test.yml` — `promtool test rules` scenarios: for every
//!   objective, series burning its budget at known rates, with the alerts that must and must
//!   not fire;
//! * `deploy/prometheus/slo-runbook.md` — the alerts' runbook;
//! * `deploy/grafana/<service>.json` — one dashboard per service.
//!
//! The objectives read the metrics the services export (`keel_rpc_requests_total`,
//! `keel_rpc_duration_seconds`, `keel_rpc_shed_total`, `keel_consumer_messages_total`); latency
//! thresholds are bucket boundaries of `keel_telemetry::DURATION_BUCKETS`. The crate's tests keep
//! the committed files equal to what [`generate`] writes, every metric they name exported by the
//! code, every method named declared in `proto/`, and run promtool on the rules.
//!
//! `cargo run -p keel-slo -- write .` regenerates the files; `check .` lists stale ones.

pub mod catalogue;
pub mod dashboards;
mod json;
pub mod promql;
pub mod rules;
mod rules_test;
mod runbook;
pub mod spec;
mod yaml;

use std::path::{Path, PathBuf};

pub use spec::Slo;

/// The first line of every generated file.
pub const GENERATED_BY: &str =
    "Generated from libs/slo (keel-slo) by `cargo run -p keel-slo -- write .`: do not edit.";

/// The rule file, relative to the repository root.
pub const RULES_PATH: &str = "deploy/prometheus/slo-rules.yml";
/// The rule file as the test file names it (next to it).
pub const RULES_FILE: &str = "slo-rules.yml";
/// The promtool test file, relative to the repository root.
pub const RULES_TEST_PATH: &str = "deploy/prometheus/slo-rules.test.yml";
/// The runbook, relative to the repository root.
pub const RUNBOOK_PATH: &str = "deploy/prometheus/slo-runbook.md";

/// A generated file: where it goes (relative to the repository root) and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub path: String,
    pub contents: String,
}

/// Everything generated from [`catalogue::SLOS`], in a fixed order.
pub fn generate() -> Vec<Generated> {
    let slos = catalogue::SLOS;
    let mut files = vec![
        Generated {
            path: RULES_PATH.to_owned(),
            contents: rules::render(slos),
        },
        Generated {
            path: RULES_TEST_PATH.to_owned(),
            contents: rules_test::render(slos),
        },
        Generated {
            path: RUNBOOK_PATH.to_owned(),
            contents: runbook::render(slos),
        },
    ];
    for service in spec::Service::ALL {
        files.push(Generated {
            path: format!("deploy/grafana/{}.json", service.label()),
            contents: json::pretty(&dashboards::dashboard(service)),
        });
    }
    files
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Writes every generated file under `root`; returns the paths whose contents changed.
pub fn write(root: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut changed = Vec::new();
    for file in generate() {
        let path = root.join(&file.path);
        if std::fs::read_to_string(&path).is_ok_and(|old| old == file.contents) {
            continue;
        }
        let write_err = |source| Error::Write {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(write_err)?;
        }
        std::fs::write(&path, &file.contents).map_err(write_err)?;
        changed.push(path);
    }
    Ok(changed)
}

/// The generated files under `root` that are missing or differ from what [`generate`] writes.
pub fn stale(root: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    for file in generate() {
        let path = root.join(&file.path);
        match std::fs::read_to_string(&path) {
            Ok(committed) if committed == file.contents => {}
            Ok(_) => out.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => out.push(path),
            Err(source) => return Err(Error::Read { path, source }),
        }
    }
    Ok(out)
}
