//! Keeps the layering of `lib.rs` true: reads every source file of this
//! crate, collects the modules it names (`crate::x`, `super::x`), and
//! checks that no module names one in a higher layer and that modules
//! import one another in no cycle.
//!
//! A unit is a top-level module (`rpc`) or a file directly inside a module
//! folder (`cluster::node`). Top-level modules import one another in no
//! cycle, and neither do the files of one folder; a folder's `mod.rs` and
//! its files may name each other (the parent owns its files).
//! Comments and the `#[cfg(test)]` code at the end of a file are not
//! counted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers from the bottom; a module imports only from its layer or below.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "wire",
        &[
            "clock", "config", "envelope", "error", "logging", "refusal", "session", "tls", "topic",
        ],
    ),
    ("metrics", &["metrics"]),
    ("cluster", &["cluster"]),
    (
        "systems",
        &["auth", "cache", "federation", "pubsub", "queue", "rpc"],
    ),
    ("edges", &["admin", "peer_server", "transport"]),
    ("server", &["server"]),
];

/// Files that are not modules of the layering (crate root, binary, tests).
fn skipped(relative: &Path) -> bool {
    let name = relative.to_string_lossy();
    name == "lib.rs" || name == "main.rs" || name.ends_with("_test.rs")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The unit a file belongs to: `a` for `a.rs` and `a/mod.rs`, `a::b` for
/// `a/b.rs` and `a/b/...`.
fn unit_of(relative: &Path) -> String {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.truncate(2);
    parts.join("::")
}

fn top(unit: &str) -> &str {
    unit.split("::").next().unwrap_or(unit)
}

/// The code of a file without comments and its trailing `#[cfg(test)]`
/// module.
fn code(text: &str) -> String {
    let text = text.find("\n#[cfg(test)]").map_or(text, |at| &text[..at]);
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths that follow `prefix` in `text` (`crate::` → `cluster::node`),
/// with braced groups expanded (`crate::a::{b, c::d}` → `a::b`, `a::c::d`).
fn named_after(text: &str, prefix: &str) -> Vec<Vec<String>> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().last();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(ident) {
            continue;
        }
        let head_len = rest
            .find(|c: char| !(ident(c) || c == ':'))
            .unwrap_or(rest.len());
        let head: Vec<String> = rest[..head_len]
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        match rest[head_len..].strip_prefix('{') {
            Some(group) => {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let mut path = head.clone();
                    path.extend(
                        item.split("::")
                            .map(str::trim)
                            .filter(|s| !s.is_empty() && s.chars().all(ident))
                            .map(str::to_string),
                    );
                    out.push(path);
                }
            }
            None if !head.is_empty() => out.push(head),
            None => {}
        }
    }
    out
}

/// Unit → the units it names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let files: Vec<(PathBuf, String)> = files
        .into_iter()
        .filter_map(|path| {
            let relative = path.strip_prefix(&src).expect("under src").to_path_buf();
            (!skipped(&relative)).then(|| {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                (relative, text)
            })
        })
        .collect();
    let units: BTreeSet<String> = files.iter().map(|(r, _)| unit_of(r)).collect();
    let resolve = |path: &[String]| -> Option<String> {
        let first = path.first()?;
        let two = path.get(1).map(|second| format!("{first}::{second}"));
        match two {
            Some(two) if units.contains(&two) => Some(two),
            _ => units.contains(first).then(|| first.clone()),
        }
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (relative, text) in &files {
        let unit = unit_of(relative);
        let code = code(text);
        let mut named: BTreeSet<String> = named_after(&code, "crate::")
            .iter()
            .filter_map(|p| resolve(p))
            .collect();
        if let Some(parent) = unit.split_once("::").map(|(p, _)| p.to_string()) {
            for path in named_after(&code, "super::") {
                let mut full = vec![parent.clone()];
                full.extend(path);
                named.extend(resolve(&full));
            }
        }
        named.remove(&unit);
        graph.entry(unit).or_default().extend(named);
    }
    graph
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

#[test]
fn every_module_has_a_layer() {
    let missing: Vec<String> = graph()
        .keys()
        .filter(|unit| layer_of(top(unit)).is_none())
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a layer in layering_test.rs (and lib.rs's layout): {missing:?}"
    );
}

#[test]
fn no_module_imports_a_higher_layer() {
    let mut upward = Vec::new();
    for (unit, named) in graph() {
        let Some(own) = layer_of(top(&unit)) else {
            continue;
        };
        for other in named {
            if let Some(theirs) = layer_of(top(&other)).filter(|&theirs| theirs > own) {
                upward.push(format!(
                    "{unit} ({}) imports {other} ({})",
                    LAYERS[own].0, LAYERS[theirs].0
                ));
            }
        }
    }
    assert!(upward.is_empty(), "imports upward:\n{}", upward.join("\n"));
}

/// The first cycle of `graph`, if any (depth-first search).
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        unit: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|u| u == unit) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(unit.to_string());
            return Some(cycle);
        }
        if done.contains(unit) {
            return None;
        }
        stack.push(unit.to_string());
        for next in graph.get(unit).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(unit.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|unit| visit(unit, graph, &mut Vec::new(), &mut done))
}

#[test]
fn top_level_modules_import_one_another_in_no_cycle() {
    let mut modules: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (unit, named) in graph() {
        let from = top(&unit).to_string();
        let to: Vec<String> = named
            .iter()
            .map(|n| top(n).to_string())
            .filter(|n| *n != from)
            .collect();
        modules.entry(from).or_default().extend(to);
    }
    if let Some(cycle) = cycle(&modules) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn files_of_one_module_import_one_another_in_no_cycle() {
    let mut siblings: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (unit, named) in graph() {
        if !unit.contains("::") {
            continue;
        }
        let same_folder: Vec<String> = named
            .into_iter()
            .filter(|n| n.contains("::") && top(n) == top(&unit))
            .collect();
        siblings.entry(unit).or_default().extend(same_folder);
    }
    if let Some(cycle) = cycle(&siblings) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_reader_sees_imports_and_groups() {
    let text = "use crate::cluster::{Node, membership};\nuse crate::{config, error::Error};\nlet x = crate::clock::now_ms();\nmy_crate::ignored";
    let named = named_after(text, "crate::");
    let named: Vec<String> = named.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        named,
        [
            "cluster::Node",
            "cluster::membership",
            "config",
            "error::Error",
            "clock::now_ms",
        ]
    );
    assert_eq!(unit_of(Path::new("cluster/node.rs")), "cluster::node");
    assert_eq!(unit_of(Path::new("cluster/mod.rs")), "cluster");
    assert_eq!(unit_of(Path::new("server.rs")), "server");
}
