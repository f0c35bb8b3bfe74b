//! The files delivery builds on, checked without a cluster: the Dockerfile against the repository
//! and the workspace, the CI file, the Helm values of the stateful engines, and the canary
//! analysis against the SLO rules and the metrics the code exports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use keel_deploy_check::gitlab::{self, Pipeline};
use keel_deploy_check::yaml::read_documents;
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

/// The pipeline's jobs the issue names, by name: their stage, and the command lines that define
/// them (each inner list: words that must all be on one line of the job's `before_script` or
/// `script`).
const PIPELINE_JOBS: &[(&str, &str, &[&[&str]])] = &[
    ("fmt", "build", &[&["cargo fmt --all --check"]]),
    (
        "clippy",
        "build",
        &[&["cargo clippy --workspace --all-targets --locked -- -D warnings"]],
    ),
    (
        "release-build",
        "build",
        &[&["cargo build --release --locked"]],
    ),
    (
        "unit",
        "test",
        &[&["cargo test --workspace --lib --bins --locked"]],
    ),
    ("integration", "test", &[&["cargo xtask test"]]),
    (
        "contract-tests",
        "test",
        &[&["cargo test -p keel-tests --test contracts --locked"]],
    ),
    (
        "cargo-deny",
        "security",
        &[&["cargo deny", "check", "licenses", "bans", "sources"]],
    ),
    ("sbom", "security", &[&["cargo cyclonedx", "--format json"]]),
    ("fuzz", "security", &[&["cargo xtask fuzz"]]),
    (
        "proto-breaking",
        "contract",
        &[
            &["cargo test -p keel-protocompat --locked"],
            &["cargo run -p keel-protocompat --locked -- check"],
        ],
    ),
    (
        "images",
        "package",
        &[
            &["docker buildx build", "--target", "--push"],
            &["cosign sign", "@$DIGEST"],
            &["syft", "cyclonedx-json"],
            &["cosign attest", "--type cyclonedx"],
            &["_DIGEST=$DIGEST", ">> digests.env"],
        ],
    ),
    (
        "review",
        "deploy",
        &[
            &["cd deploy/k8s/overlays/branch"],
            &["kustomize edit set image", "@$DIGEST"],
            &["kubectl apply -k ."],
        ],
    ),
    ("stop-review", "deploy", &[&["kubectl delete namespace"]]),
    (
        "promote",
        "deploy",
        &[&["cosign copy", "@$DIGEST", "$RELEASE_REGISTRY/"]],
    ),
    (
        "staging-canary",
        "deploy",
        &[
            &["cd \"deploy/k8s/overlays/staging/$SERVICE\""],
            &[
                "kustomize edit set image",
                "=$RELEASE_REGISTRY/$SERVICE@$DIGEST",
            ],
            &["kubectl apply -k ."],
            &["wait_ready keel-staging"],
        ],
    ),
    (
        "prod-canary",
        "deploy",
        &[
            &["cd \"deploy/k8s/overlays/prod/$SERVICE\""],
            &[
                "kustomize edit set image",
                "=$RELEASE_REGISTRY/$SERVICE@$DIGEST",
            ],
            &["kubectl apply -k ."],
            &["wait_ready keel-prod"],
        ],
    ),
];

const MR_PIPELINE: &str = "$CI_PIPELINE_SOURCE == \"merge_request_event\"";
const DEFAULT_BRANCH: &str = "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH";

