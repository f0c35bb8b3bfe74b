//! The public HTTP listener (the gateway's OpenAI-compatible surface, auth's OIDC issuers):
//! HTTP/1.1 served by hyper with the limits a hostile client must not get past.
//!
//! `axum::serve` sets no timer, so hyper's header-read timeout never runs and a client that
//! trickles its headers (slow-loris) or never reads its answer holds a connection, and the
//! call's in-flight slot, for ever. Here every connection is bounded three ways:
//! * **headers** must arrive whole within [`HttpLimits::header_read`] (hyper's own timer);
//! * a **request body** must arrive whole within [`HttpLimits::body_read`] after its headers;
//! * a **write that makes no progress** (a client that stopped reading a streamed answer, so
//!   the socket buffers are full) for [`HttpLimits::write_stall`] closes the connection, which
//!   drops the response body and with it the upstream call.
//!
//! Headers are capped at [`MAX_HEADER_BYTES`] (431 beyond it) and connections at
//! [`HttpLimits::max_connections`] (further ones are closed at accept). The gRPC listener
//! shares the write-stall bound ([`StallGuard`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use keel_config::{ConfigError, Env};

/// A browser or SDK sends its headers in one packet; 10 s is generous even on a bad mobile link
/// and short enough that a slow-loris client holds each connection briefly.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body is ~2 MiB (an inference call); 30 s allows ~70 KB/s.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A reading client drains a socket in milliseconds; 30 s without any progress means it has
/// stopped reading (or vanished without a FIN).
pub const DEFAULT_WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Open connections per listener: far above what one replica serves (its in-flight bound is
/// 2,048 calls) while keeping file descriptors and buffers bounded.
pub const DEFAULT_MAX_CONNECTIONS: usize = 8192;
/// Request line plus headers: a bearer token is at most 8 KiB (the verifier's cap).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub header_read: Duration,
    pub body_read: Duration,
    pub write_stall: Duration,
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read: DEFAULT_HEADER_READ_TIMEOUT,
            body_read: DEFAULT_BODY_READ_TIMEOUT,
            write_stall: DEFAULT_WRITE_STALL_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl HttpLimits {
    /// `KEEL_HTTP_HEADER_READ_TIMEOUT`, `KEEL_HTTP_BODY_READ_TIMEOUT`,
    /// `KEEL_HTTP_WRITE_STALL_TIMEOUT`, `KEEL_HTTP_MAX_CONNECTIONS`.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(HttpLimits {
            header_read: env
                .duration("KEEL_HTTP_HEADER_READ_TIMEOUT", DEFAULT_HEADER_READ_TIMEOUT)?,
            body_read: env.duration("KEEL_HTTP_BODY_READ_TIMEOUT", DEFAULT_BODY_READ_TIMEOUT)?,
            write_stall: env
                .duration("KEEL_HTTP_WRITE_STALL_TIMEOUT", DEFAULT_WRITE_STALL_TIMEOUT)?,
            max_connections: env.or("KEEL_HTTP_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS)?,
        })
    }
}

/// Serves `router` on `listener` until `token` is cancelled, then lets open connections finish
/// their current request (the caller bounds the wait: the host's grace period).
pub(crate) async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: HttpLimits,
    token: CancellationToken,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = token.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("keel_http_connections_refused_total").increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let limits = limits.clone();
        let token = token.clone();
        connections.spawn(async move {
            serve_connection(stream, peer, router, &limits, token).await;
            drop(permit);
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: axum::Router,
    limits: &HttpLimits,
    token: CancellationToken,
) {
    let body_read = limits.body_read;
    let service = router.map_request(move |req: http::Request<hyper::body::Incoming>| {
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(ConnectInfo(peer));
        http::Request::from_parts(
            parts,
            axum::body::Body::new(TimedBody::new(body, body_read)),
        )
    });
    let io = TokioIo::new(StallGuard::new(stream, limits.write_stall));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .max_buf_size(MAX_HEADER_BYTES.max(8192) * 2)
        .max_header_size(MAX_HEADER_BYTES);
    let conn = builder.serve_connection(io, hyper_util::service::TowerToHyperService::new(service));
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                count_closed(&e);
            }
        }
        () = token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

fn count_closed(e: &hyper::Error) {
    let cause = if e.is_timeout() {
        "header_timeout"
    } else if std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    {
        "write_stall"
    } else if e.is_parse() || e.is_parse_too_large() {
        "malformed"
    } else {
        "other"
    };
    metrics::counter!("keel_http_connections_closed_total", "cause" => cause).increment(1);
    tracing::debug!(error = %e, cause, "HTTP connection closed");
}

/// A connection that fails its writes when they make no progress for `stall`. Both listeners
/// use it: on HTTP/2 (gRPC) a client that stops reading its socket stalls every stream of the
/// connection the same way.
pub(crate) struct StallGuard<T> {
    inner: T,
    stall: Duration,
    /// Armed while a write is pending, disarmed by any progress.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> StallGuard<T> {
    pub(crate) fn new(inner: T, stall: Duration) -> Self {
        StallGuard {
            inner,
            stall,
            timer: None,
        }
    }

    /// Called when the inner write is pending: starts the clock, or fails once it has run out.
    fn pending<R>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<R>> {
        let stall = self.stall;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tonic::transport::server::Connected for StallGuard<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.timer = None;
                ready
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.timer = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.timer = None;
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request body that must arrive whole within a deadline from its headers.
struct TimedBody<B> {
    inner: B,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<B> TimedBody<B> {
    fn new(inner: B, within: Duration) -> Self {
        TimedBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(within)),
        }
    }
}

/// The error a body that arrives too slowly ends with (axum's extractors answer it with 4xx).
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimeout;

impl<B> http_body::Body for TimedBody<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
