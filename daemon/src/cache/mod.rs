//! The replicated cache: `cache-request` frames in, `cache-response` out.
//!
//! [`Cache`] is the entry type. Writes (put, delete, invalidate, atomic
//! operations, namespace clear) are events, answered once committed and
//! fsynced; atomic operations are decided inside apply. Reads never touch
//! the log: they come from the memory tier ([`tier`], S4LRU under a byte
//! budget) or from the RocksDB view, and never return an entry past its
//! expiry time. `consistency_level: "strong"` first waits for the raft read
//! index. A write with `notify_on_change` is published on pub/sub after it
//! commits. A request for a namespace another cluster holds runs there
//! ([`federated`]).

mod federated;
mod tier;

pub use federated::namespace_of;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mpreg_client::protocol::{CacheRequest, ErrorCode, PubSubMessage, WireKey};
use mpreg_storage::event::{AtomicOp, BULK_STEP_ROWS, CacheKey};
use mpreg_storage::views::{CacheRow, View};
use mpreg_storage::{EventKind, Outcome};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::clock::{now_ms, now_secs};
use crate::cluster::Node;
use crate::config::CacheLimits;
use crate::federation::Federation;
use crate::metrics::CacheMetrics;
use crate::pubsub::PubSub;
use crate::refusal::{Refusal, committed, unexpected};
use crate::topic::{check_pattern, check_topic};
use tier::Tier;

/// The stored key a client's key names.
fn cache_key(key: &WireKey) -> CacheKey {
    CacheKey {
        namespace: key.namespace.clone(),
        identifier: key.identifier.clone(),
        version: key.version.clone().unwrap_or_default(),
    }
}

type CacheResult<T> = Result<T, Refusal>;

/// The cache of a node.
pub struct Cache {
    node: Arc<Node>,
    pubsub: Arc<PubSub>,
    /// Carries requests for namespaces other clusters hold.
    federation: Arc<Federation>,
    tier: Mutex<Tier>,
    limits: CacheLimits,
    metrics: CacheMetrics,
    /// Evictions already counted in the metrics.
    evictions_counted: Mutex<u64>,
}

fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// A `cache-response`. A hit and a committed single-key write are
/// written straight from what they found or committed, with no JSON tree
/// built per request (the hot paths); every other answer is a tree.
pub enum CacheReply {
    Tree(Value),
    Hit { u: String, found: Found },
    Written { u: String, written: Written },
}

/// What a committed single-key write (put, delete, atomic) answers.
pub struct Written {
    operation: &'static str,
    changed: bool,
    /// The key's value after the write, as the JSON it was stored as.
    value: Option<Box<RawValue>>,
    revision: u64,
}

/// A live entry a get found, and the time it was found live at.
pub struct Found {
    row: Arc<CacheRow>,
    access_count: u64,
    level: &'static str,
    now: u64,
}

impl Serialize for CacheReply {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            CacheReply::Tree(value) => value.serialize(serializer),
            CacheReply::Hit { u, found } => HitFrame {
                role: "cache-response",
                u,
                operation: "get",
                success: true,
                status: "hit",
                cache_level: found.level,
                entry: Entry::of(found),
            }
            .serialize(serializer),
            CacheReply::Written { u, written } => WrittenFrame {
                role: "cache-response",
                u,
                operation: written.operation,
                success: true,
                status: if written.changed { "ok" } else { "unchanged" },
                changed: written.changed,
                value: written.value.as_deref(),
                revision: written.revision,
            }
            .serialize(serializer),
        }
    }
}

#[derive(Serialize)]
struct WrittenFrame<'a> {
    role: &'static str,
    u: &'a str,
    operation: &'static str,
    success: bool,
    status: &'static str,
    changed: bool,
    value: Option<&'a RawValue>,
    revision: u64,
}

#[derive(Serialize)]
struct HitFrame<'a> {
    role: &'static str,
    u: &'a str,
    operation: &'static str,
    success: bool,
    status: &'static str,
    cache_level: &'static str,
    entry: Entry<'a>,
}

/// The `entry` object of a reply.
#[derive(Serialize)]
struct Entry<'a> {
    key: EntryKey<'a>,
    value: Value,
    metadata: Value,
    creation_time: f64,
    last_update_time: f64,
    expires_at: Option<f64>,
    ttl_seconds: Option<f64>,
    size_bytes: usize,
    revision: u64,
    access_count: u64,
}

