//! One Grafana dashboard per service: RED (rate, errors by code, duration quantiles from the
//! histograms), in flight and shed calls, readiness, the service's objectives (error ratios and
//! burn rates from the recorded rules) and its own metrics (breakers, rate limits, cache, models,
//! consumers).
//!
//! Every panel queries the `datasource` variable; the `instance` variable scopes the metrics that
//! carry no `service` label (breakers, outbox, consumers, `keel_ready`) to this service's
//! processes.

use serde_json::{Value, json};

use crate::catalogue::{self, NOT_TRAFFIC, SERVER_FAULT_CODES};
use crate::promql::{RPC_DURATION, RPC_REQUESTS, RPC_SHED, method_matcher, record_name};
use crate::spec::{Methods, POLICIES, Service, Slo, W1D, W1H, W3D, W5M, W6H};

/// The dashboard's stable uid.
pub fn uid(service: Service) -> String {
    format!("keel-{}", service.label())
}

/// A query and its legend.
struct Query {
    expr: String,
    legend: String,
}

fn q(expr: impl Into<String>, legend: impl Into<String>) -> Query {
    Query {
        expr: expr.into(),
        legend: legend.into(),
    }
}

/// A time series panel.
struct Panel {
    title: String,
    description: String,
    unit: &'static str,
    queries: Vec<Query>,
    /// Threshold lines (value, colour) over a green base.
    lines: Vec<(String, &'static str)>,
}

fn panel(title: impl Into<String>, unit: &'static str, queries: Vec<Query>) -> Panel {
    Panel {
        title: title.into(),
        description: String::new(),
        unit,
        queries,
        lines: Vec::new(),
    }
}

impl Panel {
    fn about(mut self, description: impl Into<String>) -> Panel {
        self.description = description.into();
        self
    }
}

struct Row {
    title: String,
    panels: Vec<Panel>,
}

const RATE: &str = "$__rate_interval";

fn datasource() -> Value {
    json!({"type": "prometheus", "uid": "${datasource}"})
}

/// `{service="…",instance=~"$instance",method!~"Check|…"}` plus `extra`.
fn rpc(service: Service, extra: &str) -> String {
    let mut m = format!(
        "service=\"{}\",instance=~\"$instance\",{}",
        service.label(),
        method_matcher(Methods::Served)
    );
    if !extra.is_empty() {
        m.push(',');
        m.push_str(extra);
    }
    format!("{{{m}}}")
}

/// `{instance=~"$instance"}` plus `extra`.
fn inst(extra: &str) -> String {
    if extra.is_empty() {
        "{instance=~\"$instance\"}".to_owned()
    } else {
        format!("{{instance=~\"$instance\",{extra}}}")
    }
}

fn quantile(q: &str, metric: &str, selector: &str, by: &str) -> String {
    let by = if by.is_empty() {
        "le".to_owned()
    } else {
        format!("le, {by}")
    };
    format!("histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket{selector}[{RATE}])))")
}

fn red(service: Service) -> Row {
    let all = rpc(service, "");
    let faults = rpc(
        service,
        &format!("code=~\"{}\"", SERVER_FAULT_CODES.join("|")),
    );
    Row {
        title: "Calls (RED)".into(),
        panels: vec![
            panel(
                "Calls by method",
                "reqps",
                vec![q(
                    format!("sum by (method) (rate({RPC_REQUESTS}{all}[{RATE}]))"),
                    "{{method}}",
                )],
            )
            .about(format!(
                "Calls answered per second. Health checks and reflection ({}) are left out.",
                NOT_TRAFFIC.join(", ")
            )),
            panel(
                "Errors by code",
                "reqps",
                vec![q(
                    format!(
                        "sum by (code) (rate({RPC_REQUESTS}{}[{RATE}]))",
                        rpc(service, "code!=\"OK\"")
                    ),
                    "{{code}}",
                )],
            )
            .about("Every code but OK: client errors (INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED, RESOURCE_EXHAUSTED…) and server faults. A stream that fails after its headers is counted as OK."),
            panel(
                "Server-fault ratio",
                "percentunit",
                vec![
                    q(
                        format!(
                            "sum(rate({RPC_REQUESTS}{faults}[{RATE}])) / sum(rate({RPC_REQUESTS}{all}[{RATE}]))"
                        ),
                        "all methods",
                    ),
                    q(
                        format!(
                            "sum by (method) (rate({RPC_REQUESTS}{faults}[{RATE}])) / sum by (method) (rate({RPC_REQUESTS}{all}[{RATE}]))"
                        ),
                        "{{method}}",
                    ),
                ],
            )
            .about(format!(
                "Share of calls answered with a server fault ({}).",
                SERVER_FAULT_CODES.join(", ")
            )),
            panel(
                "Duration quantiles",
                "s",
                ["0.5", "0.95", "0.99"]
                    .iter()
                    .zip(["p50", "p95", "p99"])
                    .map(|(p, legend)| q(quantile(p, RPC_DURATION, &all, ""), legend))
                    .collect(),
            )
            .about("From the keel_rpc_duration_seconds histogram (buckets of keel_telemetry::DURATION_BUCKETS); interpolated within a bucket. A streamed call's duration ends at its response headers."),
            panel(
                "p95 duration by method",
                "s",
                vec![q(quantile("0.95", RPC_DURATION, &all, "method"), "{{method}}")],
            ),
            panel(
                "In flight",
                "short",
                vec![q(
                    format!(
                        "sum by (instance) (keel_rpc_in_flight{{service=\"{}\",instance=~\"$instance\"}})",
                        service.label()
                    ),
                    "{{instance}}",
                )],
            )
            .about("Calls holding a slot, until their response body ends (a stream holds one while it streams)."),
            panel(
                "Shed at capacity",
                "reqps",
                vec![q(
                    format!(
                        "sum by (instance) (rate({RPC_SHED}{{service=\"{}\",instance=~\"$instance\"}}[{RATE}]))",
                        service.label()
                    ),
                    "{{instance}}",
                )],
            )
            .about("Calls refused at once with UNAVAILABLE because KEEL_<SVC>_MAX_IN_FLIGHT were in flight; not counted in the calls above."),
            panel(
                "Ready",
                "short",
                vec![q(format!("keel_ready{}", inst("")), "{{instance}}")],
            )
            .about("1 while every readiness check passes."),
        ],
    }
}

fn slo_row(service: Service) -> Option<Row> {
    let slos: Vec<&Slo> = catalogue::of(service).collect();
    if slos.is_empty() {
        return None;
    }
    let mut panels = Vec::new();
    for slo in slos {
        let rec = |w: crate::spec::Window| format!("{}{{slo=\"{}\"}}", record_name(w), slo.name);
        let mut ratio = panel(
            format!("{}: error ratio", slo.name),
            "percentunit",
            [W5M, W1H, W6H, W3D]
                .into_iter()
                .map(|w| q(rec(w), w.promql()))
                .collect(),
        )
        .about(format!(
            "{} ({}). The line is the error budget, {}.",
            slo.summary,
            slo.audience.label(),
            slo.target.budget()
        ));
        ratio.lines = vec![(slo.target.budget(), "red")];
        let mut burn = panel(
            format!("{}: burn rate", slo.name),
            "suffix:×",
            [W1H, W6H, W1D, W3D]
                .into_iter()
                .map(|w| q(format!("{} / {}", rec(w), slo.target.budget()), w.promql()))
                .collect(),
        )
        .about("Error ratio over the error budget: 1 spends the budget exactly over the period. Lines at the alerts' factors (page: 14.4 over 1h, 6 over 6h; ticket: 3 over 1d, 1 over 3d).");
        let colours = ["red", "orange", "yellow", "blue"];
        burn.lines = POLICIES
            .iter()
            .flat_map(|p| p.conditions)
            .zip(colours)
            .map(|(c, colour)| (c.factor(), colour))
            .collect();
        panels.push(ratio);
        panels.push(burn);
    }
    Some(Row {
        title: "Objectives".into(),
        panels,
    })
}

fn breakers(note: &str) -> Vec<Panel> {
    vec![
        panel(
            "Circuit breakers",
            "short",
            vec![q(
                format!("max by (downstream) (keel_breaker_state{})", inst("")),
                "{{downstream}}",
            )],
        )
        .about(format!("0 closed, 1 half-open, 2 open. {note}")),
        panel(
            "Breaker transitions",
            "short",
            vec![q(
                format!(
                    "sum by (downstream, to) (increase(keel_breaker_transitions_total{}[{RATE}]))",
                    inst("")
                ),
                "{{downstream}} → {{to}}",
            )],
        ),
    ]
}

fn outbox() -> Panel {
    panel(
        "Outbox rows published",
        "ops",
        vec![q(
            format!("sum(rate(keel_outbox_published_total{}[{RATE}]))", inst("")),
            "published",
        )],
    )
    .about("Outbox rows the relay published to JetStream (marked sent after the PubAck).")
}

fn own(service: Service) -> Row {
    let panels = match service {
        Service::Gateway => {
            let mut p = breakers("`inference` guards document calls, `models` the inference edge.");
            p.extend([
                panel(
                    "Retries and breaker refusals",
                    "ops",
                    vec![
                        q(
                            format!("sum(rate(keel_retries_total{}[{RATE}]))", inst("")),
                            "retries",
                        ),
                        q(
                            format!("sum(rate(keel_breaker_rejected_total{}[{RATE}]))", inst("")),
                            "refused by an open breaker",
                        ),
                    ],
                ),
                panel(
                    "Gateway's own time p95",
                    "s",
                    vec![q(
                        quantile(
                            "0.95",
                            "keel_rpc_overhead_seconds",
                            "{service=\"gateway\",instance=~\"$instance\"}",
                            "",
                        ),
                        "p95",
                    )],
                )
                .about("A call's time minus the time waiting on the upstream (admission, rate limits, encoding)."),
                panel(
                    "Rate-limit decisions",
                    "ops",
                    vec![q(
                        format!(
                            "sum by (result, source) (rate(keel_gateway_ratelimit_decisions_total{}[{RATE}]))",
                            inst("")
                        ),
                        "{{result}} ({{source}})",
                    )],
                ),
                panel(
                    "Rate limiter's Redis",
                    "short",
                    vec![
                        q(
                            format!("min(keel_gateway_ratelimit_redis_up{})", inst("")),
                            "Redis up (min over instances)",
                        ),
                        q(
                            format!(
                                "sum(rate(keel_gateway_ratelimit_fallback_total{}[{RATE}]))",
                                inst("")
                            ),
                            "in-process fallback /s",
                        ),
                        q(
                            format!(
                                "sum(rate(keel_gateway_ratelimit_leased_total{}[{RATE}]))",
                                inst("")
                            ),
                            "leased /s",
                        ),
                    ],
                ),
                panel(
                    "Admitted calls by tier",
                    "reqps",
                    vec![q(
                        format!(
                            "sum by (tier) (rate(keel_gateway_admitted_total{}[{RATE}]))",
                            inst("")
                        ),
                        "{{tier}}",
                    )],
                ),
                panel(
                    "Revocation not checked",
                    "ops",
                    vec![q(
                        format!(
                            "sum(rate(keel_gateway_revocation_unchecked_total{}[{RATE}]))",
                            inst("")
                        ),
                        "unchecked",
                    )],
                )
                .about("Tokens admitted without the revocation check because Redis was away."),
            ]);
            p
        }
        Service::Inference => {
            let mut p = vec![
                panel(
                    "Answer cache",
                    "ops",
                    vec![q(
                        format!(
                            "sum by (result) (rate(keel_inference_cache_total{}[{RATE}]))",
                            inst("")
                        ),
                        "{{result}}",
                    )],
                ),
                panel(
                    "Answer cache hit ratio",
                    "percentunit",
                    vec![q(
                        format!(
                            "sum(rate(keel_inference_cache_total{}[{RATE}])) / sum(rate(keel_inference_cache_total{}[{RATE}]))",
                            inst("result=\"hit\""),
                            inst("")
                        ),
                        "hits",
                    )],
                ),
            ];
            p.extend(breakers("`model:<version>` per model version, `redis:cache` for the answer cache."));
            p.extend([
                panel(
                    "Model calls by version",
                    "ops",
                    vec![q(
                        format!(
                            "sum by (model_version) (rate(keel_inference_model_calls_total{}[{RATE}]))",
                            inst("")
                        ),
                        "{{model_version}}",
                    )],
                ),
                panel(
                    "Fallbacks",
                    "ops",
                    vec![q(
                        format!(
                            "sum by (from, to) (rate(keel_inference_fallbacks_total{}[{RATE}]))",
                            inst("")
                        ),
                        "{{from}} → {{to}}",
                    )],
                ),
                panel(
                    "Time to first token p95 by version",
                    "s",
                    vec![q(
                        quantile(
                            "0.95",
                            "keel_inference_time_to_first_token_seconds",
                            &inst(""),
                            "model_version",
                        ),
                        "{{model_version}}",
                    )],
                ),
                panel(
                    "Tokens",
                    "short",
                    vec![q(
                        format!(
                            "sum by (direction) (rate(keel_inference_tokens_total{}[{RATE}]))",
                            inst("")
                        ),
                        "{{direction}}",
                    )],
                )
                .about("Tokens per second, input and output."),
                panel(
                    "Generations by outcome",
                    "ops",
                    vec![q(
                        format!(
                            "sum by (outcome) (rate(keel_inference_generations_total{}[{RATE}]))",
                            inst("")
                        ),
                        "{{outcome}}",
                    )],
                )
                .about("`cancelled`: the caller left before the answer was complete."),
                panel(
                    "Events",
                    "ops",
                    vec![
                        q(
                            format!("sum(rate(keel_outbox_published_total{}[{RATE}]))", inst("")),
                            "outbox rows published",
                        ),
                        q(
                            format!(
                                "sum(rate(keel_inference_events_failed_total{}[{RATE}]))",
                                inst("")
                            ),
                            "inference events not written",
                        ),
                        q(
                            format!(
                                "sum(rate(keel_inference_event_batch_size_sum{}[{RATE}])) / sum(rate(keel_inference_event_batch_size_count{}[{RATE}]))",
                                inst(""),
                                inst("")
                            ),
                            "mean event batch size",
                        ),
                    ],
                ),
                panel(
                    "Prefetched answers",
                    "ops",
                    vec![q(
                        format!("sum(rate(keel_inference_prefetched_total{}[{RATE}]))", inst("")),
                        "prefetched",
                    )],
                )
                .about("Answers to tenants' top prompts computed ahead (warm-up and the hourly prefetch)."),
            ]);
            p
        }
        Service::Postproc => vec![
            panel(
                "Messages by consumer and outcome",
                "ops",
                vec![q(
                    format!(
                        "sum by (consumer, outcome) (rate(keel_consumer_messages_total{}[{RATE}]))",
                        inst("")
                    ),
                    "{{consumer}} {{outcome}}",
                )],
            )
            .about("acked (effect committed), retried (transient failure, nak with backoff), dead_lettered, released (at shutdown, not started)."),
            panel(
                "Dead-lettered by consumer",
                "ops",
                vec![q(
                    format!(
                        "sum by (consumer) (rate(keel_consumer_messages_total{}[{RATE}]))",
                        inst("outcome=\"dead_lettered\"")
                    ),
                    "{{consumer}}",
                )],
            ),
            panel(
                "Handling duration p95 by consumer",
                "s",
                vec![q(
                    quantile("0.95", "keel_consumer_duration_seconds", &inst(""), "consumer"),
                    "{{consumer}}",
                )],
            ),
            panel(
                "Mean batch size by consumer",
                "short",
                vec![q(
                    format!(
                        "sum by (consumer) (rate(keel_consumer_batch_size_sum{}[{RATE}])) / sum by (consumer) (rate(keel_consumer_batch_size_count{}[{RATE}]))",
                        inst(""),
                        inst("")
                    ),
                    "{{consumer}}",
                )],
            )
            .about("A mean: the histogram has the duration buckets (up to 30), too coarse for batch sizes."),
            panel(
                "Duplicates by consumer",
                "ops",
                vec![q(
                    format!(
                        "sum by (consumer) (rate(keel_consumer_duplicates_total{}[{RATE}]))",
                        inst("")
                    ),
                    "{{consumer}}",
                )],
            )
            .about("Redeliveries recognised by their dedupe record and acked without a second effect."),
            panel(
                "Progress acks",
                "ops",
                vec![q(
                    format!(
                        "sum by (consumer) (rate(keel_consumer_progress_acks_total{}[{RATE}]))",
                        inst("")
                    ),
                    "{{consumer}}",
                )],
            )
            .about("In-progress acks sent while a long batch is still being handled."),
        ],
        Service::Auth => {
            let tokens = Methods::Only(catalogue::AUTH_TOKEN_PATHS);
            let sel = format!(
                "{{service=\"auth\",instance=~\"$instance\",{}}}",
                method_matcher(tokens)
            );
            vec![
                panel(
                    "Token paths by method and code",
                    "reqps",
                    vec![q(
                        format!("sum by (method, code) (rate({RPC_REQUESTS}{sel}[{RATE}]))"),
                        "{{method}} {{code}}",
                    )],
                )
                .about(format!("Token issuing and key lookups: {}.", tokens.names().join(", "))),
                panel(
                    "Token paths p95 by method",
                    "s",
                    vec![q(quantile("0.95", RPC_DURATION, &sel, "method"), "{{method}}")],
                ),
                outbox().about("Audit events through the outbox."),
            ]
        }
    };
    Row {
        title: format!("{} internals", service.label()),
        panels,
    }
}

fn panel_json(p: &Panel, id: u64, x: u64, y: u64) -> Value {
    let targets: Vec<Value> = p
        .queries
        .iter()
        .zip('A'..='Z')
        .map(|(query, ref_id)| {
            json!({
                "datasource": datasource(),
                "expr": query.expr,
                "legendFormat": query.legend,
                "range": true,
                "refId": ref_id.to_string(),
            })
        })
        .collect();
    let mut steps = vec![json!({"color": "green", "value": null})];
    let mut lines = p.lines.clone();
    lines.sort_by(|a, b| {
        let (a, b) = (a.0.parse::<f64>(), b.0.parse::<f64>());
        match (a, b) {
            (Ok(a), Ok(b)) => a.total_cmp(&b),
            _ => std::cmp::Ordering::Equal,
        }
    });
    for (value, colour) in &lines {
        let v: Value = serde_json::from_str(value).unwrap_or(Value::Null);
        steps.push(json!({"color": colour, "value": v}));
    }
    let threshold_style = if p.lines.is_empty() { "off" } else { "line" };
    json!({
        "datasource": datasource(),
        "description": p.description,
        "fieldConfig": {
            "defaults": {
                "custom": {
                    "drawStyle": "line",
                    "fillOpacity": 10,
                    "lineWidth": 1,
                    "showPoints": "never",
                    "spanNulls": false,
                    "thresholdsStyle": {"mode": threshold_style},
                },
                "thresholds": {"mode": "absolute", "steps": steps},
                "unit": p.unit,
            },
            "overrides": [],
        },
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "id": id,
        "options": {
            "legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": true},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets,
        "title": p.title,
        "type": "timeseries",
    })
}

/// The dashboard of `service`, as JSON.
pub fn dashboard(service: Service) -> Value {
    let mut rows = vec![red(service)];
    rows.extend(slo_row(service));
    rows.push(own(service));
    let mut panels = Vec::new();
    let (mut id, mut y) = (1u64, 0u64);
    for row in rows {
        panels.push(json!({
            "collapsed": false,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            "id": id,
            "panels": [],
            "title": row.title,
            "type": "row",
        }));
        id += 1;
        y += 1;
        for (i, p) in row.panels.iter().enumerate() {
            let x = if i % 2 == 0 { 0 } else { 12 };
            panels.push(panel_json(p, id, x, y));
            id += 1;
            if i % 2 == 1 || i + 1 == row.panels.len() {
                y += 8;
            }
        }
    }
    let instances = format!(
        "label_values({RPC_REQUESTS}{{service=\"{}\"}}, instance)",
        service.label()
    );
    json!({
        "annotations": {"list": []},
        "description": format!("keel {}: generated by keel-slo (libs/slo); do not edit, run `cargo run -p keel-slo -- write .`", service.label()),
        "editable": true,
        "graphTooltip": 1,
        "links": [],
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["keel", service.label()],
        "templating": {"list": [
            {
                "current": {},
                "hide": 0,
                "includeAll": false,
                "label": "Data source",
                "multi": false,
                "name": "datasource",
                "options": [],
                "query": "prometheus",
                "refresh": 1,
                "regex": "",
                "type": "datasource",
            },
            {
                "allValue": ".*",
                "current": {},
                "datasource": datasource(),
                "definition": instances,
                "hide": 0,
                "includeAll": true,
                "label": "Instance",
                "multi": true,
                "name": "instance",
                "options": [],
                "query": {"query": instances, "refId": "instances"},
                "refresh": 2,
                "regex": "",
                "sort": 1,
                "type": "query",
            },
        ]},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": format!("keel / {}", service.label()),
        "uid": uid(service),
        "version": 1,
    })
}
