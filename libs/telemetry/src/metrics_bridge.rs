//! One `metrics` recorder for the whole process: every metric goes to the Prometheus registry
//! (rendered on `/metrics`) and, when OTLP metrics are on, to an OpenTelemetry meter as well —
//! so code records once, with the `metrics` macros, and both backends see it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use metrics_exporter_prometheus::PrometheusRecorder;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

pub(crate) struct Fanout {
    prom: PrometheusRecorder,
    otel: Option<Otel>,
}

struct Otel {
    meter: Meter,
    /// One instrument per metric key, so repeated registrations share state (gauges keep their
    /// value across `gauge!` calls, as Prometheus' registry does).
    gauges: Mutex<HashMap<Key, Arc<OtelGauge>>>,
}

impl Fanout {
    pub(crate) fn new(prom: PrometheusRecorder, meter: Option<Meter>) -> Self {
        Fanout {
            prom,
            otel: meter.map(|meter| Otel {
                meter,
                gauges: Mutex::default(),
            }),
        }
    }
}

fn attributes(key: &Key) -> Vec<KeyValue> {
    key.labels()
        .map(|l| KeyValue::new(l.key().to_owned(), l.value().to_owned()))
        .collect()
}

struct BothCounter {
    prom: Counter,
    otel: opentelemetry::metrics::Counter<u64>,
    attrs: Vec<KeyValue>,
    last_absolute: AtomicU64,
}

impl CounterFn for BothCounter {
    fn increment(&self, value: u64) {
        self.prom.increment(value);
        self.otel.add(value, &self.attrs);
    }
    fn absolute(&self, value: u64) {
        self.prom.absolute(value);
        let before = self.last_absolute.swap(value, Ordering::AcqRel);
        self.otel.add(value.saturating_sub(before), &self.attrs);
    }
}

struct OtelGauge {
    otel: opentelemetry::metrics::Gauge<f64>,
    attrs: Vec<KeyValue>,
    bits: AtomicU64,
}

impl OtelGauge {
    fn update(&self, f: impl Fn(f64) -> f64) {
        let mut cur = self.bits.load(Ordering::Acquire);
        loop {
            let next = f(f64::from_bits(cur));
            match self.bits.compare_exchange_weak(
                cur,
                next.to_bits(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.otel.record(next, &self.attrs);
                    return;
                }
                Err(actual) => cur = actual,
            }
        }
    }
}

struct BothGauge {
    prom: Gauge,
    otel: Arc<OtelGauge>,
}

impl GaugeFn for BothGauge {
    fn increment(&self, value: f64) {
        self.prom.increment(value);
        self.otel.update(|v| v + value);
    }
    fn decrement(&self, value: f64) {
        self.prom.decrement(value);
        self.otel.update(|v| v - value);
    }
    fn set(&self, value: f64) {
        self.prom.set(value);
        self.otel.update(|_| value);
    }
}

struct BothHistogram {
    prom: Histogram,
    otel: opentelemetry::metrics::Histogram<f64>,
    attrs: Vec<KeyValue>,
}

impl HistogramFn for BothHistogram {
    fn record(&self, value: f64) {
        self.prom.record(value);
        self.otel.record(value, &self.attrs);
    }
}

impl Recorder for Fanout {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prom.describe_counter(key, unit, description);
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prom.describe_gauge(key, unit, description);
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prom.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        let prom = self.prom.register_counter(key, metadata);
        let Some(o) = &self.otel else { return prom };
        Counter::from_arc(Arc::new(BothCounter {
            prom,
            otel: o.meter.u64_counter(key.name().to_owned()).build(),
            attrs: attributes(key),
            last_absolute: AtomicU64::new(0),
        }))
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        let prom = self.prom.register_gauge(key, metadata);
        let Some(o) = &self.otel else { return prom };
        let otel = match o.gauges.lock() {
            Ok(mut g) => g
                .entry(key.clone())
                .or_insert_with(|| {
                    Arc::new(OtelGauge {
                        otel: o.meter.f64_gauge(key.name().to_owned()).build(),
                        attrs: attributes(key),
                        bits: AtomicU64::new(0f64.to_bits()),
                    })
                })
                .clone(),
            Err(_) => return prom,
        };
        Gauge::from_arc(Arc::new(BothGauge { prom, otel }))
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        let prom = self.prom.register_histogram(key, metadata);
        let Some(o) = &self.otel else { return prom };
        Histogram::from_arc(Arc::new(BothHistogram {
            prom,
            otel: o
                .meter
                .f64_histogram(key.name().to_owned())
                .with_boundaries(crate::DURATION_BUCKETS.to_vec())
                .build(),
            attrs: attributes(key),
        }))
    }
}
