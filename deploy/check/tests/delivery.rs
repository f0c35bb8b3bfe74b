//! The files delivery builds on, checked without a cluster: the Dockerfile against the repository
//! and the workspace, the CI file, the Helm values of the stateful engines, and the canary
//! analysis against the SLO rules and the metrics the code exports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use keel_deploy_check::yaml::{documents, read_documents};
use keel_deploy_check::{dockerfile, repo_root, workspace};
use serde_json::Value;

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_root().join(relative))
        .unwrap_or_else(|e| panic!("{relative}: {e}"))
}

#[test]
fn every_path_the_dockerfile_copies_exists() {
    let sources = dockerfile::context_sources(&read("Dockerfile"));
    assert!(!sources.is_empty(), "the Dockerfile copies nothing");
    for source in sources {
        assert!(
            repo_root().join(&source).exists(),
            "the Dockerfile copies {source}, which is not in the repository"
        );
    }
}

#[test]
fn every_binary_and_package_the_dockerfile_names_is_in_the_workspace() {
    let text = read("Dockerfile");
    let ws = workspace::load().unwrap();
    let binaries = dockerfile::named_binaries(&text);
    let expected: BTreeSet<String> = [
        "keel-auth",
        "keel-gateway",
        "keel-inference",
        "keel-postproc",
        "keelctl",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(binaries, expected, "binaries named by the Dockerfile");
    for bin in &binaries {
        assert!(
            ws.binaries.contains(bin),
            "the Dockerfile names {bin}, which no workspace package builds (binaries: {:?})",
            ws.binaries
        );
    }
    let packages = dockerfile::built_packages(&text);
    assert!(!packages.is_empty());
    for package in &packages {
        assert!(
            ws.packages.contains(package),
            "the Dockerfile builds -p {package}, which is not a workspace member"
        );
    }
    // And this crate is a member (so `cargo test --workspace` runs these checks).
    assert!(ws.packages.contains("keel-deploy-check"));
}

#[test]
fn the_gitlab_ci_file_parses() {
    let docs = documents(".gitlab-ci.yml", &read(".gitlab-ci.yml")).unwrap();
    assert_eq!(docs.len(), 1);
    let ci = docs[0].as_object().unwrap();
    let stages: BTreeSet<&str> = ci["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let mut jobs = 0;
    for (name, job) in ci {
        if name.starts_with('.') || job.get("script").is_none() {
            continue;
        }
        jobs += 1;
        let stage = job["stage"].as_str().unwrap_or("test");
        assert!(
            stages.contains(stage),
            "job {name} runs in the undeclared stage {stage}"
        );
        for need in job["needs"].as_array().into_iter().flatten() {
            let need = need.as_str().or_else(|| need["job"].as_str()).unwrap();
            assert!(
                ci.contains_key(need),
                "job {name} needs the unknown job {need}"
            );
        }
    }
    assert!(jobs > 0, "no job in .gitlab-ci.yml");
}

fn values(relative: &str) -> Value {
    let docs = read_documents(&repo_root().join(relative)).unwrap();
    assert_eq!(docs.len(), 1, "{relative}");
    docs.into_iter().next().unwrap()
}

#[test]
fn nats_runs_three_servers_that_sync_every_write() {
    let v = values("deploy/k8s/stateful/nats/values.yaml");
    assert_eq!(v["config"]["cluster"]["enabled"], true);
    assert_eq!(v["config"]["cluster"]["replicas"], 3);
    assert_eq!(v["config"]["jetstream"]["enabled"], true);
    assert_eq!(
        v["config"]["jetstream"]["fileStore"]["pvc"]["enabled"],
        true
    );
    assert_eq!(v["config"]["jetstream"]["merge"]["sync_interval"], "always");
    // keel's streams at R3, with libs/bus's subjects.
    let job = read("deploy/k8s/stateful/nats/streams-job.yaml");
    for needle in [
        "--replicas 3",
        "declare KEEL_EVENTS 'keel.events.>' 7d",
        "declare KEEL_EVENTS_DLQ 'keel.dlq.>' 30d",
        "--dupe-window 2m",
    ] {
        assert!(job.contains(needle), "streams-job.yaml lacks {needle}");
    }
}

#[test]
fn security_state_is_never_evicted_and_the_cache_is() {
    let state = values("deploy/k8s/stateful/valkey/values.yaml");
    assert_eq!(state["architecture"], "replication");
    assert_eq!(state["auth"]["enabled"], true);
    assert!(
        state["primary"]["configuration"]
            .as_str()
            .unwrap()
            .contains("maxmemory-policy noeviction")
    );
    let cache = values("deploy/k8s/stateful/valkey/cache-values.yaml");
    assert_eq!(cache["auth"]["enabled"], true);
    assert!(
        cache["primary"]["configuration"]
            .as_str()
            .unwrap()
            .contains("maxmemory-policy allkeys-lru")
    );
}

#[test]
fn postgres_shards_keep_synchronous_durable_commits() {
    for shard in ["shard-0", "shard-1"] {
        let v = values(&format!("deploy/k8s/stateful/postgres/{shard}.yaml"));
        assert_eq!(v["kind"], "Cluster");
        assert_eq!(v["spec"]["instances"], 3);
        // postproc acks after its commit: a commit must survive the primary.
        assert_eq!(
            v["spec"]["postgresql"]["parameters"]["synchronous_commit"],
            "on"
        );
        assert_eq!(v["spec"]["postgresql"]["synchronous"]["number"], 1);
        assert_eq!(
            v["spec"]["inheritedMetadata"]["labels"]["keel.dev/role"],
            "database"
        );
    }
}

/// The series and label values the canary analysis queries.
fn analysis_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for service in ["gateway", "inference"] {
        let path = repo_root().join(format!("deploy/k8s/base/{service}/analysis.yaml"));
        let template = &read_documents(&path).unwrap()[0];
        for metric in template["spec"]["metrics"].as_array().unwrap() {
            out.push((
                format!("{service}/{}", metric["name"].as_str().unwrap()),
                metric["provider"]["prometheus"]["query"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            ));
        }
    }
    out
}

#[test]
fn the_canary_analysis_reads_existing_slo_rules_and_metrics() {
    let rules = read("deploy/prometheus/slo-rules.yml");
    let runtime = read("libs/runtime/src/layer.rs");
    let queries = analysis_queries();
    assert_eq!(queries.len(), 8);
    let mut burn_rates = 0;
    for (name, query) in &queries {
        for word in query.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
            if word.starts_with("slo:") {
                assert!(
                    rules.contains(&format!("record: \"{word}\"")),
                    "{name} reads {word}, which deploy/prometheus/slo-rules.yml does not record"
                );
                burn_rates += 1;
            } else if let Some(metric) = word.strip_prefix("keel_") {
                let base = metric.strip_suffix("_bucket").unwrap_or(metric).to_owned();
                assert!(
                    runtime.contains(&format!("\"keel_{base}\"")),
                    "{name} reads keel_{metric}, which libs/runtime does not export"
                );
            }
        }
        for (at, _) in query.match_indices("slo=\"") {
            let slo = &query[at + 5..];
            let slo = &slo[..slo.find('"').unwrap()];
            assert!(
                rules.contains(&format!("slo: \"{slo}\"")),
                "{name} reads the objective {slo}, which slo-rules.yml does not define"
            );
        }
    }
    assert_eq!(burn_rates, 4, "two burn rates per canary");
}
