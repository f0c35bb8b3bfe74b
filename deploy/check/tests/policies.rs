//! The Kubernetes policy gates (deploy/policy/kubernetes.rego): every rendered overlay and the
//! stateful manifests pass; every failing fixture is denied, by exactly the rule its name says.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use keel_deploy_check::kustomize::{self, OVERLAYS};
use keel_deploy_check::policy::{Policies, Violation, policy_dir};
use keel_deploy_check::yaml::{object_name, read_documents};

fn fixtures(kind: &str, outcome: &str, ext: &str) -> Vec<PathBuf> {
    let dir = policy_dir().join("fixtures").join(kind).join(outcome);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

/// The rule a failing fixture is named after: `<rule>--<case>.<ext>`.
fn expected_rule(path: &Path) -> String {
    let stem = path.file_stem().unwrap().to_string_lossy();
    stem.split_once("--")
        .unwrap_or_else(|| panic!("{}: name it <rule>--<case>", path.display()))
        .0
        .to_owned()
}

fn deny_all(policies: &mut Policies, objects: &[serde_json::Value]) -> Vec<Violation> {
    let mut out = Vec::new();
    for obj in objects {
        out.extend(policies.deny_object(obj).unwrap());
    }
    out
}

fn report(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| format!("  {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_overlay_passes_the_policies() {
    let mut policies = Policies::repository().unwrap();
    for overlay in OVERLAYS {
        let objects = kustomize::render_k8s(&format!("overlays/{overlay}")).unwrap();
        let violations = deny_all(&mut policies, &objects);
        assert!(
            violations.is_empty(),
            "overlay {overlay} is refused:\n{}",
            report(&violations)
        );
    }
}

#[test]
fn the_stateful_manifests_pass_the_policies() {
    let mut policies = Policies::repository().unwrap();
    let objects = kustomize::render_k8s("stateful").unwrap();
    assert!(!objects.is_empty());
    let violations = deny_all(&mut policies, &objects);
    assert!(violations.is_empty(), "refused:\n{}", report(&violations));
}

#[test]
fn passing_fixtures_are_admitted() {
    let mut policies = Policies::repository().unwrap();
    for file in fixtures("kubernetes", "pass", "yaml") {
        let objects = read_documents(&file).unwrap();
        let violations = deny_all(&mut policies, &objects);
        assert!(
            violations.is_empty(),
            "{} is refused:\n{}",
            file.display(),
            report(&violations)
        );
    }
}

#[test]
fn each_failing_fixture_is_denied_by_its_rule_and_no_other() {
    let mut policies = Policies::repository().unwrap();
    let mut rules_covered = BTreeSet::new();
    for file in fixtures("kubernetes", "fail", "yaml") {
        let rule = expected_rule(&file);
        let objects = read_documents(&file).unwrap();
        let violations = deny_all(&mut policies, &objects);
        let rules: BTreeSet<&str> = violations.iter().map(|v| v.rule.as_str()).collect();
        assert_eq!(
            rules,
            BTreeSet::from([rule.as_str()]),
            "{} ({}): expected exactly [{rule}], got:\n{}",
            file.display(),
            objects
                .iter()
                .map(object_name)
                .collect::<Vec<_>>()
                .join(", "),
            report(&violations)
        );
        rules_covered.insert(rule);
    }
    // Every rule the policy declares has a failing fixture.
    let text = std::fs::read_to_string(policy_dir().join("kubernetes.rego")).unwrap();
    let declared: BTreeSet<String> = text
        .split("violation(\"")
        .skip(1)
        .map(|rest| rest[..rest.find('"').unwrap()].to_owned())
        .collect();
    assert_eq!(
        declared, rules_covered,
        "rules without a failing fixture (or fixtures of no rule)"
    );
}

#[test]
fn a_violation_names_the_object_and_the_container() {
    let mut policies = Policies::repository().unwrap();
    let file = policy_dir().join("fixtures/kubernetes/fail/image-digest--tag.yaml");
    let objects = read_documents(&file).unwrap();
    let violations = deny_all(&mut policies, &objects);
    assert_eq!(violations.len(), 1, "{}", report(&violations));
    assert_eq!(violations[0].object, "Deployment/example");
    assert!(
        violations[0].msg.contains("container \"example\"")
            && violations[0].msg.contains("example:1.2.3"),
        "{}",
        violations[0].msg
    );
}

#[test]
fn the_policies_see_every_rendered_workload() {
    // The overlays pass because they comply, not because the rules miss them: make every
    // workload's first container run as root, and each one must be refused for it.
    let mut policies = Policies::repository().unwrap();
    let objects = kustomize::render_k8s("overlays/prod").unwrap();
    let mut workloads = 0;
    for obj in &objects {
        let mut obj = obj.clone();
        let spec = &mut obj["spec"]["template"]["spec"];
        let Some(container) = spec["containers"].get_mut(0) else {
            continue;
        };
        container["securityContext"]["runAsUser"] = serde_json::json!(0);
        workloads += 1;
        let violations = policies.deny_object(&obj).unwrap();
        assert!(
            violations.iter().any(|v| v.rule == "run-as-root"),
            "{} as root is admitted",
            object_name(&obj)
        );
    }
    // auth, gateway, inference, postproc.
    assert_eq!(workloads, 4);
}
