//! Snapshots of the state machine: building a snapshot file from a
//! consistent RocksDB snapshot of the views ([`SnapshotBuilder`]),
//! installing a received one in place of every view, and the record of
//! which file is current (in the snapshot column family). The file format
//! itself is [`crate::snapshot`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::{ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use rocksdb::{DB, IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};

use super::applied::{AppliedState, write_applied};
use crate::codec;
use crate::db::{
    CF_META, CF_SNAPSHOT, SNAPSHOT_CURRENT, blocking, cf, get_decoded, meta_key, write_synced,
};
use crate::error::{Error, Result};
use crate::log_store::to_raft;
use crate::metrics::StorageMetrics;
use crate::raft_types::TypeConfig;
use crate::raft_types::typ::{Snapshot, SnapshotMeta, StorageError};
use crate::snapshot::{self, SnapshotHeader, SnapshotWriter};
use crate::views::View;

/// Where the current snapshot lives.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SnapshotRecord {
    meta: SnapshotMeta,
    /// File name inside the snapshot folder.
    file: String,
}

/// Now, for unique snapshot ids and scratch file names.
pub(super) fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|source| Error::SnapshotIo {
            verb: "sync the folder of",
            path: dir.to_path_buf(),
            source,
        })
}

/// Makes `file` (inside `dir`) the current snapshot and deletes the old one.
fn record_snapshot(db: &DB, dir: &Path, record: &SnapshotRecord) -> Result<()> {
    sync_dir(dir)?;
    let old: Option<SnapshotRecord> = get_decoded(db, CF_SNAPSHOT, SNAPSHOT_CURRENT)?;
    let mut batch = WriteBatch::default();
    batch.put_cf(
        cf(db, CF_SNAPSHOT)?,
        SNAPSHOT_CURRENT,
        codec::encode("snapshot record", record)?,
    );
    write_synced(db, batch, "snapshot record")?;
    if let Some(old) = old.filter(|o| o.file != record.file) {
        let _ = std::fs::remove_file(dir.join(old.file));
    }
    Ok(())
}

/// Path of the current snapshot file and its header, if a snapshot exists.
pub(crate) fn current_snapshot(db: &DB, dir: &Path) -> Result<Option<(SnapshotMeta, PathBuf)>> {
    let record: Option<SnapshotRecord> = get_decoded(db, CF_SNAPSHOT, SNAPSHOT_CURRENT)?;
    Ok(record.map(|r| (r.meta, dir.join(r.file))))
}

/// The current snapshot's header and its file, open. A snapshot built
/// meanwhile records its file before it deletes the old one, so a recorded
/// file that is gone when opened means a newer record: read it again.
pub(crate) async fn open_current_snapshot(
    db: &DB,
    dir: &Path,
) -> Result<Option<(SnapshotMeta, tokio::fs::File)>> {
    loop {
        let Some((meta, path)) = current_snapshot(db, dir)? else {
            return Ok(None);
        };
        match tokio::fs::File::open(&path).await {
            Ok(file) => return Ok(Some((meta, file))),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && current_snapshot(db, dir)?.is_some_and(|(_, now)| now != path) => {}
            Err(source) => {
                return Err(Error::SnapshotIo {
                    verb: "open",
                    path,
                    source,
                });
            }
        }
    }
}

/// Checks the current snapshot file before it is served, so a damaged one
/// (a flipped bit, a truncated file) is never sent to a follower, whose
/// install would refuse it and stop. A damaged file is replaced by a
/// snapshot built afresh from the views.
pub(super) fn replace_damaged_snapshot(
    db: &DB,
    dir: &Path,
    metrics: &StorageMetrics,
) -> Result<()> {
    let Some((meta, path)) = current_snapshot(db, dir)? else {
        return Ok(());
    };
    let damage = match snapshot::verify(&path) {
        Ok(header) if header.last_applied == meta.last_log_id => return Ok(()),
        Ok(header) => format!(
            "it covers up to {:?}, its record says {:?}",
            header.last_applied, meta.last_log_id
        ),
        // A snapshot built meanwhile replaced (and deleted) this one.
        Err(_) if current_snapshot(db, dir)?.is_some_and(|(_, now)| now != path) => {
            return Ok(());
        }
        Err(e) => e.to_string(),
    };
    tracing::error!(
        file = %path.display(),
        damage = %damage,
        "damaged snapshot file; building a new one from the views"
    );
    metrics.snapshots_damaged.inc();
    build_snapshot_file(db, dir)?;
    Ok(())
}

