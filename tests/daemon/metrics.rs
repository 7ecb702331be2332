//! Observability against a real daemon: `/metrics` parses (our strict
//! parser, and promtool, which `scripts/setup --test-tools` installs), counters move by exactly what
//! happened, dashboards and alerts name only exported metrics, JSON logs
//! parse and module filters include and exclude.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};
use mpreg_client::Client;
use mpreg_tests::prom::{self, Exposition};
use mpreg_tests::{Daemon, RawClient, TestDir, metrics_of, sql_rows};
use serde_json::{Value, json};

/// Runs promtool on `stdin` (or a file argument). A missing promtool
/// fails the test: `scripts/setup --test-tools` installs it.
fn promtool(args: &[&str], stdin: Option<&str>) -> Result<std::process::Output> {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context(
            "promtool is not installed: run ./scripts/setup --test-tools (Debian/Ubuntu: apt-get install prometheus)",
        )?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(text.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

async fn scrape(admin: &str) -> Result<Exposition> {
    let text = metrics_of(admin).await?;
    let exposition = prom::parse(&text).context("/metrics is not valid exposition text")?;
    let out = promtool(&["check", "metrics"], Some(&text))?;
    // promtool exits 3 for lint findings only (e.g. naming advice) and 1
    // for text it cannot parse.
    ensure!(
        out.status.code() != Some(1),
        "promtool rejects /metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(exposition)
}

/// The value of a series that must be exported.
fn value(exposition: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .value(name, labels)
        .unwrap_or_else(|| panic!("/metrics lacks {name}{labels:?}"))
}

/// A counter series: one not exported yet has not been incremented.
fn counter(exposition: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    assert!(
        exposition.types.get(name).is_some_and(|t| t == "counter")
            || name.ends_with("_count") && exposition.has_family(name),
        "{name} is not an exported counter"
    );
    exposition.value(name, labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_exactly_what_happened() -> Result<()> {
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &[])?;
    let admin = daemon.ready.admin_url.clone();
    let client = Client::connect(&daemon.ready.client_url).await?;
    client.call("echo", vec![json!(1)]).await?;
    let before = scrape(&admin).await?;

    client.call("echo", vec![json!(2)]).await?;
    client.publish("orders.eu", json!({"id": 1})).await?;
    sql_rows(&admin, "SELECT * FROM raft").await?;
    let mut raw = RawClient::connect(&daemon.ready.client_url).await?;
    raw.send_text("{not json").await?;
    raw.recv().await?;
    let after = scrape(&admin).await?;

    // Counters that moved must be exported afterwards; before, a labelled
    // series not incremented yet is absent and counts as 0.
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - counter(&before, name, labels)
    };
    let echo_ok = [("function", "echo"), ("outcome", "ok")];
    assert_eq!(delta("mpreg_rpc_calls_total", &echo_ok), 1.0);
    assert_eq!(delta("mpreg_rpc_requests_total", &[("outcome", "ok")]), 1.0);
    assert_eq!(delta("mpreg_rpc_request_seconds_count", &[]), 1.0);
    assert_eq!(delta("mpreg_rpc_request_levels_count", &[]), 1.0);
    assert_eq!(delta("mpreg_pubsub_messages_published_total", &[]), 1.0);
    assert_eq!(delta("mpreg_sql_queries_total", &[("outcome", "ok")]), 1.0);
    assert_eq!(delta("mpreg_sql_rows_returned_total", &[]), 1.0);
    assert_eq!(
        delta(
            "mpreg_transport_frame_errors_total",
            &[("kind", "malformed")]
        ),
        1.0
    );
    assert_eq!(
        delta("mpreg_transport_connections_accepted_total", &[]),
        1.0
    );
    assert_eq!(delta("mpreg_transport_frames_received_total", &[]), 3.0);
    assert_eq!(value(&after, "mpreg_rpc_requests_in_flight", &[]), 0.0);
    assert_eq!(value(&after, "mpreg_transport_connections_open", &[]), 2.0);

    let status = daemon.status().await?;
    assert_eq!(value(&after, "mpreg_raft_is_leader", &[]), 1.0);
    assert_eq!(
        value(&after, "mpreg_raft_last_applied_index", &[]),
        status["last_applied"].as_f64().context("last_applied")?
    );
    assert_eq!(value(&after, "mpreg_raft_term", &[]), 1.0);
    // Calls, publishes, SQL and a bad frame write nothing to the log.
    assert_eq!(delta("mpreg_storage_wal_fsync_seconds_count", &[]), 0.0);
    assert_eq!(delta("mpreg_storage_log_entries_appended_total", &[]), 0.0);
    // Every entry of the log was appended by this process: indexes 0 (the
    // initial membership) to last_log_index.
    assert_eq!(
        value(&after, "mpreg_storage_log_entries_appended_total", &[]),
        status["raft"]["last_log_index"]
            .as_f64()
            .context("last_log_index")?
            + 1.0
    );
    assert!(value(&after, "process_resident_memory_bytes", &[]) > 0.0);
    let build = after
        .samples
        .iter()
        .find(|s| s.name == "mpreg_build_info")
        .context("build info")?;
    assert_eq!(build.labels["version"], env!("CARGO_PKG_VERSION"));
    assert!(!build.labels["git_sha"].is_empty());

    // A registration is one event: appended, synced and applied once.
    let applied = value(&after, "mpreg_storage_events_applied_total", &[]);
    let appended = value(&after, "mpreg_storage_log_entries_appended_total", &[]);
    let synced = value(&after, "mpreg_storage_wal_fsync_seconds_count", &[]);
    let worker = mpreg_client::Worker::connect(&daemon.ready.client_url).await?;
    worker
        .register("metrics_probe", "1.0.0", &[], |_args, _kwargs| {
            Ok(json!(null))
        })
        .await?;
    let registered = scrape(&admin).await?;
    assert_eq!(
        value(&registered, "mpreg_storage_events_applied_total", &[]) - applied,
        1.0
    );
    assert_eq!(
        value(&registered, "mpreg_storage_log_entries_appended_total", &[]) - appended,
        1.0
    );
    assert_eq!(
        value(&registered, "mpreg_storage_wal_fsync_seconds_count", &[]) - synced,
        1.0
    );
    Ok(())
}

/// Metric names (`mpreg_*`, `process_*`) a dashboard or rule file uses.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for prefix in ["mpreg_", "process_"] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let preceded_by_word = rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            if !preceded_by_word {
                names.push(tail[..end].to_string());
            }
            rest = &tail[end..];
        }
    }
    names.sort();
    names.dedup();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_use_only_exported_metrics() -> Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../dashboards");
    let dashboard = std::fs::read_to_string(format!("{root}/mpreg-overview.json"))?;
    let dashboard_json: Value = serde_json::from_str(&dashboard).context("dashboard is JSON")?;
    ensure!(
        dashboard_json["panels"]
            .as_array()
            .is_some_and(|p| p.len() > 10),
        "dashboard has panels"
    );
    let rules = std::fs::read_to_string(format!("{root}/alerts.yml"))?;
    let mut used = metric_names(&dashboard);
    used.extend(metric_names(&rules));
    // Every rule has its own name, and docs/operations.md lists each one
    // (and no other).
    let alerts = alert_names(&rules);
    let mut unique = alerts.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        alerts.len(),
        unique.len(),
        "an alert is defined twice: {alerts:?}"
    );
    assert_eq!(alerts.len(), 13, "{alerts:?}");
    let operations = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/operations.md"
    ))?;
    let mut documented: Vec<String> = operations
        .lines()
        .filter_map(|line| line.strip_prefix("| `Mpreg"))
        .filter_map(|rest| rest.split('`').next())
        .map(|name| format!("Mpreg{name}"))
        .collect();
    documented.sort();
    assert_eq!(
        documented, unique,
        "docs/operations.md \"Alerts\" vs alerts.yml"
    );

    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &[])?;
    let client = Client::connect(&daemon.ready.client_url).await?;
    client.call("echo", vec![json!(1)]).await?;
    // Per-queue gauges exist once a queue does.
    client
        .queue("create", json!({"queue_name": "metrics_probe"}))
        .await?;
    let exposition = scrape(&daemon.ready.admin_url).await?;
    let missing: Vec<&String> = used.iter().filter(|n| !exposition.has_family(n)).collect();
    assert!(used.len() > 20, "found only {used:?}");
    assert!(missing.is_empty(), "not exported: {missing:?}");

    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md"))?;
    let undocumented: Vec<&String> = exposition
        .types
        .keys()
        .filter(|name| !docs.contains(&format!("`{name}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/metrics.md: {undocumented:?}"
    );

    let out = promtool(&["check", "rules", &format!("{root}/alerts.yml")], None)?;
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let checked = String::from_utf8_lossy(&out.stdout);
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "{checked}"
    );
    Ok(())
}

