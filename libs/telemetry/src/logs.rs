//! One JSON object per line, per event: `timestamp`, `level`, `target`, `message`, the event's
//! fields, and the request context found on the enclosing spans — `tenant_id`,
//! `correlation_id`, `trace_id`, `span_id` — so every line of a request can be joined to its trace.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Where finished log lines go.
pub trait LogSink: Send + Sync + 'static {
    fn write_line(&self, line: &[u8]);
}

/// Standard output, one locked write per line so lines never interleave.
pub struct StdoutSink;

impl LogSink for StdoutSink {
    fn write_line(&self, line: &[u8]) {
        let mut out = std::io::stdout().lock();
        // A closed stdout must not take the service down with it.
        let _ = out.write_all(line);
    }
}

/// Keeps lines in memory (tests read them back).
#[derive(Default, Clone)]
pub struct MemorySink {
    lines: Arc<Mutex<Vec<String>>>,
}

impl MemorySink {
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl LogSink for MemorySink {
    fn write_line(&self, line: &[u8]) {
        if let Ok(mut l) = self.lines.lock() {
            l.push(String::from_utf8_lossy(line).trim_end().to_owned());
        }
    }
}

/// Span fields that are lifted into every log line, as (span field, log key).
const CONTEXT_FIELDS: [(&str, &str); 4] = [
    (crate::TENANT_ATTRIBUTE, "tenant_id"),
    ("correlation_id", "correlation_id"),
    ("trace_id", "trace_id"),
    ("span_id", "span_id"),
];

#[derive(Default)]
struct ContextFields([Option<String>; 4]);

struct ContextVisitor<'a>(&'a mut ContextFields);

impl Visit for ContextVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if let Some(i) = CONTEXT_FIELDS.iter().position(|(f, _)| *f == field.name()) {
            self.0.0[i] = Some(value.to_owned());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if let Some(i) = CONTEXT_FIELDS.iter().position(|(f, _)| *f == field.name()) {
            self.0.0[i] = Some(format!("{value:?}"));
        }
    }
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}

/// The layer writing JSON lines.
pub struct JsonLogLayer {
    sink: Arc<dyn LogSink>,
}

impl JsonLogLayer {
    pub fn new(sink: Arc<dyn LogSink>) -> Self {
        JsonLogLayer { sink }
    }
}

impl<S> Layer<S> for JsonLogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = ContextFields::default();
        attrs.record(&mut ContextVisitor(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(fields) = ext.get_mut::<ContextFields>() {
                values.record(&mut ContextVisitor(fields));
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut obj = Map::new();
        obj.insert("timestamp".into(), Value::from(chrono_like_now()));
        obj.insert("level".into(), Value::from(meta.level().as_str()));
        obj.insert("target".into(), Value::from(meta.target()));
        let mut fields = Map::new();
        event.record(&mut JsonVisitor(&mut fields));
        if let Some(m) = fields.remove("message") {
            obj.insert("message".into(), m);
        }
        let mut found: [Option<String>; 4] = Default::default();
        if let Some(scope) = ctx.event_scope(event) {
            let mut first = true;
            for span in scope {
                if first {
                    obj.insert("span".into(), Value::from(span.name()));
                    first = false;
                }
                if let Some(f) = span.extensions().get::<ContextFields>() {
                    for (slot, v) in found.iter_mut().zip(f.0.iter()) {
                        if slot.is_none() {
                            slot.clone_from(v);
                        }
                    }
                }
                if found.iter().all(Option::is_some) {
                    break;
                }
            }
        }
        for ((_, key), v) in CONTEXT_FIELDS.iter().zip(found) {
            if let Some(v) = v {
                obj.insert((*key).into(), Value::from(v));
            }
        }
        for (k, v) in fields {
            obj.entry(k).or_insert(v);
        }
        let mut line = serde_json::to_vec(&Value::Object(obj)).unwrap_or_default();
        line.push(b'\n');
        self.sink.write_line(&line);
    }
}

/// RFC 3339 UTC time with milliseconds, computed without a date crate.
fn chrono_like_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_427), (2025, 12, 5));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn lines_carry_the_context_of_enclosing_spans() {
        use tracing_subscriber::layer::SubscriberExt;
        let sink = MemorySink::default();
        let subscriber =
            tracing_subscriber::registry().with(JsonLogLayer::new(Arc::new(sink.clone())));
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!(
                "req",
                tenant.id = "acme",
                correlation_id = tracing::field::Empty,
                trace_id = "abc"
            );
            outer.record("correlation_id", "c-1");
            let _g = outer.enter();
            let inner = tracing::info_span!("db");
            let _g2 = inner.enter();
            tracing::info!(rows = 3, "query done");
        });
        let lines = sink.lines();
        assert_eq!(lines.len(), 1);
        let v: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["tenant_id"], "acme");
        assert_eq!(v["correlation_id"], "c-1");
        assert_eq!(v["trace_id"], "abc");
        assert_eq!(v["message"], "query done");
        assert_eq!(v["rows"], 3);
        assert_eq!(v["span"], "db");
        assert_eq!(v["level"], "INFO");
    }
}
