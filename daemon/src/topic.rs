//! Topics and AMQP-style patterns: which texts are valid. Topics are
//! dot-separated levels (`orders.eu.created`). In a pattern a level `*`
//! matches exactly one level and a level `#` matches zero or more levels,
//! anywhere (`a.#.z`, `#.z`, `#`). Wildcards must be whole levels. Pub/sub,
//! queues and the cache check what clients send here; matching is
//! [`mpreg_storage::topic::pattern_matches`].

/// Most levels a topic or pattern may have.
pub const MAX_LEVELS: usize = 64;

/// Why a topic or pattern is refused.
pub fn check_topic(topic: &str) -> Result<(), String> {
    check(topic, "topic", false)
}

/// Why a pattern is refused.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    check(pattern, "pattern", true)
}

fn check(text: &str, what: &str, wildcards: bool) -> Result<(), String> {
    if text.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    let levels: Vec<&str> = text.split('.').collect();
    if levels.len() > MAX_LEVELS {
        return Err(format!("{what} {text:?} has more than {MAX_LEVELS} levels"));
    }
    for level in levels {
        if level.is_empty() {
            return Err(format!("{what} {text:?} has an empty level"));
        }
        let whole_wildcard = level == "*" || level == "#";
        if whole_wildcard && !wildcards {
            return Err(format!("{what} {text:?} must not contain wildcards"));
        }
        if !whole_wildcard && (level.contains('*') || level.contains('#')) {
            return Err(format!(
                "{what} {text:?}: wildcards must be a whole level (`*` or `#`), not {level:?}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn invalid_patterns_are_named() {
        assert!(check_pattern("").is_err());
        assert!(check_pattern("a..b").unwrap_err().contains("empty level"));
        assert!(check_pattern("a.**").unwrap_err().contains("whole level"));
        assert!(check_pattern("a*").unwrap_err().contains("whole level"));
        assert!(check_topic("a.*").unwrap_err().contains("wildcards"));
        assert!(check_pattern("a.*.#").is_ok());
    }
}
