//! Upload session ids.
//!
//! A session is opened by `POST …/blobs/uploads/` without writing anything: its
//! id carries what the session needs until its first chunk arrives (when it was
//! opened, and the digest algorithm its hash runs with). Most uploads are a
//! `POST` and one `PUT`, so the commit a stored session would cost is saved on
//! every push, and a session that receives nothing holds nothing.
//!
//! Form: 32 lowercase hex digits of a UUIDv7 (its first 48 bits are the Unix
//! time in milliseconds, so ids sort by age), 16 of a hash of that UUID and the
//! repository's name (a session opened in one repository is unknown in
//! another, as a stored session is), then `-sha512` for a sha512 hash. Nothing
//! in it is secret: making one up only gives what a `POST` to that repository
//! gives. Ids of the older form (a hyphenated UUID, always stored) are not
//! `SessionId`s.

use std::fmt;

use sha2::{Digest as _, Sha256};

use super::Algorithm;

/// A session id issued by this registry (parsed from a request path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionId {
    uuid: uuid::Uuid,
    repository: [u8; 8],
    algorithm: Algorithm,
}

impl SessionId {
    /// A new id for repository `repo`, opened now.
    pub fn new(algorithm: Algorithm, repo: &str) -> SessionId {
        let uuid = uuid::Uuid::now_v7();
        SessionId {
            uuid,
            repository: binding(&uuid, repo),
            algorithm,
        }
    }

    /// Parses `s`; `None` if it is not an id of this form.
    pub fn parse(s: &str) -> Option<SessionId> {
        let (hex, algorithm) = match s.split_once('-') {
            None => (s, Algorithm::Sha256),
            Some((hex, "sha512")) => (hex, Algorithm::Sha512),
            Some(_) => return None,
        };
        if hex.len() != 48 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let uuid = uuid::Uuid::try_parse(&hex[..32]).ok()?;
        let mut repository = [0u8; 8];
        for (i, b) in repository.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[32 + 2 * i..34 + 2 * i], 16).ok()?;
        }
        (uuid.get_version_num() == 7).then_some(SessionId {
            uuid,
            repository,
            algorithm,
        })
    }

    /// Whether the session was opened in repository `repo`.
    pub fn belongs_to(&self, repo: &str) -> bool {
        self.repository == binding(&self.uuid, repo)
    }

    /// When the session was opened (Unix milliseconds).
    pub fn opened_ms(&self) -> i64 {
        let b = self.uuid.as_bytes();
        b[..6]
            .iter()
            .fold(0i64, |acc, &x| (acc << 8) | i64::from(x))
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The smallest id (as a string) of a session opened at `ms` or later:
    /// every id opened before `ms` sorts below it, byte by byte.
    pub fn floor(ms: i64) -> String {
        let ms = ms.clamp(0, (1 << 48) - 1) as u64;
        format!("{ms:012x}{:020}", 0)
    }
}

/// The id's tie to its repository: the first 8 bytes of SHA-256(uuid, name).
fn binding(uuid: &uuid::Uuid, repo: &str) -> [u8; 8] {
    let h = Sha256::new()
        .chain_update(uuid.as_bytes())
        .chain_update(repo.as_bytes())
        .finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&h[..8]);
    out
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.uuid.simple())?;
        for b in self.repository {
            write!(f, "{b:02x}")?;
        }
        match self.algorithm {
            Algorithm::Sha256 => Ok(()),
            Algorithm::Sha512 => f.write_str("-sha512"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_round_trip_and_carry_their_opening_time() {
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let before = crate::metadata::now_ms();
            let id = SessionId::new(alg, "team/app");
            let s = id.to_string();
            assert_eq!(SessionId::parse(&s), Some(id));
            assert_eq!(id.algorithm(), alg);
            assert!(id.belongs_to("team/app"));
            assert!(!id.belongs_to("team/other"));
            assert!(!id.belongs_to("team/ap"));
            assert!(id.opened_ms() >= before && id.opened_ms() <= crate::metadata::now_ms());
        }
    }

    #[test]
    fn other_forms_are_not_session_ids() {
        for s in [
            "",
            "0192f1a2-3b4c-7d5e-8f60-718293a4b5c6", // the stored form
            "0192f1a23b4c7d5e8f60718293a4b5c6",     // no repository
            "0192f1a23b4c7d5e8f60718293a4b5c60011223344556677a", // 49 digits
            "0192F1A23B4C7D5E8F60718293A4B5C60011223344556677", // upper case
            "0192f1a23b4c4d5e8f60718293a4b5c60011223344556677", // a v4 UUID
            "0192f1a23b4c7d5e8f60718293a4b5c60011223344556677-md5", // unknown algorithm
            "0192f1a23b4c7d5e8f60718293a4b5c60011223344556677-sha256", // the default is unnamed
        ] {
            assert_eq!(SessionId::parse(s), None, "{s}");
        }
    }

    #[test]
    fn the_floor_splits_ids_by_opening_time() {
        let id = SessionId::new(Algorithm::Sha256, "a");
        let ms = id.opened_ms();
        let s = id.to_string();
        assert!(SessionId::floor(ms).as_str() <= s.as_str());
        assert!(SessionId::floor(ms + 1).as_str() > s.as_str());
        assert_eq!(SessionId::floor(ms).len(), 32);
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_keeps_the_text(s in ".*") {
            if let Some(id) = SessionId::parse(&s) {
                prop_assert_eq!(id.to_string(), s);
            }
        }

        #[test]
        fn any_v7_id_parses(ms in 0u64..(1 << 48), rand in any::<u128>(), sha512 in any::<bool>(), repo in "[a-z0-9/]{1,20}") {
            let uuid = uuid::Builder::from_unix_timestamp_millis(ms, &rand.to_be_bytes()[..10].try_into().unwrap()).into_uuid();
            let alg = if sha512 { Algorithm::Sha512 } else { Algorithm::Sha256 };
            let id = SessionId { uuid, repository: binding(&uuid, &repo), algorithm: alg };
            prop_assert!(id.belongs_to(&repo));
            let parsed = SessionId::parse(&id.to_string()).unwrap();
            prop_assert_eq!(parsed, id);
            prop_assert_eq!(parsed.opened_ms(), ms as i64);
            prop_assert!(SessionId::floor(ms as i64) <= id.to_string());
        }
    }
}
