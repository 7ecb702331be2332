//! A hostile neighbour over the wire: the test speaks the peer protocol as
//! cluster `evil` and sends malformed, oversized, expired, looping,
//! flapping and replayed route tables. Each is refused with its reason
//! and counted; what was good in them is taken, and the cluster keeps
//! serving its real neighbour. Calls it sends with a looping path, no hop
//! budget, no route or no target are refused before anything runs.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use mpreg_client::protocol::{ErrorCode, RpcError};
use mpreg_daemon::envelope::{
    Body, DEFAULT_HOP_BUDGET, ENVELOPE_VERSION, Envelope, FederatedCall, FederationReply,
    FederationRequest, PeerReply, PeerRequest, Refused,
};
use mpreg_storage::federation::{Announcement, RouteMetrics};
use mpreg_tests::{TestDir, Ws, sql_rows, status_of};
use tokio_tungstenite::tungstenite::Message;

use super::{Cluster, links, wait_for_routes};

const EVIL: &str = "evil";
const EVIL_NODE: &str = "evil-n1";

/// A peer connection to a member of the cluster under test, speaking for
/// cluster `evil`.
struct Neighbour {
    ws: Ws,
    next_id: u64,
}

impl Neighbour {
    async fn connect(client_url: &str) -> Result<Neighbour> {
        let url = format!("{client_url}/peer?from={EVIL_NODE}&lane=bulk");
        let (mut ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .with_context(|| format!("connect {url}"))?;
        let verdict = mpreg_tests::peer_handshake(&mut ws, EVIL, EVIL_NODE).await?;
        ensure!(verdict.get("accepted").is_some(), "handshake: {verdict}");
        Ok(Neighbour { ws, next_id: 0 })
    }

    async fn send(&mut self, request: FederationRequest) -> Result<u64> {
        let routing = (vec![EVIL.to_string()], DEFAULT_HOP_BUDGET, Some(EVIL));
        self.send_routed(request, routing).await
    }

    /// Sends `request` in an envelope with this `federation_path`,
    /// `hop_budget` and `target_cluster`.
    async fn send_routed(
        &mut self,
        request: FederationRequest,
        (path, budget, target): (Vec<String>, u8, Option<&str>),
    ) -> Result<u64> {
        self.next_id += 1;
        let mut envelope = Envelope::request(
            EVIL_NODE,
            EVIL,
            self.next_id,
            PeerRequest::Federation(request),
        );
        envelope.federation_path = path;
        envelope.hop_budget = budget;
        envelope.target_cluster = target.map(str::to_string);
        let bytes = envelope.encode().map_err(anyhow::Error::msg)?;
        self.ws.send(Message::binary(bytes)).await?;
        Ok(self.next_id)
    }

    /// Sends `request` and waits for its answer.
    async fn ask(
        &mut self,
        request: FederationRequest,
    ) -> Result<Result<FederationReply, Refused>> {
        let id = self.send(request).await?;
        self.answer(id).await
    }

    /// Calls `fun(args)` (JSON text) as a call crossing clusters, in an
    /// envelope with `path`, `budget` and `target`.
    async fn call(
        &mut self,
        (path, budget, target): (&[&str], u8, &str),
        fun: &str,
        args: &str,
    ) -> Result<Result<String, RpcError>> {
        let call = FederatedCall {
            fun: fun.to_string(),
            function_id: None,
            version_constraint: None,
            locs: Vec::new(),
            args: args.to_string(),
            kwargs: "{}".to_string(),
            timeout_ms: 10_000,
        };
        let path = path.iter().map(|c| c.to_string()).collect();
        let id = self
            .send_routed(FederationRequest::Call(call), (path, budget, Some(target)))
            .await?;
        match self.answer(id).await? {
            Ok(FederationReply::Called(result)) => Ok(result),
            other => bail!("a call answered {other:?}"),
        }
    }

    /// Waits for the answer to request `id`.
    async fn answer(&mut self, id: u64) -> Result<Result<FederationReply, Refused>> {
        loop {
            let frame = tokio::time::timeout(std::time::Duration::from_secs(30), self.ws.next())
                .await
                .context("no answer within 30 s")?
                .context("connection closed")??;
            let Message::Binary(bytes) = frame else {
                continue;
            };
            let envelope = Envelope::decode(&bytes).map_err(anyhow::Error::msg)?;
            if envelope.id != id {
                continue;
            }
            return match envelope.body {
                Body::Reply(PeerReply::Federation(answer)) => Ok(answer),
                Body::Reply(PeerReply::Refused(refused)) => Ok(Err(refused)),
                other => bail!("unexpected answer {other:?}"),
            };
        }
    }

    /// Announces `routes` (unsigned, as a neighbour that never signed
    /// may) and returns (accepted, rejected by reason).
    async fn announce(
        &mut self,
        routes: Vec<Announcement>,
    ) -> Result<(u32, BTreeMap<String, u32>)> {
        let request = FederationRequest::Announce {
            cluster_id: EVIL.to_string(),
            urls: Vec::new(),
            routes,
            keys: None,
            catalogs: Vec::new(),
            signatures: Vec::new(),
        };
        match self.ask(request).await? {
            Ok(FederationReply::Announced { accepted, rejected }) => {
                Ok((accepted, rejected.into_iter().collect()))
            }
            other => bail!("announcement answered {other:?}"),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// An announcement by `advertiser` of `path` to `dest`, sent now.
fn route(advertiser: &str, dest: &str, path: &[&str], epoch: u64) -> Announcement {
    Announcement {
        dest: dest.to_string(),
        path: path.iter().map(|c| c.to_string()).collect(),
        metrics: RouteMetrics {
            hops: path.len().saturating_sub(1) as u32,
            ..RouteMetrics::origin()
        },
        advertiser: advertiser.to_string(),
        advertised_at_ms: now_ms(),
        ttl_ms: 30_000,
        epoch,
        tags: Vec::new(),
    }
}

/// `evil`'s own route and its route to `far`.
fn good(epoch: u64, with_far: bool) -> Vec<Announcement> {
    let mut table = vec![route(EVIL, EVIL, &[EVIL], epoch)];
    if with_far {
        table.push(route(EVIL, "far", &[EVIL, "far"], epoch));
    }
    table
}

fn reasons(items: &[(&str, u32)]) -> BTreeMap<String, u32> {
    items.iter().map(|(r, n)| (r.to_string(), *n)).collect()
}

/// `(dest, path, state)` of every route `cluster` holds through `evil`.
async fn held_from_evil(cluster: &Cluster) -> Result<Vec<(String, Vec<String>, String)>> {
    let rows = sql_rows(
        &cluster.admin()?,
        "SELECT dest, path, state FROM routes WHERE next_hop = 'evil' ORDER BY dest",
    )
    .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row["dest"].as_str().context("dest")?.to_string(),
                serde_json::from_value(row["path"].clone())?,
                row["state"].as_str().context("state")?.to_string(),
            ))
        })
        .collect()
}

