//! The client wire protocol: MPREG JSON messages, parsed from frames and
//! written back.
//!
//! Every inbound frame is one JSON object with a `role` and a `u`. Parsing
//! never panics: a frame that is not JSON, too deep, missing `u` or `role`,
//! or of the wrong shape becomes a [`RpcError`] reply that names the
//! problem. Replies to `rpc` have no `role` (as upstream MPREG sends them).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The one table of error codes mpreg answers with (docs/protocol.md,
/// "Error codes"): RPC replies carry them in `error.code`, queue and cache
/// replies in `error_code`. Each meaning has one code and each code one
/// meaning; 1001-1004 are upstream MPREG's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1001: no function of that name anywhere.
    UnknownFunction,
    /// 1002: the function exists, but no provider matches version, id or locs.
    NoMatchingProvider,
    /// 1003: the provider failed (raised, disconnected, bad arguments).
    ExecutionFailed,
    /// 1004: the role is unknown.
    InvalidRole,
    /// 1005: commands reference each other in a cycle (or themselves).
    DependencyCycle,
    /// 1006: the frame or a field of it is not valid (missing, malformed,
    /// too large for its limit).
    BadRequest,
    /// 1007: the frame is larger than the frame size limit.
    FrameTooLarge,
    /// 1008: the connection has too many requests in flight.
    Busy,
    /// 1009: the queue or message does not exist.
    NotFound,
    /// 1010: the log refused the change (settings conflict, full queue,
    /// message leased by someone else or no longer leased, a cache value of
    /// the wrong type for an atomic operation).
    Refused,
    /// 1011: the delivery guarantee is not offered.
    UnsupportedDelivery,
    /// 1012: the request did not finish within the request timeout.
    Timeout,
    /// 1013: the change could not be committed (no leader, shutting down);
    /// the message says whether it may still commit.
    Unavailable,
    /// 1014: no route to the cluster that serves the function (or to the
    /// command's `target_cluster`); nothing ran.
    NoRoute,
    /// 1015: the target cluster is more cluster hops away than the hop
    /// budget allows; nothing ran.
    HopBudgetExhausted,
    /// 1016: a forwarded call came back to a cluster it had crossed;
    /// nothing ran.
    LoopDetected,
    /// 1017: the link toward the target cluster failed; the message says
    /// whether the call may have run.
    LinkFailed,
    /// 1018: the connection's credential does not allow the request (or
    /// was revoked, or the node requires one); nothing ran.
    PermissionDenied,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::UnknownFunction,
        ErrorCode::NoMatchingProvider,
        ErrorCode::ExecutionFailed,
        ErrorCode::InvalidRole,
        ErrorCode::DependencyCycle,
        ErrorCode::BadRequest,
        ErrorCode::FrameTooLarge,
        ErrorCode::Busy,
        ErrorCode::NotFound,
        ErrorCode::Refused,
        ErrorCode::UnsupportedDelivery,
        ErrorCode::Timeout,
        ErrorCode::Unavailable,
        ErrorCode::NoRoute,
        ErrorCode::HopBudgetExhausted,
        ErrorCode::LoopDetected,
        ErrorCode::LinkFailed,
        ErrorCode::PermissionDenied,
    ];

    pub fn code(self) -> i64 {
        match self {
            ErrorCode::UnknownFunction => 1001,
            ErrorCode::NoMatchingProvider => 1002,
            ErrorCode::ExecutionFailed => 1003,
            ErrorCode::InvalidRole => 1004,
            ErrorCode::DependencyCycle => 1005,
            ErrorCode::BadRequest => 1006,
            ErrorCode::FrameTooLarge => 1007,
            ErrorCode::Busy => 1008,
            ErrorCode::NotFound => 1009,
            ErrorCode::Refused => 1010,
            ErrorCode::UnsupportedDelivery => 1011,
            ErrorCode::Timeout => 1012,
            ErrorCode::Unavailable => 1013,
            ErrorCode::NoRoute => 1014,
            ErrorCode::HopBudgetExhausted => 1015,
            ErrorCode::LoopDetected => 1016,
            ErrorCode::LinkFailed => 1017,
            ErrorCode::PermissionDenied => 1018,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::UnknownFunction => "Command not found",
            ErrorCode::NoMatchingProvider => "No matching provider",
            ErrorCode::ExecutionFailed => "RPC execution failed",
            ErrorCode::InvalidRole => "Invalid RPC request role",
            ErrorCode::DependencyCycle => "Dependency cycle",
            ErrorCode::BadRequest => "Bad request",
            ErrorCode::FrameTooLarge => "Frame too large",
            ErrorCode::Busy => "Too many requests in flight",
            ErrorCode::NotFound => "Not found",
            ErrorCode::Refused => "Refused by the log",
            ErrorCode::UnsupportedDelivery => "Delivery guarantee not offered",
            ErrorCode::Timeout => "RPC execution timed out",
            ErrorCode::Unavailable => "Unavailable",
            ErrorCode::NoRoute => "No route to cluster",
            ErrorCode::HopBudgetExhausted => "Hop budget exhausted",
            ErrorCode::LoopDetected => "Loop detected",
            ErrorCode::LinkFailed => "Federation link failed",
            ErrorCode::PermissionDenied => "Permission denied",
        }
    }
}

