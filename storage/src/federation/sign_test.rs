//! FEDERATION.md §7 behaviours 16–19 (require_signatures, a tampered
//! field, rotation overlap, a foreign key announcement) and our own rules
//! (trust on first use, no downgrade, two signatures in the overlap),
//! through [`check_table`] with real ed25519 keys.

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};

use super::*;

struct Signer {
    pair: Ed25519KeyPair,
    key: RouteKey,
}

fn signer() -> Signer {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let public = pair.public_key().as_ref();
    let key = RouteKey {
        key_id: key_id(public),
        public_key: hex::encode(public),
        added_at_ms: 0,
        expires_at_ms: None,
    };
    Signer { pair, key }
}

impl Signer {
    fn sign(&self, bytes: &[u8]) -> TableSignature {
        TableSignature {
            key_id: self.key.key_id.clone(),
            algorithm: ALGORITHM.into(),
            signature: hex::encode(self.pair.sign(bytes).as_ref()),
        }
    }
}

fn route(dest: &str, epoch: u64) -> Announcement {
    Announcement {
        dest: dest.into(),
        path: vec!["c2".into(), dest.into()],
        metrics: RouteMetrics::origin(),
        advertiser: "c2".into(),
        advertised_at_ms: 1_000,
        ttl_ms: 30_000,
        epoch,
        tags: Vec::new(),
    }
}

fn ad(cluster: &str, keys: &[&RouteKey], primary: &RouteKey) -> KeyAd {
    KeyAd {
        cluster_id: cluster.into(),
        keys: keys.iter().map(|k| (*k).clone()).collect(),
        primary_key_id: primary.key_id.clone(),
    }
    .normalized()
}

fn ctx<'a>(
    known: Option<&'a KeyAd>,
    require_signatures: bool,
    now_ms: u64,
) -> SignatureContext<'a> {
    SignatureContext {
        sender: "c2",
        now_ms,
        known,
        require_signatures,
    }
}

/// A table of c2 signed by `signers`, as it travels.
fn table(keys: &KeyAd, signers: &[&Signer]) -> (Vec<Announcement>, Vec<TableSignature>) {
    let routes = vec![route("c3", 7)];
    let bytes = table_bytes("c2", &[], &routes, Some(keys), &[]);
    (routes, signers.iter().map(|s| s.sign(&bytes)).collect())
}

fn check(
    ctx: &SignatureContext<'_>,
    keys: &KeyAd,
    routes: &[Announcement],
    signatures: &[TableSignature],
) -> Result<Checked, Reject> {
    let bytes = table_bytes("c2", &[], routes, Some(keys), &[]);
    check_table(ctx, Some(keys), signatures, &bytes)
}

#[test]
fn first_keys_are_trusted_on_first_use_and_learned() {
    let k = signer();
    let keys = ad("c2", &[&k.key], &k.key);
    let (routes, signatures) = table(&keys, &[&k]);
    let checked = check(&ctx(None, true, 5), &keys, &routes, &signatures).unwrap();
    assert_eq!(checked.learned, Some(keys.clone()));
    assert!(!checked.foreign_key_ad);
    let again = check(&ctx(Some(&keys), true, 5), &keys, &routes, &signatures).unwrap();
    assert_eq!(again.learned, None, "keys already held are not news");
}

/// §7.17: a tampered field fails verification.
#[test]
fn a_tampered_route_url_or_key_fails() {
    let k = signer();
    let keys = ad("c2", &[&k.key], &k.key);
    let (routes, signatures) = table(&keys, &[&k]);
    let held = ctx(Some(&keys), false, 5);
    let mut cheaper = routes.clone();
    cheaper[0].metrics.cost = 0;
    cheaper[0].metrics.hops = 0;
    cheaper[0].epoch += 1;
    assert_eq!(
        check(&held, &keys, &cheaper, &signatures),
        Err(Reject::Signature)
    );
    let shorter: Vec<Announcement> = Vec::new();
    assert_eq!(
        check(&held, &keys, &shorter, &signatures),
        Err(Reject::Signature),
        "leaving a route out (a withdrawal) is covered by the signature"
    );
    let bytes = table_bytes("c2", &["ws://evil:1".into()], &routes, Some(&keys), &[]);
    assert_eq!(
        check_table(&held, Some(&keys), &signatures, &bytes),
        Err(Reject::Signature)
    );
    let mut bad = signatures.clone();
    bad[0].algorithm = "rsa".into();
    assert_eq!(check(&held, &keys, &routes, &bad), Err(Reject::Signature));
}

