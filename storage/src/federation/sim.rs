//! An in-process simulation of a federation, for the convergence
//! benchmark (`cargo bench -p mpreg-storage --bench federation_sim`) and
//! its tests: clusters in a line, a ring or a random mesh, each with its
//! views in memory, exchanging route tables in virtual time over links of
//! seeded latencies.
//!
//! Each cluster follows the daemon's speaker with the same functions: it
//! builds the table for each neighbour with [`export_table`] on its
//! polling tick after a change and every announce interval, judges what
//! it receives with [`import_table`], applies the events as its log
//! would, withdraws a link's routes when the link has not answered a ping
//! for `link_dead`, and proposes expiries on a one-second timer. Left out:
//! raft (a cluster is one leader whose proposals commit at once),
//! signatures, and ping round trips (a link's latency is known exactly).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use super::{
    Announcement, Damping, ExportContext, ImportContext, LearnedRoute, LinkMetrics,
    MAX_PATH_CLUSTERS, RoutePolicy, RouteShape, export_table, import_table, rank, routes_gone,
    routes_via, table_shape, usable,
};
use crate::error::Result;
use crate::event::{Event, EventKind};
use crate::replay::MemViews;
use crate::views::{CandidateRow, Catalog, Digest, RowStore, View, ViewTxn, apply};

/// How the clusters are linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// Cluster i links to i + 1.
    Line,
    /// A line whose ends are linked.
    Ring,
    /// A random connected graph of this average degree.
    Mesh { degree: usize },
}

/// The federation to simulate; [`SimConfig::new`] takes the daemon's
/// defaults.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub clusters: usize,
    pub topology: Topology,
    /// Seeds the mesh, the link latencies and each cluster's timer phases.
    pub seed: u64,
    /// One-way link latencies are drawn from this inclusive range (ms).
    pub latency_ms: (u64, u64),
    /// How often a speaker looks for a changed table (the daemon's tick).
    pub tick_ms: u64,
    pub announce_interval_ms: u64,
    pub route_ttl_ms: u64,
    pub link_dead_ms: u64,
    pub ping_interval_ms: u64,
    pub max_routes: u32,
}

impl SimConfig {
    pub fn new(clusters: usize, topology: Topology, seed: u64) -> Self {
        SimConfig {
            clusters,
            topology,
            seed,
            latency_ms: (1, 10),
            tick_ms: 50,
            announce_interval_ms: 10_000,
            route_ttl_ms: 30_000,
            link_dead_ms: 3_000,
            ping_interval_ms: 1_000,
            max_routes: 4,
        }
    }
}

/// What one cluster did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Route tables sent.
    pub tables: u64,
    /// Route announcements sent (all tables' routes).
    pub routes: u64,
    /// Log entries proposed.
    pub entries: u64,
    /// Events on the log.
    pub events: u64,
}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, other: Counters) {
        self.tables += other.tables;
        self.routes += other.routes;
        self.entries += other.entries;
        self.events += other.events;
    }
}

/// Whether every cluster holds a sound route to every other it can reach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteCheck {
    /// Ordered pairs whose destination is reachable over uncut links
    /// within [`MAX_PATH_CLUSTERS`] clusters.
    pub reachable: usize,
    /// Of those, pairs with an active route.
    pub routed: usize,
    /// Active routes whose path is not a loop-free walk over uncut links
    /// from the holder to the destination.
    pub unsound: usize,
    /// Active routes with more hops than the fewest possible.
    pub longer: usize,
    /// Most one-way latency of an active route (ms): the earliest its
    /// announcement could have arrived.
    pub slowest_route_ms: u64,
}

impl RouteCheck {
    pub fn all_routed(&self) -> bool {
        self.routed == self.reachable && self.unsound == 0
    }
}

/// A cluster's views in memory, with its catalog kept current.
#[derive(Default)]
struct SimViews {
    rows: MemViews,
    digest: Digest,
    catalog: Catalog,
}

/// A [`RowStore`] that records the catalog's row changes.
struct Recording<'a> {
    rows: &'a mut MemViews,
    changes: Vec<(View, Vec<u8>, Option<Vec<u8>>)>,
}

