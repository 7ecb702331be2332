//! `mpreg`: the command-line client.
//!
//! `mpreg call FUN [JSON_ARG...]` calls one function; `mpreg rpc FILE.json`
//! runs a multi-command request (a request object with `cmds`, or just the
//! array of commands). `mpreg publish TOPIC JSON` publishes; `mpreg
//! subscribe PATTERN...` prints one JSON line per message until Ctrl-C.
//! `mpreg sql "SQL"` runs read-only SQL on a daemon's admin HTTP and prints
//! an aligned table.
//! Results print as JSON; errors go to stderr with a non-zero exit.

mod bench;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use mpreg_client::protocol::RpcCommand;
use mpreg_client::tls::TlsClient;
use mpreg_client::{Client, ConnectOptions, Request};
use serde_json::{Value, json};

/// How `mpreg sql` prints rows; the daemon renders each (`format=` of `/sql`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Aligned text.
    Table,
    Json,
    Csv,
}

const EXAMPLES: &str = "\
Examples:
  mpreg call echos 1 '{\"a\":2}'
  mpreg rpc request.json
  mpreg publish orders.eu.created '{\"id\":7}'
  mpreg subscribe 'orders.#'
  mpreg queue send jobs '{\"n\":1}'
  mpreg cache incr app hits --by 5
  mpreg sql \"SELECT dest, next_hop FROM routes\"
  mpreg cluster members --admin http://127.0.0.1:6670
  mpreg federation links
  mpreg bench rpc --conns 8 --inflight 64 --ops 100000
  mpreg completions bash > ~/.local/share/bash-completion/completions/mpreg
  mpreg man > mpreg.1

MPREG_URL and MPREG_ADMIN set --url and --admin.";

#[derive(Parser)]
#[command(name = "mpreg", version, about = "mpreg command-line client", after_help = EXAMPLES)]
struct Cli {
    /// Client URL of a daemon.
    #[arg(
        long,
        global = true,
        env = "MPREG_URL",
        default_value = "ws://127.0.0.1:6666"
    )]
    url: String,
    /// File holding the token to present (`Authorization: Bearer`), for a
    /// node that requires credentials; used on the client and admin URLs.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// PEM file of the CA certificates to trust for a `wss://` or
    /// `https://` (admin) URL.
    #[arg(long, global = true)]
    ca_file: Option<PathBuf>,
    /// PEM certificate chain to present, for a node that requires client
    /// certificates (`tls_client_ca_file`); with --key-file.
    #[arg(long, global = true, requires = "key_file")]
    cert_file: Option<PathBuf>,
    /// PEM private key of --cert-file.
    #[arg(long, global = true, requires = "cert_file")]
    key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Call one function; each argument is JSON (or else taken as a string).
    Call {
        fun: String,
        args: Vec<String>,
        /// Run it in this cluster of the federation.
        #[arg(long)]
        target_cluster: Option<String>,
    },
    /// Run a multi-command request from a JSON file.
    Rpc { file: PathBuf },
    /// Publish a JSON payload (or a string) on a topic.
    Publish { topic: String, payload: String },
    /// Print messages matching the patterns as JSON lines until Ctrl-C.
    Subscribe {
        #[arg(required = true)]
        patterns: Vec<String>,
        /// Also deliver messages retained this many seconds back.
        #[arg(long, default_value_t = 0)]
        backlog_seconds: u64,
    },
    /// Declare, feed, drain and inspect durable queues.
    Queue {
        #[command(subcommand)]
        op: QueueOp,
    },
    /// Read and write the replicated cache.
    Cache {
        #[command(subcommand)]
        op: CacheOp,
    },
    /// List, add and remove the members of the daemon's cluster (admin HTTP).
    Cluster {
        #[command(subcommand)]
        op: ClusterOp,
        /// Admin URL of any member.
        #[arg(
            long,
            global = true,
            env = "MPREG_ADMIN",
            default_value = "http://127.0.0.1:6670"
        )]
        admin: String,
    },
    /// List, add and remove the links to neighbour clusters (admin HTTP).
    Federation {
        #[command(subcommand)]
        op: FederationOp,
        /// Admin URL of any member.
        #[arg(
            long,
            global = true,
            env = "MPREG_ADMIN",
            default_value = "http://127.0.0.1:6670"
        )]
        admin: String,
    },
    /// Run read-only SQL on the daemon (admin HTTP /sql) and print a table.
    Sql {
        sql: String,
        /// Admin URL of the daemon.
        #[arg(long, env = "MPREG_ADMIN", default_value = "http://127.0.0.1:6670")]
        admin: String,
        /// Output: table (aligned text), json or csv.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff; `mpreg man | man -l -`).
    Man,
    /// Measure a daemon: N connections x K operations in flight, latency
    /// percentiles (rpc, worker, publish, queue-send, queue-receive,
    /// cache-get, cache-put, sql); with --system, the same load against
    /// Redis, NATS or etcd.
    Bench(bench::BenchArgs),
}

