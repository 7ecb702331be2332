//! The one encoding of every stored value: `[format version u8][bincode]`.
//!
//! Log entries, view rows, metadata and snapshot headers all go through
//! [`encode`] and [`decode`], so an unknown version byte is a clear error
//! ([`Error::UnknownFormat`]) and never a panic or a misread.
//!
//! Decoding is bounded: a length read from the bytes (of a string or a
//! byte buffer) may claim at most a limit that grows with the input
//! ([`decode_body`]), so bytes that claim a terabyte are a decode error,
//! never an allocation. Sequences are not preallocated beyond what serde
//! allows (1 MiB), so they can only grow as far as the input goes.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Version byte written in front of every stored value by this binary.
pub const FORMAT_VERSION: u8 = 1;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Largest buffer [`encode_versioned`] reserves before encoding.
const PRESIZE_LIMIT: usize = 1 << 20;

/// Encodes `value` behind the current format version byte.
pub fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>> {
    encode_versioned(FORMAT_VERSION, what, value)
}

/// Encodes `value` behind the version byte `version` (wire formats that
/// version themselves, such as the peer envelope).
pub fn encode_versioned<T: Serialize>(version: u8, what: &str, value: &T) -> Result<Vec<u8>> {
    // Sized up front: growing the buffer byte by byte costs more than
    // counting the bytes first.
    let mut out = Vec::with_capacity(encoded_len(value).min(PRESIZE_LIMIT) + 1);
    out.push(version);
    bincode::serde::encode_into_std_write(value, &mut out, config()).map_err(|e| {
        Error::Encode {
            what: what.to_string(),
            reason: e.to_string(),
        }
    })?;
    Ok(out)
}

/// The bytes [`encode`] writes for `value` (without the version byte),
/// counted without building them.
pub fn encoded_len<T: Serialize>(value: &T) -> usize {
    let mut size = bincode::enc::write::SizeWriter::default();
    match bincode::serde::encode_into_writer(value, &mut size, config()) {
        Ok(()) => size.bytes_written,
        // Encoding fails only for types bincode cannot carry, which the
        // real encode refuses too; never let such a value through a cap.
        Err(_) => usize::MAX,
    }
}

/// Decodes a value written by [`encode`]; `what` names it in errors.
pub fn decode<'de, T: Deserialize<'de>>(what: &str, bytes: &'de [u8]) -> Result<T> {
    decode_versioned(FORMAT_VERSION, what, bytes)
}

/// Decodes a value written by [`encode_versioned`] with `known`.
pub fn decode_versioned<'de, T: Deserialize<'de>>(
    known: u8,
    what: &str,
    bytes: &'de [u8],
) -> Result<T> {
    let body = body_of(known, what, bytes)?;
    let (value, used) = decode_body(body).map_err(|e| Error::Decode {
        what: what.to_string(),
        reason: match e {
            bincode::error::DecodeError::LimitExceeded => format!(
                "a length in it claims more memory than its {} bytes can hold",
                body.len()
            ),
            other => other.to_string(),
        },
    })?;
    if used != body.len() {
        return Err(Error::Decode {
            what: what.to_string(),
            reason: format!("{} trailing bytes", body.len() - used),
        });
    }
    Ok(value)
}

/// The bincode body of `bytes`, once its version byte is `known`.
fn body_of<'a>(known: u8, what: &str, bytes: &'a [u8]) -> Result<&'a [u8]> {
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
    Ok(body)
}

/// Decodes the head of a value written by [`encode`]: `T` reads what it
/// needs from the front of the body and the rest is not looked at (for a
/// reader that wants a count or a tag, not the whole value).
pub fn decode_head<'de, T: Deserialize<'de>>(what: &str, bytes: &'de [u8]) -> Result<T> {
    decode_body(body_of(FORMAT_VERSION, what, bytes)?)
        .map(|(value, _)| value)
        .map_err(|e| Error::Decode {
            what: what.to_string(),
            reason: e.to_string(),
        })
}

/// Like [`decode`], for a row: an error names `key` as well. A row type
/// with `&str` fields borrows them from `bytes`.
pub fn decode_row<'de, T: Deserialize<'de>>(what: &str, key: &[u8], bytes: &'de [u8]) -> Result<T> {
    decode(what, bytes).map_err(|e| match e {
        Error::Decode { what, reason } => Error::Decode {
            what: format!("{what} row {}", key.escape_ascii()),
            reason,
        },
        Error::UnknownFormat {
            what,
            version,
            known,
        } => Error::UnknownFormat {
            what: format!("{what} row {}", key.escape_ascii()),
            version,
            known,
        },
        other => other,
    })
}