#[derive(Serialize)]
struct EntryKey<'a> {
    namespace: &'a str,
    identifier: &'a str,
    version: Option<&'a str>,
    tags: &'a [String],
}

impl<'a> Entry<'a> {
    fn of(found: &'a Found) -> Entry<'a> {
        let Found {
            row,
            access_count,
            now,
            ..
        } = found;
        Entry {
            key: EntryKey {
                namespace: &row.key.namespace,
                identifier: &row.key.identifier,
                version: (!row.key.version.is_empty()).then_some(row.key.version.as_str()),
                tags: &row.tags,
            },
            value: serde_json::from_str(&row.value).unwrap_or(Value::Null),
            metadata: serde_json::from_str(&row.metadata).unwrap_or(Value::Null),
            creation_time: seconds(row.created_at_ms),
            last_update_time: seconds(row.updated_at_ms),
            expires_at: row.expires_at_ms.map(seconds),
            ttl_seconds: row.expires_at_ms.map(|at| seconds(at.saturating_sub(*now))),
            size_bytes: row.size_bytes(),
            revision: row.revision,
            access_count: *access_count,
        }
    }
}

/// What an operation answered, before the reply's envelope.
enum Answer {
    Tree(Value),
    Hit(Found),
    Written(Written),
}

fn number(map: &Map<String, Value>, name: &str) -> CacheResult<Option<f64>> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(n) if n.is_finite() && n >= 0.0 => Ok(Some(n)),
            _ => Err(Refusal::invalid(format!(
                "{name} must be a number >= 0, got {v}"
            ))),
        },
    }
}

/// A TTL in whole milliseconds from a `ttl_seconds` field.
fn ttl_ms(map: &Map<String, Value>) -> CacheResult<Option<u64>> {
    Ok(number(map, "ttl_seconds")?.map(|s| Duration::from_secs_f64(s.min(1e9)).as_millis() as u64))
}

impl Cache {
    pub fn new(
        node: Arc<Node>,
        pubsub: Arc<PubSub>,
        federation: Arc<Federation>,
        limits: CacheLimits,
        metrics: CacheMetrics,
    ) -> Self {
        Cache {
            federation,
            tier: Mutex::new(Tier::new(limits.memory_bytes)),
            node,
            pubsub,
            limits,
            metrics,
            evictions_counted: Mutex::new(0),
        }
    }

