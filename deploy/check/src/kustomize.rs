//! Rendering the Kustomize trees of `deploy/k8s`.
//!
//! The renderer is `kubectl kustomize` (kubectl ≥ 1.27 embeds kustomize v5, which the overlays
//! need for `labels:` and components) or, when there is no kubectl, a standalone `kustomize
//! build`. `KEEL_TEST_KUBECTL` names a kubectl binary explicitly.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::CheckError;

/// What to say when neither tool is there.
pub const INSTALL_HINT: &str = "the deploy checks render the overlays with `kubectl kustomize` \
    (kubectl 1.27 or newer; the rust-svc machine image ships kubectl 1.32 at /usr/bin/kubectl, \
    from its `kubectl` package) or a standalone `kustomize` v5; install either, or point \
    KEEL_TEST_KUBECTL at a kubectl binary. Debian 12's `kubernetes-client` package is kubectl \
    1.20, whose kustomize (v2) is too old for these overlays";

/// The overlays every environment is deployed from.
pub const OVERLAYS: &[&str] = &["dev", "staging", "prod", "branch"];

/// The services, each a kustomization of its own under `base/` and under every overlay but
/// `branch`.
pub const SERVICES: &[&str] = &["auth", "gateway", "inference", "postproc"];

/// `deploy/k8s` of this repository.
pub fn k8s_dir() -> PathBuf {
    crate::repo_root().join("deploy/k8s")
}

#[derive(Debug, Clone)]
enum Renderer {
    Kubectl(PathBuf),
    Kustomize(PathBuf),
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn renderer() -> Result<Renderer, CheckError> {
    if let Some(bin) = std::env::var_os("KEEL_TEST_KUBECTL") {
        return Ok(Renderer::Kubectl(PathBuf::from(bin)));
    }
    if let Some(bin) = on_path("kubectl") {
        return Ok(Renderer::Kubectl(bin));
    }
    if let Some(bin) = on_path("kustomize") {
        return Ok(Renderer::Kustomize(bin));
    }
    Err(CheckError::ToolMissing {
        tool: "kubectl (or kustomize)".to_owned(),
        hint: INSTALL_HINT.to_owned(),
    })
}

/// Renders the kustomization in `dir` into its objects.
pub fn render(dir: &Path) -> Result<Vec<Value>, CheckError> {
    let (bin, args): (PathBuf, Vec<&str>) = match renderer()? {
        Renderer::Kubectl(bin) => (bin, vec!["kustomize"]),
        Renderer::Kustomize(bin) => (bin, vec!["build"]),
    };
    let command = format!("{} {} {}", bin.display(), args.join(" "), dir.display());
    let out = Command::new(&bin)
        .args(&args)
        .arg(dir)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CheckError::ToolMissing {
                tool: bin.display().to_string(),
                hint: INSTALL_HINT.to_owned(),
            },
            _ => CheckError::Command {
                command: command.clone(),
                status: e.to_string(),
                stderr: String::new(),
            },
        })?;
    if !out.status.success() {
        return Err(CheckError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    crate::yaml::documents(&command, &String::from_utf8_lossy(&out.stdout))
}

/// Renders `deploy/k8s/<relative>`.
pub fn render_k8s(relative: &str) -> Result<Vec<Value>, CheckError> {
    render(&k8s_dir().join(relative))
}
