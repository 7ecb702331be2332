//! The `[[credentials]]` entries of the config file: a name, the file that
//! holds the token, and the permissions. A node proposes each one it reads
//! (at start and on reload) as a `credential_set` event; the token itself
//! never leaves the node, only its SHA-256.

use std::path::PathBuf;

use mpreg_storage::credential::Permissions;
use serde::Deserialize;

use super::secrets::read_secret;
use crate::error::{Error, Result};

/// One `[[credentials]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialFile {
    pub name: String,
    /// The file holding the token (surrounding whitespace is ignored).
    pub token_file: PathBuf,
    #[serde(default)]
    pub permissions: Permissions,
}

/// A credential read from its file: what a `credential_set` event carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub name: String,
    pub token_sha256: String,
    pub permissions: Permissions,
}

impl CredentialFile {
    /// Reads the token and checks the name and patterns; errors name the
    /// credential.
    pub fn load(&self, hash: impl Fn(&str) -> String) -> Result<Credential> {
        let invalid =
            |what: String| Error::InvalidSetting(format!("credential {:?}: {what}", self.name));
        if !super::valid_id(&self.name) {
            return Err(invalid(
                "the name must be 1-128 characters of letters, digits, '-', '_' or '.'".into(),
            ));
        }
        if let Some(bad) = self
            .permissions
            .patterns()
            .find(|p| p.is_empty() || p.split('.').any(str::is_empty))
        {
            return Err(invalid(format!(
                "pattern {bad:?} has an empty level; use words, '*' and '#' separated by '.'"
            )));
        }
        let token = read_secret(&self.token_file).map_err(|e| invalid(e.to_string()))?;
        let token = String::from_utf8(token)
            .map_err(|_| invalid(format!("{} is not UTF-8 text", self.token_file.display())))?;
        Ok(Credential {
            name: self.name.clone(),
            token_sha256: hash(&token),
            permissions: self.permissions.clone(),
        })
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn entries_parse_and_bad_ones_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("app.token");
        std::fs::write(&token, "app-token-0123456789\n").unwrap();
        let text = format!(
            "name = \"app\"\ntoken_file = {:?}\npermissions = {{ call = [\"echo\"], sql = true }}",
            token.display().to_string()
        );
        let entry: CredentialFile = toml::from_str(&text).unwrap();
        let loaded = entry.load(|t| format!("hash({t})")).unwrap();
        assert_eq!(loaded.token_sha256, "hash(app-token-0123456789)");
        assert_eq!(loaded.permissions.call, ["echo"]);
        assert!(loaded.permissions.sql && !loaded.permissions.admin);
        let mut bad = entry.clone();
        bad.permissions.publish = vec!["orders..new".into()];
        let refused = bad.load(|t| t.to_string()).unwrap_err().to_string();
        assert!(
            refused.contains("\"app\"") && refused.contains("orders..new"),
            "{refused}"
        );
        let mut missing = entry;
        missing.token_file = dir.path().join("absent");
        let refused = missing.load(|t| t.to_string()).unwrap_err().to_string();
        assert!(refused.contains("absent"), "{refused}");
        assert!(
            toml::from_str::<CredentialFile>("name = \"x\"\ntoken_file = \"t\"\ncall = []")
                .is_err()
        );
    }
}
