//! The cache is linearizable per key through faults. Clients on every node
//! put, strongly read, compare-and-swap and delete three keys while the
//! leader is killed with -9 and restarted, cut off from the others and
//! healed, stopped (SIGSTOP) until replaced and continued, and while every
//! link between nodes is slow and stalls as if it lost packets. Every
//! call is recorded with its invoke and completion times on one clock,
//! and `mpreg_tests::linearizable` must find one order of the calls that
//! explains every answer. A call that failed (a timeout, a lost
//! node, "outcome unknown") may have taken effect or not; a failed read is
//! dropped. After the faults, every voter's views agree with an offline
//! replay of its data dir. A five-node schedule draws one fault per cycle
//! (kills, pauses, partitions with and without the leader, a bridge,
//! slow links, links that lose packets, a voter replaced while clients
//! write, a rolling restart). `MPREG_SOAK=1` runs 10x the
//! cycles of the three-node test and 100 five-node cycles
//! (`MPREG_SOAK_CYCLES=N` sets them, `MPREG_SEED` the schedule,
//! `MPREG_SOAK_DIR` keeps the histories).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use mpreg_client::Client;
use mpreg_tests::cluster::Cluster;
use mpreg_tests::dice::Dice;
use mpreg_tests::eventually;
use mpreg_tests::linearizable::{self, Call, Op, Output};
use mpreg_tests::netns::{self, Namespace};
use mpreg_tests::proxy::LinkFaults;
use serde_json::{Value, json};

const KEYS: u64 = 3;
const CLIENTS: usize = 6;
const SETTLE: Duration = Duration::from_secs(30);

fn cycles() -> usize {
    if std::env::var("MPREG_SOAK").is_ok_and(|v| v == "1") {
        20
    } else {
        2
    }
}

/// What the clients share: the members' client URLs (a restart moves a
/// member to a new port), the clock and the history.
struct Run {
    urls: Mutex<Vec<String>>,
    start: Instant,
    history: Mutex<Vec<Call>>,
    stop: AtomicBool,
}

