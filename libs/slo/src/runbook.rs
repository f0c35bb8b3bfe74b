//! `deploy/prometheus/slo-runbook.md`: every objective, how it is measured, when it alerts and
//! what to check first. The alerts' `runbook_url` points at its sections.

use crate::promql::{error_ratio, record_name};
use crate::spec::{Indicator, Methods, PERIOD_DAYS, POLICIES, Slo, W5M};
use crate::{GENERATED_BY, dashboards};

fn bad_events(slo: &Slo) -> String {
    let methods = |m: Methods| match m {
        Methods::Served => format!(
            "calls to {} (every method but health checks and reflection)",
            slo.service.label()
        ),
        Methods::Only(groups) => format!(
            "calls to {}",
            groups
                .iter()
                .map(|g| format!("`{}` ({})", g.grpc_service, g.methods.join(", ")))
                .collect::<Vec<_>>()
                .join(" and ")
        ),
    };
    match slo.indicator {
        Indicator::Availability(m) => format!(
            "{} answered with {}{}",
            methods(m),
            crate::catalogue::SERVER_FAULT_CODES.join(", "),
            if m == Methods::Served {
                ", or shed at capacity"
            } else {
                ""
            }
        ),
        Indicator::Latency {
            methods: m,
            threshold,
        } => format!(
            "{} slower than {} s (bucket `le=\"{}\"` of `keel_rpc_duration_seconds`)",
            methods(m),
            threshold.seconds(),
            threshold.seconds()
        ),
        Indicator::Delivery { consumers } => format!(
            "messages dead-lettered by {}, of those settled (acked or dead-lettered)",
            consumers
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

pub fn render(slos: &[Slo]) -> String {
    let mut out = format!(
        "<!-- {GENERATED_BY} -->\n# keel SLO runbook\n\n\
         Objectives over {PERIOD_DAYS} days. Each alert is the SRE workbook's multi-window, multi-burn-rate \
         alert on the objective's error ratio (`{}` … `{}`, label `slo`):\n\n",
        record_name(crate::spec::W5M),
        record_name(crate::spec::W3D),
    );
    for p in &POLICIES {
        let conds: Vec<String> = p
            .conditions
            .iter()
            .map(|c| {
                format!(
                    "{}× over {} and {} (budget gone in {} h)",
                    c.factor(),
                    c.long.promql(),
                    c.short.promql(),
                    c.hours_to_exhaustion()
                )
            })
            .collect();
        out.push_str(&format!(
            "- `severity=\"{}\"`: {}\n",
            p.severity.label(),
            conds.join(", or ")
        ));
    }
    out.push_str(
        "\nInternal objectives are ours, tighter than what we promise: they burn first.\n\n\
         | SLO | audience | service | objective |\n| --- | --- | --- | --- |\n",
    );
    for slo in slos {
        out.push_str(&format!(
            "| [{0}](#{0}) | {1} | {2} | {3} % |\n",
            slo.name,
            slo.audience.label(),
            slo.service.label(),
            slo.target.percent()
        ));
    }
    for slo in slos {
        out.push_str(&format!(
            "\n## {}\n\n{}.\n\n- Alert: `{}` (`audience=\"{}\"`); dashboard uid `{}`.\n- Bad events: {}.\n- Error budget: {} of events over {PERIOD_DAYS} days.\n\nError ratio over 5m:\n\n```promql\n{}\n```\n\nFirst checks:\n\n",
            slo.name,
            slo.summary,
            slo.alert_name(),
            slo.audience.label(),
            dashboards::uid(slo.service),
            bad_events(slo),
            slo.target.budget(),
            error_ratio(slo, W5M),
        ));
        for (i, check) in slo.first_checks.iter().enumerate() {
            out.push_str(&format!("{}. {check}\n", i + 1));
        }
    }
    out
}