#[derive(Subcommand)]
enum ClusterOp {
    /// Print the members: node id, raft id, address, role, replication.
    Members,
    /// Add a running node (it catches up as a learner, then votes).
    Add {
        node_id: String,
        /// The URL the node serves on, e.g. ws://10.0.0.4:6666.
        url: String,
    },
    /// Remove a member by node id.
    Remove { node_id: String },
    /// Make the node at --admin leave its cluster, then stop.
    Leave,
}

#[derive(Subcommand)]
enum FederationOp {
    /// Print the links: neighbour cluster, URLs, state, round trip, counters.
    Links,
    /// Link the cluster of the node at URL (its client URL, ws://host:port).
    Link { url: String },
    /// Remove the link to a neighbour cluster.
    Unlink { cluster_id: String },
    /// Read the neighbour policies from the daemon's --config again.
    Reload,
    /// Give the node at --admin a new route signing key; its old key stays
    /// valid for key_overlap_seconds.
    RotateKey,
}

#[derive(Subcommand)]
enum QueueOp {
    /// Declare a queue (again with the same settings is a no-op).
    Declare {
        name: String,
        /// fifo, priority or delay.
        #[arg(long = "type", default_value = "fifo")]
        queue_type: String,
        #[arg(long)]
        max_size: Option<u64>,
        /// Seconds a received message stays leased before redelivery.
        #[arg(long)]
        visibility_timeout: Option<f64>,
        /// Seconds a pushed message stays leased before redelivery.
        #[arg(long)]
        ack_timeout: Option<f64>,
        /// Seconds a message lives unacked.
        #[arg(long)]
        ttl: Option<f64>,
        #[arg(long)]
        max_retries: Option<u64>,
        /// Drop messages out of retries instead of moving them to <name>.dlq.
        #[arg(long)]
        no_dlq: bool,
        /// Refuse repeats of a client message id for this many seconds.
        #[arg(long)]
        dedup_window: Option<f64>,
    },
    /// Send one message (PAYLOAD is JSON, or else taken as a string).
    Send {
        name: String,
        payload: String,
        #[arg(long)]
        topic: Option<String>,
        #[arg(long)]
        priority: Option<u8>,
        /// Seconds before the message can be delivered.
        #[arg(long)]
        delay: Option<f64>,
        /// Your id for the message (deduplicated within the window).
        #[arg(long)]
        message_id: Option<String>,
        /// at_least_once, at_most_once or broadcast.
        #[arg(long)]
        delivery: Option<String>,
    },
    /// Receive (lease) up to MAX messages, waiting up to WAIT seconds.
    Receive {
        name: String,
        #[arg(long, default_value_t = 1)]
        max: u64,
        #[arg(long, default_value_t = 5.0)]
        wait: f64,
        /// Consumer id to ack with (one is generated when omitted).
        #[arg(long)]
        subscriber: Option<String>,
        /// Ack each message at once.
        #[arg(long)]
        ack: bool,
    },
    /// Ack a received message (or give it back with --nack).
    Ack {
        name: String,
        message_id: String,
        #[arg(long)]
        subscriber: String,
        #[arg(long)]
        nack: bool,
        /// With --nack: seconds before it can be delivered again.
        #[arg(long)]
        delay: Option<f64>,
    },
    /// Settings and counters of one queue, or of all.
    Stats { name: Option<String> },
}