/// The `error` object of a reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub details: Option<String>,
}

impl RpcError {
    pub fn new(code: ErrorCode, details: impl Into<String>) -> Self {
        RpcError {
            code: code.code(),
            message: code.message().to_string(),
            details: Some(details.into()),
        }
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)?;
        if let Some(details) = &self.details {
            write!(f, ": {details}")?;
        }
        Ok(())
    }
}

/// One command of an `rpc` request.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RpcCommand {
    /// Unique within the request; other commands reference its result by it.
    pub name: String,
    /// Function to call.
    pub fun: String,
    #[serde(default, deserialize_with = "null_default")]
    pub args: Vec<Value>,
    #[serde(default, deserialize_with = "null_default")]
    pub kwargs: Map<String, Value>,
    /// Resource tags the provider must offer.
    #[serde(default, deserialize_with = "null_default")]
    pub locs: Vec<String>,
    #[serde(default)]
    pub function_id: Option<String>,
    /// Semver requirement, e.g. `>=1.0.0,<2.0.0`.
    #[serde(default)]
    pub version_constraint: Option<String>,
    #[serde(default)]
    pub target_cluster: Option<String>,
    #[serde(default)]
    pub routing_topic: Option<String>,
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An `rpc` request.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RpcRequest {
    pub u: String,
    pub cmds: Vec<RpcCommand>,
    #[serde(default, deserialize_with = "null_default")]
    pub return_intermediate_results: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub include_execution_summary: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub debug_mode: bool,
}

/// Results of one dependency level (upstream `RPCIntermediateResult`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IntermediateResult {
    pub request_id: String,
    pub level_index: usize,
    pub level_results: Map<String, Value>,
    pub accumulated_results: Map<String, Value>,
    pub total_levels: usize,
    pub completed_levels: usize,
    pub timestamp: f64,
    pub execution_time_ms: f64,
}

/// Timing of a whole request (upstream `RPCExecutionSummary`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExecutionSummary {
    pub request_id: String,
    pub total_execution_time_ms: f64,
    pub total_levels: usize,
    pub level_execution_times: Vec<f64>,
    pub bottleneck_level_index: usize,
    pub average_level_time_ms: f64,
    pub parallel_commands_executed: usize,
    pub cross_cluster_hops: usize,
}

/// The reply to an `rpc` request (and to worker registration).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RpcResponse {
    pub u: Option<String>,
    pub r: Option<Value>,
    pub error: Option<RpcError>,
    #[serde(default)]
    pub intermediate_results: Vec<IntermediateResult>,
    #[serde(default)]
    pub execution_summary: Option<ExecutionSummary>,
}

impl RpcResponse {
    pub fn ok(u: impl Into<String>, r: Value) -> Self {
        RpcResponse {
            u: Some(u.into()),
            r: Some(r),
            error: None,
            intermediate_results: Vec::new(),
            execution_summary: None,
        }
    }

