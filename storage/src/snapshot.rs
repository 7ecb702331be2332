//! Snapshot files: a consistent copy of every view at one log index.
//!
//! Format (all integers big-endian):
//! - magic `MPREGSNP`;
//! - header length `u32` + header ([`crate::codec`] of [`SnapshotHeader`]);
//! - rows: view tag `u8` (never 0), key length `u32`, key, value length
//!   `u32`, value;
//! - end: tag `0`, row count `u64`, then the xxh3-64 checksum of every
//!   byte before it.
//!
//! A file is verified before it is installed: magic, header, known view
//! tags, row count, checksum, and the digest recomputed from its rows.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::codec;
use crate::error::{Error, Result};
use crate::raft_types::typ::{LogId, StoredMembership};
use crate::views::{Digest, View};

const MAGIC: &[u8; 8] = b"MPREGSNP";
const END_TAG: u8 = 0;
/// Largest key or value a snapshot may hold; guards reads of damaged files.
const MAX_FIELD: u32 = 256 * 1024 * 1024;

/// What a snapshot covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    /// `views_digest` of the rows in the file.
    pub digest: u128,
}

/// Writes a snapshot file row by row, hashing as it goes.
pub struct SnapshotWriter {
    out: BufWriter<File>,
    hash: Xxh3,
    path: std::path::PathBuf,
    rows: u64,
}

fn io<'a>(verb: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::SnapshotIo {
        verb,
        path: path.to_path_buf(),
        source,
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadSnapshot {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl SnapshotWriter {
    pub fn create(path: &Path, header: &SnapshotHeader) -> Result<Self> {
        let file = File::create(path).map_err(io("create", path))?;
        let mut writer = SnapshotWriter {
            out: BufWriter::new(file),
            hash: Xxh3::new(),
            path: path.to_path_buf(),
            rows: 0,
        };
        let header = codec::encode("snapshot header", header)?;
        writer.write(MAGIC)?;
        writer.write(&(header.len() as u32).to_be_bytes())?;
        writer.write(&header)?;
        Ok(writer)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hash.update(bytes);
        self.out.write_all(bytes).map_err(io("write", &self.path))
    }

    pub fn row(&mut self, view: View, key: &[u8], value: &[u8]) -> Result<()> {
        self.write(&[view.tag()])?;
        self.write(&(key.len() as u32).to_be_bytes())?;
        self.write(key)?;
        self.write(&(value.len() as u32).to_be_bytes())?;
        self.rows += 1;
        self.write(value)
    }

    /// Writes the end marker and checksum and syncs the file to disk.
    pub fn finish(mut self) -> Result<()> {
        self.write(&[END_TAG])?;
        let rows = self.rows;
        self.write(&rows.to_be_bytes())?;
        let sum = self.hash.digest();
        self.out
            .write_all(&sum.to_be_bytes())
            .map_err(io("write", &self.path))?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| io("flush", &self.path)(e.into_error()))?;
        file.sync_all().map_err(io("sync", &self.path))
    }
}

struct HashingReader<'a> {
    inner: BufReader<File>,
    hash: Xxh3,
    path: &'a Path,
    /// Bytes of the file not read yet: no field may claim more.
    remaining: u64,
}

impl HashingReader<'_> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.inner
            .read_exact(buf)
            .map_err(|e| bad(self.path, format!("truncated file: {e}")))?;
        self.remaining = self.remaining.saturating_sub(buf.len() as u64);
        self.hash.update(buf);
        Ok(())
    }

    fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn field(&mut self, what: &str) -> Result<Vec<u8>> {
        let len = self.u32()?;
        if len > MAX_FIELD || u64::from(len) > self.remaining {
            return Err(bad(
                self.path,
                format!(
                    "{what} length {len} is larger than the {} bytes left in the file",
                    self.remaining
                ),
            ));
        }
        let mut buf = vec![0u8; len as usize];
        self.exact(&mut buf)?;
        Ok(buf)
    }
}