/// The service targets of the Dockerfile: its stages other than `builder` and `runtime`.
fn dockerfile_services(dockerfile: &str) -> BTreeSet<String> {
    dockerfile::logical_lines(dockerfile)
        .iter()
        .filter(|l| l.to_ascii_uppercase().starts_with("FROM "))
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| w.eq_ignore_ascii_case("AS"))?;
            words.get(at + 1).map(|s| (*s).to_owned())
        })
        .filter(|s| s != "builder" && s != "runtime")
        .collect()
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_gitlab_ci_file_parses() {
    let pipeline = Pipeline::parse(".gitlab-ci.yml", &read(".gitlab-ci.yml")).unwrap();

    // Stages: exactly these, in this order.
    assert_eq!(
        pipeline.stages,
        ["build", "test", "security", "contract", "package", "deploy"]
    );

    // Every job runs something, in a declared stage; `needs` only name existing jobs of the
    // same or an earlier stage.
    assert!(!pipeline.jobs.is_empty(), "no job in .gitlab-ci.yml");
    for (name, job) in &pipeline.jobs {
        assert!(
            job.get("script").is_some() || job.get("trigger").is_some(),
            "job {name} has no script"
        );
        // GitLab refuses `when`, `only` or `except` beside `rules`.
        if job.get("rules").is_some() {
            for keyword in ["when", "only", "except"] {
                assert!(
                    job.get(keyword).is_none(),
                    "job {name} has both rules and {keyword}"
                );
            }
        }
    }
    let problems = pipeline.ordering_problems();
    assert!(
        problems.is_empty(),
        "stage order:\n  {}",
        problems.join("\n  ")
    );

    // The jobs the issue names, each running its defining command.
    for (name, stage, lines) in PIPELINE_JOBS {
        let job = pipeline
            .job(name)
            .unwrap_or_else(|| panic!("no job {name} in .gitlab-ci.yml"));
        assert_eq!(pipeline.stage_of(job), *stage, "stage of {name}");
        for needles in *lines {
            assert!(
                gitlab::runs(job, needles),
                "job {name} runs no line with {needles:?}; its lines:\n  {}",
                gitlab::commands(job).join("\n  ")
            );
        }
    }

    // Failing fast: fmt and clippy start at once; every job of the middle stages names what it
    // waits for instead of waiting for whole stages.
    for name in ["fmt", "clippy"] {
        assert_eq!(
            gitlab::needs(pipeline.job(name).unwrap()),
            Some(vec![]),
            "{name} must have `needs: []`"
        );
    }
    for stage in ["test", "security", "contract", "package"] {
        for name in pipeline.jobs_in(stage) {
            let needs = gitlab::needs(pipeline.job(name).unwrap()).unwrap_or_default();
            assert!(
                !needs.is_empty(),
                "job {name} (stage {stage}) declares no needs"
            );
        }
    }
    // No image is built before every check passed.
    let images = pipeline.job("images").unwrap();
    let image_needs: BTreeSet<String> = gitlab::needs(images).unwrap().into_iter().collect();
    for stage in ["build", "test", "security", "contract"] {
        for name in pipeline.jobs_in(stage) {
            assert!(
                image_needs.contains(name),
                "the images job does not wait for {name}"
            );
        }
    }

    // The release build runs the Dockerfile's own cargo build, word for word.
    let docker_build = gitlab::dockerfile_cargo_build(&read("Dockerfile"))
        .expect("the Dockerfile runs cargo build");
    let release = pipeline.job("release-build").unwrap();
    assert!(
        gitlab::commands(release).contains(&docker_build),
        "release-build does not run the Dockerfile's `{docker_build}`: {:?}",
        gitlab::commands(release)
    );

    // Images: built once for every Dockerfile target, signed and SBOM-attested by digest,
    // digests handed on as a dotenv report.
    let services = dockerfile_services(&read("Dockerfile"));
    assert_eq!(
        services,
        ["auth", "gateway", "inference", "postproc"]
            .map(str::to_owned)
            .into()
    );
    let loop_line = format!(
        "for SERVICE in {}; do",
        services.iter().cloned().collect::<Vec<_>>().join(" ")
    );
    assert!(
        gitlab::runs(images, &[&loop_line]),
        "the images job does not build every target ({loop_line})"
    );
    assert_eq!(images["artifacts"]["reports"]["dotenv"], "digests.env");
    assert!(
        images["id_tokens"]["SIGSTORE_ID_TOKEN"]["aud"] == "sigstore"
            || gitlab::runs(images, &["$COSIGN_PRIVATE_KEY"]),
        "the images job signs neither keyless nor with a key variable"
    );
    // Every image reference a job hands to kustomize or cosign is by digest.
    for (name, job) in &pipeline.jobs {
        for line in gitlab::commands(job) {
            let pins = [
                "kustomize edit set image",
                "cosign sign",
                "cosign attest",
                "cosign copy",
            ];
            if pins.iter().any(|p| line.contains(p)) {
                assert!(
                    line.contains("@$DIGEST") || line.contains("@sha256:"),
                    "job {name} names an image without its digest: {line}"
                );
            }
        }
    }

    // The per-merge-request environment and its stop job.
    let review = pipeline.job("review").unwrap();
    assert_eq!(gitlab::rule_conditions(review), [MR_PIPELINE]);
    assert_eq!(review["environment"]["name"], "review/$CI_COMMIT_REF_SLUG");
    assert_eq!(review["environment"]["on_stop"], "stop-review");
    assert!(review["environment"]["auto_stop_in"].is_string());
    assert!(
        gitlab::needs(review)
            .unwrap()
            .contains(&"images".to_owned())
    );
    let stop = pipeline.job("stop-review").unwrap();
    assert_eq!(stop["environment"]["name"], review["environment"]["name"]);
    assert_eq!(stop["environment"]["action"], "stop");
    assert_eq!(gitlab::rule_conditions(stop), [MR_PIPELINE]);
    assert!(gitlab::is_manual(stop));
    assert!(
        repo_root()
            .join("deploy/k8s/overlays/branch/kustomization.yaml")
            .is_file()
    );

    // Promotion and the canaries: default branch only, one job per service, production only by
    // hand and only after staging.
    for name in ["promote", "staging-canary", "prod-canary"] {
        assert_eq!(
            gitlab::rule_conditions(pipeline.job(name).unwrap()),
            [DEFAULT_BRANCH],
            "{name} must run on the default branch only"
        );
    }
    for (name, env, tier, overlay) in [
        ("staging-canary", "staging/$SERVICE", "staging", "staging"),
        ("prod-canary", "production/$SERVICE", "production", "prod"),
    ] {
        let job = pipeline.job(name).unwrap();
        assert_eq!(job["environment"]["name"], env);
        assert_eq!(job["environment"]["deployment_tier"], tier);
        let matrix = &job["parallel"]["matrix"];
        assert_eq!(
            matrix.as_array().unwrap().len(),
            1,
            "{name}: one matrix entry"
        );
        assert_eq!(
            strings(&matrix[0]["SERVICE"]),
            services,
            "{name}: per service"
        );
        for service in &services {
            let dir = format!("deploy/k8s/overlays/{overlay}/{service}");
            assert!(
                repo_root().join(&dir).join("kustomization.yaml").is_file(),
                "{name} deploys {dir}, which does not exist"
            );
        }
        let needs = gitlab::needs(job).unwrap();
        assert!(
            needs.contains(&"images".to_owned()),
            "{name} reads the digests"
        );
    }
    assert!(gitlab::is_manual(pipeline.job("prod-canary").unwrap()));
    assert!(!gitlab::is_manual(pipeline.job("staging-canary").unwrap()));
    assert!(
        gitlab::needs(pipeline.job("prod-canary").unwrap())
            .unwrap()
            .contains(&"staging-canary".to_owned())
    );
    assert!(
        gitlab::needs(pipeline.job("staging-canary").unwrap())
            .unwrap()
            .contains(&"promote".to_owned())
    );

    // The contract tests get PostgreSQL, Redis and NATS (JetStream) as services, at the
    // addresses the harness reads.
    let contract = pipeline.job("contract-tests").unwrap();
    let service_list = contract["services"].as_array().unwrap();
    for (image, alias) in [
        ("postgres:", "postgres"),
        ("redis:", "redis"),
        ("nats:", "nats"),
    ] {
        let service = service_list
            .iter()
            .find(|s| s["name"].as_str().is_some_and(|n| n.starts_with(image)))
            .unwrap_or_else(|| panic!("contract-tests has no {alias} service"));
        assert_eq!(service["alias"], alias);
    }
    let nats = service_list.iter().find(|s| s["alias"] == "nats").unwrap();
    assert!(
        strings(&nats["command"]).contains("-js"),
        "NATS without JetStream"
    );
    for var in [
        "KEEL_TEST_PG_URL",
        "KEEL_TEST_REDIS_URL",
        "KEEL_TEST_NATS_URL",
    ] {
        assert!(
            contract["variables"][var].is_string(),
            "contract-tests lacks {var}"
        );
    }

    // Every KEEL_* variable the pipeline sets is one the code reads.
    let readers = [
        "tests/src/lib.rs",
        "xtask/src/main.rs",
        "xtask/src/stack.rs",
        "deploy/check/src/kustomize.rs",
        "libs/slo/tests/promtool.rs",
    ]
    .map(read)
    .join("\n");
    for (name, job) in &pipeline.jobs {
        for var in job["variables"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            if var.starts_with("KEEL_") {
                assert!(
                    readers.contains(&format!("\"{var}\"")),
                    "job {name} sets {var}, which no test code reads"
                );
            }
        }
    }

    // No secret literal anywhere: jobs, templates, variables.
    let secrets = gitlab::secret_literals(&pipeline.document);
    assert!(
        secrets.is_empty(),
        "secret literals in .gitlab-ci.yml: {secrets:?}"
    );
}

