//! Why a queue or cache call failed: a code and a message, answered as
//! `{success: false, error_message, error_code}` (see docs/queues.md and
//! docs/cache.md for the codes).

use mpreg_storage::Outcome;
use serde_json::{Value, json};

/// Error codes of queue and cache replies (`error_code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalCode {
    /// 1007: the node could not commit the change (shutting down, no leader).
    Unavailable = 1007,
    /// 1008: a field is missing or malformed, or a value is too large.
    InvalidArgument = 1008,
    /// 1009: the queue or message does not exist.
    NotFound = 1009,
    /// 1010: the log refused the change (settings conflict, full queue,
    /// message leased by someone else or no longer leased, a cache value of
    /// the wrong type for an atomic operation).
    Refused = 1010,
    /// 1011: the delivery guarantee is not offered.
    UnsupportedDelivery = 1011,
}

/// Why a call failed.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub code: RefusalCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(RefusalCode::InvalidArgument, message)
    }

    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(RefusalCode::UnsupportedDelivery, message)
    }

    pub fn to_value(&self) -> Value {
        json!({
            "success": false,
            "error_message": self.message,
            "error_code": self.code as i64,
        })
    }
}

/// What a proposal answered, as a call's result: a refusal by apply is
/// [`RefusalCode::NotFound`] for an unknown queue, else
/// [`RefusalCode::Refused`]; a proposal that could not commit is
/// [`RefusalCode::Unavailable`].
pub fn committed(proposed: crate::Result<Outcome>) -> Result<Outcome, Refusal> {
    match proposed {
        Ok(Outcome::Rejected { reason }) => {
            let code = if reason.starts_with("unknown queue") {
                RefusalCode::NotFound
            } else {
                RefusalCode::Refused
            };
            Err(Refusal::new(code, reason))
        }
        Ok(outcome) => Ok(outcome),
        Err(e) => Err(Refusal::new(RefusalCode::Unavailable, e.to_string())),
    }
}

/// An outcome of another kind than the event proposed.
pub fn unexpected(outcome: &Outcome) -> Refusal {
    Refusal::new(
        RefusalCode::Unavailable,
        format!("unexpected outcome from the log: {outcome:?}"),
    )
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (error_code {})", self.message, self.code as i64)
    }
}
