//! The guards of the generated files: they are what the code generates, they name only metrics
//! the services export and methods `proto/` declares, and the dashboards are sound JSON.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use keel_slo::catalogue::{self, NOT_TRAFFIC, SLOS};
use keel_slo::spec::{Audience, Indicator, Methods, Service};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn root() -> &'static Path {
    Path::new(ROOT)
}

#[test]
fn committed_files_are_what_the_code_generates() {
    let stale = keel_slo::stale(root()).unwrap();
    assert!(
        stale.is_empty(),
        "generated files differ from libs/slo: {stale:?}\nregenerate them with `cargo run -p keel-slo -- write .`"
    );
}

#[test]
fn generation_is_deterministic() {
    assert_eq!(keel_slo::generate(), keel_slo::generate());
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every metric the code records: (name, is a histogram), from the `metrics` macros under
/// `libs/` and `services/`.
fn exported_metrics() -> BTreeSet<(String, bool)> {
    let mut files = Vec::new();
    for dir in ["libs", "services"] {
        rust_files(&root().join(dir), &mut files);
    }
    let mut out = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (macro_name, histogram) in [
            ("counter!(", false),
            ("gauge!(", false),
            ("histogram!(", true),
        ] {
            for (at, _) in text.match_indices(macro_name) {
                let rest = text[at + macro_name.len()..].trim_start();
                if let Some((name, _)) = rest.strip_prefix('"').and_then(|r| r.split_once('"')) {
                    out.insert((name.to_owned(), histogram));
                }
            }
        }
    }
    out
}

/// `keel_…` names in PromQL text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(found) = text[i..].find("keel_") {
        let start = i + found;
        let word_start =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if word_start {
            out.insert(text[start..end].to_owned());
        }
        i = end;
    }
    out
}

fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            out.push(q.to_owned());
        }
    }
    out
}

#[test]
fn every_metric_named_is_exported_by_the_code() {
    let exported = exported_metrics();
    assert!(exported.contains(&("keel_rpc_requests_total".to_owned(), false)));
    let is_exported = |name: &str| {
        exported.contains(&(name.to_owned(), false))
            || exported.contains(&(name.to_owned(), true))
            || ["_bucket", "_count", "_sum"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|base| exported.contains(&(base.to_owned(), true)))
            })
    };
    let mut texts = Vec::new();
    for file in keel_slo::generate() {
        if file.path.ends_with(".json") {
            let dashboard: serde_json::Value = serde_json::from_str(&file.contents).unwrap();
            texts.extend(dashboard_queries(&dashboard));
        } else {
            texts.push(file.contents);
        }
    }
    let mut unknown = BTreeSet::new();
    for text in &texts {
        unknown.extend(metric_names(text).into_iter().filter(|n| !is_exported(n)));
    }
    assert!(
        unknown.is_empty(),
        "named in the generated files but recorded nowhere under libs/ or services/: {unknown:?}"
    );
}

#[test]
fn latency_thresholds_are_bucket_boundaries() {
    for slo in SLOS {
        if let Indicator::Latency { threshold, .. } = slo.indicator {
            assert!(
                keel_telemetry::DURATION_BUCKETS
                    .iter()
                    .any(|b| b.to_string() == threshold.seconds()),
                "{}: {} s is not a bucket of keel_telemetry::DURATION_BUCKETS, so the histogram cannot tell faster from slower",
                slo.name,
                threshold.seconds()
            );
        }
    }
}

/// (package-qualified service, method) of every rpc under `proto/keel`.
fn declared_rpcs() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "proto") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join("proto/keel"), &mut files);
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let (mut package, mut service) = (String::new(), String::new());
        for line in text.lines().map(str::trim) {
            if let Some(p) = line.strip_prefix("package ") {
                package = p.trim_end_matches(';').trim().to_owned();
            } else if let Some(s) = line.strip_prefix("service ") {
                service = format!("{package}.{}", s.trim_end_matches('{').trim());
            } else if let Some(r) = line.strip_prefix("rpc ") {
                let method = r.split('(').next().unwrap().trim().to_owned();
                out.push((service.clone(), method));
            }
        }
    }
    assert!(
        out.len() > 20,
        "found only {} rpcs under proto/keel",
        out.len()
    );
    out
}

#[test]
fn every_method_named_is_declared_and_unambiguous_in_its_package() {
    let rpcs = declared_rpcs();
    for slo in SLOS {
        let groups = match slo.indicator {
            Indicator::Availability(Methods::Only(g))
            | Indicator::Latency {
                methods: Methods::Only(g),
                ..
            } => g,
            _ => continue,
        };
        for group in groups {
            let package = group.grpc_service.rsplit_once('.').unwrap().0;
            for method in group.methods {
                assert!(
                    rpcs.contains(&(group.grpc_service.to_owned(), (*method).to_owned())),
                    "{}: {}/{method} is not declared under proto/keel",
                    slo.name,
                    group.grpc_service
                );
                // The `method` label carries no service: the name must be unique in the package.
                let same_name: Vec<_> = rpcs
                    .iter()
                    .filter(|(s, m)| m == method && s.rsplit_once('.').unwrap().0 == package)
                    .collect();
                assert_eq!(
                    same_name.len(),
                    1,
                    "{method} is ambiguous in {package}: {same_name:?}"
                );
            }
        }
    }
}