#[derive(Subcommand)]
enum CacheOp {
    /// Read an entry (`--strong` waits for the raft read index first).
    Get {
        namespace: String,
        identifier: String,
        #[arg(long)]
        version: Option<String>,
        #[arg(long)]
        strong: bool,
    },
    /// Write an entry (VALUE is JSON, or else taken as a string).
    Put {
        namespace: String,
        identifier: String,
        value: String,
        #[arg(long)]
        version: Option<String>,
        /// Seconds until the entry expires.
        #[arg(long)]
        ttl: Option<f64>,
    },
    Delete {
        namespace: String,
        identifier: String,
        #[arg(long)]
        version: Option<String>,
    },
    /// Add BY (default 1, may be negative) to a numeric entry.
    Incr {
        namespace: String,
        identifier: String,
        #[arg(long, default_value = "1", allow_hyphen_values = true)]
        by: String,
    },
    /// Write NEW only if the entry equals --expected (absent: only if missing).
    Cas {
        namespace: String,
        identifier: String,
        new: String,
        #[arg(long)]
        expected: Option<String>,
    },
    /// Drop the entries of NAMESPACE whose identifier matches PATTERN
    /// (`*` one level, `#` any; all when omitted).
    Invalidate {
        namespace: String,
        pattern: Option<String>,
    },
}

/// The `cache-request` of a cache subcommand.
fn cache_request(op: CacheOp) -> Result<Value, String> {
    let key = |namespace: String, identifier: String, version: Option<String>| json!({"namespace": namespace, "identifier": identifier, "version": version});
    Ok(match op {
        CacheOp::Get {
            namespace,
            identifier,
            version,
            strong,
        } => json!({
            "operation": "get",
            "key": key(namespace, identifier, version),
            "options": {"consistency_level": if strong { "strong" } else { "eventual" }},
        }),
        CacheOp::Put {
            namespace,
            identifier,
            value,
            version,
            ttl,
        } => json!({
            "operation": "put",
            "key": key(namespace, identifier, version),
            "value": parse_arg(&value),
            "metadata": {"ttl_seconds": ttl},
        }),
        CacheOp::Delete {
            namespace,
            identifier,
            version,
        } => json!({"operation": "delete", "key": key(namespace, identifier, version)}),
        CacheOp::Incr {
            namespace,
            identifier,
            by,
        } => {
            let by: Value = serde_json::from_str(&by)
                .ok()
                .filter(Value::is_number)
                .ok_or_else(|| format!("--by must be a number, got {by}"))?;
            json!({
                "operation": "atomic",
                "key": key(namespace, identifier, None),
                "atomic_operation": {"operation_type": "increment", "increment_by": by},
            })
        }
        CacheOp::Cas {
            namespace,
            identifier,
            new,
            expected,
        } => json!({
            "operation": "atomic",
            "key": key(namespace, identifier, None),
            "atomic_operation": {
                "operation_type": "compare_and_swap",
                "expected_value": expected.as_deref().map(parse_arg),
                "new_value": parse_arg(&new),
            },
        }),
        CacheOp::Invalidate { namespace, pattern } => {
            json!({"operation": "invalidate", "namespace": namespace, "pattern": pattern})
        }
    })
}

