//! Why a queue or cache call failed: a code of the one error table
//! ([`ErrorCode`], docs/protocol.md) and a message, answered as
//! `{success: false, error_message, error_code}`.

use mpreg_client::protocol::ErrorCode;
use mpreg_storage::Outcome;
use serde_json::{Value, json};

use crate::envelope::Refused;

/// Why a call failed.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::UnsupportedDelivery, message)
    }

    pub fn to_value(&self) -> Value {
        json!({
            "success": false,
            "error_message": self.message,
            "error_code": self.code.code(),
        })
    }
}

/// What a proposal answered, as a call's result: a refusal by apply is
/// [`ErrorCode::NotFound`] for an unknown queue, else
/// [`ErrorCode::Refused`]; an event refused before it was proposed (too
/// large) is [`ErrorCode::BadRequest`]; a proposal that could not commit is
/// [`ErrorCode::Unavailable`] (its message says whether it may still
/// commit).
pub fn committed(proposed: crate::Result<Outcome>) -> Result<Outcome, Refusal> {
    match proposed {
        Ok(Outcome::Rejected { reason }) => {
            let code = if reason.starts_with("unknown queue") {
                ErrorCode::NotFound
            } else {
                ErrorCode::Refused
            };
            Err(Refusal::new(code, reason))
        }
        Ok(outcome) => Ok(outcome),
        // Refused as asked (an event over max_entry_bytes): retrying fails too.
        Err(
            e @ crate::Error::Propose {
                refused: Refused::Invalid(_),
                ..
            },
        ) => Err(Refusal::new(ErrorCode::BadRequest, e.to_string())),
        Err(e) => Err(Refusal::new(ErrorCode::Unavailable, e.to_string())),
    }
}

/// An outcome of another kind than the event proposed.
pub fn unexpected(outcome: &Outcome) -> Refusal {
    Refusal::new(
        ErrorCode::Unavailable,
        format!("unexpected outcome from the log: {outcome:?}"),
    )
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (error_code {})", self.message, self.code.code())
    }
}
