//! Calls across clusters between real daemons: a client of one cluster
//! calls a function a worker serves two clusters away, in a dependency
//! chain with a local built-in and pinned with `target_cluster`; the
//! catalog summary shows in SQL with its next hop; a dead middle cluster
//! gives the no-route error until another path exists; and a hop budget
//! too small refuses the call before anything runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use mpreg_client::protocol::{ErrorCode, RpcCommand, RpcError};
use mpreg_client::{Client, ClientError, Request, Worker};
use mpreg_tests::{TestDir, eventually, sql_rows, status_of};
use serde_json::{Value, json};

use super::{CONVERGE, Cluster};

/// Starts `examples/worker.py` against `url` and waits for its
/// registration; a missing python3 or websockets fails, saying what to
/// install.
async fn python_worker(url: &str) -> Result<tokio::process::Child> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/worker.py");
    let mut python = tokio::process::Command::new("python3")
        .arg(script)
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context(
            "python3 is not installed: run ./scripts/setup (it installs python3 and websockets)",
        )?;
    let stdout = python.stdout.take().context("worker stdout")?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("the python worker did not register within 30 s")??;
    ensure!(
        line.as_deref() == Some("registered"),
        "the python worker said {line:?} (is websockets installed? run ./scripts/setup)"
    );
    Ok(python)
}

/// The RPC error of a failed call.
fn rpc_error(result: std::result::Result<Value, ClientError>) -> Result<RpcError> {
    match result {
        Err(ClientError::Rpc(e)) => Ok(e),
        other => bail!("expected an RPC error, got {other:?}"),
    }
}

