//! The `mpreg-daemon` binary: flags, logging, then the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use mpreg_daemon::config::{Config, FileConfig, LogFormat};
use mpreg_daemon::{Listeners, logging, run};
use mpreg_query::{Format, SqlLimits};
use tokio_util::sync::CancellationToken;

const EXAMPLES: &str = "\
Examples:
  mpreg-daemon --data-dir ./data
  mpreg-daemon --data-dir d2 --node-id n2 --listen 127.0.0.1:7102 --join ws://127.0.0.1:6666
  mpreg-daemon --data-dir c2 --cluster-id c2 --federate ws://127.0.0.1:6666
  mpreg-daemon --data-dir ./data --config mpreg.toml
  mpreg-daemon replay --data-dir ./data
  mpreg-daemon sql --data-dir ./data \"SELECT * FROM routes\"
  mpreg-daemon completions bash > ~/.local/share/bash-completion/completions/mpreg-daemon
  mpreg-daemon man > mpreg-daemon.1

MPREG_LISTEN and MPREG_ADMIN_LISTEN set --listen and --admin-listen;
docs/operations.md lists every flag and config key.";

/// Run an mpreg node, or inspect a stopped node's data dir.
#[derive(Parser)]
#[command(
    name = "mpreg-daemon",
    version,
    args_conflicts_with_subcommands = true,
    after_help = EXAMPLES
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Rebuild every view from the log and print {"last_applied","events","views_digest"}.
    Replay {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Run read-only SQL on a stopped node's data dir (same tables as /sql).
    Sql {
        #[arg(long)]
        data_dir: PathBuf,
        /// The query, e.g. "SELECT * FROM routes".
        sql: String,
        /// Output: table (aligned text), json, csv or arrow (IPC stream).
        #[arg(long, default_value = "table")]
        format: Format,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff; `mpreg-daemon man | man -l -`).
    Man,
}

#[derive(Args)]
struct RunArgs {
    /// Data dir of the node (created on first start).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Client + peer listener, default 127.0.0.1:6666 (port 0 = pick one).
    #[arg(long, env = "MPREG_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Admin HTTP listener, default 127.0.0.1:6670 (port 0 = pick one).
    #[arg(long, env = "MPREG_ADMIN_LISTEN")]
    admin_listen: Option<std::net::SocketAddr>,
    /// PostgreSQL wire listener for the SQL tables, e.g. 127.0.0.1:6432
    /// (off by default; port 0 = pick one).
    #[arg(long, env = "MPREG_PG_LISTEN")]
    pg_listen: Option<std::net::SocketAddr>,
    /// When serving, atomically write JSON with the bound addresses here.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// As soon as the listeners are bound (before joining or electing),
    /// atomically write JSON with the bound client and admin URLs here.
    #[arg(long)]
    listening_file: Option<PathBuf>,
    /// TOML config file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Node id (fixed at first start; a new dir without one gets a generated id).
    #[arg(long)]
    node_id: Option<String>,
    /// Cluster id (fixed at first start, default "local").
    #[arg(long)]
    cluster_id: Option<String>,
    /// URL other nodes reach this node at (default ws://<listen address>).
    #[arg(long)]
    advertise_url: Option<String>,
    /// First start only: join the cluster of this member, e.g. ws://10.0.0.1:6666.
    #[arg(long, conflicts_with = "peers")]
    join: Option<String>,
    /// First start only: form a cluster with these members (comma-separated URLs).
    #[arg(long, value_delimiter = ',')]
    peers: Option<Vec<String>>,
    /// Neighbour clusters to link, each named by the client URL of any of
    /// its members (comma-separated).
    #[arg(long, value_delimiter = ',')]
    federate: Option<Vec<String>>,
    /// File holding the secret every member of this cluster proves to the
    /// others at link setup (at least 16 bytes); with it, a peer without
    /// the secret is refused.
    #[arg(long)]
    cluster_secret_file: Option<PathBuf>,
    /// PEM certificate chain served over TLS on --listen (with --tls-key;
    /// clients and peers then use wss://).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// PEM CA certificates this node trusts when it connects to other
    /// nodes over wss:// (members and linked clusters).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// PEM CA certificates that sign the certificates every connection to
    /// --listen must present (mutual TLS); a member's certificate must
    /// name its node as URI mpreg://<cluster id>/<node id>.
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// Serve admin HTTP over TLS too (https://), with --tls-cert.
    #[arg(long)]
    admin_tls: bool,
    /// Writes are refused while the data dir's filesystem has fewer bytes
    /// free than this (default 256 MiB; 0 turns the guard off).
    #[arg(long, env = "MPREG_MIN_FREE_DISK_BYTES")]
    min_free_disk_bytes: Option<u64>,
    /// Log directives, RUST_LOG style, e.g. "info,mpreg_daemon::node=debug".
    #[arg(long)]
    log: Option<String>,
    /// Log line format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

fn config_from(args: RunArgs) -> mpreg_daemon::Result<Config> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let data_dir = args
        .data_dir
        .clone()
        .or(file.data_dir.clone())
        .ok_or_else(|| mpreg_daemon::Error::InvalidSetting("--data-dir is required".into()))?;
    let mut config = Config::new(data_dir);
    config.config_file = args.config.clone();
    config.merge_file(file);
    config.merge_file(FileConfig {
        listen: args.listen,
        admin_listen: args.admin_listen,
        pg_listen: args.pg_listen,
        ready_file: args.ready_file,
        listening_file: args.listening_file,
        node_id: args.node_id,
        cluster_id: args.cluster_id,
        advertise_url: args.advertise_url,
        join: args.join,
        peers: args.peers,
        federate: args.federate,
        cluster_secret_file: args.cluster_secret_file,
        tls_cert_file: args.tls_cert,
        tls_key_file: args.tls_key,
        tls_ca_file: args.tls_ca,
        tls_client_ca_file: args.tls_client_ca,
        admin_tls: args.admin_tls.then_some(true),
        min_free_disk_bytes: args.min_free_disk_bytes,
        log: args.log.or_else(|| std::env::var("RUST_LOG").ok()),
        log_format: args.log_format,
        ..FileConfig::default()
    });
    config.validate()?;
    Ok(config)
}

