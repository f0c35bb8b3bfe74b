//! The proxy against a real local TCP echo server. Timing assertions are lower bounds only: the
//! machine may be slow, never fast.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use keel_faultproxy::{Fault, FaultProxy, Stats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

/// Long enough for anything that should happen "at once" on a loaded machine.
const PROMPTLY: Duration = Duration::from_secs(10);

/// How long a blackholed request is given to (not) get an answer.
const NO_ANSWER_WITHIN: Duration = Duration::from_millis(300);

/// An echo server whose tasks end when it is dropped.
struct Echo {
    addr: SocketAddr,
    _tasks: JoinSet<()>,
}

impl Echo {
    async fn start() -> Echo {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                connections.spawn(async move {
                    let (mut read, mut write) = stream.split();
                    if tokio::io::copy(&mut read, &mut write).await.is_ok() {
                        let _ = write.shutdown().await;
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Echo {
            addr,
            _tasks: tasks,
        }
    }
}

async fn setup() -> (Echo, FaultProxy) {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(echo.addr).await.unwrap();
    (echo, proxy)
}

/// Writes `request` and reads exactly as many bytes back.
async fn round_trip(stream: &mut TcpStream, request: &[u8]) -> io::Result<Vec<u8>> {
    stream.write_all(request).await?;
    let mut answer = vec![0u8; request.len()];
    stream.read_exact(&mut answer).await?;
    Ok(answer)
}

async fn eventually(proxy: &FaultProxy, what: &str, check: impl Fn(&Stats) -> bool) {
    let deadline = Instant::now() + PROMPTLY;
    loop {
        let stats = proxy.stats();
        if check(&stats) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {stats:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_a_large_payload_byte_exact_both_ways() {
    let (_echo, proxy) = setup().await;
    const SIZE: usize = 4 * 1024 * 1024;
    let payload: Vec<u8> = (0..SIZE).map(|i| (i * 7 + i / 251) as u8).collect();

    let stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let send = async {
        write.write_all(&payload).await.unwrap();
        write.shutdown().await.unwrap();
    };
    let receive = async {
        let mut echoed = Vec::with_capacity(SIZE);
        read.read_to_end(&mut echoed).await.unwrap();
        echoed
    };
    let ((), echoed) = timeout(PROMPTLY, async { tokio::join!(send, receive) })
        .await
        .unwrap();
    assert_eq!(echoed.len(), SIZE);
    assert!(echoed == payload, "echoed bytes differ");

    eventually(&proxy, "all bytes counted, connection closed", |s| {
        s.bytes_up == SIZE as u64 && s.bytes_down == SIZE as u64 && s.open == 0
    })
    .await;
    let stats = proxy.stats();
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.resets, 0);
    assert_eq!(stats.blackholed_bytes, 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn latency_delays_each_direction() {
    let (_echo, proxy) = setup().await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream.set_nodelay(true).unwrap();
    assert_eq!(round_trip(&mut stream, b"warm").await.unwrap(), b"warm");

    let delay = Duration::from_millis(150);
    proxy.set(Fault::Latency(delay));
    assert_eq!(proxy.fault(), Fault::Latency(delay));
    let started = Instant::now();
    assert_eq!(round_trip(&mut stream, b"ping").await.unwrap(), b"ping");
    let took = started.elapsed();
    assert!(
        took >= 2 * delay,
        "round trip took {took:?}, latency {delay:?} each way"
    );

    // Back to no fault: the same connection keeps working.
    proxy.set(Fault::None);
    assert_eq!(round_trip(&mut stream, b"pong").await.unwrap(), b"pong");
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_unrepresentable_latency_lasts_until_cleared() {
    let (_echo, proxy) = setup().await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    proxy.set(Fault::Latency(Duration::MAX));
    stream.write_all(b"slow").await.unwrap();
    let mut answer = [0u8; 4];
    assert!(
        timeout(NO_ANSWER_WITHIN, stream.read(&mut answer))
            .await
            .is_err()
    );
    // Clearing the latency releases what was held, in order.
    proxy.set(Fault::None);
    timeout(PROMPTLY, stream.read_exact(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&answer, b"slow");
    proxy.shutdown().await;
}

#[tokio::test]
async fn bandwidth_throttles_a_transfer() {
    let (_echo, proxy) = setup().await;
    let rate: u64 = 256 * 1024;
    proxy.set(Fault::Bandwidth {
        bytes_per_sec: rate,
    });
    const SIZE: usize = 256 * 1024;
    let payload = vec![42u8; SIZE];

    let started = Instant::now();
    let stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let send = async { write.write_all(&payload).await.unwrap() };
    let receive = async {
        let mut echoed = vec![0u8; SIZE];
        read.read_exact(&mut echoed).await.unwrap();
        echoed
    };
    let ((), echoed) = timeout(PROMPTLY, async { tokio::join!(send, receive) })
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(echoed, payload);
    let floor = Duration::from_secs_f64(SIZE as f64 / rate as f64);
    assert!(took >= floor, "{SIZE} bytes at {rate} B/s took {took:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn blackhole_hangs_without_closing_and_recovers() {
    let (_echo, proxy) = setup().await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut stream, b"before").await.unwrap(), b"before");

    proxy.set(Fault::Blackhole);
    stream.write_all(b"lost-1").await.unwrap();
    let mut answer = [0u8; 6];
    assert!(
        timeout(NO_ANSWER_WITHIN, stream.read(&mut answer))
            .await
            .is_err(),
        "a blackholed request got an answer or the connection closed"
    );
    eventually(&proxy, "blackholed bytes counted", |s| {
        s.blackholed_bytes >= 6
    })
    .await;
    assert_eq!(proxy.stats().open, 1);

    // Forwarding resumes on the same connection; what was sent during the blackhole is gone.
    proxy.set(Fault::None);
    let answer = timeout(PROMPTLY, round_trip(&mut stream, b"after!"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, b"after!");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_connection_opened_during_a_blackhole_hangs_then_works() {
    let (_echo, proxy) = setup().await;
    proxy.set(Fault::Blackhole);
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream.write_all(b"lost").await.unwrap();
    let mut answer = [0u8; 4];
    assert!(
        timeout(NO_ANSWER_WITHIN, stream.read(&mut answer))
            .await
            .is_err()
    );
    eventually(&proxy, "blackholed bytes counted", |s| {
        s.blackholed_bytes == 4
    })
    .await;
    proxy.set(Fault::None);
    let answer = timeout(PROMPTLY, round_trip(&mut stream, b"seen"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, b"seen");
    assert_eq!(proxy.stats().blackholed_bytes, 4);
    proxy.shutdown().await;
}

#[tokio::test]
async fn reset_sends_a_real_rst_to_open_and_new_connections() {
    let (_echo, proxy) = setup().await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut stream, b"hello").await.unwrap(), b"hello");

    proxy.set(Fault::Reset);
    let mut buf = [0u8; 16];
    let read = timeout(PROMPTLY, stream.read(&mut buf)).await.unwrap();
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionReset)
    );

    // A connection made while the fault is on is reset at accept.
    let mut late = TcpStream::connect(proxy.addr()).await.unwrap();
    let read = timeout(PROMPTLY, late.read(&mut buf)).await.unwrap();
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionReset)
    );
    eventually(&proxy, "both resets counted", |s| {
        s.resets == 2 && s.open == 0
    })
    .await;

    // Once the fault is cleared, new connections work again.
    proxy.set(Fault::None);
    let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut fresh, b"again").await.unwrap(), b"again");
    proxy.shutdown().await;
}

#[tokio::test]
async fn refuse_closes_new_connections_and_spares_open_ones() {
    let (_echo, proxy) = setup().await;
    let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut open, b"one").await.unwrap(), b"one");

    proxy.set(Fault::Refuse);
    let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut buf = [0u8; 8];
    match timeout(PROMPTLY, refused.read(&mut buf)).await.unwrap() {
        Ok(0) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("a refused connection read {other:?}"),
    }
    eventually(&proxy, "refusal counted", |s| s.refused == 1).await;

    assert_eq!(round_trip(&mut open, b"two").await.unwrap(), b"two");
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_upstream_resets_the_client() {
    // A port that was free a moment ago: nothing listens there.
    let upstream = {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        listener.local_addr().unwrap()
    };
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut buf = [0u8; 8];
    let read = timeout(PROMPTLY, stream.read(&mut buf)).await.unwrap();
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionReset)
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn shutdown_is_bounded_with_open_connections() {
    let (_echo, proxy) = setup().await;
    let addr = proxy.addr();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert_eq!(round_trip(&mut stream, b"up").await.unwrap(), b"up");
        streams.push(stream);
    }
    // One more, hung in a blackhole with bytes in flight.
    proxy.set(Fault::Blackhole);
    let mut hung = TcpStream::connect(addr).await.unwrap();
    hung.write_all(b"hang").await.unwrap();
    eventually(&proxy, "all four open", |s| s.open == 4).await;

    timeout(PROMPTLY, proxy.shutdown()).await.unwrap();

    streams.push(hung);
    for stream in &mut streams {
        let mut buf = [0u8; 8];
        match timeout(PROMPTLY, stream.read(&mut buf)).await.unwrap() {
            Ok(0) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("a connection survived shutdown: {other:?}"),
        }
    }
    let refused = TcpStream::connect(addr).await;
    assert!(refused.is_err(), "the listener survived shutdown");
}

#[tokio::test]
async fn dropping_the_proxy_closes_connections() {
    let (_echo, proxy) = setup().await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut stream, b"x").await.unwrap(), b"x");
    drop(proxy);
    let mut buf = [0u8; 8];
    match timeout(PROMPTLY, stream.read(&mut buf)).await.unwrap() {
        Ok(0) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("a connection survived the proxy: {other:?}"),
    }
}
