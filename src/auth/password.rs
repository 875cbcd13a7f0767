//! Secrets: argon2id hashes of passwords and robot secrets, and the generation
//! of robot secrets. A secret is never logged, stored or returned in the clear
//! (except a new robot's, once, to the one who created it).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine as _;
use rand::RngCore;

/// The shortest password accepted for a user.
pub const MIN_PASSWORD_LEN: usize = 8;

/// A hash of this fixed string is checked when the account does not exist, so
/// an unknown name costs as much time as a wrong password (no name probing by
/// timing).
const DECOY: &str = "cairn decoy secret";

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("could not hash the secret: {0}")]
    Hash(String),
}

/// The argon2id PHC string of `secret`, with a fresh random salt.
pub fn hash(secret: &str) -> Result<String, HashError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| HashError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Hash(e.to_string()))
}

/// Whether `secret` matches the stored PHC string (`None`: the account does
/// not exist; a decoy is checked so the answer takes as long).
pub fn verify(secret: &str, stored: Option<&str>) -> bool {
    match stored {
        Some(phc) => match PasswordHash::new(phc) {
            Ok(h) => Argon2::default()
                .verify_password(secret.as_bytes(), &h)
                .is_ok(),
            Err(_) => false,
        },
        None => {
            static DECOY_HASH: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
            if let Some(h) = DECOY_HASH.get_or_init(|| hash(DECOY).ok()) {
                let _ = verify(secret, Some(h));
            }
            false
        }
    }
}

/// A new robot secret: 32 random bytes, base64url (43 characters).
pub fn generate_secret() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ() {
        let a = hash("correct horse").expect("hash");
        let b = hash("correct horse").expect("hash");
        assert_ne!(a, b, "salted");
        assert!(a.starts_with("$argon2id$"));
        assert!(!a.contains("correct"));
        assert!(verify("correct horse", Some(&a)));
        assert!(!verify("wrong", Some(&a)));
        assert!(!verify("correct horse", None));
        assert!(!verify("x", Some("not a phc string")));
    }

    #[test]
    fn robot_secrets_are_long_and_random() {
        let a = generate_secret();
        assert_eq!(a.len(), 43);
        assert_ne!(a, generate_secret());
    }
}
