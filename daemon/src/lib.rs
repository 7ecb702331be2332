//! mpreg-daemon: one node of an mpreg fabric.
//!
//! # Layout
//!
//! The modules form layers; each imports only from its own layer or the
//! ones below, and none imports another in a cycle (`layering_test.rs`
//! reads the `use` lines and checks both):
//!
//! 1. wire: [`config`] (settings and every system's limits), [`session`]
//!    (what a system queues for a client connection), [`envelope`] (the
//!    frame between nodes and its typed refusals), [`refusal`] (queue and
//!    cache error replies), [`topic`] (valid topics and patterns), `tls`
//!    (the certificate served on `--listen`),
//!    [`error`], [`logging`], `clock`; the client wire types are
//!    [`mpreg_client::protocol`];
//! 2. [`metrics`]: the node's Prometheus registry and metric handles;
//! 3. [`cluster`]: the node (data dir + raft, [`cluster::Node::propose`] is
//!    the one way to change shared state), peer links, the raft network,
//!    membership;
//! 4. systems: [`rpc`] (dependency-resolving calls over built-ins and
//!    workers), [`pubsub`] (topic fan-out, backlog, slow consumers),
//!    [`queue`] (durable queues), [`cache`] (replicated cache + memory
//!    tier), [`federation`] (links to neighbour clusters, route control),
//!    [`auth`] (client tokens and permissions);
//! 5. edges: [`transport`] (client WebSocket sessions on `--listen`),
//!    [`peer_server`] (what other nodes ask on `/peer`), [`admin`] (admin
//!    HTTP: health, status, SQL, metrics, cluster membership);
//! 6. [`server`]: runs all of the above until shutdown.

/// Every binary that runs a node (the daemon, its benches and tests)
/// allocates with mimalloc: SQL scans, apply and replay allocate per row
/// and per event, and with glibc's malloc a log scan spent 40% of its time
/// in malloc and free (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process. mimalloc asks for
/// them on its arenas (`MADV_HUGEPAGE`), and the first touch of each one
/// clears 2 MiB at once: a fresh node growing its heap stalled message
/// delivery for milliseconds (publish with 64 in flight: p99 2.6–3.5 ms,
/// 0.9 ms without huge pages; docs/benchmarks.md). The kernel checks the
/// flag at each page fault, so memory mapped before the call is covered.
pub fn without_huge_pages() -> std::io::Result<()> {
    rustix::thread::disable_transparent_huge_pages(true).map_err(std::io::Error::from)
}

mod admin;
mod auth;
mod cache;
mod clock;
pub mod cluster;
pub mod config;
pub mod envelope;
pub mod error;
mod federation;
pub mod logging;
mod metrics;
mod peer_server;
mod pubsub;
mod queue;
mod refusal;
mod rpc;
pub mod server;
mod session;
mod tls;
mod topic;
mod transport;

#[cfg(test)]
mod layering_test;

pub use cluster::Node;
pub use config::Config;
pub use error::{Error, Result};
pub use server::{Listeners, run};
