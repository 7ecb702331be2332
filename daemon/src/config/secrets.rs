//! Where the secrets peers prove at link setup come from: the cluster
//! secret members share (`cluster_secret_file`, `--cluster-secret-file`),
//! one link secret per neighbour cluster (`[link_secret_files]`), and
//! whether a neighbour without one is refused (`require_link_secrets`).
//! Each file holds the secret; surrounding whitespace is ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Fewest bytes a secret may have.
pub const MIN_SECRET_BYTES: usize = 16;

/// The secret files as configured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretFiles {
    pub cluster: Option<PathBuf>,
    pub links: BTreeMap<String, PathBuf>,
    pub require_links: bool,
}

/// The secrets read from [`SecretFiles`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Secrets {
    pub cluster: Option<Vec<u8>>,
    pub links: BTreeMap<String, Vec<u8>>,
    pub require_links: bool,
}

impl SecretFiles {
    /// Reads every secret; a missing, unreadable or short file is an error
    /// naming it.
    pub fn load(&self) -> Result<Secrets> {
        let cluster = self.cluster.as_deref().map(read_secret).transpose()?;
        let links = self
            .links
            .iter()
            .map(|(cluster, path)| Ok((cluster.clone(), read_secret(path)?)))
            .collect::<Result<_>>()?;
        Ok(Secrets {
            cluster,
            links,
            require_links: self.require_links,
        })
    }
}

/// Reads a secret (or token) file, trimmed; a missing, unreadable or short
/// file is an error naming it.
pub(super) fn read_secret(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::InvalidSetting(format!("secret file {}: {e}", path.display())))?;
    let secret = bytes.trim_ascii().to_vec();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(Error::InvalidSetting(format!(
            "secret file {} holds {} bytes; a secret needs at least {MIN_SECRET_BYTES}",
            path.display(),
            secret.len()
        )));
    }
    Ok(secret)
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn secrets_are_read_trimmed_and_short_or_missing_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, "0123456789abcdef\n").unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "tiny\n").unwrap();
        let files = SecretFiles {
            cluster: Some(good.clone()),
            links: BTreeMap::from([("c2".to_string(), good.clone())]),
            require_links: true,
        };
        let secrets = files.load().unwrap();
        assert_eq!(secrets.cluster.as_deref(), Some(&b"0123456789abcdef"[..]));
        assert_eq!(secrets.links["c2"], b"0123456789abcdef");
        assert!(secrets.require_links);
        let refused = SecretFiles {
            cluster: Some(short),
            ..SecretFiles::default()
        }
        .load()
        .unwrap_err();
        assert!(refused.to_string().contains("at least 16"), "{refused}");
        let missing = SecretFiles {
            cluster: Some(dir.path().join("absent")),
            ..SecretFiles::default()
        }
        .load()
        .unwrap_err();
        assert!(missing.to_string().contains("absent"), "{missing}");
    }
}
