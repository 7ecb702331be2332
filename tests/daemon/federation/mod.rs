//! Federation between real daemons, each its own cluster: links made with
//! `--federate` and `/federation/links`, routes learned over them in a
//! line and a ring, withdrawn when a cluster dies (well before the route
//! TTL), learned again when it returns, and kept across restarts; a link
//! cut at its proxies; a hostile neighbour speaking the peer protocol
//! (`wire`); calls across clusters (`calls`); pub/sub across clusters
//! (`topics`); queues across clusters (`queues`);
//! the cache across clusters (`caches`).

mod caches;
mod calls;
mod queues;
mod topics;
mod wire;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use mpreg_tests::proxy::Proxy;
use mpreg_tests::{Daemon, TestDir, eventually, http, replay, sql_rows, status_of};
use serde_json::Value;

/// Longest a route change may take to spread over a few clusters.
const CONVERGE: Duration = Duration::from_secs(30);

/// One single-node cluster of a test federation, optionally behind a
/// proxy it advertises as its URL (node id `<cluster>-n1`), so that every
/// link to it crosses the proxy and can be cut there.
struct Cluster {
    id: String,
    /// Dropped before `dir`: its log tail is printed from there.
    daemon: Option<Daemon>,
    dir: TestDir,
    proxy: Option<Proxy>,
}

impl Cluster {
    fn start(id: &str, federate: &[&Cluster], extra: &[&str]) -> Result<Cluster> {
        let mut cluster = Cluster {
            id: id.to_string(),
            dir: TestDir::new(),
            daemon: None,
            proxy: None,
        };
        cluster.restart(federate, extra)?;
        Ok(cluster)
    }

    async fn start_behind_proxy(id: &str, federate: &[&Cluster]) -> Result<Cluster> {
        let mut cluster = Cluster {
            id: id.to_string(),
            dir: TestDir::new(),
            daemon: None,
            proxy: Some(Proxy::start().await?),
        };
        tokio::task::block_in_place(|| cluster.restart(federate, &[]))?;
        Ok(cluster)
    }

