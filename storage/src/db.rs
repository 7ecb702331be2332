//! The data dir: its lock, its RocksDB database, column families, schema
//! version and node identity.
//!
//! Layout of a data dir:
//! - `mpreg.lock`: held (flock) by the one daemon that owns the dir;
//! - `db/`: RocksDB with the column families in [`ColumnFamilies`];
//! - `snapshots/`: raft snapshot files (see [`crate::snapshot`]).
//!
//! Opening refuses a dir in use, a non-empty dir that is not ours, a damaged
//! database and one written by a newer on-disk format, each with a message
//! that names the problem.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options,
    ReadOptions, ReadTier, WriteBatch, WriteOptions,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Error, Result};
use crate::views::View;

/// On-disk schema version written by this binary. Bump it (and add a step in
/// `migrations/`) for any change older binaries could misread.
pub const SCHEMA_VERSION: u32 = 1;

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_SNAPSHOT: &str = "snapshot";

/// Keys of the `meta` column family.
pub(crate) mod meta_key {
    pub const SCHEMA_VERSION: &[u8] = b"schema_version";
    pub const IDENTITY: &[u8] = b"identity";
    pub const VOTE: &[u8] = b"vote";
    pub const COMMITTED: &[u8] = b"committed";
    pub const PURGED: &[u8] = b"purged";
    pub const APPLIED: &[u8] = b"applied";
}

/// Key of the current snapshot record in the `snapshot` column family.
pub(crate) const SNAPSHOT_CURRENT: &[u8] = b"current";

/// Names of every column family this binary uses.
pub struct ColumnFamilies;

impl ColumnFamilies {
    pub fn names() -> Vec<&'static str> {
        let mut names = vec![CF_LOG, CF_META, CF_SNAPSHOT];
        names.extend(View::ALL.iter().map(|v| v.cf_name()));
        names
    }
}

/// Who this data dir belongs to; fixed at first start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: String,
    pub cluster_id: String,
}

/// How to open a data dir.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Exclusive owner: takes the lock, creates a new dir, writes.
    ReadWrite,
    /// Inspection of a (usually stopped) node: no lock, never writes.
    ReadOnly,
}

/// An open data dir. Dropping it releases the lock.
pub struct DataDir {
    path: PathBuf,
    db: Arc<DB>,
    /// Held for the life of the process that owns the dir.
    _lock: Option<File>,
}

const LOCK_FILE: &str = "mpreg.lock";
const DB_DIR: &str = "db";
const SNAPSHOT_DIR: &str = "snapshots";
/// Where [`DataDir::set_aside_damaged`] moves a damaged store:
/// `damaged-<unix seconds>` inside the data dir.
const DAMAGED_PREFIX: &str = "damaged-";

fn io_err<'a>(verb: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::DataDirIo {
        verb,
        path: path.to_path_buf(),
        source,
    }
}

fn take_lock(dir: &Path) -> Result<File> {
    let lock_path = dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err("create the lock file in", dir))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(Error::DataDirInUse {
            path: dir.to_path_buf(),
            lock: lock_path,
        }),
        Err(TryLockError::Error(e)) => Err(io_err("lock", dir)(e)),
    }
}

/// Names of entries in `dir` that are not part of an mpreg data dir.
fn foreign_entries(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err("list", dir))? {
        let name = entry
            .map_err(io_err("list", dir))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if ![LOCK_FILE, DB_DIR, SNAPSHOT_DIR].contains(&name.as_str())
            && !name.starts_with(DAMAGED_PREFIX)
        {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn db_options(create: bool) -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(create);
    // Views added by a newer binary (e.g. the queue views) are created when
    // an older dir is opened for writing.
    opts.create_missing_column_families(true);
    opts.set_keep_log_file_num(4);
    // A torn tail (never synced, so never acknowledged) is dropped; damage
    // anywhere before it is an open error. RocksDB's default
    // (point-in-time) would stop replay at the damage and open anyway,
    // losing every acknowledged write after it without a word.
    opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords);
    opts
}