/// The scanner the test above relies on does find secret literals in a pipeline.
#[test]
fn the_secret_scanner_flags_a_bad_pipeline() {
    // Assembled at run time, so that this file holds no secret-shaped literal itself.
    let aws = format!("AKIA{}", "Z7Q2W4E6R8T0Y1U3");
    let pat = format!("gl{}-{}", "pat", "Ab3".repeat(8));
    let pem = format!("-----{} OPENSSH PRIVATE KEY-----", "BEGIN");
    let bad = format!(
        r#"
stages: [deploy]
variables:
  REGISTRY_PASSWORD: hunter2
  REGISTRY_USER: deployer
.tpl:
  variables:
    AWS_ACCESS_KEY_ID: {aws}
deploy:
  stage: deploy
  extends: .tpl
  variables:
    GITLAB_TOKEN: $FROM_SETTINGS
  script:
    - echo "{pem}" > key
    - 'curl --header "PRIVATE-TOKEN: {pat}" https://gitlab.example.com/api/v4/projects'
    - docker login -u me -p hunter2 registry.example.com
    - psql "postgres://app:hunter2@db:5432/app"
    - export API_SECRET=abc123
"#
    );
    let pipeline = Pipeline::parse("bad.yml", &bad).unwrap();
    let found = gitlab::secret_literals(&pipeline.document);
    let mut rules: Vec<&str> = found.iter().map(|f| f.rule).collect();
    rules.sort_unstable();
    rules.dedup();
    assert_eq!(
        rules,
        [
            "aws-access-key",
            "platform-token",
            "private-key",
            "secret-assignment",
            "secret-flag",
            "secret-variable",
            "url-credentials"
        ],
        "{found:?}"
    );
    let at: BTreeSet<&str> = found.iter().map(|f| f.at.as_str()).collect();
    for place in [
        "variables.REGISTRY_PASSWORD",
        ".tpl.variables.AWS_ACCESS_KEY_ID",
        "deploy.script[0]",
        "deploy.script[1]",
        "deploy.script[2]",
        "deploy.script[3]",
        "deploy.script[4]",
    ] {
        assert!(at.contains(place), "nothing found at {place}: {found:?}");
    }
    // References, the user name and the job's own `$FROM_SETTINGS` are not findings.
    assert!(
        !at.iter()
            .any(|a| a.contains("REGISTRY_USER") || a.contains("GITLAB_TOKEN"))
    );
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
