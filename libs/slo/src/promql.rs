//! The PromQL of an objective: its error ratio over a window (what the recording rules record)
//! and the burn-rate conditions on those records (what the alerts fire on).

use crate::catalogue::{NOT_TRAFFIC, SERVER_FAULT_CODES};
use crate::spec::{AlertPolicy, Indicator, Methods, Service, Slo, Window};

/// Calls answered, by `service`, `method` and `code` (`libs/runtime/src/layer.rs`).
pub const RPC_REQUESTS: &str = "keel_rpc_requests_total";
/// Call duration histogram, by `service` and `method`.
pub const RPC_DURATION: &str = "keel_rpc_duration_seconds";
/// Calls refused at capacity before they were admitted (not in `keel_rpc_requests_total`), by
/// `service`.
pub const RPC_SHED: &str = "keel_rpc_shed_total";
/// Messages settled by a durable consumer, by `consumer` and `outcome` (`libs/bus`).
pub const CONSUMER_MESSAGES: &str = "keel_consumer_messages_total";

/// The recorded error ratio of every objective over `window`, told apart by the `slo` label.
pub fn record_name(window: Window) -> String {
    format!("slo:sli_error:ratio_rate{}", window.promql())
}

/// `a|b|c`
fn alternatives(values: &[&str]) -> String {
    values.join("|")
}

/// The `method` matcher of a set of methods.
pub fn method_matcher(methods: Methods) -> String {
    match methods {
        Methods::Served => format!("method!~\"{}\"", alternatives(NOT_TRAFFIC)),
        Methods::Only(_) => format!("method=~\"{}\"", alternatives(&methods.names())),
    }
}

/// `{service="gateway",method=~"…"}` plus `extra` matchers.
pub fn rpc_selector(service: Service, methods: Methods, extra: &[&str]) -> String {
    let mut matchers = vec![
        format!("service=\"{}\"", service.label()),
        method_matcher(methods),
    ];
    matchers.extend(extra.iter().map(|m| (*m).to_owned()));
    format!("{{{}}}", matchers.join(","))
}

/// The `code` matcher of server faults.
pub fn fault_matcher() -> String {
    format!("code=~\"{}\"", alternatives(SERVER_FAULT_CODES))
}

fn sum_rate(metric: &str, selector: &str, window: Window) -> String {
    format!("sum(rate({metric}{selector}[{}]))", window.promql())
}

/// A sum that is 0 rather than absent while its counter has never been incremented (counters
/// appear at their first increment).
fn or_zero(expr: String) -> String {
    format!("({expr} or vector(0))")
}

/// The share of bad events over `window`: the recorded expression, several lines.
pub fn error_ratio(slo: &Slo, window: Window) -> String {
    let service = slo.service;
    match slo.indicator {
        Indicator::Availability(methods) => {
            let faults = or_zero(sum_rate(
                RPC_REQUESTS,
                &rpc_selector(service, methods, &[&fault_matcher()]),
                window,
            ));
            let calls = sum_rate(RPC_REQUESTS, &rpc_selector(service, methods, &[]), window);
            match methods {
                Methods::Served => {
                    let shed = or_zero(sum_rate(
                        RPC_SHED,
                        &format!("{{service=\"{}\"}}", service.label()),
                        window,
                    ));
                    format!(
                        "(\n  {faults}\n  + {shed}\n)\n/\n(\n  {}\n  + {shed}\n)",
                        or_zero(calls)
                    )
                }
                Methods::Only(_) => format!("{faults}\n/\n{calls}"),
            }
        }
        Indicator::Latency { methods, threshold } => {
            let calls = sum_rate(
                &format!("{RPC_DURATION}_count"),
                &rpc_selector(service, methods, &[]),
                window,
            );
            let fast = sum_rate(
                &format!("{RPC_DURATION}_bucket"),
                &rpc_selector(service, methods, &[&threshold.le_matcher()]),
                window,
            );
            format!("(\n  {calls}\n  - {fast}\n)\n/\n{calls}")
        }
        Indicator::Delivery { consumers } => {
            let consumer = format!("consumer=~\"{}\"", alternatives(consumers));
            let dead = or_zero(sum_rate(
                CONSUMER_MESSAGES,
                &format!("{{{consumer},outcome=\"dead_lettered\"}}"),
                window,
            ));
            let settled = sum_rate(
                CONSUMER_MESSAGES,
                &format!("{{{consumer},outcome=~\"acked|ack_unconfirmed|dead_lettered\"}}"),
                window,
            );
            format!("{dead}\n/\n{settled}")
        }
    }
}

/// The alert's expression: any of the policy's conditions, each on both of its windows.
pub fn burn_alert(slo: &Slo, policy: &AlertPolicy) -> String {
    let budget = slo.target.budget();
    let above = |w: Window, factor: &str| {
        format!(
            "{}{{slo=\"{}\"}} > ({factor} * {budget})",
            record_name(w),
            slo.name
        )
    };
    policy
        .conditions
        .iter()
        .map(|c| {
            let f = c.factor();
            format!(
                "(\n  {}\n  and\n  {}\n)",
                above(c.long, &f),
                above(c.short, &f)
            )
        })
        .collect::<Vec<_>>()
        .join("\nor\n")
}
