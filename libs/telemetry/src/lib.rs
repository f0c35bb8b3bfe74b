//! Telemetry for every keel process: JSON logs, OpenTelemetry traces (OTLP when the standard
//! `OTEL_*` variables ask for it), Prometheus and OTLP metrics, and W3C trace-context
//! propagation over gRPC metadata and NATS headers.
//!
//! * [`init`] — called once by a binary's `main` (tests call it with their own sinks); returns a
//!   [`Telemetry`] handle whose [`Telemetry::shutdown`] flushes exporters.
//! * [`adopt`] — makes a fresh server/consumer span the child of a remote context and stamps it
//!   with the tenant, correlation ID and trace ID that every log line then carries.
//! * [`propagation`] — inject/extract for tonic metadata, HTTP headers and NATS headers.
//! * [`prometheus`] — the process-wide Prometheus registry rendered on `/metrics`.
//!
//! The process runs fine with no collector: without `OTEL_EXPORTER_OTLP_*` nothing is exported,
//! but spans still get trace IDs so logs and propagation work.

pub mod logs;
mod metrics_bridge;
pub mod propagation;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use keel_config::{ConfigError, Env};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue, baggage::BaggageExt};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter, SpanProcessor};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

pub use logs::{LogSink, MemorySink, StdoutSink};

/// OTel attribute and span field naming the tenant (the logs call it `tenant_id`).
pub const TENANT_ATTRIBUTE: &str = "tenant.id";
/// Default log filter: our crates at info, everything else at warn (dependencies are chatty).
pub const DEFAULT_LOG_FILTER: &str = "warn,keel=info,keel_auth=info,keel_gateway=info,keel_inference=info,keel_postproc=info,keel_runtime=info,keel_bus=info,keel_store=info";
/// Upper bound on flushing exporters at shutdown: a stuck collector must not hold the process.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("log filter is invalid: {0}")]
    Filter(String),
    #[error("OTLP exporter could not be built: {0}")]
    Exporter(String),
    #[error("a global subscriber is already installed")]
    AlreadyInstalled,
}

/// What to export, read from the standard OpenTelemetry variables plus `RUST_LOG`.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub service_name: String,
    pub log_filter: String,
    pub otlp_traces: bool,
    pub otlp_metrics: bool,
}

impl TelemetryConfig {
    /// `OTEL_SDK_DISABLED`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT`,
    /// `OTEL_{TRACES,METRICS}_EXPORTER` (`otlp` or `none`), `OTEL_SERVICE_NAME`, `RUST_LOG`.
    pub fn from_env(default_service_name: &str, env: &Env) -> Result<Self, ConfigError> {
        let disabled = env.bool("OTEL_SDK_DISABLED", false)?;
        let any_endpoint = env.raw("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        let wants = |signal: &str| -> bool {
            let exporter = env
                .raw(&format!("OTEL_{signal}_EXPORTER"))
                .unwrap_or("otlp");
            !disabled
                && exporter != "none"
                && (any_endpoint
                    || env
                        .raw(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))
                        .is_some())
        };
        Ok(TelemetryConfig {
            service_name: env
                .raw("OTEL_SERVICE_NAME")
                .unwrap_or(default_service_name)
                .to_owned(),
            log_filter: env.raw("RUST_LOG").unwrap_or(DEFAULT_LOG_FILTER).to_owned(),
            otlp_traces: wants("TRACES"),
            otlp_metrics: wants("METRICS"),
        })
    }
}

/// The installed pipeline; call [`Telemetry::shutdown`] last thing before exiting.
pub struct Telemetry {
    tracer: SdkTracerProvider,
    meter: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// Flushes and stops the exporters, bounded by a timeout.
    pub fn shutdown(self) {
        if let Err(e) = self.tracer.shutdown_with_timeout(FLUSH_TIMEOUT) {
            tracing::warn!(error = %e, "trace exporter did not flush");
        }
        if let Some(m) = self.meter
            && let Err(e) = m.shutdown_with_timeout(FLUSH_TIMEOUT)
        {
            tracing::warn!(error = %e, "metric exporter did not flush");
        }
    }

    pub fn tracer_provider(&self) -> &SdkTracerProvider {
        &self.tracer
    }
}

/// Installs the global pipeline: JSON logs to a sink, spans to OTLP when configured and to any
/// extra exporter (tests add an in-memory one). Must run inside a Tokio runtime when OTLP is on.
pub struct TelemetryBuilder {
    cfg: TelemetryConfig,
    sink: Arc<dyn LogSink>,
    tracer: opentelemetry_sdk::trace::TracerProviderBuilder,
}

impl TelemetryBuilder {
    pub fn new(cfg: TelemetryConfig) -> Self {
        TelemetryBuilder {
            cfg,
            sink: Arc::new(StdoutSink),
            tracer: SdkTracerProvider::builder().with_span_processor(TenantAttributeProcessor),
        }
    }

    pub fn log_sink(mut self, sink: Arc<dyn LogSink>) -> Self {
        self.sink = sink;
        self
    }

