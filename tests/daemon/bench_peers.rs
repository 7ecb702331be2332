//! `mpreg bench --system redis|nats|etcd` against the real Debian servers
//! (scripts/setup --test-tools installs them), each started on a free
//! loopback port with its data in the test's directory: every operation a
//! peer runs completes without errors, and one it does not run is refused
//! with the list of those it does.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mpreg_tests::{TestDir, cli_bin};
use serde_json::Value;

const PEERS: &str = "redis-server, nats-server and etcd (Debian packages redis-server, nats-server, \
     etcd-server; scripts/setup --test-tools installs them)";

/// A peer server, killed when dropped.
struct Peer {
    child: Child,
    addr: String,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn start(program: &str, args: &[String], dir: &Path, port: u16) -> Peer {
    let log = std::fs::File::create(dir.join(format!("{program}.log"))).unwrap();
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}; needs {PEERS}"));
    let peer = Peer {
        child,
        addr: format!("127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(&peer.addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "{program} did not listen on {}",
            peer.addr
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    peer
}

fn redis(dir: &Path) -> Peer {
    let port = free_port();
    let data = dir.join("redis");
    std::fs::create_dir_all(&data).unwrap();
    let args = [
        "--bind",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--dir",
        data.to_str().unwrap(),
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
    ];
    start("redis-server", &args.map(String::from), dir, port)
}

fn nats(dir: &Path) -> Peer {
    let port = free_port();
    let config = dir.join("nats.conf");
    let store = dir.join("nats");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\n",
            store.to_str().unwrap()
        ),
    )
    .unwrap();
    start(
        "nats-server",
        &["-c".into(), config.to_str().unwrap().into()],
        dir,
        port,
    )
}

fn etcd(dir: &Path) -> Peer {
    let port = free_port();
    let peer_port = free_port();
    let client = format!("http://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let args = [
        "--name".to_string(),
        "bench".into(),
        "--data-dir".into(),
        dir.join("etcd").to_str().unwrap().into(),
        "--listen-client-urls".into(),
        client.clone(),
        "--advertise-client-urls".into(),
        client,
        "--listen-peer-urls".into(),
        peer.clone(),
        "--initial-advertise-peer-urls".into(),
        peer.clone(),
        "--initial-cluster".into(),
        format!("bench={peer}"),
    ];
    start("etcd", &args, dir, port)
}

/// Runs `mpreg bench OP --system SYSTEM --peer ADDR`; its exit status,
/// stdout and stderr.
fn bench(system: &str, peer: &str, op: &str) -> (bool, String, String) {
    let out = Command::new(cli_bin())
        .args(["bench", op, "--system", system, "--peer", peer])
        .args([
            "--conns",
            "2",
            "--inflight",
            "4",
            "--ops",
            "200",
            "--warmup",
            "20",
        ])
        .args(["--keys", "50", "--json"])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_runs(system: &str, peer: &str, ops: &[&str]) {
    for op in ops {
        let (ok, out, err) = bench(system, peer, op);
        assert!(ok, "{system} {op}: {err}");
        let report: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(report["system"], system, "{report}");
        assert_eq!(report["op"], *op, "{report}");
        assert_eq!(report["ops"], 200, "{report}");
        assert_eq!(report["errors"], 0, "{system} {op}: {report}");
        let l = &report["latency_us"];
        let at = |p: &str| l[p].as_u64().unwrap_or(0);
        assert!(0 < at("p50") && at("p50") <= at("max"), "{report}");
    }
}

#[test]
fn bench_runs_the_same_load_against_redis_nats_and_etcd() {
    let dir = TestDir::new();
    let redis = redis(dir.path());
    assert_runs(
        "redis",
        &redis.addr,
        &[
            "rpc",
            "cache-put",
            "cache-get",
            "queue-send",
            "queue-receive",
        ],
    );
    let nats = nats(dir.path());
    assert_runs(
        "nats",
        &nats.addr,
        &["rpc", "worker", "publish", "queue-send"],
    );
    let etcd = etcd(dir.path());
    assert_runs(
        "etcd",
        &format!("http://{}", etcd.addr),
        &["cache-put", "cache-get"],
    );

    let (ok, out, err) = bench("etcd", &etcd.addr, "publish");
    assert!(!ok, "{out}");
    assert!(
        err.contains("etcd does not run publish; it runs cache-get, cache-put"),
        "{err}"
    );
}
