//! The one encoding of every stored value: `[format version u8][bincode]`.
//!
//! Log entries, view rows, metadata and snapshot headers all go through
//! [`encode`] and [`decode`], so an unknown version byte is a clear error
//! ([`Error::UnknownFormat`]) and never a panic or a misread.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Version byte written in front of every stored value by this binary.
pub const FORMAT_VERSION: u8 = 1;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `value` behind the current format version byte.
pub fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>> {
    encode_versioned(FORMAT_VERSION, what, value)
}

/// Encodes `value` behind the version byte `version` (wire formats that
/// version themselves, such as the peer envelope).
pub fn encode_versioned<T: Serialize>(version: u8, what: &str, value: &T) -> Result<Vec<u8>> {
    let mut out = vec![version];
    bincode::serde::encode_into_std_write(value, &mut out, config()).map_err(|e| {
        Error::Encode {
            what: what.to_string(),
            reason: e.to_string(),
        }
    })?;
    Ok(out)
}

/// Decodes a value written by [`encode`]; `what` names it in errors.
pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    decode_versioned(FORMAT_VERSION, what, bytes)
}

/// Decodes a value written by [`encode_versioned`] with `known`.
pub fn decode_versioned<T: DeserializeOwned>(known: u8, what: &str, bytes: &[u8]) -> Result<T> {
    let Some((&version, body)) = bytes.split_first() else {
        return Err(Error::Decode {
            what: what.to_string(),
            reason: "empty value".to_string(),
        });
    };
    if version != known {
        return Err(Error::UnknownFormat {
            what: what.to_string(),
            version,
            known,
        });
    }
    let (value, used) =
        bincode::serde::decode_from_slice(body, config()).map_err(|e| Error::Decode {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
    if used != body.len() {
        return Err(Error::Decode {
            what: what.to_string(),
            reason: format!("{} trailing bytes", body.len() - used),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn roundtrip() {
        let bytes = encode("pair", &("a".to_string(), 7u64)).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        let back: (String, u64) = decode("pair", &bytes).unwrap();
        assert_eq!(back, ("a".to_string(), 7));
    }

    #[test]
    fn unknown_version_is_an_error() {
        let mut bytes = encode("n", &5u32).unwrap();
        bytes[0] = 9;
        let err = decode::<u32>("n", &bytes).unwrap_err();
        assert!(
            err.to_string().contains("unknown format version 9"),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode::<String>("s", &[]).is_err());
        assert!(decode::<String>("s", &[FORMAT_VERSION, 200, 1]).is_err());
        let mut bytes = encode("n", &5u32).unwrap();
        bytes.push(0);
        assert!(decode::<u32>("n", &bytes).is_err());
    }
}