/// Checks a snapshot file's checksum (a flipped bit or a cut anywhere in
/// it is found) and returns its header, without decoding its rows: what a
/// node checks before it serves its current snapshot. [`read`] checks the
/// rows as well, when a snapshot is installed.
pub fn verify(path: &Path) -> Result<SnapshotHeader> {
    let file = File::open(path).map_err(io("open", path))?;
    let len = file.metadata().map_err(io("stat", path))?.len();
    let hashed = len
        .checked_sub(8)
        .ok_or_else(|| bad(path, "truncated file: shorter than its checksum"))?;
    let mut r = HashingReader {
        inner: BufReader::with_capacity(1 << 20, file),
        hash: Xxh3::new(),
        path,
        remaining: hashed,
    };
    let mut magic = [0u8; 8];
    r.exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(bad(path, "not a snapshot file (bad magic)"));
    }
    let header: SnapshotHeader = codec::decode("snapshot header", &r.field("header")?)?;
    let mut chunk = vec![0u8; 1 << 20];
    while r.remaining > 0 {
        let n = chunk
            .len()
            .min(usize::try_from(r.remaining).unwrap_or(usize::MAX));
        r.exact(&mut chunk[..n])?;
    }
    let mut sum = [0u8; 8];
    r.inner
        .read_exact(&mut sum)
        .map_err(|e| bad(path, format!("missing checksum: {e}")))?;
    if u64::from_be_bytes(sum) != r.hash.digest() {
        return Err(bad(path, "checksum mismatch"));
    }
    Ok(header)
}

/// Reads and verifies a snapshot file, handing every row to `on_row`.
/// Rows are only trustworthy once this returns `Ok`.
pub fn read(
    path: &Path,
    mut on_row: impl FnMut(View, Vec<u8>, Vec<u8>) -> Result<()>,
) -> Result<SnapshotHeader> {
    let file = File::open(path).map_err(io("open", path))?;
    let remaining = file.metadata().map_err(io("stat", path))?.len();
    let mut r = HashingReader {
        inner: BufReader::new(file),
        hash: Xxh3::new(),
        path,
        remaining,
    };
    let mut magic = [0u8; 8];
    r.exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(bad(path, "not a snapshot file (bad magic)"));
    }
    let header_bytes = r.field("header")?;
    let header: SnapshotHeader = codec::decode("snapshot header", &header_bytes)?;
    let mut digest = Digest::default();
    let mut rows = 0u64;
    loop {
        let mut tag = [0u8; 1];
        r.exact(&mut tag)?;
        if tag[0] == END_TAG {
            let mut count = [0u8; 8];
            r.exact(&mut count)?;
            if u64::from_be_bytes(count) != rows {
                return Err(bad(
                    path,
                    format!("{rows} rows, the file says {}", u64::from_be_bytes(count)),
                ));
            }
            break;
        }
        let view = View::from_tag(tag[0])
            .ok_or_else(|| bad(path, format!("unknown view tag {}", tag[0])))?;
        let key = r.field("key")?;
        let value = r.field("value")?;
        digest.add(view, &key, &value);
        rows += 1;
        on_row(view, key, value)?;
    }
    let expected = r.hash.digest();
    let mut sum = [0u8; 8];
    r.inner
        .read_exact(&mut sum)
        .map_err(|e| bad(path, format!("missing checksum: {e}")))?;
    if u64::from_be_bytes(sum) != expected {
        return Err(bad(path, "checksum mismatch"));
    }
    if r.inner.read(&mut [0u8; 1]).map_err(io("read", path))? != 0 {
        return Err(bad(path, "trailing bytes after the checksum"));
    }
    if digest.value() != header.digest {
        return Err(bad(path, "rows do not match the digest in the header"));
    }
    Ok(header)
}

/// Checks a snapshot file's checksum while it arrives in chunks, so a
/// transfer whose bytes are damaged is refused before it reaches raft: a
/// follower's failed install is fatal to openraft, a refused chunk only
/// makes the sender try again later with its current snapshot (which it
/// verifies, and rebuilds when damaged, before sending).
#[derive(Default)]
pub struct ArrivingSnapshot {
    id: String,
    /// Bytes hashed or held in `tail` so far.
    received: u64,
    hash: Xxh3,
    /// The last (up to) 8 bytes seen: the checksum once the file is whole.
    tail: Vec<u8>,
    state: Arrival,
}

#[derive(Default, PartialEq, Eq)]
enum Arrival {
    #[default]
    Checking,
    /// Chunks came out of order (a resend): the install verifies instead.
    Unverifiable,
    /// The whole file arrived and its checksum did not match.
    Damaged,
}

