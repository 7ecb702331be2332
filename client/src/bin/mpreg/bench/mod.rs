//! `mpreg bench`: a load generator against a running daemon, like `nats
//! bench` and `redis-benchmark`. `--conns` connections each keep
//! `--inflight` operations in flight until `--ops` are done (after
//! `--warmup` that are not counted); latencies go into an HdrHistogram.
//! Human output by default, one JSON object with `--json`; a progress line
//! on stderr while it runs, when stderr is a terminal.
//!
//! What one operation is:
//! - `rpc`: a call of the built-in `echo` with the payload;
//! - `worker`: a call of `mpreg_bench_echo`, served by a worker connection
//!   this command opens;
//! - `publish`: a publish on `mpreg-bench.<pid>`, timed from publish to
//!   delivery at a subscriber this command opens; each connection is one
//!   publisher with at most `--inflight` messages published and not yet
//!   delivered;
//! - `queue-send`, `queue-receive`: a durable send to, or a receive with
//!   acknowledge from, the queue `mpreg-bench` (receive first sends
//!   `--ops` + `--warmup` messages, not timed);
//! - `cache-put`, `cache-get`: a put or get of `mpreg-bench/k<i>` for
//!   `i < --keys` (get first puts those keys, not timed);
//! - `sql`: a point query of one of those keys over admin HTTP `/sql`.
//!
//! `--system redis|nats|etcd --peer ADDR` runs the same load against a
//! peer, through the protocol modules beside this one, so one load
//! generator measures every system: `rpc` is Redis ECHO or a NATS request
//! answered by a responder this command opens (`worker` is the same on
//! NATS), `publish` is NATS core pub/sub, `cache-put`/`cache-get` are Redis
//! SET/GET or etcd put/range, `queue-send` is a Redis RPUSH or a NATS
//! JetStream publish to the file stream `mpreg-bench` (acknowledged by the
//! server), `queue-receive` a Redis LPOP.

mod etcd;
mod nats;
mod redis;

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mpreg_client::{Client, ConnectOptions, Worker};
use serde::Serialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

/// The operation to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    Rpc,
    Worker,
    Publish,
    QueueSend,
    QueueReceive,
    CacheGet,
    CachePut,
    Sql,
}

/// The system the load is run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    Mpreg,
    Redis,
    Nats,
    Etcd,
}

