//! `Range` headers of blob GETs and `Content-Range` headers of upload PATCHes
//! come straight from clients. Whatever they hold, parsing returns a range
//! inside the blob (or an error), and lengths never overflow.
#![no_main]

use cairn::domain::{ByteRange, ContentRange, RangeError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first eight bytes choose the blob size, the rest is the header.
    let (size, header) = match data {
        [a, b, c, d, e, f, g, h, rest @ ..] => {
            (u64::from_le_bytes([*a, *b, *c, *d, *e, *f, *g, *h]), rest)
        }
        _ => (0, data),
    };
    let Ok(s) = std::str::from_utf8(header) else {
        return;
    };
    for size in [size, 0, 1, 1024, u64::MAX] {
        match ByteRange::parse_request(s, size) {
            Ok(Some(r)) => {
                assert!(r.start <= r.end && r.end < size, "{s:?} {size}: {r:?}");
                assert!(r.len() <= size);
                // The header the response carries is well formed.
                let cr = format!("bytes {}-{}/{size}", r.start, r.end);
                assert!(cr.is_ascii());
            }
            Ok(None) => {}
            Err(RangeError::Malformed(h) | RangeError::Unsatisfiable(h)) => {
                assert_eq!(h, s.trim());
            }
        }
    }
    if let Ok(r) = ContentRange::parse(s) {
        assert!(r.start <= r.end && r.end < u64::MAX, "{s:?}: {r:?}");
        assert_eq!(r.len(), r.end - r.start + 1);
        // What the registry writes back parses to the same range.
        assert_eq!(
            ContentRange::parse(&format!("{}-{}", r.start, r.end)),
            Ok(r)
        );
    }
});
