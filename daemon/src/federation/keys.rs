//! This node's route signing keys: ed25519 key pairs kept in the data dir
//! (`route_keys.json`, readable by the owner only), created on first
//! start and rotated by `POST /federation/rotate-key`. The newest key
//! signs; after a rotation the previous one signs too until its overlap
//! ends, so a neighbour that does not hold the new key yet still checks
//! the table with the old one and learns the new key from it.
//!
//! Private keys never leave this file: the cluster's log holds only the
//! public keys (the `route_keys` view).

use std::io::Write;
use std::path::{Path, PathBuf};

use mpreg_storage::federation::{ALGORITHM, RouteKey, TableSignature, key_id};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// File name of the key store in the data dir.
pub const KEY_FILE: &str = "route_keys.json";

/// One key pair as stored.
#[derive(Clone, Serialize, Deserialize)]
struct StoredKey {
    /// PKCS#8 v2 document, hex.
    pkcs8: String,
    added_at_ms: u64,
    /// Set when a newer key replaced this one: it signs until then.
    expires_at_ms: Option<u64>,
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct StoredKeys {
    keys: Vec<StoredKey>,
}

/// A key pair ready to sign.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pub key: RouteKey,
}

impl SigningKey {
    fn from_stored(stored: &StoredKey) -> std::result::Result<SigningKey, String> {
        let pkcs8 = hex::decode(&stored.pkcs8).map_err(|e| e.to_string())?;
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| e.to_string())?;
        let public = pair.public_key().as_ref();
        let key = RouteKey {
            key_id: key_id(public),
            public_key: hex::encode(public),
            added_at_ms: stored.added_at_ms,
            expires_at_ms: stored.expires_at_ms,
        };
        Ok(SigningKey { pair, key })
    }

    fn sign(&self, bytes: &[u8]) -> TableSignature {
        TableSignature {
            key_id: self.key.key_id.clone(),
            algorithm: ALGORITHM.to_string(),
            signature: hex::encode(self.pair.sign(bytes).as_ref()),
        }
    }
}

/// This node's keys: the newest first, then any still in their overlap.
pub struct NodeKeys {
    path: PathBuf,
    stored: StoredKeys,
    keys: Vec<SigningKey>,
}

fn key_error(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::InvalidSetting(format!("route key file {}: {reason}", path.display()))
}

fn generate(now_ms: u64) -> std::result::Result<StoredKey, String> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|e| e.to_string())?;
    Ok(StoredKey {
        pkcs8: hex::encode(pkcs8.as_ref()),
        added_at_ms: now_ms,
        expires_at_ms: None,
    })
}

impl NodeKeys {
    /// Reads the key store of `data_dir`, creating it with a new key on
    /// first start. Keys whose overlap ended are dropped.
    pub fn open(data_dir: &Path, now_ms: u64) -> Result<NodeKeys> {
        let path = data_dir.join(KEY_FILE);
        let mut stored = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<StoredKeys>(&bytes).map_err(|e| key_error(&path, e))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StoredKeys::default(),
            Err(e) => return Err(key_error(&path, e)),
        };
        let before = stored.keys.len();
        stored
            .keys
            .retain(|k| k.expires_at_ms.is_none_or(|t| now_ms < t));
        if stored.keys.is_empty() {
            stored
                .keys
                .push(generate(now_ms).map_err(|e| key_error(&path, e))?);
        }
        if stored.keys.len() != before {
            write(&path, &stored)?;
        }
        NodeKeys::new(path, stored)
    }

    fn new(path: PathBuf, stored: StoredKeys) -> Result<NodeKeys> {
        let keys = stored
            .keys
            .iter()
            .rev()
            .map(SigningKey::from_stored)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| key_error(&path, e))?;
        Ok(NodeKeys { path, stored, keys })
    }

    /// The key this node signs with.
    pub fn current(&self) -> &RouteKey {
        &self.keys[0].key
    }

    /// Signatures of `bytes` by every key still valid at `now_ms`.
    pub fn sign(&self, bytes: &[u8], now_ms: u64) -> Vec<TableSignature> {
        self.keys
            .iter()
            .filter(|k| k.key.active(now_ms))
            .map(|k| k.sign(bytes))
            .collect()
    }

    /// Replaces the current key with a new one; the old ones stay valid
    /// (and keep signing) until `expires_at_ms` at the latest. Returns the
    /// new key store, written to disk.
    pub fn rotate(&self, now_ms: u64, expires_at_ms: u64) -> Result<NodeKeys> {
        let mut stored = self.stored.clone();
        stored
            .keys
            .retain(|k| k.expires_at_ms.is_none_or(|t| now_ms < t));
        for key in &mut stored.keys {
            key.expires_at_ms = Some(
                key.expires_at_ms
                    .map_or(expires_at_ms, |t| t.min(expires_at_ms)),
            );
        }
        stored
            .keys
            .push(generate(now_ms).map_err(|e| key_error(&self.path, e))?);
        write(&self.path, &stored)?;
        NodeKeys::new(self.path.clone(), stored)
    }
}

/// Writes the key store atomically, readable by the owner only.
fn write(path: &Path, keys: &StoredKeys) -> Result<()> {
    let body = serde_json::to_vec_pretty(keys).map_err(|e| key_error(path, e))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(|e| key_error(path, e))?;
    file.write_all(&body)
        .and_then(|()| file.sync_all())
        .map_err(|e| key_error(path, e))?;
    std::fs::rename(&tmp, path).map_err(|e| key_error(path, e))
}
