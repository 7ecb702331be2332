//! mpreg-daemon: one node of an mpreg fabric.
//!
//! # Layout
//! - [`config`]: settings from defaults, a TOML file and flags;
//! - [`logging`]: `tracing` setup;
//! - [`node`]: the data dir + raft; [`node::Node::propose`] is the one
//!   way to change shared state;
//! - [`raft_network`]: the raft network of a single-member cluster;
//! - [`admin`]: admin HTTP (`/health`, `/status`);
//! - [`transport`]: the client + peer listener;
//! - [`server`]: runs all of the above until shutdown.

pub mod admin;
pub mod config;
pub mod error;
pub mod logging;
pub mod node;
pub mod raft_network;
pub mod server;
pub mod transport;

pub use config::Config;
pub use error::{Error, Result};
pub use node::Node;
pub use server::{Listeners, run};
