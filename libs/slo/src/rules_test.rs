//! The `promtool test rules` file: for every objective, synthetic series that burn its budget at
//! known rates (in multiples of the budget, so one set of scenarios fits every target), and the
//! alerts each must — and must not — fire.
//!
//! Every scenario also carries noise that must not count: client errors, health checks failing,
//! another service failing, retried and released messages.

use crate::catalogue::{NOT_TRAFFIC, SERVER_FAULT_CODES};
use crate::promql::{CONSUMER_MESSAGES, RPC_DURATION, RPC_REQUESTS, RPC_SHED, record_name};
use crate::rules::annotations;
use crate::spec::{Indicator, Methods, POLICIES, Service, Severity, Slo, W5M, decimal};
use crate::yaml::quoted;
use crate::{GENERATED_BY, RULES_FILE};

/// Events per minute in every scenario.
const TOTAL: u64 = 200_000;
/// Noise per minute (bad-looking events that must not count).
const NOISE: u64 = 50_000;
/// Client errors per minute, of [`TOTAL`], per code: good events for availability.
const CLIENT_ERRORS: &[(&str, u64)] = &[
    ("INVALID_ARGUMENT", 5_000),
    ("NOT_FOUND", 5_000),
    ("UNAUTHENTICATED", 5_000),
    ("RESOURCE_EXHAUSTED", 5_000),
];

/// One stretch of a scenario: this many minutes burning the budget at `burn_tenths` / 10 times
/// the sustainable rate (0 = no bad events).
#[derive(Debug, Clone, Copy)]
struct Stretch {
    minutes: u32,
    burn_tenths: u32,
}

struct Scenario {
    name: &'static str,
    stretches: &'static [Stretch],
    /// At minute, the severities firing.
    expect: &'static [(u32, &'static [Severity])],
    /// Also check the recorded 5m ratio at this minute (the burn of the stretch then running).
    ratio_at: Option<u32>,
}

const fn s(minutes: u32, burn_tenths: u32) -> Stretch {
    Stretch {
        minutes,
        burn_tenths,
    }
}

use Severity::{Page, Ticket};

/// Burns are constant from minute 0 unless said otherwise, so a window longer than the data sees
/// the same ratio as the data (Prometheus rates over what the range holds): long windows need no
/// days of input, and the tests stay fast.
const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "healthy: 0.5x the sustainable burn fires nothing",
        stretches: &[s(60, 5)],
        expect: &[(10, &[]), (60, &[])],
        ratio_at: Some(60),
    },
    Scenario {
        name: "fast burn: 16x pages at once (both page conditions) and tickets",
        stretches: &[s(10, 160)],
        expect: &[(10, &[Page, Ticket])],
        ratio_at: Some(10),
    },
    Scenario {
        name: "slow burn: 8x pages through 6x over 6h and 30m, not 14.4x",
        stretches: &[s(40, 80)],
        expect: &[(40, &[Page, Ticket])],
        ratio_at: None,
    },
    Scenario {
        name: "simmer: 4x opens a ticket (3x over 1d and 2h), no page",
        stretches: &[s(30, 40)],
        expect: &[(30, &[Ticket])],
        ratio_at: None,
    },
    Scenario {
        name: "leak: 1.5x opens a ticket (1x over 3d and 6h) only",
        stretches: &[s(30, 15)],
        expect: &[(30, &[Ticket])],
        ratio_at: None,
    },
    Scenario {
        name: "recovered: 16x for 1h pages; 40m after it stopped the short windows are clean: ticket only",
        stretches: &[s(60, 160), s(40, 0)],
        expect: &[(40, &[Page, Ticket]), (100, &[Ticket])],
        ratio_at: Some(100),
    },
];

/// Bad events per minute at `burn_tenths` for this objective.
fn bad_per_minute(slo: &Slo, burn_tenths: u32) -> u64 {
    // burn × budget × TOTAL = (tenths / 10) × (bp / 10 000) × 200 000
    u64::from(burn_tenths) * u64::from(slo.target.budget_bp()) * TOTAL / 100_000
}