impl Run {
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

fn as_value(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// The request for `op` on `key`.
fn request(key: &Value, op: &Op) -> Value {
    match op {
        Op::Get => json!({"operation": "get", "key": key,
                          "options": {"consistency_level": "strong"}}),
        Op::Put(v) => json!({"operation": "put", "key": key, "value": v}),
        Op::Delete => json!({"operation": "delete", "key": key}),
        Op::Cas { expected, new } => json!({"operation": "atomic", "key": key,
            "atomic_operation": {"operation_type": "compare_and_swap",
                                 "expected_value": expected, "new_value": new}}),
    }
}

/// The answer `reply` gives to `op`.
fn output(op: &Op, reply: &Value) -> Output {
    match op {
        Op::Get => match reply["status"].as_str() {
            Some("hit") => Output::Read(as_value(&reply["entry"]["value"])),
            Some("miss") => Output::Read(None),
            _ => panic!("a get answered {reply}"),
        },
        Op::Put(_) => {
            assert_eq!(reply["status"], "ok", "{reply}");
            Output::Written
        }
        Op::Delete => Output::Deleted(reply["changed"] == json!(true)),
        Op::Cas { .. } => match reply["changed"].as_bool() {
            Some(true) => Output::Swapped(true, None),
            Some(false) => Output::Swapped(false, Some(as_value(&reply["value"]))),
            None => panic!("a compare-and-swap answered {reply}"),
        },
    }
}

/// One client: random calls on random keys, moving to the next node when
/// its node fails. It remembers the last value it saw of each key as the
/// `expected` of its next compare-and-swap there.
async fn client(run: Arc<Run>, id: usize) {
    let mut dice = Dice::new(0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1));
    let mut at = id;
    let mut connection: Option<Client> = None;
    let mut last_seen: Vec<Option<String>> = vec![None; KEYS as usize];
    let mut n = 0u64;
    while !run.stop.load(Ordering::SeqCst) {
        let Some(client) = connection.as_ref() else {
            let url = {
                let urls = run.urls.lock().unwrap();
                at = (at + 1) % urls.len();
                urls[at].clone()
            };
            match tokio::time::timeout(Duration::from_secs(2), Client::connect(&url)).await {
                Ok(Ok(client)) => connection = Some(client),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            continue;
        };
        let k = dice.roll(KEYS);
        let key = json!({"namespace": "lin", "identifier": format!("k{k}")});
        n += 1;
        let value = format!("c{id}-{n}");
        let op = match dice.roll(10) {
            0..=3 => Op::Get,
            4..=6 => Op::Put(value),
            7..=8 => Op::Cas {
                expected: last_seen[k as usize].clone(),
                new: value,
            },
            _ => Op::Delete,
        };
        let invoked = run.now();
        let reply = tokio::time::timeout(Duration::from_secs(10), client.cache(request(&key, &op)));
        let reply = reply.await;
        let completed = run.now();
        let completed = match reply {
            Ok(Ok(reply)) => {
                let out = output(&op, &reply);
                match &out {
                    Output::Read(v) | Output::Swapped(false, Some(v)) => {
                        last_seen[k as usize] = v.clone();
                    }
                    Output::Swapped(true, None) | Output::Written => {
                        if let Op::Put(v) | Op::Cas { new: v, .. } = &op {
                            last_seen[k as usize] = Some(v.clone());
                        }
                    }
                    Output::Deleted(_) => last_seen[k as usize] = None,
                    Output::Swapped(..) => {}
                }
                Some((completed, out))
            }
            Ok(Err(_)) | Err(_) => {
                connection = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
                if op == Op::Get {
                    continue;
                }
                None
            }
        };
        run.history.lock().unwrap().push(Call {
            key: format!("k{k}"),
            op,
            invoked,
            completed,
        });
    }
}

fn client_urls(cluster: &Cluster) -> Vec<String> {
    cluster
        .members
        .iter()
        .map(|m| m.client_url.clone())
        .collect()
}

impl Run {
    /// Points the clients at the members' current ports.
    fn refresh(&self, cluster: &Cluster) {
        *self.urls.lock().unwrap() = client_urls(cluster);
    }
}

fn pause(secs: u64) -> tokio::time::Sleep {
    tokio::time::sleep(Duration::from_secs(secs))
}

/// Every link slow: 20 ms delay, up to 30 ms jitter, 2% of chunks held
/// 200 ms.
const SLOW: LinkFaults = LinkFaults {
    delay: Duration::from_millis(20),
    jitter: Duration::from_millis(30),
    stall_per_mille: 20,
};

/// Runs `CLIENTS` clients against `cluster` while `faults` runs (it
/// returns the members that are voters at the end), then checks the
/// history and that the voters' views agree with their replays. With
/// `MPREG_SOAK_DIR` set, writes the history there as `<name>.history` and
/// the verdict as `<name>.summary`.
async fn check_through(
    cluster: &mut Cluster,
    name: &str,
    faults: impl AsyncFnOnce(&mut Cluster, &Run) -> Vec<usize>,
) {
    let run = Arc::new(Run {
        urls: Mutex::new(client_urls(cluster)),
        start: Instant::now(),
        history: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client(run.clone(), id)))
        .collect();
    let voters = faults(cluster, &run).await;
    pause(2).await;
    run.stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let history = std::mem::take(&mut *run.history.lock().unwrap());
    if let Some(dir) = std::env::var_os("MPREG_SOAK_DIR") {
        let path = std::path::Path::new(&dir).join(format!("{name}.history"));
        let lines: Vec<String> = history
            .iter()
            .map(|call| format!("{} {call}", call.key))
            .collect();
        std::fs::write(&path, lines.join("\n")).unwrap();
        eprintln!("{name}: history in {}", path.display());
    }
    let answered = |f: fn(&Output) -> bool| {
        history
            .iter()
            .filter(|c| c.completed.as_ref().is_some_and(|(_, out)| f(out)))
            .count()
    };
    let reads = answered(|o| matches!(o, Output::Read(Some(_))));
    let swaps = answered(|o| matches!(o, Output::Swapped(true, _)));
    let unknown = history.iter().filter(|c| c.completed.is_none()).count();
    assert!(
        reads >= 50 && swaps >= 10,
        "too little was checked: {} calls, {reads} reads of a value, {swaps} swaps",
        history.len()
    );
    let checking = Instant::now();
    let verdict = linearizable::check(&history);
    let summary = format!(
        "{name}: {} calls ({reads} reads of a value, {swaps} swaps, {unknown} unknown) \
         checked in {:?}: {}",
        history.len(),
        checking.elapsed(),
        if verdict.is_ok() {
            "linearizable"
        } else {
            "NOT linearizable"
        }
    );
    eprintln!("{summary}");
    if let Some(dir) = std::env::var_os("MPREG_SOAK_DIR") {
        let path = std::path::Path::new(&dir).join(format!("{name}.summary"));
        std::fs::write(&path, format!("{summary}\n")).unwrap();
    }
    if let Err(violation) = verdict {
        panic!("{violation}");
    }
    cluster.replays_agree(&voters, SETTLE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cache_is_linearizable_through_leader_kills_and_partitions() {
    let mut cluster = Cluster::start(3, "").await.unwrap();
    check_through(&mut cluster, "three-node", async |cluster, run| {
        let all = vec![0, 1, 2];
        for _ in 0..cycles() {
            pause(2).await;
            let leader = cluster.wait_leader(&all, SETTLE).await.unwrap();
            cluster.kill9(leader).unwrap();
            pause(2).await;
            cluster.restart(leader).await.unwrap();
            run.refresh(cluster);
            pause(2).await;
            let leader = cluster.wait_leader(&all, SETTLE).await.unwrap();
            cluster.isolate(&[leader]);
            pause(3).await;
            cluster.heal();
            pause(2).await;
            // A leader stopped long enough to be replaced wakes up
            // believing it still leads: it must not answer reads from its
            // old view.
            let leader = cluster.wait_leader(&all, SETTLE).await.unwrap();
            cluster.pause(leader).unwrap();
            pause(3).await;
            cluster.resume(leader).unwrap();
            pause(1).await;
            cluster.slow_links(SLOW);
            pause(4).await;
            cluster.heal();
        }
        all
    })
    .await;
}

/// Fault cycles of the five-node schedule: `MPREG_SOAK_CYCLES`, else 100
/// with `MPREG_SOAK=1`, else one of each fault.
fn mixed_cycles() -> usize {
    match std::env::var("MPREG_SOAK_CYCLES")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        Some(n) => n,
        None if cycles() > 2 => 100,
        None => MIXED.len(),
    }
}

/// The faults of the five-node schedule.
const MIXED: [&str; 11] = [
    "kill -9 and restart",
    "SIGSTOP 3 s and SIGCONT",
    "a minority with the leader cut off 3 s",
    "a minority without the leader cut off 3 s",
    "every link slow 4 s",
    "kill -9 of the leader and another, restart both",
    "a voter removed and a new one added",
    "a bridge: the leader and one voter cut off from two others, one voter linked to all, 3 s",
    "a rolling restart: every voter stopped (SIGTERM) and started again in turn",
    "every link loses 10% of its packets 4 s",
    "the leader's wall clock jumps an hour forward, then an hour back",
];

/// Five nodes, one fault per cycle: each of [`MIXED`] once, then drawn by
/// a seeded die (`MPREG_SEED`, printed), against the leader or another
/// voter. The
/// membership changes under load: a removed voter is replaced by a new
/// member that joins while clients write.
///
/// The whole test runs in a network namespace of its own, whose loopback
/// can drop packets ([`mpreg_tests::netns`]).
#[test]
fn the_cache_is_linearizable_on_five_nodes_through_a_mixed_schedule() {
    netns::run_inside(4, async |namespace| five_node_schedule(namespace).await);
}

async fn five_node_schedule(namespace: &Namespace) {
    let seed = std::env::var("MPREG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_u64);
    let mut cluster = Cluster::start_with_clocks(5, "").await.unwrap();
    check_through(&mut cluster, "five-node", async |cluster, run| {
        let mut dice = Dice::new(seed);
        let mut voters: Vec<usize> = (0..5).collect();
        let mut ran = [0usize; MIXED.len()];
        for cycle in 0..mixed_cycles() {
            pause(1).await;
            let leader = cluster.wait_leader(&voters, SETTLE).await.unwrap();
            let others: Vec<usize> = voters.iter().copied().filter(|&i| i != leader).collect();
            let other = others[dice.roll(others.len() as u64) as usize];
            let third =
                others[(others.iter().position(|&i| i == other).unwrap() + 1) % others.len()];
            let victim = if dice.roll(2) == 0 { leader } else { other };
            let fault = if cycle < MIXED.len() {
                cycle
            } else {
                dice.roll(MIXED.len() as u64) as usize
            };
            ran[fault] += 1;
            match fault {
                0 => {
                    cluster.kill9(victim).unwrap();
                    pause(2).await;
                    cluster.restart(victim).await.unwrap();
                }
                1 => {
                    cluster.pause(victim).unwrap();
                    pause(3).await;
                    cluster.resume(victim).unwrap();
                }
                2 => {
                    cluster.isolate(&[leader, other]);
                    pause(3).await;
                    cluster.heal();
                }
                3 => {
                    cluster.isolate(&[other, third]);
                    pause(3).await;
                    cluster.heal();
                }
                4 => {
                    cluster.slow_links(SLOW);
                    pause(4).await;
                    cluster.heal();
                }
                5 => {
                    cluster.kill9(leader).unwrap();
                    cluster.kill9(other).unwrap();
                    pause(2).await;
                    cluster.restart(leader).await.unwrap();
                    cluster.restart(other).await.unwrap();
                }
                6 => {
                    cluster.remove(other, leader).unwrap();
                    let added = cluster.add().await.unwrap();
                    voters.retain(|&i| i != other);
                    voters.push(added);
                }
                7 => {
                    let rest: Vec<usize> = others.iter().copied().filter(|&i| i != other).collect();
                    cluster.cut_between(&[leader, rest[0]], &rest[1..]);
                    pause(3).await;
                    cluster.heal();
                }
                8 => {
                    for &i in &voters {
                        cluster.stop(i).unwrap();
                        cluster.restart(i).await.unwrap();
                        run.refresh(cluster);
                        cluster.wait_leader(&voters, SETTLE).await.unwrap();
                    }
                }
                9 => {
                    namespace.lose(100).unwrap();
                    pause(4).await;
                    let dropped = namespace.heal().unwrap();
                    assert!(dropped > 0, "the lossy links dropped no packet");
                    eprintln!("lossy links: {dropped} packets dropped in 4 s");
                }
                _ => clock_jumps(cluster, leader).await.unwrap(),
            }
            run.refresh(cluster);
        }
        let ran: Vec<String> = MIXED
            .iter()
            .zip(ran)
            .map(|(fault, n)| format!("{n} x {fault}"))
            .collect();
        eprintln!("five-node schedule (seed {seed}): {}", ran.join(", "));
        for &i in &voters {
            event_time_never_goes_back(cluster, i).await.unwrap();
        }
        voters
    })
    .await;
}

fn ttl_key(identifier: &str) -> Value {
    json!({"namespace": "clock", "identifier": identifier})
}

/// Puts `identifier` with a TTL through member `i`, retrying a refusal
/// (a put is idempotent).
async fn put_with_ttl(
    cluster: &Cluster,
    i: usize,
    identifier: &str,
    ttl_seconds: f64,
) -> Result<()> {
    let url = &cluster.members[i].client_url;
    eventually(&format!("put {identifier}"), SETTLE, || async {
        let client = Client::connect(url).await.map_err(|e| e.to_string())?;
        client
            .cache(
                json!({"operation": "put", "key": ttl_key(identifier), "value": 1,
                          "metadata": {"ttl_seconds": ttl_seconds}}),
            )
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await
}

/// `hit` or `miss`: a strong read of `identifier` through member `i`.
async fn ttl_status(cluster: &Cluster, i: usize, identifier: &str) -> Result<String, String> {
    let client = Client::connect(&cluster.members[i].client_url)
        .await
        .map_err(|e| e.to_string())?;
    let got = client
        .cache(json!({"operation": "get", "key": ttl_key(identifier),
                      "options": {"consistency_level": "strong"}}))
        .await
        .map_err(|e| e.to_string())?;
    Ok(got["status"].as_str().unwrap_or_default().to_string())
}

/// The leader's wall clock jumps an hour forward, then to an hour behind,
/// then back to real time: an entry with 10 minutes to live outlives both
/// jumps, and one with 2 s written while the clock is behind runs out in
/// seconds, not in an hour.
async fn clock_jumps(cluster: &Cluster, leader: usize) -> Result<()> {
    let via = (leader + 1) % cluster.members.len();
    let via = if cluster.running().contains(&via) {
        via
    } else {
        leader
    };
    put_with_ttl(cluster, via, "ten-minutes", 600.0).await?;
    cluster.jump_clock(leader, "+1h")?;
    pause(3).await;
    let hit = |identifier: &'static str| async move {
        match ttl_status(cluster, via, identifier).await {
            Ok(status) if status == "hit" => Ok(()),
            other => Err(format!("{identifier}: {other:?}")),
        }
    };
    eventually("the 10-minute entry after +1h", SETTLE, || {
        hit("ten-minutes")
    })
    .await?;
    cluster.jump_clock(leader, "-1h")?;
    put_with_ttl(cluster, via, "two-seconds", 2.0).await?;
    eventually("the 2 s entry ran out", Duration::from_secs(15), || async {
        match ttl_status(cluster, via, "two-seconds").await {
            Ok(status) if status == "miss" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    eventually("the 10-minute entry after -1h", SETTLE, || {
        hit("ten-minutes")
    })
    .await?;
    cluster.jump_clock(leader, "+0")?;
    Ok(())
}

/// The times of the events member `i` holds never decrease with the index.
async fn event_time_never_goes_back(cluster: &Cluster, i: usize) -> Result<()> {
    let rows = cluster
        .sql(
            i,
            "SELECT index, CAST(time AS BIGINT) AS t FROM events \
             WHERE time IS NOT NULL ORDER BY index",
        )
        .await?;
    let times: Vec<i64> = rows.iter().filter_map(|row| row["t"].as_i64()).collect();
    ensure!(times.len() > 3, "n{}: {} event times", i + 1, times.len());
    let back = times.windows(2).position(|w| w[0] > w[1]);
    ensure!(
        back.is_none(),
        "n{}: event time went back after the event at {back:?} of {}",
        i + 1,
        times.len()
    );
    Ok(())
}
