//! Errors of the storage crate: one variant per failed operation, with the
//! data dir, column family or log index a person needs to act on it.

use std::path::PathBuf;

/// Result of storage operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("data dir {path} is in use by another mpreg-daemon (lock file {lock} is held)")]
    DataDirInUse { path: PathBuf, lock: PathBuf },

    #[error(
        "{path} is not an mpreg data dir: it is not empty and holds no mpreg database ({found}); \
         pass an empty or new directory, or the data dir of an mpreg node"
    )]
    NotADataDir { path: PathBuf, found: String },

    #[error(
        "data dir {path} was written by a newer mpreg on-disk format (version {found}); \
         this binary reads versions up to {supported}: upgrade mpreg-daemon"
    )]
    NewerSchema {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    #[error("data dir {path} has no schema version: the database is damaged or not an mpreg one")]
    MissingSchema { path: PathBuf },

    #[error("failed to {verb} data dir {path}")]
    DataDirIo {
        verb: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("failed to open the RocksDB database in {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },

    /// RocksDB's message is part of this one: it names a damaged file and
    /// the offset, which every log line and reply must show.
    #[error("failed to {verb} in RocksDB ({what}): {cause}")]
    Rocks {
        verb: &'static str,
        what: String,
        cause: rocksdb::Error,
    },

    #[error(
        "failed to decode {what}: unknown format version {version} (this binary knows {known})"
    )]
    UnknownFormat {
        what: String,
        version: u8,
        known: u8,
    },

    #[error("failed to decode {what}: {reason}")]
    Decode { what: String, reason: String },

    #[error("failed to encode {what}: {reason}")]
    Encode { what: String, reason: String },

    #[error("snapshot file {path} is invalid: {reason}")]
    BadSnapshot { path: PathBuf, reason: String },

    #[error("failed to {verb} snapshot file {path}")]
    SnapshotIo {
        verb: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the data dir belongs to node {stored}, not {requested}")]
    NodeIdMismatch { stored: String, requested: String },

    #[error("the data dir belongs to cluster {stored}, not {requested}")]
    ClusterIdMismatch { stored: String, requested: String },

    #[error("log entry {index} is missing from the retained log (purged up to {purged:?})")]
    MissingLogEntry { index: u64, purged: Option<u64> },

    #[error("storage task failed: {0}")]
    Task(String),
}

impl Error {
    /// Whether this is damage to the files of the data dir (RocksDB found
    /// a checksum mismatch, a torn or truncated file, a missing schema
    /// version), as opposed to a dir in use, of another node, or newer.
    pub fn is_damage(&self) -> bool {
        let corrupt = |e: &rocksdb::Error| e.kind() == rocksdb::ErrorKind::Corruption;
        match self {
            Error::Open { source, .. } => corrupt(source),
            Error::Rocks { cause, .. } => corrupt(cause),
            Error::MissingSchema { .. } => true,
            _ => false,
        }
    }

    /// Whether RocksDB declined to wait ([`crate::db::Wait::Never`]):
    /// nothing was read or written, and the same work may run again.
    pub(crate) fn is_incomplete(&self) -> bool {
        matches!(self, Error::Rocks { cause, .. } if cause.kind() == rocksdb::ErrorKind::Incomplete)
    }

    pub(crate) fn rocks(
        verb: &'static str,
        what: impl Into<String>,
        source: rocksdb::Error,
    ) -> Self {
        Error::Rocks {
            verb,
            what: what.into(),
            cause: source,
        }
    }
}
