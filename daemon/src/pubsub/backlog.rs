//! The backlog: recently published messages, bounded by age and bytes,
//! replayed to new subscriptions that ask for it.

use std::collections::VecDeque;
use std::time::Duration;

use super::Queued;
use mpreg_storage::topic::pattern_matches;

struct Entry {
    at: f64,
    topic: String,
    message_id: String,
    json: Queued,
}

/// Retained messages, oldest first.
#[derive(Default)]
pub struct Backlog {
    entries: VecDeque<Entry>,
    bytes: usize,
    window: f64,
    max_bytes: usize,
}

impl Backlog {
    pub fn new(window: Duration, max_bytes: usize) -> Self {
        Backlog {
            entries: VecDeque::new(),
            bytes: 0,
            window: window.as_secs_f64(),
            max_bytes,
        }
    }

    /// Bytes of the retained messages.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Retains a message published at `at` (unix seconds).
    pub fn push(&mut self, at: f64, topic: &str, message_id: &str, json: Queued) {
        if self.max_bytes == 0 {
            return;
        }
        let message_id = message_id.to_string();
        self.bytes += json.len() + topic.len();
        self.entries.push_back(Entry {
            at,
            topic: topic.to_string(),
            message_id,
            json,
        });
        while self.bytes > self.max_bytes
            || self
                .entries
                .front()
                .is_some_and(|e| e.at < at - self.window)
        {
            match self.entries.pop_front() {
                Some(e) => self.bytes -= e.json.len() + e.topic.len(),
                None => break,
            }
        }
    }

    /// Messages since `since` whose topic matches one of `patterns`.
    pub fn matching(&self, since: f64, patterns: &[String]) -> Vec<(String, Queued)> {
        self.entries
            .iter()
            .filter(|e| e.at >= since && patterns.iter().any(|p| pattern_matches(p, &e.topic)))
            .map(|e| (e.message_id.clone(), e.json.clone()))
            .collect()
    }
}