/// promtool's expanding notation for a counter rising by `per_minute(stretch)` each minute,
/// from 0 at minute 0 (a sample every minute up to the end of the last stretch).
fn counter(stretches: &[Stretch], per_minute: impl Fn(Stretch) -> u64) -> String {
    let mut parts = Vec::new();
    let mut value = 0u64;
    for (i, st) in stretches.iter().enumerate() {
        let step = per_minute(*st);
        if i == 0 {
            parts.push(format!("0+{step}x{}", st.minutes));
        } else {
            parts.push(format!("{}+{step}x{}", value + step, st.minutes - 1));
        }
        value += step * u64::from(st.minutes);
    }
    parts.join(" ")
}

fn constant(stretches: &[Stretch], per_minute: u64) -> String {
    counter(stretches, |_| per_minute)
}

fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", l.join(","))
}

/// Another service, whose failures must not count.
fn elsewhere(service: Service) -> &'static str {
    Service::ALL
        .iter()
        .find(|s| **s != service)
        .map(|s| s.label())
        .unwrap_or("elsewhere")
}

/// A method the objective covers.
fn sample_method(methods: Methods) -> &'static str {
    methods.names().first().copied().unwrap_or("GetDocument")
}

/// The input series of one scenario for one objective.
fn inputs(slo: &Slo, sc: &Scenario) -> Vec<(String, String)> {
    let st = sc.stretches;
    let svc = slo.service.label();
    let bad = |s: Stretch| bad_per_minute(slo, s.burn_tenths);
    let mut out = Vec::new();
    match slo.indicator {
        Indicator::Availability(methods) => {
            let m = sample_method(methods);
            let client: u64 = CLIENT_ERRORS.iter().map(|(_, n)| n).sum();
            let shed_share = |s: Stretch| match methods {
                Methods::Served => bad(s) / 2,
                Methods::Only(_) => 0,
            };
            let rpc = |code: &str| {
                series(
                    RPC_REQUESTS,
                    &[("service", svc), ("method", m), ("code", code)],
                )
            };
            out.push((rpc("OK"), counter(st, |s| TOTAL - client - bad(s))));
            for (code, n) in CLIENT_ERRORS {
                out.push((rpc(code), constant(st, *n)));
            }
            out.push((
                rpc(SERVER_FAULT_CODES[0]),
                counter(st, |s| bad(s) - shed_share(s)),
            ));
            if methods == Methods::Served {
                out.push((
                    series(RPC_SHED, &[("service", svc)]),
                    counter(st, shed_share),
                ));
            }
            // Noise: health checks failing, another service failing.
            out.push((
                series(
                    RPC_REQUESTS,
                    &[
                        ("service", svc),
                        ("method", NOT_TRAFFIC[0]),
                        ("code", "UNKNOWN"),
                    ],
                ),
                constant(st, NOISE),
            ));
            out.push((
                series(
                    RPC_REQUESTS,
                    &[
                        ("service", elsewhere(slo.service)),
                        ("method", m),
                        ("code", "INTERNAL"),
                    ],
                ),
                constant(st, NOISE),
            ));
        }
        Indicator::Latency { methods, threshold } => {
            let le = threshold.seconds();
            let m = sample_method(methods);
            let histogram = |service: &str, method: &str, fast: String, total: String| {
                let base = [("service", service), ("method", method)];
                let bucket = |le: &str| {
                    let mut l = base.to_vec();
                    l.push(("le", le));
                    series(&format!("{RPC_DURATION}_bucket"), &l)
                };
                [
                    (bucket(&le), fast),
                    (bucket("+Inf"), total.clone()),
                    (series(&format!("{RPC_DURATION}_count"), &base), total),
                ]
            };
            out.extend(histogram(
                svc,
                m,
                counter(st, |s| TOTAL - bad(s)),
                constant(st, TOTAL),
            ));
            // Noise: slow health checks, another service slow.
            out.extend(histogram(
                svc,
                NOT_TRAFFIC[0],
                constant(st, 0),
                constant(st, NOISE),
            ));
            out.extend(histogram(
                elsewhere(slo.service),
                m,
                constant(st, 0),
                constant(st, NOISE),
            ));
        }
        Indicator::Delivery { consumers } => {
            let c = consumers.first().copied().unwrap_or("consumer");
            let msg = |consumer: &str, outcome: &str| {
                series(
                    CONSUMER_MESSAGES,
                    &[("consumer", consumer), ("outcome", outcome)],
                )
            };
            out.push((msg(c, "acked"), counter(st, |s| TOTAL - bad(s))));
            out.push((msg(c, "dead_lettered"), counter(st, bad)));
            // Noise: retries and shutdown releases are not settled; another consumer fails.
            out.push((msg(c, "retried"), constant(st, NOISE)));
            out.push((msg(c, "released"), constant(st, NOISE)));
            out.push((msg("elsewhere", "dead_lettered"), constant(st, NOISE)));
        }
    }
    out
}

