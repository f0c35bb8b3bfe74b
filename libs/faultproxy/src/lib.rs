//! An in-process TCP fault proxy for keel's reliability tests.
//!
//! A test starts a [`FaultProxy`] in front of a real upstream (inference's gRPC port, Redis,
//! Postgres, nats-server…), points the client at [`FaultProxy::addr`] instead of the upstream,
//! and then switches faults with [`FaultProxy::set`] while traffic runs:
//!
//! ```no_run
//! # async fn demo(redis: std::net::SocketAddr) -> std::io::Result<()> {
//! use keel_faultproxy::{Fault, FaultProxy};
//! use std::time::Duration;
//!
//! let proxy = FaultProxy::start(redis).await?;
//! // ... configure the service under test with `proxy.addr()` as its Redis address ...
//! proxy.set(Fault::Latency(Duration::from_millis(200)));
//! proxy.set(Fault::Blackhole); // the classic hang: open connections, no answers
//! proxy.set(Fault::None);
//! let stats = proxy.stats();
//! assert!(stats.accepted >= 1);
//! proxy.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! What it owns: one listener on a loopback address, one task per proxied connection and the
//! accept task, all in a [`tokio::task::JoinSet`] inside the proxy; [`FaultProxy::shutdown`]
//! (bounded) or dropping the proxy stops them and closes every socket.
//!
//! Semantics worth knowing:
//!
//! * A fault takes effect at once, for new **and** already-open connections (every connection
//!   task watches a `tokio::sync::watch` channel).
//! * Data read while [`Fault::Blackhole`] is on — or still queued for delivery when it comes on —
//!   is **dropped**, never delivered later. Going back to [`Fault::None`] resumes forwarding on the
//!   connections that are still open; the protocol on them may well be out of step by then (that is
//!   the point: the client has to notice with its own deadline). An end of stream (FIN) read
//!   during a blackhole is held back and delivered once the blackhole ends.
//! * [`Fault::Latency`] is measured from the moment a chunk was read; changing or clearing the
//!   latency re-times chunks already queued.
//! * [`Fault::Reset`] sends a real TCP RST to the client (zero `SO_LINGER`, then close), so the
//!   client's next read fails with `ConnectionReset`; the upstream side is reset too. Any I/O error
//!   on one side of a connection (for instance the peer's own reset) resets the other side.
//! * If the upstream cannot be reached, the client's connection is reset.
//! * Only the listening address must be loopback (`start_on` refuses anything else); the upstream
//!   is taken as given.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Largest chunk read from a socket at once: small enough that latency and bandwidth apply at a
/// fine grain, large enough that a 4 MiB transfer is a few hundred chunks.
const CHUNK: usize = 16 * 1024;

/// Chunks queued per direction between reading and writing (at most `QUEUE * CHUNK` = 4 MiB):
/// bounds memory per connection and lets a latency of d carry up to 4 MiB / d of throughput.
const QUEUE: usize = 256;

/// Under [`Fault::Bandwidth`], reads are cut to a twentieth of a second's worth of bytes so the
/// stream flows evenly instead of in bursts.
const PACING_SLICES_PER_SEC: u64 = 20;

/// After a failed `accept` (for example out of file descriptors), wait this long before the next
/// one so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How long [`FaultProxy::shutdown`] waits for its tasks to end before aborting them; they end
/// promptly on their own, this only bounds the worst case.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(2);

/// The fault applied to traffic through a [`FaultProxy`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything as it comes.
    #[default]
    None,
    /// Delay every chunk by this much in each direction. Order is kept, but throughput is not
    /// serialised by the delay: a chunk read at t is written at t + d.
    Latency(Duration),
    /// Throttle each direction of each connection to this rate. The proxy reads no faster than
    /// the rate, so the sender feels back-pressure. A rate of 0 stops reading altogether until the
    /// fault changes.
    Bandwidth {
        /// Bytes per second, per direction and per connection.
        bytes_per_sec: u64,
    },
    /// Connections stay open, bytes read are dropped, nothing is forwarded either way; new
    /// connections are accepted and blackholed too (the upstream is only dialled once the
    /// blackhole ends). The classic hang.
    Blackhole,
    /// Reset every open connection now (RST), and every new one at accept.
    Reset,
    /// Close new connections at once on accept (the client reads end of stream); connections
    /// already open are untouched.
    Refuse,
}