    fn restart(&mut self, federate: &[&Cluster], extra: &[&str]) -> Result<()> {
        let urls: Vec<String> = federate
            .iter()
            .map(|c| c.link_url())
            .collect::<Result<_>>()?;
        let joined = urls.join(",");
        let mut args: Vec<String> = vec!["--cluster-id".into(), self.id.clone()];
        if !urls.is_empty() {
            args.extend(["--federate".into(), joined]);
        }
        if let Some(proxy) = &self.proxy {
            args.extend([
                "--node-id".into(),
                self.node_id(),
                "--advertise-url".into(),
                proxy.url(),
            ]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let daemon = Daemon::start_with(&self.dir, &args, |addr| {
            if let Some(proxy) = &self.proxy {
                proxy.set_target(addr);
            }
            Ok(())
        })?;
        self.daemon = Some(daemon);
        Ok(())
    }

    /// The node id of a cluster behind a proxy.
    fn node_id(&self) -> String {
        format!("{}-n1", self.id)
    }

    /// The URL neighbours link to: the proxy's, else the node's.
    fn link_url(&self) -> Result<String> {
        match &self.proxy {
            Some(proxy) => Ok(proxy.url()),
            None => self.client_url(),
        }
    }

    /// Cuts the link between this cluster and `other` (both behind
    /// proxies) both ways, or heals every cut of both.
    fn cut(&self, other: &Cluster, cut: bool) -> Result<()> {
        let (Some(mine), Some(theirs)) = (&self.proxy, &other.proxy) else {
            bail!("{} and {} are not both behind proxies", self.id, other.id);
        };
        if cut {
            mine.block(&other.node_id());
            theirs.block(&self.node_id());
        } else {
            mine.unblock_all();
            theirs.unblock_all();
        }
        Ok(())
    }

    fn daemon(&self) -> Result<&Daemon> {
        self.daemon
            .as_ref()
            .with_context(|| format!("cluster {} is not running", self.id))
    }

    fn client_url(&self) -> Result<String> {
        Ok(self.daemon()?.ready.client_url.clone())
    }

    fn admin(&self) -> Result<String> {
        Ok(self.daemon()?.ready.admin_url.clone())
    }

    fn kill9(&mut self) -> Result<()> {
        if let Some(daemon) = self.daemon.take() {
            daemon.kill9()?;
        }
        Ok(())
    }
}

/// `(dest, next_hop, path, hops)` of the active route of each destination
/// other than the cluster itself.
type Active = BTreeMap<String, (String, Vec<String>, u64)>;

async fn active_routes(cluster: &Cluster) -> Result<Active> {
    let rows = sql_rows(
        &cluster.admin()?,
        &format!(
            "SELECT dest, next_hop, path, hops FROM routes WHERE state = 'active' AND dest <> '{}'",
            cluster.id
        ),
    )
    .await?;
    let mut active = Active::new();
    for row in rows {
        let text = |k: &str| row[k].as_str().map(str::to_string).context(k.to_string());
        let path: Vec<String> = serde_json::from_value(row["path"].clone())?;
        let hops = row["hops"].as_u64().context("hops")?;
        if active
            .insert(text("dest")?, (text("next_hop")?, path, hops))
            .is_some()
        {
            bail!("two active routes to one destination on {}", cluster.id);
        }
    }
    Ok(active)
}

/// Every route row of `cluster` starts at it, ends at its destination
/// and visits no cluster twice.
async fn assert_loop_free(cluster: &Cluster) -> Result<()> {
    let rows = sql_rows(
        &cluster.admin()?,
        &format!(
            "SELECT dest, path FROM routes WHERE dest <> '{}'",
            cluster.id
        ),
    )
    .await?;
    for row in rows {
        let path: Vec<String> = serde_json::from_value(row["path"].clone())?;
        let mut seen = path.clone();
        seen.sort();
        seen.dedup();
        ensure!(
            seen.len() == path.len(),
            "{}: a loop in {path:?}",
            cluster.id
        );
        ensure!(
            path.first() == Some(&cluster.id),
            "{}: {path:?}",
            cluster.id
        );
        ensure!(path.last() == row["dest"].as_str().map(str::to_string).as_ref());
    }
    Ok(())
}

/// Waits until `cluster` has an active route to exactly the destinations
/// of `expected`, each along one of the paths given for it (equal-hop
/// alternatives are listed twice: measured latency picks one); next hop
/// and hops must follow from the path.
async fn wait_for_routes(cluster: &Cluster, expected: &[(&str, &[&str])]) -> Result<Duration> {
    let started = Instant::now();
    let mut want: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    for (dest, path) in expected {
        want.entry(dest.to_string())
            .or_default()
            .push(path.iter().map(|s| s.to_string()).collect());
    }
    eventually(
        &format!("routes of {} to be one of {want:?}", cluster.id),
        CONVERGE,
        || async {
            let seen = active_routes(cluster).await.map_err(|e| e.to_string())?;
            let matches = seen.len() == want.len()
                && seen.iter().all(|(dest, (next_hop, path, hops))| {
                    want.get(dest).is_some_and(|paths| paths.contains(path))
                        && path.get(1) == Some(next_hop)
                        && *hops == path.len() as u64 - 1
                });
            if matches {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await?;
    Ok(started.elapsed())
}

async fn links(cluster: &Cluster) -> Result<Vec<Value>> {
    let body: Value = http()
        .get(format!("{}/federation/links", cluster.admin()?))
        .send()
        .await?
        .json()
        .await?;
    Ok(body["links"].as_array().cloned().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clusters_in_a_line_route_through_the_middle() -> Result<()> {
    let c1 = Cluster::start("c1", &[], &[])?;
    let c2 = Cluster::start("c2", &[&c1], &[])?;
    let c3 = Cluster::start("c3", &[&c2], &[])?;

    wait_for_routes(&c1, &[("c2", &["c1", "c2"]), ("c3", &["c1", "c2", "c3"])]).await?;
    wait_for_routes(&c2, &[("c1", &["c2", "c1"]), ("c3", &["c2", "c3"])]).await?;
    wait_for_routes(&c3, &[("c1", &["c3", "c2", "c1"]), ("c2", &["c3", "c2"])]).await?;
    for cluster in [&c1, &c2, &c3] {
        assert_loop_free(cluster).await?;
    }

    // The query, verbatim, on the first cluster.
    let rows = sql_rows(
        &c1.admin()?,
        "SELECT dest,next_hop,path,hops,state FROM routes WHERE dest='c3'",
    )
    .await?;
    assert_eq!(
        rows,
        [
            serde_json::json!({"dest":"c3","next_hop":"c2","path":["c1","c2","c3"],"hops":2,"state":"active"})
        ]
    );

    // c1 was linked by c2's --federate, and holds the link too.
    let seen = links(&c1).await?;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["cluster_id"], "c2");
    eventually("c1's link to c2 to be up", CONVERGE, || async {
        let seen = links(&c1).await.map_err(|e| e.to_string())?;
        match seen
            .first()
            .map(|l| (l["state"].clone(), l["rtt_ms"].clone()))
        {
            Some((state, rtt)) if state == "up" && rtt.is_f64() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mesh_routes_directly_with_every_other_neighbour_as_backup() -> Result<()> {
    let c1 = Cluster::start("c1", &[], &[])?;
    let c2 = Cluster::start("c2", &[&c1], &[])?;
    let c3 = Cluster::start("c3", &[&c1, &c2], &[])?;
    let c4 = Cluster::start("c4", &[&c1, &c2, &c3], &[])?;
    let all = [&c1, &c2, &c3, &c4];
    for cluster in all {
        let direct: Vec<(String, [String; 2])> = all
            .iter()
            .filter(|other| other.id != cluster.id)
            .map(|other| (other.id.clone(), [cluster.id.clone(), other.id.clone()]))
            .collect();
        let expected: Vec<(&str, Vec<&str>)> = direct
            .iter()
            .map(|(dest, path)| (dest.as_str(), path.iter().map(String::as_str).collect()))
            .collect();
        let expected: Vec<(&str, &[&str])> = expected
            .iter()
            .map(|(dest, path)| (*dest, path.as_slice()))
            .collect();
        wait_for_routes(cluster, &expected).await?;
        assert_loop_free(cluster).await?;
    }
    // Each of the two other neighbours announces its direct route: two
    // backups of two hops per destination, on every cluster.
    for cluster in all {
        eventually(
            &format!("two backups per destination on {}", cluster.id),
            CONVERGE,
            || async {
                let rows = sql_rows(
                    &cluster.admin().map_err(|e| e.to_string())?,
                    &format!(
                        "SELECT dest, count(*) AS n, min(hops) AS lo, max(hops) AS hi FROM routes \
                         WHERE state = 'backup' AND dest <> '{}' GROUP BY dest ORDER BY dest",
                        cluster.id
                    ),
                )
                .await
                .map_err(|e| e.to_string())?;
                let seen: Vec<(String, u64, u64, u64)> = rows
                    .iter()
                    .map(|r| {
                        (
                            r["dest"].as_str().unwrap_or_default().to_string(),
                            r["n"].as_u64().unwrap_or_default(),
                            r["lo"].as_u64().unwrap_or_default(),
                            r["hi"].as_u64().unwrap_or_default(),
                        )
                    })
                    .collect();
                let want: Vec<(String, u64, u64, u64)> = all
                    .iter()
                    .filter(|other| other.id != cluster.id)
                    .map(|other| (other.id.clone(), 2, 2, 2))
                    .collect();
                if seen == want {
                    Ok(())
                } else {
                    Err(format!("{seen:?}"))
                }
            },
        )
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_reroutes_around_a_dead_cluster_before_the_ttl_and_heals() -> Result<()> {
    let c1 = Cluster::start("c1", &[], &[])?;
    let mut c2 = Cluster::start("c2", &[&c1], &[])?;
    let c3 = Cluster::start("c3", &[&c2], &[])?;
    let c4 = Cluster::start("c4", &[&c3, &c1], &[])?;

    let whole_ring_from_c1: &[(&str, &[&str])] = &[
        ("c2", &["c1", "c2"]),
        ("c4", &["c1", "c4"]),
        ("c3", &["c1", "c2", "c3"]),
        ("c3", &["c1", "c4", "c3"]),
    ];
    wait_for_routes(&c1, whole_ring_from_c1).await?;
    wait_for_routes(
        &c2,
        &[
            ("c1", &["c2", "c1"]),
            ("c3", &["c2", "c3"]),
            ("c4", &["c2", "c1", "c4"]),
            ("c4", &["c2", "c3", "c4"]),
        ],
    )
    .await?;
    wait_for_routes(
        &c3,
        &[
            ("c2", &["c3", "c2"]),
            ("c4", &["c3", "c4"]),
            ("c1", &["c3", "c2", "c1"]),
            ("c1", &["c3", "c4", "c1"]),
        ],
    )
    .await?;
    wait_for_routes(
        &c4,
        &[
            ("c3", &["c4", "c3"]),
            ("c1", &["c4", "c1"]),
            ("c2", &["c4", "c3", "c2"]),
            ("c2", &["c4", "c1", "c2"]),
        ],
    )
    .await?;
    for cluster in [&c1, &c2, &c3, &c4] {
        assert_loop_free(cluster).await?;
    }

    let cut = Instant::now();
    c2.kill9()?;
    // link_dead is 3 s and the route TTL 30 s by default: rerouting must
    // come from withdrawals, not from expiry.
    wait_for_routes(&c1, &[("c4", &["c1", "c4"]), ("c3", &["c1", "c4", "c3"])]).await?;
    wait_for_routes(&c3, &[("c4", &["c3", "c4"]), ("c1", &["c3", "c4", "c1"])]).await?;
    wait_for_routes(&c4, &[("c1", &["c4", "c1"]), ("c3", &["c4", "c3"])]).await?;
    let rerouted = cut.elapsed();
    ensure!(
        rerouted < Duration::from_secs(20),
        "rerouting took {rerouted:?}: that is expiry (30 s), not withdrawal"
    );
    for cluster in [&c1, &c3, &c4] {
        assert_loop_free(cluster).await?;
    }

    // c2 comes back on a new port with no --federate: its links are in its
    // log, and its neighbours learn its new URL from its announcements.
    c2.restart(&[], &[])?;
    wait_for_routes(&c1, whole_ring_from_c1).await?;
    wait_for_routes(
        &c2,
        &[
            ("c1", &["c2", "c1"]),
            ("c3", &["c2", "c3"]),
            ("c4", &["c2", "c1", "c4"]),
            ("c4", &["c2", "c3", "c4"]),
        ],
    )
    .await?;
    Ok(())
}

/// The state of `cluster`'s link to `neighbour` in `/federation/links`.
async fn link_state(cluster: &Cluster, neighbour: &str) -> Result<String> {
    let links = links(cluster).await?;
    let link = links
        .iter()
        .find(|l| l["cluster_id"] == neighbour)
        .with_context(|| format!("{} has no link to {neighbour}: {links:?}", cluster.id))?;
    Ok(link["state"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_reroutes_around_a_link_cut_at_its_proxies_and_takes_it_back_when_healed()
-> Result<()> {
    let c1 = Cluster::start_behind_proxy("c1", &[]).await?;
    let c2 = Cluster::start_behind_proxy("c2", &[&c1]).await?;
    let c3 = Cluster::start_behind_proxy("c3", &[&c2]).await?;
    let c4 = Cluster::start_behind_proxy("c4", &[&c3, &c1]).await?;
    let whole_ring_from_c1: &[(&str, &[&str])] = &[
        ("c2", &["c1", "c2"]),
        ("c4", &["c1", "c4"]),
        ("c3", &["c1", "c2", "c3"]),
        ("c3", &["c1", "c4", "c3"]),
    ];
    let whole_ring_from_c2: &[(&str, &[&str])] = &[
        ("c1", &["c2", "c1"]),
        ("c3", &["c2", "c3"]),
        ("c4", &["c2", "c1", "c4"]),
        ("c4", &["c2", "c3", "c4"]),
    ];
    wait_for_routes(&c1, whole_ring_from_c1).await?;
    wait_for_routes(&c2, whole_ring_from_c2).await?;

    // Both clusters live on; only the link between them is gone, so each
    // side must find it dead by itself.
    c1.cut(&c2, true)?;
    wait_for_routes(
        &c1,
        &[
            ("c4", &["c1", "c4"]),
            ("c3", &["c1", "c4", "c3"]),
            ("c2", &["c1", "c4", "c3", "c2"]),
        ],
    )
    .await?;
    wait_for_routes(
        &c2,
        &[
            ("c3", &["c2", "c3"]),
            ("c4", &["c2", "c3", "c4"]),
            ("c1", &["c2", "c3", "c4", "c1"]),
        ],
    )
    .await?;
    ensure!(link_state(&c1, "c2").await? == "down");
    ensure!(link_state(&c2, "c1").await? == "down");
    for cluster in [&c1, &c2, &c3, &c4] {
        assert_loop_free(cluster).await?;
    }

    c1.cut(&c2, false)?;
    wait_for_routes(&c1, whole_ring_from_c1).await?;
    wait_for_routes(&c2, whole_ring_from_c2).await?;
    ensure!(link_state(&c1, "c2").await? == "up");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_cluster_has_its_links_and_routes_from_its_log() -> Result<()> {
    let mut c1 = Cluster::start("c1", &[], &[])?;
    let mut c2 = Cluster::start("c2", &[&c1], &[])?;
    let c3 = Cluster::start("c3", &[&c2], &[])?;
    wait_for_routes(&c1, &[("c2", &["c1", "c2"]), ("c3", &["c1", "c2", "c3"])]).await?;

    // With c2 dead, nothing can announce to c1: what it shows after its
    // restart comes from its log.
    c2.kill9()?;
    c1.kill9()?;
    c1.restart(&[], &[])?;
    let rows = sql_rows(
        &c1.admin()?,
        "SELECT dest, next_hop, path FROM routes WHERE dest <> 'c1' ORDER BY dest",
    )
    .await?;
    assert_eq!(
        rows,
        [
            serde_json::json!({"dest":"c2","next_hop":"c2","path":["c1","c2"]}),
            serde_json::json!({"dest":"c3","next_hop":"c2","path":["c1","c2","c3"]}),
        ]
    );
    let seen = links(&c1).await?;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["cluster_id"], "c2");

    // The dead link is found and its routes withdrawn.
    wait_for_routes(&c1, &[]).await?;

    let status = status_of(&c1.admin()?).await?;
    c1.daemon.take().context("c1 runs")?.stop()?;
    let replayed = replay(&c1.dir.data())?;
    assert_eq!(replayed["last_applied"], status["last_applied"]);
    assert_eq!(replayed["views_digest"], status["views_digest"]);
    drop(c3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_are_added_refused_and_removed_at_run_time() -> Result<()> {
    let c1 = Cluster::start("c1", &[], &[])?;
    let c2 = Cluster::start("c2", &[], &[])?;
    let admin = c1.admin()?;
    let post = |url: String| {
        let admin = admin.clone();
        async move {
            let response = http()
                .post(format!("{admin}/federation/links"))
                .json(&serde_json::json!({ "url": url }))
                .send()
                .await?;
            let status = response.status().as_u16();
            let body: Value = response.json().await?;
            anyhow::Ok((status, body))
        }
    };

    let (status, body) = post(c1.client_url()?).await?;
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&c1.client_url()?) && error.contains("(c1)"),
        "{error}"
    );

    let (status, body) = post(c2.client_url()?).await?;
    assert_eq!(
        (status, body["cluster_id"].as_str()),
        (200, Some("c2")),
        "{body}"
    );
    wait_for_routes(&c1, &[("c2", &["c1", "c2"])]).await?;
    wait_for_routes(&c2, &[("c1", &["c2", "c1"])]).await?;

    let response = http()
        .delete(format!("{admin}/federation/links/c2"))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    wait_for_routes(&c1, &[]).await?;
    wait_for_routes(&c2, &[]).await?;
    assert!(links(&c1).await?.is_empty());
    assert!(links(&c2).await?.is_empty());

    let response = http()
        .delete(format!("{admin}/federation/links/c9"))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 404);
    Ok(())
}

/// The destinations member `i` of `cluster` has an active route to.
async fn active_on_member(
    cluster: &mpreg_tests::cluster::Cluster,
    i: usize,
) -> Result<Vec<String>> {
    let rows = cluster
        .sql(
            i,
            "SELECT dest FROM routes WHERE state = 'active' AND dest <> 'c1' ORDER BY dest",
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| r["dest"].as_str().map(str::to_string))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_keeps_its_links_and_routes_when_its_leader_dies() -> Result<()> {
    let mut c1 = mpreg_tests::cluster::Cluster::start(3, "cluster_id = \"c1\"\n").await?;
    let c2 = Cluster::start("c2", &[], &[])?;
    // Linked through one member only: the others are learned from
    // announcements.
    let response = http()
        .post(format!("{}/federation/links", c2.admin()?))
        .json(&serde_json::json!({ "url": c1.members[0].client_url }))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    wait_for_routes(&c2, &[("c1", &["c2", "c1"])]).await?;
    for i in 0..3 {
        eventually(
            &format!("member {i} of c1 to route to c2"),
            CONVERGE,
            || async {
                match active_on_member(&c1, i).await {
                    Ok(dests) if dests == ["c2"] => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await?;
    }
    // c2 learns every member's advertised URL from c1's announcements.
    let members: Vec<Value> = c1
        .members
        .iter()
        .map(|m| Value::from(m.proxy.url()))
        .collect();
    eventually("c2 to know every member of c1", CONVERGE, || async {
        let seen = links(&c2).await.map_err(|e| e.to_string())?;
        match seen.first().and_then(|l| l["urls"].as_array()) {
            Some(urls) if members.iter().all(|m| urls.contains(m)) => Ok(()),
            other => Err(format!("{other:?}, want {members:?}")),
        }
    })
    .await?;

    let all = [0, 1, 2];
    let leader = c1.wait_leader(&all, CONVERGE).await?;
    c1.kill9(leader)?;
    let rest: Vec<usize> = all.into_iter().filter(|&i| i != leader).collect();
    c1.wait_leader(&rest, CONVERGE).await?;
    // Through the change of leader, c2 never loses its route to c1, and
    // the surviving members of c1 keep theirs to c2.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(6) {
        let seen = active_routes(&c2).await?;
        ensure!(seen.contains_key("c1"), "c2 lost its route to c1: {seen:?}");
        for &i in &rest {
            ensure!(
                active_on_member(&c1, i).await? == ["c2"],
                "member {i} of c1 lost its route to c2"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = links(&c2).await?;
    assert_eq!(seen[0]["state"], "up", "{seen:?}");
    Ok(())
}

/// Rows of `route_keys` for `cluster` on `on`: `(key_id, expires_at set, primary)`.
async fn route_keys(on: &Cluster, cluster: &str) -> Result<Vec<(String, bool, bool)>> {
    let rows = sql_rows(
        &on.admin()?,
        &format!(
            "SELECT key_id, expires_at, \"primary\" FROM route_keys WHERE cluster = '{cluster}' ORDER BY key_id"
        ),
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r["key_id"].as_str().unwrap_or_default().to_string(),
                !r["expires_at"].is_null(),
                r["primary"] == true,
            )
        })
        .collect())
}

/// Waits until `route_keys` of `cluster` on `on` is exactly `expected`.
async fn wait_for_keys(
    on: &Cluster,
    cluster: &str,
    expected: &[(String, bool, bool)],
) -> Result<()> {
    let what = format!("route keys of {cluster} on {} to be {expected:?}", on.id);
    eventually(&what, CONVERGE, || async {
        match route_keys(on, cluster).await {
            Ok(keys) if keys == expected => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// The rejections `on` counted from neighbour `cluster`, by reason.
async fn rejections(on: &Cluster, cluster: &str) -> Result<Value> {
    let link = links(on)
        .await?
        .into_iter()
        .find(|l| l["cluster_id"] == cluster)
        .with_context(|| format!("no link to {cluster}"))?;
    Ok(link["rejections"].clone())
}

/// Signed tables between real daemons that require signatures: each
/// learns the other's key on first contact; a rotation is learned under
/// the old key, both verify during the overlap, then only the new one,
/// and no table is refused along the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_tables_carry_a_rotated_key_through_its_overlap() -> Result<()> {
    let config = TestDir::new();
    let args = config.config("require_signatures = true\nkey_overlap_seconds = 2\n");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c1 = Cluster::start("c1", &[], &args)?;
    let c2 = Cluster::start("c2", &[&c1], &args)?;
    wait_for_routes(&c1, &[("c2", &["c1", "c2"])]).await?;
    wait_for_routes(&c2, &[("c1", &["c2", "c1"])]).await?;

    let key_file = c2.dir.data().join("route_keys.json");
    let mode = std::fs::metadata(&key_file)
        .with_context(|| format!("{}", key_file.display()))?
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let first = eventually("c1 holds c2's key", CONVERGE, || async {
        match route_keys(&c1, "c2").await {
            Ok(keys) if keys.len() == 1 && keys[0].2 && !keys[0].1 => Ok(keys[0].0.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    // c2 puts its own key on its log within a second of being linked.
    wait_for_keys(&c2, "c2", &[(first.clone(), false, true)]).await?;

    let response = http()
        .post(format!("{}/federation/rotate-key", c2.admin()?))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    let rotated: Value = response.json().await?;
    assert_eq!(rotated["previous_key_id"], first.as_str(), "{rotated}");
    let second = rotated["key_id"].as_str().context("key_id")?.to_string();
    assert_ne!(second, first);

    let mut both = vec![(first.clone(), true, false), (second.clone(), false, true)];
    both.sort();
    // During the overlap c1 holds both keys; after it, only the new one.
    wait_for_keys(&c1, "c2", &both).await?;
    for on in [&c1, &c2] {
        wait_for_keys(on, "c2", &[(second.clone(), false, true)]).await?;
    }
    // Tables signed by the new key alone still pass (the interval sends
    // c2's table again) and none was refused.
    let taken = |links: &[Value]| {
        links
            .iter()
            .find(|l| l["cluster_id"] == "c2")
            .and_then(|l| l["announcements_in"].as_u64())
            .unwrap_or(0)
    };
    let before = taken(&links(&c1).await?);
    eventually(
        "c1 takes a table signed by the new key alone",
        CONVERGE,
        || async {
            let now = taken(&links(&c1).await.map_err(|e| e.to_string())?);
            if now > before {
                Ok(())
            } else {
                Err(format!("{now} routes taken, {before} before"))
            }
        },
    )
    .await?;
    assert_eq!(
        rejections(&c1, "c2").await?,
        serde_json::json!({}),
        "no table of c2 was refused"
    );
    assert_eq!(active_routes(&c1).await?["c2"].0, "c2");
    Ok(())
}

/// A neighbour whose key changed without a rotation (its key file lost)
/// is refused by reason `signature`: its routes are not refreshed by
/// those tables, the refusals are counted, and both sides keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_signed_by_an_unknown_key_is_refused_and_counted() -> Result<()> {
    let c1 = Cluster::start("c1", &[], &[])?;
    let mut c2 = Cluster::start("c2", &[&c1], &[])?;
    wait_for_routes(&c1, &[("c2", &["c1", "c2"])]).await?;
    wait_for_routes(&c2, &[("c1", &["c2", "c1"])]).await?;
    eventually("c1 holds c2's key", CONVERGE, || async {
        match route_keys(&c1, "c2").await {
            Ok(keys) if keys.len() == 1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;

    c2.kill9()?;
    std::fs::remove_file(c2.dir.data().join("route_keys.json"))?;
    c2.restart(&[], &[])?;

    let refused = eventually("c1 refuses c2's new key", CONVERGE, || async {
        let seen = rejections(&c1, "c2").await.map_err(|e| e.to_string())?;
        match seen["signature"].as_u64() {
            Some(n) if n > 0 => Ok(seen),
            _ => Err(seen.to_string()),
        }
    })
    .await?;
    assert_eq!(
        refused.as_object().map(|o| o.len()),
        Some(1),
        "only signature refusals: {refused}"
    );
    let metrics = mpreg_tests::metrics_of(&c1.admin()?).await?;
    let counted = mpreg_tests::prom::parse(&metrics)?
        .samples
        .iter()
        .filter(|s| {
            s.name == "mpreg_federation_rejections_total"
                && s.labels.get("reason").map(String::as_str) == Some("signature")
        })
        .map(|s| s.value)
        .sum::<f64>();
    assert!(
        counted >= 1.0,
        "signature rejections in /metrics: {counted}"
    );
    assert_eq!(
        route_keys(&c1, "c2").await?.len(),
        1,
        "the unknown key was not learned"
    );
    // c1 still signs with the key c2 holds: c2 keeps learning from c1.
    wait_for_routes(&c2, &[("c1", &["c2", "c1"])]).await?;
    assert_eq!(rejections(&c2, "c1").await?, serde_json::json!({}));
    Ok(())
}
