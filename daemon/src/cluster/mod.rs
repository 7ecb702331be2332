//! The cluster: one raft group of nodes sharing a cluster id.
//!
//! - [`node`]: the data dir + raft; [`Node::propose`] is the one way to
//!   change shared state;
//! - [`peer`]: outbound links to other nodes (one WebSocket per address);
//! - [`peer_auth`]: the handshake that proves a peer holds the secret;
//! - [`raft_network`]: raft RPCs over those links;
//! - [`membership`]: forming, joining and changing the raft membership.
//!
//! What other nodes ask of this one is answered by
//! [`crate::peer_server`], which sits above the systems.

mod disk_space;
pub(crate) mod membership;
mod node;
pub(crate) mod peer;
pub(crate) mod peer_auth;
mod raft_network;

pub use node::{Node, RaftStatus, raft_id};
