//! Runs a node: binds nothing itself (it takes listeners, so tests can bind
//! port 0), writes the listening file, serves admin HTTP, starts the node,
//! writes the ready file, and shuts everything down in order when the token
//! is cancelled.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::auth::{self, Auth};
use crate::cache::Cache;
use crate::cluster::{Node, membership};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::federation::Federation;
use crate::metrics::Metrics;
use crate::peer_server::PeerServer;
use crate::pubsub::PubSub;
use crate::queue::Queues;
use crate::rpc::Rpc;
use crate::tls::{ServerTls, TlsListener};
use crate::transport::{self, Endpoints, Services};

/// The sockets a node serves on.
pub struct Listeners {
    /// Client + peer transport (`--listen`).
    pub client: TcpListener,
    /// Admin HTTP (`--admin-listen`).
    pub admin: TcpListener,
    /// PostgreSQL wire (`--pg-listen`), when set.
    pub pg: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of `config` (port 0 picks a free port).
    pub async fn bind(config: &Config) -> Result<Listeners> {
        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind { what, addr, source })
        };
        Ok(Listeners {
            client: bind("client", config.listen).await?,
            admin: bind("admin", config.admin_listen).await?,
            pg: match config.pg_listen {
                Some(addr) => Some(bind("pg", addr).await?),
                None => None,
            },
        })
    }
}

/// How long a stopping node waits for in-flight requests (and the
/// connections and catalog updates they finish) before it stops raft and
/// syncs storage anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Contents of `--ready-file`.
#[derive(Serialize)]
struct Ready<'a> {
    node_id: &'a str,
    cluster_id: &'a str,
    client_url: &'a str,
    admin_url: &'a str,
    /// `postgres://host:port` of `--pg-listen`, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pg_url: Option<&'a str>,
}

/// Contents of `--listening-file`.
#[derive(Serialize)]
struct Listening<'a> {
    client_url: &'a str,
    admin_url: &'a str,
}

