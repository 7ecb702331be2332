//! Wall clocks that jump: a daemon runs with libfaketime preloaded, and
//! the offset it adds to the wall clock is read from a file the test
//! rewrites (`+1h`, `-1h`, `+0`). The monotonic clock is left alone, as a
//! real clock step (NTP, an operator, a VM resumed) leaves it.

use std::path::Path;

use anyhow::{Context, Result};

const FAKETIME: &str = "faketime (Debian package faketime; scripts/setup --test-tools installs it)";

/// The libfaketime shared object Debian installs.
fn libfaketime() -> Result<String> {
    let found = std::fs::read_dir("/usr/lib")?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path().join("faketime/libfaketime.so.1"))
        .find(|path| path.exists())
        .context(FAKETIME)?;
    Ok(found.display().to_string())
}

/// The wrapper (for [`crate::Daemon::start_under`]) that runs a daemon
/// whose wall clock is off by what `offset_file` says; the file is
/// created with no offset.
pub fn wrapper(offset_file: &Path) -> Result<Vec<String>> {
    jump(offset_file, "+0")?;
    wrapper_keeping(offset_file)
}

/// Like [`wrapper`], keeping the offset `offset_file` holds (a restart of
/// a daemon whose clock is off).
pub fn wrapper_keeping(offset_file: &Path) -> Result<Vec<String>> {
    Ok(vec![
        "env".to_string(),
        format!("LD_PRELOAD={}", libfaketime()?),
        format!("FAKETIME_TIMESTAMP_FILE={}", offset_file.display()),
        "FAKETIME_NO_CACHE=1".to_string(),
        "FAKETIME_DONT_FAKE_MONOTONIC=1".to_string(),
    ])
}

/// Sets the wall clock of the daemons reading `offset_file` to real time
/// plus `offset` (libfaketime's relative form: `+1h`, `-90m`, `+0`).
pub fn jump(offset_file: &Path, offset: &str) -> Result<()> {
    std::fs::write(offset_file, format!("{offset}\n"))
        .with_context(|| format!("write {}", offset_file.display()))
}