/// The function and body of a queue subcommand.
fn queue_call(op: QueueOp) -> (&'static str, Value) {
    match op {
        QueueOp::Declare {
            name,
            queue_type,
            max_size,
            visibility_timeout,
            ack_timeout,
            ttl,
            max_retries,
            no_dlq,
            dedup_window,
        } => (
            "create",
            json!({
                "queue_name": name,
                "queue_type": queue_type,
                "max_size": max_size,
                "default_visibility_timeout_seconds": visibility_timeout,
                "default_acknowledgment_timeout_seconds": ack_timeout,
                "message_ttl_seconds": ttl,
                "max_retries": max_retries,
                "enable_dead_letter_queue": !no_dlq,
                "enable_deduplication": dedup_window.is_some(),
                "deduplication_window_seconds": dedup_window,
            }),
        ),
        QueueOp::Send {
            name,
            payload,
            topic,
            priority,
            delay,
            message_id,
            delivery,
        } => (
            "send",
            json!({
                "queue_name": name,
                "payload": parse_arg(&payload),
                "topic": topic,
                "priority": priority,
                "delay_seconds": delay,
                "message_id": message_id,
                "delivery_guarantee": delivery,
            }),
        ),
        QueueOp::Receive {
            name,
            max,
            wait,
            subscriber,
            ack,
        } => (
            "receive",
            json!({
                "queue_name": name,
                "max_messages": max,
                "timeout_seconds": wait,
                "subscriber_id": subscriber,
                "auto_acknowledge": ack,
            }),
        ),
        QueueOp::Ack {
            name,
            message_id,
            subscriber,
            nack,
            delay,
        } => (
            if nack { "nack" } else { "ack" },
            json!({
                "queue_name": name,
                "message_id": message_id,
                "subscriber_id": subscriber,
                "delay_seconds": delay,
            }),
        ),
        QueueOp::Stats { name } => ("stats", json!({ "queue_name": name })),
    }
}

/// Runs a federation operation through the admin HTTP of `admin`.
async fn federation(
    http: &reqwest::Client,
    admin: &str,
    op: &FederationOp,
) -> Result<String, String> {
    let base = format!("{}/federation", admin.trim_end_matches('/'));
    let request = match op {
        FederationOp::Links => http.get(format!("{base}/links")),
        FederationOp::Link { url } => http
            .post(format!("{base}/links"))
            .json(&json!({"url": url})),
        FederationOp::Unlink { cluster_id } => http.delete(format!("{base}/links/{cluster_id}")),
        FederationOp::Reload => http.post(format!("{base}/reload")),
        FederationOp::RotateKey => http.post(format!("{base}/rotate-key")),
    };
    admin_answer(&base, request).await
}

/// Runs a cluster membership operation through the admin HTTP of `admin`.
async fn cluster(http: &reqwest::Client, admin: &str, op: &ClusterOp) -> Result<String, String> {
    let base = format!("{}/cluster/members", admin.trim_end_matches('/'));
    let request = match op {
        ClusterOp::Members => http.get(&base),
        ClusterOp::Add { node_id, url } => http
            .post(&base)
            .json(&json!({"node_id": node_id, "url": url})),
        ClusterOp::Remove { node_id } => http.delete(format!("{base}/{node_id}")),
        ClusterOp::Leave => http.post(format!("{}/cluster/leave", admin.trim_end_matches('/'))),
    };
    admin_answer(&base, request).await
}

/// Sends an admin HTTP request and prints its JSON answer; an error status
/// is an error carrying the answer's message.
async fn admin_answer(base: &str, request: reqwest::RequestBuilder) -> Result<String, String> {
    let response = request
        .send()
        .await
        .map_err(|e| format!("cannot reach {base}: {e}"))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("cannot read the answer of {base}: {e}"))?;
    if !status.is_success() {
        let message = body["error"].as_str().unwrap_or_default().to_string();
        return Err(format!("{status}: {message}"));
    }
    Ok(serde_json::to_string_pretty(&body).unwrap_or_default())
}