/// Writes a ready or listening file atomically (temp file + rename).
fn write_state_file(path: &Path, contents: &impl Serialize) -> Result<()> {
    let err = |source| Error::StateFile {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let body = serde_json::to_vec(contents).map_err(|e| err(e.into()))?;
    std::fs::write(&tmp, body).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn local_addr(
    listener: &TcpListener,
    what: &'static str,
    config_addr: std::net::SocketAddr,
) -> Result<std::net::SocketAddr> {
    listener.local_addr().map_err(|source| Error::Bind {
        what,
        addr: config_addr,
        source,
    })
}

/// A started node and everything serving it.
pub struct Running {
    node: Arc<Node>,
    client_url: String,
    admin_url: String,
    tasks: TaskTracker,
    admin_task: tokio::task::JoinHandle<Result<()>>,
    shutdown: CancellationToken,
}

/// Starts the node and its listeners and writes the ready file; `None` when
/// `shutdown` is cancelled before the node has started.
pub async fn start(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<Option<Running>> {
    let client_addr = local_addr(&listeners.client, "client", config.listen)?;
    let admin_addr = local_addr(&listeners.admin, "admin", config.admin_listen)?;
    let pg_url = match (&listeners.pg, config.pg_listen) {
        (Some(listener), Some(addr)) => {
            Some(format!("postgres://{}", local_addr(listener, "pg", addr)?))
        }
        _ => None,
    };
    let tls = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => Some(Arc::new(ServerTls::load(
            cert,
            key,
            config.tls_client_ca_file.as_deref(),
        )?)),
        _ => None,
    };
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let client_url = format!("{scheme}://{client_addr}");
    let admin_tls = tls.clone().filter(|_| config.admin_tls);
    let admin_scheme = if admin_tls.is_some() { "https" } else { "http" };
    let admin_url = format!("{admin_scheme}://{admin_addr}");
    if !client_addr.ip().is_loopback() && config.secrets.cluster.is_none() {
        tracing::warn!(
            listen = %client_addr,
            "listening beyond loopback with no cluster_secret_file: any host that reaches this port can act as a member (docs/security.md)"
        );
    }
    if !client_addr.ip().is_loopback() && tls.is_none() {
        tracing::warn!(
            listen = %client_addr,
            "listening beyond loopback without TLS: traffic, tokens included, can be read on the network (docs/security.md)"
        );
    }
    if let Some(path) = &config.listening_file {
        write_state_file(
            path,
            &Listening {
                client_url: &client_url,
                admin_url: &admin_url,
            },
        )?;
    }
    let credentials = config
        .credentials
        .iter()
        .map(|entry| entry.load(auth::token_sha256))
        .collect::<Result<Vec<_>>>()?;
    let tasks = TaskTracker::new();

    let metrics = Arc::new(Metrics::new(config.metrics_max_label_values).map_err(Error::Metrics)?);
    let admin_state = AdminState::new(
        metrics.clone(),
        shutdown.clone(),
        config.open_health_endpoints,
    );
    let admin_shutdown = shutdown.clone();
    let stopped = async move { admin_shutdown.cancelled().await };
    let router = admin::router(admin_state.clone());
    let admin_task = match admin_tls {
        Some(tls) => {
            let listener = TlsListener::new(listeners.admin, tls).map_err(Error::Admin)?;
            let server = axum::serve(listener, router).with_graceful_shutdown(stopped);
            tasks.spawn(async move { server.await.map_err(Error::Admin) })
        }
        None => {
            let server = axum::serve(listeners.admin, router).with_graceful_shutdown(stopped);
            tasks.spawn(async move { server.await.map_err(Error::Admin) })
        }
    };

    let own_url = config
        .advertise_url
        .clone()
        .unwrap_or_else(|| client_url.clone());
    let node = Arc::new(Node::open(&config, metrics.storage.clone()).await?);
    let endpoints = Endpoints::new(PeerServer::new(
        node.clone(),
        metrics.transport.peer_auth_refusals.clone(),
    ));
    tasks.spawn(transport::serve(
        listeners.client,
        endpoints.clone(),
        config.transport.clone(),
        metrics.transport.clone(),
        tls.clone(),
        shutdown.child_token(),
        tasks.clone(),
    ));
    let serving = membership::serve(
        &node,
        &config,
        &own_url,
        vec![own_url.clone(), admin_url.clone()],
        &shutdown,
    );
    tokio::select! {
        served = serving => served?,
        () = shutdown.cancelled() => {
            drain(&tasks).await;
            node.shutdown().await;
            return Ok(None);
        }
    }
    let queues = Queues::start(
        node.clone(),
        metrics.queue.clone(),
        config.rpc.request_timeout,
        shutdown.child_token(),
    );
    let federation = Federation::start(
        node.clone(),
        config.federation.clone(),
        config.config_file.clone(),
        &config.data_dir,
        metrics.federation.clone(),
        shutdown.child_token(),
    )?;
    let rpc = Rpc::start(
        node.clone(),
        config.rpc.clone(),
        metrics.rpc.clone(),
        queues.clone(),
        federation.clone(),
    )
    .await?;
    let pubsub = Arc::new(
        PubSub::start(
            node.clone(),
            config.pubsub.clone(),
            metrics.pubsub.clone(),
            federation.clone(),
        )
        .await?,
    );
    let cache = Arc::new(Cache::new(
        node.clone(),
        pubsub.clone(),
        federation.clone(),
        config.cache.clone(),
        metrics.cache.clone(),
    ));

    let auth = Arc::new(Auth::new(
        node.clone(),
        metrics.transport.client_auth_refusals.clone(),
        !credentials.is_empty(),
    ));
    if let Err(e) = auth::propose_configured(&node, &credentials).await {
        tracing::warn!(error = %e, "configured credentials not proposed; clients are refused until they are (send SIGHUP to retry)");
    }
    let sql = admin::sql_engine(node.clone(), cache.clone(), config.sql.clone())
        .map_err(Error::SqlRuntime)?;
    sql.set_link_states(federation.clone());
    let sql = Arc::new(sql);
    if let Some(listener) = listeners.pg {
        let login = Arc::new(admin::PgCredentials(auth.clone()));
        let tls = tls.as_ref().map(|tls| tls.acceptor());
        let stopped = shutdown.clone().cancelled_owned();
        let served = mpreg_query::pg::serve(listener, sql.clone(), login, tls, stopped);
        tasks.spawn(async move {
            if let Err(e) = served.await {
                tracing::error!(error = %e, "the PostgreSQL listener stopped");
            }
        });
    }
    admin_state.set_node(node.clone(), sql, auth.clone());
    admin_state.set_federation(federation.clone());
    #[cfg(unix)]
    tasks.spawn(reload_on_sighup(
        federation.clone(),
        node.clone(),
        tls,
        config.config_file.clone(),
        shutdown.clone(),
    ));
    let rpc = Arc::new(rpc);
    endpoints
        .peers
        .attach(rpc.clone(), pubsub.clone(), cache.clone(), federation);
    endpoints.serve_clients(Arc::new(Services {
        auth,
        rpc,
        queues,
        pubsub,
        cache,
    }));

    if let Some(path) = &config.ready_file {
        let identity = node.identity();
        write_state_file(
            path,
            &Ready {
                node_id: &identity.node_id,
                cluster_id: &identity.cluster_id,
                client_url: &client_url,
                admin_url: &admin_url,
                pg_url: pg_url.as_deref(),
            },
        )?;
    }
    tracing::info!(%client_url, %admin_url, pg_url = pg_url.as_deref().unwrap_or("off"), "ready");
    Ok(Some(Running {
        node,
        client_url,
        admin_url,
        tasks,
        admin_task,
        shutdown,
    }))
}

impl Running {
    /// The node, for in-process tests and benchmarks.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// `ws://` URL of the client listener.
    pub fn client_url(&self) -> &str {
        &self.client_url
    }

    /// `http://` URL of admin HTTP.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// Waits for `shutdown`, then stops accepting, gives in-flight work up
    /// to [`SHUTDOWN_GRACE`] to finish, syncs storage and returns. Work still
    /// running then was never acknowledged; it ends with the process.
    ///
    /// When raft stops on its own first (a WAL sync failed), the node stops
    /// the same way and returns [`Error::RaftFailed`]: fail-stop, so a
    /// supervisor restarts it and it recovers from its log, instead of
    /// serving reads and health checks with a raft that commits nothing.
    pub async fn wait(self) -> Result<()> {
        let failed = tokio::select! {
            () = self.shutdown.cancelled() => None,
            reason = self.node.raft_failed() => Some(reason),
        };
        match &failed {
            None => tracing::info!("shutting down"),
            Some(reason) => {
                tracing::error!(%reason, "raft stopped; stopping the node");
                self.shutdown.cancel();
            }
        }
        drain(&self.tasks).await;
        let admin_result = if self.admin_task.is_finished() {
            self.admin_task
                .await
                .map_err(|e| Error::Admin(std::io::Error::other(e)))?
        } else {
            self.admin_task.abort();
            Ok(())
        };
        self.node.shutdown().await;
        tracing::info!("stopped");
        match failed {
            Some(reason) => Err(Error::RaftFailed(reason)),
            None => admin_result,
        }
    }
}

/// Closes `tasks` and waits up to [`SHUTDOWN_GRACE`] for them to finish.
async fn drain(tasks: &TaskTracker) {
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            unfinished = tasks.len(),
            grace = ?SHUTDOWN_GRACE,
            "in-flight work did not finish in the shutdown grace; stopping without it"
        );
    }
}

