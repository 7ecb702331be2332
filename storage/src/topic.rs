//! AMQP-style topic patterns: `*` matches exactly one dot-separated level,
//! `#` zero or more. Apply filters queue deliveries with them, and pub/sub
//! builds its matching trie on the same level rules.

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
