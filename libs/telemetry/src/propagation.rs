//! W3C trace-context (`traceparent`, `tracestate`) over every carrier keel uses: tonic metadata
//! (client side), HTTP headers (server side: tonic requests are HTTP requests), NATS message
//! headers, and plain maps (the outbox stores the producer's context in a column).

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// Writes the current span's context into outgoing gRPC metadata.
pub fn inject_grpc(meta: &mut tonic::metadata::MetadataMap) {
    let cx = tracing::Span::current().context();
    propagator().inject_context(&cx, &mut MetadataInjector(meta));
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Reads the caller's context from incoming HTTP/2 (gRPC) or HTTP/1 headers.
pub fn extract_http(headers: &http::HeaderMap) -> Context {
    propagator().extract(&HeaderExtractor(headers))
}

struct NatsInjector<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let Ok(v) = async_nats::HeaderValue::try_from(value.as_str()) {
            self.0.insert(key, v);
        }
    }
}

struct NatsExtractor<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

pub fn inject_nats(cx: &Context, headers: &mut async_nats::HeaderMap) {
    propagator().inject_context(cx, &mut NatsInjector(headers));
}

pub fn extract_nats(headers: &async_nats::HeaderMap) -> Context {
    propagator().extract(&NatsExtractor(headers))
}

pub fn inject_map(cx: &Context, map: &mut HashMap<String, String>) {
    propagator().inject_context(cx, map);
}

pub fn extract_map(map: &HashMap<String, String>) -> Context {
    propagator().extract(map)
}

/// A context from a stored `traceparent` (empty context when it is absent or malformed).
pub fn from_traceparent(traceparent: Option<&str>) -> Context {
    let mut map = HashMap::new();
    if let Some(tp) = traceparent {
        map.insert("traceparent".to_owned(), tp.to_owned());
    }
    extract_map(&map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };

    fn sample() -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ))
    }

    fn ids(cx: &Context) -> (TraceId, SpanId) {
        let sc = cx.span().span_context().clone();
        (sc.trace_id(), sc.span_id())
    }

    #[test]
    fn nats_headers_round_trip() {
        let mut h = async_nats::HeaderMap::new();
        inject_nats(&sample(), &mut h);
        assert_eq!(
            h.get("traceparent").map(|v| v.as_str()),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(ids(&extract_nats(&h)), ids(&sample()));
    }

    #[test]
    fn grpc_metadata_reaches_http_extraction() {
        let mut meta = tonic::metadata::MetadataMap::new();
        propagator().inject_context(&sample(), &mut MetadataInjector(&mut meta));
        let headers = meta.into_headers();
        assert_eq!(ids(&extract_http(&headers)), ids(&sample()));
    }

    #[test]
    fn stored_traceparent_round_trips_and_garbage_is_ignored() {
        let mut map = HashMap::new();
        inject_map(&sample(), &mut map);
        let tp = map.get("traceparent").cloned();
        assert_eq!(ids(&from_traceparent(tp.as_deref())), ids(&sample()));
        for junk in [
            "",
            "00-zz-yy-01",
            "not a header",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            assert!(
                !from_traceparent(Some(junk))
                    .span()
                    .span_context()
                    .is_valid(),
                "{junk}"
            );
        }
        assert!(!from_traceparent(None).span().span_context().is_valid());
    }
}