impl System {
    /// The operations this system can run, named in the refusal of others.
    fn ops(self) -> &'static [Op] {
        match self {
            System::Mpreg => &[
                Op::Rpc,
                Op::Worker,
                Op::Publish,
                Op::QueueSend,
                Op::QueueReceive,
                Op::CacheGet,
                Op::CachePut,
                Op::Sql,
            ],
            System::Redis => &[
                Op::Rpc,
                Op::QueueSend,
                Op::QueueReceive,
                Op::CacheGet,
                Op::CachePut,
            ],
            System::Nats => &[Op::Rpc, Op::Worker, Op::Publish, Op::QueueSend],
            System::Etcd => &[Op::CacheGet, Op::CachePut],
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// What to measure (see `mpreg bench --help`).
    #[arg(value_enum)]
    pub op: Op,
    /// Connections (for publish: publishers).
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Operations in flight per connection.
    #[arg(long, default_value_t = 1)]
    pub inflight: usize,
    /// Operations counted.
    #[arg(long, default_value_t = 10_000)]
    pub ops: u64,
    /// Payload bytes (JSON string) of calls, publishes, sends and puts.
    #[arg(long, default_value_t = 16)]
    pub payload: usize,
    /// Operations run first and not counted.
    #[arg(long, default_value_t = 1_000)]
    pub warmup: u64,
    /// Distinct cache keys of cache-put, cache-get and sql (default: --ops).
    #[arg(long)]
    pub keys: Option<u64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Admin URL, for sql.
    #[arg(long, env = "MPREG_ADMIN", default_value = "http://127.0.0.1:6670")]
    pub admin: String,
    /// Run the load against this system instead of mpreg.
    #[arg(long, value_enum, default_value_t = System::Mpreg)]
    pub system: System,
    /// Address of the peer system: host:port (redis, nats) or client URL
    /// (etcd).
    #[arg(long, required_if_eq_any = [("system", "redis"), ("system", "nats"), ("system", "etcd")])]
    pub peer: Option<String>,
}

/// Namespace of the cache keys and name of the queue the bench uses.
const NAME: &str = "mpreg-bench";
/// The function the worker of `worker` serves.
const WORKER_FUNCTION: &str = "mpreg_bench_echo";

/// The NATS subject of `rpc` and `worker` on NATS, served by the bench.
const NATS_ECHO: &str = "mpreg-bench.echo";
/// The subject of the JetStream stream `mpreg-bench` (`queue-send` on NATS).
const NATS_STREAM_SUBJECT: &str = "mpreg-bench.stream";

/// What `mpreg bench` prints.
#[derive(Debug, Serialize)]
struct Report {
    system: System,
    op: Op,
    conns: usize,
    inflight: usize,
    ops: u64,
    errors: u64,
    payload_bytes: usize,
    seconds: f64,
    ops_per_second: f64,
    latency_us: Percentiles,
    /// The first error seen, if any.
    first_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Percentiles {
    p50: u64,
    p90: u64,
    p99: u64,
    p99_9: u64,
    max: u64,
}

/// Locks a mutex of the bench; a panicked holder leaves data still usable.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Counts and latencies of one phase, shared by its tasks.
struct Tally {
    next: AtomicU64,
    done: AtomicU64,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Tally {
    fn new() -> Arc<Tally> {
        Arc::new(Tally {
            next: AtomicU64::new(0),
            done: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: std::sync::Mutex::new(None),
        })
    }

    fn failed(&self, error: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        lock(&self.first_error).get_or_insert(error);
    }
}

/// One connection of the load, to the system measured.
#[derive(Clone)]
enum Conn {
    Mpreg(Arc<Client>),
    Redis(Arc<redis::Connection>),
    Nats(Arc<nats::Connection>),
    Etcd(Arc<etcd::Connection>),
}

/// What every operation needs: the connections and the payload.
struct Setup {
    url: String,
    peer: String,
    options: ConnectOptions,
    conns: Vec<Conn>,
    payload: Value,
    /// The payload as bytes, for the peers.
    raw: Vec<u8>,
    keys: u64,
    http: reqwest::Client,
    admin: String,
}

pub async fn run(
    args: &BenchArgs,
    url: &str,
    options: &ConnectOptions,
    http: reqwest::Client,
) -> Result<String, String> {
    if args.conns == 0 || args.inflight == 0 || args.ops == 0 {
        return Err("--conns, --inflight and --ops must be at least 1".into());
    }
    if !args.system.ops().contains(&args.op) {
        let runs: Vec<String> = args.system.ops().iter().map(name_of).collect();
        return Err(format!(
            "{} does not run {}; it runs {}",
            name_of(&args.system),
            name_of(&args.op),
            runs.join(", ")
        ));
    }
    let peer = args.peer.clone().unwrap_or_default();
    let mut conns = Vec::with_capacity(args.conns);
    for _ in 0..args.conns {
        conns.push(connect(args.system, url, &peer, options).await?);
    }
    let setup = Arc::new(Setup {
        url: url.to_string(),
        peer,
        options: options.clone(),
        conns,
        payload: Value::String("x".repeat(args.payload)),
        raw: vec![b'x'; args.payload],
        keys: args.keys.unwrap_or(args.ops).max(1),
        http,
        admin: args.admin.trim_end_matches('/').to_string(),
    });
    // Kept open for the whole run: the worker of `worker`, or the NATS
    // responder.
    let _server = prepare(args, &setup).await?;
    let report = if args.op == Op::Publish {
        if args.warmup > 0 {
            publish_phase(args, &setup, args.warmup, false).await?;
        }
        publish_phase(args, &setup, args.ops, true).await?
    } else {
        if args.warmup > 0 {
            phase(args, &setup, args.op, args.warmup, false).await;
        }
        phase(args, &setup, args.op, args.ops, true).await
    };
    if args.json {
        serde_json::to_string(&report).map_err(|e| e.to_string())
    } else {
        Ok(human(&report))
    }
}

async fn connect(
    system: System,
    url: &str,
    peer: &str,
    options: &ConnectOptions,
) -> Result<Conn, String> {
    Ok(match system {
        System::Mpreg => Conn::Mpreg(Arc::new(
            Client::connect_with(url, options)
                .await
                .map_err(|e| format!("connect to {url}: {e}"))?,
        )),
        System::Redis => Conn::Redis(Arc::new(redis::Connection::connect(peer).await?)),
        // Nobody reads a requester's or publisher's message channel.
        System::Nats => Conn::Nats(nats::Connection::connect(peer).await?.0),
        System::Etcd => Conn::Etcd(Arc::new(etcd::Connection::new(peer)?)),
    })
}

/// What serves the load while it runs: mpreg's worker or NATS's responder.
enum Server {
    /// Held for as long as the load runs: dropping it disconnects.
    Worker {
        _connection: Worker,
    },
    Responder(tokio::task::JoinHandle<()>),
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Server::Responder(task) = self {
            task.abort();
        }
    }
}

/// What an operation needs before it is timed: the system's own setup,
/// then the keys a get reads or the messages a receive takes; returns what
/// must stay open while it runs.
async fn prepare(args: &BenchArgs, setup: &Arc<Setup>) -> Result<Option<Server>, String> {
    let server = match args.system {
        System::Mpreg => prepare_mpreg(args, setup)
            .await?
            .map(|worker| Server::Worker {
                _connection: worker,
            }),
        System::Nats => prepare_nats(args, setup).await?,
        System::Redis | System::Etcd => None,
    };
    match args.op {
        Op::CacheGet => fill(args, setup, Op::CachePut, setup.keys).await?,
        Op::QueueReceive => fill(args, setup, Op::QueueSend, args.ops + args.warmup).await?,
        _ => {}
    }
    Ok(server)
}

/// NATS: a responder echoes requests on `NATS_ECHO`; `queue-send` needs
/// the file stream `mpreg-bench`.
async fn prepare_nats(args: &BenchArgs, setup: &Arc<Setup>) -> Result<Option<Server>, String> {
    match args.op {
        Op::Rpc | Op::Worker => {
            let (responder, mut requests) = nats::Connection::connect(&setup.peer).await?;
            responder.subscribe(NATS_ECHO, 2).await?;
            let task = tokio::spawn(async move {
                while let Some(request) = requests.recv().await {
                    if let Some(reply) = request.reply
                        && responder
                            .publish(&reply, None, &request.payload)
                            .await
                            .is_err()
                    {
                        break;
                    }
                }
            });
            Ok(Some(Server::Responder(task)))
        }
        Op::QueueSend => {
            let Some(Conn::Nats(conn)) = setup.conns.first() else {
                return Err("no nats connection".into());
            };
            let config = json!({"name": NAME, "subjects": [NATS_STREAM_SUBJECT],
                "storage": "file", "retention": "limits"});
            let reply = conn
                .request(
                    &format!("$JS.API.STREAM.CREATE.{NAME}"),
                    config.to_string().as_bytes(),
                )
                .await?;
            let reply: Value = serde_json::from_slice(&reply)
                .map_err(|e| format!("JetStream stream create: {e}"))?;
            // 10058: a stream of that name exists (a run before this one).
            if !reply["error"].is_null() && reply["error"]["err_code"] != 10058 {
                return Err(format!("JetStream stream create: {reply}"));
            }
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// mpreg: the worker of `worker`, the queue of `queue-send` and
/// `queue-receive`.
async fn prepare_mpreg(args: &BenchArgs, setup: &Arc<Setup>) -> Result<Option<Worker>, String> {
    let Some(Conn::Mpreg(client)) = setup.conns.first() else {
        return Err("no mpreg connection".into());
    };
    match args.op {
        Op::Worker => {
            let worker = Worker::connect_with(&setup.url, &setup.options)
                .await
                .map_err(|e| format!("worker connection: {e}"))?;
            // Answered on the worker's own task, as NATS's responder is.
            worker
                .register_inline(WORKER_FUNCTION, "1.0.0", &[], |args, _| {
                    Ok(args.into_iter().next().unwrap_or(Value::Null))
                })
                .await
                .map_err(|e| format!("register {WORKER_FUNCTION}: {e}"))?;
            return Ok(Some(worker));
        }
        Op::QueueSend | Op::QueueReceive => {
            let reply = client
                .queue(
                    "create",
                    json!({"queue_name": NAME, "queue_type": "fifo",
                        "max_size": 100_000_000, "enable_dead_letter_queue": false}),
                )
                .await
                .map_err(|e| format!("declare queue {NAME}: {e}"))?;
            succeeded(&reply).map_err(|e| format!("declare queue {NAME}: {e}"))?;
        }
        Op::Rpc | Op::Publish | Op::CacheGet | Op::CachePut | Op::Sql => {}
    }
    Ok(None)
}

/// Runs `count` operations of `op` untimed, before the measured phases.
async fn fill(args: &BenchArgs, setup: &Arc<Setup>, op: Op, count: u64) -> Result<(), String> {
    let report = phase(args, setup, op, count, false).await;
    match report.first_error {
        Some(error) => Err(format!("filling for {:?}: {error}", args.op)),
        None => Ok(()),
    }
}

fn succeeded(reply: &Value) -> Result<(), String> {
    if reply["success"] == true {
        Ok(())
    } else {
        Err(reply.to_string())
    }
}

/// One operation of `op`, number `i` of its phase.
async fn operate(setup: &Setup, conn: &Conn, op: Op, i: u64) -> Result<(), String> {
    if let Conn::Mpreg(client) = conn {
        return operate_mpreg(setup, client, op, i).await;
    }
    let key = format!("{NAME}/k{}", i % setup.keys);
    let raw = setup.raw.as_slice();
    match (conn, op) {
        (Conn::Redis(redis), op) => {
            let reply = match op {
                Op::Rpc => redis.command(&[b"ECHO", raw]).await?,
                Op::CachePut => redis.command(&[b"SET", key.as_bytes(), raw]).await?,
                Op::CacheGet => redis.command(&[b"GET", key.as_bytes()]).await?,
                Op::QueueSend => redis.command(&[b"RPUSH", NAME.as_bytes(), raw]).await?,
                Op::QueueReceive => redis.command(&[b"LPOP", NAME.as_bytes()]).await?,
                _ => return Err(format!("redis does not run {op:?}")),
            };
            match reply {
                redis::Reply::Value => Ok(()),
                redis::Reply::Nil => Err(format!("redis {op:?}: nothing at {key}")),
            }
        }
        (Conn::Nats(nats), Op::Rpc | Op::Worker) => {
            let reply = nats.request(NATS_ECHO, raw).await?;
            if reply == raw {
                Ok(())
            } else {
                Err("the nats echo came back changed".into())
            }
        }
        (Conn::Nats(nats), Op::QueueSend) => {
            let ack = nats.request(NATS_STREAM_SUBJECT, raw).await?;
            let ack: Value =
                serde_json::from_slice(&ack).map_err(|e| format!("JetStream ack: {e}"))?;
            if ack["seq"].is_u64() {
                Ok(())
            } else {
                Err(format!("JetStream publish: {ack}"))
            }
        }
        (Conn::Etcd(etcd), Op::CachePut) => etcd.put(&key, raw).await,
        (Conn::Etcd(etcd), Op::CacheGet) => etcd.get(&key).await,
        (_, op) => Err(format!("this system does not run {op:?}")),
    }
}

/// One operation of `op` against mpreg.
async fn operate_mpreg(setup: &Setup, client: &Client, op: Op, i: u64) -> Result<(), String> {
    let payload = &setup.payload;
    let identifier = |i: u64| format!("k{}", i % setup.keys);
    match op {
        Op::Rpc | Op::Worker => {
            let fun = if op == Op::Rpc {
                "echo"
            } else {
                WORKER_FUNCTION
            };
            client
                .call_as::<_, IgnoredAny>(fun, &[payload])
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        Op::QueueSend => client
            .queue_send(NAME, payload)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Op::QueueReceive => {
            let reply = client
                .queue(
                    "receive",
                    json!({"queue_name": NAME, "max_messages": 1, "subscriber_id": "mpreg-bench",
                        "auto_acknowledge": true}),
                )
                .await
                .map_err(|e| e.to_string())?;
            succeeded(&reply)?;
            if reply["empty"] == true {
                return Err("the queue was empty".into());
            }
            Ok(())
        }
        Op::CachePut => client
            .cache_put(NAME, &identifier(i), payload)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Op::CacheGet => match client.cache_get(NAME, &identifier(i)).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(format!("{} was not found", identifier(i))),
            Err(e) => Err(e.to_string()),
        },
        Op::Sql => {
            let sql = format!(
                "SELECT identifier, revision FROM cache_entries \
                 WHERE namespace = '{NAME}' AND identifier = 'k{}'",
                i % setup.keys
            );
            let response = setup
                .http
                .get(format!("{}/sql", setup.admin))
                .query(&[("q", sql.as_str())])
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response.text().await.map_err(|e| e.to_string())?;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("HTTP {status}: {body}"))
            }
        }
        Op::Publish => Err("publish runs in its own phase".into()),
    }
}

/// Runs `count` operations of `op` from `conns × inflight` tasks.
async fn phase(args: &BenchArgs, setup: &Arc<Setup>, op: Op, count: u64, shown: bool) -> Report {
    let tally = Tally::new();
    let progress = shown.then(|| progress(tally.clone(), count));
    // Each task's histogram (about 270 KiB) is made before the clock
    // starts and merged after it stops: hundreds of them would otherwise
    // be timed with the load.
    let histograms: Vec<(usize, Histogram<u64>)> = (0..args.conns)
        .flat_map(|conn| (0..args.inflight).map(move |_| (conn, histogram())))
        .collect();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (conn, mut latencies) in histograms {
        let setup = setup.clone();
        let tally = tally.clone();
        tasks.spawn(async move {
            let client = setup.conns[conn].clone();
            loop {
                let i = tally.next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let began = Instant::now();
                match operate(&setup, &client, op, i).await {
                    Ok(()) => {
                        let _ = latencies.record(micros(began.elapsed()));
                    }
                    Err(e) => tally.failed(e),
                }
                tally.done.fetch_add(1, Ordering::Relaxed);
            }
            latencies
        });
    }
    let mut finished = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        finished.extend(joined.ok());
    }
    let elapsed = start.elapsed();
    let mut latencies = histogram();
    for histogram in finished {
        let _ = latencies.add(histogram);
    }
    if let Some(progress) = progress {
        progress.abort();
    }
    report(args, op, count, elapsed, &latencies, &tally)
}

/// Publishes `count` messages, each connection a publisher with at most
/// `--inflight` undelivered; times each from publish to delivery.
async fn publish_phase(
    args: &BenchArgs,
    setup: &Arc<Setup>,
    count: u64,
    shown: bool,
) -> Result<Report, String> {
    let topic = format!("{NAME}.{}", std::process::id());
    let mut subscriber = Subscriber::open(args.system, setup, &topic).await?;
    let windows: Arc<Vec<Semaphore>> = Arc::new(
        (0..args.conns)
            .map(|_| Semaphore::new(args.inflight))
            .collect(),
    );
    let tally = Tally::new();
    let progress = shown.then(|| progress(tally.clone(), count));
    let epoch = Instant::now();
    let mut publishers = tokio::task::JoinSet::new();
    for conn in 0..args.conns {
        for _ in 0..args.inflight {
            let setup = setup.clone();
            let tally = tally.clone();
            let windows = windows.clone();
            let topic = topic.clone();
            publishers.spawn(async move {
                let client = setup.conns[conn].clone();
                loop {
                    let Ok(permit) = windows[conn].acquire().await else {
                        break;
                    };
                    permit.forget();
                    if tally.next.fetch_add(1, Ordering::Relaxed) >= count {
                        break;
                    }
                    let message = json!({
                        "p": conn,
                        "t": micros(epoch.elapsed()),
                        "pad": setup.payload,
                    });
                    if let Err(e) = publish(&client, &topic, message).await {
                        tally.failed(e);
                        windows[conn].add_permits(1);
                    }
                }
            });
        }
    }
    let mut latencies = histogram();
    let quiet = Duration::from_secs(10);
    while tally.done.load(Ordering::Relaxed) + tally.errors.load(Ordering::Relaxed) < count {
        let payload = match tokio::time::timeout(quiet, subscriber.next()).await {
            Ok(Some(payload)) => payload,
            Ok(None) => return Err("the subscriber's connection closed".into()),
            Err(_) => {
                tally.failed(format!("no delivery for {quiet:?}"));
                break;
            }
        };
        let (Some(publisher), Some(sent)) = (payload["p"].as_u64(), payload["t"].as_u64()) else {
            continue;
        };
        let _ = latencies.record(micros(epoch.elapsed()).saturating_sub(sent).max(1));
        tally.done.fetch_add(1, Ordering::Relaxed);
        if let Some(window) = usize::try_from(publisher).ok().and_then(|p| windows.get(p)) {
            window.add_permits(1);
        }
    }
    let elapsed = epoch.elapsed();
    for window in windows.iter() {
        window.close();
    }
    publishers.shutdown().await;
    if let Some(progress) = progress {
        progress.abort();
    }
    Ok(report(
        args,
        Op::Publish,
        count,
        elapsed,
        &latencies,
        &tally,
    ))
}

async fn publish(conn: &Conn, topic: &str, message: Value) -> Result<(), String> {
    match conn {
        Conn::Mpreg(client) => client
            .publish(topic, message)
            .await
            .map_err(|e| e.to_string()),
        Conn::Nats(nats) => {
            nats.publish(topic, None, message.to_string().as_bytes())
                .await
        }
        Conn::Redis(_) | Conn::Etcd(_) => Err("this system does not publish".into()),
    }
}

/// The subscriber of `publish`: its own connection to the system measured.
enum Subscriber {
    /// The client is held because its connection carries the subscription.
    Mpreg {
        _client: Client,
        subscription: mpreg_client::Subscription,
    },
    Nats {
        _connection: Arc<nats::Connection>,
        messages: mpsc::Receiver<nats::Message>,
    },
}

impl Subscriber {
    async fn open(system: System, setup: &Setup, topic: &str) -> Result<Subscriber, String> {
        if system == System::Nats {
            let (conn, messages) = nats::Connection::connect(&setup.peer).await?;
            conn.subscribe(topic, 2).await?;
            return Ok(Subscriber::Nats {
                _connection: conn,
                messages,
            });
        }
        let client = Client::connect_with(&setup.url, &setup.options)
            .await
            .map_err(|e| format!("subscriber connection: {e}"))?;
        let subscription = client
            .subscribe(&[topic], 0)
            .await
            .map_err(|e| format!("subscribe to {topic}: {e}"))?;
        Ok(Subscriber::Mpreg {
            _client: client,
            subscription,
        })
    }

