//! The vocabulary of an objective: where it is measured, what counts as a bad event, how much of
//! the traffic must be good, and the windows and burn rates it is alerted on.

/// A keel process, as the `service` label of its RPC metrics names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Service {
    Auth,
    Gateway,
    Inference,
    Postproc,
}

impl Service {
    pub const ALL: [Service; 4] = [
        Service::Auth,
        Service::Gateway,
        Service::Inference,
        Service::Postproc,
    ];

    /// The `service` label value: `HostSpec::name` in the service's `lib.rs`.
    pub const fn label(self) -> &'static str {
        match self {
            Service::Auth => "auth",
            Service::Gateway => "gateway",
            Service::Inference => "inference",
            Service::Postproc => "postproc",
        }
    }
}

/// Whom an objective is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Promised to the clients of the public gateway.
    Public,
    /// Our own, tighter or narrower objective: an early warning, promised to no one.
    Internal,
}

impl Audience {
    pub const fn label(self) -> &'static str {
        match self {
            Audience::Public => "public",
            Audience::Internal => "internal",
        }
    }
}

/// The share of events that must be good, in basis points (1 bp = 0.01 %), so that every number
/// in the generated rules is an exact decimal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target(u32);

impl Target {
    /// Fails the build (in a `const`) unless 0 < `bp` < 10 000.
    pub const fn basis_points(bp: u32) -> Target {
        assert!(
            bp > 0 && bp < 10_000,
            "a target is between 0 and 100 % exclusive"
        );
        Target(bp)
    }

    /// The error budget in basis points.
    pub const fn budget_bp(self) -> u32 {
        10_000 - self.0
    }

    /// The target as a ratio: `0.999`.
    pub fn ratio(self) -> String {
        decimal(u64::from(self.0), 4)
    }

    /// The error budget as a ratio: `0.001`.
    pub fn budget(self) -> String {
        decimal(u64::from(self.budget_bp()), 4)
    }

    /// The target in percent: `99.9`.
    pub fn percent(self) -> String {
        decimal(u64::from(self.0), 2)
    }
}

/// A latency threshold in milliseconds; it must be a bucket boundary of the histogram it is read
/// from (`keel_telemetry::DURATION_BUCKETS`; a test checks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold(u32);

impl Threshold {
    pub const fn millis(ms: u32) -> Threshold {
        assert!(ms > 0, "a latency threshold is positive");
        Threshold(ms)
    }

    /// Seconds as the exporter writes the bucket's `le` label (Rust's `f64` display): `0.3`, `2`.
    pub fn seconds(self) -> String {
        decimal(u64::from(self.0), 3)
    }

    /// The `le` matcher of the bucket. Prometheus 3 rewrites an integral `le="2"` to `le="2.0"`
    /// at ingestion, so integral thresholds match both spellings.
    pub fn le_matcher(self) -> String {
        let le = self.seconds();
        if self.0.is_multiple_of(1000) {
            format!("le=~\"{le}|{le}[.]0\"")
        } else {
            format!("le=\"{le}\"")
        }
    }
}

/// A range over which an error ratio is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub minutes: u32,
}

impl Window {
    pub const fn minutes(minutes: u32) -> Window {
        Window { minutes }
    }

    /// The PromQL duration: `5m`, `1h`, `3d`.
    pub fn promql(self) -> String {
        let m = self.minutes;
        if m.is_multiple_of(1440) {
            format!("{}d", m / 1440)
        } else if m.is_multiple_of(60) {
            format!("{}h", m / 60)
        } else {
            format!("{m}m")
        }
    }
}

pub const W5M: Window = Window::minutes(5);
pub const W30M: Window = Window::minutes(30);
pub const W1H: Window = Window::minutes(60);
pub const W2H: Window = Window::minutes(120);
pub const W6H: Window = Window::minutes(360);
pub const W1D: Window = Window::minutes(1440);
pub const W3D: Window = Window::minutes(4320);

/// Every window an error ratio is recorded over: the long and short windows of the alerts.
pub const WINDOWS: [Window; 7] = [W5M, W30M, W1H, W2H, W6H, W1D, W3D];

/// The period an error budget is spent over. The burn-rate factors below assume 30 days (the SRE
/// workbook's): 14.4× for an hour spends 2 % of the budget, 6× for 6 hours 5 %, 3× for a day 10 %.
pub const PERIOD_DAYS: u32 = 30;

/// Who is told when a budget burns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Wake someone: the budget is gone within days.
    Page,
    /// Next working day: the budget will not last the period.
    Ticket,
}

impl Severity {
    pub const fn label(self) -> &'static str {
        match self {
            Severity::Page => "page",
            Severity::Ticket => "ticket",
        }
    }
}

/// One multi-window condition: the error ratio is above `factor` × the budget over both the long
/// window (enough budget is spent to matter) and the short one (it is still burning, so the alert
/// resets soon after the burn stops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BurnCondition {
    /// The burn-rate factor in tenths: 144 = 14.4×.
    pub factor_tenths: u32,
    pub long: Window,
    pub short: Window,
}

impl BurnCondition {
    /// `14.4`, `6`.
    pub fn factor(self) -> String {
        decimal(u64::from(self.factor_tenths), 1)
    }

