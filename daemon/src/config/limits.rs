//! The limits of each system, owned here so that the settings layer needs
//! no system and every system reads its limits from one place.

use std::time::Duration;

/// Per-connection limits.
#[derive(Clone, Debug)]
pub struct TransportLimits {
    /// Largest frame (and message) accepted.
    pub max_frame_bytes: usize,
    /// Requests one connection may have in flight.
    pub max_in_flight: usize,
    /// Bytes of request frames one connection may have in flight (at least
    /// `max_frame_bytes`, so one frame of any allowed size gets in).
    pub max_in_flight_bytes: usize,
    /// Frames queued for a connection before senders wait.
    pub outbound_queue: usize,
    /// Interval of server pings.
    pub ping_interval: Duration,
    /// A connection that sends nothing (not even pongs) this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            max_frame_bytes: 20 * 1024 * 1024,
            max_in_flight: 1024,
            max_in_flight_bytes: 64 * 1024 * 1024,
            outbound_queue: 1024,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(120),
            max_connections: 10_000,
        }
    }
}

/// Limits of the RPC engine.
#[derive(Clone, Debug)]
pub struct RpcLimits {
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// Most commands one request may hold.
    pub max_commands: usize,
}

impl Default for RpcLimits {
    fn default() -> Self {
        RpcLimits {
            request_timeout: Duration::from_secs(30),
            max_commands: 10_000,
        }
    }
}

/// What happens when a subscriber's buffer is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumerPolicy {
    /// Drop the oldest buffered message and report the count.
    #[default]
    DropOldest,
    /// Close the subscriber's connection.
    Disconnect,
}

/// Pub/sub limits.
#[derive(Clone, Debug)]
pub struct PubSubLimits {
    /// Messages buffered per subscription.
    pub subscriber_buffer: usize,
    pub slow_consumer: SlowConsumerPolicy,
    /// Largest payload (serialized message) accepted.
    pub max_payload_bytes: usize,
    /// Longest backlog window.
    pub backlog_window: Duration,
    /// Bytes the backlog may hold.
    pub backlog_bytes: usize,
}

impl Default for PubSubLimits {
    fn default() -> Self {
        PubSubLimits {
            subscriber_buffer: 10_000,
            slow_consumer: SlowConsumerPolicy::DropOldest,
            max_payload_bytes: 1024 * 1024,
            backlog_window: Duration::from_secs(300),
            backlog_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Memory tier and value limits.
#[derive(Clone, Debug)]
pub struct CacheLimits {
    /// Bytes the memory tier may hold (keys, values and bookkeeping).
    pub memory_bytes: usize,
    /// Largest value (JSON text) a write may store.
    pub max_value_bytes: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            memory_bytes: 64 << 20,
            max_value_bytes: 1 << 20,
        }
    }
}