fn build_snapshot_file(db: &DB, dir: &Path) -> Result<SnapshotRecord> {
    let snap = db.snapshot();
    let applied: AppliedState = match snap
        .get_cf(cf(db, CF_META)?, meta_key::APPLIED)
        .map_err(|e| Error::rocks("read", "applied state", e))?
    {
        Some(bytes) => codec::decode("applied state", &bytes)?,
        None => AppliedState::default(),
    };
    let snapshot_id = match applied.last_applied {
        Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, unix_nanos()),
        None => format!("0-0-{}", unix_nanos()),
    };
    let file = format!("{snapshot_id}.snap");
    let tmp = dir.join(format!("{file}.tmp"));
    let header = SnapshotHeader {
        last_applied: applied.last_applied,
        membership: applied.membership.clone(),
        digest: applied.digest,
    };
    let mut writer = SnapshotWriter::create(&tmp, &header)?;
    for view in View::ALL {
        for item in snap.iterator_cf(cf(db, view.cf_name())?, IteratorMode::Start) {
            let (key, value) = item.map_err(|e| Error::rocks("scan", view.cf_name(), e))?;
            writer.row(view, &key, &value)?;
        }
    }
    writer.finish()?;
    std::fs::rename(&tmp, dir.join(&file)).map_err(|source| Error::SnapshotIo {
        verb: "rename",
        path: tmp.clone(),
        source,
    })?;
    let record = SnapshotRecord {
        meta: SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership,
            snapshot_id,
        },
        file,
    };
    record_snapshot(db, dir, &record)?;
    Ok(record)
}

/// Replaces every view with the rows of a verified snapshot file.
pub(super) fn install_snapshot_file(
    db: &DB,
    dir: &Path,
    meta: &SnapshotMeta,
    received: &Path,
) -> Result<AppliedState> {
    let mut batch = WriteBatch::default();
    for view in View::ALL {
        let family = cf(db, view.cf_name())?;
        for item in db.iterator_cf(family, IteratorMode::Start) {
            let (key, _) = item.map_err(|e| Error::rocks("scan", view.cf_name(), e))?;
            batch.delete_cf(family, key);
        }
    }
    let header = snapshot::read(received, |view, key, value| {
        batch.put_cf(cf(db, view.cf_name())?, key, value);
        Ok(())
    })?;
    if header.last_applied != meta.last_log_id {
        return Err(Error::BadSnapshot {
            path: received.to_path_buf(),
            reason: format!(
                "it covers up to {:?}, the leader announced {:?}",
                header.last_applied, meta.last_log_id
            ),
        });
    }
    let applied = AppliedState {
        last_applied: header.last_applied,
        membership: header.membership,
        digest: header.digest,
    };
    write_applied(db, &mut batch, &applied)?;
    write_synced(db, batch, "snapshot install")?;
    let file = format!("{}.snap", meta.snapshot_id);
    std::fs::rename(received, dir.join(&file)).map_err(|source| Error::SnapshotIo {
        verb: "rename",
        path: received.to_path_buf(),
        source,
    })?;
    record_snapshot(
        db,
        dir,
        &SnapshotRecord {
            meta: meta.clone(),
            file,
        },
    )?;
    Ok(applied)
}

/// Builds snapshots from a consistent RocksDB snapshot of the views.
pub struct SnapshotBuilder {
    pub(super) db: Arc<DB>,
    pub(super) snapshot_dir: PathBuf,
    pub(super) metrics: Arc<StorageMetrics>,
}

/// Copies received snapshot data, from its start, into a synced file.
pub(super) async fn copy_to_file(data: &mut tokio::fs::File, path: &Path) -> Result<()> {
    use tokio::io::AsyncSeekExt;
    let err = |verb| {
        move |source| Error::SnapshotIo {
            verb,
            path: path.to_path_buf(),
            source,
        }
    };
    data.seek(std::io::SeekFrom::Start(0))
        .await
        .map_err(err("rewind"))?;
    let mut out = tokio::fs::File::create(path).await.map_err(err("create"))?;
    tokio::io::copy(data, &mut out)
        .await
        .map_err(err("write"))?;
    out.sync_all().await.map_err(err("sync"))
}

pub(super) async fn open_snapshot(path: PathBuf) -> Result<tokio::fs::File> {
    tokio::fs::File::open(&path)
        .await
        .map_err(|source| Error::SnapshotIo {
            verb: "open",
            path,
            source,
        })
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let db = self.db.clone();
        let dir = self.snapshot_dir.clone();
        let err = to_raft(ErrorSubject::Snapshot(None), ErrorVerb::Write);
        let timer = self.metrics.snapshot_build_seconds.start_timer();
        let record = blocking(move || build_snapshot_file(&db, &dir))
            .await
            .map_err(err)?;
        timer.observe_duration();
        let file = open_snapshot(self.snapshot_dir.join(&record.file))
            .await
            .map_err(to_raft(ErrorSubject::Snapshot(None), ErrorVerb::Read))?;
        self.metrics.snapshots.inc();
        if let Ok(meta) = file.metadata().await {
            self.metrics
                .snapshot_size_bytes
                .set(i64::try_from(meta.len()).unwrap_or(i64::MAX));
        }
        tracing::info!(snapshot_id = %record.meta.snapshot_id, "built snapshot");
        Ok(Snapshot {
            meta: record.meta,
            snapshot: Box::new(file),
        })
    }
}