/// Runs `sql` on the daemon at `admin` and prints the rows as it renders them.
async fn sql(
    http: &reqwest::Client,
    admin: &str,
    sql: &str,
    format: Format,
) -> Result<String, String> {
    let wire_name = match format {
        Format::Table => "table",
        Format::Json => "json",
        Format::Csv => "csv",
    };
    let url = format!("{}/sql", admin.trim_end_matches('/'));
    let response = http
        .post(&url)
        .query(&[("format", wire_name)])
        .body(sql.to_string())
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("cannot read the answer of {url}: {e}"))?;
    if !status.is_success() {
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(format!("{status}: {message}"));
    }
    Ok(String::from_utf8_lossy(&body).trim_end().to_string())
}

fn parse_arg(arg: &str) -> Value {
    serde_json::from_str(arg).unwrap_or_else(|_| Value::String(arg.to_string()))
}

fn request_from(text: &str) -> Result<Request, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let (cmds, object) = match value {
        Value::Array(cmds) => (cmds, None),
        Value::Object(object) => (
            object
                .get("cmds")
                .and_then(Value::as_array)
                .cloned()
                .ok_or("the request has no cmds array")?,
            Some(object),
        ),
        _ => return Err("expected a request object or an array of commands".into()),
    };
    let flag = |k: &str| {
        object
            .as_ref()
            .and_then(|o| o.get(k))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let mut request = Request::new()
        .intermediate_results(flag("return_intermediate_results"))
        .execution_summary(flag("include_execution_summary"));
    for cmd in cmds {
        let cmd: RpcCommand =
            serde_json::from_value(cmd).map_err(|e| format!("bad command: {e}"))?;
        request = request.command(cmd);
    }
    Ok(request)
}

/// The token of `--token-file`, trimmed.
fn token(cli: &Cli) -> Result<Option<String>, String> {
    let Some(path) = &cli.token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    Ok(Some(text.trim().to_string()))
}

/// An HTTP client for admin requests, presenting `token` on each and, for
/// an `https://` admin URL, trusting the CA certificates of `--ca-file` and
/// presenting the certificate of `--cert-file`.
fn http(token: Option<&str>, cli: &Cli) -> Result<reqwest::Client, String> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token is not a valid header value".to_string())?;
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let mut builder = reqwest::Client::builder().default_headers(headers);
    let read = |path: &Path, what: &str| {
        std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
    };
    if let Some(path) = &cli.ca_file {
        let certs = reqwest::Certificate::from_pem_bundle(&read(path, "CA file")?)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let (Some(cert), Some(key)) = (&cli.cert_file, &cli.key_file) {
        let mut pem = read(cert, "certificate file")?;
        pem.extend(read(key, "key file")?);
        let identity =
            reqwest::Identity::from_pem(&pem).map_err(|e| format!("{}: {e}", cert.display()))?;
        builder = builder.identity(identity);
    }
    builder.build().map_err(|e| e.to_string())
}

/// The completion script or manual page of `mpreg`.
fn self_description(command: &Command) -> Option<Result<String, String>> {
    let mut out = Vec::new();
    let mut cli = <Cli as clap::CommandFactory>::command();
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut cli, "mpreg", &mut out);
        }
        Command::Man => {
            if let Err(e) = clap_mangen::Man::new(cli).render(&mut out) {
                return Some(Err(e.to_string()));
            }
        }
        _ => return None,
    }
    Some(Ok(String::from_utf8_lossy(&out).trim_end().to_string()))
}