/// The name of every `- alert:` rule in a rules file, in file order.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert:"))
        .map(|name| name.trim().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_and_module_filters_include_and_exclude() -> Result<()> {
    let dir = TestDir::new();
    let daemon = Daemon::start(
        &dir,
        &[
            "--log-format",
            "json",
            "--log",
            "info,mpreg_daemon::cluster::node=warn",
        ],
    )?;
    let log = daemon.log();
    daemon.stop()?;
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).with_context(|| format!("not JSON: {line}")))
        .collect::<Result<_>>()?;
    let ready = lines
        .iter()
        .find(|l| l["message"] == "ready")
        .context("a ready line")?;
    assert_eq!(ready["target"], "mpreg_daemon::server");
    assert_eq!(ready["level"], "INFO");
    assert!(
        ready["admin_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("http://"))
    );
    assert!(
        lines
            .iter()
            .all(|l| l["target"] != "mpreg_daemon::cluster::node"),
        "node lines were not filtered out: {log}"
    );

    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &["--log", "warn,mpreg_daemon::cluster::node=info"])?;
    let log = daemon.log();
    daemon.stop()?;
    assert!(log.contains("node serving"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file: {log:?}"
    );
    assert!(!log.contains("mpreg_daemon::server: ready"), "{log}");
    assert!(serde_json::from_str::<Value>(log.lines().next().unwrap_or("")).is_err());
    Ok(())
}

#[test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        metric_names("rate(mpreg_a_total{x=\"1\"}[5m]) / xmpreg_b + process_cpu_seconds_total"),
        ["mpreg_a_total", "process_cpu_seconds_total"]
    );
}
