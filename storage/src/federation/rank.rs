//! Scoring and ranking the candidate routes to one destination (lower
//! score wins), and explaining the choice, like upstream's
//! `explain_selection`.

use super::RouteMetrics;

/// One candidate route to a destination, as ranking sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate<'a> {
    pub next_hop: &'a str,
    pub advertiser: &'a str,
    pub path: &'a [String],
    pub metrics: &'a RouteMetrics,
    pub expires_at_ms: Option<u64>,
    /// Withdrawn and kept only while held down or suppressed.
    pub withdrawn: bool,
}

/// The score of a route (lower is better):
/// `latency_ms + 10·hops + cost + 50·(1 − reliability) − 0.05·bandwidth_mbps`.
pub fn score(m: &RouteMetrics) -> f64 {
    m.latency_ms() + 10.0 * f64::from(m.hops) + f64::from(m.cost) + 50.0 * (1.0 - m.reliability())
        - 0.05 * f64::from(m.bandwidth_mbps)
}

/// Orders two candidates: score, then fewer hops, lower latency, higher
/// reliability, the smaller advertiser, the smaller next hop.
fn order(a: &Candidate<'_>, b: &Candidate<'_>) -> std::cmp::Ordering {
    score(a.metrics)
        .total_cmp(&score(b.metrics))
        .then(a.metrics.hops.cmp(&b.metrics.hops))
        .then(a.metrics.latency_us.cmp(&b.metrics.latency_us))
        .then(b.metrics.reliability_ppm.cmp(&a.metrics.reliability_ppm))
        .then(a.advertiser.cmp(b.advertiser))
        .then(a.next_hop.cmp(b.next_hop))
        .then(a.path.cmp(b.path))
}

/// Why a candidate cannot be selected now, if it cannot.
fn filtered(c: &Candidate<'_>, now_ms: u64, avoid: &[String]) -> Option<&'static str> {
    if c.withdrawn {
        Some("withdrawn")
    } else if c.expires_at_ms.is_some_and(|at| at <= now_ms) {
        Some("expired")
    } else if c.path.iter().skip(1).any(|hop| avoid.contains(hop)) {
        Some("avoid_clusters")
    } else {
        None
    }
}

/// The indexes of `candidates` from best to worst; those that cannot be
/// selected at `now_ms` come last, in the same order among themselves.
pub fn rank(candidates: &[Candidate<'_>], now_ms: u64) -> Vec<usize> {
    let mut order_of: Vec<usize> = (0..candidates.len()).collect();
    order_of.sort_by(|&a, &b| {
        let (ca, cb) = (&candidates[a], &candidates[b]);
        let usable = |c| filtered(c, now_ms, &[]).is_none();
        usable(cb).cmp(&usable(ca)).then_with(|| order(ca, cb))
    });
    order_of
}

/// One candidate, explained (its tie-breakers are its metrics and
/// advertiser, in the order of [`rank`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Explained {
    /// Index into the candidates given to [`explain`].
    pub index: usize,
    pub score: f64,
    pub selected: bool,
    /// Why it cannot be selected (`expired`, `withdrawn`,
    /// `avoid_clusters`), or why it lost (`lower_rank`); `None` when
    /// selected.
    pub filtered_reason: Option<&'static str>,
}

/// Every candidate with its score, tie-breakers and verdict, best first.
/// Candidates going through a cluster in `avoid` (after the first hop of
/// the path, which is this cluster) cannot be selected.
pub fn explain(candidates: &[Candidate<'_>], now_ms: u64, avoid: &[String]) -> Vec<Explained> {
    let mut selected_one = false;
    let mut out: Vec<Explained> = rank(candidates, now_ms)
        .into_iter()
        .map(|index| {
            let c = &candidates[index];
            let reason = filtered(c, now_ms, avoid);
            let selected = reason.is_none() && !selected_one;
            selected_one |= selected;
            Explained {
                index,
                score: score(c.metrics),
                selected,
                filtered_reason: match (selected, reason) {
                    (true, _) => None,
                    (false, Some(r)) => Some(r),
                    (false, None) => Some("lower_rank"),
                },
            }
        })
        .collect();
    // Usable candidates first, so the selected one leads.
    out.sort_by_key(|e| !e.selected);
    out
}