async fn run(cli: Cli) -> Result<String, String> {
    if let Some(text) = self_description(&cli.command) {
        return text;
    }
    let token = token(&cli)?;
    if let Command::Sql {
        sql: query,
        admin,
        format,
    } = &cli.command
    {
        return sql(&http(token.as_deref(), &cli)?, admin, query, *format).await;
    }
    if let Command::Cluster { op, admin } = &cli.command {
        return cluster(&http(token.as_deref(), &cli)?, admin, op).await;
    }
    if let Command::Federation { op, admin } = &cli.command {
        return federation(&http(token.as_deref(), &cli)?, admin, op).await;
    }
    let options = ConnectOptions {
        tls: cli
            .ca_file
            .as_deref()
            .map(|ca| TlsClient::new(ca, cli.cert_file.as_deref().zip(cli.key_file.as_deref())))
            .transpose()?,
        token,
    };
    if let Command::Bench(args) = &cli.command {
        let http = http(options.token.as_deref(), &cli)?;
        return bench::run(args, &cli.url, &options, http).await;
    }
    let client = Client::connect_with(&cli.url, &options)
        .await
        .map_err(|e| e.to_string())?;
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    match cli.command {
        Command::Call {
            fun,
            args,
            target_cluster,
        } => {
            let command = RpcCommand {
                name: fun.clone(),
                fun: fun.clone(),
                args: args.iter().map(|a| parse_arg(a)).collect(),
                target_cluster,
                ..RpcCommand::default()
            };
            let mut results = client
                .request(Request::new().command(command))
                .await
                .map_err(|e| e.to_string())?;
            let result = results
                .remove(&fun)
                .ok_or_else(|| format!("no result named {fun}"))?;
            Ok(pretty(&result))
        }
        Command::Publish { topic, payload } => {
            client
                .publish(&topic, parse_arg(&payload))
                .await
                .map_err(|e| e.to_string())?;
            Ok("published".to_string())
        }
        Command::Subscribe {
            patterns,
            backlog_seconds,
        } => {
            let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
            let mut subscription = client
                .subscribe(&patterns, backlog_seconds)
                .await
                .map_err(|e| e.to_string())?;
            loop {
                let next = tokio::select! {
                    next = subscription.next() => next,
                    _ = tokio::signal::ctrl_c() => return Ok(String::new()),
                };
                let Some(note) = next else {
                    return Err("the connection closed".into());
                };
                let mut line = serde_json::json!({"topic": note.message.topic, "payload": note.message.payload});
                if note.dropped > 0 {
                    line["dropped"] = note.dropped.into();
                }
                match print_line(&line.to_string()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                        return Ok(String::new());
                    }
                    Err(e) => return Err(format!("failed to write to stdout: {e}")),
                }
            }
        }
        Command::Rpc { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("failed to read {}: {e}", file.display()))?;
            let request = request_from(&text).map_err(|e| format!("{}: {e}", file.display()))?;
            let response = client.send(request).await.map_err(|e| e.to_string())?;
            let mut out = serde_json::json!({"r": response.r});
            if !response.intermediate_results.is_empty() {
                out["intermediate_results"] =
                    serde_json::to_value(&response.intermediate_results).unwrap_or_default();
            }
            if let Some(summary) = response.execution_summary {
                out["execution_summary"] = serde_json::to_value(summary).unwrap_or_default();
            }
            Ok(pretty(&out))
        }
        Command::Queue { op } => {
            let (fun, body) = queue_call(op);
            let reply = client.queue(fun, body).await.map_err(|e| e.to_string())?;
            Ok(pretty(&reply))
        }
        Command::Cache { op } => {
            let reply = client
                .cache(cache_request(op)?)
                .await
                .map_err(|e| e.to_string())?;
            Ok(pretty(&reply))
        }
        Command::Sql { .. }
        | Command::Cluster { .. }
        | Command::Federation { .. }
        | Command::Completions { .. }
        | Command::Man
        | Command::Bench(_) => Err("this subcommand is run before connecting".into()),
    }
}

/// Writes `line` and a newline to stdout, flushed (so `| head` and `| jq`
/// see each line as it comes, and a closed pipe is an error, not a panic).
fn print_line(line: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(out) if out.is_empty() => ExitCode::SUCCESS,
        Ok(out) => match print_line(&out) {
            Ok(()) => ExitCode::SUCCESS,
            // The reader went away (`mpreg ... | head`): not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: failed to write to stdout: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
