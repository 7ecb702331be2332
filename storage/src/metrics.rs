//! Storage metrics: log appends, WAL syncs, apply batches and snapshots.
//!
//! One [`StorageMetrics`] per node, registered into the node's registry
//! (never a global one, so nodes sharing a process keep their own counts).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

/// Latency buckets for storage operations, 50 µs to 5 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

/// Events-per-entry buckets (group commit puts up to 1024 in one entry).
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The storage metrics of one node.
pub struct StorageMetrics {
    /// `mpreg_storage_log_append_seconds`: writing one append to RocksDB (unsynced).
    pub log_append_seconds: Histogram,
    /// `mpreg_storage_wal_fsync_seconds`: one WAL sync, shared by every append waiting.
    pub wal_fsync_seconds: Histogram,
    /// `mpreg_storage_log_entries_appended_total`.
    pub log_entries_appended: IntCounter,
    /// `mpreg_storage_entry_events`: events per applied log entry.
    pub entry_events: Histogram,
    /// `mpreg_storage_apply_seconds`: applying one batch of entries.
    pub apply_seconds: Histogram,
    /// `mpreg_storage_events_applied_total`.
    pub events_applied: IntCounter,
    /// `mpreg_storage_snapshots_total`: snapshots built.
    pub snapshots: IntCounter,
    /// `mpreg_storage_snapshots_damaged_total`: current snapshot files found
    /// damaged when about to be served, and rebuilt.
    pub snapshots_damaged: IntCounter,
    /// `mpreg_storage_snapshot_build_seconds`.
    pub snapshot_build_seconds: Histogram,
    /// `mpreg_storage_snapshot_size_bytes`: size of the last snapshot built.
    pub snapshot_size_bytes: IntGauge,
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid histogram options")
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("valid counter options")
}

impl Default for StorageMetrics {
    fn default() -> Self {
        StorageMetrics {
            log_append_seconds: histogram(
                "mpreg_storage_log_append_seconds",
                "Time to write one raft log append to RocksDB, before the WAL sync.",
                LATENCY_BUCKETS,
            ),
            wal_fsync_seconds: histogram(
                "mpreg_storage_wal_fsync_seconds",
                "Time of one WAL sync; every append waiting shares it (group commit).",
                LATENCY_BUCKETS,
            ),
            log_entries_appended: counter(
                "mpreg_storage_log_entries_appended_total",
                "Raft log entries appended.",
            ),
            entry_events: histogram(
                "mpreg_storage_entry_events",
                "Events per applied log entry (proposals batched into one entry).",
                BATCH_BUCKETS,
            ),
            apply_seconds: histogram(
                "mpreg_storage_apply_seconds",
                "Time to apply one batch of committed entries to the views.",
                LATENCY_BUCKETS,
            ),
            events_applied: counter(
                "mpreg_storage_events_applied_total",
                "Events applied to the views.",
            ),
            snapshots: counter("mpreg_storage_snapshots_total", "Snapshots built."),
            snapshots_damaged: counter(
                "mpreg_storage_snapshots_damaged_total",
                "Snapshot files found damaged when about to be served, and rebuilt from the views.",
            ),
            snapshot_build_seconds: histogram(
                "mpreg_storage_snapshot_build_seconds",
                "Time to build one snapshot file.",
                LATENCY_BUCKETS,
            ),
            snapshot_size_bytes: IntGauge::new(
                "mpreg_storage_snapshot_size_bytes",
                "Size of the last snapshot built.",
            )
            .expect("valid gauge options"),
        }
    }
}

impl StorageMetrics {
    /// Registers every metric into `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.log_append_seconds.clone()))?;
        registry.register(Box::new(self.wal_fsync_seconds.clone()))?;
        registry.register(Box::new(self.log_entries_appended.clone()))?;
        registry.register(Box::new(self.entry_events.clone()))?;
        registry.register(Box::new(self.apply_seconds.clone()))?;
        registry.register(Box::new(self.events_applied.clone()))?;
        registry.register(Box::new(self.snapshots.clone()))?;
        registry.register(Box::new(self.snapshots_damaged.clone()))?;
        registry.register(Box::new(self.snapshot_build_seconds.clone()))?;
        registry.register(Box::new(self.snapshot_size_bytes.clone()))?;
        Ok(())
    }
}
