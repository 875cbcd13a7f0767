//! Access and refresh tokens: Ed25519-signed JWTs (`alg: EdDSA`) with the
//! signing key's `kid` in the header.
//!
//! Keys come from `auth.signing_key_file` or are generated on first start and
//! kept in the database (`signing_keys`), so every replica signs and verifies
//! with the same set. A rotation adds a key and retires the old ones; retired
//! keys keep verifying until every token they signed has expired, so a
//! rotation never logs anyone out. A token naming a `kid` this process does
//! not know makes it re-read the keys (another replica may have rotated).
//!
//! Verification accepts exactly one algorithm, so `alg: none`, HS256 signed
//! with the public key, and every other confusion fail before any signature
//! check; audience (`auth.service`), issuer and expiry are always checked.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::metadata::{self, Metadata, StoredKey};

/// The `iss` of every token Cairn mints.
pub const ISSUER: &str = "cairn";
const ALGORITHM: &str = "EdDSA";
/// `typ` of refresh tokens; access tokens have none.
const REFRESH: &str = "refresh";
/// A token naming an unknown `kid` re-reads the keys at most this often.
const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// The signing key is re-read this often, to pick up a rotation made elsewhere.
const REFRESH_SIGNER_EVERY: Duration = Duration::from_secs(60);

/// One granted scope, as the distribution token spec writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// The claims of Cairn's tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<Access>,
    /// `refresh` for refresh tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
}

/// Why a token was refused. The text is safe to show the client: it never
/// includes the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    Immature,
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token's algorithm is not accepted (only EdDSA)")]
    Algorithm,
    #[error("the token was signed by an unknown key")]
    UnknownKey,
    #[error("the token was issued for another service")]
    Audience,
    #[error("the token was issued by someone else")]
    Issuer,
    #[error("a refresh token is not an access token (and the reverse)")]
    Type,
}

/// Errors loading or storing keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key: {0}")]
    Key(String),
    #[error(transparent)]
    Metadata(#[from] metadata::Error),
    #[error("reading {0}: {1}")]
    Io(String, std::io::Error),
}

struct Signer {
    kid: String,
    key: EncodingKey,
}

struct Ring {
    signer: Signer,
    verifiers: HashMap<String, DecodingKey>,
    loaded: Instant,
}

/// Mints and verifies tokens for one service.
pub struct Tokens {
    meta: Metadata,
    service: String,
    pub ttl: Duration,
    pub refresh_ttl: Duration,
    /// `auth.signing_key_file`: this key signs; the database's keys still verify.
    configured: Option<StoredKey>,
    ring: RwLock<Ring>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// A key pair from its PKCS#8 document; the `kid` is derived from the public key.
fn stored_key(pkcs8: &[u8]) -> Result<StoredKey, KeyError> {
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
        .map_err(|e| KeyError::Key(format!("not an Ed25519 PKCS#8 key: {e}")))?;
    let public = pair.public_key().as_ref();
    Ok(StoredKey {
        kid: hex::encode(&Sha256::digest(public)[..12]),
        algorithm: ALGORITHM.into(),
        private_key: b64().encode(pkcs8),
        public_key: b64().encode(public),
        created_at: metadata::now_ms(),
        retired_at: None,
    })
}

/// A fresh Ed25519 key.
pub fn generate_key() -> Result<StoredKey, KeyError> {
    let rng = ring::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| KeyError::Key("could not generate a key".into()))?;
    stored_key(doc.as_ref())
}

/// Reads a PKCS#8 Ed25519 private key (PEM or DER), e.g. from
/// `openssl genpkey -algorithm ed25519 -out key.pem`.
pub fn read_key_file(path: &std::path::Path) -> Result<StoredKey, KeyError> {
    let bytes = std::fs::read(path).map_err(|e| KeyError::Io(path.display().to_string(), e))?;
    let der = match std::str::from_utf8(&bytes) {
        Ok(text) if text.contains("-----BEGIN") => {
            let body: String = text
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<Vec<_>>()
                .concat();
            b64()
                .decode(body.trim())
                .map_err(|_| KeyError::Key(format!("{} is not valid PEM", path.display())))?
        }
        _ => bytes,
    };
    stored_key(&der)
}

