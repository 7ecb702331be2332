//! The free-space guard: a node refuses new writes while the filesystem of
//! its data dir has less than `min_free_disk_bytes` free, and takes them
//! again as soon as space returns. Without it a full disk fails an append
//! mid-write, which stops raft and the node (see `Running::wait`).

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a reading of the free space is trusted.
const CHECK_EVERY: Duration = Duration::from_millis(100);

pub(crate) struct DiskSpace {
    path: PathBuf,
    min_free: u64,
    /// The last reading: when, and the bytes free.
    last: Mutex<Option<(Instant, u64)>>,
}

impl DiskSpace {
    /// A guard for the data dir at `path`; `min_free` 0 turns it off.
    pub(crate) fn new(path: PathBuf, min_free: u64) -> Self {
        DiskSpace {
            path,
            min_free,
            last: Mutex::new(None),
        }
    }

    /// Why a write must wait, when the data dir's filesystem is short of
    /// space. A filesystem that cannot be read never refuses a write: the
    /// append itself then says what is wrong.
    pub(crate) fn shortage(&self) -> Option<String> {
        if self.min_free == 0 {
            return None;
        }
        let free = self.free_bytes()?;
        (free < self.min_free).then(|| {
            format!(
                "disk full: the data dir's filesystem has {free} bytes free, less than min_free_disk_bytes ({}); writes resume when space is freed",
                self.min_free
            )
        })
    }

    fn free_bytes(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, free)) = *last
            && at.elapsed() < CHECK_EVERY
        {
            return Some(free);
        }
        match rustix::fs::statvfs(&self.path) {
            Ok(stat) => {
                let free = stat.f_bavail.saturating_mul(stat.f_frsize);
                *last = Some((Instant::now(), free));
                Some(free)
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the free space of the data dir's filesystem");
                None
            }
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn refuses_below_the_minimum_and_names_both_numbers() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(DiskSpace::new(dir.path().into(), 0).shortage(), None);
        assert_eq!(DiskSpace::new(dir.path().into(), 1).shortage(), None);
        let refusal = DiskSpace::new(dir.path().into(), u64::MAX)
            .shortage()
            .unwrap();
        assert!(
            refusal.starts_with("disk full: the data dir's filesystem has "),
            "{refusal}"
        );
        assert!(
            refusal.contains(&format!("min_free_disk_bytes ({})", u64::MAX)),
            "{refusal}"
        );
    }
}
