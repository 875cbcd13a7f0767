//! Credentials come straight from clients: `Authorization` header values
//! (`Basic`, `Bearer`), JWTs (header, claims, signature), token scopes and role
//! grants. None of them may panic; a token verifies only with the right key,
//! and an arbitrary claims document signed with that key is either refused or
//! yields claims for this service.
#![no_main]

use std::sync::LazyLock;

use base64::Engine as _;
use cairn::api::access::{parse_authorization, Authorization};
use cairn::auth::token::{check, generate_key, token_kid, verifier, Claims};
use cairn::auth::{grant_scopes, parse_role};
use cairn::policy::access::Subject;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;

struct Keys {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| {
    let k = generate_key().expect("key");
    let der = base64::engine::general_purpose::STANDARD
        .decode(&k.private_key)
        .expect("pkcs8");
    Keys {
        kid: k.kid.clone(),
        encoding: EncodingKey::from_ed_der(&der),
        decoding: verifier(&k).expect("verifier"),
    }
});

fn assert_for_us(c: &Claims) {
    assert_eq!(c.iss, cairn::auth::token::ISSUER);
    assert_eq!(c.aud, "cairn");
}

fuzz_target!(|data: &[u8]| {
    let keys = &*KEYS;
    match parse_authorization(data) {
        Ok(Authorization::Basic(name, secret)) => {
            assert!(!name.contains(':'));
            let _ = (name, secret);
        }
        Ok(Authorization::Bearer(t)) => {
            // Random bytes never carry a valid signature.
            assert!(check(t, &keys.decoding, "cairn", false).is_err());
        }
        Err(_) => {}
    }
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = token_kid(s);
    for refresh in [false, true] {
        if let Ok(c) = check(s, &keys.decoding, "cairn", refresh) {
            assert_for_us(&c);
        }
    }
    let _ = parse_role(s);
    let scopes = grant_scopes(Subject::Anonymous, &[], &[s.to_string()]);
    assert!(
        scopes.is_empty(),
        "anonymous, no grants: nothing is granted"
    );
    // Arbitrary claims, validly signed: the claims parser and the checks.
    if let Ok(claims) = serde_json::from_slice::<serde_json::Value>(data) {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(keys.kid.clone());
        if let Ok(t) = jsonwebtoken::encode(&header, &claims, &keys.encoding) {
            assert_eq!(token_kid(&t).as_deref(), Ok(keys.kid.as_str()));
            for refresh in [false, true] {
                if let Ok(c) = check(&t, &keys.decoding, "cairn", refresh) {
                    assert_for_us(&c);
                    assert_eq!(c.typ.as_deref() == Some("refresh"), refresh);
                }
            }
        }
    }
});
