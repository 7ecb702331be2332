//! Dependency resolution of a multi-command request (MPREG semantics).
//!
//! A string anywhere in a command's `args` or `kwargs` values (searched
//! through lists and object values) that equals another command's name is a
//! reference to that command's result; `"name.field.sub"` references `name`
//! and walks into its result. Commands run in levels: level k holds the
//! commands whose references all point to levels before k. Duplicate names,
//! self references and cycles are refused before anything runs.

use std::collections::{BTreeSet, HashMap};

use mpreg_client::protocol::{ErrorCode, RpcCommand, RpcError};
use serde_json::Value;

/// Command indexes grouped into levels that run one after another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub levels: Vec<Vec<usize>>,
}

/// The command a string refers to, if any (`index` looks a name up):
/// exact name first, then the part before the first dot.
fn referenced(s: &str, index: &impl Fn(&str) -> Option<usize>) -> Option<usize> {
    index(s).or_else(|| s.split_once('.').and_then(|(base, _)| index(base)))
}

fn collect_refs(value: &Value, index: &impl Fn(&str) -> Option<usize>, out: &mut BTreeSet<usize>) {
    match value {
        Value::String(s) => {
            if let Some(i) = referenced(s, index) {
                out.insert(i);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, index, out)),
        Value::Object(map) => map.values().for_each(|v| collect_refs(v, index, out)),
        _ => {}
    }
}

/// The commands `cmd` references (by `index`).
fn references(cmd: &RpcCommand, index: &impl Fn(&str) -> Option<usize>) -> BTreeSet<usize> {
    let mut refs = BTreeSet::new();
    cmd.args
        .iter()
        .for_each(|v| collect_refs(v, index, &mut refs));
    cmd.kwargs
        .values()
        .for_each(|v| collect_refs(v, index, &mut refs));
    refs
}

fn self_reference(cmd: &RpcCommand) -> RpcError {
    RpcError::new(
        ErrorCode::DependencyCycle,
        format!("command {:?} references its own result", cmd.name),
    )
}

/// Orders the commands into levels, or explains why they cannot run.
pub fn plan(cmds: &[RpcCommand]) -> Result<Plan, RpcError> {
    if cmds.is_empty() {
        return Err(RpcError::new(ErrorCode::BadRequest, "cmds is empty"));
    }
    if let [only] = cmds {
        // The one command of most requests can reference only itself.
        let itself = |s: &str| (s == only.name).then_some(0);
        if !references(only, &itself).is_empty() {
            return Err(self_reference(only));
        }
        return Ok(Plan {
            levels: vec![vec![0]],
        });
    }
    let mut names = HashMap::with_capacity(cmds.len());
    for (i, cmd) in cmds.iter().enumerate() {
        if names.insert(cmd.name.as_str(), i).is_some() {
            return Err(RpcError::new(
                ErrorCode::BadRequest,
                format!("duplicate command name {:?}", cmd.name),
            ));
        }
    }
    let mut deps: Vec<BTreeSet<usize>> = Vec::with_capacity(cmds.len());
    let index = |s: &str| names.get(s).copied();
    for (i, cmd) in cmds.iter().enumerate() {
        let refs = references(cmd, &index);
        if refs.contains(&i) {
            return Err(self_reference(cmd));
        }
        deps.push(refs);
    }
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); cmds.len()];
    let mut waiting: Vec<usize> = deps.iter().map(BTreeSet::len).collect();
    for (i, refs) in deps.iter().enumerate() {
        for &r in refs {
            dependents[r].push(i);
        }
    }
    let mut level: Vec<usize> = (0..cmds.len()).filter(|&i| waiting[i] == 0).collect();
    let mut levels = Vec::new();
    let mut placed = 0;
    while !level.is_empty() {
        placed += level.len();
        let mut next = Vec::new();
        for &i in &level {
            for &d in &dependents[i] {
                waiting[d] -= 1;
                if waiting[d] == 0 {
                    next.push(d);
                }
            }
        }
        next.sort_unstable();
        levels.push(std::mem::replace(&mut level, next));
    }
    if placed < cmds.len() {
        let stuck: Vec<&str> = (0..cmds.len())
            .filter(|&i| waiting[i] > 0)
            .map(|i| cmds[i].name.as_str())
            .collect();
        return Err(RpcError::new(
            ErrorCode::DependencyCycle,
            format!(
                "commands reference each other in a cycle: {}",
                stuck.join(", ")
            ),
        ));
    }
    Ok(Plan { levels })
}

