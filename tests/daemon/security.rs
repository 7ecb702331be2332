//! Peer authentication between real daemons: members of a cluster with a
//! `cluster_secret_file` prove the secret at link setup; a node with
//! another secret cannot join, a raw peer connection without the proof or
//! without the handshake is refused before any envelope is read, and
//! neither moves the cluster's term or membership. Between clusters, link
//! secrets do the same for federation links. Client credentials decide what
//! each client may do; TLS carries clients and peers alike, and with mutual
//! TLS a member's or neighbour's certificate must name it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mpreg_client::tls::TlsClient;
use mpreg_client::{Client, ConnectOptions};
use mpreg_tests::cluster::Cluster;
use mpreg_tests::tls::TestCa;
use mpreg_tests::{Daemon, RawClient, TestDir, eventually, metrics_of, prom, sql_rows};
use serde_json::json;

const CONVERGE: Duration = Duration::from_secs(30);

/// Writes `secret` into a file of `dir`; its path.
fn secret_file(dir: &TestDir, name: &str, secret: &str) -> Result<PathBuf> {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("{secret}\n"))?;
    Ok(path)
}

/// Peer-handshake refusals `admin` counted for `reason`.
async fn refusals(admin: &str, reason: &str) -> Result<f64> {
    let text = metrics_of(admin).await?;
    let exposition = prom::parse(&text).context("parse /metrics")?;
    Ok(exposition
        .value("mpreg_peer_auth_refusals_total", &[("reason", reason)])
        .unwrap_or(0.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_holding_the_cluster_secret_take_part() -> Result<()> {
    let secrets = TestDir::new();
    let good = secret_file(&secrets, "cluster.secret", "correct horse battery staple")?;
    let wrong = secret_file(&secrets, "wrong.secret", "incorrect horse battery staple")?;
    let mut cluster = Cluster::start(
        3,
        &format!("cluster_secret_file = {:?}\n", good.display().to_string()),
    )
    .await?;
    let leader = cluster.wait_leader(&[0, 1, 2], CONVERGE).await?;
    let follower = (leader + 1) % 3;
    // Forwarded writes cross the authenticated links.
    let client = Client::connect(&cluster.members[follower].client_url).await?;
    client
        .queue("create", json!({"queue_name": "kept"}))
        .await?;
    client
        .queue("send", json!({"queue_name": "kept", "payload": 1}))
        .await?;
    let before = cluster.status(leader).await?;
    let cluster_id = before["cluster_id"].as_str().context("cluster_id")?;
    let leader_url = cluster.members[leader].client_url.clone();
    let leader_admin = cluster.members[leader].admin_url.clone();

    // A peer that claims the cluster and proves nothing.
    let (mut raw, verdict) = RawClient::peer(&leader_url, cluster_id, "intruder").await?;
    let reason = verdict["refused"]["reason"].as_str().unwrap_or_default();
    ensure!(
        reason.contains("requires a secret") && reason.contains("intruder"),
        "verdict {verdict}"
    );
    ensure!(
        raw.closed().await,
        "a refused peer's connection stayed open"
    );
    assert_eq!(refusals(&leader_admin, "no_proof").await?, 1.0);

    // A peer that skips the handshake: its first frame is not an answer.
    let mut raw = RawClient::connect(&format!("{leader_url}/peer?from=intruder")).await?;
    raw.recv().await.context("the challenge")?;
    raw.send_binary(vec![0xB5, 0, 0, 0]).await?;
    ensure!(raw.closed().await, "a peer without a handshake stayed open");
    assert_eq!(refusals(&leader_admin, "malformed").await?, 1.0);

    // A node with another secret cannot join; it exits naming why.
    let joiner = TestDir::new();
    let out = mpreg_tests::start_expecting_exit_with(
        &joiner,
        &[
            "--join",
            &leader_url,
            "--cluster-secret-file",
            &wrong.display().to_string(),
        ],
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "the joiner exited 0: {stderr}");
    ensure!(
        stderr.contains("does not match the secret"),
        "the joiner's error does not name the secret: {stderr}"
    );
    ensure!(
        refusals(&leader_admin, "bad_proof").await? >= 1.0,
        "the leader counted no bad proof"
    );

    // Nothing of it reached raft: same term, same three members.
    let after = cluster.status(leader).await?;
    assert_eq!(after["term"], before["term"], "{before} -> {after}");
    let peers = sql_rows(&leader_admin, "SELECT peer FROM peers ORDER BY peer").await?;
    assert_eq!(peers.len(), 3, "{peers:?}");
    let received = client
        .queue(
            "receive",
            json!({"queue_name": "kept", "subscriber_id": "w", "max_messages": 10, "timeout_seconds": 1}),
        )
        .await?;
    assert_eq!(received["messages"].as_array().map(Vec::len), Some(1));

    // A member restarted with the secret rejoins its links.
    cluster.stop(follower)?;
    cluster.restart(follower).await?;
    cluster.wait_leader(&[0, 1, 2], CONVERGE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_links_need_the_link_secret_their_neighbour_holds() -> Result<()> {
    let secrets = TestDir::new();
    let shared = secret_file(&secrets, "c1-c2.secret", "a link secret of c1 and c2")?;
    let other = secret_file(&secrets, "other.secret", "not the secret c1 holds for c3")?;
    // Each cluster: its id, what it federates to, its link secret files.
    let start = |id: &str, federate: Option<&str>, links: &[(&str, &PathBuf)]| {
        let dir = TestDir::new();
        let mut toml = String::from("[link_secret_files]\n");
        for (cluster, path) in links {
            toml.push_str(&format!("{cluster} = {:?}\n", path.display().to_string()));
        }
        let mut args = dir.config(&toml);
        args.extend(["--cluster-id".to_string(), id.to_string()]);
        if let Some(url) = federate {
            args.extend(["--federate".to_string(), url.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let daemon = Daemon::start(&dir, &args)?;
        anyhow::Ok((daemon, dir))
    };
    let (c1, _c1_dir) = start("c1", None, &[("c2", &shared), ("c3", &shared)])?;
    let c1_url = c1.ready.client_url.clone();
    let c1_admin = c1.ready.admin_url.clone();
    let (_c2, _c2_dir) = start("c2", Some(&c1_url), &[("c1", &shared)])?;
    let (_c3, _c3_dir) = start("c3", Some(&c1_url), &[("c1", &other)])?;

    eventually("c1's route to c2", CONVERGE, || async {
        let rows = sql_rows(&c1_admin, "SELECT dest FROM routes WHERE dest = 'c2'")
            .await
            .map_err(|e| e.to_string())?;
        if rows.is_empty() {
            Err("none yet".to_string())
        } else {
            Ok(())
        }
    })
    .await?;
    eventually("c1 to refuse c3's proof", CONVERGE, || async {
        match refusals(&c1_admin, "bad_proof").await {
            Ok(n) if n >= 1.0 => Ok(()),
            Ok(n) => Err(format!("{n} refusals")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    let links = sql_rows(
        &c1_admin,
        "SELECT cluster_id FROM federation_links ORDER BY cluster_id",
    )
    .await?;
    assert_eq!(
        links,
        [json!({"cluster_id": "c2"})],
        "c3 linked without the secret"
    );
    let routes = sql_rows(&c1_admin, "SELECT dest FROM routes WHERE dest = 'c3'").await?;
    assert!(routes.is_empty(), "c1 learned a route to c3: {routes:?}");
    Ok(())
}

/// Client credential refusals `admin` counted for `reason`.
async fn client_refusals(admin: &str, reason: &str) -> Result<f64> {
    let text = metrics_of(admin).await?;
    let exposition = prom::parse(&text).context("parse /metrics")?;
    exposition
        .value("mpreg_client_auth_refusals_total", &[("reason", reason)])
        .context("mpreg_client_auth_refusals_total is exported for every reason")
}

/// The HTTP status a WebSocket upgrade to `url` with `headers` is answered
/// with (101 when accepted).
async fn upgrade_status(url: &str, headers: &[(&'static str, &str)]) -> Result<u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request()?;
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, value.parse().context("header value")?);
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => Ok(response.status().as_u16()),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Ok(response.status().as_u16())
        }
        Err(e) => Err(e.into()),
    }
}

/// The error code of a refused call, or the call's result as an error.
fn error_code(result: Result<serde_json::Value, mpreg_client::ClientError>) -> Result<i64> {
    match result {
        Err(mpreg_client::ClientError::Rpc(e)) => Ok(e.code),
        other => anyhow::bail!("expected an RPC error, got {other:?}"),
    }
}

/// An admin GET of `path` presenting `token`: its status.
async fn admin_status(admin: &str, path: &str, token: Option<&str>) -> Result<u16> {
    let mut request = mpreg_tests::http().get(format!("{admin}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    Ok(request.send().await?.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_do_only_what_their_credential_allows_on_every_node() -> Result<()> {
    const OPS: &str = "ops-token-0123456789abcdef";
    const APP: &str = "app-token-0123456789abcdef";
    const LATE: &str = "late-token-0123456789abcdef";
    let tokens = TestDir::new();
    let ops = secret_file(&tokens, "ops.token", OPS)?;
    let app = secret_file(&tokens, "app.token", APP)?;
    let late = secret_file(&tokens, "late.token", LATE)?;
    let credentials = format!(
        "[[credentials]]\nname = \"ops\"\ntoken_file = {:?}\npermissions = {{ call = [\"#\"], admin = true }}\n\n\
         [[credentials]]\nname = \"app\"\ntoken_file = {:?}\n\
         permissions = {{ call = [\"echo\"], publish = [\"orders.#\"], subscribe = [\"orders.*\"], queues = [\"jobs\"], cache = [\"sessions\"] }}\n",
        ops.display().to_string(),
        app.display().to_string(),
    );
    let cluster = Cluster::start(3, &credentials).await?;
    let (url, admin) = (
        &cluster.members[1].client_url,
        &cluster.members[1].admin_url,
    );
    // Every member proposed the credentials before it was ready; wait
    // until each has applied all of them.
    cluster.wait_converged(&[0, 1, 2], CONVERGE).await?;

    // The upgrade needs a known token, in either header upstream sends.
    assert_eq!(upgrade_status(url, &[]).await?, 401);
    assert_eq!(
        upgrade_status(url, &[("authorization", "Bearer not-a-token")]).await?,
        401
    );
    assert_eq!(upgrade_status(url, &[("x-api-key", APP)]).await?, 101);
    assert_eq!(
        upgrade_status(url, &[("authorization", &format!("Bearer {APP}"))]).await?,
        101
    );

    // Within its permissions a request runs; outside, 1018 names why.
    let client = Client::connect_with_token(url, Some(APP)).await?;
    assert_eq!(client.call("echo", vec![json!("hi")]).await?, json!("hi"));
    let echos = client.call("echos", vec![json!("hi")]).await;
    ensure!(
        format!("{echos:?}").contains("may not call function echos"),
        "{echos:?}"
    );
    assert_eq!(error_code(echos)?, 1018);
    client
        .queue("create", json!({"queue_name": "jobs"}))
        .await?;
    client
        .queue("send", json!({"queue_name": "jobs", "payload": 1}))
        .await?;
    assert_eq!(
        error_code(
            client
                .call("mpreg.queue.create", vec![json!({"queue_name": "other"})])
                .await
        )?,
        1018
    );
    assert_eq!(
        error_code(client.call("mpreg.queue.stats", vec![json!({})]).await)?,
        1018
    );
    client.publish("orders.new", json!(1)).await?;
    let refused = client.publish("billing.new", json!(1)).await;
    ensure!(
        format!("{refused:?}").contains("may not publish to billing.new"),
        "{refused:?}"
    );
    let refused = client.subscribe(&["orders.#"], 0).await.err();
    ensure!(
        format!("{refused:?}").contains("may not subscribe to orders.#"),
        "{refused:?}"
    );
    client.subscribe(&["orders.*"], 0).await?;
    let key = |namespace: &str| json!({"namespace": namespace, "identifier": "k"});
    client
        .cache(json!({"operation": "put", "key": key("sessions"), "value": 1}))
        .await?;
    let refused = client
        .cache(json!({"operation": "get", "key": key("other")}))
        .await;
    ensure!(
        format!("{refused:?}").contains("error_code 1018"),
        "{refused:?}"
    );

    // Admin HTTP: health and status stay open, SQL needs sql or admin.
    assert_eq!(admin_status(admin, "/health", None).await?, 200);
    assert_eq!(admin_status(admin, "/status", None).await?, 200);
    assert_eq!(admin_status(admin, "/sql?q=SELECT%201", None).await?, 401);
    assert_eq!(
        admin_status(admin, "/sql?q=SELECT%201", Some(APP)).await?,
        403
    );
    assert_eq!(
        admin_status(admin, "/cluster/members", Some(APP)).await?,
        403
    );
    let credentials_sql = |sql: &'static str| {
        let admin = admin.clone();
        async move {
            let answer = mpreg_tests::http()
                .get(format!("{admin}/sql"))
                .query(&[("q", sql), ("format", "json")])
                .bearer_auth(OPS)
                .send()
                .await?
                .json::<serde_json::Value>()
                .await?;
            anyhow::Ok(answer)
        }
    };
    let listed = credentials_sql(
        "SELECT name, call, queues, sql, admin, active FROM credentials ORDER BY name",
    )
    .await?;
    assert_eq!(
        listed,
        json!([
            {"name": "app", "call": "echo", "queues": "jobs", "sql": false, "admin": false, "active": true},
            {"name": "ops", "call": "#", "queues": "", "sql": false, "admin": true, "active": true},
        ]),
        "{listed}"
    );

    // A credential added to the config file works after SIGHUP.
    let with_late = format!(
        "{credentials}\n[[credentials]]\nname = \"late\"\ntoken_file = {:?}\npermissions = {{ call = [\"ping\"] }}\n",
        late.display().to_string()
    );
    for member in &cluster.members {
        member.dir.config(&with_late);
    }
    cluster.sighup(1)?;
    eventually("the reloaded credential is set", CONVERGE, || async {
        let rows = credentials_sql("SELECT name FROM credentials WHERE name = 'late'")
            .await
            .map_err(|e| e.to_string())?;
        if rows == json!([{"name": "late"}]) {
            Ok(())
        } else {
            Err(format!("credentials: {rows}"))
        }
    })
    .await?;
    let late_client = Client::connect_with_token(url, Some(LATE)).await?;
    late_client.call("ping", vec![]).await?;

    // Revoked through one node, refused on another: open connections at
    // their next request, new ones at the upgrade.
    let other = Client::connect_with_token(&cluster.members[2].client_url, Some(APP)).await?;
    let revoked = mpreg_tests::http()
        .delete(format!("{}/credentials/app", cluster.members[0].admin_url))
        .bearer_auth(OPS)
        .send()
        .await?;
    assert_eq!(revoked.status().as_u16(), 200);
    let still = eventually("the revocation reaches member 2", CONVERGE, || async {
        match other.call("echo", vec![json!(1)]).await {
            Err(mpreg_client::ClientError::Rpc(e)) => Ok(e),
            answer => Err(format!("still answered: {answer:?}")),
        }
    })
    .await?;
    assert_eq!(still.code, 1018);
    assert_eq!(still.details.as_deref(), Some("credential app was revoked"));
    // Member 1 applies the revocation in its own time; upgrades before
    // that are accepted and not counted.
    eventually("member 1 refuses the revoked token", CONVERGE, || async {
        match upgrade_status(url, &[("x-api-key", APP)]).await {
            Ok(401) => Ok(()),
            answer => Err(format!("{answer:?}")),
        }
    })
    .await?;
    let again = mpreg_tests::http()
        .delete(format!("{admin}/credentials/app"))
        .bearer_auth(OPS)
        .send()
        .await?;
    assert_eq!(again.status().as_u16(), 409);

    // What member 1 counted: every refusal above, by reason.
    assert_eq!(client_refusals(admin, "missing_token").await?, 2.0);
    assert_eq!(client_refusals(admin, "unknown_token").await?, 2.0);
    assert_eq!(client_refusals(admin, "denied").await?, 8.0);
    Ok(())
}

/// The certificate the node at `url` (`wss://host:port`) serves in a TLS
/// handshake, verified against `ca`.
async fn served_certificate(url: &str, ca: &Path) -> Result<Vec<u8>> {
    let addr = url.trim_start_matches("wss://");
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in mpreg_client::tls::read_certs(ca).map_err(anyhow::Error::msg)? {
        roots.add(cert)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(mpreg_client::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let (_, connection) = stream.get_ref();
    let chain = connection
        .peer_certificates()
        .context("no certificate served")?;
    Ok(chain.first().context("an empty chain")?.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_serves_and_replicates_over_tls_and_reloads_its_certificate() -> Result<()> {
    let files = TestDir::new();
    let path = |name: &str| files.path().join(name);
    let ca = TestCa::new("mpreg test CA")?;
    ca.write_ca(&path("ca.pem"))?;
    let first = ca.issue(&path("cert.pem"), &path("key.pem"))?;
    let secret = secret_file(&files, "cluster.secret", "correct horse battery staple")?;
    let quoted = |p: PathBuf| format!("{:?}", p.display().to_string());
    let config = format!(
        "tls_cert_file = {}\ntls_key_file = {}\ntls_ca_file = {}\ncluster_secret_file = {}\n",
        quoted(path("cert.pem")),
        quoted(path("key.pem")),
        quoted(path("ca.pem")),
        quoted(secret),
    );
    // The members find and join each other over wss:// (with the cluster
    // secret proved inside TLS).
    let cluster = Cluster::start(3, &config).await?;
    let leader = cluster.wait_leader(&[0, 1, 2], CONVERGE).await?;
    let follower = (leader + 1) % 3;
    let url = cluster.members[follower].client_url.clone();
    ensure!(url.starts_with("wss://"), "client URL {url}");

    let trusting = |ca: &Path| -> Result<ConnectOptions> {
        Ok(ConnectOptions {
            tls: Some(TlsClient::new(ca, None).map_err(anyhow::Error::msg)?),
            ..ConnectOptions::default()
        })
    };
    let client = Client::connect_with(&url, &trusting(&path("ca.pem"))?).await?;
    // Through a follower: forwarded to the leader over the TLS peer links,
    // replicated back to every member.
    client.queue("create", json!({"queue_name": "tls"})).await?;
    client
        .queue("send", json!({"queue_name": "tls", "payload": 1}))
        .await?;
    cluster.wait_converged(&[0, 1, 2], CONVERGE).await?;

    // Plain WebSocket on the TLS port, or a client trusting another CA: no.
    let plain = url.replacen("wss://", "ws://", 1);
    ensure!(
        Client::connect(&plain).await.is_err(),
        "a plain WebSocket was accepted on a TLS listener"
    );
    let other = TestCa::new("another CA")?;
    other.write_ca(&path("other.pem"))?;
    let refused = Client::connect_with(&url, &trusting(&path("other.pem"))?)
        .await
        .err()
        .context("a client trusting another CA connected")?;
    ensure!(
        refused.to_string().contains("UnknownIssuer"),
        "refused for another reason: {refused}"
    );
    let without_trust = Client::connect(&url)
        .await
        .err()
        .context("wss without a CA")?;
    ensure!(
        without_trust.to_string().contains("needs a CA file"),
        "{without_trust}"
    );

    // New files are served once the node is told to reload, and only then;
    // the connection opened before keeps working.
    assert_eq!(served_certificate(&url, &path("ca.pem")).await?, first);
    let second = ca.issue(&path("cert.pem"), &path("key.pem"))?;
    assert_eq!(served_certificate(&url, &path("ca.pem")).await?, first);
    cluster.sighup(follower)?;
    eventually("the reloaded certificate is served", CONVERGE, || async {
        match served_certificate(&url, &path("ca.pem")).await {
            Ok(der) if der == second => Ok(()),
            Ok(_) => Err("still the first certificate".to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    client
        .queue("send", json!({"queue_name": "tls", "payload": 2}))
        .await?;
    // Stats answer from what this follower applied: both sends, soon.
    eventually("both sends counted on the follower", CONVERGE, || async {
        let stats = client
            .queue("stats", json!({"queue_name": "tls"}))
            .await
            .map_err(|e| e.to_string())?;
        match stats["queues"][0]["depth"].as_u64() {
            Some(2) => Ok(()),
            _ => Err(stats.to_string()),
        }
    })
    .await?;

    // With admin_tls, admin HTTP is https:// with the same certificate.
    let dir = TestDir::new();
    let mut args = dir.config(&config);
    args.push("--admin-tls".to_string());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let single = Daemon::start(&dir, &refs)?;
    let admin = single.ready.admin_url.clone();
    ensure!(admin.starts_with("https://"), "admin URL {admin}");
    let ca_pem = std::fs::read(path("ca.pem"))?;
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem)?)
        .build()?;
    let health = https.get(format!("{admin}/health")).send().await?;
    assert_eq!(health.status().as_u16(), 200);
    let plain = admin.replacen("https://", "http://", 1);
    ensure!(
        mpreg_tests::http()
            .get(format!("{plain}/health"))
            .send()
            .await
            .is_err(),
        "plain HTTP answered on the TLS admin port"
    );
    single.stop()?;
    Ok(())
}

/// Mutual TLS: with `tls_client_ca_file`, every connection must present a
/// certificate the CA signed, and a member's certificate must name its
/// node (`mpreg://<cluster>/<node>`); a node holding a good certificate
/// of another node cannot join, and moves neither the term nor the
/// membership.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_client_certificates_only_certified_nodes_and_clients_connect() -> Result<()> {
    let files = TestDir::new();
    let path = |name: &str| files.path().join(name);
    let ca = TestCa::new("mpreg test CA")?;
    ca.write_ca(&path("ca.pem"))?;
    for node in ["n1", "n2", "n3"] {
        let uri = format!("mpreg://local/{node}");
        ca.issue_naming(
            &path(&format!("{node}.pem")),
            &path(&format!("{node}.key")),
            &[&uri],
        )?;
    }
    let dir = files.path().display().to_string();
    let ca_file = path("ca.pem").display().to_string();
    let config = format!(
        "tls_cert_file = \"{dir}/{{node}}.pem\"\ntls_key_file = \"{dir}/{{node}}.key\"\ntls_ca_file = {ca_file:?}\ntls_client_ca_file = {ca_file:?}\n"
    );
    let cluster = Cluster::start(3, &config).await?;
    let leader = cluster.wait_leader(&[0, 1, 2], CONVERGE).await?;
    let follower = (leader + 1) % 3;
    let url = cluster.members[follower].client_url.clone();

    // A client with a certificate of the CA is served; its write through
    // a follower crosses the certified peer links.
    ca.issue(&path("client.pem"), &path("client.key"))?;
    let options = |cert: Option<(&str, &str)>| -> Result<ConnectOptions> {
        let (cert, key) = match cert {
            Some((cert, key)) => (Some(path(cert)), Some(path(key))),
            None => (None, None),
        };
        let pair = cert.as_deref().zip(key.as_deref());
        Ok(ConnectOptions {
            tls: Some(TlsClient::new(&path("ca.pem"), pair).map_err(anyhow::Error::msg)?),
            ..ConnectOptions::default()
        })
    };
    let client = Client::connect_with(&url, &options(Some(("client.pem", "client.key")))?).await?;
    client
        .queue("create", json!({"queue_name": "mtls"}))
        .await?;
    client
        .queue("send", json!({"queue_name": "mtls", "payload": 1}))
        .await?;
    cluster.wait_converged(&[0, 1, 2], CONVERGE).await?;

    // Without a certificate, or with one another CA signed: refused in the
    // TLS handshake.
    let refused = Client::connect_with(&url, &options(None)?)
        .await
        .err()
        .context("a client without a certificate connected")?;
    ensure!(
        refused.to_string().contains("CertificateRequired"),
        "refused for another reason: {refused}"
    );
    let other = TestCa::new("another CA")?;
    other.issue(&path("other.pem"), &path("other.key"))?;
    let refused = Client::connect_with(&url, &options(Some(("other.pem", "other.key")))?)
        .await
        .err()
        .context("a client with another CA's certificate connected")?;
    ensure!(
        refused.to_string().contains("UnknownCA"),
        "refused for another reason: {refused}"
    );

    // A node whose certificate (signed by the CA) names another node.
    let before = cluster.status(leader).await?;
    let leader_url = cluster.members[leader].client_url.clone();
    let leader_admin = cluster.members[leader].admin_url.clone();
    ca.issue_naming(&path("n4.pem"), &path("n4.key"), &["mpreg://local/n1"])?;
    let joiner = TestDir::new();
    let (cert, key) = (path("n4.pem"), path("n4.key"));
    let out = mpreg_tests::start_expecting_exit_with(
        &joiner,
        &[
            "--join",
            &leader_url,
            "--node-id",
            "n4",
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
            "--tls-ca",
            &ca_file,
            "--tls-client-ca",
            &ca_file,
        ],
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "the joiner exited 0: {stderr}");
    ensure!(
        stderr.contains("does not name it") && stderr.contains("mpreg://local/n4"),
        "the joiner's error does not name the certificate: {stderr}"
    );
    ensure!(
        refusals(&leader_admin, "certificate").await? >= 1.0,
        "the leader counted no certificate refusal"
    );
    let after = cluster.status(leader).await?;
    assert_eq!(after["term"], before["term"], "{before} -> {after}");
    let peers = sql_rows(&leader_admin, "SELECT peer FROM peers ORDER BY peer").await?;
    assert_eq!(peers.len(), 3, "{peers:?}");
    Ok(())
}

/// Federation over mutual TLS: a neighbour cluster's node must present a
/// certificate that names it (`mpreg://<its cluster>/<its node>`). A node
/// of c3 holding a good certificate of c2's node is refused and no link
/// or route to c3 appears; c2, with its own certificate, links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_links_over_mutual_tls_need_a_certificate_naming_the_neighbour() -> Result<()> {
    let files = TestDir::new();
    let path = |name: &str| files.path().join(name);
    let ca = TestCa::new("federation CA")?;
    ca.write_ca(&path("ca.pem"))?;
    let ca_file = path("ca.pem").display().to_string();
    // A single-node cluster whose certificate names `named`.
    let start = |cluster: &str, node: &str, named: &str, federate: Option<&str>| {
        let (cert, key) = (path(&format!("{node}.pem")), path(&format!("{node}.key")));
        ca.issue_naming(&cert, &key, &[named])?;
        let dir = TestDir::new();
        let mut args: Vec<String> = [
            "--cluster-id",
            cluster,
            "--node-id",
            node,
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
            "--tls-ca",
            &ca_file,
            "--tls-client-ca",
            &ca_file,
        ]
        .map(String::from)
        .to_vec();
        if let Some(url) = federate {
            args.extend(["--federate".to_string(), url.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let daemon = Daemon::start(&dir, &args)?;
        anyhow::Ok((daemon, dir))
    };
    let (c1, _c1_dir) = start("c1", "a1", "mpreg://c1/a1", None)?;
    let c1_url = c1.ready.client_url.clone();
    ensure!(c1_url.starts_with("wss://"), "{c1_url}");
    let c1_admin = c1.ready.admin_url.clone();
    let (_c2, _c2_dir) = start("c2", "b1", "mpreg://c2/b1", Some(&c1_url))?;
    let (_c3, _c3_dir) = start("c3", "x1", "mpreg://c2/b1", Some(&c1_url))?;

    eventually("c1's route to c2", CONVERGE, || async {
        let rows = sql_rows(&c1_admin, "SELECT dest FROM routes WHERE dest = 'c2'")
            .await
            .map_err(|e| e.to_string())?;
        if rows.is_empty() {
            Err("none yet".to_string())
        } else {
            Ok(())
        }
    })
    .await?;
    eventually("c1 to refuse c3's certificate", CONVERGE, || async {
        match refusals(&c1_admin, "certificate").await {
            Ok(n) if n >= 1.0 => Ok(()),
            Ok(n) => Err(format!("{n} refusals")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    let links = sql_rows(
        &c1_admin,
        "SELECT cluster_id FROM federation_links ORDER BY cluster_id",
    )
    .await?;
    assert_eq!(
        links,
        [json!({"cluster_id": "c2"})],
        "c3 linked with another node's certificate"
    );
    let routes = sql_rows(&c1_admin, "SELECT dest FROM routes WHERE dest = 'c3'").await?;
    assert!(routes.is_empty(), "c1 learned a route to c3: {routes:?}");
    Ok(())
}
