//! Replicated write benchmark on a 3-node cluster of real `mpreg-daemon`
//! processes on loopback. Every write is a cache put, committed by a
//! quorum (2 of 3 fsynced logs) before its reply. Prints:
//! - writes/s and p50/p99 commit latency with 1, 16 and 256 concurrent
//!   writers (over up to 16 connections), through the leader and through
//!   a follower (which forwards to the leader);
//! - failover: leader `kill -9` → first acknowledged write through a
//!   surviving node, over `MPREG_BENCH_FAILOVERS` trials (default 20).
//!
//! Run: `cargo bench --workspace --bench cluster` (`MPREG_BENCH_SECONDS`
//! sets how long each load case runs, default 3). `MPREG_BENCH_TLS=1` runs
//! the members with TLS on `--listen` (clients and peer links over
//! `wss://`, a certificate made for the run).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::percentile;
use mpreg_client::tls::TlsClient;
use mpreg_client::{Client, ConnectOptions};
use serde_json::{Value, json};

const MAX_CONNECTIONS: usize = 16;

/// TLS files of a run with `MPREG_BENCH_TLS=1`: (certificate, key, CA).
type TlsFiles = Option<(PathBuf, PathBuf, PathBuf)>;

struct Member {
    name: String,
    tls: TlsFiles,
    dir: PathBuf,
    listen: String,
    admin: String,
    child: Option<Child>,
}

fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .to_string()
}

impl Member {
    fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}", self.listen)
    }

    fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    fn launch(&mut self, join: Option<&str>) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mpreg-daemon"));
        cmd.arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--node-id", &self.name, "--listen", &self.listen])
            .args(["--admin-listen", &self.admin, "--log", "warn"]);
        if let Some(join) = join {
            cmd.args(["--join", join]);
        }
        if let Some((cert, key, ca)) = &self.tls {
            cmd.arg("--tls-cert").arg(cert);
            cmd.arg("--tls-key").arg(key);
            cmd.arg("--tls-ca").arg(ca);
        }
        let log = std::fs::File::create(self.dir.join("daemon.log")).expect("log file");
        self.child = Some(
            cmd.stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn mpreg-daemon"),
        );
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn status(member: &Member) -> Option<Value> {
    let response = reqwest::get(format!("{}/status", member.admin_url()))
        .await
        .ok()?;
    response.json().await.ok()
}

/// Index of the member all running members name as leader.
async fn leader(members: &[Member]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut leaders = Vec::new();
        for member in members.iter().filter(|m| m.child.is_some()) {
            let s = status(member).await;
            leaders.push(s.and_then(|s| {
                (s["role"] == "leader").then(|| s["node_id"].as_str().map(str::to_string))?
            }));
        }
        if let Some(Some(name)) = leaders.iter().find(|l| l.is_some()) {
            return members
                .iter()
                .position(|m| &m.name == name)
                .expect("member");
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_ready(member: &Member) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::get(format!("{}/health", member.admin_url()))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        assert!(Instant::now() < deadline, "{} did not start", member.name);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn put(id: &str, n: u64) -> Value {
    json!({"operation": "put", "key": {"namespace": "bench", "identifier": id}, "value": n})
}

/// How clients connect: trusting the run's CA when it has TLS.
fn options(tls: &TlsFiles) -> ConnectOptions {
    ConnectOptions {
        tls: tls
            .as_ref()
            .map(|(_, _, ca)| TlsClient::new(ca, None).expect("trust the CA")),
        ..ConnectOptions::default()
    }
}

async fn load(
    url: &str,
    options: &ConnectOptions,
    writers: usize,
    seconds: f64,
) -> (f64, Duration, Duration) {
    let mut clients = Vec::new();
    for _ in 0..writers.clamp(1, MAX_CONNECTIONS) {
        let client = Client::connect_with(url, options).await.expect("connect");
        clients.push(Arc::new(client));
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let client = clients[w % clients.len()].clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    client
                        .cache(put(&format!("w{w}-{}", n % 1000), n))
                        .await
                        .expect("put");
                    latencies.push(t.elapsed());
                    n += 1;
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("writer"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    (
        all.len() as f64 / elapsed,
        percentile(&all, 0.5),
        percentile(&all, 0.99),
    )
}

/// Kills the leader and times the first write acknowledged through a
/// surviving node.
async fn failover(members: &mut [Member]) -> Duration {
    let old = leader(members).await;
    let survivors: Vec<String> = (0..members.len())
        .filter(|&i| i != old)
        .map(|i| members[i].url())
        .collect();
    let options = options(&members[old].tls);
    let mut clients = Vec::new();
    for url in &survivors {
        clients.push(Client::connect_with(url, &options).await.expect("connect"));
    }
    members[old].kill9();
    let killed = Instant::now();
    let mut n = 0;
    'outer: loop {
        for client in &clients {
            n += 1;
            let attempt =
                tokio::time::timeout(Duration::from_secs(30), client.cache(put("failover", n)));
            if let Ok(Ok(_)) = attempt.await {
                break 'outer;
            }
        }
    }
    let took = killed.elapsed();
    let join = members[(old + 1) % members.len()].url();
    members[old].launch(Some(&join));
    wait_ready(&members[old]).await;
    took
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let seconds = common::seconds();
    let root = tempfile::tempdir().expect("temp dir");
    let tls: TlsFiles = (std::env::var("MPREG_BENCH_TLS").as_deref() == Ok("1"))
        .then(|| common::certificates(root.path()));
    let mut members: Vec<Member> = (1..=3)
        .map(|i| Member {
            name: format!("n{i}"),
            tls: tls.clone(),
            dir: root.path().join(format!("n{i}")),
            listen: free_port(),
            admin: free_port(),
            child: None,
        })
        .collect();
    for member in &members {
        std::fs::create_dir_all(&member.dir).expect("dir");
    }
    let first = members[0].url();
    members[0].launch(None);
    wait_ready(&members[0]).await;
    for member in members.iter_mut().skip(1) {
        member.launch(Some(&first));
    }
    for member in &members {
        wait_ready(member).await;
    }
    let transport = if tls.is_some() {
        "TLS (wss://)"
    } else {
        "plain ws://"
    };
    println!(
        "3-node cluster on loopback, {transport} for clients and peer links; every write is committed by 2 of 3 fsynced logs"
    );
    let client_options = options(&tls);
    println!("| writers | through | writes/s | p50 | p99 |");
    println!("|---|---|---|---|---|");
    for writers in [1, 16, 256] {
        let lead = leader(&members).await;
        for (through, i) in [("leader", lead), ("follower", (lead + 1) % 3)] {
            let (rate, p50, p99) = load(&members[i].url(), &client_options, writers, seconds).await;
            println!("| {writers} | {through} | {rate:.0} | {p50:.2?} | {p99:.2?} |");
        }
    }
    let trials = env_usize("MPREG_BENCH_FAILOVERS", 20);
    let mut times = Vec::new();
    for _ in 0..trials {
        times.push(failover(&mut members).await);
    }
    times.sort();
    println!(
        "failover (leader kill -9 -> first acknowledged write), {trials} trials: min {:.2?} p50 {:.2?} p90 {:.2?} max {:.2?}",
        times.first().copied().unwrap_or_default(),
        percentile(&times, 0.5),
        percentile(&times, 0.9),
        times.last().copied().unwrap_or_default()
    );
}
