//! Fuzz-style tests of what storage reads from outside the process: the
//! stored value codec and the snapshot reader get random bytes and mutated
//! real encodings, and must answer with an error (never a panic or an
//! allocation the bytes cannot back). `MPREG_SOAK=1` runs 25x more cases.

use proptest::prelude::*;

use crate::codec::{self, FORMAT_VERSION};
use crate::event::{CacheKey, Event, EventBatch, EventKind};
use crate::snapshot::{self, SnapshotHeader, SnapshotWriter};
use crate::views::{Digest, View};

fn cases() -> u32 {
    let soak = std::env::var("MPREG_SOAK").is_ok_and(|v| v == "1");
    if soak { 50_000 } else { 2_000 }
}

fn batch(names: Vec<String>, value: String) -> EventBatch {
    let mut events: Vec<Event> = names
        .iter()
        .enumerate()
        .map(|(i, name)| Event {
            time_ms: i as u64,
            kind: EventKind::NodeJoined {
                node_id: name.clone(),
                cluster_id: "c".into(),
                addresses: vec![format!("ws://{name}")],
                resources: names.clone(),
            },
        })
        .collect();
    events.push(Event {
        time_ms: 7,
        kind: EventKind::CachePut {
            key: CacheKey {
                namespace: "ns".into(),
                identifier: value.clone(),
                version: String::new(),
            },
            value,
            tags: Vec::new(),
            metadata: "{}".into(),
            ttl_ms: Some(5),
        },
    });
    EventBatch {
        events: events.into(),
    }
}

/// How a real encoding is damaged.
#[derive(Clone, Debug)]
enum Mutation {
    /// XOR one byte (position taken modulo the length) with a non-zero mask.
    Flip(usize, u8),
    /// Keep only a strict prefix.
    Truncate(usize),
    /// Overwrite 9 bytes with a varint that claims 2^k bytes.
    HugeLength(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 20..63u8).prop_map(|(at, k)| Mutation::HugeLength(at, k)),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len();
    match *mutation {
        Mutation::Flip(at, mask) => bytes[at % len] ^= mask,
        Mutation::Truncate(at) => bytes.truncate(at % len),
        Mutation::HugeLength(at, k) => {
            let at = at % len;
            let mut claim = vec![253u8];
            claim.extend_from_slice(&(1u64 << k).to_le_bytes());
            bytes.splice(at..(at + claim.len()).min(len), claim);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn random_bytes_never_panic_the_codec(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut versioned = vec![FORMAT_VERSION];
        versioned.extend_from_slice(&bytes);
        // Any answer is fine; a panic or an abort is not.
        let _ = codec::decode::<EventBatch>("fuzz", &versioned);
        let _ = codec::decode::<crate::views::QueueRow>("fuzz", &versioned);
        let _ = codec::decode::<crate::views::CacheRow>("fuzz", &versioned);
        let _ = codec::decode::<String>("fuzz", &versioned);
    }

    #[test]
    fn damaged_encodings_are_errors_or_other_values(
        names in prop::collection::vec("[a-z]{0,12}", 0..8),
        value in ".{0,64}",
        mutation in mutation(),
    ) {
        let real = batch(names, value);
        let encoded = codec::encode("batch", &real).unwrap();
        prop_assert_eq!(&codec::decode::<EventBatch>("batch", &encoded).unwrap(), &real);
        let mut damaged = encoded.clone();
        mutate(&mut damaged, &mutation);
        let decoded = codec::decode::<EventBatch>("batch", &damaged);
        // Decoding a prefix reads as the whole did, until it runs out;
        // other damage may decode to another value or fail, but returns.
        if let Mutation::Truncate(_) = mutation {
            prop_assert!(decoded.is_err(), "a prefix decoded: {:?}", decoded);
        }
    }

    #[test]
    fn damaged_snapshots_are_refused(
        rows in prop::collection::vec(("[a-z]{1,8}", prop::collection::vec(any::<u8>(), 0..32)), 1..16),
        mutation in mutation(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot");
        let mut digest = Digest::default();
        for (key, value) in &rows {
            digest.add(View::Nodes, key.as_bytes(), value);
        }
        let header = SnapshotHeader {
            last_applied: None,
            membership: Default::default(),
            digest: digest.value(),
        };
        let mut writer = SnapshotWriter::create(&path, &header).unwrap();
        for (key, value) in &rows {
            writer.row(View::Nodes, key.as_bytes(), value).unwrap();
        }
        writer.finish().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let before = bytes.clone();
        mutate(&mut bytes, &mutation);
        prop_assume!(bytes != before);
        std::fs::write(&path, &bytes).unwrap();
        // The checksum covers every byte, so any change is caught.
        let read = snapshot::read(&path, |_, _, _| Ok(()));
        prop_assert!(read.is_err(), "a damaged snapshot was accepted: {:?}", mutation);
    }
}
