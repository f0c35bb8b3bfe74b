//! What a run prints and writes: a text summary, a self-contained HTML report (inline SVG
//! charts of latency over time and throughput per operation, no scripts, no network), and one
//! last `key=value` line with the verdict.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::engine::{OpStats, quantile_ms};

/// One threshold and how the run fared against it.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

impl Check {
    /// `value < limit` (NaN, i.e. no data, fails).
    pub fn below(name: impl Into<String>, value: f64, limit: f64, unit: &str) -> Check {
        Check {
            name: name.into(),
            passed: value < limit,
            detail: format!("{} {unit} (limit < {limit} {unit})", round(value)),
        }
    }

    /// `value >= limit`.
    pub fn at_least(name: impl Into<String>, value: f64, limit: f64, unit: &str) -> Check {
        Check {
            name: name.into(),
            passed: value >= limit,
            detail: format!("{} {unit} (limit ≥ {limit} {unit})", round(value)),
        }
    }

    pub fn equal(name: impl Into<String>, value: u64, expected: u64) -> Check {
        Check {
            name: name.into(),
            passed: value == expected,
            detail: format!("{value} (expected {expected})"),
        }
    }
}

fn round(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// A finished scenario.
#[derive(Clone)]
pub struct ScenarioReport {
    pub scenario: String,
    pub profile: String,
    pub elapsed: Duration,
    pub ops: BTreeMap<String, OpStats>,
    pub checks: Vec<Check>,
    /// Scenario-specific figures for the summary line (`key`, `value`).
    pub figures: Vec<(String, String)>,
}

impl ScenarioReport {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    fn totals(&self) -> (u64, u64, u64) {
        self.ops.values().fold((0, 0, 0), |(o, r, e), s| {
            (o + s.ok, r + s.refused, e + s.errors)
        })
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario {} ({}), {:.1} s",
            self.scenario,
            self.profile,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "  {:<22} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "operation",
            "ok",
            "refused",
            "errors",
            "rate/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "first p95"
        );
        let secs = self.elapsed.as_secs_f64().max(0.001);
        for (name, s) in &self.ops {
            let _ = writeln!(
                out,
                "  {:<22} {:>8} {:>8} {:>8} {:>8.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                name,
                s.ok,
                s.refused,
                s.errors,
                s.total() as f64 / secs,
                s.ms(0.50),
                s.ms(0.95),
                s.ms(0.99),
                s.ms(1.0),
                s.first_ms(0.95),
            );
            let codes: Vec<String> = s
                .codes
                .iter()
                .filter(|(c, _)| c.as_str() != "OK")
                .map(|(c, n)| format!("{c}={n}"))
                .collect();
            if !codes.is_empty() {
                let _ = writeln!(out, "  {:<22} {}", "", codes.join(" "));
            }
        }
        for c in &self.checks {
            let _ = writeln!(
                out,
                "  [{}] {}: {}",
                if c.passed { "pass" } else { "FAIL" },
                c.name,
                c.detail
            );
        }
        out
    }

    /// `scenario=… verdict=… requests=… ok=… refused=… errors=… <figures>`.
    pub fn summary_line(&self) -> String {
        let (ok, refused, errors) = self.totals();
        let mut line = format!(
            "scenario={} profile={} verdict={} requests={} ok={ok} refused={refused} errors={errors}",
            self.scenario,
            self.profile,
            if self.passed() { "pass" } else { "fail" },
            ok + refused + errors,
        );
        for (k, v) in &self.figures {
            let _ = write!(line, " {k}={v}");
        }
        line
    }

    pub fn html(&self) -> String {
        let mut body = String::new();
        let _ = writeln!(
            body,
            "<h1>keel load: {} <small>({}, {:.1} s, {})</small></h1>",
            esc(&self.scenario),
            esc(&self.profile),
            self.elapsed.as_secs_f64(),
            if self.passed() {
                "<span class=pass>pass</span>"
            } else {
                "<span class=fail>FAIL</span>"
            }
        );
        body.push_str(
            "<h2>Thresholds</h2><table><tr><th>check</th><th>result</th><th>detail</th></tr>",
        );
        for c in &self.checks {
            let _ = writeln!(
                body,
                "<tr><td>{}</td><td class={}>{}</td><td>{}</td></tr>",
                esc(&c.name),
                if c.passed { "pass" } else { "fail" },
                if c.passed { "pass" } else { "FAIL" },
                esc(&c.detail)
            );
        }
        body.push_str("</table>");
        body.push_str("<h2>Operations</h2><table><tr><th>operation</th><th>ok</th><th>refused</th><th>errors</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>refused p99 ms</th><th>first p95 ms</th><th>codes</th></tr>");
        for (name, s) in &self.ops {
            let codes: Vec<String> = s.codes.iter().map(|(c, n)| format!("{c}={n}")).collect();
            let _ = writeln!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td></tr>",
                esc(name),
                s.ok,
                s.refused,
                s.errors,
                s.ms(0.5),
                s.ms(0.95),
                s.ms(0.99),
                s.ms(0.999),
                s.refused_ms(0.99),
                s.first_ms(0.95),
                esc(&codes.join(" "))
            );
        }
        body.push_str("</table>");
        for (name, s) in &self.ops {
            let _ = writeln!(body, "<h2>{}</h2><div class=charts>", esc(name));
            let p50: Vec<f64> = s
                .series
                .iter()
                .map(|x| quantile_ms(&x.latency, 0.5))
                .collect();
            let p99: Vec<f64> = s
                .series
                .iter()
                .map(|x| quantile_ms(&x.latency, 0.99))
                .collect();
            body.push_str(&chart(
                "latency over time (ms, successful calls)",
                &[("p50", "#1f77b4", &p50), ("p99", "#d62728", &p99)],
            ));
            let ok: Vec<f64> = s.series.iter().map(|x| x.ok as f64).collect();
            let refused: Vec<f64> = s.series.iter().map(|x| x.refused as f64).collect();
            let errors: Vec<f64> = s.series.iter().map(|x| x.errors as f64).collect();
            body.push_str(&chart(
                "throughput (calls completed per second)",
                &[
                    ("ok", "#2ca02c", &ok),
                    ("refused", "#ff7f0e", &refused),
                    ("errors", "#d62728", &errors),
                ],
            ));
            body.push_str("</div>");
        }
        let _ = writeln!(body, "<pre>{}</pre>", esc(&self.summary_line()));
        format!(
            "<!doctype html><html><head><meta charset=utf-8><title>keel load: {}</title><style>{CSS}</style></head><body>{body}</body></html>\n",
            esc(&self.scenario)
        )
    }
}

