//! The Rego policy gates of `deploy/policy`, evaluated in-process by `regorus` (no OPA binary).
//!
//! Both packages answer with `deny`, a set of [`Violation`]s; an empty set admits the input.
//! * `data.keel.kubernetes.deny` — one rendered Kubernetes object per evaluation;
//! * `data.keel.routes.deny` — the gateway's route table ([`crate::routes::table`]).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::CheckError;

pub const KUBERNETES_DENY: &str = "data.keel.kubernetes.deny";
pub const ROUTES_DENY: &str = "data.keel.routes.deny";

/// One reason an input is refused.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct Violation {
    /// The rule's identifier (`image-digest`, `route-access`, …), as listed in the policy files.
    pub rule: String,
    /// What was refused: `Kind/name`, or a route's path.
    pub object: String,
    pub msg: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.rule, self.msg)
    }
}

/// `deploy/policy` of this repository.
pub fn policy_dir() -> PathBuf {
    crate::repo_root().join("deploy/policy")
}

/// The loaded policies.
#[derive(Clone)]
pub struct Policies {
    engine: regorus::Engine,
}

fn policy_error(e: impl std::fmt::Display) -> CheckError {
    CheckError::Policy(e.to_string())
}

impl Policies {
    /// Every `*.rego` file directly in `dir` (Rego v1 syntax).
    pub fn load(dir: &Path) -> Result<Self, CheckError> {
        let mut engine = regorus::Engine::new();
        let entries = std::fs::read_dir(dir).map_err(|source| CheckError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "rego"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(CheckError::Policy(format!(
                "no .rego file in {}",
                dir.display()
            )));
        }
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|source| CheckError::Read {
                path: file.clone(),
                source,
            })?;
            engine
                .add_policy(file.display().to_string(), text)
                .map_err(policy_error)?;
        }
        Ok(Policies { engine })
    }

    /// The repository's policies.
    pub fn repository() -> Result<Self, CheckError> {
        Self::load(&policy_dir())
    }

    /// Evaluates the set rule `rule` (such as [`KUBERNETES_DENY`]) with `input`; sorted.
    pub fn deny(&mut self, rule: &str, input: &Value) -> Result<Vec<Violation>, CheckError> {
        let input: regorus::Value =
            serde_json::from_value(input.clone()).map_err(|source| CheckError::Json {
                what: "policy input".to_owned(),
                source,
            })?;
        self.engine.set_input(input);
        let result = self
            .engine
            .eval_rule(rule.to_owned())
            .map_err(policy_error)?;
        if result == regorus::Value::Undefined {
            return Ok(Vec::new());
        }
        let json = serde_json::to_value(&result).map_err(|source| CheckError::Json {
            what: format!("the result of {rule}"),
            source,
        })?;
        let mut violations: Vec<Violation> =
            serde_json::from_value(json).map_err(|source| CheckError::Json {
                what: format!("the result of {rule}"),
                source,
            })?;
        violations.sort();
        Ok(violations)
    }

    /// The Kubernetes gates over one object.
    pub fn deny_object(&mut self, object: &Value) -> Result<Vec<Violation>, CheckError> {
        self.deny(KUBERNETES_DENY, object)
    }

    /// The route-table gate.
    pub fn deny_routes(&mut self, table: &Value) -> Result<Vec<Violation>, CheckError> {
        self.deny(ROUTES_DENY, table)
    }
}
