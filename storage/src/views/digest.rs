//! `views_digest`: an order-independent hash of every row of every view.
//!
//! Each row contributes `xxh3_128(view tag, key, value)`; the digest is the
//! wrapping sum of the contributions, so apply can keep it current in O(1)
//! per row change (subtract the old row, add the new) and replay can compute
//! it from scratch; equal digests mean equal views.

use xxhash_rust::xxh3::Xxh3;

use super::View;

/// Running digest over a set of rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digest(u128);

impl Digest {
    /// Rebuilds a digest from its stored value.
    pub fn from_u128(value: u128) -> Self {
        Digest(value)
    }

    /// The raw value, for storing next to `last_applied`.
    pub fn value(self) -> u128 {
        self.0
    }

    /// Accounts for a row that now exists.
    pub fn add(&mut self, view: View, key: &[u8], value: &[u8]) {
        self.0 = self.0.wrapping_add(row_hash(view, key, value));
    }

    /// Accounts for a row that no longer exists.
    pub fn remove(&mut self, view: View, key: &[u8], value: &[u8]) {
        self.0 = self.0.wrapping_sub(row_hash(view, key, value));
    }

    /// Lowercase hex, 32 characters: the form `/status` and `replay` print.
    pub fn to_hex(self) -> String {
        format!("{:032x}", self.0)
    }
}

fn row_hash(view: View, key: &[u8], value: &[u8]) -> u128 {
    let mut h = Xxh3::new();
    h.update(&[view.tag()]);
    h.update(&(key.len() as u64).to_be_bytes());
    h.update(key);
    h.update(value);
    h.digest128()
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn order_independent_and_reversible() {
        let mut a = Digest::default();
        a.add(View::Nodes, b"k1", b"v1");
        a.add(View::Routes, b"k2", b"v2");
        let mut b = Digest::default();
        b.add(View::Routes, b"k2", b"v2");
        b.add(View::Nodes, b"k1", b"v1");
        assert_eq!(a, b);
        b.remove(View::Routes, b"k2", b"v2");
        let mut c = Digest::default();
        c.add(View::Nodes, b"k1", b"v1");
        assert_eq!(b, c);
        assert_ne!(a, c);
    }

    #[test]
    fn key_value_boundary_matters() {
        let mut a = Digest::default();
        a.add(View::Nodes, b"ab", b"c");
        let mut b = Digest::default();
        b.add(View::Nodes, b"a", b"bc");
        assert_ne!(a, b);
    }
}