async fn wait_for_signal(shutdown: CancellationToken) -> mpreg_daemon::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(mpreg_daemon::Error::Signal)?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    shutdown.cancel();
    Ok(())
}

async fn serve(args: RunArgs) -> mpreg_daemon::Result<()> {
    let config = config_from(args)?;
    logging::init(&config.log, config.log_format)?;
    let listeners = Listeners::bind(&config).await?;
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(wait_for_signal(shutdown.clone()));
    let result = run(config, listeners, shutdown).await;
    signals.abort();
    result
}

fn report(err: &dyn std::error::Error) -> ExitCode {
    eprintln!("error: {}", mpreg_daemon::error::with_causes(err));
    ExitCode::FAILURE
}

/// Runs one query on a stopped node's dir and writes the result to stdout.
fn offline_sql(data_dir: &std::path::Path, sql: &str, format: Format) -> ExitCode {
    let engine = match mpreg_query::open_offline(data_dir, SqlLimits::default()) {
        Ok(engine) => engine,
        Err(e) => return report(&e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return report(&e),
    };
    let answer = runtime.block_on(engine.query(sql));
    engine.shutdown(std::time::Duration::from_secs(10));
    let output = match answer {
        Ok(output) => output,
        Err(e) => return report(&e),
    };
    let body = match mpreg_query::format::encode(format, &output) {
        Ok(body) => body,
        Err(e) => return report(&e),
    };
    write_stdout(&body)
}

/// Writes `bytes` to stdout; a reader that went away (`| head`) is not an
/// error.
fn write_stdout(bytes: &[u8]) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

fn main() -> ExitCode {
    if let Err(e) = mpreg_daemon::without_huge_pages() {
        eprintln!(
            "warning: cannot turn transparent huge pages off ({e}); latency may spike while the heap grows"
        );
    }
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Sql {
            data_dir,
            sql,
            format,
        }) => offline_sql(&data_dir, &sql, format),
        Some(Command::Completions { shell }) => {
            let mut cli = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cli, "mpreg-daemon", &mut script);
            write_stdout(&script)
        }
        Some(Command::Man) => {
            let cli = <Cli as clap::CommandFactory>::command();
            let mut page = Vec::new();
            match clap_mangen::Man::new(cli).render(&mut page) {
                Ok(()) => write_stdout(&page),
                Err(e) => report(&e),
            }
        }
        Some(Command::Replay { data_dir }) => match mpreg_storage::replay(&data_dir) {
            Ok(report) => {
                let line = serde_json::to_string(&report).expect("report serializes") + "\n";
                write_stdout(line.as_bytes())
            }
            Err(e) => report(&e),
        },
        None => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => return report(&e),
            };
            match runtime.block_on(serve(cli.run)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => report(&e),
            }
        }
    }
}
