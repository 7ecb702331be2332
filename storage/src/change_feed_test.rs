//! The apply change feed of the live state machine: which queues and which
//! cache rows each applied batch reports, so consumers and memory tiers on
//! every node react to changes proposed anywhere.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::storage::RaftStateMachine;

use crate::determinism_test::{entries, open_sm};
use crate::event::{CacheKey, Delivery, Event, EventKind, NewMessage, QueueSettings, QueueType};
use crate::views::CacheRow;
use crate::{StateMachine, Views};

fn settings(dead_letter_queue: Option<&str>) -> QueueSettings {
    QueueSettings {
        queue_type: QueueType::Fifo,
        max_size: 10,
        visibility_timeout_ms: 10,
        ack_timeout_ms: 10,
        message_ttl_ms: None,
        max_retries: 0,
        dead_letter_queue: dead_letter_queue.map(str::to_string),
        dedup_window_ms: None,
    }
}

fn message(id: &str, delay_ms: u64) -> NewMessage {
    NewMessage {
        message_id: id.to_string(),
        client_id: false,
        topic: "t".to_string(),
        payload: "null".to_string(),
        priority: 0,
        delay_ms,
        ttl_ms: None,
        delivery: Delivery::AtLeastOnce,
    }
}

/// Applies `kinds` as one entry each, from log index `next`.
async fn apply(sm: &mut StateMachine, next: &mut u64, time_ms: u64, kinds: Vec<EventKind>) {
    let events: Vec<Event> = kinds
        .into_iter()
        .map(|kind| Event { time_ms, kind })
        .collect();
    sm.apply(entries(&events, *next)).await.unwrap();
    *next += events.len() as u64;
}

/// The queues changed since the last call; empty when none did.
async fn changed_queues(views: &Views) -> BTreeSet<String> {
    match tokio::time::timeout(Duration::from_millis(20), views.next_queue_changes()).await {
        Ok(changes) => {
            assert!(!changes.everything);
            changes.queues
        }
        Err(_) => BTreeSet::new(),
    }
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn timers_and_dead_letters_name_every_queue_they_change() {
    let dir = tempfile::tempdir().unwrap();
    let (_dir, mut sm) = open_sm(dir.path());
    let views = sm.views();
    // Opening loads the views: any queue may have changed.
    assert!(views.next_queue_changes().await.everything);
    let mut next = 1;
    let declare = |name: &str, dlq: Option<&str>| EventKind::QueueDeclared {
        name: name.to_string(),
        settings: settings(dlq),
    };
    apply(
        &mut sm,
        &mut next,
        0,
        vec![declare("dead", None), declare("q", Some("dead"))],
    )
    .await;
    assert_eq!(changed_queues(&views).await, names(&["dead", "q"]));

    let send = EventKind::MessagesSent {
        queue: "q".to_string(),
        messages: vec![message("now", 0), message("later", 50)],
    };
    apply(&mut sm, &mut next, 0, vec![send]).await;
    assert_eq!(changed_queues(&views).await, names(&["q"]));

    let lease = EventKind::MessagesLeased {
        queue: "q".to_string(),
        consumer: "c".to_string(),
        max: 1,
        lease_ms: 10,
        topic_pattern: None,
    };
    apply(&mut sm, &mut next, 1, vec![lease]).await;
    assert_eq!(changed_queues(&views).await, names(&["q"]));

    // The lease of "now" runs out with no retries left: it moves to the
    // dead-letter queue, which must be named so its consumers wake.
    apply(
        &mut sm,
        &mut next,
        20,
        vec![EventKind::TimersFired { max: 10 }],
    )
    .await;
    assert_eq!(changed_queues(&views).await, names(&["dead", "q"]));

    // The delay of "later" ends: only q changes.
    apply(
        &mut sm,
        &mut next,
        60,
        vec![EventKind::TimersFired { max: 10 }],
    )
    .await;
    assert_eq!(changed_queues(&views).await, names(&["q"]));

    // A cache entry expiring by timer changes no queue.
    let expiring = EventKind::CachePut {
        key: CacheKey {
            namespace: "ns".to_string(),
            identifier: "ttl".to_string(),
            version: String::new(),
        },
        value: "1".to_string(),
        tags: Vec::new(),
        metadata: "{}".to_string(),
        ttl_ms: Some(5),
    };
    apply(&mut sm, &mut next, 60, vec![expiring]).await;
    apply(
        &mut sm,
        &mut next,
        65,
        vec![EventKind::TimersFired { max: 10 }],
    )
    .await;
    assert_eq!(changed_queues(&views).await, BTreeSet::new());
    views.take_cache_changes();

    // Nothing due, and a cache write: no queue changes.
    let key = CacheKey {
        namespace: "ns".to_string(),
        identifier: "k".to_string(),
        version: String::new(),
    };
    let put = EventKind::CachePut {
        key: key.clone(),
        value: "1".to_string(),
        tags: Vec::new(),
        metadata: "{}".to_string(),
        ttl_ms: None,
    };
    apply(
        &mut sm,
        &mut next,
        70,
        vec![EventKind::TimersFired { max: 10 }, put],
    )
    .await;
    assert_eq!(changed_queues(&views).await, BTreeSet::new());
    let cache = views.take_cache_changes();
    assert_eq!(
        (cache.keys, cache.everything),
        (vec![CacheRow::key(&key)], false)
    );
    assert!(views.take_cache_changes().keys.is_empty(), "taken once");
}
