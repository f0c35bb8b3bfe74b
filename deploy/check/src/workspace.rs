//! The workspace's packages and binaries, from `cargo metadata --format-version 1 --no-deps`.

use std::collections::BTreeSet;
use std::process::Command;

use serde::Deserialize;

use crate::CheckError;

#[derive(Debug, Deserialize)]
struct Metadata {
    packages: Vec<Package>,
}

#[derive(Debug, Deserialize)]
struct Package {
    name: String,
    targets: Vec<Target>,
}

#[derive(Debug, Deserialize)]
struct Target {
    name: String,
    kind: Vec<String>,
}

/// The workspace's members and the binaries they build.
#[derive(Debug, Clone, Default)]
pub struct Workspace {
    pub packages: BTreeSet<String>,
    pub binaries: BTreeSet<String>,
}

/// Parses `cargo metadata --format-version 1` output.
pub fn parse(json: &str) -> Result<Workspace, CheckError> {
    let metadata: Metadata = serde_json::from_str(json).map_err(|source| CheckError::Json {
        what: "cargo metadata".to_owned(),
        source,
    })?;
    let mut ws = Workspace::default();
    for package in metadata.packages {
        for target in &package.targets {
            if target.kind.iter().any(|k| k == "bin") {
                ws.binaries.insert(target.name.clone());
            }
        }
        ws.packages.insert(package.name);
    }
    Ok(ws)
}

/// Runs `cargo metadata` on this repository (`CARGO`, as set by cargo for its children, or
/// `cargo` from the PATH).
pub fn load() -> Result<Workspace, CheckError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let command = "cargo metadata --format-version 1 --no-deps".to_owned();
    let out = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(crate::repo_root())
        .output()
        .map_err(|e| CheckError::Command {
            command: command.clone(),
            status: e.to_string(),
            stderr: String::new(),
        })?;
    if !out.status.success() {
        return Err(CheckError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_come_from_bin_targets_only() {
        let ws = parse(
            r#"{"packages": [
                {"name": "keel-cli", "targets": [{"name": "keelctl", "kind": ["bin"]}]},
                {"name": "keel-x", "targets": [{"name": "keel_x", "kind": ["lib"]},
                                               {"name": "t", "kind": ["test"]}]}
            ], "workspace_members": []}"#,
        )
        .unwrap();
        assert_eq!(ws.binaries, BTreeSet::from(["keelctl".to_owned()]));
        assert!(ws.packages.contains("keel-x"));
    }
}
