//! The Prometheus rule file: per objective, its error ratio recorded over every window and one
//! burn-rate alert per severity.

use crate::promql::{burn_alert, error_ratio, record_name};
use crate::spec::{AlertPolicy, Slo, WINDOWS};
use crate::yaml::{block, quoted};
use crate::{GENERATED_BY, RUNBOOK_PATH, dashboards};

/// The rule group of one objective (rules of a group run in order, so each alert reads the
/// records of the same evaluation).
fn group_name(slo: &Slo) -> String {
    format!("slo:{}", slo.name)
}

/// The labels every record and alert of an objective carries.
fn slo_labels(slo: &Slo) -> [(&'static str, &'static str); 2] {
    [("slo", slo.name), ("service", slo.service.label())]
}

fn labels(out: &mut String, pairs: &[(&str, &str)]) {
    out.push_str("        labels:\n");
    for (k, v) in pairs {
        out.push_str(&format!("          {k}: {}\n", quoted(v)));
    }
}

/// What the alert says: static text (no `$value`), so the promtool tests can expect it exactly.
pub fn annotations(slo: &Slo, policy: &AlertPolicy) -> Vec<(&'static str, String)> {
    let conditions: Vec<String> = policy
        .conditions
        .iter()
        .map(|c| {
            format!(
                "above {}× the error budget over both {} and {} (a {}-day budget lasts {} h at {}×)",
                c.factor(),
                c.long.promql(),
                c.short.promql(),
                crate::spec::PERIOD_DAYS,
                c.hours_to_exhaustion(),
                c.factor()
            )
        })
        .collect();
    vec![
        (
            "summary",
            format!(
                "{} ({} objective, {} %) is spending its error budget too fast",
                slo.name,
                slo.audience.label(),
                slo.target.percent()
            ),
        ),
        (
            "description",
            format!(
                "Objective: {}. The error ratio is {}.",
                slo.summary,
                conditions.join(", or ")
            ),
        ),
        ("runbook_url", format!("{RUNBOOK_PATH}#{}", slo.name)),
        ("dashboard_uid", dashboards::uid(slo.service)),
    ]
}

/// `deploy/prometheus/slo-rules.yml`.
pub fn render(slos: &[Slo]) -> String {
    let mut out = format!("# {GENERATED_BY}\ngroups:\n");
    for slo in slos {
        out.push_str(&format!(
            "  - name: {}\n    rules:\n",
            quoted(&group_name(slo))
        ));
        for window in WINDOWS {
            out.push_str(&format!(
                "      - record: {}\n",
                quoted(&record_name(window))
            ));
            out.push_str("        ");
            out.push_str(&block("expr", &error_ratio(slo, window), 10));
            labels(&mut out, &slo_labels(slo));
        }
        for policy in &crate::spec::POLICIES {
            out.push_str(&format!("      - alert: {}\n", quoted(&slo.alert_name())));
            out.push_str("        ");
            out.push_str(&block("expr", &burn_alert(slo, policy), 10));
            let [slo_label, service_label] = slo_labels(slo);
            labels(
                &mut out,
                &[
                    ("severity", policy.severity.label()),
                    slo_label,
                    service_label,
                    ("audience", slo.audience.label()),
                ],
            );
            out.push_str("        annotations:\n");
            for (k, v) in annotations(slo, policy) {
                out.push_str(&format!("          {k}: {}\n", quoted(&v)));
            }
        }
    }
    out
}
