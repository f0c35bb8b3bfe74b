//! Hostile input at the gateway's public surfaces: malformed protobuf, strings that are not
//! UTF-8, huge metadata and headers, slow-loris HTTP clients (trickled headers, trickled
//! bodies), and streamed answers nobody reads. Each gets a precise error or a timeout; none
//! crashes the gateway, holds a connection for ever, or stops it serving the next client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use keel_proto::public as pb;
use keel_tests::{TestStack, authed, detail, http_request, reason};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Sends and receives message bodies as raw bytes: whatever the test wants on the wire.
#[derive(Default, Clone)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

async fn raw_call(
    stack: &TestStack,
    path: &'static str,
    body: Vec<u8>,
    token: &str,
) -> Result<Vec<u8>, tonic::Status> {
    let channel = keel_tests::connect(&stack.gateway_url()).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut req = authed(body, token);
    req.set_timeout(Duration::from_secs(5));
    grpc.unary(req, http::uri::PathAndQuery::from_static(path), RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

async fn still_serves(stack: &TestStack, token: &str) {
    let mut docs = stack.documents().await.unwrap();
    docs.list_documents(authed(pb::ListDocumentsRequest::default(), token))
        .await
        .expect("the gateway still serves a well-formed call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_protobuf_and_invalid_utf8_get_invalid_argument() {
    let stack = TestStack::start().await.unwrap();
    let token = stack.tenant_token("acme").await.unwrap();
    let cases: Vec<(&str, &'static str, Vec<u8>)> = vec![
        (
            "garbage bytes",
            "/keel.v1.DocumentService/ListDocuments",
            vec![0xff; 64],
        ),
        (
            "a length prefix running past the end",
            "/keel.v1.DocumentService/CreateDocument",
            vec![0x0a, 0x7f, b'x'],
        ),
        (
            "a title that is not UTF-8",
            "/keel.v1.DocumentService/CreateDocument",
            vec![0x0a, 0x02, 0xc3, 0x28, 0x12, 0x01, b'x'],
        ),
        (
            "a varint of eleven bytes",
            "/keel.v1.DocumentService/ListDocuments",
            vec![
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ),
        (
            "a chat message that is not UTF-8, on a streaming method",
            "/keel.v1.InferenceService/Generate",
            vec![0x12, 0x03, 0x12, 0x01, 0xff],
        ),
        (
            "a login whose password is not UTF-8",
            "/keel.v1.AuthenticationService/Login",
            vec![0x0a, 0x04, b'a', b'c', b'm', b'e', 0x1a, 0x01, 0xfe],
        ),
    ];
    for (name, path, body) in cases {
        let st = raw_call(&stack, path, body, &token).await.expect_err(name);
        assert_eq!(st.code(), Code::InvalidArgument, "{name}: {st:?}");
        assert_eq!(reason(&st), "INVALID_ARGUMENT", "{name}");
        assert_eq!(detail(&st, "cause").as_deref(), Some("malformed"), "{name}");
        assert_eq!(detail(&st, "field").as_deref(), Some("message"), "{name}");
    }
    // Nothing was written by any of them, and the gateway is fine.
    let mut docs = stack.documents().await.unwrap();
    let listed = docs
        .list_documents(authed(pb::ListDocumentsRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.documents.is_empty(), "{listed:?}");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn huge_metadata_and_headers_are_refused_and_the_gateway_stays_up() {
    let stack = TestStack::start().await.unwrap();
    let token = stack.tenant_token("acme").await.unwrap();
    // gRPC: metadata far beyond any real call's, on a fresh connection each time.
    for size in [64 * 1024, 1024 * 1024] {
        let mut docs = stack.documents().await.unwrap();
        let mut req = authed(pb::ListDocumentsRequest::default(), &token);
        req.metadata_mut()
            .insert("x-junk", "a".repeat(size).parse().unwrap());
        req.set_timeout(Duration::from_secs(5));
        let started = Instant::now();
        let r = docs.list_documents(req).await;
        assert!(r.is_err(), "{size} bytes of metadata were accepted");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refused at once, not by the deadline"
        );
        still_serves(&stack, &token).await;
    }
    // HTTP: a 64 KiB header gets 431 (the cap is 32 KiB), and the next client is served.
    let r = http_request(
        stack.gateway_http(),
        "GET",
        "/v1/models",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("X-Junk", &"a".repeat(64 * 1024)),
        ],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 431, "{}", r.text());
    let r = http_request(
        stack.gateway_http(),
        "GET",
        "/v1/models",
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    stack.shutdown().await;
}

/// Reads until the server closes the connection (or `limit` passes); returns what it read and
/// when it closed.
async fn read_until_closed(s: &mut tokio::net::TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at((started + limit).into(), s.read(&mut buf)).await {
            Err(_) => panic!("the server kept the connection open for {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, started.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_loris_clients_are_cut_off_and_others_are_served() {
    let stack = TestStack::start_with(|env| {
        env.with("KEEL_HTTP_HEADER_READ_TIMEOUT", "1s")
            .with("KEEL_HTTP_BODY_READ_TIMEOUT", "1s")
    })
    .await
    .unwrap();
    let token = stack.tenant_token("acme").await.unwrap();
    let addr = stack.gateway_http();

    // Headers trickled a byte every 200 ms: never complete within the 1 s allowed.
    let mut trickled = Vec::new();
    for _ in 0..20 {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        trickled.push(s);
    }
    let dribble = async {
        let head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa";
        for (i, byte) in head.iter().enumerate() {
            for s in trickled.iter_mut() {
                // A write fails once the server has closed: that is the point.
                let _ = s.write_all(&[*byte]).await;
            }
            if i > 16 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    // Meanwhile an honest client is served.
    let bearer = format!("Bearer {token}");
    let honest_headers = [("Authorization", bearer.as_str())];
    let honest = http_request(addr, "GET", "/v1/models", &honest_headers, b"");
    let ((), honest) = tokio::join!(dribble, honest);
    assert_eq!(honest.unwrap().status, 200);
    for s in trickled.iter_mut() {
        let (_, after) = read_until_closed(s, Duration::from_secs(10)).await;
        assert!(after < Duration::from_secs(10));
    }

    // A body trickled after complete headers: cut off after the 1 s body allowance, with a
    // 4xx if anything is answered at all, and nothing reaches the model.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"model\":"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let writer = async {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if s.write_all(b" ").await.is_err() {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "a trickled body: {answer}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streamed_answer_nobody_reads_is_cut_off_not_buffered() {
    // An upstream model that echoes the prompt: a long prompt makes a long answer (~800 KB of
    // events), more than the socket buffers between the gateway and a client hold.
    let mock = keel_openai::mock::MockUpstream::start().await.unwrap();
    let models = format!(
        r#"
        [[model]]
        name = "echo"
        version = "echo@1"
        kind = "chat"
        provider = "openai"
        base_url = "{}"
        upstream_model = "mock-model"
        first_token_timeout = "5s"
        timeout = "120s"
        "#,
        mock.base_url()
    );
    let stack = TestStack::start_with(|env| {
        env.with("KEEL_HTTP_WRITE_STALL_TIMEOUT", "1s")
            .with("KEEL_INFERENCE_MODELS", models)
    })
    .await
    .unwrap();
    // An enterprise tenant: two answers this long fit its token budget.
    stack
        .directory()
        .await
        .unwrap()
        .create_tenant(keel_proto::auth::CreateTenantRequest {
            tenant_id: "acme".into(),
            display_name: "acme".into(),
            tier: "enterprise".into(),
        })
        .await
        .unwrap();
    stack
        .create_user("acme", "member", &["member"])
        .await
        .unwrap();
    let token = stack.login("acme", "member").await.unwrap().0;
    let addr = stack.gateway_http();
    let prompt = (0..1000)
        .map(|i| format!("w{i}{}", "x".repeat(400)))
        .collect::<Vec<_>>()
        .join(" ");
    let body = serde_json::json!({
        "model": "echo",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 1000,
        "temperature": 0.7,
        "stream": true,
    })
    .to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );

    // A reader that keeps up gets the whole answer.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let (whole, _) = read_until_closed(&mut s, Duration::from_secs(30)).await;
    let whole = String::from_utf8_lossy(&whole);
    assert!(whole.contains("data: [DONE]"), "{whole}");
    let events = whole.matches("data: ").count();

    // A client with a tiny receive window and segment size that never reads: once the socket
    // buffers are full (small segments keep the server's send buffer small too; loopback's
    // 64 KiB MTU would otherwise let it grow past a megabyte) the gateway's writes stall, and
    // after 1 s without progress it closes the connection.
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.set_tcp_mss(536).unwrap();
    sock.connect(&addr.into()).unwrap();
    sock.set_nonblocking(true).unwrap();
    let mut s = tokio::net::TcpStream::from_std(sock.into()).unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (cut, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    let cut = String::from_utf8_lossy(&cut);
    assert!(
        !cut.contains("data: [DONE]"),
        "the stalled answer ({events} events) was held open until the client read it, \
         instead of being cut off after 1 s without progress"
    );
    let metrics = keel_tests::admin_get(stack.gateway.as_ref().unwrap().admin_addr(), "/metrics")
        .await
        .unwrap()
        .1;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("keel_http_connections_closed_total{cause=\"write_stall\"}")),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("keel_http"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    stack.shutdown().await;
}