/// Counters since the proxy started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections accepted from clients, including those refused or reset at accept.
    pub accepted: u64,
    /// Connections being proxied right now.
    pub open: u64,
    /// Bytes forwarded from clients to the upstream.
    pub bytes_up: u64,
    /// Bytes forwarded from the upstream to clients.
    pub bytes_down: u64,
    /// Connections reset by [`Fault::Reset`] (open ones and those reset at accept).
    pub resets: u64,
    /// Connections closed at accept by [`Fault::Refuse`].
    pub refused: u64,
    /// Bytes dropped by [`Fault::Blackhole`], both directions.
    pub blackholed_bytes: u64,
}

/// A TCP proxy from a loopback listener to one upstream, with a switchable [`Fault`].
///
/// Dropping it aborts its tasks (closing every socket); [`FaultProxy::shutdown`] does the same
/// and waits, within a bound, until they have ended.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    state: watch::Sender<State>,
    counters: Arc<Counters>,
    tasks: JoinSet<()>,
}

/// What every connection watches: the current fault and how many times [`Fault::Reset`] was set
/// (so a reset followed at once by another fault still reaches every connection).
#[derive(Clone, Debug, Default)]
struct State {
    fault: Fault,
    resets: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    open: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    resets: AtomicU64,
    refused: AtomicU64,
    blackholed_bytes: AtomicU64,
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
}

