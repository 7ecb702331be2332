//! A power cut that loses everything not synced, emulated from a syscall
//! trace (Jepsen's lazyfs idea without FUSE). The daemon runs under
//! strace, which records every open, write, truncation, rename and sync of
//! its files; after `kill -9`, [`drop_unsynced`] cuts each file of the data
//! dir back to the length it had at its last successful `fsync` or
//! `fdatasync`, and a file never synced to nothing. Directory operations
//! (creates, renames, removals) are kept as they happened. This models the
//! page cache of files written by appending, as RocksDB's and ours are; a
//! write in the middle of a synced file is not undone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The syscalls the trace records.
const TRACED: &str = "trace=openat,write,writev,pwrite64,pwritev,pwritev2,ftruncate,\
                      fsync,fdatasync,rename,renameat,renameat2";

/// The wrapper for [`crate::Daemon::start_under`] that records the trace
/// into `trace`. `-D` keeps the daemon the process the test started, so
/// `kill -9` reaches the daemon and not strace.
pub fn strace_wrapper(trace: &Path) -> Vec<String> {
    [
        "strace",
        "-D",
        "-f",
        "--seccomp-bpf",
        "-q",
        "-y",
        "-s",
        "0",
        "-e",
        TRACED,
        "-o",
    ]
    .into_iter()
    .map(str::to_string)
    .chain([trace.display().to_string()])
    .collect()
}

/// What [`drop_unsynced`] cut.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cut {
    /// Files that lost a tail.
    pub files: usize,
    /// Bytes they lost together.
    pub bytes: u64,
    /// Files that were synced at least once.
    pub synced_files: usize,
}

/// Waits for the tracer of a killed daemon to write the rest of `trace`
/// and exit, then cuts every file under `data_dir` the trace saw written
/// back to its synced length. The daemon must have started on an empty
/// data dir under [`strace_wrapper`], so the trace saw every file born; a
/// trace that saw no file of the data dir synced is an error.
pub fn drop_unsynced(trace: &Path, data_dir: &Path) -> Result<Cut> {
    wait_for_tracer_exit(trace)?;
    let text = std::fs::read_to_string(trace)
        .with_context(|| format!("read the trace {}", trace.display()))?;
    let files = replay_trace(&text)?;
    let data_dir = data_dir
        .canonicalize()
        .with_context(|| format!("{}", data_dir.display()))?;
    let mut cut = Cut::default();
    for (path, file) in files {
        if !path.starts_with(&data_dir) || !path.is_file() {
            continue;
        }
        cut.synced_files += usize::from(file.synced > 0);
        let len = std::fs::metadata(&path)?.len();
        if len > file.synced {
            std::fs::File::options()
                .write(true)
                .open(&path)?
                .set_len(file.synced)
                .with_context(|| format!("cut {}", path.display()))?;
            cut.files += 1;
            cut.bytes += len - file.synced;
        }
    }
    if cut.synced_files == 0 {
        let head: Vec<&str> = text.lines().take(5).collect();
        bail!(
            "the trace {} ({} lines) saw no file of {} synced; it starts {head:?}",
            trace.display(),
            text.lines().count(),
            data_dir.display()
        );
    }
    Ok(cut)
}

