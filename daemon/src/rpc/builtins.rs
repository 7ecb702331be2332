//! Functions every node serves itself: `echo`, `echos`, `ping`,
//! `list_peers`, `cluster_map`, `catalog_query` (upstream MPREG shapes,
//! over the members of this cluster).

use serde_json::{Map, Value, json};

use crate::clock::now_secs;
use crate::cluster::Node;

/// Provider id of built-in functions in the `functions` view.
pub const PROVIDER: &str = mpreg_storage::views::BUILTIN_PROVIDER;
/// Version every built-in is registered with.
pub const VERSION: &str = "1.0.0";
/// Names of the built-ins.
pub const NAMES: [&str; 6] = [
    "echo",
    "echos",
    "ping",
    "list_peers",
    "cluster_map",
    "catalog_query",
];

/// Whether a call of `name` reaches a built-in: one of [`NAMES`] or the
/// queue functions, bare or under a prefix callers may put in front
/// (`app.`, `mpreg.system.`). A worker may not register such a name: it
/// would replace or shadow the built-in.
pub fn is_reserved(name: &str) -> bool {
    spellings(name)
        .iter()
        .any(|n| NAMES.contains(n) || crate::queue::FUNCTIONS.contains(n))
}

/// Whether a call of `name` reaches one of the queue functions (bare or
/// under a prefix).
pub fn is_queue_function(name: &str) -> bool {
    spellings(name)
        .iter()
        .any(|n| crate::queue::FUNCTIONS.contains(n))
}

/// `name` as called and without the prefix callers may put in front.
fn spellings(name: &str) -> [&str; 2] {
    let bare = super::select::NAME_PREFIXES
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name);
    [name, bare]
}

/// Runs built-in `name`; `Err` is the failure text sent to the client.
pub fn call(
    node: &Node,
    name: &str,
    args: &[Value],
    kwargs: &Map<String, Value>,
) -> Result<Value, String> {
    match name {
        "echo" => match args {
            [one] => Ok(one.clone()),
            _ => Err(format!(
                "echo takes exactly one argument, got {}",
                args.len()
            )),
        },
        "echos" => Ok(Value::Array(args.to_vec())),
        "ping" => Ok(json!({"pong": true, "node_id": node.identity().node_id})),
        "list_peers" => Ok(list_peers(node)),
        "cluster_map" => Ok(cluster_map(node)),
        "catalog_query" => {
            catalog_query(node, args.first().or(Some(&Value::Object(kwargs.clone()))))
        }
        other => Err(format!("no built-in function {other}")),
    }
}

/// The other members of the cluster, with the functions their workers
/// serve and their resources.
fn list_peers(node: &Node) -> Value {
    let me = &node.identity().node_id;
    // Before the catalog read: `members` reads the catalog too.
    let members = crate::cluster::membership::members(node);
    let catalog = node.views().catalog();
    let peers: Vec<Value> = members
        .into_iter()
        .filter_map(|member| {
            let node_id = member.node_id.filter(|id| id != me)?;
            let row = catalog.node(&node_id);
            let funs: std::collections::BTreeSet<&str> = catalog
                .functions()
                .filter(|f| f.node_id == node_id && f.provider != PROVIDER)
                .map(|f| f.name.as_str())
                .collect();
            Some(json!({
                "url": member.addr,
                "node_id": node_id,
                "cluster_id": row.map(|r| r.cluster_id.as_str()),
                "funs": funs,
                "locs": row.map(|r| r.resources.clone()).unwrap_or_default(),
                "last_seen": row.map(|r| r.joined_at_ms as f64 / 1000.0),
                "role": member.role,
            }))
        })
        .collect();
    Value::Array(peers)
}

fn cluster_map(node: &Node) -> Value {
    let catalog = node.views().catalog();
    let nodes: Vec<Value> = catalog
        .nodes()
        .filter(|n| n.status == mpreg_storage::views::NodeStatus::Up)
        .map(|n| {
            json!({
                "node_id": n.node_id,
                "cluster_id": n.cluster_id,
                "resources": n.resources,
                "advertised_urls": n.addresses,
                "advertised_at": n.joined_at_ms as f64 / 1000.0,
            })
        })
        .collect();
    json!({"cluster_id": node.identity().cluster_id, "generated_at": now_secs(), "nodes": nodes})
}

fn catalog_query(node: &Node, payload: Option<&Value>) -> Result<Value, String> {
    let empty = Map::new();
    let query = payload.and_then(Value::as_object).unwrap_or(&empty);
    let field = |k: &str| query.get(k).and_then(Value::as_str);
    let entry_type = field("entry_type").unwrap_or("functions");
    let catalog = node.views().catalog();
    let items: Vec<Value> = match entry_type {
        "functions" | "function" => catalog
            .functions()
            .filter(|f| field("function_name").is_none_or(|n| n == f.name))
            .filter(|f| field("function_id").is_none_or(|n| n == f.function_id))
            .filter(|f| field("node_id").is_none_or(|n| n == f.node_id))
            .map(|f| {
                json!({
                    "identity": {"name": f.name, "function_id": f.function_id, "version": f.version},
                    "resources": f.resources,
                    "node_id": f.node_id,
                    "cluster_id": f.cluster_id,
                    "provider": f.provider,
                    "advertised_at": f.registered_at_ms as f64 / 1000.0,
                })
            })
            .collect(),
        "nodes" | "node" => catalog
            .nodes()
            .filter(|n| field("node_id").is_none_or(|id| id == n.node_id))
            .map(|n| {
                json!({
                    "node_id": n.node_id,
                    "cluster_id": n.cluster_id,
                    "resources": n.resources,
                    "advertised_urls": n.addresses,
                    "status": n.status.as_str(),
                })
            })
            .collect(),
        "subscriptions" | "subscription" => catalog
            .subscriptions()
            .filter(|s| field("node_id").is_none_or(|id| id == s.node_id))
            .map(|s| {
                json!({
                    "subscription_id": s.subscription_id,
                    "patterns": s.patterns,
                    "subscriber": s.subscriber,
                    "node_id": s.node_id,
                    "durable": s.durable,
                    "created_at": s.created_at_ms as f64 / 1000.0,
                })
            })
            .collect(),
        other => {
            return Err(format!(
                "catalog_query: unknown entry_type {other:?} (functions, nodes, subscriptions)"
            ));
        }
    };
    Ok(json!({"entry_type": entry_type, "generated_at": now_secs(), "items": items}))
}
