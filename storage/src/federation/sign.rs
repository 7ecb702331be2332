//! Signed route tables: the bytes a cluster signs when it sends its table
//! to a neighbour, the key ids, and the check a receiving leader makes
//! (upstream's `route_security.py` and `route_key_gossip.py`, with one
//! signature over the whole table instead of one per route, so a route
//! left out, which withdraws it, is covered too).
//!
//! Keys are ed25519. A cluster announces its active public keys with its
//! table ([`KeyAd`]); a receiver takes a key announcement only from the
//! key's own cluster. The first keys of a neighbour are trusted on first
//! use; after that a table must be signed by a key the receiver already
//! holds for the sender, so new keys (a rotation, a new leader) reach the
//! receiver under a signature it can check.

use ring::signature::{ED25519, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use super::{Announcement, CatalogAd, Reject};

/// The only signature algorithm.
pub const ALGORITHM: &str = "ed25519";
/// Most keys one cluster may announce.
pub const MAX_KEYS: usize = 16;
/// Length of an ed25519 public key.
const PUBLIC_KEY_BYTES: usize = 32;

/// One public key of a cluster, as announced and stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteKey {
    /// `route_key_` + the first 8 bytes of the key's SHA-256, in hex.
    pub key_id: String,
    /// The ed25519 public key, hex.
    pub public_key: String,
    pub added_at_ms: u64,
    /// Set on rotation: the key is valid until then (the overlap).
    pub expires_at_ms: Option<u64>,
}

impl RouteKey {
    /// Whether the key may verify a signature at `now_ms`.
    pub fn active(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|t| now_ms < t)
    }
}

/// A cluster's public keys: sent with its table, and stored per cluster
/// (its own and each neighbour's) in the `route_keys` view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAd {
    pub cluster_id: String,
    /// Ordered by key id.
    pub keys: Vec<RouteKey>,
    /// The key the cluster signs with now (its leader's).
    pub primary_key_id: String,
}

impl KeyAd {
    /// The keys active at `now_ms`.
    pub fn active(&self, now_ms: u64) -> impl Iterator<Item = &RouteKey> {
        self.keys.iter().filter(move |k| k.active(now_ms))
    }

    /// The same announcement with its keys ordered by id.
    pub fn normalized(mut self) -> KeyAd {
        self.keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        self
    }
}

/// The signature over a table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSignature {
    pub key_id: String,
    pub algorithm: String,
    /// Hex.
    pub signature: String,
}

/// The id of a public key.
pub fn key_id(public_key: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    format!("route_key_{}", hex::encode(&digest.as_ref()[..8]))
}

/// What a table's signature covers, in a fixed order and encoding.
#[derive(Serialize)]
struct Signed<'a> {
    domain: &'static str,
    sender: &'a str,
    urls: &'a [String],
    routes: &'a [Announcement],
    keys: Option<&'a KeyAd>,
    catalogs: &'a [CatalogAd],
}

/// The bytes signed for a table `sender` sends: bincode (fixed-width
/// integers, no floats anywhere) of a domain tag, the sender, its member
/// URLs, the routes, the key announcement and the catalog summaries.
pub fn table_bytes(
    sender: &str,
    urls: &[String],
    routes: &[Announcement],
    keys: Option<&KeyAd>,
    catalogs: &[CatalogAd],
) -> Vec<u8> {
    let signed = Signed {
        domain: "mpreg-federation-table-v2",
        sender,
        urls,
        routes,
        keys,
        catalogs,
    };
    bincode::serde::encode_to_vec(&signed, bincode::config::standard())
        .expect("encoding to a Vec does not fail")
}

/// Whether `signature` (hex) is `public_key`'s (hex) over `bytes`.
pub fn verify(public_key: &str, bytes: &[u8], signature: &str) -> bool {
    let (Ok(public), Ok(signature)) = (hex::decode(public_key), hex::decode(signature)) else {
        return false;
    };
    UnparsedPublicKey::new(&ED25519, public)
        .verify(bytes, &signature)
        .is_ok()
}

/// What the receiver knows and requires when it checks a table.
#[derive(Clone, Debug)]
pub struct SignatureContext<'a> {
    /// The neighbour the table came from.
    pub sender: &'a str,
    pub now_ms: u64,
    /// The keys already held for the sender.
    pub known: Option<&'a KeyAd>,
    /// Refuse unsigned tables even from a neighbour that never signed.
    pub require_signatures: bool,
}

/// A table's signature checked: the key announcement to store, if it
/// brings something the receiver does not hold, and whether one naming
/// another cluster was ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    pub learned: Option<KeyAd>,
    pub foreign_key_ad: bool,
}

/// Whether the keys of `ad` are well formed: few, each id matching its key.
fn well_formed(ad: &KeyAd) -> bool {
    ad.keys.len() <= MAX_KEYS
        && ad.keys.iter().any(|k| k.key_id == ad.primary_key_id)
        && ad.keys.iter().all(|k| {
            hex::decode(&k.public_key)
                .is_ok_and(|p| p.len() == PUBLIC_KEY_BYTES && key_id(&p) == k.key_id)
        })
}

/// Checks a table from `ctx.sender` signed with `signatures` over `bytes`
/// (see [`table_bytes`]), carrying key announcement `ad`. One signature
/// by a trusted key is enough (after a rotation a table carries two).
///
/// - A key announcement for another cluster is ignored (and reported).
/// - Unsigned: refused when signatures are required, or when the sender's
///   keys are already held (no downgrade); otherwise accepted.
/// - Signed: by a key held for the sender and active; when none is held,
///   by one of the announcement's own (trust on first use).
pub fn check_table(
    ctx: &SignatureContext<'_>,
    ad: Option<&KeyAd>,
    signatures: &[TableSignature],
    bytes: &[u8],
) -> Result<Checked, Reject> {
    let foreign_key_ad = ad.is_some_and(|a| a.cluster_id != ctx.sender);
    let ad = ad.filter(|a| a.cluster_id == ctx.sender);
    if ad.is_some_and(|a| !well_formed(a)) {
        return Err(Reject::Malformed);
    }
    let known: Vec<&RouteKey> = ctx
        .known
        .map(|k| k.active(ctx.now_ms).collect())
        .unwrap_or_default();
    if signatures.is_empty() {
        if ctx.require_signatures || !known.is_empty() {
            return Err(Reject::Signature);
        }
        return Ok(Checked {
            learned: None,
            foreign_key_ad,
        });
    }
    let trusted: Vec<&RouteKey> = if known.is_empty() {
        ad.map(|a| a.active(ctx.now_ms).collect())
            .unwrap_or_default()
    } else {
        known
    };
    let verified = signatures.iter().any(|signature| {
        signature.algorithm == ALGORITHM
            && trusted.iter().any(|k| {
                k.key_id == signature.key_id && verify(&k.public_key, bytes, &signature.signature)
            })
    });
    if !verified {
        return Err(Reject::Signature);
    }
    let learned = ad
        .map(|a| a.clone().normalized())
        .filter(|a| Some(a) != ctx.known);
    Ok(Checked {
        learned,
        foreign_key_ad,
    })
}
