//! mpreg-daemon: one node of an mpreg fabric.
//!
//! # Layout
//! - [`config`]: settings from defaults, a TOML file and flags;
//! - [`logging`]: `tracing` setup;
//! - [`metrics`]: the node's Prometheus registry and `/metrics` text;
//! - [`node`]: the data dir + raft; [`node::Node::propose`] is the one
//!   way to change shared state;
//! - [`fabric`]: node-to-node traffic (envelope, peer links, membership);
//! - [`raft_network`]: raft RPCs over the fabric;
//! - [`admin`]: admin HTTP (`/health`, `/status`, `/sql`, `/metrics`);
//! - [`sql`]: the SQL engine of a live node and the `/sql` handlers;
//! - [`protocol`]: MPREG JSON messages (parse, replies, error codes);
//! - [`rpc`]: dependency-resolving RPC over built-ins and workers;
//! - [`pubsub`]: topic fan-out with AMQP wildcards, backlog, slow consumers;
//! - [`transport`]: WebSocket sessions on the client + peer listener;
//! - [`client`]: the Rust client library (`Client`, `Worker`);
//! - [`server`]: runs all of the above until shutdown.

pub mod admin;
pub mod cache;
pub mod client;
mod clock;
pub mod config;
pub mod error;
pub mod fabric;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod pubsub;
pub mod queue;
pub mod raft_network;
pub mod refusal;
pub mod rpc;
pub mod server;
pub mod sql;
pub mod transport;

pub use config::Config;
pub use error::{Error, Result};
pub use node::Node;
pub use server::{Listeners, run};
