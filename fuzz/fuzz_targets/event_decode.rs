//! How postproc turns a JetStream message into an event, on arbitrary input. The input is a
//! NATS header block (`Name: value` lines, as in an `HMSG`), an empty line, then the payload.
//! The headers are parsed the way the NATS client parses them off the wire (names checked,
//! values trimmed, continuation lines joined), then read into a `Delivery` the way the consumer
//! runner does (`Keel-Event-Id` before `Nats-Msg-Id`, the tenant header through `TenantId`),
//! and handed to every consumer's decoder (documents, usage, audit, moderation) and to the
//! trace-context extraction that parents the consumer span.
//!
//! Nothing may panic. A decoded event agrees with its headers; encoding it again and decoding
//! that gives the same event; a verdict's score is in [0, 1]; an extracted trace context
//! injected into fresh headers extracts to the same context.
#![no_main]

use std::str::FromStr;

use async_nats::{HeaderMap, HeaderName};
use keel_bus::Delivery;
use keel_postproc::{audit, common, handler, indexer, moderation, usage};
use keel_proto::events;
use libfuzzer_sys::fuzz_target;
use opentelemetry::trace::TraceContextExt;
use prost::Message;

/// The header block as the NATS client reads it (`async_nats::connection`, HMSG).
fn parse_headers(block: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut lines = block.split("\r\n").flat_map(|l| l.split('\n')).peekable();
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let Ok(name) = HeaderName::from_str(name) else {
            continue;
        };
        let mut value = value.trim_start().to_owned();
        while let Some(v) = lines.next_if(|s| s.starts_with(char::is_whitespace)) {
            value.push_str(v);
        }
        value.truncate(value.trim_end().len());
        headers.append(name, value.as_str());
    }
    headers
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).map(|v| v.as_str().to_owned())
}

/// The consumer runner's reading of a message (`keel_bus::consumer`).
fn delivery(h: &HeaderMap, payload: &[u8]) -> Delivery {
    Delivery {
        subject: "keel.events.acme.document.created".into(),
        event_id: header(h, keel_bus::dlq::EVENT_ID_HEADER).or_else(|| header(h, "Nats-Msg-Id")),
        tenant: header(h, keel_tenancy::NATS_TENANT_HEADER)
            .and_then(|t| keel_tenancy::TenantId::parse(&t).ok()),
        event_type: header(h, keel_bus::EVENT_TYPE_HEADER),
        schema_version: header(h, keel_bus::SCHEMA_VERSION_HEADER),
        payload: payload.to_vec().into(),
        delivered: 1,
        stream_sequence: 1,
    }
}

/// The same message with another payload (and the event type that goes with it).
fn with_payload(d: &Delivery, payload: Vec<u8>) -> Delivery {
    Delivery {
        payload: payload.into(),
        ..d.clone()
    }
}

/// The decoded event, encoded again under the same headers, decodes to itself.
fn decodes_again<T: PartialEq + std::fmt::Debug, E: std::fmt::Debug>(
    d: &Delivery,
    payload: Vec<u8>,
    decode: impl Fn(&Delivery) -> Result<T, E>,
    decoded: &T,
) {
    let again = decode(&with_payload(d, payload)).expect("a re-encoded event decodes");
    assert_eq!(&again, decoded);
}

fn agrees_with_headers(d: &Delivery, tenant: &keel_tenancy::TenantId, event_id: &str) {
    assert_eq!(d.schema_version.as_deref(), Some("1"));
    assert_eq!(d.tenant.as_ref(), Some(tenant));
    assert_eq!(d.event_id.as_deref(), Some(event_id));
}

