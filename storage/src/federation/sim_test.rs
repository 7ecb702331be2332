//! Tests of the federation simulation: routes in every topology are
//! sound, converge within the hop-by-hop bound, reroute around a cut
//! before any TTL and come back when it heals, and a settled federation
//! adds only refreshes to its logs. Also FEDERATION.md §7 behaviour 15
//! (re-announcements carry the path and a new epoch).

use super::*;

/// A federation whose links all have `latency` ms, so the best route to
/// every destination is the one with the fewest hops.
fn even(clusters: usize, topology: Topology, latency: u64) -> Sim {
    let mut config = SimConfig::new(clusters, topology, 1);
    config.latency_ms = (latency, latency);
    Sim::new(config).unwrap()
}

/// The most hops between two clusters.
fn diameter(sim: &Sim) -> u64 {
    (0..sim.cluster_count())
        .flat_map(|from| sim.hops_from(from))
        .flatten()
        .max()
        .unwrap_or(0) as u64
}

#[test]
fn a_ring_routes_every_pair_by_fewest_hops_within_the_hop_by_hop_bound() {
    let mut sim = even(6, Topology::Ring, 5);
    sim.run_until(10_000).unwrap();
    let check = sim.check_routes();
    assert_eq!(check.reachable, 30);
    assert_eq!(check.routed, 30, "{check:?}");
    assert_eq!(check.unsound, 0, "{check:?}");
    assert_eq!(check.longer, 0, "{check:?}");
    // Each hop costs the link's latency and at most one speaker tick.
    let bound = diameter(&sim) * (5 + sim.config.tick_ms);
    assert!(
        sim.last_change_ms() <= bound,
        "last change at {} ms, bound {bound} ms",
        sim.last_change_ms()
    );
    let route = sim.active_route(0, 3).unwrap();
    assert_eq!(route.metrics.hops, 3);
    assert_eq!(route.metrics.latency_us, 15_000);
}

#[test]
fn every_topology_routes_every_pair_without_loops() {
    for topology in [Topology::Line, Topology::Ring, Topology::Mesh { degree: 3 }] {
        let mut sim = Sim::new(SimConfig::new(12, topology, 3)).unwrap();
        sim.run_until(10_000).unwrap();
        let check = sim.check_routes();
        assert_eq!(check.reachable, 12 * 11, "{topology:?}");
        assert!(check.all_routed(), "{topology:?}: {check:?}");
    }
}

#[test]
fn a_cut_link_reroutes_before_any_ttl_and_comes_back_when_healed() {
    let mut sim = even(6, Topology::Ring, 5);
    sim.run_until(10_000).unwrap();
    assert_eq!(sim.active_route(0, 1).unwrap().metrics.hops, 1);
    sim.cut(0, 1);
    sim.run_until(20_000).unwrap();
    let check = sim.check_routes();
    assert!(check.all_routed(), "after the cut: {check:?}");
    assert_eq!(sim.active_route(0, 1).unwrap().metrics.hops, 5);
    let took = sim.last_change_ms() - 10_000;
    let config = &sim.config;
    let bound = config.ping_interval_ms
        + config.link_dead_ms
        + config.tick_ms
        + diameter(&sim) * (5 + config.tick_ms);
    // Found dead `link_dead` after the last answered ping, which came up
    // to one ping interval before the cut.
    assert!(
        took > config.link_dead_ms - config.ping_interval_ms,
        "rerouted after {took} ms"
    );
    assert!(took <= bound, "rerouted after {took} ms, bound {bound} ms");
    assert!(bound < config.route_ttl_ms);

    sim.heal(0, 1);
    sim.run_until(30_000).unwrap();
    let check = sim.check_routes();
    assert!(check.all_routed(), "after healing: {check:?}");
    assert_eq!(check.longer, 0, "after healing: {check:?}");
    assert_eq!(sim.active_route(0, 1).unwrap().metrics.hops, 1);
}

/// In the mesh, some clusters have more neighbours than the 4 routes
/// kept per destination: the routes that do not make the cut must not be
/// proposed again with every table.
#[test]
fn a_settled_federation_adds_only_refreshes() {
    for topology in [Topology::Ring, Topology::Mesh { degree: 3 }] {
        let mut sim = Sim::new(SimConfig::new(10, topology, 1)).unwrap();
        sim.run_until(60_000).unwrap();
        let settled = sim.last_change_ms();
        let before: Vec<Counters> = (0..10).map(|i| sim.counters(i)).collect();
        sim.run_until(660_000).unwrap();
        assert_eq!(
            sim.last_change_ms(),
            settled,
            "{topology:?}: routes changed"
        );
        // Routes outlived their 30 s TTL twenty times over: refreshes kept
        // them.
        assert!(sim.check_routes().all_routed(), "{topology:?}");
        let ttl = sim.config.route_ttl_ms;
        for (i, before) in before.iter().enumerate() {
            let events = sim.counters(i).events - before.events;
            // One refresh per neighbour each time half the TTL is gone.
            let most = sim.clusters[i].neighbours.len() as u64 * 600_000 / (ttl / 2);
            assert!(
                events > 0 && events <= most,
                "{topology:?} c{i}: {events} events"
            );
        }
    }
    let mesh = Sim::new(SimConfig::new(10, Topology::Mesh { degree: 3 }, 1)).unwrap();
    assert!(mesh.clusters.iter().any(|c| c.neighbours.len() > 4));
}

#[test]
fn the_same_seed_runs_the_same() {
    let run = || {
        let mut sim = Sim::new(SimConfig::new(12, Topology::Mesh { degree: 3 }, 9)).unwrap();
        sim.run_until(5_000).unwrap();
        sim.cut(sim.links()[0].0, sim.links()[0].1);
        sim.run_until(15_000).unwrap();
        (
            sim.links(),
            sim.total(),
            sim.last_change_ms(),
            sim.check_routes(),
        )
    };
    assert_eq!(run(), run());
}

/// §7 15: a cluster re-announces what it learned with itself first on
/// the path, the path's metrics, and a new epoch each time; the receiver
/// puts itself in front again.
#[test]
fn re_announcements_carry_the_path_and_a_new_epoch() {
    let mut sim = even(3, Topology::Line, 5);
    sim.run_until(1_000).unwrap();
    let table = |sim: &Sim, epoch: u64| {
        let policy = RoutePolicy::default();
        let ctx = ExportContext {
            local: "c1",
            to: "c0",
            now_ms: START_MS + sim.now_ms(),
            epoch,
            ttl_ms: 30_000,
            policy: &policy,
        };
        export_table(&sim.clusters[1].views.catalog, &ctx)
    };
    let first = table(&sim, 7);
    let path = |p: &[&str]| p.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    let announced: Vec<(String, Vec<String>, u32, u64)> = first
        .iter()
        .map(|a| (a.dest.clone(), a.path.clone(), a.metrics.hops, a.epoch))
        .collect();
    assert_eq!(
        announced,
        [
            ("c1".to_string(), path(&["c1"]), 0, 7),
            ("c2".to_string(), path(&["c1", "c2"]), 1, 7),
        ]
    );
    assert!(first.iter().all(|a| a.advertiser == "c1"));
    sim.run_until(2_000).unwrap();
    let again = table(&sim, 8);
    assert!(again.iter().all(|a| a.epoch == 8));
    assert!(again[0].advertised_at_ms > first[0].advertised_at_ms);
    let learned = sim.active_route(0, 2).unwrap();
    assert_eq!(learned.path, path(&["c0", "c1", "c2"]));
    assert_eq!(learned.metrics.hops, 2);
}
