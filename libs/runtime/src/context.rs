//! The request context that crosses internal hops: tenant (`keel-tenant-id`), correlation ID
//! (`x-correlation-id`) and W3C trace context.
//!
//! Incoming: [`tenant`] reads the tenant an internal call was made for, with precise errors.
//! Outgoing: [`outgoing`] builds a request carrying all three from the current task.

use keel_errors::{Reason, status};
use keel_tenancy::{CORRELATION_HEADER, GRPC_TENANT_HEADER, TenantId};
use tonic::metadata::MetadataValue;

tokio::task_local! {
    pub(crate) static CORRELATION_ID: String;
}

/// The correlation ID of the request this task serves, if any.
pub fn correlation_id() -> Option<String> {
    CORRELATION_ID.try_with(Clone::clone).ok()
}

/// Runs `fut` with `id` as the task's correlation ID (for work started outside a request).
pub async fn with_correlation_id<F: std::future::Future>(id: String, fut: F) -> F::Output {
    CORRELATION_ID.scope(id, fut).await
}

/// Largest accepted client-supplied correlation ID; longer ones are replaced, not trusted.
const MAX_CORRELATION_LEN: usize = 128;

/// A usable correlation ID from a header value, or `None` (then the server makes one).
pub fn sanitize_correlation(v: &str) -> Option<String> {
    (!v.is_empty() && v.len() <= MAX_CORRELATION_LEN && v.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| v.to_owned())
}

/// The tenant of an internal call, from `keel-tenant-id`.
pub fn tenant<T>(req: &tonic::Request<T>) -> Result<TenantId, tonic::Status> {
    tenant_from_metadata(req.metadata())
}

pub fn tenant_from_metadata(
    meta: &tonic::metadata::MetadataMap,
) -> Result<TenantId, tonic::Status> {
    let raw = meta.get(GRPC_TENANT_HEADER).ok_or_else(|| {
        status(
            Reason::TenantIdMissing,
            format!("the `{GRPC_TENANT_HEADER}` metadata is required"),
            vec![("field", GRPC_TENANT_HEADER.into())],
        )
    })?;
    let s = raw.to_str().map_err(|_| malformed("not ASCII".into()))?;
    TenantId::parse(s).map_err(|e| malformed(e.to_string()))
}

fn malformed(problem: String) -> tonic::Status {
    status(
        Reason::TenantIdMalformed,
        format!("`{GRPC_TENANT_HEADER}` is malformed: {problem}"),
        vec![("field", GRPC_TENANT_HEADER.into())],
    )
}

/// A request to another keel service on behalf of `tenant`, carrying the correlation ID and the
/// current span's trace context.
pub fn outgoing<T>(message: T, tenant: &TenantId) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    let meta = req.metadata_mut();
    if let Ok(v) = MetadataValue::try_from(tenant.as_str()) {
        meta.insert(GRPC_TENANT_HEADER, v);
    }
    if let Some(id) = correlation_id()
        && let Ok(v) = MetadataValue::try_from(id.as_str())
    {
        meta.insert(CORRELATION_HEADER, v);
    }
    keel_telemetry::propagation::inject_grpc(meta);
    req
}

/// Connecting to another keel service on the same network takes well under a second; longer
/// means it is down, and the call should fail rather than wait.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a connection to another keel service may go without receiving anything before it
/// is asked for a sign of life (an HTTP/2 PING), and how long the answer may take before the
/// connection is closed and the next call dials a new one. A live peer answers a PING in
/// milliseconds even while its handlers are busy; the bound is generous for loaded machines.
pub const UPSTREAM_PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
pub const UPSTREAM_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A channel to another keel service that connects on first use (so services may start in any
/// order) with `TCP_NODELAY`, a short connect timeout, and HTTP/2 PINGs that find a dead
/// connection within [`UPSTREAM_PING_INTERVAL`] + [`UPSTREAM_PING_TIMEOUT`].
///
/// Without the PINGs nothing ever closes a connection that stopped answering without a FIN or
/// RST (a blackholed network path, a peer that lost its half of the HTTP/2 state): every call
/// on it runs into its deadline, the breaker's probes too, for as long as the kernel keeps the
/// TCP connection (many minutes). Found by `cargo xtask chaos`: after a 4 s blackhole between
/// the gateway and inference, the gateway's channel stayed unusable for over a minute (every
/// read and write failed, two writes gave up) until the connection was reset.
pub fn lazy_channel(url: &str) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(UPSTREAM_PING_INTERVAL)
        .keep_alive_timeout(UPSTREAM_PING_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect_lazy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_metadata_errors_are_precise() {
        let req = tonic::Request::new(());
        let st = tenant(&req).unwrap_err();
        assert_eq!(keel_errors::reason_of(&st), Reason::TenantIdMissing);
        assert_eq!(st.code(), tonic::Code::InvalidArgument);

        let mut req = tonic::Request::new(());
        req.metadata_mut()
            .insert(GRPC_TENANT_HEADER, MetadataValue::from_static("Bad Tenant"));
        let st = tenant(&req).unwrap_err();
        assert_eq!(keel_errors::reason_of(&st), Reason::TenantIdMalformed);

        let mut req = tonic::Request::new(());
        req.metadata_mut()
            .insert(GRPC_TENANT_HEADER, MetadataValue::from_static("acme"));
        assert_eq!(tenant(&req).unwrap().as_str(), "acme");
    }

    #[tokio::test]
    async fn outgoing_carries_tenant_and_correlation() {
        let t = TenantId::parse("acme").unwrap();
        let req = with_correlation_id("c-42".into(), async { outgoing((), &t) }).await;
        assert_eq!(req.metadata().get(GRPC_TENANT_HEADER).unwrap(), "acme");
        assert_eq!(req.metadata().get(CORRELATION_HEADER).unwrap(), "c-42");
        let req = outgoing((), &t);
        assert!(req.metadata().get(CORRELATION_HEADER).is_none());
    }

    #[test]
    fn correlation_ids_are_bounded() {
        assert_eq!(sanitize_correlation("abc-1"), Some("abc-1".into()));
        assert_eq!(sanitize_correlation(""), None);
        assert_eq!(sanitize_correlation("a b"), None);
        assert_eq!(sanitize_correlation(&"x".repeat(129)), None);
    }
}
