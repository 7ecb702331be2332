//! mpreg-client: what a program needs to talk to an mpreg daemon, without
//! the daemon's storage, raft or SQL engine (so it builds in a minute).
//!
//! # Layout
//! - [`protocol`]: the MPREG JSON wire types of every client frame, their
//!   parser, and the one table of error codes ([`protocol::ErrorCode`]);
//! - [`client`]: the Rust client library ([`Client`], [`Worker`]);
//! - [`tls`]: `ws://` and `wss://` connections to a node ([`tls::connect`]),
//!   and `tcp://` and `tcps://` ones ([`tls::connect_framed`]);
//! - [`framing`]: the length-prefixed frames of `tcp://` and `tcps://`;
//! - `src/bin/mpreg.rs`: the `mpreg` command-line client.

pub mod client;
pub mod framing;
pub mod protocol;
pub mod tls;

pub use client::{
    CacheWritten, Client, ClientError, ConnectOptions, Handler, Notification, QueueSent,
    QueueSubscription, Request, Subscription, Worker,
};