    pub fn error(u: Option<String>, error: RpcError) -> Self {
        RpcResponse {
            u,
            r: None,
            error: Some(error),
            intermediate_results: Vec::new(),
            execution_summary: None,
        }
    }
}

/// A function a worker offers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerFunction {
    pub name: String,
    /// Defaults to `name`.
    #[serde(default)]
    pub function_id: Option<String>,
    /// Semver; defaults to `1.0.0`.
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub resources: Vec<String>,
}

/// `worker-register`: the connection serves these functions from now on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerRegister {
    pub u: String,
    pub functions: Vec<WorkerFunction>,
}

/// A function a worker stops serving.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerWithdrawal {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
}

/// `worker-withdraw`: the connection stops serving these functions.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerWithdraw {
    pub u: String,
    pub functions: Vec<WorkerWithdrawal>,
}

/// `internal-rpc`: the daemon asks a worker to run a function (written
/// from the daemon's borrowed fields).
#[derive(Clone, Debug, Serialize)]
pub struct InternalRpc<'a> {
    pub role: &'a str,
    pub u: &'a str,
    pub command: &'a str,
    pub function_id: &'a str,
    pub version: &'a str,
    pub args: &'a [Value],
    pub kwargs: &'a Map<String, Value>,
}

/// `internal-answer`: a worker's result (or error) for an `internal-rpc`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InternalAnswer {
    pub u: String,
    #[serde(default)]
    pub answer: Value,
    #[serde(default)]
    pub error: Option<String>,
}

/// A pub/sub message (upstream `PubSubMessage`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PubSubMessage {
    pub topic: String,
    pub payload: Value,
    #[serde(default)]
    pub timestamp: f64,
    pub message_id: String,
    #[serde(default)]
    pub publisher: String,
    #[serde(default, deserialize_with = "null_default")]
    pub headers: Map<String, Value>,
    #[serde(default)]
    pub routing_path: Option<Vec<String>>,
    #[serde(default)]
    pub current_hop: Option<i64>,
}

/// One pattern of a subscription.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopicPattern {
    pub pattern: String,
    /// Accepted for compatibility; matching follows the pattern itself.
    #[serde(default)]
    pub exact_match: bool,
}

fn yes() -> bool {
    true
}

fn five_minutes() -> u64 {
    300
}

/// A subscription (upstream `PubSubSubscription`, plus `durable`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PubSubSubscription {
    pub subscription_id: String,
    pub patterns: Vec<TopicPattern>,
    #[serde(default)]
    pub subscriber: String,
    #[serde(default)]
    pub created_at: f64,
    /// Deliver retained messages that match, before live ones.
    #[serde(default = "yes")]
    pub get_backlog: bool,
    /// How far back the backlog goes.
    #[serde(default = "five_minutes")]
    pub backlog_seconds: u64,
    /// Keep the subscription (buffering) when the connection closes.
    #[serde(default)]
    pub durable: bool,
}

/// `pubsub-publish`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Publish {
    pub u: String,
    pub message: PubSubMessage,
}

/// `pubsub-subscribe`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Subscribe {
    pub u: String,
    pub subscription: PubSubSubscription,
}

/// `pubsub-unsubscribe`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Unsubscribe {
    pub u: String,
    pub subscription_id: String,
}

/// The answer to every pub/sub request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PubSubAck {
    pub role: String,
    /// The `u` of the request.
    pub operation_id: String,
    pub success: bool,
    pub error: Option<String>,
    pub u: String,
}

impl PubSubAck {
    pub fn new(u: &str, result: Result<(), String>) -> Self {
        PubSubAck {
            role: "pubsub-ack".into(),
            operation_id: u.to_string(),
            success: result.is_ok(),
            error: result.err(),
            u: format!("ack_{u}"),
        }
    }
}

/// A parsed inbound frame.
#[derive(Debug)]
pub enum Inbound {
    Rpc(RpcRequest),
    Publish(Publish),
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
    WorkerRegister(WorkerRegister),
    WorkerWithdraw(WorkerWithdraw),
    InternalAnswer(InternalAnswer),
    QueueSubscribe(QueueSubscribe),
    QueueUnsubscribe(QueueUnsubscribe),
    CacheRequest(CacheRequest),
}