/// Reads the federation policies, the credentials and the TLS certificate
/// again on each SIGHUP.
#[cfg(unix)]
async fn reload_on_sighup(
    federation: Arc<Federation>,
    node: Arc<Node>,
    tls: Option<Arc<ServerTls>>,
    config_file: Option<std::path::PathBuf>,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            tracing::warn!(error = %e, "SIGHUP not watched: reload with POST /federation/reload");
            return;
        }
    };
    loop {
        tokio::select! {
            Some(()) = hangups.recv() => {
                if let Err(e) = federation.reload() {
                    tracing::warn!(error = %e, "SIGHUP: federation policies not reloaded");
                }
                if let Some(path) = &config_file
                    && let Err(e) = reload_credentials(&node, path).await
                {
                    tracing::warn!(error = %e, "SIGHUP: credentials not reloaded");
                }
                if let Some(tls) = &tls {
                    match tls.reload().and_then(|()| node.reload_certificate()) {
                        Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                        Err(e) => tracing::warn!(error = %e, "SIGHUP: TLS certificate not reloaded; the old one stays"),
                    }
                }
            }
            () = shutdown.cancelled() => return,
        }
    }
}

/// Reads the `[[credentials]]` of the config file and proposes the new or
/// changed ones. One that is gone from the file stays: revoke it with
/// `DELETE /credentials/{name}`.
#[cfg(unix)]
async fn reload_credentials(node: &Node, path: &Path) -> Result<()> {
    let file = crate::config::FileConfig::load(path)?;
    let credentials = file
        .credentials
        .unwrap_or_default()
        .iter()
        .map(|entry| entry.load(auth::token_sha256))
        .collect::<Result<Vec<_>>>()?;
    auth::propose_configured(node, &credentials).await
}

/// Serves until `shutdown` is cancelled, then stops accepting, finishes
/// in-flight work, syncs storage and returns.
pub async fn run(config: Config, listeners: Listeners, shutdown: CancellationToken) -> Result<()> {
    match start(config, listeners, shutdown).await? {
        Some(running) => running.wait().await,
        None => Ok(()),
    }
}
