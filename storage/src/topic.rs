//! AMQP-style topic patterns: `*` matches exactly one dot-separated level,
//! `#` zero or more. Apply filters queue deliveries with them, pub/sub
//! builds its matching trie on the same level rules, and credentials
//! name what they allow with them.

/// The levels of a pattern with runs of `#` collapsed to one (`#.#` means
/// the same as `#`, and each extra `#` would multiply matching work).
pub fn pattern_levels(pattern: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for level in pattern.split('.') {
        if !(level == "#" && out.last() == Some(&"#")) {
            out.push(level);
        }
    }
    out
}

/// Whether one pattern matches one topic.
pub fn pattern_matches(pattern: &str, topic: &str) -> bool {
    fn go(p: &[&str], t: &[&str]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((&"#", rest)) => (0..=t.len()).any(|skip| go(rest, &t[skip..])),
            Some((&"*", rest)) => !t.is_empty() && go(rest, &t[1..]),
            Some((level, rest)) => t.first() == Some(level) && go(rest, &t[1..]),
        }
    }
    let t: Vec<&str> = topic.split('.').collect();
    go(&pattern_levels(pattern), &t)
}

/// Whether `outer` matches every topic `inner` matches (so a permission
/// `outer` allows subscribing with `inner`). Never true when that does not
/// hold; may be false for unusual equivalent spellings.
pub fn pattern_covers(outer: &str, inner: &str) -> bool {
    fn go(o: &[&str], i: &[&str]) -> bool {
        match o.split_first() {
            None => i.is_empty(),
            Some((&"#", rest)) => (0..=i.len()).any(|skip| go(rest, &i[skip..])),
            Some((&"*", rest)) => match i.split_first() {
                Some((&"#", _)) | None => false,
                Some((_, i_rest)) => go(rest, i_rest),
            },
            Some((level, rest)) => match i.split_first() {
                Some((first, i_rest)) if first == level && !matches!(*first, "*" | "#") => {
                    go(rest, i_rest)
                }
                _ => false,
            },
        }
    }
    go(&pattern_levels(outer), &pattern_levels(inner))
}

#[cfg(test)]
mod test {
    use proptest::prelude::*;

    use super::*;

    /// Patterns and topics over two words, up to four levels.
    fn pattern(wildcards: bool) -> impl Strategy<Value = String> {
        let level = if wildcards {
            prop_oneof![Just("a"), Just("b"), Just("*"), Just("#")].boxed()
        } else {
            prop_oneof![Just("a"), Just("b")].boxed()
        };
        proptest::collection::vec(level, 1..5).prop_map(|levels| levels.join("."))
    }

    /// Every topic of one to six levels over the two words and a third
    /// that no pattern names.
    fn topics() -> Vec<String> {
        let mut all = vec![String::new()];
        let mut out = Vec::new();
        for _ in 0..6 {
            all = all
                .iter()
                .flat_map(|prefix| {
                    ["a", "b", "c"].map(|w| {
                        if prefix.is_empty() {
                            w.to_string()
                        } else {
                            format!("{prefix}.{w}")
                        }
                    })
                })
                .collect();
            out.extend(all.iter().cloned());
        }
        out
    }

    #[test]
    fn covering_examples() {
        assert!(pattern_covers("#", "a.*.#"));
        assert!(pattern_covers("a.#", "a"));
        assert!(pattern_covers("a.#", "a.*.b"));
        assert!(pattern_covers("a.*", "a.*"));
        assert!(!pattern_covers("a.*", "a.#"));
        assert!(!pattern_covers("a.b", "a.*"));
        assert!(!pattern_covers("#.b", "#"));
    }

    proptest! {
        /// Soundness: when `outer` covers `inner`, every topic `inner`
        /// matches, `outer` matches too.
        #[test]
        fn a_covering_pattern_matches_every_topic_of_the_covered(
            outer in pattern(true),
            inner in pattern(true),
        ) {
            if pattern_covers(&outer, &inner) {
                for topic in topics() {
                    prop_assert!(
                        !pattern_matches(&inner, &topic) || pattern_matches(&outer, &topic),
                        "{outer} covers {inner}, yet {topic} matches only the second"
                    );
                }
            }
        }

        /// A pattern covers itself and every literal topic it matches.
        #[test]
        fn a_pattern_covers_itself_and_its_topics(outer in pattern(true), topic in pattern(false)) {
            prop_assert!(pattern_covers(&outer, &outer));
            prop_assert_eq!(pattern_covers(&outer, &topic), pattern_matches(&outer, &topic));
        }
    }
}