/// Waits until `client` can call `fun(args)` and it answers `want`.
async fn wait_for_call(client: &Client, fun: &str, args: Vec<Value>, want: Value) -> Result<()> {
    eventually(&format!("{fun} to answer {want}"), CONVERGE, || async {
        match client.call(fun, args.clone()).await {
            Ok(got) if got == want => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

async fn function_rows(cluster: &Cluster, name: &str) -> Result<Vec<Value>> {
    sql_rows(
        &cluster.admin()?,
        &format!(
            "SELECT name, cluster_id, provider, node_id, next_hop FROM functions WHERE name = '{name}'"
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_crosses_two_clusters_and_takes_a_new_path_when_the_middle_dies() -> Result<()> {
    let c1 = Cluster::start("c1", &[], &[])?;
    let mut c2 = Cluster::start("c2", &[&c1], &[])?;
    let c3 = Cluster::start("c3", &[&c2], &[])?;
    let _python = python_worker(&c3.client_url()?).await?;
    let client = Client::connect(&c1.client_url()?).await?;

    wait_for_call(&client, "add", vec![json!(2), json!(3)], json!(5)).await?;
    assert_eq!(
        function_rows(&c1, "add").await?,
        [
            json!({"name": "add", "cluster_id": "c3", "provider": null, "node_id": null, "next_hop": "c2"})
        ]
    );

    // A chain: echo runs here, its result goes to add in c3; only the last
    // level comes back.
    let chain = client
        .request(Request::new().cmd("e", "echo", vec![json!(40)]).cmd(
            "s",
            "add",
            vec![json!("e"), json!(2)],
        ))
        .await?;
    assert_eq!(Value::Object(chain), json!({"s": 42}));
    let summarized = client
        .send(
            Request::new()
                .cmd("e", "echo", vec![json!(1)])
                .cmd("s", "add", vec![json!("e"), json!(1)])
                .execution_summary(true),
        )
        .await?;
    let summary = summarized.execution_summary.context("execution summary")?;
    assert_eq!(summary.cross_cluster_hops, 2, "add runs two hops away");

    // target_cluster pins a built-in every cluster has to c3.
    let c3_node = status_of(&c3.admin()?).await?["node_id"].clone();
    let pinned = RpcCommand {
        name: "p".into(),
        fun: "ping".into(),
        target_cluster: Some("c3".into()),
        ..RpcCommand::default()
    };
    let answer = client.request(Request::new().command(pinned)).await?;
    assert_eq!(answer["p"]["node_id"], c3_node);
    let nowhere = RpcCommand {
        name: "p".into(),
        fun: "ping".into(),
        target_cluster: Some("c9".into()),
        ..RpcCommand::default()
    };
    let e = rpc_error(
        client
            .request(Request::new().command(nowhere))
            .await
            .map(Value::Object),
    )?;
    assert_eq!(e.code, ErrorCode::NoRoute.code(), "{e:?}");
    assert!(
        e.details.as_deref().unwrap_or_default().contains("c9"),
        "{e:?}"
    );

    // The middle dies: until c1 knows, nothing can be sent (1017, nothing
    // sent); once the routes through c2 are withdrawn, no route (1014).
    c2.kill9()?;
    let seen = std::sync::Mutex::new(Vec::new());
    let no_route = eventually("calls to fail with no route", CONVERGE, || async {
        let e = rpc_error(client.call("add", vec![json!(1), json!(1)]).await)
            .map_err(|e| e.to_string())?;
        seen.lock().map_err(|e| e.to_string())?.push(e.code);
        if e.code == ErrorCode::NoRoute.code() {
            Ok(e)
        } else {
            Err(format!("{e:?}"))
        }
    })
    .await?;
    let seen = seen.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(
        no_route
            .details
            .as_deref()
            .unwrap_or_default()
            .contains("c3"),
        "{no_route:?}"
    );
    assert!(
        seen.iter()
            .all(|code| [ErrorCode::NoRoute.code(), ErrorCode::LinkFailed.code()].contains(code)),
        "only no-route and link-failed errors while c2 is dead: {seen:?}"
    );

    // A second path appears: calls take it without being told.
    let _c4 = Cluster::start("c4", &[&c1, &c3], &[])?;
    wait_for_call(&client, "add", vec![json!(20), json!(22)], json!(42)).await?;
    eventually("add to be reached through c4", CONVERGE, || async {
        let rows = function_rows(&c1, "add").await.map_err(|e| e.to_string())?;
        match rows.as_slice() {
            [row] if row["next_hop"] == "c4" && row["cluster_id"] == "c3" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hop_budget_of_one_refuses_a_call_two_hops_away_before_it_runs() -> Result<()> {
    let config = TestDir::new();
    let budget = config.config("hop_budget = 1\n");
    let budget: Vec<&str> = budget.iter().map(String::as_str).collect();
    let c1 = Cluster::start("c1", &[], &budget)?;
    let c2 = Cluster::start("c2", &[&c1], &[])?;
    let c3 = Cluster::start("c3", &[&c2], &[])?;

    let runs = Arc::new(AtomicU64::new(0));
    let counted = runs.clone();
    let far = Worker::connect(&c3.client_url()?).await?;
    far.register("triple", "1.0.0", &[], move |args, _| {
        counted.fetch_add(1, Ordering::SeqCst);
        Ok(json!(args[0].as_i64().unwrap_or_default() * 3))
    })
    .await?;
    let near = Worker::connect(&c2.client_url()?).await?;
    near.register("double", "1.0.0", &[], |args, _| {
        Ok(json!(args[0].as_i64().unwrap_or_default() * 2))
    })
    .await?;

    let client = Client::connect(&c1.client_url()?).await?;
    // One hop is within the budget.
    wait_for_call(&client, "double", vec![json!(4)], json!(8)).await?;
    eventually("c1 to know triple in c3", CONVERGE, || async {
        let rows = function_rows(&c1, "triple")
            .await
            .map_err(|e| e.to_string())?;
        match rows.as_slice() {
            [row] if row["cluster_id"] == "c3" && row["next_hop"] == "c2" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    let e = rpc_error(client.call("triple", vec![json!(1)]).await)?;
    assert_eq!(e.code, ErrorCode::HopBudgetExhausted.code(), "{e:?}");
    let details = e.details.unwrap_or_default();
    assert!(
        details.contains("c3") && details.contains("2 cluster hops") && details.contains("of 1"),
        "{details}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the refused call ran");

    // c2's budget is the default (5): from there it runs, once.
    let from_c2 = Client::connect(&c2.client_url()?).await?;
    assert_eq!(from_c2.call("triple", vec![json!(3)]).await?, json!(9));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    Ok(())
}