    /// Also export every span, synchronously, to `exporter` (for tests).
    pub fn span_exporter<E: SpanExporter + 'static>(mut self, exporter: E) -> Self {
        self.tracer = self.tracer.with_simple_exporter(exporter);
        self
    }

    pub fn install(self) -> Result<Telemetry, TelemetryError> {
        let cfg = self.cfg;
        let resource = Resource::builder()
            .with_service_name(cfg.service_name.clone())
            .build();
        let mut builder = self.tracer.with_resource(resource.clone());
        if cfg.otlp_traces {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            builder = builder.with_batch_exporter(exporter);
        }
        let tracer_provider = builder.build();
        let meter = if cfg.otlp_metrics {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            let provider = SdkMeterProvider::builder()
                .with_resource(resource)
                .with_periodic_exporter(exporter)
                .build();
            opentelemetry::global::set_meter_provider(provider.clone());
            Some(provider)
        } else {
            None
        };
        let filter = EnvFilter::try_new(&cfg.log_filter)
            .map_err(|e| TelemetryError::Filter(e.to_string()))?;
        tracing_subscriber::registry()
            .with(filter)
            .with(tracing_opentelemetry::layer().with_tracer(tracer_provider.tracer("keel")))
            .with(logs::JsonLogLayer::new(self.sink))
            .try_init()
            .map_err(|_| TelemetryError::AlreadyInstalled)?;
        opentelemetry::global::set_tracer_provider(tracer_provider.clone());
        // The recorder exists before the first metric is recorded, feeding OTLP when it is on.
        use opentelemetry::metrics::MeterProvider as _;
        install_recorder(meter.as_ref().map(|m| m.meter("keel")));
        Ok(Telemetry {
            tracer: tracer_provider,
            meter,
        })
    }
}

/// The usual setup of a binary: logs to stdout, OTLP as the environment says.
pub fn init(cfg: TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    TelemetryBuilder::new(cfg).install()
}

/// Copies the tenant from the parent context's baggage onto every span, so each span of a
/// tenant's request carries `tenant.id` without every call site repeating it.
#[derive(Debug)]
struct TenantAttributeProcessor;

impl SpanProcessor for TenantAttributeProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        use opentelemetry::trace::Span as _;
        if let Some(t) = cx.baggage().get(TENANT_ATTRIBUTE) {
            span.set_attribute(KeyValue::new(TENANT_ATTRIBUTE, t.to_string()));
        }
    }
    fn on_end(&self, _span: opentelemetry_sdk::trace::SpanData) {}
    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _t: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

/// Makes `span` (freshly created, not yet entered) the child of `parent`, carries the tenant in
/// the context's baggage (so every descendant span gets `tenant.id`), and records the
/// `tenant.id`, `correlation_id`, `trace_id` and `span_id` fields the logs show. The span must
/// declare those four fields as `tracing::field::Empty`.
pub fn adopt(span: &tracing::Span, parent: Context, tenant: Option<&str>, correlation_id: &str) {
    let cx = match tenant {
        Some(t) => {
            span.record(TENANT_ATTRIBUTE, t);
            parent.with_baggage([KeyValue::new(TENANT_ATTRIBUTE, t.to_owned())])
        }
        None => parent,
    };
    // Fails only when no OpenTelemetry layer is installed (then there is nothing to parent).
    let _ = span.set_parent(cx);
    span.record("correlation_id", correlation_id);
    let own = span.context().span().span_context().clone();
    if own.trace_id() != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(own.trace_id()));
        span.record("span_id", tracing::field::display(own.span_id()));
    }
}

/// The W3C `traceparent` of the current span, for carriers we store (the outbox).
pub fn current_traceparent() -> Option<String> {
    let mut carrier = std::collections::HashMap::new();
    propagation::inject_map(&tracing::Span::current().context(), &mut carrier);
    carrier.remove("traceparent")
}

static PROMETHEUS: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();

/// Histogram buckets in seconds for request and processing durations: fine below 100 ms where
/// our SLOs live, coarse up to the 30 s of a long generation. 0.1, 0.3 and 2 are SLO thresholds
/// (`keel-slo` counts requests under them; its tests fail if one goes).
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.3, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the process's `metrics` recorder (once; later calls return the first handle):
/// Prometheus always, plus the OpenTelemetry meter when one is given.
fn install_recorder(
    meter: Option<opentelemetry::metrics::Meter>,
) -> &'static metrics_exporter_prometheus::PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let builder = metrics_exporter_prometheus::PrometheusBuilder::new();
        let builder = builder
            .set_buckets(DURATION_BUCKETS)
            .unwrap_or_else(|_| metrics_exporter_prometheus::PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only when another recorder was installed first (a test harness); ours then
        // renders an empty page rather than crash the process.
        let _ = metrics::set_global_recorder(metrics_bridge::Fanout::new(recorder, meter));
        handle
    })
}

/// The process-wide Prometheus handle (installing a Prometheus-only recorder on first use).
pub fn prometheus() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    install_recorder(None)
}

/// Renders `/metrics`.
pub fn render_metrics() -> String {
    let handle = prometheus();
    handle.run_upkeep();
    handle.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> TelemetryConfig {
        TelemetryConfig::from_env("svc", &Env::from_pairs(pairs.iter().copied())).unwrap()
    }

    #[test]
    fn otlp_is_off_without_an_endpoint_and_obeys_the_standard_switches() {
        let c = cfg(&[]);
        assert!(!c.otlp_traces && !c.otlp_metrics);
        assert_eq!(c.service_name, "svc");
        assert_eq!(c.log_filter, DEFAULT_LOG_FILTER);

        let c = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]);
        assert!(c.otlp_traces && c.otlp_metrics);

        let c = cfg(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4317",
        )]);
        assert!(c.otlp_traces && !c.otlp_metrics);

        let c = cfg(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_METRICS_EXPORTER", "none"),
            ("OTEL_SERVICE_NAME", "gw-1"),
            ("RUST_LOG", "debug"),
        ]);
        assert!(c.otlp_traces && !c.otlp_metrics);
        assert_eq!(c.service_name, "gw-1");
        assert_eq!(c.log_filter, "debug");

        let c = cfg(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_SDK_DISABLED", "true"),
        ]);
        assert!(!c.otlp_traces && !c.otlp_metrics);
        assert!(
            TelemetryConfig::from_env(
                "svc",
                &Env::from_pairs([("OTEL_SDK_DISABLED", "sometimes")])
            )
            .is_err()
        );
    }
}
