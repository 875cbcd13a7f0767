//! Paths, digests, names, tags, upload session ids and range headers come
//! straight from requests.
#![no_main]

use cairn::api::routes::Route;
use cairn::domain::{ByteRange, ContentRange, Digest, Reference, RepoName, SessionId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = Route::parse(s);
    if let Ok(d) = s.parse::<Digest>() {
        assert_eq!(d.as_str(), s);
    }
    if let Ok(n) = s.parse::<RepoName>() {
        assert_eq!(n.as_str(), s);
    }
    let _ = s.parse::<Reference>();
    if let Some(id) = SessionId::parse(s) {
        assert_eq!(id.to_string(), s);
        let _ = id.belongs_to(s);
    }
    if let Ok(r) = ContentRange::parse(s) {
        assert!(r.start <= r.end);
    }
    for size in [0u64, 1, 100, u64::MAX] {
        if let Ok(Some(r)) = ByteRange::parse_request(s, size) {
            assert!(r.start <= r.end && r.end < size);
        }
    }
});