    /// The next message's payload; `Null` for one that is not JSON.
    async fn next(&mut self) -> Option<Value> {
        match self {
            Subscriber::Mpreg { subscription, .. } => {
                subscription.next().await.map(|note| note.message.payload)
            }
            Subscriber::Nats { messages, .. } => messages
                .recv()
                .await
                .map(|m| serde_json::from_slice(&m.payload).unwrap_or(Value::Null)),
        }
    }
}

/// The name of an argument value as the command line spells it.
fn name_of<T: clap::ValueEnum>(value: &T) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Prints `done/count` and the rate every second while stderr is a terminal.
fn progress(tally: Arc<Tally>, count: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if !std::io::stderr().is_terminal() {
            return;
        }
        let start = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let done = tally.done.load(Ordering::Relaxed);
            let rate = done as f64 / start.elapsed().as_secs_f64();
            eprint!("\r{done}/{count} ops, {rate:.0}/s   ");
        }
    })
}

fn report(
    args: &BenchArgs,
    op: Op,
    count: u64,
    elapsed: Duration,
    latencies: &Histogram<u64>,
    tally: &Tally,
) -> Report {
    let seconds = elapsed.as_secs_f64();
    Report {
        system: args.system,
        op,
        conns: args.conns,
        inflight: args.inflight,
        ops: count,
        errors: tally.errors.load(Ordering::Relaxed),
        payload_bytes: args.payload,
        seconds,
        ops_per_second: count as f64 / seconds.max(f64::EPSILON),
        latency_us: Percentiles {
            p50: latencies.value_at_quantile(0.5),
            p90: latencies.value_at_quantile(0.9),
            p99: latencies.value_at_quantile(0.99),
            p99_9: latencies.value_at_quantile(0.999),
            max: latencies.max(),
        },
        first_error: lock(&tally.first_error).clone(),
    }
}

fn human(r: &Report) -> String {
    let (system, op) = (name_of(&r.system), name_of(&r.op));
    let l = &r.latency_us;
    let mut text = format!(
        "{system} {op}: {} ops, {} conns x {} in flight, {}-byte payload\n  \
         {:.0} ops/s in {:.2} s, {} errors\n  \
         latency us: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        r.ops,
        r.conns,
        r.inflight,
        r.payload_bytes,
        r.ops_per_second,
        r.seconds,
        r.errors,
        l.p50,
        l.p90,
        l.p99,
        l.p99_9,
        l.max
    );
    if let Some(error) = &r.first_error {
        text.push_str(&format!("\n  first error: {error}"));
    }
    text
}
