//! Convergence of route control, simulated in process (no sockets, no
//! raft; see `mpreg_storage::federation::sim`): 10, 50 and 200 clusters
//! in a line, a ring and a random mesh of degree 3, with one-way link
//! latencies of 1-10 ms and the daemon's defaults (50 ms speaker tick,
//! 10 s announce interval, 30 s TTL, 3 s link_dead). For each it prints:
//!
//! - start: when every pair within 64 hops first had a sound route (all
//!   routed), when the last route changed (settled: backups arrive after
//!   the active routes), the bound (the slowest selected route's latency:
//!   its announcement cannot arrive sooner), and per cluster the tables
//!   and routes sent and the log events;
//! - steady: log events per cluster per hour once settled;
//! - cut: a middle link cut 1 s after the steady window: when every pair
//!   was routed around it, when the last route changed, and what it cost
//!   per cluster.
//!
//! Run: `cargo bench -p mpreg-storage --bench federation_sim`; sizes from
//! `MPREG_SIM_SIZES` (default `10,50,200`).

use std::time::Instant;

use mpreg_storage::federation::sim::{Counters, Sim, SimConfig, Topology};

const START_MS: u64 = 120_000;
const STEADY_MS: u64 = 600_000;
const AFTER_CUT_MS: u64 = 60_000;
/// How often "is every pair routed?" is checked (virtual ms).
const STEP_MS: u64 = 10;

fn shown(at: Option<u64>) -> String {
    at.map_or_else(|| "never".to_string(), |t| t.to_string())
}

fn per_cluster(sim: &Sim, before: Counters) -> (f64, f64, f64) {
    let now = sim.total();
    let n = sim.cluster_count() as f64;
    (
        (now.tables - before.tables) as f64 / n,
        (now.routes - before.routes) as f64 / n,
        (now.events - before.events) as f64 / n,
    )
}

fn run(clusters: usize, topology: Topology) -> mpreg_storage::Result<()> {
    let wall = Instant::now();
    let mut sim = Sim::new(SimConfig::new(clusters, topology, 1))?;
    let routed = sim.run_until_routed(STEP_MS, START_MS)?;
    sim.run_until(START_MS)?;
    let converged = sim.last_change_ms();
    let check = sim.check_routes();
    let (tables, routes, events) = per_cluster(&sim, Counters::default());
    let name = match topology {
        Topology::Line => "line".to_string(),
        Topology::Ring => "ring".to_string(),
        Topology::Mesh { degree } => format!("mesh{degree}"),
    };
    println!(
        "{clusters:>4} {name:<5} start: all routed at {} ms, settled {converged} ms (bound {} ms); routed {}/{} pairs, unsound {}; per cluster {tables:.0} tables {routes:.0} routes {events:.0} events",
        shown(routed),
        check.slowest_route_ms,
        check.routed,
        check.reachable,
        check.unsound
    );

    let before = sim.total();
    sim.run_until(START_MS + STEADY_MS)?;
    let (_, _, events) = per_cluster(&sim, before);
    let hour = 3_600_000.0 / STEADY_MS as f64;
    let changed = sim.last_change_ms() > converged;
    println!(
        "{clusters:>4} {name:<5} steady: {:.0} events per cluster per hour{}",
        events * hour,
        if changed { " (routes changed)" } else { "" }
    );

    let links = sim.links();
    let (a, b) = match topology {
        Topology::Line | Topology::Ring => (clusters / 2 - 1, clusters / 2),
        Topology::Mesh { .. } => links[links.len() / 2],
    };
    let cut_at = START_MS + STEADY_MS + 1_000;
    sim.run_until(cut_at)?;
    let before = sim.total();
    sim.cut(a, b);
    let routed = sim.run_until_routed(STEP_MS, cut_at + AFTER_CUT_MS)?;
    sim.run_until(cut_at + AFTER_CUT_MS)?;
    let check = sim.check_routes();
    let (tables, routes, events) = per_cluster(&sim, before);
    println!(
        "{clusters:>4} {name:<5} cut c{a}-c{b}: all routed {} ms after, settled {} ms after; routed {}/{} pairs, unsound {}; per cluster {tables:.0} tables {routes:.0} routes {events:.0} events ({:.1} s wall)",
        shown(routed.map(|t| t - cut_at)),
        sim.last_change_ms().saturating_sub(cut_at),
        check.routed,
        check.reachable,
        check.unsound,
        wall.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> mpreg_storage::Result<()> {
    let sizes: Vec<usize> = std::env::var("MPREG_SIM_SIZES")
        .unwrap_or_else(|_| "10,50,200".to_string())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|n| *n >= 4)
        .collect();
    for clusters in sizes {
        for topology in [Topology::Line, Topology::Ring, Topology::Mesh { degree: 3 }] {
            run(clusters, topology)?;
        }
    }
    Ok(())
}
