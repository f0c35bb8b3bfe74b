//! The k6 scripts (`loadtest/k6/`) cover every scenario of the Rust generator, and parse.
//! k6 itself is not installable here: Node checks their syntax as ES modules.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::Command;

fn k6_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("k6")
}

#[test]
fn every_scenario_has_a_k6_script() {
    for s in keel_loadtest::ALL {
        let script = k6_dir().join(format!("{s}.js"));
        assert!(
            script.is_file(),
            "no k6 script for {s}: {}",
            script.display()
        );
    }
}

#[test]
fn every_k6_script_parses() {
    if Command::new("node").arg("--version").output().is_err() {
        eprintln!("node is not installed: the k6 scripts' syntax is not checked here");
        return;
    }
    let mut checked = 0;
    for entry in std::fs::read_dir(k6_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "js") {
            let out = Command::new("node")
                .arg("--check")
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(
        checked > keel_loadtest::ALL.len(),
        "common.js and one per scenario"
    );
}