/// strace runs detached (`-D`): it is no child of the test, so it is found
/// by the trace path on its command line.
fn wait_for_tracer_exit(trace: &Path) -> Result<()> {
    let needle = trace.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running = std::fs::read_dir("/proc")?.flatten().any(|entry| {
            std::fs::read(entry.path().join("cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(&needle))
        });
        if !running {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("strace writing {needle} did not exit after the daemon was killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the trace says about one file.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct TracedFile {
    /// Its length from the writes and truncations seen.
    len: u64,
    /// Its length at its last successful sync.
    synced: u64,
}

/// A call whose entry was traced and whose result is still to come
/// (`<unfinished ...>`), by thread.
struct Pending {
    name: String,
    args: String,
    /// For a sync: the file's length when the sync was entered.
    len_at_entry: Option<u64>,
}

/// Replays the trace over the files it names: each file's written and
/// synced length, by path (the path a file has at the end).
fn replay_trace(text: &str) -> Result<HashMap<PathBuf, TracedFile>> {
    let mut files: HashMap<PathBuf, TracedFile> = HashMap::new();
    // Write offsets of open descriptors, for plain `write`s.
    let mut offsets: HashMap<u32, u64> = HashMap::new();
    let mut pending: HashMap<&str, Pending> = HashMap::new();
    for line in text.lines() {
        // strace pads the thread id to the width of the longest one.
        let Some((thread, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(resumed) = rest.strip_prefix("<... ") {
            let Some(call) = pending.remove(thread) else {
                bail!("a resumed call never entered: {line}");
            };
            let result = result_of(resumed).with_context(|| line.to_string())?;
            finish(&mut files, &mut offsets, &call, result);
        } else if let Some(entry) = rest.strip_suffix(" <unfinished ...>") {
            if let Some((name, args)) = entry.split_once('(') {
                pending.insert(thread, enter(&mut files, name, args));
            }
        } else if let Some((name, tail)) = rest.split_once('(')
            && let Some((args, result)) = tail.rsplit_once(" = ")
        {
            let call = enter(&mut files, name, args.trim_end().trim_end_matches(')'));
            finish(&mut files, &mut offsets, &call, result.trim());
        }
    }
    Ok(files)
}

/// A call as it enters: a sync notes the length it will cover.
fn enter(files: &mut HashMap<PathBuf, TracedFile>, name: &str, args: &str) -> Pending {
    let len_at_entry = if name == "fsync" || name == "fdatasync" {
        fd_and_path(args).map(|(_, path)| files.entry(path).or_default().len)
    } else {
        None
    };
    Pending {
        name: name.to_string(),
        args: args.to_string(),
        len_at_entry,
    }
}

/// The result of a call: the text after its last ` = `.
fn result_of(tail: &str) -> Result<&str> {
    tail.rsplit_once(" = ")
        .map(|(_, result)| result.trim())
        .context("a traced call without a result")
}

/// Applies a call that returned `result` to the files.
fn finish(
    files: &mut HashMap<PathBuf, TracedFile>,
    offsets: &mut HashMap<u32, u64>,
    call: &Pending,
    result: &str,
) {
    let number = result
        .split(|c: char| !c.is_ascii_digit() && c != '-')
        .next()
        .and_then(|n| n.parse::<i64>().ok());
    let Some(number) = number.filter(|n| *n >= 0) else {
        return;
    };
    let args = call.args.as_str();
    match call.name.as_str() {
        "openat" => {
            let Some((fd, path)) = fd_and_path(result) else {
                return;
            };
            if !(args.contains("O_WRONLY") || args.contains("O_RDWR")) {
                return;
            }
            let file = files.entry(path).or_default();
            if args.contains("O_TRUNC") {
                *file = TracedFile::default();
            }
            offsets.insert(
                fd,
                if args.contains("O_APPEND") {
                    file.len
                } else {
                    0
                },
            );
        }
        "write" | "writev" => {
            if let Some((fd, path)) = fd_and_path(args) {
                let offset = offsets.entry(fd).or_default();
                *offset += number.unsigned_abs();
                let file = files.entry(path).or_default();
                file.len = file.len.max(*offset);
            }
        }
        "pwrite64" | "pwritev" | "pwritev2" => {
            let at = last_number(args);
            if let (Some((_, path)), Some(at)) = (fd_and_path(args), at) {
                let file = files.entry(path).or_default();
                file.len = file.len.max(at + number.unsigned_abs());
            }
        }
        "ftruncate" => {
            if let (Some((_, path)), Some(len)) = (fd_and_path(args), last_number(args)) {
                files.entry(path).or_default().len = len;
            }
        }
        "fsync" | "fdatasync" => {
            if let (Some((_, path)), Some(len)) = (fd_and_path(args), call.len_at_entry) {
                let file = files.entry(path).or_default();
                file.synced = len.min(file.len);
            }
        }
        "rename" | "renameat" | "renameat2" => {
            if let [from, to, ..] = quoted_paths(args).as_slice() {
                let moved = files.remove(from).unwrap_or_default();
                files.insert(to.clone(), moved);
            }
        }
        _ => {}
    }
}

/// `7</path/of/file>` at the start of `text`: the descriptor and the path
/// strace printed for it (`-y`).
fn fd_and_path(text: &str) -> Option<(u32, PathBuf)> {
    let (fd, rest) = text.split_once('<')?;
    let fd = fd.trim().parse().ok()?;
    let (path, _) = rest.split_once('>')?;
    path.starts_with('/').then(|| (fd, PathBuf::from(path)))
}

/// The last argument when it is a number (pwrite's offset, ftruncate's
/// length).
fn last_number(args: &str) -> Option<u64> {
    args.rsplit(", ").next()?.trim().parse().ok()
}

/// The paths of a rename: each quoted string, resolved against the
/// directory strace printed for the descriptor before it (`renameat`), or
/// as given when absolute.
fn quoted_paths(args: &str) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    let mut dir: Option<PathBuf> = None;
    let mut rest = args;
    while let Some(start) = rest.find(['"', '<']) {
        let open = &rest[start..];
        let close = if open.starts_with('"') { '"' } else { '>' };
        let Some(len) = open[1..].find(close) else {
            break;
        };
        let inner = &open[1..=len];
        if close == '>' {
            dir = Some(PathBuf::from(inner));
        } else if inner.starts_with('/') {
            paths.push(PathBuf::from(inner));
        } else if let Some(dir) = dir.take() {
            paths.push(dir.join(inner));
        }
        rest = &open[len + 2..];
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(len: u64, synced: u64) -> TracedFile {
        TracedFile { len, synced }
    }

    #[test]
    fn a_file_keeps_what_its_last_sync_covered() {
        let trace = "\
1 openat(AT_FDCWD</d>, \"/d/a\", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0644) = 3</d/a>
1  write(3</d/a>, \"\"..., 100) = 100
1 writev(3</d/a>, [...], 2) = 4
1 fdatasync(3</d/a>)      = 0
1 write(3</d/a>, \"\"..., 10) = 10
";
        let files = replay_trace(trace).unwrap();
        assert_eq!(files[Path::new("/d/a")], file(114, 104));
    }

    #[test]
    fn an_unfinished_sync_covers_what_was_written_before_it_entered() {
        let trace = "\
1 openat(AT_FDCWD</d>, \"/d/a\", O_WRONLY|O_CREAT|O_TRUNC, 0644) = 3</d/a>
1 write(3</d/a>, \"\"..., 100) = 100
1 fdatasync(3</d/a> <unfinished ...>
2 pwrite64(3</d/a>, \"\"..., 10, 100 <unfinished ...>
2 <... pwrite64 resumed>)           = 10
1 <... fdatasync resumed>)          = 0
";
        let files = replay_trace(trace).unwrap();
        assert_eq!(files[Path::new("/d/a")], file(110, 100));
    }

    #[test]
    fn a_failed_sync_covers_nothing() {
        let trace = "\
1 openat(AT_FDCWD</d>, \"/d/a\", O_WRONLY|O_CREAT, 0644) = 3</d/a>
1 write(3</d/a>, \"\"..., 100) = 100
1 fsync(3</d/a>)          = -1 EIO (Input/output error)
";
        let files = replay_trace(trace).unwrap();
        assert_eq!(files[Path::new("/d/a")], file(100, 0));
    }

    #[test]
    fn a_rename_carries_what_was_synced_and_truncation_resets_it() {
        let trace = "\
1 openat(AT_FDCWD</d>, \"/d/tmp\", O_WRONLY|O_CREAT|O_TRUNC, 0644) = 3</d/tmp>
1 write(3</d/tmp>, \"\"..., 7) = 7
1 rename(\"/d/tmp\", \"/d/final\") = 0
1 openat(AT_FDCWD</d>, \"/d/b\", O_RDWR|O_CREAT, 0644) = 4</d/b>
1 write(4</d/b>, \"\"..., 50) = 50
1 fsync(4</d/b>) = 0
1 renameat2(AT_FDCWD</d>, \"b\", 5</d/sub>, \"c\", RENAME_NOREPLACE) = 0
1 openat(AT_FDCWD</d>, \"/d/tmp\", O_WRONLY|O_CREAT|O_TRUNC, 0644) = 3</d/tmp>
1 ftruncate(3</d/tmp>, 20) = 0
1 openat(AT_FDCWD</d>, \"/d/final\", O_RDONLY) = 6</d/final>
";
        let files = replay_trace(trace).unwrap();
        assert_eq!(files[Path::new("/d/final")], file(7, 0));
        assert_eq!(files[Path::new("/d/sub/c")], file(50, 50));
        assert_eq!(files[Path::new("/d/tmp")], file(20, 0));
        assert!(!files.contains_key(Path::new("/d/b")));
    }

    #[test]
    fn a_resumed_call_that_never_entered_is_an_error() {
        let err = replay_trace("1 <... write resumed>) = 3\n").unwrap_err();
        assert!(err.to_string().contains("never entered"), "{err}");
    }

    #[test]
    fn drop_unsynced_cuts_real_files_under_the_data_dir_only() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().canonicalize().unwrap().join("data");
        std::fs::create_dir(&data).unwrap();
        let inside = data.join("wal");
        let outside = dir.path().canonicalize().unwrap().join("log");
        std::fs::write(&inside, [1u8; 300]).unwrap();
        std::fs::write(&outside, [1u8; 300]).unwrap();
        let trace = dir.path().join("trace");
        let (inside_s, outside_s) = (inside.display(), outside.display());
        std::fs::write(
            &trace,
            format!(
                "1 openat(AT_FDCWD</>, \"{inside_s}\", O_WRONLY|O_CREAT|O_TRUNC, 0644) = 3<{inside_s}>
1 write(3<{inside_s}>, \"\"..., 300) = 300
1 fdatasync(3<{inside_s}>) = 0
1 openat(AT_FDCWD</>, \"{outside_s}\", O_WRONLY|O_CREAT|O_TRUNC, 0644) = 4<{outside_s}>
1 write(4<{outside_s}>, \"\"..., 300) = 300
1 pwrite64(3<{inside_s}>, \"\"..., 100, 300) = 100
"
            ),
        )
        .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&inside)
            .unwrap()
            .set_len(400)
            .unwrap();
        let cut = drop_unsynced(&trace, &data).unwrap();
        assert_eq!(
            cut,
            Cut {
                files: 1,
                bytes: 100,
                synced_files: 1
            }
        );
        assert_eq!(std::fs::metadata(&inside).unwrap().len(), 300);
        assert_eq!(std::fs::metadata(&outside).unwrap().len(), 300);
    }
}
