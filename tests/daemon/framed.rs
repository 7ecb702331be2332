//! The `tcp://` and `tcps://` transport: the same JSON frames as over
//! WebSocket, each preceded by its length (4 bytes, big-endian), on the
//! same `--listen` port. Byte-for-byte upstream framing, the same limits
//! and errors as WebSocket, the Rust client over it, TLS, and a node that
//! requires credentials refusing it (the transport carries no token).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mpreg_client::tls::TlsClient;
use mpreg_client::{Client, ConnectOptions, Worker};
use mpreg_tests::tls::TestCa;
use mpreg_tests::{Daemon, TestDir};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// A client that writes and reads length-prefixed frames by hand, as
/// upstream's `tcp_transport.py` does.
struct RawFramed {
    stream: TcpStream,
}

impl RawFramed {
    async fn connect(url: &str) -> Result<RawFramed> {
        let addr = url.trim_start_matches("tcp://");
        Ok(RawFramed {
            stream: TcpStream::connect(addr).await?,
        })
    }

    async fn send(&mut self, frame: &[u8]) -> Result<()> {
        self.stream.write_all(&framed(frame)?).await?;
        Ok(())
    }

    /// The next frame as JSON; `None` once the node closed the connection.
    async fn recv(&mut self) -> Result<Option<Value>> {
        let mut length = [0u8; 4];
        let read = tokio::time::timeout(WAIT, self.stream.read_exact(&mut length))
            .await
            .context("no frame within the wait")?;
        match read {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let mut frame = vec![0u8; u32::from_be_bytes(length) as usize];
        tokio::time::timeout(WAIT, self.stream.read_exact(&mut frame)).await??;
        Ok(Some(serde_json::from_slice(&frame)?))
    }
}

/// `frame` with its length before it, in one buffer (one write, as
/// upstream's client sends it).
fn framed(frame: &[u8]) -> Result<Vec<u8>> {
    let mut bytes = u32::try_from(frame.len())?.to_be_bytes().to_vec();
    bytes.extend_from_slice(frame);
    Ok(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_client_speaks_the_same_json_with_the_same_limits() -> Result<()> {
    let dir = TestDir::new();
    let daemon = Daemon::start_configured(&dir, "max_frame_bytes = 1048576\n")?;
    let ws_url = daemon.ready.client_url.clone();
    let tcp_url = ws_url.replacen("ws://", "tcp://", 1);

    let mut raw = RawFramed::connect(&tcp_url).await?;
    raw.send(br#"{"role":"rpc","u":"t1","cmds":[{"name":"x","fun":"echo","args":[5]}]}"#)
        .await?;
    assert_eq!(
        raw.recv().await?,
        Some(
            json!({"u":"t1","r":{"x":5},"error":null,"intermediate_results":[],"execution_summary":null})
        )
    );
    // Bad JSON and a frame over the limit (under twice it) are answered;
    // the connection stays.
    raw.send(b"this is not json").await?;
    let reply = raw.recv().await?.context("closed after bad JSON")?;
    assert_eq!(reply["error"]["code"], 1006, "{reply}");
    raw.send(&vec![b' '; 1_100_000]).await?;
    let reply = raw.recv().await?.context("closed after a large frame")?;
    assert_eq!(reply["error"]["code"], 1007, "{reply}");
    raw.send(br#"{"role":"rpc","u":"t2","cmds":[{"name":"x","fun":"echo","args":[6]}]}"#)
        .await?;
    let reply = raw.recv().await?.context("closed after refusals")?;
    assert_eq!(reply["r"], json!({"x": 6}), "{reply}");
    // A length over twice the limit is refused from its 4 bytes, naming
    // it, and the connection closes (what follows cannot be framed).
    raw.stream.write_all(&3_000_000u32.to_be_bytes()).await?;
    let reply = raw.recv().await?.context("closed without an answer")?;
    assert_eq!(reply["error"]["code"], 1007, "{reply}");
    let details = reply["error"]["details"].as_str().unwrap_or_default();
    ensure!(details.contains("3000000"), "{reply}");
    ensure!(raw.recv().await?.is_none(), "the connection stayed open");

    // The Rust client over tcp://, next to a WebSocket client: calls,
    // messages both ways, queues, and a worker serving calls.
    let tcp = Client::connect(&tcp_url).await?;
    let ws = Client::connect(&ws_url).await?;
    assert_eq!(tcp.call("echo", vec![json!("hi")]).await?, json!("hi"));
    let mut on_tcp = tcp.subscribe(&["t.#"], 0).await?;
    let mut on_ws = ws.subscribe(&["t.#"], 0).await?;
    ws.publish("t.from_ws", json!(1)).await?;
    tcp.publish("t.from_tcp", json!(2)).await?;
    for subscription in [&mut on_tcp, &mut on_ws] {
        let mut topics = Vec::new();
        for _ in 0..2 {
            let got = tokio::time::timeout(WAIT, subscription.next())
                .await?
                .context("subscription ended")?;
            topics.push(got.message.topic);
        }
        topics.sort();
        assert_eq!(topics, ["t.from_tcp", "t.from_ws"]);
    }
    tcp.queue("create", json!({"queue_name": "q"})).await?;
    tcp.queue("send", json!({"queue_name": "q", "payload": 7}))
        .await?;
    let received = ws
        .queue(
            "receive",
            json!({"queue_name": "q", "subscriber_id": "w", "max_messages": 10, "timeout_seconds": 1}),
        )
        .await?;
    assert_eq!(received["messages"][0]["payload"], 7, "{received}");
    let worker = Worker::connect(&tcp_url).await?;
    worker
        .register("double", "1.0.0", &[], |args, _| {
            Ok(json!(args.first().and_then(Value::as_i64).unwrap_or(0) * 2))
        })
        .await?;
    assert_eq!(ws.call("double", vec![json!(21)]).await?, json!(42));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcps_needs_tls_and_a_node_with_credentials_refuses_tcp() -> Result<()> {
    let files = TestDir::new();
    let path = |name: &str| files.path().join(name);
    let ca = TestCa::new("mpreg test CA")?;
    ca.write_ca(&path("ca.pem"))?;
    ca.issue(&path("cert.pem"), &path("key.pem"))?;
    let quoted = |p: PathBuf| format!("{:?}", p.display().to_string());
    let dir = TestDir::new();
    let daemon = Daemon::start_configured(
        &dir,
        &format!(
            "tls_cert_file = {}\ntls_key_file = {}\ntls_ca_file = {}\n",
            quoted(path("cert.pem")),
            quoted(path("key.pem")),
            quoted(path("ca.pem")),
        ),
    )?;
    let tcps = daemon.ready.client_url.replacen("wss://", "tcps://", 1);
    let trusting = ConnectOptions {
        tls: Some(TlsClient::new(&path("ca.pem"), None).map_err(anyhow::Error::msg)?),
        ..ConnectOptions::default()
    };
    let client = Client::connect_with(&tcps, &trusting).await?;
    assert_eq!(client.call("echo", vec![json!(1)]).await?, json!(1));
    let refused = Client::connect(&tcps)
        .await
        .err()
        .context("tcps without a CA")?;
    ensure!(refused.to_string().contains("needs a CA file"), "{refused}");
    // Plain frames on the TLS port fail its handshake at their first byte:
    // the answer is a TLS alert record (content type 21) and the connection
    // closes, or, when the node closes with the frame's bytes unread, a
    // reset (then the write may fail too).
    let plain = tcps.replacen("tcps://", "tcp://", 1);
    let mut raw = RawFramed::connect(&plain).await?;
    let request = br#"{"role":"rpc","u":"t1","cmds":[{"name":"x","fun":"echo","args":[5]}]}"#;
    let _ = raw.stream.write_all(&framed(request)?).await;
    let mut answer = Vec::new();
    match tokio::time::timeout(WAIT, raw.stream.read_to_end(&mut answer)).await? {
        Ok(_) => ensure!(
            answer.first() == Some(&21),
            "plain frames on TLS answered with {answer:?}"
        ),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => return Err(e.into()),
    }

    // A node that requires credentials: tcp:// carries no token, so the
    // first request gets 1018 naming why, and the connection is closed.
    std::fs::write(path("app.token"), "app-token-0123456789\n")?;
    let guarded_dir = TestDir::new();
    let guarded = Daemon::start_configured(
        &guarded_dir,
        &format!(
            "[[credentials]]\nname = \"app\"\ntoken_file = {}\npermissions = {{ call = [\"#\"] }}\n",
            quoted(path("app.token"))
        ),
    )?;
    let tcp = guarded.ready.client_url.replacen("ws://", "tcp://", 1);
    let mut raw = RawFramed::connect(&tcp).await?;
    raw.send(br#"{"role":"rpc","u":"t1","cmds":[{"name":"x","fun":"echo","args":[5]}]}"#)
        .await?;
    let reply = raw.recv().await?.context("closed without an answer")?;
    assert_eq!(reply["error"]["code"], 1018, "{reply}");
    let details = reply["error"]["details"].as_str().unwrap_or_default();
    ensure!(details.contains("carry no token"), "{reply}");
    ensure!(raw.recv().await?.is_none(), "the connection stayed open");
    let refused = Client::connect_with(
        &tcp,
        &ConnectOptions {
            token: Some("app-token-0123456789".into()),
            ..ConnectOptions::default()
        },
    )
    .await
    .err()
    .context("a token over tcp:// was accepted")?;
    ensure!(refused.to_string().contains("carry no token"), "{refused}");
    Ok(())
}
