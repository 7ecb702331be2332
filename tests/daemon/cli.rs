//! The `mpreg` command-line client against a real daemon.

use std::process::Command;

use mpreg_tests::{Daemon, TestDir, cli_bin};
use serde_json::{Value, json};

fn mpreg(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(cli_bin())
        .args(["--url", url])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `mpreg` (which must succeed) and parses its JSON output.
fn mpreg_json(url: &str, args: &[&str]) -> Value {
    let (ok, out, err) = mpreg(url, args);
    assert!(ok, "mpreg {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn call_and_rpc_print_json_and_fail_loudly() {
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &[]).unwrap();
    let url = daemon.ready.client_url.as_str();

    let (ok, out, _) = mpreg(url, &["call", "echos", "1", r#"{"a":[2]}"#, "plain text"]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!([1, {"a": [2]}, "plain text"])
    );

    let file = dir.path().join("request.json");
    std::fs::write(
        &file,
        r#"{"cmds":[{"name":"a","fun":"echo","args":[{"n":3}]},{"name":"b","fun":"echos","args":["a.n","a"]}]}"#,
    )
    .unwrap();
    let (ok, out, _) = mpreg(url, &["rpc", file.to_str().unwrap()]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"r": {"b": [3, {"n": 3}]}})
    );

    let (ok, _, err) = mpreg(url, &["call", "nope_fn"]);
    assert!(!ok);
    assert!(err.contains("Command not found: nope_fn"), "{err}");

    std::fs::write(&file, "[{\"name\":\"x\"").unwrap();
    let (ok, _, err) = mpreg(url, &["rpc", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("not JSON"), "{err}");

    let (ok, _, err) = mpreg("ws://127.0.0.1:1", &["call", "echo", "1"]);
    assert!(!ok);
    assert!(err.contains("failed to connect"), "{err}");
}

#[test]
fn subscribe_prints_json_lines_of_published_messages() {
    use std::io::BufRead;
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &[]).unwrap();
    let url = daemon.ready.client_url.as_str();
    let (ok, out, _) = mpreg(url, &["publish", "orders.eu.created", r#"{"id":7}"#]);
    assert!(ok, "{out}");
    let mut subscriber = Command::new(cli_bin())
        .args([
            "--url",
            url,
            "subscribe",
            "orders.#",
            "--backlog-seconds",
            "60",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(subscriber.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(
        first,
        json!({"topic": "orders.eu.created", "payload": {"id": 7}})
    );
    assert!(mpreg(url, &["publish", "orders.us.created", "8"]).0);
    let second: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(second, json!({"topic": "orders.us.created", "payload": 8}));
    subscriber.kill().unwrap();
    subscriber.wait().unwrap();
    let (ok, _, err) = mpreg(url, &["subscribe", "a*"]);
    assert!(!ok);
    assert!(err.contains("wildcards must be a whole level"), "{err}");
}

#[test]
fn sql_prints_an_aligned_table_and_reports_errors() {
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &[]).unwrap();
    let admin = daemon.ready.admin_url.as_str();
    let url = daemon.ready.client_url.as_str();
    let sql = |args: &[&str]| {
        let mut all = vec!["sql", "--admin", admin];
        all.extend_from_slice(args);
        mpreg(url, &all)
    };

    let (ok, out, err) = sql(&["SELECT dest, hops, cost FROM routes"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[0].starts_with('+') && lines[0] == lines[2] && lines[0] == lines[4]);
    let header: Vec<&str> = lines[1].split('|').map(str::trim).collect();
    assert_eq!(header, ["", "dest", "hops", "cost", ""]);
    let row: Vec<&str> = lines[3].split('|').map(str::trim).collect();
    assert_eq!(row, ["", "local", "0", "0", ""]);
    assert!(
        lines.iter().all(|l| l.len() == lines[0].len()),
        "not aligned:\n{out}"
    );

    let (ok, out, _) = sql(&["SELECT dest FROM routes", "--format", "csv"]);
    assert!(ok);
    assert_eq!(out, "dest\nlocal\n");

    let (ok, _, err) = sql(&["SELECT * FROM nowhere"]);
    assert!(!ok);
    assert!(err.contains("400") && err.contains("nowhere"), "{err}");

    let (ok, _, err) = mpreg(url, &["sql", "--admin", "http://127.0.0.1:1", "SELECT 1"]);
    assert!(!ok);
    assert!(err.contains("cannot reach"), "{err}");
}

#[test]
fn queue_declare_send_receive_ack_and_stats() {
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &[]).unwrap();
    let url = daemon.ready.client_url.as_str();
    let json_out = |args: &[&str]| mpreg_json(url, args);

    let declared = json_out(&[
        "queue",
        "declare",
        "work",
        "--type",
        "priority",
        "--max-retries",
        "1",
    ]);
    assert_eq!(declared["dead_letter_queue"], json!("work.dlq"));
    json_out(&["queue", "send", "work", r#"{"job":1}"#, "--priority", "1"]);
    let urgent = json_out(&["queue", "send", "work", "urgent", "--priority", "9"]);
    let received = json_out(&[
        "queue",
        "receive",
        "work",
        "--subscriber",
        "me",
        "--wait",
        "1",
    ]);
    assert_eq!(received["message"]["payload"], json!("urgent"));
    assert_eq!(received["message"]["message_id"], urgent["message_id"]);
    let id = received["message"]["message_id"].as_str().unwrap();
    json_out(&["queue", "ack", "work", id, "--subscriber", "me"]);
    let stats = json_out(&["queue", "stats", "work"]);
    assert_eq!(stats["queues"][0]["depth"], json!(1));
    assert_eq!(stats["queues"][0]["in_flight"], json!(0));

    let (ok, _, err) = mpreg(url, &["queue", "ack", "work", id, "--subscriber", "me"]);
    assert!(!ok);
    assert!(
        err.contains("is not in queue work") && err.contains("1010"),
        "{err}"
    );
    let (ok, _, err) = mpreg(url, &["queue", "declare", "work", "--type", "fifo"]);
    assert!(!ok);
    assert!(err.contains("queue_type: priority -> fifo"), "{err}");
    daemon.stop().unwrap();
}

#[test]
fn cache_put_get_incr_cas_invalidate() {
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &[]).unwrap();
    let url = daemon.ready.client_url.as_str();
    let json_out = |args: &[&str]| mpreg_json(url, args);

    json_out(&[
        "cache",
        "put",
        "app",
        "greeting",
        r#"{"hello":"world"}"#,
        "--ttl",
        "60",
    ]);
    let read = json_out(&["cache", "get", "app", "greeting", "--strong"]);
    assert_eq!(read["entry"]["value"], json!({"hello": "world"}));
    assert_eq!(
        json_out(&["cache", "incr", "app", "hits", "--by", "5"])["value"],
        json!(5)
    );
    assert_eq!(
        json_out(&["cache", "incr", "app", "hits", "--by", "-2"])["value"],
        json!(3)
    );
    let lost = json_out(&["cache", "cas", "app", "hits", "9", "--expected", "4"]);
    assert_eq!(
        (&lost["changed"], &lost["value"]),
        (&json!(false), &json!(3))
    );
    let won = json_out(&["cache", "cas", "app", "hits", "9", "--expected", "3"]);
    assert_eq!((&won["changed"], &won["value"]), (&json!(true), &json!(9)));
    assert_eq!(
        json_out(&["cache", "invalidate", "app"])["invalidated"],
        json!(2)
    );
    assert_eq!(
        json_out(&["cache", "get", "app", "greeting"])["status"],
        json!("miss")
    );

    let (ok, _, err) = mpreg(url, &["cache", "incr", "app", "hits", "--by", "lots"]);
    assert!(!ok);
    assert!(err.contains("--by must be a number, got lots"), "{err}");
    daemon.stop().unwrap();
}

/// Completions and manual pages of both binaries, and a reader that closes
/// the pipe early (`| head -1`) is not a crash.
#[test]
fn completions_and_man_pages_for_both_binaries() {
    for (bin, name) in [
        (cli_bin(), "mpreg"),
        (mpreg_tests::daemon_bin(), "mpreg-daemon"),
    ] {
        let out = Command::new(&bin)
            .args(["completions", "bash"])
            .output()
            .unwrap();
        let script = String::from_utf8_lossy(&out.stdout);
        let function = format!("_{}()", name.replace('-', "__"));
        assert!(
            out.status.success() && script.contains(&function),
            "{name} completions bash: {script:.200}"
        );
        let help = Command::new(&bin).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        for subcommand in ["completions", "man"] {
            assert!(
                help.contains(&format!("{name} {subcommand}")),
                "{name} --help has no example of {subcommand}: {help}"
            );
        }
        // Stdout is a pipe nobody reads: every write fails with EPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let closed = Command::new(&bin)
            .arg("man")
            .stdout(writer)
            .output()
            .unwrap();
        assert!(
            closed.status.success() && closed.stderr.is_empty(),
            "{name} man into a closed pipe: {} {}",
            closed.status,
            String::from_utf8_lossy(&closed.stderr)
        );
        let page = Command::new(&bin).arg("man").output().unwrap();
        let page = String::from_utf8_lossy(&page.stdout);
        assert!(
            page.contains(&format!(".TH {name} 1")),
            "{name} man: {page:.200}"
        );
    }
}

/// `mpreg bench` runs every operation against a real daemon and reports
/// what it did: the counted operations, no errors, ordered percentiles.
#[test]
fn bench_runs_every_operation_and_reports_percentiles() {
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &[]).unwrap();
    let url = daemon.ready.client_url.as_str();
    let admin = daemon.ready.admin_url.as_str();
    for op in [
        "rpc",
        "worker",
        "publish",
        "queue-send",
        "queue-receive",
        "cache-put",
        "cache-get",
        "sql",
    ] {
        // sql: within the node's sql_max_concurrent (4); more are refused
        // with 503, which the bench counts as errors.
        let inflight = if op == "sql" { "2" } else { "3" };
        let args = [
            "bench",
            op,
            "--conns",
            "2",
            "--inflight",
            inflight,
            "--ops",
            "60",
            "--warmup",
            "6",
            "--keys",
            "20",
            "--admin",
            admin,
            "--json",
        ];
        let report = mpreg_json(url, &args);
        assert_eq!(report["op"], op, "{report}");
        assert_eq!(report["ops"], 60, "{op}: {report}");
        assert_eq!(report["errors"], 0, "{op}: {report}");
        assert_eq!(report["first_error"], Value::Null, "{op}: {report}");
        let l = &report["latency_us"];
        let at = |p: &str| l[p].as_u64().unwrap_or(0);
        assert!(
            0 < at("p50") && at("p50") <= at("p99") && at("p99") <= at("max"),
            "{op}: {report}"
        );
        assert!(
            report["ops_per_second"].as_f64().unwrap_or(0.0) > 0.0,
            "{report}"
        );
    }
    // What the bench wrote is there: 20 distinct cache keys.
    let keys = mpreg_json(
        url,
        &[
            "sql",
            "--admin",
            admin,
            "--format",
            "json",
            "SELECT count(*) AS n FROM cache_entries WHERE namespace = 'mpreg-bench'",
        ],
    );
    assert_eq!(keys, json!([{"n": 20}]));
    let (ok, out, err) = mpreg(url, &["bench", "rpc", "--ops", "0"]);
    assert!(!ok && err.contains("at least 1"), "{out} {err}");
}