impl ArrivingSnapshot {
    /// Takes the chunk at `offset` of snapshot `id` (`done`: the last);
    /// `Err` names the damage when the file is complete and wrong, and
    /// for every later chunk of it.
    pub fn chunk(
        &mut self,
        id: &str,
        offset: u64,
        data: &[u8],
        done: bool,
    ) -> std::result::Result<(), String> {
        if offset == 0 {
            *self = ArrivingSnapshot {
                id: id.to_string(),
                ..ArrivingSnapshot::default()
            };
        } else if self.id != id {
            self.id = id.to_string();
            self.state = Arrival::Unverifiable;
        }
        let damaged = || {
            format!(
                "snapshot {id} arrived damaged (its checksum does not match its bytes); not installed"
            )
        };
        match self.state {
            Arrival::Damaged => return Err(damaged()),
            Arrival::Unverifiable => return Ok(()),
            Arrival::Checking if offset != self.received => {
                self.state = Arrival::Unverifiable;
                return Ok(());
            }
            Arrival::Checking => {}
        }
        self.received += data.len() as u64;
        let held = self.tail.len() + data.len();
        let hash_now = held.saturating_sub(8);
        let from_tail = hash_now.min(self.tail.len());
        self.hash.update(&self.tail[..from_tail]);
        self.hash.update(&data[..hash_now - from_tail]);
        self.tail.drain(..from_tail);
        self.tail.extend_from_slice(&data[hash_now - from_tail..]);
        if done {
            let sum: Option<[u8; 8]> = self.tail.as_slice().try_into().ok();
            if sum.map(u64::from_be_bytes) != Some(self.hash.digest()) {
                self.state = Arrival::Damaged;
                return Err(damaged());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn header(digest: u128) -> SnapshotHeader {
        SnapshotHeader {
            last_applied: None,
            membership: StoredMembership::default(),
            digest,
        }
    }

    fn write_sample(path: &Path) {
        let mut d = Digest::default();
        d.add(View::Nodes, b"n1", b"v1");
        d.add(View::Routes, b"r1", b"v2");
        let mut w = SnapshotWriter::create(path, &header(d.value())).unwrap();
        w.row(View::Nodes, b"n1", b"v1").unwrap();
        w.row(View::Routes, b"r1", b"v2").unwrap();
        w.finish().unwrap();
    }

    #[test]
    fn roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        write_sample(&path);
        let mut rows = Vec::new();
        let h = read(&path, |v, k, val| {
            rows.push((v, k, val));
            Ok(())
        })
        .unwrap();
        assert_eq!(h.digest, {
            let mut d = Digest::default();
            d.add(View::Nodes, b"n1", b"v1");
            d.add(View::Routes, b"r1", b"v2");
            d.value()
        });
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1], (View::Routes, b"r1".to_vec(), b"v2".to_vec()));
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        write_sample(&path);
        let good = std::fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bytes = good.clone();
            bytes[i] ^= 0x40;
            std::fs::write(&path, &bytes).unwrap();
            assert!(
                read(&path, |_, _, _| Ok(())).is_err(),
                "flip at byte {i} not detected"
            );
            assert!(
                verify(&path).is_err(),
                "verify: flip at byte {i} not detected"
            );
        }
        for cut in [3, 8, good.len() / 2, good.len()] {
            std::fs::write(&path, &good[..good.len() - cut]).unwrap();
            assert!(read(&path, |_, _, _| Ok(())).is_err());
            assert!(
                verify(&path).is_err(),
                "verify: cut of {cut} bytes not detected"
            );
        }
        std::fs::write(&path, &good).unwrap();
        assert_eq!(
            verify(&path).unwrap(),
            read(&path, |_, _, _| Ok(())).unwrap()
        );
    }

    /// The bytes of a valid snapshot file with `rows` rows.
    fn file_bytes(rows: u8) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        let mut w = SnapshotWriter::create(&path, &header(0)).unwrap();
        for i in 0..rows {
            w.row(View::Nodes, &[i], &[i; 100]).unwrap();
        }
        w.finish().unwrap();
        std::fs::read(&path).unwrap()
    }

    fn send(
        arriving: &mut ArrivingSnapshot,
        id: &str,
        bytes: &[u8],
        chunk: usize,
    ) -> std::result::Result<(), String> {
        let chunks: Vec<&[u8]> = bytes.chunks(chunk).collect();
        let mut offset = 0;
        for (n, data) in chunks.iter().enumerate() {
            arriving.chunk(id, offset, data, n + 1 == chunks.len())?;
            offset += data.len() as u64;
        }
        Ok(())
    }

    #[test]
    fn an_arriving_snapshot_passes_whole_and_is_refused_damaged_in_any_chunking() {
        let good = file_bytes(50);
        for chunk in [1, 3, 7, 8, 9, 100, good.len()] {
            let mut arriving = ArrivingSnapshot::default();
            send(&mut arriving, "a", &good, chunk).unwrap();
            let mut bad = good.clone();
            bad[good.len() / 3] ^= 0x40;
            let err = send(&mut arriving, "b", &bad, chunk).unwrap_err();
            assert!(err.contains("snapshot b arrived damaged"), "{err}");
            // A resend of its last chunk is refused too; a new transfer
            // from offset 0 is checked afresh.
            let last = (bad.len() - 1) / chunk * chunk;
            assert!(
                arriving
                    .chunk("b", last as u64, &bad[last..], true)
                    .is_err()
            );
            send(&mut arriving, "c", &good, chunk).unwrap();
        }
    }
}