/// The burn of the stretch running at `minute`.
fn burn_at(sc: &Scenario, minute: u32) -> u32 {
    let mut start = 0;
    for st in sc.stretches {
        if minute <= start + st.minutes {
            return st.burn_tenths;
        }
        start += st.minutes;
    }
    0
}

fn duration(minutes: u32) -> String {
    crate::spec::Window::minutes(minutes).promql()
}

/// `deploy/prometheus/slo-rules.test.yml`.
pub fn render(slos: &[Slo]) -> String {
    let mut out = format!(
        "# {GENERATED_BY}\nrule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n",
        quoted(RULES_FILE)
    );
    for slo in slos {
        for sc in SCENARIOS {
            out.push_str(&format!(
                "  - name: {}\n    interval: 1m\n    input_series:\n",
                quoted(&format!("{}: {}", slo.name, sc.name))
            ));
            for (series, values) in inputs(slo, sc) {
                out.push_str(&format!(
                    "      - series: {}\n        values: {}\n",
                    quoted(&series),
                    quoted(&values)
                ));
            }
            if let Some(minute) = sc.ratio_at {
                // burn × budget = (tenths / 10) × (bp / 10 000); compared within 1e-12, as the
                // ratio of two rates is not exact in floating point.
                let ratio = decimal(
                    u64::from(burn_at(sc, minute)) * u64::from(slo.target.budget_bp()),
                    5,
                );
                let expr = format!(
                    "abs({}{{slo=\"{}\"}} - {ratio}) < bool 1e-12",
                    record_name(W5M),
                    slo.name
                );
                out.push_str(&format!(
                    "    promql_expr_test:\n      - expr: {}\n        eval_time: {}\n        exp_samples:\n          - labels: {}\n            value: 1\n",
                    quoted(&expr),
                    duration(minute),
                    quoted(&format!(
                        "{{service=\"{}\",slo=\"{}\"}}",
                        slo.service.label(),
                        slo.name
                    )),
                ));
            }
            out.push_str("    alert_rule_test:\n");
            for (minute, firing) in sc.expect {
                out.push_str(&format!(
                    "      - eval_time: {}\n        alertname: {}\n",
                    duration(*minute),
                    quoted(&slo.alert_name())
                ));
                if firing.is_empty() {
                    out.push_str("        exp_alerts: []\n");
                    continue;
                }
                out.push_str("        exp_alerts:\n");
                for policy in POLICIES.iter().filter(|p| firing.contains(&p.severity)) {
                    out.push_str("          - exp_labels:\n");
                    for (k, v) in [
                        ("severity", policy.severity.label()),
                        ("slo", slo.name),
                        ("service", slo.service.label()),
                        ("audience", slo.audience.label()),
                    ] {
                        out.push_str(&format!("              {k}: {}\n", quoted(v)));
                    }
                    out.push_str("            exp_annotations:\n");
                    for (k, v) in annotations(slo, policy) {
                        out.push_str(&format!("              {k}: {}\n", quoted(&v)));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_continue_across_stretches() {
        let st = [s(3, 10), s(2, 0)];
        assert_eq!(counter(&st, |s| u64::from(s.burn_tenths)), "0+10x3 30+0x1");
        assert_eq!(burn_at(&SCENARIOS[5], 40), 160);
        assert_eq!(burn_at(&SCENARIOS[5], 100), 0);
    }

    #[test]
    fn every_burn_is_possible_for_every_objective() {
        for slo in crate::catalogue::SLOS {
            for sc in SCENARIOS {
                for st in sc.stretches {
                    let client: u64 = CLIENT_ERRORS.iter().map(|(_, n)| n).sum();
                    assert!(
                        bad_per_minute(slo, st.burn_tenths) + client <= TOTAL,
                        "{}",
                        slo.name
                    );
                }
            }
        }
    }
}