impl DataDir {
    /// Moves everything in the data dir at `path` (the database, the
    /// snapshots, files the daemon keeps beside them) into
    /// `path/damaged-<unix seconds>`, kept for inspection and never
    /// deleted, so the dir opens empty. Takes the dir's lock while it moves
    /// them. Returns where they went.
    pub fn set_aside_damaged(path: &Path) -> Result<PathBuf> {
        let _lock = take_lock(path)?;
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let aside = path.join(format!("{DAMAGED_PREFIX}{}", since_epoch.as_secs()));
        std::fs::create_dir(&aside).map_err(io_err("create", &aside))?;
        for entry in std::fs::read_dir(path).map_err(io_err("list", path))? {
            let name = entry.map_err(io_err("list", path))?.file_name();
            let keep = name == LOCK_FILE || name.to_string_lossy().starts_with(DAMAGED_PREFIX);
            if !keep {
                let from = path.join(&name);
                std::fs::rename(&from, aside.join(&name)).map_err(io_err("move aside", &from))?;
            }
        }
        File::open(path)
            .and_then(|dir| dir.sync_all())
            .map_err(io_err("sync", path))?;
        Ok(aside)
    }

    /// Opens (or, in read-write mode, creates) the data dir at `path`.
    pub fn open(path: &Path, mode: OpenMode) -> Result<DataDir> {
        if mode == OpenMode::ReadWrite {
            std::fs::create_dir_all(path).map_err(io_err("create", path))?;
        }
        if !path.is_dir() {
            return Err(Error::NotADataDir {
                path: path.to_path_buf(),
                found: "no such directory".to_string(),
            });
        }
        let lock = match mode {
            OpenMode::ReadWrite => Some(take_lock(path)?),
            OpenMode::ReadOnly => None,
        };
        let db_path = path.join(DB_DIR);
        let exists = db_path.exists();
        if !exists {
            let foreign = foreign_entries(path)?;
            if !foreign.is_empty() || mode == OpenMode::ReadOnly {
                let found = if foreign.is_empty() {
                    "empty directory".to_string()
                } else {
                    format!(
                        "found {}",
                        foreign
                            .iter()
                            .take(5)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                return Err(Error::NotADataDir {
                    path: path.to_path_buf(),
                    found,
                });
            }
        }
        let db = open_db(&db_path, mode, !exists)?;
        let dir = DataDir {
            path: path.to_path_buf(),
            db: Arc::new(db),
            _lock: lock,
        };
        if exists {
            dir.check_schema()?;
        } else {
            dir.put_meta_synced(meta_key::SCHEMA_VERSION, &SCHEMA_VERSION)?;
        }
        if mode == OpenMode::ReadWrite {
            std::fs::create_dir_all(dir.snapshot_dir())
                .map_err(io_err("create the snapshot folder of", path))?;
        }
        Ok(dir)
    }

    fn check_schema(&self) -> Result<()> {
        let found: Option<u32> = self.get_meta(meta_key::SCHEMA_VERSION)?;
        match found {
            None => Err(Error::MissingSchema {
                path: self.path.clone(),
            }),
            Some(v) if v > SCHEMA_VERSION => Err(Error::NewerSchema {
                path: self.path.clone(),
                found: v,
                supported: SCHEMA_VERSION,
            }),
            Some(_) => Ok(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    pub(crate) fn snapshot_dir(&self) -> PathBuf {
        self.path.join(SNAPSHOT_DIR)
    }

    /// The identity stored at first start, if any.
    pub fn identity(&self) -> Result<Option<Identity>> {
        self.get_meta(meta_key::IDENTITY)
    }

    /// Records the identity of a new data dir.
    pub fn set_identity(&self, identity: &Identity) -> Result<()> {
        self.put_meta_synced(meta_key::IDENTITY, identity)
    }

    /// The schema version recorded in the dir.
    pub fn schema_version(&self) -> Result<Option<u32>> {
        self.get_meta(meta_key::SCHEMA_VERSION)
    }

    /// Overwrites the recorded schema version. Only migrations and tests that
    /// prove version checks use this.
    pub fn set_schema_version(&self, version: u32) -> Result<()> {
        self.put_meta_synced(meta_key::SCHEMA_VERSION, &version)
    }

    /// Writes every column family's memtable to SST files, so the next
    /// open (the node's restart, an offline `replay`) reads them instead of
    /// replaying the write-ahead log. For a clean shutdown: after a crash
    /// the WAL replay is what recovers unflushed writes.
    pub fn flush_memtables(&self) -> Result<()> {
        let families = ColumnFamilies::names()
            .into_iter()
            .map(|name| cf(&self.db, name))
            .collect::<Result<Vec<_>>>()?;
        self.db
            .flush_cfs_opt(&families, &rocksdb::FlushOptions::default())
            .map_err(|e| Error::rocks("flush", "memtables", e))
    }

    pub(crate) fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        get_decoded(&self.db, CF_META, key)
    }

    fn put_meta_synced<T: Serialize>(&self, key: &[u8], value: &T) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            cf(&self.db, CF_META)?,
            key,
            codec::encode(&String::from_utf8_lossy(key), value)?,
        );
        write_synced(&self.db, batch, "meta")
    }
}

/// Options of the family `name`. The log is read by index, in order; every
/// other family is read by key, and most reads of an apply look up a key
/// that is not there yet (a new cache key, a new message): whole-key bloom
/// filters, in the SST files and in the memtables, answer those misses
/// without searching the files' indexes or the memtables' skip lists.
/// Filters belong to each SST file, so files written before them are read
/// as they are. Read-only opens use the same options, so their lookups use
/// the filters too.
fn family_options(name: &str) -> Options {
    let mut opts = Options::default();
    if name != CF_LOG {
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        opts.set_memtable_whole_key_filtering(true);
        opts.set_memtable_prefix_bloom_ratio(0.02);
    }
    opts
}

fn open_db(db_path: &Path, mode: OpenMode, create: bool) -> Result<DB> {
    let open_err = |source| Error::Open {
        path: db_path.to_path_buf(),
        source,
    };
    let opts = db_options(create);
    // Open every family the dir has, known or not, so a newer dir is
    // reported by its schema version instead of a RocksDB family error.
    let mut names: Vec<String> = if create {
        Vec::new()
    } else {
        DB::list_cf(&opts, db_path).map_err(open_err)?
    };
    for name in ColumnFamilies::names() {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    let descriptors = |names: &[String]| {
        names
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(n, family_options(n)))
            .collect::<Vec<_>>()
    };
    match mode {
        OpenMode::ReadWrite => {
            DB::open_cf_descriptors(&opts, db_path, descriptors(&names)).map_err(open_err)
        }
        OpenMode::ReadOnly => {
            // A view this dir's binary did not have yet is simply empty.
            let existing = DB::list_cf(&opts, db_path).map_err(open_err)?;
            if let Some(name) = [CF_LOG, CF_META, CF_SNAPSHOT]
                .into_iter()
                .find(|n| !existing.iter().any(|e| e == n))
            {
                return Err(Error::MissingSchema {
                    path: db_path.join(name),
                });
            }
            DB::open_cf_descriptors_read_only(&opts, db_path, descriptors(&existing), false)
                .map_err(open_err)
        }
    }
}

/// The handle of a column family this binary always opens.
pub(crate) fn cf<'a>(db: &'a DB, name: &'static str) -> Result<&'a ColumnFamily> {
    db.cf_handle(name).ok_or_else(|| Error::Decode {
        what: "column family list".to_string(),
        reason: format!("column family {name} is not open"),
    })
}

pub(crate) fn get_decoded<T: DeserializeOwned>(
    db: &DB,
    family: &'static str,
    key: &[u8],
) -> Result<Option<T>> {
    let what = || format!("{family}/{}", String::from_utf8_lossy(key));
    match db
        .get_cf(cf(db, family)?, key)
        .map_err(|e| Error::rocks("read", what(), e))?
    {
        Some(bytes) => Ok(Some(codec::decode(&what(), &bytes)?)),
        None => Ok(None),
    }
}

/// Writes a batch and syncs the WAL before returning.
pub(crate) fn write_synced(db: &DB, batch: WriteBatch, what: &str) -> Result<()> {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts)
        .map_err(|e| Error::rocks("write synced", what, e))
}

/// Up to `limit` rows of one view whose key starts with `prefix` and is not
/// below `from`, in key order.
pub(crate) fn scan_from(
    db: &DB,
    view: View,
    prefix: &[u8],
    from: &[u8],
    limit: usize,
    wait: Wait,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let family = cf(db, view.cf_name())?;
    let mut rows = Vec::new();
    let start = IteratorMode::From(from, Direction::Forward);
    for item in db.iterator_cf_opt(family, wait.read_options(), start) {
        if rows.len() >= limit {
            break;
        }
        let (key, value) = item.map_err(|e| Error::rocks("scan", view.cf_name(), e))?;
        if !key.starts_with(prefix) {
            break;
        }
        rows.push((key.to_vec(), value.to_vec()));
    }
    Ok(rows)
}

/// Runs RocksDB work on the blocking pool, off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

/// Whether RocksDB work may wait for the disk or a write stall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Reads answer from the memtables and the block cache only, and writes
    /// refuse to be slowed down: where either would wait, RocksDB answers
    /// `Incomplete` instead ([`Error::is_incomplete`]).
    Never,
    /// Plain reads and writes, for the blocking pool.
    Allowed,
}