/// A `queue-subscribe` request.
#[derive(Clone, Debug, Deserialize)]
pub struct QueueSubscribe {
    pub u: String,
    pub queue_name: String,
    #[serde(default)]
    pub subscriber_id: Option<String>,
    #[serde(default)]
    pub topic_pattern: Option<String>,
    /// Most unacked messages pushed at once.
    #[serde(default)]
    pub prefetch: Option<u64>,
    /// Ack each message as it is pushed (at-most-once for this subscriber).
    #[serde(default)]
    pub auto_acknowledge: bool,
}

/// A `cache-request` frame (upstream field names). Serialized when a
/// daemon carries it to the cluster that holds its namespace.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CacheRequest {
    pub u: String,
    pub operation: String,
    #[serde(default)]
    pub key: Option<WireKey>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub value: Option<Value>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(default)]
    pub options: Map<String, Value>,
    /// Invalidate: identifiers to drop (AMQP wildcards).
    #[serde(default)]
    pub pattern: Option<String>,
    /// Invalidate: the namespace, when no `key` names it.
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub atomic_operation: Option<Map<String, Value>>,
    #[serde(default)]
    pub namespace_operation: Option<Map<String, Value>>,
}

/// `Some(value)` whenever the field is present, even as `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A cache key as clients send it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireKey {
    pub namespace: String,
    pub identifier: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A `queue-unsubscribe` request.
#[derive(Clone, Debug, Deserialize)]
pub struct QueueUnsubscribe {
    pub u: String,
    pub subscriber_id: String,
}

/// Why a frame could not be parsed, with the `u` to answer if it had one.
#[derive(Debug)]
pub struct Refused {
    pub u: Option<String>,
    pub error: RpcError,
}

/// The body of a frame, still to be decoded into its role's type: the
/// frame's text (the common case), or the tree parsed while finding out
/// what is wrong with the frame.
enum Body<'a> {
    Text(&'a [u8]),
    Tree(Value),
}

impl Body<'_> {
    fn decode<T: serde::de::DeserializeOwned>(self, role: &str, u: &str) -> Result<T, Refused> {
        match self {
            Body::Text(bytes) => serde_json::from_slice(bytes),
            Body::Tree(value) => serde_json::from_value(value),
        }
        .map_err(|e| Refused {
            u: Some(u.to_string()),
            error: RpcError::new(
                ErrorCode::BadRequest,
                format!("invalid {role} message: {e}"),
            ),
        })
    }
}

/// The two fields every frame needs, read without building the rest.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    role: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    u: Option<std::borrow::Cow<'a, str>>,
}

/// Parses one frame; `Err` carries the reply to send.
///
/// A well-formed frame is read twice, for its `role` and `u` and then
/// straight into its role's type. Any frame the direct way does not take
/// is parsed again into a JSON tree, which decides exactly as before and
/// names what is wrong. The whole frame is checked for UTF-8 first: the
/// direct decoder skips the fields a type ignores without checking them.
pub fn parse(bytes: &[u8]) -> Result<Inbound, Refused> {
    if let Ok(text) = std::str::from_utf8(bytes)
        && text.trim_start().starts_with('{')
        && let Ok(Head {
            role: Some(role),
            u: Some(u),
        }) = serde_json::from_str(text)
        && let Ok(inbound) = dispatch(&role, u.into_owned(), Body::Text(bytes))
    {
        return Ok(inbound);
    }
    parse_tree(bytes)
}

/// [`parse`] by way of a JSON tree, naming what is wrong with the frame.
fn parse_tree(bytes: &[u8]) -> Result<Inbound, Refused> {
    let refuse = |u: Option<String>, details: String| Refused {
        u,
        error: RpcError::new(ErrorCode::BadRequest, details),
    };
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| refuse(None, format!("frame is not valid JSON: {e}")))?;
    let Value::Object(object) = &value else {
        return Err(refuse(None, "frame must be a JSON object".to_string()));
    };
    let u = match object.get("u") {
        Some(Value::String(u)) => u.clone(),
        Some(other) => {
            return Err(refuse(
                None,
                format!("field u must be a string, got {other}"),
            ));
        }
        None => return Err(refuse(None, "missing field u".to_string())),
    };
    let role = match object.get("role") {
        Some(Value::String(role)) => role.clone(),
        Some(other) => {
            return Err(refuse(
                Some(u),
                format!("field role must be a string, got {other}"),
            ));
        }
        None => return Err(refuse(Some(u), "missing field role".to_string())),
    };
    dispatch(&role, u, Body::Tree(value))
}

