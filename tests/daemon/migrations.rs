//! On-disk format fixtures: a data dir written by each released schema
//! version (in `migrations/fixtures/`) still opens, replays to its recorded
//! digest, and serves.

use std::path::{Path, PathBuf};

use mpreg_tests::{Daemon, TestDir, replay};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/fixtures")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_version_opens_replays_and_serves() {
    let mut seen = 0;
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let fixture = entry.unwrap().path();
        if !fixture.is_dir() {
            continue;
        }
        seen += 1;
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture.join("expected.json")).unwrap())
                .unwrap();
        let dir = TestDir::new();
        copy_dir(&fixture.join("data"), &dir.data());
        let replayed = replay(&dir.data()).unwrap();
        assert_eq!(
            replayed,
            expected["replay"],
            "fixture {}",
            fixture.display()
        );

        let daemon = Daemon::start(&dir, &[]).unwrap();
        assert_eq!(daemon.ready.node_id, expected["node_id"].as_str().unwrap());
        let status = daemon.status().await.unwrap();
        assert!(
            status["last_applied"].as_u64().unwrap()
                > expected["replay"]["last_applied"].as_u64().unwrap()
        );
    }
    assert!(seen >= 1, "no fixtures in {}", fixtures().display());
}
