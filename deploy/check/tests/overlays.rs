//! The Kustomize trees of deploy/k8s: every overlay renders, each service deploys alone, images
//! are pinned per overlay, only the gateway is public, secrets only come from secretKeyRefs, the
//! ports and probes agree with the configuration and the Dockerfile, and the NetworkPolicies
//! allow exactly the calls the configuration makes.
//!
//! Rendering needs `kubectl` (or `kustomize`); without it these tests fail with a message naming
//! what to install.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use keel_deploy_check::kustomize::{self, OVERLAYS, SERVICES};
use keel_deploy_check::objects::{
    containers, find, generated_config_map, host_of, of_kind, port_of,
};
use keel_deploy_check::yaml::object_name;
use keel_deploy_check::{CheckError, dockerfile, repo_root};
use serde_json::Value;

/// The overlays made of one kustomization per service.
const PER_SERVICE_OVERLAYS: &[&str] = &["dev", "staging", "prod"];

const CANARY_SERVICES: &[&str] = &["gateway", "inference"];

fn render(relative: &str) -> Vec<Value> {
    kustomize::render_k8s(relative).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn identity(obj: &Value) -> (String, String) {
    (
        obj["kind"].as_str().unwrap_or_default().to_owned(),
        obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// The service's configuration as the container sees it: its generated ConfigMap plus the
/// literal env values of its container.
fn environment(objects: &[Value], service: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let cm = generated_config_map(objects, &format!("{service}-config"))
        .unwrap_or_else(|| panic!("no {service}-config ConfigMap"));
    for (k, v) in cm["data"].as_object().unwrap() {
        env.insert(k.clone(), v.as_str().unwrap().to_owned());
    }
    let deployment = find(objects, "Deployment", service).unwrap();
    for e in containers(deployment)[0]["env"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(v) = e["value"].as_str() {
            env.insert(e["name"].as_str().unwrap().to_owned(), v.to_owned());
        }
    }
    env
}

#[test]
fn every_overlay_renders_with_every_service() {
    for overlay in OVERLAYS {
        let objects = render(&format!("overlays/{overlay}"));
        for service in SERVICES {
            for kind in [
                "Deployment",
                "Service",
                "HorizontalPodAutoscaler",
                "PodDisruptionBudget",
                "NetworkPolicy",
                "ServiceAccount",
                "PodMonitor",
            ] {
                assert!(
                    find(&objects, kind, service).is_some(),
                    "{overlay}: no {kind}/{service}"
                );
            }
            assert!(
                generated_config_map(&objects, &format!("{service}-config")).is_some(),
                "{overlay}: no {service}-config"
            );
            let canary = CANARY_SERVICES.contains(service);
            assert_eq!(
                find(&objects, "Rollout", service).is_some(),
                canary,
                "{overlay}: Rollout/{service}"
            );
            if canary {
                assert!(find(&objects, "AnalysisTemplate", &format!("{service}-canary")).is_some());
            }
        }
        let namespaces: BTreeSet<&str> = objects
            .iter()
            .filter(|o| o["kind"] != "Namespace")
            .map(|o| o["metadata"]["namespace"].as_str().unwrap_or("<none>"))
            .collect();
        assert_eq!(namespaces.len(), 1, "{overlay}: namespaces {namespaces:?}");
    }
    // The base and the stateful engines render too.
    assert!(!render("base").is_empty());
    assert!(!render("stateful").is_empty());
}

#[test]
fn each_service_deploys_alone() {
    for overlay in PER_SERVICE_OVERLAYS {
        let whole: BTreeSet<_> = render(&format!("overlays/{overlay}"))
            .iter()
            .map(identity)
            .collect();
        let mut union = BTreeSet::new();
        for service in SERVICES {
            let objects = render(&format!("overlays/{overlay}/{service}"));
            for obj in &objects {
                assert_eq!(
                    obj["metadata"]["labels"]["app.kubernetes.io/name"],
                    *service,
                    "{overlay}/{service} renders {} of another service",
                    object_name(obj)
                );
                for c in containers(obj) {
                    let image = c["image"].as_str().unwrap();
                    assert!(
                        image.contains(&format!("/keel/{service}@")),
                        "{overlay}/{service} runs {image}"
                    );
                }
                assert!(union.insert(identity(obj)), "{} twice", object_name(obj));
            }
        }
        assert_eq!(
            union, whole,
            "{overlay}: the environment is not the sum of its services"
        );
    }
}

#[test]
fn every_image_is_pinned_by_an_overlay_digest() {
    let placeholder = format!("@sha256:{}", "0".repeat(64));
    for overlay in OVERLAYS {
        let objects = render(&format!("overlays/{overlay}"));
        let mut digests = BTreeMap::new();
        for obj in &objects {
            for c in containers(obj) {
                let image = c["image"].as_str().unwrap();
                let (name, digest) = image
                    .split_once("@sha256:")
                    .unwrap_or_else(|| panic!("{overlay}: {image} has no digest"));
                assert!(
                    digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{overlay}: {image}"
                );
                assert!(
                    !image.ends_with(&placeholder),
                    "{overlay}: {} still runs the base's placeholder {image}",
                    object_name(obj)
                );
                // One digest per image within an environment.
                let previous = digests.insert(name.to_owned(), digest.to_owned());
                assert!(
                    previous.is_none_or(|p| p == digest),
                    "{overlay}: {name} at two digests"
                );
            }
        }
        assert_eq!(digests.len(), SERVICES.len(), "{overlay}: {digests:?}");
    }
}

#[test]
fn only_the_gateway_is_public() {
    for overlay in OVERLAYS {
        let objects = render(&format!("overlays/{overlay}"));
        for svc in of_kind(&objects, "Service") {
            assert_eq!(
                svc["spec"]["type"],
                "ClusterIP",
                "{overlay}: {}",
                object_name(svc)
            );
        }
        let ingresses = of_kind(&objects, "Ingress");
        assert_eq!(ingresses.len(), 2, "{overlay}: the gRPC and HTTP entries");
        for ing in ingresses {
            let annotations = &ing["metadata"]["annotations"];
            assert_eq!(annotations["keel.dev/auth"], "required");
            assert_eq!(annotations["keel.dev/rate-limit"], "tiered");
            for rule in ing["spec"]["rules"].as_array().unwrap() {
                for path in rule["http"]["paths"].as_array().unwrap() {
                    assert_eq!(path["backend"]["service"]["name"], "gateway");
                }
            }
        }
    }
}

#[test]
fn secrets_come_only_from_secret_key_refs() {
    for overlay in OVERLAYS {
        let objects = render(&format!("overlays/{overlay}"));
        assert!(
            of_kind(&objects, "Secret").is_empty(),
            "{overlay}: Secret objects in the manifests"
        );
        for obj in &objects {
            for c in containers(obj) {
                let mut from_secrets = BTreeSet::new();
                for e in c["env"].as_array().into_iter().flatten() {
                    let name = e["name"].as_str().unwrap();
                    if let Some(from) = e["valueFrom"].as_object() {
                        assert!(
                            from.contains_key("secretKeyRef"),
                            "{overlay}: {} takes {name} from {from:?}",
                            object_name(obj)
                        );
                        from_secrets.insert(name.to_owned());
                    }
                    // A literal may only be composed of variables defined above it from
                    // secrets ($(VAR)), never of a secret itself.
                    let value = e["value"].as_str().unwrap_or_default();
                    for reference in value.split("$(").skip(1) {
                        let var = &reference[..reference.find(')').unwrap()];
                        assert!(
                            from_secrets.contains(var),
                            "{overlay}: {} composes {name} from {var}, not a secretKeyRef above it",
                            object_name(obj)
                        );
                    }
                }
                for from in c["envFrom"].as_array().into_iter().flatten() {
                    assert!(
                        from.get("configMapRef").is_some(),
                        "{overlay}: {} imports {from}: secrets are taken one key at a time",
                        object_name(obj)
                    );
                }
            }
        }
    }
}

/// `KEEL_<SERVICE>_<WHAT>_ADDR=0.0.0.0:<port>` of the Dockerfile's ENV instructions.
fn dockerfile_addresses() -> BTreeMap<String, u16> {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    let mut out = BTreeMap::new();
    for line in dockerfile::logical_lines(&text) {
        if !line.starts_with("ENV") {
            continue;
        }
        for word in line.split_whitespace() {
            if let Some((key, value)) = word.split_once('=')
                && key.ends_with("_ADDR")
            {
                out.insert(key.to_owned(), port_of(value).unwrap());
            }
        }
    }
    out
}

#[test]
fn ports_and_probes_agree_with_the_configuration_and_the_dockerfile() {
    let from_dockerfile = dockerfile_addresses();
    assert!(
        from_dockerfile.len() >= 8,
        "Dockerfile addresses: {from_dockerfile:?}"
    );
    for overlay in OVERLAYS {
        let objects = render(&format!("overlays/{overlay}"));
        for service in SERVICES {
            let prefix = format!("KEEL_{}", service.to_uppercase());
            let env = environment(&objects, service);
            let port = |what: &str| -> u16 {
                let key = format!("{prefix}_{what}_ADDR");
                let addr = env
                    .get(&key)
                    .unwrap_or_else(|| panic!("{overlay}: {service} does not set {key}"));
                assert!(addr.starts_with("0.0.0.0:"), "{key}={addr}: not reachable");
                let port = port_of(addr).unwrap();
                if let Some(image_default) = from_dockerfile.get(&key) {
                    assert_eq!(port, *image_default, "{key}: manifests vs Dockerfile");
                }
                port
            };
            let deployment = find(&objects, "Deployment", service).unwrap();
            let container = containers(deployment)[0];
            let container_ports: BTreeMap<&str, u64> = container["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap(),
                        p["containerPort"].as_u64().unwrap(),
                    )
                })
                .collect();
            let grpc = port("GRPC");
            let admin = port("ADMIN");
            assert_eq!(container_ports["grpc"], u64::from(grpc), "{service}");
            assert_eq!(container_ports["admin"], u64::from(admin), "{service}");
            if matches!(*service, "gateway" | "auth") {
                assert_eq!(
                    container_ports["http"],
                    u64::from(port("HTTP")),
                    "{service}"
                );
            }
            // Readiness: gRPC health on the gRPC port; liveness and startup: /livez on admin.
            assert_eq!(
                container["readinessProbe"]["grpc"]["port"],
                u64::from(grpc),
                "{service}"
            );
            for probe in ["livenessProbe", "startupProbe"] {
                assert_eq!(container[probe]["httpGet"]["path"], "/livez", "{service}");
                assert_eq!(container[probe]["httpGet"]["port"], "admin", "{service}");
            }
            // The Service forwards each named port to the container port of that name.
            let svc = find(&objects, "Service", service).unwrap();
            for p in svc["spec"]["ports"].as_array().unwrap() {
                let name = p["name"].as_str().unwrap();
                assert_eq!(p["targetPort"], name, "{service}");
                assert_eq!(p["port"].as_u64(), Some(container_ports[name]), "{service}");
            }
            let monitor = find(&objects, "PodMonitor", service).unwrap();
            assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["port"], "admin");
        }
    }
}