/// Decodes a bincode body. bincode claims memory as it decodes: a number
/// its in-memory width (a `u128` of one varint byte claims 16), a string or
/// byte buffer its length. A valid body claims at most 16 times its size
/// for numbers plus its size for text, so lengths may claim up to the
/// first bound (4 KiB, 64 KiB, 1 MiB, 16 MiB, 256 MiB, 1 GiB, 4 GiB) at or
/// above 32 times the body; a larger claim is
/// [`bincode::error::DecodeError::LimitExceeded`] before anything is
/// allocated.
fn decode_body<'de, T: Deserialize<'de>>(
    body: &'de [u8],
) -> std::result::Result<(T, usize), bincode::error::DecodeError> {
    use bincode::serde::borrow_decode_from_slice as decode_from_slice;
    const KIB: usize = 1 << 10;
    const MIB: usize = 1 << 20;
    let c = config();
    match body.len().saturating_mul(32) {
        n if n <= 4 * KIB => decode_from_slice(body, c.with_limit::<{ 4 * KIB }>()),
        n if n <= 64 * KIB => decode_from_slice(body, c.with_limit::<{ 64 * KIB }>()),
        n if n <= MIB => decode_from_slice(body, c.with_limit::<{ MIB }>()),
        n if n <= 16 * MIB => decode_from_slice(body, c.with_limit::<{ 16 * MIB }>()),
        n if n <= 256 * MIB => decode_from_slice(body, c.with_limit::<{ 256 * MIB }>()),
        n if n <= 1024 * MIB => decode_from_slice(body, c.with_limit::<{ 1024 * MIB }>()),
        _ => decode_from_slice(body, c.with_limit::<{ 4096 * MIB }>()),
    }
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
    fn lengths_cannot_claim_more_than_the_bytes_allow() {
        // A string whose length prefix says 2^40 bytes (varint 253 + u64).
        let mut bytes = vec![FORMAT_VERSION, 253];
        bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let err = decode::<String>("s", &bytes).unwrap_err();
        assert!(err.to_string().contains("claims more memory"), "{err}");
        // The same inside a struct; a sequence claiming as much runs out of
        // bytes instead (serde preallocates at most 1 MiB of it).
        let mut pair = vec![FORMAT_VERSION, 1];
        pair.extend_from_slice(&bytes[1..]);
        let err = decode::<(u8, String)>("pair", &pair).unwrap_err();
        assert!(err.to_string().contains("claims more memory"), "{err}");
        let err = decode::<(u8, Vec<u64>)>("pair", &pair).unwrap_err();
        assert!(err.to_string().contains("UnexpectedEnd"), "{err}");
        // Values made of small numbers claim 8 or 16 bytes per encoded
        // byte, and still decode.
        for n in [1, 100, 3_000, 100_000] {
            let numbers: Vec<(u128, u64, u32)> = (0..n).map(|i| (i % 7, 1, 2)).collect();
            let back: Vec<(u128, u64, u32)> =
                decode("numbers", &encode("numbers", &numbers).unwrap()).unwrap();
            assert_eq!(back, numbers);
        }
        // Large valid values still decode.
        for len in [0, 4095, 4096, 70_000, 2 << 20] {
            let big = "x".repeat(len);
            let back: String = decode("s", &encode("s", &big).unwrap()).unwrap();
            assert_eq!(back.len(), len);
        }
    }

    #[test]
    fn encoded_len_counts_what_encode_writes() {
        for value in ["", "abc", &"x".repeat(70_000)] {
            let pair = (value.to_string(), 7u64, vec![1u32, 2]);
            assert_eq!(encoded_len(&pair) + 1, encode("pair", &pair).unwrap().len());
        }
    }

    #[test]
    fn a_row_that_does_not_decode_names_its_key() {
        let err =
            decode_row::<String>("queue_messages", b"q\x00m1", &[FORMAT_VERSION, 200]).unwrap_err();
        assert!(
            err.to_string().contains("queue_messages row q\\x00m1"),
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
