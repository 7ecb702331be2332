//! The trie that matches topics against AMQP-style patterns (the rules
//! are in [`crate::topic`]). Patterns without wildcards are looked up in a
//! hash map; the rest walk a trie, so matching cost follows the topic's
//! depth and the wildcard patterns that fit it, not the number of
//! subscriptions.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use mpreg_storage::topic::pattern_levels as levels;

fn is_exact(pattern: &str) -> bool {
    !pattern.split('.').any(|l| l == "*" || l == "#")
}

#[derive(Debug)]
struct Node<K> {
    children: HashMap<String, Node<K>>,
    ids: HashSet<K>,
}

impl<K> Default for Node<K> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            ids: HashSet::new(),
        }
    }
}

impl<K: Clone + Eq + Hash> Node<K> {
    fn collect(&self, levels: &[&str], out: &mut HashSet<K>) {
        if let Some(hash) = self.children.get("#") {
            // `#` takes zero or more levels.
            for skip in 0..=levels.len() {
                hash.collect(&levels[skip..], out);
            }
        }
        let Some((first, rest)) = levels.split_first() else {
            out.extend(self.ids.iter().cloned());
            return;
        };
        if let Some(child) = self.children.get(*first) {
            child.collect(rest, out);
        }
        if let Some(star) = self.children.get("*") {
            star.collect(rest, out);
        }
    }

    /// Removes `id` under `levels`; returns whether this node is now empty.
    fn remove(&mut self, levels: &[&str], id: &K) -> bool {
        match levels.split_first() {
            None => {
                self.ids.remove(id);
            }
            Some((first, rest)) => {
                if self
                    .children
                    .get_mut(*first)
                    .is_some_and(|child| child.remove(rest, id))
                {
                    self.children.remove(*first);
                }
            }
        }
        self.ids.is_empty() && self.children.is_empty()
    }
}

/// Subscribers (`K`) by pattern.
#[derive(Debug)]
pub struct TopicTrie<K> {
    exact: HashMap<String, HashSet<K>>,
    wild: Node<K>,
}

impl<K> Default for TopicTrie<K> {
    fn default() -> Self {
        TopicTrie {
            exact: HashMap::new(),
            wild: Node::default(),
        }
    }
}

impl<K: Clone + Eq + Hash> TopicTrie<K> {
    /// Adds `id` under a pattern already checked with [`check_pattern`].
    pub fn insert(&mut self, pattern: &str, id: K) {
        if is_exact(pattern) {
            self.exact
                .entry(pattern.to_string())
                .or_default()
                .insert(id);
            return;
        }
        let mut node = &mut self.wild;
        for level in levels(pattern) {
            node = node.children.entry(level.to_string()).or_default();
        }
        node.ids.insert(id);
    }

    pub fn remove(&mut self, pattern: &str, id: &K) {
        if is_exact(pattern) {
            if let Some(ids) = self.exact.get_mut(pattern) {
                ids.remove(id);
                if ids.is_empty() {
                    self.exact.remove(pattern);
                }
            }
            return;
        }
        self.wild.remove(&levels(pattern), id);
    }

    /// Every id with a pattern matching `topic` (each once).
    pub fn matches(&self, topic: &str) -> HashSet<K> {
        let mut out = self.exact.get(topic).cloned().unwrap_or_default();
        if !self.wild.children.is_empty() {
            let levels: Vec<&str> = topic.split('.').collect();
            self.wild.collect(&levels, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod test {
    use mpreg_storage::topic::pattern_matches;
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn star_and_hash() {
        for (pattern, topic, expected) in [
            ("a.*", "a.b", true),
            ("a.*", "a", false),
            ("a.*", "a.b.c", false),
            ("a.#", "a", true),
            ("a.#", "a.b.c", true),
            ("#", "x.y", true),
            ("#.z", "z", true),
            ("#.z", "a.b.z", true),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
            ("a.#.z", "a.b.c", false),
            ("*.b.#", "a.b", true),
        ] {
            assert_eq!(
                pattern_matches(pattern, topic),
                expected,
                "{pattern} vs {topic}"
            );
            let mut trie = TopicTrie::default();
            trie.insert(pattern, 1);
            assert_eq!(
                trie.matches(topic).contains(&1),
                expected,
                "trie: {pattern} vs {topic}"
            );
        }
    }

    #[test]
    fn repeated_hash_levels_collapse() {
        let mut trie = TopicTrie::default();
        let pattern = format!("a.{}.z", vec!["#"; 60].join("."));
        trie.insert(&pattern, 1);
        let topic = format!("a.{}", vec!["b"; 62].join("."));
        assert!(trie.matches(&topic).is_empty());
        assert!(trie.matches("a.z").contains(&1));
        assert!(pattern_matches(&pattern, "a.b.c.z") && !pattern_matches(&pattern, &topic));
        trie.remove(&pattern, &1);
        assert!(trie.wild.children.is_empty());
    }

    #[test]
    fn remove_prunes() {
        let mut trie = TopicTrie::default();
        trie.insert("a.*.c", 1);
        trie.insert("a.*.c", 2);
        trie.insert("x.y", 3);
        trie.remove("a.*.c", &1);
        assert_eq!(trie.matches("a.b.c"), HashSet::from([2]));
        trie.remove("a.*.c", &2);
        trie.remove("x.y", &3);
        assert!(trie.wild.children.is_empty() && trie.exact.is_empty());
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("c".to_string())
        ]
    }

    fn pattern_level() -> impl Strategy<Value = String> {
        prop_oneof![3 => level(), 1 => Just("*".to_string()), 1 => Just("#".to_string())]
    }

    proptest! {
        #[test]
        fn trie_agrees_with_the_reference(
            patterns in proptest::collection::vec(proptest::collection::vec(pattern_level(), 1..5), 1..20),
            topics in proptest::collection::vec(proptest::collection::vec(level(), 1..6), 1..20),
        ) {
            let patterns: Vec<String> = patterns.iter().map(|p| p.join(".")).collect();
            let mut trie = TopicTrie::default();
            for (i, p) in patterns.iter().enumerate() {
                trie.insert(p, i);
            }
            for topic in topics.iter().map(|t| t.join(".")) {
                let expected: HashSet<usize> =
                    patterns.iter().enumerate().filter(|(_, p)| pattern_matches(p, &topic)).map(|(i, _)| i).collect();
                prop_assert_eq!(trie.matches(&topic), expected, "topic {}", topic);
            }
        }
    }
}