impl RowStore for Recording<'_> {
    fn get(&self, view: View, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.rows.get(view, key)
    }

    fn scan(
        &self,
        view: View,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.rows.scan(view, prefix, from, limit)
    }

    fn put(&mut self, view: View, key: Vec<u8>, value: Vec<u8>) {
        if view.in_catalog() {
            self.changes.push((view, key.clone(), Some(value.clone())));
        }
        self.rows.put(view, key, value);
    }

    fn delete(&mut self, view: View, key: Vec<u8>) {
        if view.in_catalog() {
            self.changes.push((view, key.clone(), None));
        }
        self.rows.delete(view, key);
    }
}

impl SimViews {
    fn apply(&mut self, time_ms: u64, kind: EventKind) -> Result<()> {
        let mut store = Recording {
            rows: &mut self.rows,
            changes: Vec::new(),
        };
        let event = Event { time_ms, kind };
        apply(&mut ViewTxn::new(&mut store, &mut self.digest), &event)?;
        for (view, key, value) in store.changes {
            self.catalog.apply_change(view, &key, value.as_deref())?;
        }
        Ok(())
    }
}

struct Cluster {
    id: String,
    views: SimViews,
    neighbours: Vec<usize>,
    /// Per neighbour: the shape of the last table sent, and when.
    sent: BTreeMap<usize, (Vec<RouteShape>, u64)>,
    /// Neighbours whose link this cluster found dead.
    lost: BTreeSet<usize>,
    /// When a speaker tick is due (a change happened since the last).
    tick_at: Option<u64>,
    /// Offset of this cluster's timers (ms), so clusters do not tick
    /// together.
    phase_ms: u64,
    epoch: u64,
    counters: Counters,
}

struct Link {
    latency_ms: u64,
    /// Bumped by each cut: a table sent before a cut is lost with it.
    generation: u64,
    cut: bool,
}

#[derive(Debug)]
enum Action {
    /// A table arrives at `to`.
    Deliver {
        from: usize,
        to: usize,
        generation: u64,
        table: Vec<Announcement>,
    },
    /// The speaker of `at` looks for changed tables.
    Tick { at: usize },
    /// `at`'s table to `to` is due again if not sent since `sent_at`.
    Due { at: usize, to: usize, sent_at: u64 },
    /// `at`'s one-second expiry timer.
    Sweep { at: usize },
    /// `at` finds its link to `to` dead (if still cut in `generation`).
    Dead {
        at: usize,
        to: usize,
        generation: u64,
    },
    /// A ping of `at` over its healed link to `to` is answered.
    Alive { at: usize, to: usize },
}

/// An action due at `at_ms`; `seq` keeps actions due together in the
/// order they were scheduled.
#[derive(Debug)]
struct Pending {
    at_ms: u64,
    seq: u64,
    action: Action,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.seq) == (other.at_ms, other.seq)
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_ms, self.seq).cmp(&(other.at_ms, other.seq))
    }
}

/// A federation in virtual time. Times given and returned are ms since
/// the start of the simulation.
pub struct Sim {
    config: SimConfig,
    clusters: Vec<Cluster>,
    links: BTreeMap<(usize, usize), Link>,
    queue: BinaryHeap<Reverse<Pending>>,
    seq: u64,
    now_ms: u64,
    /// When a route was last learned, withdrawn or expired anywhere.
    last_change_ms: u64,
}

/// The virtual clock's epoch (unix ms), so event times look real.
const START_MS: u64 = 1_800_000_000_000;

/// Seeded numbers (splitmix64): the simulation must not depend on a
/// random source outside its seed.
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