/// Decodes `body` as the message of `role`.
fn dispatch(role: &str, u: String, body: Body) -> Result<Inbound, Refused> {
    match role {
        "rpc" => Ok(Inbound::Rpc(body.decode(role, &u)?)),
        "worker-register" => Ok(Inbound::WorkerRegister(body.decode(role, &u)?)),
        "worker-withdraw" => Ok(Inbound::WorkerWithdraw(body.decode(role, &u)?)),
        "internal-answer" => Ok(Inbound::InternalAnswer(body.decode(role, &u)?)),
        "pubsub-publish" => Ok(Inbound::Publish(body.decode(role, &u)?)),
        "pubsub-subscribe" => Ok(Inbound::Subscribe(body.decode(role, &u)?)),
        "pubsub-unsubscribe" => Ok(Inbound::Unsubscribe(body.decode(role, &u)?)),
        "queue-subscribe" => Ok(Inbound::QueueSubscribe(body.decode(role, &u)?)),
        "queue-unsubscribe" => Ok(Inbound::QueueUnsubscribe(body.decode(role, &u)?)),
        "cache-request" => Ok(Inbound::CacheRequest(body.decode(role, &u)?)),
        other => Err(Refused {
            u: Some(u),
            error: RpcError::new(
                ErrorCode::InvalidRole,
                format!("Invalid RPC request role: {other}"),
            ),
        }),
    }
}

