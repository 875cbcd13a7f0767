//! Content digests (`algorithm:encoded`) as defined by the OCI image spec, and the
//! streaming hasher that verifies uploads.
//!
//! Only the algorithms the registry can verify are accepted: a digest we cannot
//! recompute could not protect the content it names.

use std::fmt;
use std::str::FromStr;

use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest as _, Sha512};

use super::sha256::Sha256;

/// A digest algorithm Cairn verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the lowercase hex encoding.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    pub fn hasher(self) -> Hasher {
        match self {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }
}

impl FromStr for Algorithm {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sha256" => Ok(Algorithm::Sha256),
            "sha512" => Ok(Algorithm::Sha512),
            other => Err(DigestError::UnsupportedAlgorithm(other.to_string())),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a digest Cairn accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest {0:?} is not of the form algorithm:hex")]
    Malformed(String),
    #[error("digest algorithm {0:?} is not supported (use sha256 or sha512)")]
    UnsupportedAlgorithm(String),
    #[error("digest {digest:?} must have {expected} lowercase hex characters after {algorithm}:")]
    BadEncoding {
        digest: String,
        algorithm: Algorithm,
        expected: usize,
    },
}

/// A verified-form content digest, e.g. `sha256:e3b0…`.
///
/// The encoded part is always lowercase hex of the algorithm's exact length, so
/// two equal contents always have byte-identical digest strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    text: String,
    algorithm_len: usize,
}

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        match &self.text[..self.algorithm_len] {
            "sha512" => Algorithm::Sha512,
            _ => Algorithm::Sha256,
        }
    }

    /// The hex part after `algorithm:`.
    pub fn hex(&self) -> &str {
        &self.text[self.algorithm_len + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The digest of `bytes` under `algorithm`.
    pub fn compute(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let mut h = algorithm.hasher();
        h.update(bytes);
        h.finish()
    }

    fn from_parts(algorithm: Algorithm, hex: String) -> Digest {
        let text = format!("{}:{}", algorithm.as_str(), hex);
        Digest {
            text,
            algorithm_len: algorithm.as_str().len(),
        }
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::Malformed(s.to_string()))?;
        if alg.is_empty() || hex.is_empty() {
            return Err(DigestError::Malformed(s.to_string()));
        }
        // The image spec's grammar for the algorithm component; anything else is
        // malformed rather than merely unsupported.
        if !alg
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
        {
            return Err(DigestError::Malformed(s.to_string()));
        }
        let algorithm: Algorithm = alg.parse()?;
        if hex.len() != algorithm.hex_len()
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestError::BadEncoding {
                digest: s.to_string(),
                algorithm,
                expected: algorithm.hex_len(),
            });
        }
        Ok(Digest::from_parts(algorithm, hex.to_string()))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// A running hash whose state can be saved between requests.
///
/// Chunked uploads may send each chunk to a different replica, so the state after
/// each chunk is persisted with the upload session instead of living in memory.
#[derive(Clone)]
pub enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest::from_parts(Algorithm::Sha256, hex::encode(h.finish())),
            Hasher::Sha512(h) => Digest::from_parts(Algorithm::Sha512, hex::encode(h.finalize())),
        }
    }

    /// The opaque saved state (includes any buffered partial block).
    pub fn save(&self) -> Vec<u8> {
        match self {
            Hasher::Sha256(h) => h.save().to_vec(),
            Hasher::Sha512(h) => h.serialize().as_slice().to_vec(),
        }
    }

    /// Restores a state produced by [`Hasher::save`]; `None` if it is not one.
    pub fn restore(algorithm: Algorithm, state: &[u8]) -> Option<Hasher> {
        match algorithm {
            Algorithm::Sha256 => Sha256::restore(state).map(Hasher::Sha256),
            Algorithm::Sha512 => {
                let s = SerializedState::<Sha512>::try_from(state).ok()?;
                Sha512::deserialize(&s).ok().map(Hasher::Sha512)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn computes_the_known_empty_digest() {
        assert_eq!(Digest::compute(Algorithm::Sha256, b"").as_str(), EMPTY);
    }

    #[test]
    fn parses_valid_and_rejects_invalid() {
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.hex().len(), 64);
        assert!(matches!(
            "sha256:abc".parse::<Digest>(),
            Err(DigestError::BadEncoding { .. })
        ));
        assert!(matches!(
            "md5:d41d8cd98f00b204e9800998ecf8427e".parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert!("nocolon".parse::<Digest>().is_err());
        assert!(EMPTY.to_uppercase().parse::<Digest>().is_err());
        assert!(":abc".parse::<Digest>().is_err());
    }

    #[test]
    fn saved_state_resumes_to_the_same_digest() {
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let mut a = alg.hasher();
            a.update(b"hello, ");
            let state = a.save();
            let mut b = Hasher::restore(alg, &state).unwrap();
            b.update(b"world");
            assert_eq!(b.finish(), Digest::compute(alg, b"hello, world"));
        }
        assert!(Hasher::restore(Algorithm::Sha256, b"short").is_none());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".*") {
            let _ = s.parse::<Digest>();
        }

        #[test]
        fn computed_digests_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            for alg in [Algorithm::Sha256, Algorithm::Sha512] {
                let d = Digest::compute(alg, &bytes);
                prop_assert_eq!(d.as_str().parse::<Digest>().unwrap(), d);
            }
        }

        #[test]
        fn split_hashing_matches_whole(bytes in proptest::collection::vec(any::<u8>(), 0..1024), cut in 0usize..1024) {
            let cut = cut.min(bytes.len());
            let mut h = Algorithm::Sha256.hasher();
            h.update(&bytes[..cut]);
            let mut h = Hasher::restore(Algorithm::Sha256, &h.save()).unwrap();
            h.update(&bytes[cut..]);
            prop_assert_eq!(h.finish(), Digest::compute(Algorithm::Sha256, &bytes));
        }
    }
}
