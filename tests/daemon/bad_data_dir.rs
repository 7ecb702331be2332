//! Data dirs the daemon must refuse: in use, not ours, damaged, newer.
//! Each refusal exits non-zero with a message naming the problem. A byte
//! flipped in a view's file is found by RocksDB's block checksums when it
//! is read: the reads that touch it fail naming the file, none answer
//! wrong data.

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

/// How many cache entries the damaged-file tests write.
const CACHE_ENTRIES: usize = 200;

/// Puts `CACHE_ENTRIES` cache entries `k0..` in `namespace`, each
/// acknowledged before the next.
async fn put_cache_entries(
    daemon: &Daemon,
    namespace: &str,
    value: impl Fn(usize) -> serde_json::Value,
) {
    let client = mpreg_client::Client::connect(&daemon.ready.client_url)
        .await
        .unwrap();
    for i in 0..CACHE_ENTRIES {
        let key = serde_json::json!({"namespace": namespace, "identifier": format!("k{i}")});
        client
            .cache(serde_json::json!({"operation": "put", "key": key, "value": value(i)}))
            .await
            .unwrap();
    }
}

/// The RocksDB files of `dir` whose extension is `ext`.
fn db_files(dir: &TestDir, ext: &'static str) -> impl Iterator<Item = std::path::PathBuf> {
    std::fs::read_dir(dir.data().join("db"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(move |path| path.extension().is_some_and(|e| e == ext))
}

/// The SST file of column family `family` in a stopped node's dir. Its
/// properties block ends the `rocksdb.column.family.name` key with the
/// name as the value.
fn sst_of_family(dir: &TestDir, family: &str) -> std::path::PathBuf {
    let marker = format!("name{family}");
    db_files(dir, "sst")
        .find(|path| {
            let bytes = std::fs::read(path).unwrap();
            bytes.windows(marker.len()).any(|w| w == marker.as_bytes())
        })
        .unwrap_or_else(|| panic!("an SST of {family}"))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_view_file_is_named_and_never_served() {
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &[]).unwrap();
    let value = |i: usize| format!("{i:0>1000}");
    put_cache_entries(&daemon, "flip", |i| value(i).into()).await;
    assert!(daemon.stop().unwrap().success());

    // A clean stop wrote the views to SST files; RocksDB records each
    // file's column family in it. A third of the way in is a data block
    // (the index and properties are at the end).
    let sst = sst_of_family(&dir, "view_cache_entries");
    mpreg_tests::flip_byte_a_third_in(&sst);
    let file = sst.file_name().unwrap().to_string_lossy().into_owned();

    let daemon = Daemon::start(&dir, &[]).unwrap();
    let answer = mpreg_tests::sql_get(
        &daemon.ready.admin_url,
        "SELECT identifier, size_bytes FROM cache_entries",
        "json",
    )
    .await
    .unwrap();
    let body = String::from_utf8_lossy(&answer.body).into_owned();
    assert_eq!(answer.status, 500, "{body}");
    assert!(
        body.contains("Corruption") && body.contains(&file),
        "the error names the damaged file: {body}"
    );
    // Every read answers the value that was written or an error, never
    // anything else.
    let client = mpreg_client::Client::connect(&daemon.ready.client_url)
        .await
        .unwrap();
    let mut refused = 0;
    for i in 0..CACHE_ENTRIES {
        let key = serde_json::json!({"namespace": "flip", "identifier": format!("k{i}")});
        match client
            .cache(serde_json::json!({"operation": "get", "key": key}))
            .await
        {
            Ok(got) => assert_eq!(got["entry"]["value"], value(i).as_str(), "k{i}: {got}"),
            Err(e) => {
                assert!(e.to_string().contains(&file), "k{i}: {e}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "some key lives in the damaged block");
    let status = daemon.status().await.unwrap();
    drop(client);
    daemon.stop().unwrap();
    // The log is intact: replay rebuilds, from it, the views the node
    // holds (its digest is kept as rows change, not read from the files).
    let replayed = mpreg_tests::replay(&dir.data()).unwrap();
    assert_eq!(replayed["views_digest"], status["views_digest"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_inside_the_write_ahead_log_is_refused_not_cut_off() {
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &[]).unwrap();
    put_cache_entries(&daemon, "wal", |i| i.into()).await;
    // kill -9 leaves every acknowledged write in the WAL only. A third of
    // the way in: records follow the damaged one that were synced, and
    // acknowledged, after it.
    daemon.kill9().unwrap();
    let wal = db_files(&dir, "log")
        .max_by_key(|path| std::fs::metadata(path).unwrap().len())
        .expect("a WAL file");
    mpreg_tests::flip_byte_a_third_in(&wal);

    // Replaying up to the damage and dropping the rest would lose
    // acknowledged writes without a word: the node must refuse instead,
    // naming the data dir and the corruption.
    let msg = refused(&dir);
    assert!(
        msg.contains("Corruption") && msg.contains(&dir.data().join("db").display().to_string()),
        "{msg}"
    );
    let msg = replay_refused(&dir);
    assert!(msg.contains("Corruption"), "{msg}");
}

/// Writes entries on a fresh node, stops it cleanly (the log goes to an
/// SST file), damages that file with `damage`, and expects the start and
/// `replay` to be refused with RocksDB's `Corruption` naming the file: the
/// start reads the newest log entries (for the event clock), and this
/// short log is all new.
async fn log_damage_is_refused(damage: impl FnOnce(&std::path::Path)) {
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &[]).unwrap();
    put_cache_entries(&daemon, "logdamage", |i| format!("{i:0>1000}").into()).await;
    assert!(daemon.stop().unwrap().success());
    let sst = sst_of_family(&dir, "log");
    damage(&sst);
    let file = sst.file_name().unwrap().to_string_lossy().into_owned();

    let msg = refused(&dir);
    assert!(msg.contains("Corruption") && msg.contains(&file), "{msg}");
    let msg = replay_refused(&dir);
    assert!(msg.contains("Corruption") && msg.contains(&file), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_log_file_is_refused_at_start_naming_it() {
    log_damage_is_refused(mpreg_tests::flip_byte_a_third_in).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_log_file_is_refused_at_start_naming_it() {
    log_damage_is_refused(|sst| {
        let len = std::fs::metadata(sst).unwrap().len();
        std::fs::File::options()
            .write(true)
            .open(sst)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
    })
    .await;
}