#[cfg(test)]
mod test {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn each_error_code_has_one_meaning_and_the_docs_list_them() {
        let codes: BTreeSet<i64> = ErrorCode::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(codes.len(), ErrorCode::ALL.len(), "a code used twice");
        let messages: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.message()).collect();
        assert_eq!(messages.len(), ErrorCode::ALL.len(), "a message used twice");
        let docs = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md"),
        )
        .expect("docs/protocol.md");
        let rows: Vec<(i64, String)> = docs
            .lines()
            .filter_map(|line| {
                let mut cells = line.split('|').map(str::trim).skip(1);
                let code = cells.next()?.parse().ok()?;
                let message = cells.next()?.trim_matches('`').to_string();
                Some((code, message))
            })
            .collect();
        let table: Vec<(i64, String)> = ErrorCode::ALL
            .iter()
            .map(|c| (c.code(), c.message().to_string()))
            .collect();
        assert_eq!(rows, table, "docs/protocol.md's error table");
    }

    fn refused(bytes: &[u8]) -> Refused {
        match parse(bytes) {
            Err(r) => r,
            Ok(m) => panic!("parsed {m:?}"),
        }
    }

    fn cases() -> u32 {
        let soak = std::env::var("MPREG_SOAK").is_ok_and(|v| v == "1");
        if soak { 50_000 } else { 2_000 }
    }

    /// One real frame of every client role.
    const FRAMES: &[&str] = &[
        r#"{"role":"rpc","u":"r1","cmds":[{"name":"a","fun":"echo","args":[1],"kwargs":{"k":"v"},"locs":["cpu"],"version_constraint":">=1.0.0"}]}"#,
        r#"{"role":"worker-register","u":"w1","functions":[{"name":"add","function_id":"add","version":"1.0.0","resources":["cpu"]}]}"#,
        r#"{"role":"worker-withdraw","u":"w2","functions":[{"name":"add","function_id":"add","version":"1.0.0"}]}"#,
        r#"{"role":"internal-answer","u":"i1","answer":5}"#,
        r#"{"role":"pubsub-publish","u":"p1","message":{"topic":"a.b","payload":{"x":1},"timestamp":1.5,"message_id":"m1","publisher":"me"}}"#,
        r#"{"role":"pubsub-subscribe","u":"s1","subscription":{"subscription_id":"s","patterns":[{"pattern":"a.#","exact_match":false}],"subscriber":"me","created_at":1.0}}"#,
        r#"{"role":"pubsub-unsubscribe","u":"s2","subscription_id":"s"}"#,
        r#"{"role":"queue-subscribe","u":"q1","queue_name":"jobs","prefetch":4}"#,
        r#"{"role":"queue-unsubscribe","u":"q2","subscriber_id":"w"}"#,
        r#"{"role":"cache-request","u":"c1","operation":"put","key":{"namespace":"n","identifier":"i"},"value":{"a":[1,2]},"options":{}}"#,
    ];

    #[test]
    fn every_real_frame_parses() {
        for frame in FRAMES {
            assert!(parse(frame.as_bytes()).is_ok(), "{frame}");
        }
    }

    /// What both ways of parsing made of `bytes`, to compare.
    fn both_ways(bytes: &[u8]) -> (String, String) {
        let shown = |parsed: Result<Inbound, Refused>| match parsed {
            Ok(inbound) => format!("{inbound:?}"),
            Err(refused) => format!("refused u={:?} code={}", refused.u, refused.error.code),
        };
        (shown(parse(bytes)), shown(parse_tree(bytes)))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(cases()))]

        #[test]
        fn random_bytes_are_answered(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            if let Err(refused) = parse(&bytes) {
                proptest::prop_assert!(refused.error.details.is_some());
            }
        }

        #[test]
        fn damaged_real_frames_are_answered(
            pick in 0..FRAMES.len(),
            at in proptest::prelude::any::<usize>(),
            byte in proptest::prelude::any::<u8>(),
            cut in proptest::prelude::any::<bool>(),
        ) {
            let mut frame = FRAMES[pick].as_bytes().to_vec();
            let at = at % frame.len();
            if cut {
                frame.truncate(at);
                // A JSON object cut short is never valid.
                let refused = parse(&frame).unwrap_err();
                proptest::prop_assert_eq!(refused.error.code, ErrorCode::BadRequest.code());
            } else {
                frame[at] = byte;
                if let Err(refused) = parse(&frame) {
                    proptest::prop_assert!(refused.error.details.is_some());
                }
            }
            // The direct parse decides as the tree would: the same
            // message, or a refusal with the same code and u.
            let (direct, tree) = both_ways(&frame);
            proptest::prop_assert_eq!(direct, tree);
        }
    }

    #[test]
    fn minimal_and_full_rpc_parse() {
        let Inbound::Rpc(req) =
            parse(br#"{"role":"rpc","u":"t1","cmds":[{"name":"x","fun":"echo","args":[5]}]}"#)
                .unwrap()
        else {
            panic!("not rpc")
        };
        assert_eq!(req.cmds[0].args, vec![Value::from(5)]);
        let full = br#"{"role":"rpc","u":"u","cmds":[{"name":"s1","fun":"add","args":[1,2],"kwargs":{},"locs":[],
            "function_id":null,"version_constraint":null,"target_cluster":null,"routing_topic":null}],
            "return_intermediate_results":false,"include_execution_summary":false,"debug_mode":false,
            "intermediate_result_callback_topic":null,"headers":{}}"#;
        assert!(matches!(parse(full).unwrap(), Inbound::Rpc(_)));
    }

    #[test]
    fn malformed_frames_name_the_problem() {
        assert!(
            refused(b"not json")
                .error
                .details
                .unwrap()
                .contains("not valid JSON")
        );
        assert!(
            refused(b"[1]")
                .error
                .details
                .unwrap()
                .contains("JSON object")
        );
        assert!(
            refused(br#"{"role":"rpc"}"#)
                .error
                .details
                .unwrap()
                .contains("missing field u")
        );
        let r = refused(br#"{"role":"rpc","u":"a","cmds":"x"}"#);
        assert_eq!(r.u.as_deref(), Some("a"));
        assert!(r.error.details.unwrap().contains("invalid rpc message"));
        let r = refused(br#"{"role":"nope","u":"a"}"#);
        assert_eq!(r.error.code, 1004);
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(refused(deep.as_bytes()).error.code, 1006);
    }
}