fn edge(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

/// The links of `topology` over `n` clusters.
fn edges(n: usize, topology: Topology, rng: &mut Seeded) -> BTreeSet<(usize, usize)> {
    let mut edges = BTreeSet::new();
    match topology {
        Topology::Line | Topology::Ring => {
            for i in 1..n {
                edges.insert(edge(i - 1, i));
            }
            if topology == Topology::Ring && n > 2 {
                edges.insert(edge(n - 1, 0));
            }
        }
        Topology::Mesh { degree } => {
            // A random spanning tree keeps it connected; random links
            // then bring the average degree up.
            for i in 1..n {
                let j = rng.between(0, i as u64 - 1) as usize;
                edges.insert(edge(i, j));
            }
            let wanted = (n * degree / 2).min(n * (n - 1) / 2);
            while edges.len() < wanted {
                let a = rng.between(0, n as u64 - 1) as usize;
                let b = rng.between(0, n as u64 - 1) as usize;
                if a != b {
                    edges.insert(edge(a, b));
                }
            }
        }
    }
    edges
}

impl Sim {
    /// Links the clusters (named `c0`, `c1`, ...) and has each send its
    /// table to its neighbours at time 0.
    pub fn new(config: SimConfig) -> Result<Sim> {
        let mut rng = Seeded(config.seed);
        let n = config.clusters;
        let mut clusters: Vec<Cluster> = (0..n)
            .map(|i| Cluster {
                id: format!("c{i}"),
                views: SimViews::default(),
                neighbours: Vec::new(),
                sent: BTreeMap::new(),
                lost: BTreeSet::new(),
                tick_at: None,
                phase_ms: rng.between(0, config.tick_ms.max(1) - 1),
                epoch: 0,
                counters: Counters::default(),
            })
            .collect();
        let mut links = BTreeMap::new();
        for (a, b) in edges(n, config.topology, &mut rng) {
            clusters[a].neighbours.push(b);
            clusters[b].neighbours.push(a);
            let (low, high) = config.latency_ms;
            links.insert(
                (a, b),
                Link {
                    latency_ms: rng.between(low, high.max(low)),
                    generation: 0,
                    cut: false,
                },
            );
        }
        let mut sim = Sim {
            config,
            clusters,
            links,
            queue: BinaryHeap::new(),
            seq: 0,
            now_ms: 0,
            last_change_ms: 0,
        };
        for at in 0..n {
            let phase = sim.clusters[at].phase_ms;
            sim.schedule(phase, Action::Sweep { at });
            sim.speak(at)?;
        }
        Ok(sim)
    }

    fn schedule(&mut self, at_ms: u64, action: Action) {
        self.seq += 1;
        self.queue.push(Reverse(Pending {
            at_ms,
            seq: self.seq,
            action,
        }));
    }

    /// Runs every action due up to `until_ms`.
    pub fn run_until(&mut self, until_ms: u64) -> Result<()> {
        while self.queue.peek().is_some_and(|p| p.0.at_ms <= until_ms) {
            let Some(Reverse(pending)) = self.queue.pop() else {
                break;
            };
            self.now_ms = pending.at_ms;
            self.handle(pending.action)?;
        }
        self.now_ms = until_ms;
        Ok(())
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// When a route was last learned, withdrawn or expired anywhere: once
    /// nothing changes any more, the time the federation converged.
    pub fn last_change_ms(&self) -> u64 {
        self.last_change_ms
    }

    pub fn links(&self) -> Vec<(usize, usize)> {
        self.links.keys().copied().collect()
    }

    pub fn cluster_count(&self) -> usize {
        self.clusters.len()
    }

    pub fn counters(&self, cluster: usize) -> Counters {
        self.clusters[cluster].counters
    }

    /// Every cluster's counters added up.
    pub fn total(&self) -> Counters {
        let mut total = Counters::default();
        for c in &self.clusters {
            total += c.counters;
        }
        total
    }

    /// Cuts the link between `a` and `b` now: tables on it are lost, and
    /// each side finds it dead `link_dead` after its last answered ping.
    pub fn cut(&mut self, a: usize, b: usize) {
        let Some(link) = self.links.get_mut(&edge(a, b)) else {
            return;
        };
        link.cut = true;
        link.generation += 1;
        let generation = link.generation;
        for (at, to) in [(a, b), (b, a)] {
            let ping = self.config.ping_interval_ms.max(1);
            let phase = self.clusters[at].phase_ms % ping;
            let last_ping = (self.now_ms.saturating_sub(phase) / ping) * ping + phase;
            let dead_at = last_ping + self.config.link_dead_ms + self.config.tick_ms;
            self.schedule(
                dead_at.max(self.now_ms),
                Action::Dead { at, to, generation },
            );
        }
    }

    /// Heals the link between `a` and `b`: each side's next ping is
    /// answered.
    pub fn heal(&mut self, a: usize, b: usize) {
        let Some(link) = self.links.get_mut(&edge(a, b)) else {
            return;
        };
        link.cut = false;
        for (at, to) in [(a, b), (b, a)] {
            let ping = self.config.ping_interval_ms.max(1);
            let phase = self.clusters[at].phase_ms % ping;
            let next_ping = (self.now_ms.saturating_sub(phase) / ping + 1) * ping + phase;
            self.schedule(next_ping, Action::Alive { at, to });
        }
    }

    fn handle(&mut self, action: Action) -> Result<()> {
        match action {
            Action::Deliver {
                from,
                to,
                generation,
                table,
            } => {
                let link = &self.links[&edge(from, to)];
                if !link.cut && link.generation == generation {
                    self.receive(from, to, &table)?;
                }
            }
            Action::Tick { at } => {
                self.clusters[at].tick_at = None;
                self.speak(at)?;
            }
            Action::Due { at, to, sent_at } => {
                let cluster = &self.clusters[at];
                let resent = cluster.sent.get(&to).is_none_or(|(_, t)| *t != sent_at);
                if !resent && !cluster.lost.contains(&to) {
                    self.send(at, to, true);
                }
            }
            Action::Sweep { at } => {
                let routes = routes_gone(&self.clusters[at].views.catalog, START_MS + self.now_ms);
                if !routes.is_empty() {
                    self.propose(at, vec![EventKind::RoutesExpired { routes }])?;
                }
                self.schedule(self.now_ms + 1000, Action::Sweep { at });
            }
            Action::Dead { at, to, generation } => {
                let link = &self.links[&edge(at, to)];
                if link.cut && link.generation == generation && self.clusters[at].lost.insert(to) {
                    let dests = routes_via(&self.clusters[at].views.catalog, &self.clusters[to].id);
                    if !dests.is_empty() {
                        let via = self.clusters[to].id.clone();
                        let event = EventKind::RoutesWithdrawn {
                            via,
                            dests,
                            damping: Damping::default(),
                        };
                        self.propose(at, vec![event])?;
                    }
                }
            }
            Action::Alive { at, to } => {
                if !self.links[&edge(at, to)].cut && self.clusters[at].lost.remove(&to) {
                    self.clusters[at].sent.remove(&to);
                    self.speak(at)?;
                }
            }
        }
        Ok(())
    }

    /// `to` judges `from`'s table and proposes what it changes.
    fn receive(&mut self, from: usize, to: usize, table: &[Announcement]) -> Result<()> {
        let link = LinkMetrics {
            latency_us: self.links[&edge(from, to)].latency_ms * 1000,
            ..LinkMetrics::default()
        };
        let policy = RoutePolicy::default();
        let imported = {
            let ctx = ImportContext {
                local: &self.clusters[to].id,
                sender: &self.clusters[from].id,
                now_ms: START_MS + self.now_ms,
                link: &link,
                policy: &policy,
                ttl_ms: self.config.route_ttl_ms,
                max_routes: self.config.max_routes,
                damping: Damping::default(),
            };
            import_table(&self.clusters[to].views.catalog, &ctx, table)
        };
        if imported.events.is_empty() {
            return Ok(());
        }
        self.propose(to, imported.events)
    }

    /// Commits `events` on `at`'s log at once and wakes its speaker.
    fn propose(&mut self, at: usize, events: Vec<EventKind>) -> Result<()> {
        let now = START_MS + self.now_ms;
        let cluster = &mut self.clusters[at];
        cluster.counters.entries += 1;
        cluster.counters.events += events.len() as u64;
        let mut changed = false;
        for kind in events {
            changed |= !matches!(kind, EventKind::RoutesRefreshed { .. });
            cluster.views.apply(now, kind)?;
        }
        if changed {
            self.last_change_ms = self.now_ms;
        }
        if self.clusters[at].tick_at.is_none() {
            // The next tick of this cluster's speaker strictly after now.
            let tick = self.config.tick_ms.max(1);
            let phase = self.clusters[at].phase_ms % tick;
            let next = ((self.now_ms + tick - phase) / tick) * tick + phase;
            self.clusters[at].tick_at = Some(next);
            self.schedule(next, Action::Tick { at });
        }
        Ok(())
    }

    /// Sends `at`'s table to every neighbour whose table changed.
    fn speak(&mut self, at: usize) -> Result<()> {
        for to in self.clusters[at].neighbours.clone() {
            if !self.clusters[at].lost.contains(&to) {
                self.send(at, to, false);
            }
        }
        Ok(())
    }

    /// Sends `at`'s table to `to` if it changed since the last one sent,
    /// or always when `due`.
    fn send(&mut self, at: usize, to: usize, due: bool) {
        let now = START_MS + self.now_ms;
        let policy = RoutePolicy::default();
        let table = {
            let epoch = now.max(self.clusters[at].epoch + 1);
            self.clusters[at].epoch = epoch;
            let cluster = &self.clusters[at];
            let ctx = ExportContext {
                local: &cluster.id,
                to: &self.clusters[to].id,
                now_ms: now,
                epoch,
                ttl_ms: self.config.route_ttl_ms,
                policy: &policy,
            };
            export_table(&cluster.views.catalog, &ctx)
        };
        let shape = table_shape(&table);
        let cluster = &mut self.clusters[at];
        if !due && cluster.sent.get(&to).is_some_and(|(s, _)| *s == shape) {
            return;
        }
        cluster.counters.tables += 1;
        cluster.counters.routes += table.len() as u64;
        cluster.sent.insert(to, (shape, self.now_ms));
        let link = &self.links[&edge(at, to)];
        let (arrive, generation) = (self.now_ms + link.latency_ms, link.generation);
        self.schedule(
            arrive,
            Action::Deliver {
                from: at,
                to,
                generation,
                table,
            },
        );
        let sent_at = self.now_ms;
        self.schedule(
            sent_at + self.config.announce_interval_ms,
            Action::Due { at, to, sent_at },
        );
    }

    /// The route `from` selects to `dest` now, if it has a usable one.
    pub fn active_route(&self, from: usize, dest: usize) -> Option<&LearnedRoute> {
        let now = START_MS + self.now_ms;
        let rows: Vec<&CandidateRow> = self.clusters[from]
            .views
            .catalog
            .candidates_to(&self.clusters[dest].id)
            .collect();
        let candidates: Vec<_> = rows.iter().map(|row| row.candidate()).collect();
        let best = rows[*rank(&candidates, now).first()?];
        usable(best, now).then_some(&best.route)
    }

    /// Runs until every cluster holds a sound route to every other it can
    /// reach, checking every `step_ms` up to `until_ms`; when that was
    /// first seen.
    pub fn run_until_routed(&mut self, step_ms: u64, until_ms: u64) -> Result<Option<u64>> {
        while self.now_ms < until_ms {
            if self.check_routes().all_routed() {
                return Ok(Some(self.now_ms));
            }
            self.run_until((self.now_ms + step_ms.max(1)).min(until_ms))?;
        }
        Ok(self.check_routes().all_routed().then_some(self.now_ms))
    }

    /// Fewest hops from `from` to every cluster over uncut links (`None`:
    /// unreachable).
    fn hops_from(&self, from: usize) -> Vec<Option<usize>> {
        let mut hops = vec![None; self.clusters.len()];
        hops[from] = Some(0);
        let mut queue = VecDeque::from([from]);
        while let Some(at) = queue.pop_front() {
            let next = hops[at].map_or(0, |h| h + 1);
            for &to in &self.clusters[at].neighbours {
                if hops[to].is_none() && !self.links[&edge(at, to)].cut {
                    hops[to] = Some(next);
                    queue.push_back(to);
                }
            }
        }
        hops
    }

    /// Checks every cluster's active routes against the links as they
    /// are now.
    pub fn check_routes(&self) -> RouteCheck {
        let index: BTreeMap<&str, usize> = self
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.as_str(), i))
            .collect();
        let mut check = RouteCheck::default();
        for from in 0..self.clusters.len() {
            let fewest = self.hops_from(from);
            for (dest, fewest) in fewest.iter().enumerate() {
                let reachable = fewest.is_some_and(|h| h > 0 && h < MAX_PATH_CLUSTERS);
                if reachable {
                    check.reachable += 1;
                }
                let Some(route) = self.active_route(from, dest) else {
                    continue;
                };
                if reachable {
                    check.routed += 1;
                }
                check.slowest_route_ms =
                    check.slowest_route_ms.max(route.metrics.latency_us / 1000);
                let path: Vec<Option<usize>> = route
                    .path
                    .iter()
                    .map(|c| index.get(c.as_str()).copied())
                    .collect();
                let distinct: BTreeSet<_> = path.iter().collect();
                let walks = path.windows(2).all(|w| match (w[0], w[1]) {
                    (Some(a), Some(b)) => self.links.get(&edge(a, b)).is_some_and(|l| !l.cut),
                    _ => false,
                });
                let sound = walks
                    && distinct.len() == path.len()
                    && path.first() == Some(&Some(from))
                    && path.last() == Some(&Some(dest));
                if !sound {
                    check.unsound += 1;
                } else if fewest.is_some_and(|h| route.metrics.hops as usize > h) {
                    check.longer += 1;
                }
            }
        }
        check
    }
}

#[cfg(test)]
#[path = "sim_test.rs"]
mod test;