/// What a service's configuration says it talks to: keel services (by Service name and port)
/// and the infrastructure (`database`, `nats`, or the Redis release name).
fn calls(env: &BTreeMap<String, String>) -> BTreeSet<(String, u16)> {
    let mut out = BTreeSet::new();
    for (key, value) in env {
        if key == "KEEL_DATABASE_URLS" {
            out.insert(("database".to_owned(), 5432));
        } else if key.ends_with("_URL") && !key.starts_with("OTEL_") {
            let host = host_of(value).unwrap();
            let host = host.strip_suffix("-primary").unwrap_or(host);
            let port = port_of(value.trim_end_matches("/0")).unwrap();
            out.insert((host.to_owned(), port));
        }
    }
    out
}

/// Who a NetworkPolicy rule's peer is, in the same terms as [`calls`].
fn peer(selector: &Value) -> Option<String> {
    let labels = &selector["matchLabels"];
    if let Some(name) = labels["app.kubernetes.io/name"].as_str() {
        return Some(name.to_owned());
    }
    if labels["keel.dev/role"] == "database" {
        return Some("database".to_owned());
    }
    if let Some(instance) = labels["app.kubernetes.io/instance"].as_str() {
        return Some(
            instance
                .strip_prefix("keel-")
                .unwrap_or(instance)
                .to_owned(),
        );
    }
    None
}