impl Wait {
    pub(crate) fn read_options(self) -> ReadOptions {
        let mut opts = ReadOptions::default();
        if self == Wait::Never {
            opts.set_read_tier(ReadTier::BlockCache);
        }
        opts
    }

    pub(crate) fn write_options(self) -> WriteOptions {
        let mut opts = WriteOptions::default();
        opts.set_no_slowdown(self == Wait::Never);
        opts
    }
}

/// Most events an append or an apply runs on the raft task itself, its
/// other tasks left in place (when RocksDB can do it without waiting): a
/// single writer's entry, not a large group commit or a catch-up.
pub(crate) const INLINE_EVENTS: usize = 64;

/// Runs RocksDB work over `events` events where it costs least. At most
/// [`INLINE_EVENTS`]: on this thread with `work(Wait::Never)` first, and
/// only if RocksDB answered `Incomplete` (a read that needs the disk, a
/// write that would stall) again with [`Wait::Allowed`] through
/// [`may_wait`]; a small write or apply costs less than moving the
/// reactor's other tasks to another thread. More: through [`may_wait`].
/// `work` must be safe to run again after an `Incomplete`: it changes
/// nothing before its RocksDB calls succeed.
pub(crate) async fn without_waiting<T: Send + 'static>(
    events: usize,
    work: impl Fn(Wait) -> Result<T> + Send + 'static,
) -> Result<T> {
    if events <= INLINE_EVENTS {
        match work(Wait::Never) {
            Err(e) if e.is_incomplete() => {}
            done => return done,
        }
    }
    may_wait(move || work(Wait::Allowed)).await
}

/// Runs RocksDB work that may wait (a WAL sync, a write stall, a read from
/// disk) on this thread without holding up the async reactor: on the
/// multi-thread runtime (the daemon's) the worker's other tasks move to
/// another thread while it runs (`block_in_place`), so the task that asked
/// goes on with the answer without a hand-off to another thread and back.
/// Elsewhere (a current-thread runtime, as in some tests) it runs on the
/// blocking pool.
pub(crate) async fn may_wait<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let multi_thread = tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
        runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
    });
    if multi_thread {
        tokio::task::block_in_place(work)
    } else {
        blocking(work).await
    }
}
