//! A table large enough to be scanned by two threads ([`super::in_two_threads`])
//! still yields each of its rows exactly once, whatever the query reads.

use std::collections::BTreeSet;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{Int64Type, UInt64Type};
use mpreg_storage::event::CacheKey;
use mpreg_storage::inspect::KeyRange;
use mpreg_storage::views::{CacheRow, View};
use mpreg_storage::{DataDir, Inspector, OpenMode, codec};

use super::PARALLEL_SCAN_BYTES;
use crate::{SqlLimits, open_offline};

const ROWS: u64 = 60_000;

/// A data dir whose `cache_entries` holds [`ROWS`] entries in SST files:
/// namespace `n{i % 3}`, identifier `k{i}`, a value of `i % 1000` bytes.
fn large_cache(path: &std::path::Path) {
    let dir = DataDir::open(path, OpenMode::ReadWrite).unwrap();
    let db = dir.db();
    let family = db.cf_handle(View::CacheEntries.cf_name()).unwrap();
    for i in 0..ROWS {
        let key = CacheKey {
            namespace: format!("n{}", i % 3),
            identifier: format!("k{i}"),
            version: String::new(),
        };
        let row = CacheRow {
            value: "x".repeat(usize::try_from(i % 1000).unwrap()),
            tags: vec![format!("t{}", i % 7)],
            metadata: "null".to_string(),
            created_at_ms: i,
            updated_at_ms: i,
            expires_at_ms: None,
            revision: 1,
            key: key.clone(),
        };
        let value = codec::encode("cache row", &row).unwrap();
        db.put_cf(family, CacheRow::key(&key), value).unwrap();
    }
    db.flush_cf(family).unwrap();
    let inspector = Inspector::new(&dir);
    let scan = inspector.view_scan(View::CacheEntries).unwrap();
    assert!(
        scan.halves(&KeyRange::prefix(b""), PARALLEL_SCAN_BYTES)
            .unwrap()
            .is_some(),
        "the table is large enough to be scanned in two halves"
    );
}

fn sum(values: impl IntoIterator<Item = u64>) -> u64 {
    values.into_iter().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_scanned_in_two_halves_yields_each_row_once() {
    let tmp = tempfile::tempdir().unwrap();
    large_cache(tmp.path());
    // What this test checks is the rows, not the time: a debug build on a
    // loaded machine may need most of the default 10 s for 60,000 rows.
    let limits = SqlLimits {
        timeout: std::time::Duration::from_secs(120),
        ..SqlLimits::default()
    };
    let engine = open_offline(tmp.path(), limits).unwrap();

    let out = engine
        .query("SELECT identifier, size_bytes FROM cache_entries")
        .await
        .unwrap();
    let mut identifiers = BTreeSet::new();
    let mut bytes = 0;
    for batch in &out.batches {
        let ids = batch.column(0).as_string::<i32>();
        let sizes = batch.column(1).as_primitive::<UInt64Type>();
        for row in 0..batch.num_rows() {
            assert!(
                identifiers.insert(ids.value(row).to_string()),
                "a row twice"
            );
            bytes += sizes.value(row);
        }
    }
    assert_eq!(identifiers.len() as u64, ROWS);
    assert_eq!(bytes, sum((0..ROWS).map(|i| i % 1000)));

    let grouped = engine
        .query("SELECT namespace, count(*) AS n FROM cache_entries GROUP BY namespace")
        .await
        .unwrap();
    let counts: Vec<i64> = grouped
        .batches
        .iter()
        .flat_map(|b| b.column(1).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert_eq!(counts, [ROWS as i64 / 3; 3]);

    let total = engine
        .query("SELECT count(*) FROM cache_entries")
        .await
        .unwrap();
    let count = total.batches[0].column(0).as_primitive::<Int64Type>();
    assert_eq!((count.len(), count.value(0)), (1, ROWS as i64));
}