impl FaultProxy {
    /// Listens on `127.0.0.1` on a free port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), upstream).await
    }

    /// Listens on `listen`, which must be a loopback address (port 0 picks a free port), and
    /// forwards to `upstream`.
    pub async fn start_on(listen: SocketAddr, upstream: SocketAddr) -> io::Result<FaultProxy> {
        if !listen.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("fault proxy listens on loopback only, not {}", listen.ip()),
            ));
        }
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (state, watcher) = watch::channel(State::default());
        let counters = Arc::new(Counters::default());
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(
            listener,
            upstream,
            watcher,
            Arc::clone(&counters),
        ));
        Ok(FaultProxy {
            addr,
            upstream,
            state,
            counters,
            tasks,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address traffic is forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Switches the fault; it applies at once to new and open connections. Setting
    /// [`Fault::Reset`] resets every open connection, even when set again.
    pub fn set(&self, fault: Fault) {
        self.state.send_modify(|state| {
            if fault == Fault::Reset {
                state.resets = state.resets.wrapping_add(1);
            }
            state.fault = fault;
        });
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        self.state.borrow().fault.clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            accepted: c.accepted.load(Ordering::Relaxed),
            open: c.open.load(Ordering::Relaxed),
            bytes_up: c.bytes_up.load(Ordering::Relaxed),
            bytes_down: c.bytes_down.load(Ordering::Relaxed),
            resets: c.resets.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            blackholed_bytes: c.blackholed_bytes.load(Ordering::Relaxed),
        }
    }

    /// Closes the listener and every connection (with a FIN, not a reset), waiting at most a
    /// couple of seconds.
    pub async fn shutdown(self) {
        let FaultProxy {
            state, mut tasks, ..
        } = self;
        // The accept loop sees the channel close, stops accepting and aborts every connection.
        drop(state);
        let drained = tokio::time::timeout(SHUTDOWN_BOUND, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("fault proxy tasks did not end in time, aborting them");
            tasks.shutdown().await;
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mut watcher: watch::Receiver<State>,
    counters: Arc<Counters>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _peer)) => {
                    counters.accepted.fetch_add(1, Ordering::Relaxed);
                    let (fault, resets) = {
                        let state = watcher.borrow();
                        (state.fault.clone(), state.resets)
                    };
                    match fault {
                        Fault::Refuse => {
                            counters.refused.fetch_add(1, Ordering::Relaxed);
                            drop(client);
                        }
                        Fault::Reset => {
                            counters.resets.fetch_add(1, Ordering::Relaxed);
                            reset(client);
                        }
                        _ => {
                            connections.spawn(connection(
                                client,
                                upstream,
                                watcher.clone(),
                                resets,
                                Arc::clone(&counters),
                            ));
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "fault proxy accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            changed = watcher.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    drop(listener);
    connections.shutdown().await;
}

/// Decrements the open-connection gauge however the connection task ends (aborts included).
struct OpenGuard(Arc<Counters>);

impl OpenGuard {
    fn new(counters: &Arc<Counters>) -> Self {
        counters.open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(Arc::clone(counters))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Closes a socket with a TCP RST instead of a FIN.
fn reset(stream: TcpStream) {
    if let Err(error) = stream.set_zero_linger() {
        tracing::debug!(%error, "fault proxy could not set zero linger");
    }
    drop(stream);
}

async fn connection(
    mut client: TcpStream,
    upstream: SocketAddr,
    watcher: watch::Receiver<State>,
    resets: u64,
    counters: Arc<Counters>,
) {
    let _open = OpenGuard::new(&counters);
    let dialled = tokio::select! {
        dialled = dial(&mut client, upstream, watcher.clone(), &counters) => dialled,
        () = reset_ordered(watcher.clone(), resets) => {
            counters.resets.fetch_add(1, Ordering::Relaxed);
            reset(client);
            return;
        }
    };
    let mut server = match dialled {
        Ok(server) => server,
        Err(error) => {
            tracing::debug!(%error, %upstream, "fault proxy could not reach upstream");
            reset(client);
            return;
        }
    };
    let ended = tokio::select! {
        piped = pipe(&mut client, &mut server, &watcher, &counters) => piped,
        () = reset_ordered(watcher.clone(), resets) => {
            counters.resets.fetch_add(1, Ordering::Relaxed);
            reset(client);
            reset(server);
            return;
        }
    };
    if let Err(error) = ended {
        tracing::debug!(%error, "fault proxy connection failed, resetting both sides");
        reset(client);
        reset(server);
    }
}

/// Returns once [`Fault::Reset`] has been set since the connection was accepted.
async fn reset_ordered(mut watcher: watch::Receiver<State>, resets: u64) {
    loop {
        if watcher.borrow_and_update().resets != resets {
            return;
        }
        changed(&mut watcher).await;
    }
}

/// Waits for the next fault change. Once the proxy is gone this never returns: the accept loop
/// is aborting the connection by then.
async fn changed(watcher: &mut watch::Receiver<State>) {
    if watcher.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn is_blackhole(watcher: &mut watch::Receiver<State>) -> bool {
    watcher.borrow_and_update().fault == Fault::Blackhole
}

/// Connects to the upstream, but only once no blackhole is on: until then, the client's bytes
/// are read and dropped.
async fn dial(
    client: &mut TcpStream,
    upstream: SocketAddr,
    mut watcher: watch::Receiver<State>,
    counters: &Counters,
) -> io::Result<TcpStream> {
    client.set_nodelay(true)?;
    let mut scratch = vec![0u8; CHUNK];
    let mut client_done = false;
    while is_blackhole(&mut watcher) {
        if client_done {
            changed(&mut watcher).await;
            continue;
        }
        tokio::select! {
            read = client.read(&mut scratch) => match read? {
                // End of stream: the pipe reads it again once connected and forwards it.
                0 => client_done = true,
                n => add(&counters.blackholed_bytes, n),
            },
            () = changed(&mut watcher) => {}
        }
    }
    let server = TcpStream::connect(upstream).await?;
    server.set_nodelay(true)?;
    Ok(server)
}

/// One chunk on its way from one side to the other.
struct Chunk {
    read_at: Instant,
    bytes: Vec<u8>,
}

/// Forwards both directions until both have ended (each end of stream is passed on as a
/// shutdown of the other side's write half), or fails on the first I/O error.
async fn pipe(
    client: &mut TcpStream,
    server: &mut TcpStream,
    watcher: &watch::Receiver<State>,
    counters: &Counters,
) -> io::Result<()> {
    let (client_read, client_write) = client.split();
    let (server_read, server_write) = server.split();
    let (up_tx, up_rx) = mpsc::channel(QUEUE);
    let (down_tx, down_rx) = mpsc::channel(QUEUE);
    tokio::try_join!(
        read_side(client_read, up_tx, watcher.clone(), counters),
        write_side(
            server_write,
            up_rx,
            watcher.clone(),
            &counters.bytes_up,
            counters
        ),
        read_side(server_read, down_tx, watcher.clone(), counters),
        write_side(
            client_write,
            down_rx,
            watcher.clone(),
            &counters.bytes_down,
            counters
        ),
    )?;
    Ok(())
}

/// The time `n` bytes take at `bytes_per_sec`, rounded up to the nanosecond.
fn transfer_time(n: usize, bytes_per_sec: u64) -> Duration {
    let nanos = (n as u128 * 1_000_000_000).div_ceil(u128::from(bytes_per_sec.max(1)));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

async fn read_side(
    mut from: ReadHalf<'_>,
    to: mpsc::Sender<Chunk>,
    mut watcher: watch::Receiver<State>,
    counters: &Counters,
) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    // Under Bandwidth, the time by which everything read so far may have passed.
    let mut paced_until = Instant::now();
    loop {
        let fault = watcher.borrow_and_update().fault.clone();
        let limit = match fault {
            Fault::Bandwidth { bytes_per_sec: 0 } => {
                changed(&mut watcher).await;
                continue;
            }
            Fault::Bandwidth { bytes_per_sec } => {
                let slice = (bytes_per_sec / PACING_SLICES_PER_SEC).max(1);
                usize::try_from(slice).unwrap_or(CHUNK).min(CHUNK)
            }
            _ => CHUNK,
        };
        let n = from.read(&mut buf[..limit]).await?;
        let read_at = Instant::now();
        if n == 0 {
            // Hold the end of stream back while a blackhole is on, deliver it afterwards.
            while is_blackhole(&mut watcher) {
                changed(&mut watcher).await;
            }
            return Ok(());
        }
        let fault = watcher.borrow_and_update().fault.clone();
        match fault {
            Fault::Blackhole => {
                add(&counters.blackholed_bytes, n);
                continue;
            }
            Fault::Bandwidth { bytes_per_sec } if bytes_per_sec > 0 => {
                paced_until = paced_until.max(read_at) + transfer_time(n, bytes_per_sec);
                // A fault change ends the wait early; the chunk then follows the new fault.
                tokio::select! {
                    () = tokio::time::sleep_until(paced_until) => {}
                    () = changed(&mut watcher) => {}
                }
            }
            _ => {}
        }
        let chunk = Chunk {
            read_at,
            bytes: buf[..n].to_vec(),
        };
        if to.send(chunk).await.is_err() {
            // The writer is gone, which only happens when the pipe is ending.
            return Ok(());
        }
    }
}

async fn write_side(
    mut to: WriteHalf<'_>,
    mut from: mpsc::Receiver<Chunk>,
    mut watcher: watch::Receiver<State>,
    forwarded: &AtomicU64,
    counters: &Counters,
) -> io::Result<()> {
    while let Some(chunk) = from.recv().await {
        loop {
            let fault = watcher.borrow_and_update().fault.clone();
            match fault {
                Fault::Blackhole => {
                    add(&counters.blackholed_bytes, chunk.bytes.len());
                    break;
                }
                Fault::Latency(delay) if chunk.read_at.elapsed() < delay => {
                    // Re-timed if the fault changes while waiting; a delay too long to represent
                    // as an instant lasts until the fault changes.
                    match chunk.read_at.checked_add(delay) {
                        Some(due) => tokio::select! {
                            () = tokio::time::sleep_until(due) => {}
                            () = changed(&mut watcher) => {}
                        },
                        None => changed(&mut watcher).await,
                    }
                }
                _ => {
                    to.write_all(&chunk.bytes).await?;
                    add(forwarded, chunk.bytes.len());
                    break;
                }
            }
        }
    }
    // The other side ended its stream: pass the end on. It may already be gone, which the
    // other direction reports if it matters.
    if let Err(error) = to.shutdown().await {
        tracing::debug!(%error, "fault proxy could not pass on end of stream");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_time_rounds_up() {
        assert_eq!(transfer_time(1, 1), Duration::from_secs(1));
        assert_eq!(transfer_time(1, 3), Duration::from_nanos(333_333_334));
        assert_eq!(transfer_time(1024, 1024), Duration::from_secs(1));
        assert_eq!(transfer_time(5, 0), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn start_on_refuses_a_non_loopback_address() {
        let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
        let error = FaultProxy::start_on(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), upstream)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn set_reset_counts_every_time() {
        let proxy = FaultProxy::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 9)))
            .await
            .unwrap();
        proxy.set(Fault::Reset);
        proxy.set(Fault::None);
        proxy.set(Fault::Reset);
        assert_eq!(proxy.state.borrow().resets, 2);
        assert_eq!(proxy.fault(), Fault::Reset);
        proxy.shutdown().await;
    }
}