fn rule_ports(rule: &Value) -> Vec<u16> {
    rule["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| u16::try_from(p["port"].as_u64().unwrap()).unwrap())
        .collect()
}

#[test]
fn network_policies_allow_exactly_the_calls_the_configuration_makes() {
    for overlay in OVERLAYS {
        let objects = render(&format!("overlays/{overlay}"));
        let mut expected_callers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for service in SERVICES {
            let wanted: BTreeSet<(String, u16)> = calls(&environment(&objects, service))
                .into_iter()
                .map(|(host, port)| {
                    let host = host.strip_prefix("keel-").unwrap_or(&host).to_owned();
                    (host, port)
                })
                .collect();
            let policy = find(&objects, "NetworkPolicy", service).unwrap();
            assert_eq!(
                policy["spec"]["policyTypes"],
                serde_json::json!(["Ingress", "Egress"])
            );
            let mut allowed = BTreeSet::new();
            let mut dns = false;
            for rule in policy["spec"]["egress"].as_array().unwrap() {
                for to in rule["to"].as_array().unwrap() {
                    if to["podSelector"]["matchLabels"]["k8s-app"] == "kube-dns" {
                        dns = true;
                    } else if to.get("namespaceSelector").is_none() {
                        let who = peer(&to["podSelector"]).unwrap();
                        for port in rule_ports(rule) {
                            allowed.insert((who.clone(), port));
                        }
                    }
                }
            }
            assert!(dns, "{overlay}: {service} cannot resolve names");
            assert_eq!(
                allowed, wanted,
                "{overlay}: {service}'s egress vs what its configuration calls"
            );
            for (host, _) in &wanted {
                if SERVICES.contains(&host.as_str()) {
                    expected_callers
                        .entry(host.clone())
                        .or_default()
                        .insert((*service).to_owned());
                }
            }
        }
        for service in SERVICES {
            let policy = find(&objects, "NetworkPolicy", service).unwrap();
            let own_grpc = containers(find(&objects, "Deployment", service).unwrap())[0]["ports"]
                [0]["containerPort"]
                .as_u64()
                .unwrap();
            let mut callers = BTreeSet::new();
            for rule in policy["spec"]["ingress"].as_array().unwrap() {
                for from in rule["from"].as_array().unwrap() {
                    if let Some(name) =
                        from["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str()
                    {
                        assert!(
                            rule_ports(rule).contains(&u16::try_from(own_grpc).unwrap()),
                            "{service}"
                        );
                        callers.insert(name.to_owned());
                    }
                }
            }
            assert_eq!(
                callers,
                expected_callers.remove(*service).unwrap_or_default(),
                "{overlay}: who may call {service}"
            );
        }
    }
}

#[test]
fn every_service_sees_the_same_shard_map() {
    for overlay in OVERLAYS {
        let objects = render(&format!("overlays/{overlay}"));
        let mut maps = BTreeSet::new();
        for service in ["auth", "inference", "postproc"] {
            let env = environment(&objects, service);
            maps.insert((
                env["KEEL_DATABASE_URLS"].clone(),
                env["KEEL_LOGICAL_SHARDS"].clone(),
            ));
        }
        assert_eq!(maps.len(), 1, "{overlay}: {maps:?}");
    }
    // The CloudNativePG clusters are the shards the services list, in order.
    let clusters: Vec<String> = of_kind(&render("stateful"), "Cluster")
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    let deployment = find(&render("base/inference"), "Deployment", "inference")
        .unwrap()
        .clone();
    let secrets: Vec<String> = containers(&deployment)[0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["valueFrom"]["secretKeyRef"]["name"].as_str())
        .filter_map(|n| n.strip_suffix("-app"))
        .map(str::to_owned)
        .collect();
    assert_eq!(clusters, secrets);
    assert!(clusters.len() >= 2, "the default is two physical shards");
}

#[test]
fn the_branch_overlay_is_ephemeral_and_seeded() {
    let objects = render("overlays/branch");
    let namespace = find(&objects, "Namespace", "keel-br-branch-slug").unwrap();
    assert_eq!(
        namespace["metadata"]["labels"]["keel.dev/ephemeral"],
        "true"
    );
    for obj in &objects {
        for c in containers(obj) {
            for e in c["env"].as_array().into_iter().flatten() {
                if let Some(name) = e["valueFrom"]["secretKeyRef"]["name"].as_str() {
                    assert!(
                        name == "keel-ephemeral" || name.starts_with("keel-pg-"),
                        "{} reads the secret {name}",
                        object_name(obj)
                    );
                }
            }
        }
    }
    let seed = find(&objects, "Job", "keel-seed").unwrap();
    let steps: Vec<String> = containers(seed)
        .iter()
        .map(|c| {
            let args: Vec<&str> = c["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            format!("{} {}", args[0], args[1])
        })
        .collect();
    assert_eq!(
        steps,
        [
            "health --addr",
            "tenant create",
            "user create",
            "login --tenant",
            "doc create"
        ]
    );
    for c in containers(seed) {
        assert_eq!(c["command"][0], "/usr/local/bin/keelctl");
    }
    assert_eq!(
        seed["spec"]["template"]["metadata"]["labels"]["keel.dev/operator"],
        "true"
    );
    // One small instance per shard, no canary.
    for cluster in of_kind(&objects, "Cluster") {
        assert_eq!(cluster["spec"]["instances"], 1);
    }
    for rollout in of_kind(&objects, "Rollout") {
        assert_eq!(
            rollout["spec"]["strategy"]["canary"]["steps"],
            serde_json::json!([])
        );
    }
}

#[test]
fn canaries_step_through_10_50_100_and_abort_on_failed_analysis() {
    for overlay in ["dev", "staging", "prod"] {
        let objects = render(&format!("overlays/{overlay}"));
        for service in CANARY_SERVICES {
            let rollout = find(&objects, "Rollout", service).unwrap();
            assert_eq!(rollout["spec"]["workloadRef"]["name"], *service);
            let canary = &rollout["spec"]["strategy"]["canary"];
            let weights: Vec<u64> = canary["steps"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|s| s["setWeight"].as_u64())
                .collect();
            assert_eq!(weights, [10, 50, 100], "{overlay}/{service}");
            assert_eq!(
                canary["analysis"]["templates"][0]["templateName"],
                format!("{service}-canary")
            );
            let deployment = find(&objects, "Deployment", service).unwrap();
            assert_eq!(
                deployment["spec"]["replicas"], 0,
                "the Rollout runs the pods"
            );
            let hpa = find(&objects, "HorizontalPodAutoscaler", service).unwrap();
            assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Rollout");
            let template =
                find(&objects, "AnalysisTemplate", &format!("{service}-canary")).unwrap();
            for metric in template["spec"]["metrics"].as_array().unwrap() {
                assert!(
                    metric["failureCondition"].is_string()
                        && metric["failureLimit"].as_u64().is_some(),
                    "{service}: {} cannot fail the analysis",
                    metric["name"]
                );
            }
        }
    }
}

/// The tests run in a child process whose PATH has no kubectl: the error must say what to
/// install.
#[test]
fn without_kubectl_the_checks_name_what_to_install() {
    const CHILD: &str = "KEEL_DEPLOY_CHECK_WITHOUT_TOOLS";
    if std::env::var_os(CHILD).is_some() {
        match kustomize::render_k8s("overlays/dev") {
            Err(e @ CheckError::ToolMissing { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("kubectl") && msg.contains("install"), "{msg}");
            }
            other => panic!("expected a missing tool, got {other:?}"),
        }
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "without_kubectl_the_checks_name_what_to_install",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .env("PATH", "/nonexistent")
        .env_remove("KEEL_TEST_KUBECTL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