fn documents(d: &Delivery) {
    let Ok(dec) = handler::decode(d) else {
        return;
    };
    agrees_with_headers(d, &dec.tenant, &dec.event_id);
    let (event_id, tenant_id) = (dec.event_id.clone(), dec.tenant.as_str().to_owned());
    let payload = match &dec.event {
        handler::DocumentEvent::Created {
            document_id,
            version,
            title,
            content_bytes,
        } => {
            for c in indexer::chunk(title) {
                assert!(!c.is_empty());
                assert!(c.split_whitespace().count() <= indexer::CHUNK_WORDS);
            }
            events::DocumentCreated {
                event_id,
                tenant_id,
                document_id: document_id.to_string(),
                version: *version,
                title: title.clone(),
                content_bytes: *content_bytes,
                occur_time: None,
            }
            .encode_to_vec()
        }
        handler::DocumentEvent::Updated {
            document_id,
            version,
            title,
            content_bytes,
        } => events::DocumentUpdated {
            event_id,
            tenant_id,
            document_id: document_id.to_string(),
            version: *version,
            title: title.clone(),
            content_bytes: *content_bytes,
            occur_time: None,
        }
        .encode_to_vec(),
        handler::DocumentEvent::Deleted {
            document_id,
            version,
        } => events::DocumentDeleted {
            event_id,
            tenant_id,
            document_id: document_id.to_string(),
            version: *version,
            occur_time: None,
        }
        .encode_to_vec(),
    };
    decodes_again(d, payload, handler::decode, &dec);
}

fn metered(d: &Delivery) {
    let Ok(m) = usage::decode(d) else {
        return;
    };
    agrees_with_headers(d, &m.tenant, &m.event_id);
    assert!(!m.model_version.is_empty() && m.model_version.len() <= 100);
    let midnight = m.day.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    let payload = events::InferenceCompleted {
        event_id: m.event_id.clone(),
        tenant_id: m.tenant.as_str().to_owned(),
        model_version: m.model_version.clone(),
        input_tokens: m.input_tokens,
        output_tokens: m.output_tokens,
        cache_hit: m.cache_hit,
        occur_time: Some(common::timestamp(midnight)),
        ..Default::default()
    }
    .encode_to_vec();
    decodes_again(d, payload, usage::decode, &m);
}

fn audited(d: &Delivery) {
    let Ok(e) = audit::decode(d) else {
        return;
    };
    agrees_with_headers(d, &e.tenant, &e.event_id);
    assert!(!e.kind.is_empty() && e.kind.len() <= 100);
    assert!(e.user_id.chars().count() <= 200 && e.session_id.chars().count() <= 200);
    let payload = events::AuditEvent {
        event_id: e.event_id.clone(),
        tenant_id: e.tenant.as_str().to_owned(),
        kind: e.kind.clone(),
        user_id: e.user_id.clone(),
        session_id: e.session_id.clone(),
        occur_time: Some(common::timestamp(e.occur_time)),
        details: e.details.clone().into_iter().collect(),
    }
    .encode_to_vec();
    decodes_again(d, payload, audit::decode, &e);
}

fn judged(d: &Delivery) {
    let Ok(j) = moderation::decode(d) else {
        return;
    };
    agrees_with_headers(d, &j.tenant, &j.event_id);
    assert!(j.model_version.chars().count() <= 100);
    let v = &j.verdict;
    assert!((0.0..=1.0).contains(&v.score), "score {}", v.score);
    assert_eq!(v.categories.is_empty(), v.score == 0.0);
    let mut cats = v.categories.clone();
    cats.sort_unstable();
    cats.dedup();
    assert_eq!(cats.len(), v.categories.len(), "{:?}", v.categories);
    // Deterministic: the same answer gets the same verdict.
    if let Ok(m) = events::InferenceCompleted::decode(d.payload.as_ref()) {
        assert_eq!(moderation::classify(&m.output_text, &m.finish_reason), *v);
    }
}

fn trace_context(h: &HeaderMap) {
    let cx = keel_telemetry::propagation::extract_nats(h);
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return;
    }
    let mut out = HeaderMap::new();
    keel_telemetry::propagation::inject_nats(&cx, &mut out);
    let again = keel_telemetry::propagation::extract_nats(&out);
    let sc2 = again.span().span_context().clone();
    assert_eq!(
        (sc.trace_id(), sc.span_id(), sc.trace_flags()),
        (sc2.trace_id(), sc2.span_id(), sc2.trace_flags())
    );
    // The outbox's stored form reads the same.
    let stored =
        keel_telemetry::propagation::from_traceparent(out.get("traceparent").map(|v| v.as_str()));
    assert_eq!(stored.span().span_context().trace_id(), sc.trace_id());
}

fuzz_target!(|data: &[u8]| {
    let (block, payload) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let block = String::from_utf8_lossy(block);
    let headers = parse_headers(&block);
    let d = delivery(&headers, payload);
    documents(&d);
    metered(&d);
    audited(&d);
    judged(&d);
    trace_context(&headers);
});