    /// The memory tier, without the rows apply changed since it was last
    /// locked: a write through any node drops this node's copy.
    fn locked_tier(&self) -> std::sync::MutexGuard<'_, Tier> {
        let mut tier = self.tier.lock().unwrap_or_else(|e| e.into_inner());
        let changes = self.node.views().take_cache_changes();
        if changes.everything {
            tier.clear();
        }
        for key in &changes.keys {
            tier.remove(key);
        }
        tier
    }

    /// Answers one `cache-request`, here or in the cluster that holds its
    /// namespace ([`federated`]); failures are in the reply.
    pub async fn handle(&self, request: CacheRequest) -> CacheReply {
        let elsewhere = match self.owner(&request) {
            // Boxed, as are the other rare branches below: a spawned task
            // is as large as its largest await, and every `get` pays to
            // move it.
            Ok(Some(cluster)) => Box::pin(self.forward(&cluster, &request)).await,
            Ok(None) => return self.handle_here(request).await,
            Err(refusal) => Err(refusal),
        };
        match elsewhere {
            Ok(mut reply) => {
                reply["u"] = json!(request.u);
                CacheReply::Tree(reply)
            }
            Err(refusal) => Self::refused(&request, refusal),
        }
    }

    /// Answers one `cache-request` on this cluster's cache.
    async fn handle_here(&self, request: CacheRequest) -> CacheReply {
        let answer = self.answer(&request).await;
        let reply = Self::reply(&request, answer);
        self.count_evictions();
        reply
    }

    /// The `cache-response` refusing `request`.
    pub fn refused(request: &CacheRequest, refusal: Refusal) -> CacheReply {
        Self::reply(request, Err(refusal))
    }

    /// The `cache-response` to `request`.
    fn reply(request: &CacheRequest, answer: CacheResult<Answer>) -> CacheReply {
        let u = request.u.clone();
        let mut reply = match answer {
            Ok(Answer::Tree(reply)) => reply,
            Ok(Answer::Hit(found)) => return CacheReply::Hit { u, found },
            Ok(Answer::Written(written)) => return CacheReply::Written { u, written },
            Err(refusal) => {
                let mut reply = refusal.to_value();
                reply["status"] = json!("error");
                reply["error"] = json!(refusal.message);
                reply
            }
        };
        reply["role"] = json!("cache-response");
        reply["u"] = json!(u);
        reply["operation"] = json!(request.operation);
        CacheReply::Tree(reply)
    }

    async fn answer(&self, request: &CacheRequest) -> CacheResult<Answer> {
        match request.operation.as_str() {
            "get" => self.get(request).await,
            "put" => Box::pin(self.put(request)).await.map(Answer::Written),
            "delete" => Box::pin(self.delete(request)).await.map(Answer::Written),
            "invalidate" => Box::pin(self.invalidate(request)).await.map(Answer::Tree),
            "atomic" => Box::pin(self.atomic(request)).await.map(Answer::Written),
            "namespace" => Box::pin(self.namespace(request)).await.map(Answer::Tree),
            other => Err(Refusal::invalid(format!(
                "unknown cache operation {other}; one of get, put, delete, invalidate, atomic, namespace"
            ))),
        }
    }

    fn key(request: &CacheRequest) -> CacheResult<CacheKey> {
        let key = cache_key(
            request
                .key
                .as_ref()
                .ok_or_else(|| Refusal::invalid(format!("{} needs a key", request.operation)))?,
        );
        if key.namespace.is_empty() || key.identifier.is_empty() {
            return Err(Refusal::invalid(
                "key.namespace and key.identifier must not be empty",
            ));
        }
        Ok(key)
    }

    /// A value as stored: JSON text within the size limit.
    fn encode(&self, what: &str, value: &Value) -> CacheResult<String> {
        let text = value.to_string();
        if text.len() > self.limits.max_value_bytes {
            return Err(Refusal::invalid(format!(
                "{what} is {} bytes; the limit (cache_max_value_bytes) is {}",
                text.len(),
                self.limits.max_value_bytes
            )));
        }
        Ok(text)
    }

    async fn propose(&self, kind: EventKind) -> CacheResult<Outcome> {
        committed(self.node.propose(kind).await)
    }

    /// The live entry of `key`: from memory, else from the view (then kept
    /// in memory unless a write committed meanwhile). `None` when absent or
    /// expired.
    async fn lookup(&self, key: &CacheKey) -> CacheResult<Option<Found>> {
        let row_key = CacheRow::key(key);
        let now = self.node.event_now();
        {
            let mut tier = self.locked_tier();
            if let Some(hit) = tier.get(&row_key) {
                if hit.row.is_live(now) {
                    return Ok(Some(Found {
                        row: hit.row,
                        access_count: hit.hits,
                        level: "L1",
                        now,
                    }));
                }
                tier.remove(&row_key);
                return Ok(None);
            }
        }
        let generation = self.node.views().cache_generation();
        let stored: Option<CacheRow> = Box::pin(
            self.node
                .inspector()
                .get_blocking(View::CacheEntries, row_key.clone()),
        )
        .await
        .map_err(|e| Refusal::new(ErrorCode::Unavailable, e.to_string()))?;
        let Some(row) = stored.filter(|row| row.is_live(now)) else {
            return Ok(None);
        };
        let row = Arc::new(row);
        let mut tier = self.locked_tier();
        if self.node.views().cache_generation() == generation {
            tier.insert(row_key, row.clone());
        }
        Ok(Some(Found {
            row,
            access_count: 1,
            level: "L2",
            now,
        }))
    }

    async fn get(&self, request: &CacheRequest) -> CacheResult<Answer> {
        let key = Self::key(request)?;
        if request.options.get("consistency_level") == Some(&json!("strong")) {
            Box::pin(self.node.read_barrier())
                .await
                .map_err(|e| Refusal::new(ErrorCode::Unavailable, e.to_string()))?;
        }
        match self.lookup(&key).await? {
            Some(found) => {
                self.metrics.hits.with_label_values(&[found.level]).inc();
                Ok(Answer::Hit(found))
            }
            None => {
                self.metrics.misses.inc();
                Ok(Answer::Tree(
                    json!({"success": true, "status": "miss", "cache_level": null, "entry": null}),
                ))
            }
        }
    }

    /// Drops the memory copy of `key` after a committed write.
    fn forget(&self, key: &CacheKey) {
        self.tier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&CacheRow::key(key));
    }

    /// Publishes the change of `key` when the request asks for it.
    /// The topic a write's change notification goes to, if it asks for one;
    /// checked before the write so a bad topic refuses the request.
    fn notification_topic(request: &CacheRequest, key: &CacheKey) -> CacheResult<Option<String>> {
        let options = &request.options;
        if options.get("notify_on_change") != Some(&json!(true)) {
            return Ok(None);
        }
        let topic = match options.get("notification_topic") {
            None | Some(Value::Null) => {
                format!("mpreg.cache.{}.{}", key.namespace, request.operation)
            }
            Some(Value::String(topic)) => topic.clone(),
            Some(other) => {
                return Err(Refusal::invalid(format!(
                    "notification_topic must be a string, got {other}"
                )));
            }
        };
        check_topic(&topic).map_err(Refusal::invalid)?;
        Ok(Some(topic))
    }

    /// Publishes a committed change on `topic`.
    async fn notify(
        &self,
        topic: String,
        request: &CacheRequest,
        key: &CacheKey,
        change: &str,
        value: Option<&str>,
    ) {
        let options = &request.options;
        let payload = json!({
            "change_type": change,
            "cache_key": {"namespace": key.namespace, "identifier": key.identifier,
                          "version": (!key.version.is_empty()).then_some(&key.version)},
            "new_value": value.and_then(|v| serde_json::from_str::<Value>(v).ok()),
            "notification_payload": options.get("notification_payload"),
        });
        let message = PubSubMessage {
            topic,
            payload,
            timestamp: now_secs(),
            message_id: format!("cache-{}-{}", key.identifier, now_ms()),
            publisher: self.node.identity().node_id.clone(),
            headers: Map::new(),
            routing_path: None,
            current_hop: None,
        };
        if let Err(e) = self.pubsub.publish(&message).await {
            tracing::warn!(topic = %message.topic, error = %e, "cache change notification not published");
        }
    }

    /// The reply to a committed single-key write.
    async fn written(
        &self,
        operation: &'static str,
        request: &CacheRequest,
        key: &CacheKey,
        topic: Option<String>,
        outcome: Outcome,
    ) -> CacheResult<Written> {
        self.forget(key);
        let Outcome::Cache {
            changed,
            value,
            revision,
        } = outcome
        else {
            return Err(unexpected(&outcome));
        };
        if let (true, Some(topic)) = (changed, topic) {
            let kind = if value.is_some() {
                "updated"
            } else {
                "deleted"
            };
            self.notify(topic, request, key, kind, value.as_deref())
                .await;
        }
        Ok(Written {
            operation,
            changed,
            value: value.and_then(|v| RawValue::from_string(v).ok()),
            revision,
        })
    }

    async fn put(&self, request: &CacheRequest) -> CacheResult<Written> {
        let key = Self::key(request)?;
        let topic = Self::notification_topic(request, &key)?;
        let value = request
            .value
            .as_ref()
            .ok_or_else(|| Refusal::invalid("put needs a value"))?;
        let value = self.encode("value", value)?;
        let ttl = match ttl_ms(&request.metadata)? {
            Some(ttl) => Some(ttl),
            None => ttl_ms(&request.options)?,
        };
        let tags = request
            .key
            .as_ref()
            .map(|k| k.tags.clone())
            .unwrap_or_default();
        let metadata = self.encode("metadata", &Value::Object(request.metadata.clone()))?;
        let outcome = self
            .propose(EventKind::CachePut {
                key: key.clone(),
                value,
                tags,
                metadata,
                ttl_ms: ttl,
            })
            .await?;
        self.metrics.writes.with_label_values(&["put"]).inc();
        self.written("put", request, &key, topic, outcome).await
    }

    async fn delete(&self, request: &CacheRequest) -> CacheResult<Written> {
        let key = Self::key(request)?;
        let topic = Self::notification_topic(request, &key)?;
        let outcome = self
            .propose(EventKind::CacheDeleted { key: key.clone() })
            .await?;
        self.metrics.writes.with_label_values(&["delete"]).inc();
        self.written("delete", request, &key, topic, outcome).await
    }

    async fn remove_matching(&self, namespace: &str, pattern: Option<&str>) -> CacheResult<Value> {
        if namespace.is_empty() {
            return Err(Refusal::invalid("invalidate needs a namespace"));
        }
        if let Some(p) = pattern {
            check_pattern(p).map_err(Refusal::invalid)?;
        }
        let first = EventKind::CacheInvalidateStep {
            namespace: namespace.to_string(),
            pattern: pattern.map(str::to_string),
            from: Vec::new(),
            limit: BULK_STEP_ROWS,
        };
        let outcome = committed(self.node.propose_steps(first).await)?;
        self.tier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove_prefix(&CacheRow::namespace_prefix(namespace));
        self.metrics.writes.with_label_values(&["invalidate"]).inc();
        let Outcome::Stepped {
            removed: entries, ..
        } = outcome
        else {
            return Err(unexpected(&outcome));
        };
        Ok(json!({"success": true, "status": "ok", "invalidated": entries}))
    }

    async fn invalidate(&self, request: &CacheRequest) -> CacheResult<Value> {
        let namespace = match (&request.namespace, &request.key) {
            (Some(ns), _) => ns.clone(),
            (None, Some(key)) => key.namespace.clone(),
            (None, None) => return Err(Refusal::invalid("invalidate needs a namespace")),
        };
        self.remove_matching(&namespace, request.pattern.as_deref())
            .await
    }

    async fn namespace(&self, request: &CacheRequest) -> CacheResult<Value> {
        let op = request
            .namespace_operation
            .as_ref()
            .ok_or_else(|| Refusal::invalid("namespace needs a namespace_operation"))?;
        let field = |name: &str| op.get(name).and_then(Value::as_str);
        match field("operation_type") {
            Some("clear") => {
                let namespace = field("namespace")
                    .ok_or_else(|| Refusal::invalid("namespace_operation.namespace is required"))?;
                self.remove_matching(namespace, field("pattern")).await
            }
            other => Err(Refusal::invalid(format!(
                "namespace operation_type must be clear, not {other:?}"
            ))),
        }
    }

    fn atomic_op(&self, op: &Map<String, Value>) -> CacheResult<AtomicOp> {
        let ttl = ttl_ms(op)?;
        let json_field = |name: &str| -> CacheResult<String> {
            self.encode(name, op.get(name).unwrap_or(&Value::Null))
        };
        let kind = op
            .get("operation_type")
            .and_then(Value::as_str)
            .ok_or_else(|| Refusal::invalid("atomic_operation.operation_type is required"))?;
        Ok(match kind {
            "test_and_set" | "compare_and_swap" => {
                let if_not_exists = op
                    .get("conditions")
                    .and_then(|c| c.get("if_not_exists"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let expected = match op.get("expected_value") {
                    _ if if_not_exists => None,
                    None | Some(Value::Null) => None,
                    Some(v) => Some(self.encode("expected_value", v)?),
                };
                AtomicOp::CompareAndSwap {
                    expected,
                    new_value: json_field("new_value")?,
                    ttl_ms: ttl,
                }
            }
            "increment" | "decrement" => {
                let by = match op.get("increment_by") {
                    None | Some(Value::Null) => json!(1),
                    Some(v) if v.is_number() => v.clone(),
                    Some(v) => {
                        return Err(Refusal::invalid(format!(
                            "increment_by must be a number, got {v}"
                        )));
                    }
                };
                let by = if kind == "decrement" {
                    match by.as_i64() {
                        Some(i) => json!(i.checked_neg().unwrap_or(i64::MAX)),
                        None => json!(-by.as_f64().unwrap_or(0.0)),
                    }
                } else {
                    by
                };
                let initial = match op.get("initial_value") {
                    None | Some(Value::Null) => json!(0),
                    Some(v) if v.is_number() => v.clone(),
                    Some(v) => {
                        return Err(Refusal::invalid(format!(
                            "initial_value must be a number, got {v}"
                        )));
                    }
                };
                AtomicOp::Increment {
                    by: by.to_string(),
                    initial: initial.to_string(),
                    ttl_ms: ttl,
                }
            }
            "append" | "prepend" => AtomicOp::Append {
                value: json_field("new_value")?,
                prepend: kind == "prepend",
                ttl_ms: ttl,
            },
            "extend_ttl" => AtomicOp::ExtendTtl {
                ttl_ms: ttl.ok_or_else(|| Refusal::invalid("extend_ttl needs ttl_seconds"))?,
            },
            other => {
                return Err(Refusal::invalid(format!(
                    "unknown atomic operation_type {other}; one of test_and_set, compare_and_swap, increment, decrement, append, prepend, extend_ttl"
                )));
            }
        })
    }

    async fn atomic(&self, request: &CacheRequest) -> CacheResult<Written> {
        let key = Self::key(request)?;
        let topic = Self::notification_topic(request, &key)?;
        let op = request
            .atomic_operation
            .as_ref()
            .ok_or_else(|| Refusal::invalid("atomic needs an atomic_operation"))?;
        let operation = self.atomic_op(op)?;
        let outcome = self
            .propose(EventKind::CacheAtomic {
                key: key.clone(),
                operation,
            })
            .await?;
        self.metrics.writes.with_label_values(&["atomic"]).inc();
        self.written("atomic", request, &key, topic, outcome).await
    }

    /// Moves new tier evictions into the eviction counter.
    fn count_evictions(&self) {
        let (evictions, bytes, entries) = {
            let tier = self.tier.lock().unwrap_or_else(|e| e.into_inner());
            (tier.evictions(), tier.bytes(), tier.len())
        };
        let mut counted = self
            .evictions_counted
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.metrics.evictions.inc_by(evictions - *counted);
        *counted = evictions;
        self.metrics.memory_bytes.set(bytes as i64);
        self.metrics.memory_entries.set(entries as i64);
    }

    /// Hits of an entry while in memory, and whether it is in memory
    /// (for SQL `cache_entries.hits` / `tier`).
    pub fn memory_hits(&self, key: &CacheKey) -> Option<u64> {
        self.tier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .hits(&CacheRow::key(key))
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn requests_parse_with_upstream_fields() {
        let request: CacheRequest = serde_json::from_value(json!({
            "role": "cache-request", "u": "c1", "operation": "put",
            "key": {"namespace": "compute.results", "identifier": "sha256:abc", "version": "v1", "tags": ["ml"]},
            "value": null,
            "metadata": {"ttl_seconds": 7.5, "computation_cost_ms": 5000.0},
        }))
        .unwrap();
        assert_eq!(request.value, Some(Value::Null), "a null value is present");
        assert_eq!(ttl_ms(&request.metadata).unwrap(), Some(7500));
        assert_eq!(cache_key(&request.key.unwrap()).version, "v1");
        let missing: CacheRequest =
            serde_json::from_value(json!({"u": "c2", "operation": "put"})).unwrap();
        assert_eq!(missing.value, None);
    }

    /// A hit is written from its row with the fields and values upstream
    /// clients read (key order aside).
    #[test]
    fn a_hit_is_the_upstream_cache_response() {
        let row = |version: &str, expires_at_ms| {
            Arc::new(CacheRow {
                key: CacheKey {
                    namespace: "users".into(),
                    identifier: "u1".into(),
                    version: version.into(),
                },
                value: r#"{"name":"ada"}"#.into(),
                tags: vec!["people".into()],
                metadata: r#"{"dependencies":["input:1"]}"#.into(),
                created_at_ms: 1_000,
                updated_at_ms: 2_500,
                expires_at_ms,
                revision: 3,
            })
        };
        let hit = |row| CacheReply::Hit {
            u: "c7".into(),
            found: Found {
                row,
                access_count: 4,
                level: "L1",
                now: 4_000,
            },
        };
        let written = serde_json::to_value(hit(row("v2", Some(10_000)))).unwrap();
        assert_eq!(
            written,
            json!({
                "role": "cache-response", "u": "c7", "operation": "get",
                "success": true, "status": "hit", "cache_level": "L1",
                "entry": {
                    "key": {"namespace": "users", "identifier": "u1", "version": "v2", "tags": ["people"]},
                    "value": {"name": "ada"},
                    "metadata": {"dependencies": ["input:1"]},
                    "creation_time": 1.0, "last_update_time": 2.5,
                    "expires_at": 10.0, "ttl_seconds": 6.0,
                    "size_bytes": 14, "revision": 3, "access_count": 4,
                },
            })
        );
        let unversioned = serde_json::to_value(hit(row("", None))).unwrap();
        assert_eq!(unversioned["entry"]["key"]["version"], Value::Null);
        assert_eq!(unversioned["entry"]["expires_at"], Value::Null);
        assert_eq!(unversioned["entry"]["ttl_seconds"], Value::Null);
    }
}