fn path(clusters: &[&str]) -> Vec<String> {
    clusters.iter().map(|c| c.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_neighbour_is_refused_by_reason_and_the_cluster_keeps_serving() -> Result<()> {
    let config = TestDir::new();
    let args = config.config("flap_threshold = 2\nflap_window_seconds = 60\n");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c1 = Cluster::start("c1", &[], &args)?;
    let c2 = Cluster::start("c2", &[&c1], &[])?;
    wait_for_routes(&c2, &[("c1", &["c2", "c1"])]).await?;
    let mut evil = Neighbour::connect(&c1.client_url()?).await?;

    // One table with a good route and one of each kind of bad one.
    let long: Vec<String> = (0..70).map(|i| format!("x{i}")).collect();
    let long: Vec<&str> = std::iter::once(EVIL)
        .chain(long.iter().map(String::as_str))
        .collect();
    let mut expired = route(EVIL, "old", &[EVIL, "old"], 1);
    expired.advertised_at_ms = now_ms() - 3_600_000;
    let mut table = good(1, true);
    table.extend([
        expired,
        route(EVIL, "c9", &[EVIL, "c1", "c9"], 1),
        route(EVIL, "x69", &long, 1),
        route(EVIL, "nowhere", &[], 1),
        route("other", "o", &["other", "o"], 1),
        route(EVIL, "a", &[EVIL, "b"], 1),
    ]);
    let (accepted, rejected) = evil.announce(table).await?;
    assert_eq!(accepted, 2);
    assert_eq!(
        rejected,
        reasons(&[
            ("advertiser_mismatch", 1),
            ("destination_mismatch", 1),
            ("empty_path", 1),
            ("expired", 1),
            ("loop", 1),
            ("malformed", 1),
        ])
    );
    let active = |dest: &str, p: &[&str]| (dest.to_string(), path(p), "active".to_string());
    assert_eq!(
        held_from_evil(&c1).await?,
        [
            active("evil", &["c1", "evil"]),
            active("far", &["c1", "evil", "far"])
        ]
    );
    // What was good goes on to the real neighbour.
    wait_for_routes(
        &c2,
        &[
            ("c1", &["c2", "c1"]),
            ("evil", &["c2", "c1", "evil"]),
            ("far", &["c2", "c1", "evil", "far"]),
        ],
    )
    .await?;

    // Oversized: more routes than one table may carry.
    let huge: Vec<Announcement> = (0..100_001)
        .map(|i| route(EVIL, &format!("d{i}"), &[EVIL, &format!("d{i}")], 2))
        .collect();
    match evil
        .ask(FederationRequest::Announce {
            cluster_id: EVIL.to_string(),
            urls: Vec::new(),
            routes: huge,
            keys: None,
            catalogs: Vec::new(),
            signatures: Vec::new(),
        })
        .await?
    {
        Err(Refused::Invalid(message)) => ensure!(
            message.contains("100001 routes") && message.contains("limit of 100000"),
            "{message}"
        ),
        other => bail!("an oversized table was answered {other:?}"),
    }

    // Flapping: far withdrawn twice within the window is suppressed.
    assert_eq!(evil.announce(good(3, false)).await?, (0, reasons(&[])));
    assert_eq!(evil.announce(good(4, true)).await?, (1, reasons(&[])));
    assert_eq!(evil.announce(good(5, false)).await?, (0, reasons(&[])));
    assert_eq!(
        evil.announce(good(6, true)).await?,
        (0, reasons(&[("suppressed", 1)]))
    );
    let suppressed = held_from_evil(&c1).await?;
    ensure!(
        suppressed.contains(&(
            "far".to_string(),
            path(&["c1", "evil", "far"]),
            "suppressed".to_string()
        )),
        "{suppressed:?}"
    );

    // Replayed: a table no newer than one taken is refused whole.
    assert_eq!(
        evil.announce(good(4, true)).await?,
        (0, reasons(&[("stale", 2)]))
    );

    // A frame that is no envelope closes that connection only.
    evil.ws
        .send(Message::binary(vec![ENVELOPE_VERSION, 0xFF, 0xFF]))
        .await?;
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), evil.ws.next())
        .await
        .context("connection still open 10 s after garbage")?;
    ensure!(
        !matches!(closed, Some(Ok(Message::Binary(_)))),
        "garbage was answered"
    );

    // Counted by reason on the link, and the cluster serves on.
    let links = links(&c1).await?;
    let link = links
        .iter()
        .find(|l| l["cluster_id"] == EVIL)
        .context("no link to evil")?;
    let counted: BTreeMap<String, u32> = serde_json::from_value(link["rejections"].clone())?;
    assert_eq!(
        counted,
        reasons(&[
            ("advertiser_mismatch", 1),
            ("destination_mismatch", 1),
            ("empty_path", 1),
            ("expired", 1),
            ("loop", 1),
            ("malformed", 1),
            ("stale", 2),
            ("suppressed", 1),
        ])
    );
    let mut again = Neighbour::connect(&c1.client_url()?).await?;
    assert_eq!(again.announce(good(7, false)).await?, (0, reasons(&[])));
    wait_for_routes(
        &c2,
        &[("c1", &["c2", "c1"]), ("evil", &["c2", "c1", "evil"])],
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_from_another_cluster_are_checked_before_anything_runs() -> Result<()> {
    let c1 = Cluster::start("c1", &[], &[])?;
    let c2 = Cluster::start("c2", &[&c1], &[])?;
    wait_for_routes(&c1, &[("c2", &["c1", "c2"])]).await?;
    let mut evil = Neighbour::connect(&c1.client_url()?).await?;
    let code = |answer: Result<String, RpcError>| match answer {
        Err(e) => (e.code, e.details.unwrap_or_default()),
        Ok(result) => (0, result),
    };

    // Run here: the target is this cluster (the budget is not needed).
    assert_eq!(
        evil.call((&[EVIL], 0, "c1"), "echo", "[7]").await?,
        Ok("7".into())
    );
    let (unknown, details) = code(evil.call((&[EVIL], 0, "c1"), "nope", "[]").await?);
    assert_eq!(unknown, ErrorCode::UnknownFunction.code());
    assert!(details.starts_with("in cluster c1:"), "{details}");
    let (bad, details) = code(evil.call((&[EVIL], 0, "c1"), "echo", "not json").await?);
    assert_eq!(bad, ErrorCode::BadRequest.code());
    assert!(details.contains("not JSON"), "{details}");

    // Carried on: one hop to c2, whose node answers.
    let c2_node = status_of(&c2.admin()?).await?["node_id"].clone();
    let pong = evil.call((&[EVIL], 3, "c2"), "ping", "[]").await?;
    let pong: serde_json::Value = serde_json::from_str(&pong.map_err(|e| anyhow::anyhow!("{e}"))?)?;
    assert_eq!(pong["node_id"], c2_node);

    // Refused before anything is sent on.
    let refused = [
        (
            (&[EVIL][..], 3, "c9"),
            ErrorCode::NoRoute,
            "cluster c1 has no route to cluster c9",
        ),
        (
            (&[EVIL][..], 0, "c2"),
            ErrorCode::HopBudgetExhausted,
            "beyond the hop budget of 0",
        ),
        (
            (&[EVIL, "c1"][..], 3, "c2"),
            ErrorCode::LoopDetected,
            "came back to c1",
        ),
        (
            (&[EVIL][..], 3, ""),
            ErrorCode::BadRequest,
            "naming no target cluster",
        ),
    ];
    for (routing, want, text) in refused {
        let (got, details) = code(evil.call(routing, "ping", "[]").await?);
        assert_eq!(got, want.code(), "{routing:?}: {details}");
        assert!(details.contains(text), "{routing:?}: {details}");
    }
    Ok(())
}