    /// How long a whole period's budget lasts at this burn rate, in hours.
    pub fn hours_to_exhaustion(self) -> u32 {
        PERIOD_DAYS * 24 * 10 / self.factor_tenths
    }
}

/// The alert of one severity: fires while either of its conditions holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertPolicy {
    pub severity: Severity,
    pub conditions: [BurnCondition; 2],
}

/// The SRE workbook's multi-window, multi-burn-rate alerts (chapter 5, "Alerting on SLOs").
pub const POLICIES: [AlertPolicy; 2] = [
    AlertPolicy {
        severity: Severity::Page,
        conditions: [
            BurnCondition {
                factor_tenths: 144,
                long: W1H,
                short: W5M,
            },
            BurnCondition {
                factor_tenths: 60,
                long: W6H,
                short: W30M,
            },
        ],
    },
    AlertPolicy {
        severity: Severity::Ticket,
        conditions: [
            BurnCondition {
                factor_tenths: 30,
                long: W1D,
                short: W2H,
            },
            BurnCondition {
                factor_tenths: 10,
                long: W3D,
                short: W6H,
            },
        ],
    },
];

/// Some of the methods of one gRPC service, named as the `method` label names them (the method
/// alone, without its service).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodGroup {
    /// The fully qualified gRPC service: `keel.v1.DocumentService`.
    pub grpc_service: &'static str,
    pub methods: &'static [&'static str],
}

/// The calls of a service an objective covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Methods {
    /// Every call the service serves, except health checks and reflection (probes, not traffic).
    Served,
    /// Only these methods.
    Only(&'static [MethodGroup]),
}

impl Methods {
    /// Every method named, in order.
    pub fn names(self) -> Vec<&'static str> {
        match self {
            Methods::Served => Vec::new(),
            Methods::Only(groups) => groups
                .iter()
                .flat_map(|g| g.methods.iter().copied())
                .collect(),
        }
    }
}

/// What makes an event bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Indicator {
    /// A call answered with a server fault (`catalogue::SERVER_FAULT_CODES`), or — when the
    /// objective covers every served call — refused at capacity (`keel_rpc_shed_total`, which has
    /// no `method` label).
    Availability(Methods),
    /// A call slower than the threshold, errors included (a fast failure counts as fast; the
    /// availability objective counts it as a failure).
    Latency {
        methods: Methods,
        threshold: Threshold,
    },
    /// A message a durable consumer dead-lettered, of the messages it settled (acked or
    /// dead-lettered; a retry is not settled).
    Delivery { consumers: &'static [&'static str] },
}

/// One service level objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slo {
    /// The `slo` label and the runbook anchor: lowercase words and dashes; internal objectives
    /// start with `internal-`.
    pub name: &'static str,
    /// Where it is measured: the `service` label of the metrics it reads.
    pub service: Service,
    pub audience: Audience,
    pub target: Target,
    pub indicator: Indicator,
    /// The objective in one sentence, for people.
    pub summary: &'static str,
    /// What to look at first when its budget burns.
    pub first_checks: &'static [&'static str],
}

impl Slo {
    /// The Prometheus alert name: the name in CamelCase plus `BudgetBurn`.
    pub fn alert_name(&self) -> String {
        let mut out = String::new();
        for word in self.name.split('-') {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                out.extend(first.to_uppercase());
                out.push_str(chars.as_str());
            }
        }
        out.push_str("BudgetBurn");
        out
    }
}

/// `units / 10^scale` as the shortest exact decimal: `decimal(9990, 4)` is `0.999`.
pub(crate) fn decimal(units: u64, scale: u32) -> String {
    let div = 10u64.pow(scale);
    let (whole, frac) = (units / div, units % div);
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:0width$}", width = scale as usize);
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact_and_short() {
        assert_eq!(decimal(9990, 4), "0.999");
        assert_eq!(decimal(9995, 2), "99.95");
        assert_eq!(decimal(10, 4), "0.001");
        assert_eq!(decimal(2000, 3), "2");
        assert_eq!(decimal(144, 1), "14.4");
        assert_eq!(Target::basis_points(9500).budget(), "0.05");
        assert_eq!(Target::basis_points(9990).percent(), "99.9");
    }

    #[test]
    fn thresholds_are_written_as_the_exporter_writes_le() {
        for ms in [100, 300, 2000, 250, 2500] {
            let t = Threshold::millis(ms);
            assert_eq!(t.seconds(), (f64::from(ms) / 1000.0).to_string());
        }
        assert_eq!(Threshold::millis(300).le_matcher(), r#"le="0.3""#);
        assert_eq!(Threshold::millis(2000).le_matcher(), r#"le=~"2|2[.]0""#);
    }

    #[test]
    fn windows_and_factors_read_as_in_the_workbook() {
        let w: Vec<String> = WINDOWS.iter().map(|w| w.promql()).collect();
        assert_eq!(w, ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]);
        let f: Vec<(String, u32)> = POLICIES
            .iter()
            .flat_map(|p| p.conditions)
            .map(|c| (c.factor(), c.hours_to_exhaustion()))
            .collect();
        assert_eq!(
            f,
            [
                ("14.4".into(), 50),
                ("6".into(), 120),
                ("3".into(), 240),
                ("1".into(), 720)
            ]
        );
    }
}