#[test]
fn crud_and_inference_groups_are_whole_services() {
    let rpcs = declared_rpcs();
    for group in [catalogue::DOCUMENTS, catalogue::INFERENCE] {
        let declared: BTreeSet<&str> = rpcs
            .iter()
            .filter(|(s, _)| s == group.grpc_service)
            .map(|(_, m)| m.as_str())
            .collect();
        let named: BTreeSet<&str> = group.methods.iter().copied().collect();
        assert_eq!(declared, named, "{} changed", group.grpc_service);
    }
}

#[test]
fn no_keel_method_is_mistaken_for_a_probe() {
    for (service, method) in declared_rpcs() {
        assert!(
            !NOT_TRAFFIC.contains(&method.as_str()),
            "{service}/{method} would be left out of every objective as a health or reflection call"
        );
    }
}

#[test]
fn service_labels_are_the_hosts_names() {
    for service in Service::ALL {
        let lib = root().join(format!("services/{}/src/lib.rs", service.label()));
        let text = std::fs::read_to_string(&lib).unwrap();
        assert!(
            text.contains(&format!("name: \"{}\",", service.label())),
            "{} does not name its host {:?}",
            lib.display(),
            service.label()
        );
    }
}

#[test]
fn postproc_consumers_are_its_durables() {
    let mut durables = BTreeSet::new();
    let mut files = Vec::new();
    rust_files(&root().join("services/postproc/src"), &mut files);
    for file in files {
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let constant = line
                .trim()
                .strip_prefix("pub const ")
                .and_then(|rest| rest.split_once(": &str = \""));
            if let Some((name, value)) = constant
                && name.ends_with("_CONSUMER")
            {
                durables.insert(value.trim_end_matches("\";").to_owned());
            }
        }
    }
    let named: BTreeSet<String> = catalogue::POSTPROC_CONSUMERS
        .iter()
        .map(|c| (*c).to_owned())
        .collect();
    assert_eq!(named, durables);
}

#[test]
fn objectives_are_named_once_and_internal_ones_say_so() {
    let mut names = BTreeSet::new();
    for slo in SLOS {
        assert!(names.insert(slo.name), "{} twice", slo.name);
        assert!(
            slo.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{}",
            slo.name
        );
        assert_eq!(
            slo.name.starts_with("internal-"),
            slo.audience == Audience::Internal,
            "{}: internal objectives, and only they, are named internal-…",
            slo.name
        );
    }
    let alerts: BTreeSet<String> = SLOS.iter().map(|s| s.alert_name()).collect();
    assert_eq!(alerts.len(), SLOS.len());
}

#[test]
fn dashboards_are_sound() {
    for service in Service::ALL {
        let path = root().join(format!("deploy/grafana/{}.json", service.label()));
        let text = std::fs::read_to_string(&path).unwrap();
        let d: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        assert_eq!(d["uid"], format!("keel-{}", service.label()));
        let vars = d["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter().any(|v| v["name"] == "datasource"
                && v["type"] == "datasource"
                && v["query"] == "prometheus"),
            "{}: no datasource variable",
            path.display()
        );
        let mut ids = BTreeSet::new();
        let panels = d["panels"].as_array().unwrap();
        for panel in panels {
            assert!(
                ids.insert(panel["id"].as_u64().unwrap()),
                "{}: id reused",
                path.display()
            );
            if panel["type"] == "row" {
                continue;
            }
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
            let targets = panel["targets"].as_array().unwrap();
            assert!(
                !targets.is_empty(),
                "{}: {} has no query",
                path.display(),
                panel["title"]
            );
            for t in targets {
                assert_eq!(t["datasource"]["uid"], "${datasource}");
                assert!(!t["expr"].as_str().unwrap().is_empty());
            }
        }
        let queries = dashboard_queries(&d).join("\n");
        for needed in [
            "keel_rpc_requests_total",
            "keel_rpc_duration_seconds_bucket",
            "keel_rpc_in_flight",
        ] {
            assert!(
                queries.contains(needed),
                "{}: no {needed} panel",
                path.display()
            );
        }
        for slo in catalogue::of(service) {
            assert!(
                queries.contains(&format!("slo=\"{}\"", slo.name)),
                "{}: no panel for {}",
                path.display(),
                slo.name
            );
        }
    }
}