const CSS: &str = "body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}.pass{color:#2ca02c;font-weight:bold}.fail{color:#d62728;font-weight:bold}.charts{display:flex;gap:2em;flex-wrap:wrap}svg{background:#fafafa;border:1px solid #ddd}";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const W: f64 = 560.0;
const H: f64 = 240.0;
const PAD: f64 = 40.0;

/// A line chart over seconds; NaN points (no data that second) break the line. Well-formed
/// XML (quoted attributes), so it also stands alone as an `.svg`.
fn chart(title: &str, lines: &[(&str, &str, &Vec<f64>)]) -> String {
    let n = lines.iter().map(|l| l.2.len()).max().unwrap_or(0).max(2);
    let max = lines
        .iter()
        .flat_map(|l| l.2.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.1;
    let x = |i: usize| PAD + (W - 2.0 * PAD) * i as f64 / (n - 1) as f64;
    let y = |v: f64| H - PAD - (H - 2.0 * PAD) * v / max;
    let mut svg = format!(
        r#"<svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" xmlns="http://www.w3.org/2000/svg"><text x="{PAD}" y="20">{}</text>"#,
        esc(title)
    );
    let (bottom, right) = (H - PAD, W - PAD);
    let _ = write!(
        svg,
        r##"<line x1="{PAD}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#999"/><line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{bottom}" stroke="#999"/>"##
    );
    let _ = write!(
        svg,
        r#"<text x="2" y="{}" font-size="10">{:.1}</text><text x="2" y="{bottom}" font-size="10">0</text><text x="{}" y="{}" font-size="10">{} s</text>"#,
        PAD + 4.0,
        max,
        right - 20.0,
        bottom + 14.0,
        n - 1
    );
    for (k, (name, color, values)) in lines.iter().enumerate() {
        let mut segments: Vec<Vec<String>> = vec![Vec::new()];
        for (i, v) in values.iter().enumerate() {
            if v.is_finite() {
                if let Some(seg) = segments.last_mut() {
                    seg.push(format!("{:.1},{:.1}", x(i), y(*v)));
                }
            } else if segments.last().is_some_and(|s| !s.is_empty()) {
                segments.push(Vec::new());
            }
        }
        for seg in segments.iter().filter(|s| !s.is_empty()) {
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
                seg.join(" ")
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{}" y="20" fill="{color}" font-size="12">{}</text>"#,
            right - 160.0 + 55.0 * k as f64,
            esc(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Outcome, Recorder};

    fn report(passed: bool) -> ScenarioReport {
        let rec = Recorder::new();
        let now = tokio::time::Instant::now();
        rec.record("crud.get", now, &Outcome::ok());
        rec.record("crud.get", now, &Outcome::error("INTERNAL"));
        ScenarioReport {
            scenario: "crud".into(),
            profile: "smoke".into(),
            elapsed: Duration::from_secs(1),
            ops: rec.snapshot(),
            checks: vec![Check::below(
                "p95",
                if passed { 1.0 } else { 500.0 },
                300.0,
                "ms",
            )],
            figures: vec![("rate".into(), "100".into())],
        }
    }

    #[test]
    fn the_summary_line_carries_the_verdict_and_the_counts() {
        let line = report(true).summary_line();
        assert!(
            line.starts_with(
                "scenario=crud profile=smoke verdict=pass requests=2 ok=1 refused=0 errors=1"
            ),
            "{line}"
        );
        assert!(line.ends_with(" rate=100"));
        assert!(report(false).summary_line().contains("verdict=fail"));
    }

    #[test]
    fn no_data_fails_a_threshold() {
        assert!(!Check::below("p95", f64::NAN, 300.0, "ms").passed);
    }

    #[test]
    fn the_html_report_is_self_contained_and_escaped() {
        let mut r = report(true);
        r.scenario = "<script>".into();
        let html = r.html();
        assert!(!html.contains("<script>"));
        assert!(html.contains("<svg"));
        assert!(html.contains("polyline"));
        // Every chart is well-formed XML: quoted attributes, closed elements.
        for svg in html.split("<svg").skip(1) {
            let svg = &svg[..svg.find("</svg>").unwrap()];
            assert!(
                !svg.contains("=#") && !svg.contains("=n"),
                "unquoted attribute: {svg}"
            );
        }
        assert!(!html.contains("http://") || html.contains("xmlns=\"http://www.w3.org/2000/svg\""));
    }
}
