//! Blob payloads that are cheap to make unique.
//!
//! A blob is a shared pseudo-random prefix plus a short tail that differs per
//! operation. SHA-256 is computed over the prefix once; each operation clones
//! that state and hashes only its tail, so the client spends no CPU re-hashing
//! hundreds of MiB per push (the machine's cores belong to the server).

use bytes::{Bytes, BytesMut};
use sha2::{Digest as _, Sha256};

/// Bytes of every blob that differ per operation (the whole blob if smaller).
pub const TAIL: u64 = 64;

pub struct BlobTemplate {
    prefix: Bytes,
    prefix_hash: Sha256,
    size: u64,
}

/// One concrete blob: `prefix ++ tail`, with its digest.
#[derive(Clone)]
pub struct Blob {
    pub prefix: Bytes,
    pub tail: Bytes,
    pub digest: String,
}

impl BlobTemplate {
    /// `size` bytes in total; the prefix is filled from `seed` (xorshift64*).
    pub fn new(size: u64, seed: u64) -> BlobTemplate {
        let prefix_len = size.saturating_sub(TAIL) as usize;
        let mut buf = BytesMut::zeroed(prefix_len);
        let mut x = seed | 1;
        for chunk in buf.chunks_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        let prefix = buf.freeze();
        let mut prefix_hash = Sha256::new();
        prefix_hash.update(&prefix);
        BlobTemplate {
            prefix,
            prefix_hash,
            size,
        }
    }

    /// The blob whose tail is derived from `label` (padded or cut to the tail length).
    pub fn instance(&self, label: &str) -> Blob {
        let tail_len = (self.size - self.prefix.len() as u64) as usize;
        let mut tail = vec![b'.'; tail_len];
        let l = label.as_bytes();
        let n = l.len().min(tail_len);
        tail[..n].copy_from_slice(&l[..n]);
        let mut h = self.prefix_hash.clone();
        h.update(&tail);
        Blob {
            prefix: self.prefix.clone(),
            tail: Bytes::from(tail),
            digest: format!("sha256:{}", hex::encode(h.finalize())),
        }
    }
}

impl Blob {
    pub fn len(&self) -> u64 {
        (self.prefix.len() + self.tail.len()) as u64
    }

    /// Bytes `[start, end)` of the blob; copies only when the range reaches the tail.
    pub fn slice(&self, start: u64, end: u64) -> Bytes {
        let (s, e) = (start as usize, end as usize);
        let p = self.prefix.len();
        if e <= p {
            return self.prefix.slice(s..e);
        }
        let mut out = BytesMut::with_capacity(e - s);
        if s < p {
            out.extend_from_slice(&self.prefix[s..]);
        }
        out.extend_from_slice(&self.tail[s.saturating_sub(p)..e - p]);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_and_slices_match_the_concatenation() {
        let t = BlobTemplate::new(1000, 7);
        let b = t.instance("op-1");
        let mut whole = b.prefix.to_vec();
        whole.extend_from_slice(&b.tail);
        assert_eq!(whole.len(), 1000);
        let d = format!("sha256:{}", hex::encode(Sha256::digest(&whole)));
        assert_eq!(d, b.digest);
        assert_ne!(t.instance("op-2").digest, b.digest);
        let mut joined = Vec::new();
        for s in (0..1000).step_by(300) {
            joined.extend_from_slice(&b.slice(s, (s + 300).min(1000)));
        }
        assert_eq!(joined, whole);
        let small = BlobTemplate::new(10, 1).instance("x");
        assert_eq!(small.len(), 10);
        assert_eq!(small.prefix.len(), 0);
    }
}