fn signer(k: &StoredKey) -> Result<Signer, KeyError> {
    let der = b64()
        .decode(&k.private_key)
        .map_err(|_| KeyError::Key(format!("stored key {} is corrupt", k.kid)))?;
    Ok(Signer {
        kid: k.kid.clone(),
        key: EncodingKey::from_ed_der(&der),
    })
}

/// The verification key of a stored key (`None` for another algorithm or a
/// corrupt key).
pub fn verifier(k: &StoredKey) -> Option<DecodingKey> {
    (k.algorithm == ALGORITHM)
        .then(|| b64().decode(&k.public_key).ok())
        .flatten()
        .map(|der| DecodingKey::from_ed_der(&der))
}

impl Tokens {
    /// Loads the keys, generating and storing the first one if there is none.
    pub async fn load(
        meta: Metadata,
        service: &str,
        ttl: Duration,
        refresh_ttl: Duration,
        key_file: Option<&std::path::Path>,
    ) -> Result<Tokens, KeyError> {
        let configured = key_file.map(read_key_file).transpose()?;
        let ring = Self::read_ring(&meta, configured.as_ref(), refresh_ttl).await?;
        Ok(Tokens {
            meta,
            service: service.to_string(),
            ttl,
            refresh_ttl,
            configured,
            ring: RwLock::new(ring),
        })
    }

    async fn read_ring(
        meta: &Metadata,
        configured: Option<&StoredKey>,
        refresh_ttl: Duration,
    ) -> Result<Ring, KeyError> {
        let mut keys = meta.signing_keys().await?;
        if configured.is_none() && !keys.iter().any(|k| k.retired_at.is_none()) {
            // First start (or every key retired): make one. Two replicas doing
            // this at once both succeed; each signs with the newest it reads,
            // and both keys verify everywhere.
            meta.add_signing_key(&generate_key()?, false, None).await?;
            keys = meta.signing_keys().await?;
        }
        let horizon = metadata::now_ms() - refresh_ttl.as_millis() as i64;
        let mut verifiers: HashMap<String, DecodingKey> = keys
            .iter()
            .filter(|k| k.retired_at.is_none_or(|r| r > horizon))
            .filter_map(|k| verifier(k).map(|v| (k.kid.clone(), v)))
            .collect();
        let signer = match configured {
            Some(c) => {
                if let Some(v) = verifier(c) {
                    verifiers.insert(c.kid.clone(), v);
                }
                signer(c)?
            }
            None => {
                let newest = keys
                    .iter()
                    .find(|k| k.retired_at.is_none() && k.algorithm == ALGORITHM)
                    .ok_or_else(|| KeyError::Key("no signing key".into()))?;
                signer(newest)?
            }
        };
        Ok(Ring {
            signer,
            verifiers,
            loaded: Instant::now(),
        })
    }

