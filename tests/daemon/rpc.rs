//! RPC over WebSocket against a real daemon: dependency levels, references,
//! refusals, version and locs selection, workers, bad input, load.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use mpreg_client::protocol::RpcCommand;
use mpreg_client::{Client, ClientError, Request, Worker};
use mpreg_tests::{Daemon, RawClient, TestDir};
use serde_json::{Value, json};

fn rpc_error(
    result: Result<impl std::fmt::Debug, ClientError>,
) -> mpreg_client::protocol::RpcError {
    match result {
        Err(ClientError::Rpc(e)) => e,
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

fn start() -> (TestDir, Daemon) {
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &[]).unwrap();
    (dir, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimal_call_answers_in_the_request_frame_type() {
    let (_dir, daemon) = start();
    let mut raw = RawClient::connect(&daemon.ready.client_url).await.unwrap();
    raw.send_text(r#"{"role":"rpc","u":"t1","cmds":[{"name":"x","fun":"echo","args":[5]}]}"#)
        .await
        .unwrap();
    let (binary, reply) = raw.recv().await.unwrap();
    assert!(!binary, "text request, text reply");
    assert_eq!(
        reply,
        json!({"u":"t1","r":{"x":5},"error":null,"intermediate_results":[],"execution_summary":null})
    );
    assert!(reply.get("role").is_none());
    raw.send_binary(
        br#"{"role":"rpc","u":"t2","cmds":[{"name":"y","fun":"echos","args":[1,"a"]}]}"#.to_vec(),
    )
    .await
    .unwrap();
    let (binary, reply) = raw.recv().await.unwrap();
    assert!(binary, "binary request, binary reply");
    assert_eq!(reply["r"], json!({"y": [1, "a"]}));

    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    assert_eq!(
        client
            .call("mpreg.system.echo", vec![json!("hi")])
            .await
            .unwrap(),
        json!("hi")
    );
    assert_eq!(client.call("ping", vec![]).await.unwrap()["pong"], true);
    let map = client.call("cluster_map", vec![]).await.unwrap();
    assert_eq!(map["nodes"][0]["node_id"], daemon.ready.node_id.as_str());
    let echo = client
        .call(
            "catalog_query",
            vec![json!({"entry_type": "functions", "function_name": "echo"})],
        )
        .await
        .unwrap();
    assert_eq!(
        echo["items"][0]["identity"]["function_id"],
        "mpreg.system.echo"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_call_reads_the_result_as_asked_and_names_failures() {
    let (_dir, daemon) = start();
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    let echoed: Vec<Value> = client.call_as("echos", &(1, "a", [true])).await.unwrap();
    assert_eq!(echoed, vec![json!(1), json!("a"), json!([true])]);
    let number: u32 = client.call_as("echo", &[7]).await.unwrap();
    assert_eq!(number, 7);
    let unknown = rpc_error(client.call_as::<_, Value>("no_such_function", &[1]).await);
    assert_eq!(unknown.code, 1001, "{unknown:?}");
    assert!(
        unknown
            .details
            .is_some_and(|d| d.contains("no_such_function")),
        "the error names the function"
    );
    match client.call_as::<_, u32>("echo", &["not a number"]).await {
        Err(ClientError::Protocol(reason)) => assert!(reason.contains("u32"), "{reason}"),
        other => panic!("a string was read as a number: {other:?}"),
    }
    daemon.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_level_chain_with_nested_and_keyword_references() {
    let (_dir, daemon) = start();
    let worker = Worker::connect(&daemon.ready.client_url).await.unwrap();
    worker
        .register("add", "1.0.0", &[], |args, _| {
            Ok(json!(args.iter().filter_map(Value::as_i64).sum::<i64>()))
        })
        .await
        .unwrap();
    worker
        .register("describe", "1.0.0", &[], |args, kwargs| {
            Ok(json!({"args": args, "kwargs": kwargs}))
        })
        .await
        .unwrap();
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    let mut s3 = RpcCommand {
        name: "s3".into(),
        fun: "describe".into(),
        args: vec![json!({"nested": ["s2"]}), json!("s1.total")],
        ..RpcCommand::default()
    };
    s3.kwargs.insert("k".into(), json!({"deep": ["s2", "s0"]}));
    let response = client
        .send(
            Request::new()
                .command(s3)
                .cmd("s0", "echo", vec![json!({"total": 7})])
                .cmd("s1", "echo", vec![json!("s0")])
                .cmd("s2", "add", vec![json!(1), json!("s1.total")])
                .intermediate_results(true)
                .execution_summary(true),
        )
        .await
        .unwrap();
    assert_eq!(
        response.r.unwrap(),
        json!({"s3": {"args": [{"nested": [8]}, 7], "kwargs": {"k": {"deep": [8, {"total": 7}]}}}})
    );
    let levels: Vec<Vec<String>> = response
        .intermediate_results
        .iter()
        .map(|l| l.level_results.keys().cloned().collect())
        .collect();
    assert_eq!(levels, vec![vec!["s0"], vec!["s1"], vec!["s2"], vec!["s3"]]);
    assert_eq!(
        response.intermediate_results[3].accumulated_results.len(),
        4
    );
    let summary = response.execution_summary.unwrap();
    assert_eq!(summary.total_levels, 4);
    assert_eq!(summary.parallel_commands_executed, 4);
}

/// A handler registered inline answers on the worker's connection; one
/// that panics answers an error naming the panic, and the worker keeps
/// serving, inline and blocking-pool handlers alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_handler_answers_and_its_panic_is_an_error_reply() {
    let (_dir, daemon) = start();
    let worker = Worker::connect(&daemon.ready.client_url).await.unwrap();
    worker
        .register_inline("double", "1.0.0", &[], |args, _| {
            Ok(json!(
                args.iter().filter_map(Value::as_i64).sum::<i64>() * 2
            ))
        })
        .await
        .unwrap();
    worker
        .register_inline("explode", "1.0.0", &[], |_, _| panic!("inline boom"))
        .await
        .unwrap();
    worker
        .register("explode_blocking", "1.0.0", &[], |_, _| panic!("pool boom"))
        .await
        .unwrap();
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    assert_eq!(client.call("double", vec![json!(21)]).await.unwrap(), 42);
    for fun in ["explode", "explode_blocking"] {
        let error = client.call(fun, vec![]).await.unwrap_err().to_string();
        assert!(error.contains("handler panicked"), "{fun}: {error}");
    }
    assert_eq!(client.call("double", vec![json!(5)]).await.unwrap(), 10);
}

/// Four independent commands meet at a barrier inside the worker: they can
/// only all finish if the daemon runs them at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_level_runs_its_commands_in_parallel() {
    let dir = TestDir::new();
    let daemon = Daemon::start_configured(&dir, "request_timeout_ms = 10000\n").unwrap();
    let worker = Worker::connect(&daemon.ready.client_url).await.unwrap();
    let barrier = Arc::new(Barrier::new(4));
    worker
        .register("meet", "1.0.0", &[], move |args, _| {
            barrier.wait();
            Ok(args[0].clone())
        })
        .await
        .unwrap();
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    let mut request = Request::new();
    for i in 0..4 {
        request = request.cmd(&format!("m{i}"), "meet", vec![json!(i)]);
    }
    let r = client
        .request(request.cmd("total", "echos", vec![json!("m0"), json!("m3")]))
        .await
        .unwrap();
    assert_eq!(Value::Object(r), json!({"total": [0, 3]}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycles_duplicates_and_unknown_functions_are_refused_before_running() {
    let (_dir, daemon) = start();
    let worker = Worker::connect(&daemon.ready.client_url).await.unwrap();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    worker
        .register("count", "1.0.0", &[], move |_, _| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(json!(null))
        })
        .await
        .unwrap();
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    let cycle = Request::new()
        .cmd("first", "count", vec![])
        .cmd("a", "echo", vec![json!("b")])
        .cmd("b", "echo", vec![json!("a")]);
    let e = rpc_error(client.request(cycle).await);
    assert_eq!(e.code, 1005, "{e:?}");
    assert!(e.details.unwrap().contains("a, b"));
    let e = rpc_error(
        client
            .request(Request::new().cmd("self", "echo", vec![json!("self")]))
            .await,
    );
    assert_eq!(e.code, 1005);
    let dup = Request::new()
        .cmd("a", "echo", vec![json!(1)])
        .cmd("a", "echo", vec![json!(2)]);
    assert_eq!(rpc_error(client.request(dup).await).code, 1006);
    let unknown = Request::new()
        .cmd("first", "count", vec![])
        .cmd("n", "nope_fn", vec![]);
    let e = rpc_error(client.request(unknown).await);
    assert_eq!((e.code, e.message.as_str()), (1001, "Command not found"));
    assert_eq!(e.details.as_deref(), Some("Command not found: nope_fn"));
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing ran"
    );
    let e = rpc_error(client.call("echo", vec![json!(1), json!(2)]).await);
    assert_eq!(e.code, 1003, "provider failure: {e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_constraint_picks_the_highest_match_of_three() {
    let (_dir, daemon) = start();
    let mut workers = Vec::new();
    for version in ["1.0.0", "1.5.0", "2.0.0"] {
        let worker = Worker::connect(&daemon.ready.client_url).await.unwrap();
        worker
            .register("calc", version, &[], move |_, _| Ok(json!(version)))
            .await
            .unwrap();
        workers.push(worker);
    }
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    let call = |constraint: Option<&str>| {
        Request::new().command(RpcCommand {
            name: "c".into(),
            fun: "calc".into(),
            version_constraint: constraint.map(str::to_string),
            ..RpcCommand::default()
        })
    };
    for (constraint, expected) in [
        (None, "2.0.0"),
        (Some(">=1.0.0,<2.0.0"), "1.5.0"),
        (Some("<1.2"), "1.0.0"),
    ] {
        let r = client.request(call(constraint)).await.unwrap();
        assert_eq!(r["c"], expected, "constraint {constraint:?}");
    }
    assert_eq!(
        rpc_error(client.request(call(Some(">=3"))).await).code,
        1002
    );
    assert_eq!(
        rpc_error(client.request(call(Some("not a version"))).await).code,
        1006
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locs_route_to_the_worker_with_the_resources() {
    let (_dir, daemon) = start();
    let gpu = Worker::connect(&daemon.ready.client_url).await.unwrap();
    gpu.register("train", "1.0.0", &["gpu", "fast"], |_, _| Ok(json!("gpu")))
        .await
        .unwrap();
    let cpu = Worker::connect(&daemon.ready.client_url).await.unwrap();
    cpu.register("train", "1.0.0", &["cpu"], |_, _| Ok(json!("cpu")))
        .await
        .unwrap();
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    let with_locs = |locs: &[&str]| {
        Request::new().command(RpcCommand {
            name: "t".into(),
            fun: "train".into(),
            locs: locs.iter().map(|l| l.to_string()).collect(),
            ..RpcCommand::default()
        })
    };
    for _ in 0..3 {
        assert_eq!(
            client.request(with_locs(&["gpu"])).await.unwrap()["t"],
            "gpu"
        );
        assert_eq!(
            client.request(with_locs(&["cpu"])).await.unwrap()["t"],
            "cpu"
        );
    }
    assert_eq!(
        rpc_error(client.request(with_locs(&["gpu", "cpu"])).await).code,
        1002
    );
    // Without locs both serve, taking turns.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.insert(
            client.request(with_locs(&[])).await.unwrap()["t"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(seen.len(), 2, "round robin over both providers: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_disconnect_mid_call_fails_the_call_fast() {
    let dir = TestDir::new();
    let daemon = Daemon::start_configured(&dir, "request_timeout_ms = 120000\n").unwrap();
    let worker = Worker::connect(&daemon.ready.client_url).await.unwrap();
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
    let entered_tx = std::sync::Mutex::new(entered_tx);
    // The handler blocks until the test ends (the runtime waits for it).
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    worker
        .register("hang", "1.0.0", &[], move |_, _| {
            let _ = entered_tx.lock().unwrap().send(());
            let _ = release_rx
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(120));
            Ok(json!(null))
        })
        .await
        .unwrap();
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    let call = tokio::spawn(async move { client.call("hang", vec![]).await });
    tokio::task::spawn_blocking(move || entered_rx.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the call reached the worker");
    drop(worker);
    let e = rpc_error(call.await.unwrap());
    assert_eq!(e.code, 1003, "{e:?}");
    assert!(e.details.unwrap().contains("disconnected"));
    // Its functions were withdrawn.
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    assert_eq!(rpc_error(client.call("hang", vec![]).await).code, 1001);
    release_tx.send(()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_calls_from_ten_connections() {
    let (_dir, daemon) = start();
    let mut tasks = Vec::new();
    for c in 0..10 {
        let client = Arc::new(Client::connect(&daemon.ready.client_url).await.unwrap());
        for i in 0..100 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let value = json!({"conn": c, "i": i});
                let got = client.call("echo", vec![value.clone()]).await.unwrap();
                assert_eq!(got, value);
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_answered_and_others_keep_working() {
    let dir = TestDir::new();
    let daemon = Daemon::start_configured(&dir, "max_frame_bytes = 1048576\n").unwrap();
    let url = daemon.ready.client_url.clone();
    let good = Client::connect(&url).await.unwrap();
    let background = tokio::spawn(async move {
        for i in 0..200 {
            assert_eq!(good.call("echo", vec![json!(i)]).await.unwrap(), json!(i));
        }
    });
    let mut raw = RawClient::connect(&url).await.unwrap();
    let cases: Vec<(String, i64, &str)> = vec![
        ("this is not json".into(), 1006, "not valid JSON"),
        (
            r#"{"role":"launch","u":"x1"}"#.into(),
            1004,
            "Invalid RPC request role: launch",
        ),
        (
            r#"{"role":"rpc","cmds":[]}"#.into(),
            1006,
            "missing field u",
        ),
        (
            r#"{"role":"rpc","u":"x2","cmds":{"name":1}}"#.into(),
            1006,
            "invalid rpc message",
        ),
        (
            r#"{"role":"rpc","u":"x3","cmds":[{"name":"a","fun":"echo","args":5}]}"#.into(),
            1006,
            "invalid rpc message",
        ),
        (
            r#"{"role":"rpc","u":"x4","cmds":[]}"#.into(),
            1006,
            "cmds is empty",
        ),
        (
            format!("{}1{}", "[".repeat(5000), "]".repeat(5000)),
            1006,
            "recursion limit",
        ),
    ];
    for (frame, code, needle) in cases {
        raw.send_text(frame).await.unwrap();
        let (_, reply) = raw.recv().await.unwrap();
        assert_eq!(reply["error"]["code"], code, "{reply}");
        assert!(
            reply["error"]["details"].as_str().unwrap().contains(needle),
            "{reply}"
        );
    }
    // A request with 20,000 commands (under the frame limit) is refused by count.
    let cmds: Vec<Value> = (0..20_000)
        .map(|i| json!({"name": i.to_string(), "fun": "echo"}))
        .collect();
    raw.send_text(json!({"role":"rpc","u":"many","cmds":cmds}).to_string())
        .await
        .unwrap();
    let (_, reply) = raw.recv().await.unwrap();
    assert_eq!(
        (reply["u"].as_str(), reply["error"]["code"].as_i64()),
        (Some("many"), Some(1006))
    );
    // The connection is still usable after all of that.
    raw.send_text(r#"{"role":"rpc","u":"ok","cmds":[{"name":"x","fun":"echo","args":[1]}]}"#)
        .await
        .unwrap();
    assert_eq!(raw.recv().await.unwrap().1["r"]["x"], 1);
    // Oversize frame (1.5 MiB > 1 MiB limit): answered, connection kept.
    raw.send_text(format!(
        r#"{{"role":"rpc","u":"big","pad":"{}"}}"#,
        "x".repeat(3 << 19)
    ))
    .await
    .unwrap();
    let (_, reply) = raw.recv().await.unwrap();
    assert_eq!(reply["error"]["code"], 1007, "{reply}");
    assert!(
        reply["error"]["details"]
            .as_str()
            .unwrap()
            .contains("the limit is 1048576 bytes"),
        "{reply}"
    );
    raw.send_text(r#"{"role":"rpc","u":"ok2","cmds":[{"name":"x","fun":"echo","args":[2]}]}"#)
        .await
        .unwrap();
    assert_eq!(raw.recv().await.unwrap().1["r"]["x"], 2);
    // Past twice the limit the stream cannot be resynchronised: closed.
    let _ = raw.send_text("y".repeat(3 << 20)).await;
    assert!(raw.closed().await);
    background.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_example_worker_serves_calls() {
    // A missing python3 or websockets fails here, saying what to install.
    let probe = std::process::Command::new("python3")
        .args(["-c", "import websockets"])
        .output()
        .expect(
            "python3 is not installed: run ./scripts/setup (it installs python3 and websockets)",
        );
    assert!(
        probe.status.success(),
        "python3 cannot import websockets: run ./scripts/setup (or pip install websockets): {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let (_dir, daemon) = start();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/worker.py");
    let mut python = tokio::process::Command::new("python3")
        .arg(script)
        .arg(&daemon.ready.client_url)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(python.stdout.take().unwrap()));
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line.as_deref(), Some("registered"));
    let client = Client::connect(&daemon.ready.client_url).await.unwrap();
    assert_eq!(
        client.call("add", vec![json!(2), json!(3)]).await.unwrap(),
        json!(5)
    );
    let mut upper = RpcCommand {
        name: "u".into(),
        fun: "upper".into(),
        args: vec![json!("add_result")],
        ..RpcCommand::default()
    };
    upper.kwargs.insert("suffix".into(), json!("!"));
    let r = client
        .request(
            Request::new()
                .cmd("add_result", "echo", vec![json!("ok")])
                .command(upper),
        )
        .await
        .unwrap();
    assert_eq!(r["u"], "OK!");
    let e = rpc_error(client.call("add", vec![json!(1)]).await);
    assert_eq!(e.code, 1003);
    assert!(e.details.unwrap().contains("TypeError"));
    python.kill().await.unwrap();
}