fn walk(mut current: &Value, path: &str) -> Option<Value> {
    for field in path.split('.') {
        current = match current {
            Value::Object(map) => map.get(field)?,
            Value::Array(items) => items.get(field.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current.clone())
}

/// Replaces references in `value` by the results they name. A dotted path
/// that does not exist in the result leaves the string as it is (as
/// upstream MPREG does).
pub fn substitute(value: &Value, results: &HashMap<String, Value>) -> Value {
    match value {
        Value::String(s) => {
            if let Some(result) = results.get(s) {
                return result.clone();
            }
            if let Some(found) = s
                .split_once('.')
                .and_then(|(base, path)| results.get(base).and_then(|r| walk(r, path)))
            {
                return found;
            }
            value.clone()
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| substitute(v, results)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), substitute(v, results)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod test {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn cmd(name: &str, args: Value) -> RpcCommand {
        RpcCommand {
            name: name.into(),
            fun: "echo".into(),
            args: args.as_array().cloned().unwrap_or_default(),
            ..RpcCommand::default()
        }
    }

    #[test]
    fn levels_follow_references() {
        let cmds = vec![
            cmd("s3", json!(["s2", {"deep": ["s1.total"]}])),
            cmd("s1", json!([1])),
            cmd("s2", json!(["s1"])),
            cmd("free", json!([2])),
        ];
        assert_eq!(
            plan(&cmds).unwrap().levels,
            vec![vec![1, 3], vec![2], vec![0]]
        );
    }

    #[test]
    fn kwargs_references_are_dependencies() {
        let mut b = cmd("b", json!([]));
        b.kwargs.insert("x".into(), json!({"y": "a"}));
        assert_eq!(
            plan(&[b, cmd("a", json!([1]))]).unwrap().levels,
            vec![vec![1], vec![0]]
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(plan(&[]).unwrap_err().code, 1006);
        assert_eq!(
            plan(&[cmd("a", json!([])), cmd("a", json!([]))])
                .unwrap_err()
                .code,
            1006
        );
        assert_eq!(plan(&[cmd("a", json!(["a"]))]).unwrap_err().code, 1005);
        let mut dotted = cmd("a", json!([{"x": "b"}]));
        dotted.kwargs.insert("k".into(), json!(["a.field"]));
        assert_eq!(plan(&[dotted]).unwrap_err().code, 1005);
        assert_eq!(
            plan(&[cmd("a", json!(["ab", "b.a", {"a": 1}]))])
                .unwrap()
                .levels,
            vec![vec![0]],
            "strings that only look like the name are no references"
        );
        let err = plan(&[
            cmd("a", json!(["b"])),
            cmd("b", json!(["c.x"])),
            cmd("c", json!(["a"])),
        ])
        .unwrap_err();
        assert_eq!(err.code, 1005);
        assert!(err.details.unwrap().contains("a, b, c"));
    }

    #[test]
    fn substitution_walks_objects_and_keeps_unknown_paths() {
        let results = HashMap::from([("a".to_string(), json!({"x": {"y": [10, 20]}}))]);
        assert_eq!(
            substitute(
                &json!(["a.x.y.1", {"k": "a.x"}, "a.nope", "other"]),
                &results
            ),
            json!([20, {"k": {"y": [10, 20]}}, "a.nope", "other"])
        );
    }

    prop_compose! {
        /// A random DAG: command i may reference only commands < i, then
        /// the command order is shuffled.
        fn dag()(n in 1usize..40)(edges in proptest::collection::vec(proptest::collection::vec(any::<prop::sample::Index>(), 0..4), n), order in Just((0..n).collect::<Vec<_>>()).prop_shuffle()) -> Vec<RpcCommand> {
            let mut cmds: Vec<RpcCommand> = (0..edges.len()).map(|i| {
                let refs: Vec<Value> = if i == 0 { vec![] } else {
                    edges[i].iter().map(|ix| Value::from(format!("c{}", ix.index(i)))).collect()
                };
                cmd(&format!("c{i}"), Value::Array(vec![Value::Array(refs)]))
            }).collect();
            order.iter().map(|&i| std::mem::take(&mut cmds[i])).collect()
        }
    }

    proptest! {
        #[test]
        fn every_dependency_runs_in_an_earlier_level(cmds in dag()) {
            let plan = plan(&cmds).unwrap();
            let mut level_of = HashMap::new();
            for (l, level) in plan.levels.iter().enumerate() {
                for &i in level {
                    prop_assert!(level_of.insert(cmds[i].name.clone(), l).is_none());
                }
            }
            prop_assert_eq!(level_of.len(), cmds.len());
            for c in &cmds {
                for r in c.args[0].as_array().unwrap() {
                    let r = r.as_str().unwrap();
                    prop_assert!(level_of[r] < level_of[&c.name], "{} must run before {}", r, c.name);
                }
            }
            // Levels are as early as possible: each command after level 0
            // depends on something in the level right before it.
            for c in &cmds {
                let l = level_of[&c.name];
                if l > 0 {
                    let max_dep = c.args[0].as_array().unwrap().iter().map(|r| level_of[r.as_str().unwrap()]).max();
                    prop_assert_eq!(max_dep, Some(l - 1));
                }
            }
        }
    }
}