    async fn reload(&self) {
        match Self::read_ring(&self.meta, self.configured.as_ref(), self.refresh_ttl).await {
            Ok(r) => {
                if let Ok(mut ring) = self.ring.write() {
                    *ring = r;
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not reload token signing keys"),
        }
    }

    fn loaded_ago(&self) -> Duration {
        self.ring
            .read()
            .map(|r| r.loaded.elapsed())
            .unwrap_or(Duration::ZERO)
    }

    /// The `kid` that signs now.
    pub fn current_kid(&self) -> Option<String> {
        self.ring.read().ok().map(|r| r.signer.kid.clone())
    }

    /// Mints an access token (`refresh: false`) or a refresh token for `sub`.
    pub async fn mint(
        &self,
        sub: &str,
        access: Vec<Access>,
        refresh: bool,
    ) -> Result<(String, Duration), KeyError> {
        if self.loaded_ago() > REFRESH_SIGNER_EVERY {
            self.reload().await;
        }
        let ttl = if refresh { self.refresh_ttl } else { self.ttl };
        let now = now_secs();
        let claims = Claims {
            iss: ISSUER.into(),
            sub: sub.into(),
            aud: self.service.clone(),
            exp: now + ttl.as_secs(),
            nbf: now.saturating_sub(1),
            iat: now,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            access,
            typ: refresh.then(|| REFRESH.to_string()),
        };
        let ring = self
            .ring
            .read()
            .map_err(|_| KeyError::Key("key ring poisoned".into()))?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(ring.signer.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &ring.signer.key)
            .map_err(|e| KeyError::Key(e.to_string()))?;
        Ok((token, ttl))
    }

    /// Verifies a token: algorithm, key, signature, issuer, audience, expiry,
    /// and that it is a refresh token exactly when `refresh`.
    pub async fn verify(&self, token: &str, refresh: bool) -> Result<Claims, TokenError> {
        let kid = token_kid(token)?;
        let known = |kid: &str| {
            self.ring
                .read()
                .map(|r| r.verifiers.contains_key(kid))
                .unwrap_or(false)
        };
        if !known(&kid) && self.loaded_ago() > RELOAD_EVERY {
            self.reload().await;
        }
        let ring = self.ring.read().map_err(|_| TokenError::UnknownKey)?;
        let key = ring.verifiers.get(&kid).ok_or(TokenError::UnknownKey)?;
        check(token, key, &self.service, refresh)
    }
}

/// The `kid` of an untrusted token's header, once the header parses and names
/// the one accepted algorithm. Nothing is verified yet.
pub fn token_kid(token: &str) -> Result<String, TokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(map_error)?;
    if header.alg != Algorithm::EdDSA {
        return Err(TokenError::Algorithm);
    }
    header.kid.ok_or(TokenError::UnknownKey)
}

/// Verifies an untrusted token against `key`: signature, issuer, audience
/// (`service`), expiry, not-before, and that it is a refresh token exactly
/// when `refresh`. Pure: the fuzz target `token` calls it.
pub fn check(
    token: &str,
    key: &DecodingKey,
    service: &str,
    refresh: bool,
) -> Result<Claims, TokenError> {
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_audience(&[service]);
    v.set_issuer(&[ISSUER]);
    v.leeway = 5;
    v.validate_nbf = true;
    v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    let claims = jsonwebtoken::decode::<Claims>(token, key, &v)
        .map_err(map_error)?
        .claims;
    if (claims.typ.as_deref() == Some(REFRESH)) != refresh {
        return Err(TokenError::Type);
    }
    Ok(claims)
}

fn map_error(e: jsonwebtoken::errors::Error) -> TokenError {
    match e.kind() {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::Immature,
        ErrorKind::InvalidSignature => TokenError::Signature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => TokenError::Algorithm,
        ErrorKind::InvalidAudience => TokenError::Audience,
        ErrorKind::InvalidIssuer => TokenError::Issuer,
        _ => TokenError::Malformed,
    }
}

/// Adds a new signing key and retires the others (they keep verifying the
/// tokens they signed until those expire); prunes keys retired long enough
/// ago that nothing they signed is live. Returns the new `kid`.
pub async fn rotate(
    meta: &Metadata,
    refresh_ttl: Duration,
    origin: &metadata::Origin,
) -> Result<String, KeyError> {
    let key = generate_key()?;
    meta.add_signing_key(&key, true, Some(origin)).await?;
    let horizon = metadata::now_ms() - refresh_ttl.as_millis() as i64 - 60_000;
    meta.prune_signing_keys(horizon).await?;
    Ok(key.kid)
}
