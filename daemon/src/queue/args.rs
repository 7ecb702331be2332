//! The arguments of the `mpreg.queue.*` functions, read from the request
//! body (upstream MPREG field names) with a clear error per bad field.

use std::borrow::Cow;
use std::time::Duration;

use mpreg_storage::event::{Delivery, QueueSettings, QueueType};
use serde_json::{Map, Value};

use crate::refusal::Refusal;

/// The request body: upstream clients pass one dict as `args[0]`; keyword
/// arguments work too. Borrowed unless both are given and must be merged.
pub fn body<'a>(
    args: &'a [Value],
    kwargs: &'a Map<String, Value>,
) -> Result<Cow<'a, Map<String, Value>>, Refusal> {
    match args {
        [] => Ok(Cow::Borrowed(kwargs)),
        [Value::Object(map)] if kwargs.is_empty() => Ok(Cow::Borrowed(map)),
        [Value::Object(map)] => {
            let mut map = map.clone();
            map.extend(kwargs.clone());
            Ok(Cow::Owned(map))
        }
        _ => Err(Refusal::invalid(
            "pass one object of named fields (args[0]) or keyword arguments",
        )),
    }
}

/// Typed access to the fields of one body.
pub struct Fields<'a>(pub &'a Map<String, Value>);

impl Fields<'_> {
    pub fn str(&self, name: &str) -> Result<Option<&str>, Refusal> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(Refusal::invalid(format!(
                "{name} must be a string, got {other}"
            ))),
        }
    }

    pub fn required_str(&self, name: &str) -> Result<&str, Refusal> {
        match self.str(name)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(Refusal::invalid(format!("{name} is required"))),
        }
    }

    pub fn bool(&self, name: &str, default: bool) -> Result<bool, Refusal> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(Refusal::invalid(format!(
                "{name} must be true or false, got {other}"
            ))),
        }
    }

    pub fn uint(&self, name: &str) -> Result<Option<u64>, Refusal> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                Refusal::invalid(format!("{name} must be a whole number >= 0, got {v}"))
            }),
        }
    }

    /// A duration given in (fractional) seconds.
    pub fn seconds(&self, name: &str) -> Result<Option<Duration>, Refusal> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_f64() {
                Some(s) if (0.0..1e9).contains(&s) => Ok(Some(Duration::from_secs_f64(s))),
                _ => Err(Refusal::invalid(format!(
                    "{name} must be a number of seconds >= 0, got {v}"
                ))),
            },
        }
    }

    fn seconds_ms(&self, name: &str, default: Duration) -> Result<u64, Refusal> {
        Ok(millis(self.seconds(name)?.unwrap_or(default)))
    }
}

pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Upstream defaults of `QueueConfiguration`.
const DEFAULT_MAX_SIZE: u64 = 10_000;
/// The largest `max_size` a queue may be declared with.
pub const MAX_QUEUE_SIZE: u64 = 100_000_000;
const DEFAULT_VISIBILITY: Duration = Duration::from_secs(30);
const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(300);
const DEFAULT_MAX_RETRIES: u64 = 3;

/// `mpreg.queue.create`: the queue name and its settings.
pub fn declare(body: &Map<String, Value>) -> Result<(String, QueueSettings), Refusal> {
    let f = Fields(body);
    let name = match f.str("queue_name")? {
        Some(name) => name,
        None => f.required_str("name")?,
    }
    .to_string();
    let queue_type = match f.str("queue_type")?.unwrap_or("fifo") {
        "fifo" => QueueType::Fifo,
        "priority" => QueueType::Priority,
        "delay" => QueueType::Delay,
        other => {
            return Err(Refusal::invalid(format!(
                "queue_type must be fifo, priority or delay, not {other}"
            )));
        }
    };
    let max_size = f.uint("max_size")?.unwrap_or(DEFAULT_MAX_SIZE);
    if !(1..=MAX_QUEUE_SIZE).contains(&max_size) {
        return Err(Refusal::invalid(format!(
            "max_size must be 1 to {MAX_QUEUE_SIZE}, got {max_size}"
        )));
    }
    let max_retries = f.uint("max_retries")?.unwrap_or(DEFAULT_MAX_RETRIES);
    let max_retries = u32::try_from(max_retries)
        .map_err(|_| Refusal::invalid(format!("max_retries {max_retries} is too large")))?;
    let dead_letter_queue = if f.bool("enable_dead_letter_queue", true)? {
        Some(match f.str("dead_letter_queue")? {
            Some(dlq) => dlq.to_string(),
            None => format!("{name}.dlq"),
        })
    } else {
        None
    };
    let dedup_window_ms = if f.bool("enable_deduplication", false)? {
        Some(f.seconds_ms("deduplication_window_seconds", DEFAULT_DEDUP_WINDOW)?)
    } else {
        None
    };
    let settings = QueueSettings {
        queue_type,
        max_size,
        visibility_timeout_ms: f
            .seconds_ms("default_visibility_timeout_seconds", DEFAULT_VISIBILITY)?,
        ack_timeout_ms: f.seconds_ms(
            "default_acknowledgment_timeout_seconds",
            DEFAULT_ACK_TIMEOUT,
        )?,
        message_ttl_ms: f.seconds("message_ttl_seconds")?.map(millis),
        max_retries,
        dead_letter_queue,
        dedup_window_ms,
    };
    Ok((name, settings))
}

/// The delivery guarantee of a send; the ones we cannot honour are refused.
pub fn delivery(f: &Fields<'_>) -> Result<Delivery, Refusal> {
    match f.str("delivery_guarantee")?.unwrap_or("at_least_once") {
        "at_least_once" => Ok(Delivery::AtLeastOnce),
        "at_most_once" | "fire_and_forget" => Ok(Delivery::AtMostOnce),
        "broadcast" => Ok(Delivery::Broadcast),
        "exactly_once" => Err(Refusal::unsupported(
            "unsupported_delivery_guarantee:exactly_once",
        )),
        "quorum" => Err(Refusal::unsupported(
            "unsupported_delivery_guarantee:quorum (needs a multi-node cluster)",
        )),
        other => Err(Refusal::invalid(format!(
            "delivery_guarantee must be at_least_once, at_most_once, fire_and_forget or broadcast, not {other}"
        ))),
    }
}

/// The pull timeout: upstream clamps it to 0.05..=60 seconds.
pub fn receive_timeout(f: &Fields<'_>) -> Result<Duration, Refusal> {
    let timeout = f
        .seconds("timeout_seconds")?
        .unwrap_or(Duration::from_secs(5));
    Ok(timeout.clamp(Duration::from_millis(50), Duration::from_secs(60)))
}
