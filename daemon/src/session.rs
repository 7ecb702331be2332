//! What a system needs to write to a client connection: the frame type
//! the connection speaks and the frames queued for it. The transport owns
//! the connections; systems (pub/sub, queue pushes, workers) only queue.

use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

/// A frame queued for a connection.
pub type Outbound = Message;

/// Whether a connection speaks text or binary frames (replies match).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Text,
    Binary,
}

impl FrameKind {
    pub fn message(self, json: String) -> Outbound {
        match self {
            FrameKind::Text => Message::text(json),
            FrameKind::Binary => Message::binary(json.into_bytes()),
        }
    }

    /// `value` as one frame. Serialized straight into a buffer: `Value`'s
    /// `Display` goes through a formatter and costs several times more.
    /// The replies given here always serialize (their map keys are
    /// strings).
    pub fn json(self, value: &impl Serialize) -> Outbound {
        self.message(serde_json::to_string(value).unwrap_or_default())
    }
}
