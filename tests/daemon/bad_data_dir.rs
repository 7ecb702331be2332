//! Data dirs the daemon must refuse: in use, not ours, damaged, newer.
//! Each refusal exits non-zero with a message naming the problem.

use mpreg_storage::{DataDir, OpenMode, SCHEMA_VERSION};
use mpreg_tests::{Daemon, TestDir, start_expecting_exit};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `replay` on `dir`, expects it to fail, and returns what it printed.
fn replay_refused(dir: &TestDir) -> String {
    let out = mpreg_tests::run_daemon(&[
        "replay".as_ref(),
        "--data-dir".as_ref(),
        dir.data().as_os_str(),
    ])
    .unwrap();
    assert!(!out.status.success());
    stderr(&out)
}

/// Starts a daemon on `dir`, expects it to exit non-zero without a panic,
/// and returns what it printed.
fn refused(dir: &TestDir) -> String {
    let out = start_expecting_exit(dir).unwrap();
    assert!(!out.status.success());
    let msg = stderr(&out);
    assert!(!msg.contains("panicked"), "{msg}");
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_daemon_on_the_same_dir_is_refused() {
    let dir = TestDir::new();
    let mut first = Daemon::start(&dir, &[]).unwrap();
    let msg = refused(&dir);
    assert!(msg.contains("is in use by another mpreg-daemon"), "{msg}");
    assert!(first.is_running(), "the first daemon keeps running");
    let (code, _) = first.get("/health").await.unwrap();
    assert_eq!(code, 200);
}

#[test]
fn foreign_files_are_refused() {
    let dir = TestDir::new();
    std::fs::create_dir_all(dir.data()).unwrap();
    std::fs::write(dir.data().join("notes.txt"), b"\x00\xffgarbage").unwrap();
    let msg = refused(&dir);
    assert!(
        msg.contains("is not an mpreg data dir") && msg.contains("notes.txt"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(dir.data().join("notes.txt")).unwrap(),
        b"\x00\xffgarbage",
        "nothing overwritten"
    );
}

#[test]
fn garbage_database_is_refused() {
    let dir = TestDir::new();
    let db = dir.data().join("db");
    std::fs::create_dir_all(&db).unwrap();
    std::fs::write(db.join("CURRENT"), b"MANIFEST-garbage\n").unwrap();
    std::fs::write(db.join("MANIFEST-garbage"), vec![0xa5u8; 4096]).unwrap();
    let msg = refused(&dir);
    assert!(msg.contains("failed to open the RocksDB database"), "{msg}");
}

#[test]
fn damaged_files_of_a_real_dir_are_refused() {
    let dir = TestDir::new();
    Daemon::start(&dir, &[]).unwrap().stop().unwrap();
    let db = dir.data().join("db");
    for entry in std::fs::read_dir(&db).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("MANIFEST") || name == "CURRENT" {
            std::fs::write(&path, vec![0x5au8; 512]).unwrap();
        }
    }
    let msg = refused(&dir);
    assert!(msg.contains("failed to open the RocksDB database"), "{msg}");
}

#[test]
fn newer_schema_is_refused_and_left_untouched() {
    let dir = TestDir::new();
    Daemon::start(&dir, &[]).unwrap().stop().unwrap();
    {
        let data = DataDir::open(&dir.data(), OpenMode::ReadWrite).unwrap();
        data.set_schema_version(SCHEMA_VERSION + 1).unwrap();
    }
    let msg = refused(&dir);
    assert!(
        msg.contains("newer mpreg on-disk format")
            && msg.contains(&format!("version {}", SCHEMA_VERSION + 1)),
        "{msg}"
    );
    // Untouched: a second start and replay still see the newer version.
    let again = refused(&dir);
    assert!(
        again.contains(&format!("version {}", SCHEMA_VERSION + 1)),
        "{again}"
    );
    let msg = replay_refused(&dir);
    assert!(msg.contains("newer mpreg on-disk format"), "{msg}");
}

#[test]
fn replay_of_a_missing_dir_is_a_clear_error() {
    let dir = TestDir::new();
    let msg = replay_refused(&dir);
    assert!(msg.contains("is not an mpreg data dir"), "{msg}");
}