/// §7.16: require_signatures refuses unsigned tables; without it an
/// unsigned table passes only from a neighbour whose keys are not held.
#[test]
fn unsigned_tables_are_refused_when_required_or_after_keys_are_held() {
    let k = signer();
    let keys = ad("c2", &[&k.key], &k.key);
    let routes = vec![route("c3", 7)];
    let bytes = table_bytes("c2", &[], &routes, None, &[]);
    assert_eq!(
        check_table(&ctx(None, true, 5), None, &[], &bytes),
        Err(Reject::Signature)
    );
    assert_eq!(
        check_table(&ctx(None, false, 5), None, &[], &bytes),
        Ok(Checked::default())
    );
    assert_eq!(
        check_table(&ctx(Some(&keys), false, 5), None, &[], &bytes),
        Err(Reject::Signature),
        "no downgrade once the sender's keys are held"
    );
}

#[test]
fn a_key_not_held_cannot_sign_once_keys_are_held() {
    let (old, intruder) = (signer(), signer());
    let held = ad("c2", &[&old.key], &old.key);
    let claimed = ad("c2", &[&intruder.key], &intruder.key);
    let (routes, signatures) = table(&claimed, &[&intruder]);
    assert_eq!(
        check(&ctx(Some(&held), false, 5), &claimed, &routes, &signatures),
        Err(Reject::Signature)
    );
}

/// §7.18: during the overlap both keys verify; after it only the new one.
#[test]
fn rotation_overlap_both_keys_then_only_the_new_one() {
    let (old, new) = (signer(), signer());
    let mut retiring = old.key.clone();
    retiring.expires_at_ms = Some(60_000);
    let held = ad("c2", &[&old.key], &old.key);
    let rotated = ad("c2", &[&retiring, &new.key], &new.key);
    // The first table after the rotation is signed by both: the receiver
    // holds only the old key, checks it, and learns the new one.
    let (routes, both) = table(&rotated, &[&new, &old]);
    let checked = check(&ctx(Some(&held), false, 10), &rotated, &routes, &both).unwrap();
    assert_eq!(checked.learned, Some(rotated.clone()));
    // During the overlap either key alone verifies.
    for s in [&old, &new] {
        let (routes, one) = table(&rotated, &[s]);
        assert!(check(&ctx(Some(&rotated), false, 59_999), &rotated, &routes, &one).is_ok());
    }
    // After it, only the new one.
    let (routes, by_old) = table(&rotated, &[&old]);
    assert_eq!(
        check(
            &ctx(Some(&rotated), false, 60_000),
            &rotated,
            &routes,
            &by_old
        ),
        Err(Reject::Signature)
    );
    let (routes, by_new) = table(&rotated, &[&new]);
    assert!(
        check(
            &ctx(Some(&rotated), false, 60_000),
            &rotated,
            &routes,
            &by_new
        )
        .is_ok()
    );
}

/// §7.19: a key announcement for another cluster is ignored: not learned,
/// not trusted, and reported.
#[test]
fn a_foreign_key_announcement_is_ignored() {
    let (c2, c3) = (signer(), signer());
    let foreign = ad("c3", &[&c3.key], &c3.key);
    let (routes, signatures) = table(&foreign, &[&c3]);
    assert_eq!(
        check(&ctx(None, false, 5), &foreign, &routes, &signatures),
        Err(Reject::Signature),
        "a foreign key cannot vouch for c2's table"
    );
    let held = ad("c2", &[&c2.key], &c2.key);
    let (routes, signatures) = table(&foreign, &[&c2]);
    let checked = check(&ctx(Some(&held), false, 5), &foreign, &routes, &signatures).unwrap();
    assert!(checked.foreign_key_ad);
    assert_eq!(checked.learned, None);
}

#[test]
fn malformed_key_announcements_are_refused() {
    let k = signer();
    let mut wrong_id = ad("c2", &[&k.key], &k.key);
    wrong_id.keys[0].key_id = "route_key_0000000000000000".into();
    wrong_id.primary_key_id = wrong_id.keys[0].key_id.clone();
    let mut no_primary = ad("c2", &[&k.key], &k.key);
    no_primary.primary_key_id = "route_key_ffffffffffffffff".into();
    let too_many = KeyAd {
        cluster_id: "c2".into(),
        keys: vec![k.key.clone(); MAX_KEYS + 1],
        primary_key_id: k.key.key_id.clone(),
    };
    for bad in [wrong_id, no_primary, too_many] {
        let (routes, signatures) = table(&bad, &[&k]);
        assert_eq!(
            check(&ctx(None, false, 5), &bad, &routes, &signatures),
            Err(Reject::Malformed),
            "{bad:?}"
        );
    }
}
