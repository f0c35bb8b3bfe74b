//! The route-table gate (deploy/policy/routes.rego) over the gateway's real table
//! (`keel_gateway::routes::ROUTES`) and over fixtures: every public method has an access rule
//! and a rate limit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use keel_deploy_check::policy::{Policies, Violation, policy_dir};
use keel_deploy_check::routes;
use keel_gateway::routes::{Access, ROUTES, Route};
use serde_json::{Value, json};

fn rules(violations: &[Violation]) -> BTreeSet<&str> {
    violations.iter().map(|v| v.rule.as_str()).collect()
}

fn fixture_files(outcome: &str) -> Vec<PathBuf> {
    let dir = policy_dir().join("fixtures/routes").join(outcome);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

fn read_json(path: &PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_real_route_table_passes() {
    let table = routes::table();
    assert_eq!(table["routes"].as_array().unwrap().len(), ROUTES.len());
    let violations = Policies::repository().unwrap().deny_routes(&table).unwrap();
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn the_table_says_what_the_gate_does() {
    let table = routes::table();
    let login = table["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == "/keel.v1.AuthenticationService/Login")
        .unwrap();
    assert_eq!(login["access"]["kind"], "anonymous");
    assert_eq!(login["rate_limit"]["per"], "source");
    assert_eq!(
        login["rate_limit"]["buckets"][0]["burst"],
        keel_gateway::limits::ANONYMOUS.burst
    );
    let export = table["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == "/keel.v1.ModelService/ExportModel")
        .unwrap();
    assert_eq!(
        export["access"],
        json!({"kind": "step_up", "scope": "models:export"})
    );
    assert_eq!(export["rate_limit"]["per"], "tenant_and_user");
    // A tenant and a user bucket per tier.
    assert_eq!(
        export["rate_limit"]["buckets"].as_array().unwrap().len(),
        2 * routes::TIERS.len()
    );
}

#[test]
fn an_unauthenticated_route_added_to_the_real_table_is_denied() {
    // The mistake the gate's design invites: a document method declared Anonymous. It is still
    // limited (per source), but callable without a token.
    let mut rows: Vec<Route> = ROUTES.to_vec();
    rows.push(Route {
        path: "/keel.v1.DocumentService/ExportAllDocuments",
        access: Access::Anonymous,
    });
    let violations = Policies::repository()
        .unwrap()
        .deny_routes(&routes::table_of(&rows))
        .unwrap();
    assert_eq!(rules(&violations), BTreeSet::from(["route-access"]));
    assert_eq!(
        violations[0].object,
        "/keel.v1.DocumentService/ExportAllDocuments"
    );
}

#[test]
fn an_unlimited_route_without_access_is_denied_for_both() {
    let mut table = routes::table();
    table["routes"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "path": "/keel.v1.DocumentService/PurgeTenant" }));
    let violations = Policies::repository().unwrap().deny_routes(&table).unwrap();
    assert_eq!(
        rules(&violations),
        BTreeSet::from(["route-access", "route-rate-limit"]),
        "{violations:#?}"
    );
    assert!(
        violations
            .iter()
            .all(|v| v.object == "/keel.v1.DocumentService/PurgeTenant")
    );
}

#[test]
fn passing_route_fixtures_are_admitted() {
    let mut policies = Policies::repository().unwrap();
    for file in fixture_files("pass") {
        let violations = policies.deny_routes(&read_json(&file)).unwrap();
        assert!(violations.is_empty(), "{}: {violations:#?}", file.display());
    }
}

#[test]
fn each_failing_route_fixture_is_denied_by_its_rule_and_no_other() {
    let mut policies = Policies::repository().unwrap();
    let mut covered = BTreeSet::new();
    for file in fixture_files("fail") {
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        let rule = stem.split_once("--").unwrap().0.to_owned();
        let violations = policies.deny_routes(&read_json(&file)).unwrap();
        assert_eq!(
            rules(&violations),
            BTreeSet::from([rule.as_str()]),
            "{}: {violations:#?}",
            file.display()
        );
        covered.insert(rule);
    }
    assert_eq!(
        covered,
        BTreeSet::from(["route-access".to_owned(), "route-rate-limit".to_owned()])
    );
}
