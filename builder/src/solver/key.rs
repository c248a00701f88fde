//! Cache keys: what decides whether a vertex's recorded result may stand in for running it.
//! A key folds in the inputs' keys (not their identities), so a change of content anywhere upstream
//! moves every key downstream of it.

use std::fmt;

use crate::graph::{Encoder, VertexId};

/// Domain string that starts every key's encoding; bump it to invalidate every record on purpose.
const DOMAIN: &str = "forge.cache.v1";

/// A vertex's cache key: blake3 over the encoding documented at [`CacheKey::compute`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub [u8; 32]);

/// A digest of content a vertex reads from outside the graph (a COPY selection of the local
/// context, say), as the executor's [`cache_inputs`](super::Executor::cache_inputs) reports it.
pub type ContentDigest = [u8; 32];

impl CacheKey {
    /// The key of a vertex with identity `id`, whose inputs (in [`Op::inputs`] order, repeats
    /// kept) have the keys `inputs`, and which reads `content` beyond its inputs.
    ///
    /// The key is blake3 over this encoding, where `lp(x)` is x's length as a u64 little-endian
    /// followed by its bytes:
    ///
    /// ```text
    /// lp("forge.cache.v1")
    /// lp(identity)             the vertex's 32-byte VertexId (its op encoding's digest)
    /// u64 number of inputs     little-endian
    /// lp(input key)            for each input, 32 bytes, in Op::inputs() order
    /// u8 0                     no content digest, or
    /// u8 1, lp(content)        the executor's 32-byte content digest
    /// ```
    ///
    /// The identity already pins the op and the positions of its inputs; the inputs' keys add
    /// what those inputs were computed from, down to the content every ancestor read.
    ///
    /// [`Op::inputs`]: crate::graph::Op::inputs
    pub fn compute(id: VertexId, inputs: &[CacheKey], content: Option<ContentDigest>) -> CacheKey {
        let mut e = Encoder::new();
        e.str(DOMAIN);
        e.bytes(&id.0);
        e.u64(inputs.len() as u64);
        for k in inputs {
            e.bytes(&k.0);
        }
        match content {
            None => e.byte(0),
            Some(c) => {
                e.byte(1);
                e.bytes(&c);
            }
        }
        CacheKey(*blake3::hash(&e.into_bytes()).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The key [`CacheKey::to_hex`] printed.
    pub fn from_hex(s: &str) -> Option<CacheKey> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(CacheKey(out))
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blake3:{}", self.to_hex())
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_moves_the_key() {
        let id = VertexId([1; 32]);
        let base = CacheKey::compute(id, &[CacheKey([2; 32])], None);
        assert_ne!(
            base,
            CacheKey::compute(VertexId([9; 32]), &[CacheKey([2; 32])], None)
        );
        assert_ne!(base, CacheKey::compute(id, &[CacheKey([3; 32])], None));
        assert_ne!(base, CacheKey::compute(id, &[], None));
        assert_ne!(
            base,
            CacheKey::compute(id, &[CacheKey([2; 32])], Some([0; 32]))
        );
        assert_ne!(
            CacheKey::compute(id, &[CacheKey([2; 32])], Some([0; 32])),
            CacheKey::compute(id, &[CacheKey([2; 32])], Some([1; 32]))
        );
        assert_eq!(base, CacheKey::compute(id, &[CacheKey([2; 32])], None));
    }

    #[test]
    fn encoding_is_pinned() {
        // Pinned so that an accidental change of the encoding (and so of every stored record's key)
        // fails here rather than silently emptying users' caches.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(DOMAIN.len() as u64).to_le_bytes());
        bytes.extend_from_slice(DOMAIN.as_bytes());
        bytes.extend_from_slice(&32u64.to_le_bytes());
        bytes.extend_from_slice(&[1; 32]);
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.extend_from_slice(&32u64.to_le_bytes());
        bytes.extend_from_slice(&[2; 32]);
        bytes.push(1);
        bytes.extend_from_slice(&32u64.to_le_bytes());
        bytes.extend_from_slice(&[3; 32]);
        assert_eq!(
            CacheKey::compute(VertexId([1; 32]), &[CacheKey([2; 32])], Some([3; 32])).0,
            *blake3::hash(&bytes).as_bytes()
        );
    }
}
