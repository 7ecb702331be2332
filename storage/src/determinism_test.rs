//! Property tests: apply is deterministic, the incremental digest equals
//! the digest recomputed from scratch, and snapshot + remaining log gives
//! the same views as the whole log, through the real RocksDB state machine.

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::db::{DataDir, OpenMode};
use crate::event::{Event, EventKind};
use crate::replay::MemViews;
use crate::views::{Digest, ViewTxn, apply};
use crate::{StateMachine, TypeConfig, open_raft_storage};

fn id(prefix: &'static str) -> impl Strategy<Value = String> {
    (0u8..4).prop_map(move |n| format!("{prefix}{n}"))
}

fn event_kind() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        (id("n"), id("c"), proptest::collection::vec(id("r"), 0..3)).prop_map(
            |(node_id, cluster_id, resources)| {
                EventKind::NodeJoined {
                    node_id,
                    cluster_id,
                    addresses: vec!["ws://127.0.0.1:1".into()],
                    resources,
                }
            }
        ),
        id("n").prop_map(|node_id| EventKind::NodeLeft { node_id }),
        (id("f"), id("id"), id("1.0."), id("p")).prop_map(
            |(name, function_id, version, provider)| {
                EventKind::FunctionRegistered {
                    name,
                    function_id,
                    version,
                    resources: vec![],
                    provider,
                    node_id: "n0".into(),
                    cluster_id: "c0".into(),
                }
            }
        ),
        (id("f"), id("1.0."), id("p")).prop_map(|(name, version, provider)| {
            EventKind::FunctionWithdrawn {
                name,
                version,
                provider,
            }
        }),
        (
            id("s"),
            proptest::collection::vec(id("t."), 1..3),
            any::<bool>()
        )
            .prop_map(|(subscription_id, patterns, durable)| {
                EventKind::SubscriptionAdded {
                    subscription_id,
                    patterns,
                    subscriber: "client".into(),
                    node_id: "n0".into(),
                    durable,
                }
            }),
        id("s").prop_map(|subscription_id| EventKind::SubscriptionRemoved { subscription_id }),
        (id("c"), id("c"), 0u32..10, proptest::option::of(0u64..1000)).prop_map(
            |(dest, advertiser, cost, expires_at_ms)| EventKind::RouteAnnounced {
                dest: dest.clone(),
                next_hop: advertiser.clone(),
                path: vec![advertiser.clone(), dest],
                cost,
                advertiser,
                expires_at_ms,
            }
        ),
        (id("c"), id("c"))
            .prop_map(|(dest, advertiser)| EventKind::RouteWithdrawn { dest, advertiser }),
    ]
}

fn events() -> impl Strategy<Value = Vec<Event>> {
    proptest::collection::vec((0u64..1_000_000, event_kind()), 1..60).prop_map(|v| {
        v.into_iter()
            .map(|(time_ms, kind)| Event { time_ms, kind })
            .collect()
    })
}

fn mem_apply(events: &[Event]) -> (MemViews, Digest) {
    let mut views = MemViews::default();
    let mut digest = Digest::default();
    for event in events {
        apply(&mut ViewTxn::new(&mut views, &mut digest), event).unwrap();
    }
    (views, digest)
}

fn entries(events: &[Event], first_index: u64) -> Vec<Entry<TypeConfig>> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), first_index + i as u64),
            payload: EntryPayload::Normal(crate::EventBatch {
                events: vec![e.clone()],
            }),
        })
        .collect()
}

/// Writes entries straight into the log family, as an append would.
fn write_log(dir: &DataDir, entries: &[Entry<TypeConfig>]) {
    let db = dir.db();
    let family = crate::db::cf(db, crate::db::CF_LOG).unwrap();
    for entry in entries {
        let value = crate::codec::encode("log entry", entry).unwrap();
        db.put_cf(family, crate::log_store::log_key(entry.log_id.index), value)
            .unwrap();
    }
}

fn open_sm(path: &std::path::Path) -> (DataDir, StateMachine) {
    let dir = DataDir::open(path, OpenMode::ReadWrite).unwrap();
    let (_, sm) = open_raft_storage(&dir, Default::default()).unwrap();
    (dir, sm)
}

async fn live_then_snapshot(events: Vec<Event>, split: usize) -> (u128, u128, u128) {
    let split = split.min(events.len());
    let a = tempfile::tempdir().unwrap();
    let (dir_a, mut full) = open_sm(a.path());
    write_log(&dir_a, &entries(&events, 1));
    full.apply(entries(&events[..split], 1)).await.unwrap();
    let mut snapshot = full
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    full.apply(entries(&events[split..], split as u64 + 1))
        .await
        .unwrap();
    let full_digest = full.views().applied().digest;

    let b = tempfile::tempdir().unwrap();
    let (_dir_b, mut restored) = open_sm(b.path());
    let mut bytes = Vec::new();
    snapshot.snapshot.read_to_end(&mut bytes).await.unwrap();
    let mut receiving = restored.begin_receiving_snapshot().await.unwrap();
    receiving.write_all(&bytes).await.unwrap();
    restored
        .install_snapshot(&snapshot.meta, receiving)
        .await
        .unwrap();
    restored
        .apply(entries(&events[split..], split as u64 + 1))
        .await
        .unwrap();
    let restored_digest = restored.views().applied().digest;

    let replayed = crate::replay(a.path()).unwrap();
    let replayed = u128::from_str_radix(&replayed.views_digest, 16).unwrap();
    (full_digest, restored_digest, replayed)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn same_events_same_digest(events in events()) {
        let (views_a, digest_a) = mem_apply(&events);
        let (_, digest_b) = mem_apply(&events);
        prop_assert_eq!(digest_a, digest_b);
        prop_assert_eq!(digest_a, views_a.digest());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn snapshot_plus_tail_equals_full_log(events in events(), split in 0usize..60) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (full, restored, replayed) = rt.block_on(live_then_snapshot(events.clone(), split));
        let (_, expected) = mem_apply(&events);
        prop_assert_eq!(full, expected.value());
        prop_assert_eq!(restored, expected.value());
        prop_assert_eq!(replayed, expected.value());
    }
}
