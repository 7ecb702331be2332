//! Tests of the catalog summaries clusters exchange: what a summary holds,
//! which summaries a cluster sends and accepts, and how apply keeps the
//! newest per cluster and lets an unrefreshed one go.

use super::*;
use crate::event::{EventKind, Outcome};
use crate::test_views::AppliedViews;
use crate::views::{Catalog, RowStore, View};

const LOCAL: &str = "c1";

/// The in-memory catalog of `views`, as a live node holds it.
fn catalog_of(views: &AppliedViews) -> Catalog {
    let mut catalog = Catalog::default();
    for view in View::ALL.into_iter().filter(|v| v.in_catalog()) {
        for (key, value) in views.store.scan(view, &[], &[], usize::MAX).unwrap() {
            catalog.apply_change(view, &key, Some(&value)).unwrap();
        }
    }
    catalog
}

fn register(views: &mut AppliedViews, name: &str, version: &str, provider: &str) {
    let kind = EventKind::FunctionRegistered {
        name: name.into(),
        function_id: name.into(),
        version: version.into(),
        resources: vec!["gpu".into()],
        provider: provider.into(),
        node_id: "n1".into(),
        cluster_id: LOCAL.into(),
    };
    assert_eq!(views.apply(1, kind), Outcome::Applied);
}

fn ad(cluster: &str, epoch: u64, function: &str) -> CatalogAd {
    CatalogAd {
        cluster_id: cluster.into(),
        epoch,
        summary: CatalogSummary {
            functions: vec![RemoteFunction {
                name: function.into(),
                function_id: function.into(),
                version: "1.0.0".into(),
                resources: vec![],
            }],
            topics: vec![],
            queues: vec![],
            caches: vec![],
        },
    }
}

fn learn(views: &mut AppliedViews, now: u64, via: &str, catalogs: Vec<CatalogAd>) {
    let kind = EventKind::CatalogsLearned {
        via: via.into(),
        catalogs,
        ttl_ms: 30_000,
    };
    assert_eq!(views.apply(now, kind), Outcome::Applied);
}

/// `(cluster, epoch, first function)` of every summary held.
fn held(views: &AppliedViews) -> Vec<(String, u64, String)> {
    catalog_of(views)
        .remote_catalogs()
        .map(|row| {
            let name = row.ad.summary.functions.first().map(|f| f.name.clone());
            (
                row.ad.cluster_id.clone(),
                row.ad.epoch,
                name.unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn a_summary_lists_each_registered_function_once_without_built_ins() {
    let mut views = AppliedViews::default();
    register(&mut views, "add", "1.0.0", "w1");
    register(&mut views, "add", "1.0.0", "w2");
    register(&mut views, "add", "2.0.0", "w2");
    register(&mut views, "echo", "1.0.0", "builtin");
    let kind = EventKind::SubscriptionAdded {
        subscription_id: "s".into(),
        patterns: vec!["b.#".into(), "a.*".into(), "b.#".into()],
        subscriber: "x".into(),
        node_id: "n1".into(),
        durable: false,
    };
    assert_eq!(views.apply(1, kind), Outcome::Applied);
    let summary = CatalogSummary::of(
        &catalog_of(&views),
        LOCAL,
        "builtin",
        (vec!["q2".into(), "q1".into()], vec!["ns".into()]),
    );
    let functions: Vec<(&str, &str)> = summary
        .functions
        .iter()
        .map(|f| (f.name.as_str(), f.version.as_str()))
        .collect();
    assert_eq!(functions, [("add", "1.0.0"), ("add", "2.0.0")]);
    assert_eq!(summary.functions[0].resources, ["gpu"]);
    assert_eq!(summary.topics, ["a.*", "b.#"]);
    assert_eq!(summary.queues, ["q1", "q2"]);
    assert_eq!(summary.caches, ["ns"]);
}

#[test]
fn only_a_higher_epoch_replaces_a_held_summary_and_the_own_is_refused() {
    let mut views = AppliedViews::default();
    learn(&mut views, 1_000, "c2", vec![ad("c3", 5, "add")]);
    let offered = [
        ad("c3", 5, "stale"),
        ad("c3", 4, "older"),
        ad(LOCAL, 9, "mine"),
        ad("c4", 1, "sub"),
    ];
    let taken = import_summaries(&catalog_of(&views), LOCAL, &offered);
    let taken: Vec<(&str, u64)> = taken
        .iter()
        .map(|a| (a.cluster_id.as_str(), a.epoch))
        .collect();
    assert_eq!(taken, [("c4", 1)]);
    // Apply keeps the newer one too, whatever the leader proposed.
    learn(
        &mut views,
        2_000,
        "c9",
        vec![ad("c3", 4, "older"), ad("c3", 6, "newer")],
    );
    assert_eq!(held(&views), [("c3".to_string(), 6, "newer".to_string())]);
}

#[test]
fn a_cluster_sends_its_own_summary_and_relays_the_others_but_not_back() {
    let mut views = AppliedViews::default();
    learn(
        &mut views,
        1_000,
        "c2",
        vec![ad("c2", 1, "two"), ad("c3", 1, "three")],
    );
    let catalog = catalog_of(&views);
    let own = ad(LOCAL, 7, "one");
    let sent = |to: &str, now: u64| -> Vec<String> {
        export_summaries(&catalog, &own, to, now)
            .into_iter()
            .map(|a| a.cluster_id)
            .collect()
    };
    assert_eq!(sent("c2", 2_000), [LOCAL, "c3"]);
    assert_eq!(sent("c4", 2_000), [LOCAL, "c2", "c3"]);
    // Past the TTL nothing held is relayed, and the timer's expiry takes it.
    assert_eq!(sent("c4", 31_000), [LOCAL]);
    assert_eq!(summaries_gone(&catalog, 30_999), Vec::<String>::new());
    assert_eq!(summaries_gone(&catalog, 31_000), ["c2", "c3"]);
}

#[test]
fn expiry_spares_a_summary_refreshed_since_the_timer_looked() {
    let mut views = AppliedViews::default();
    learn(&mut views, 1_000, "c2", vec![ad("c3", 1, "add")]);
    learn(&mut views, 20_000, "c2", vec![ad("c3", 2, "add")]);
    let kind = EventKind::CatalogsExpired {
        clusters: vec!["c3".into(), "c8".into()],
    };
    assert_eq!(views.apply(31_000, kind.clone()), Outcome::Applied);
    assert_eq!(held(&views).len(), 1, "refreshed at 20 s: lives until 50 s");
    assert_eq!(views.apply(50_000, kind), Outcome::Applied);
    assert!(held(&views).is_empty());
}

#[test]
fn oversized_summaries_are_refused_with_the_limit_named() {
    let mut big = ad("c3", 1, "f");
    big.summary.topics = (0..=MAX_SUMMARY_ENTRIES).map(|i| format!("t{i}")).collect();
    let error = check_summaries(&[big]).unwrap_err();
    assert!(
        error.contains("cluster c3") && error.contains("topics"),
        "{error}"
    );
    let many: Vec<CatalogAd> = (0..=MAX_SUMMARIES)
        .map(|i| ad(&format!("c{i}"), 1, "f"))
        .collect();
    assert!(
        check_summaries(&many)
            .unwrap_err()
            .contains("1001 catalog summaries")
    );
    assert_eq!(check_summaries(&[ad("c3", 1, "f")]), Ok(()));
}
