//! Byte ranges: the `Range` request header of blob GETs and the `Content-Range`
//! header of chunked upload PATCHes.

/// Why a range header could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("range header {0:?} is malformed")]
    Malformed(String),
    #[error("range {0:?} cannot be satisfied")]
    Unsatisfiable(String),
}

/// An inclusive byte range `[start, end]` resolved against a known length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Parses a `Range: bytes=…` request header against a blob of `size` bytes.
    ///
    /// Returns `Ok(None)` for a header this server does not honour (several ranges,
    /// another unit): RFC 9110 lets a server ignore those and send the whole blob.
    pub fn parse_request(header: &str, size: u64) -> Result<Option<ByteRange>, RangeError> {
        let header = header.trim();
        let Some(spec) = header.strip_prefix("bytes=") else {
            return Ok(None);
        };
        if spec.contains(',') {
            return Ok(None);
        }
        let (a, b) = spec
            .trim()
            .split_once('-')
            .ok_or_else(|| RangeError::Malformed(header.to_string()))?;
        let num = |s: &str| -> Result<u64, RangeError> {
            if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
                return Err(RangeError::Malformed(header.to_string()));
            }
            s.parse()
                .map_err(|_| RangeError::Malformed(header.to_string()))
        };
        let unsat = || RangeError::Unsatisfiable(header.to_string());
        let (a, b) = (a.trim(), b.trim());
        if a.is_empty() {
            // Suffix range: the last n bytes.
            let n = num(b)?;
            if n == 0 || size == 0 {
                return Err(unsat());
            }
            let n = n.min(size);
            return Ok(Some(ByteRange {
                start: size - n,
                end: size - 1,
            }));
        }
        let start = num(a)?;
        let end = if b.is_empty() { u64::MAX } else { num(b)? };
        if end < start {
            return Err(RangeError::Malformed(header.to_string()));
        }
        if start >= size {
            return Err(unsat());
        }
        Ok(Some(ByteRange {
            start,
            end: end.min(size - 1),
        }))
    }
}

/// The `Content-Range` of an upload chunk: `<start>-<end>` inclusive.
///
/// Clients disagree on the form: the spec writes `0-1023`, some send
/// `bytes=0-1023` or `bytes 0-1023/*`; all are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub start: u64,
    pub end: u64,
}

impl ContentRange {
    pub fn parse(header: &str) -> Result<ContentRange, RangeError> {
        let bad = || RangeError::Malformed(header.to_string());
        let mut s = header.trim();
        if let Some(rest) = s.strip_prefix("bytes") {
            s = rest.trim_start_matches(['=', ' ']);
        }
        let s = s.split_once('/').map_or(s, |(r, _total)| r).trim();
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let num = |x: &str| -> Result<u64, RangeError> {
            if x.is_empty() || !x.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            x.parse().map_err(|_| bad())
        };
        let (start, end) = (num(a)?, num(b)?);
        // `end` is inclusive: u64::MAX would make the length overflow.
        if end < start || end == u64::MAX {
            return Err(bad());
        }
        Ok(ContentRange { start, end })
    }

    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_ranges() {
        let r = |h| ByteRange::parse_request(h, 100);
        assert_eq!(r("bytes=0-9"), Ok(Some(ByteRange { start: 0, end: 9 })));
        assert_eq!(r("bytes=90-"), Ok(Some(ByteRange { start: 90, end: 99 })));
        assert_eq!(r("bytes=-10"), Ok(Some(ByteRange { start: 90, end: 99 })));
        assert_eq!(
            r("bytes=50-500"),
            Ok(Some(ByteRange { start: 50, end: 99 }))
        );
        assert_eq!(r("bytes=-500"), Ok(Some(ByteRange { start: 0, end: 99 })));
        assert!(matches!(r("bytes=100-"), Err(RangeError::Unsatisfiable(_))));
        assert!(matches!(r("bytes=-0"), Err(RangeError::Unsatisfiable(_))));
        assert!(matches!(r("bytes=9-1"), Err(RangeError::Malformed(_))));
        assert!(matches!(r("bytes=x-1"), Err(RangeError::Malformed(_))));
        assert_eq!(r("bytes=0-1,5-6"), Ok(None));
        assert_eq!(r("items=0-1"), Ok(None));
    }

    #[test]
    fn content_ranges_in_every_client_form() {
        for h in [
            "0-1023",
            "bytes=0-1023",
            "bytes 0-1023/*",
            "bytes 0-1023/1024",
        ] {
            assert_eq!(
                ContentRange::parse(h),
                Ok(ContentRange {
                    start: 0,
                    end: 1023
                }),
                "{h}"
            );
        }
        assert!(ContentRange::parse("5-1").is_err());
        assert!(ContentRange::parse("-1").is_err());
        assert!(ContentRange::parse("a-b").is_err());
        assert!(ContentRange::parse("0-18446744073709551615").is_err());
    }

    proptest! {
        #[test]
        fn request_ranges_stay_inside_the_blob(h in ".*", size in 0u64..10_000) {
            if let Ok(Some(r)) = ByteRange::parse_request(&h, size) {
                prop_assert!(r.start <= r.end && r.end < size);
            }
        }

        #[test]
        fn content_range_round_trips(a in 0u64..1<<40, len in 1u64..1<<30) {
            let h = format!("{}-{}", a, a + len - 1);
            let r = ContentRange::parse(&h).unwrap();
            prop_assert_eq!(r.len(), len);
        }

        #[test]
        fn content_range_never_panics(h in ".*") { let _ = ContentRange::parse(&h); }
    }
}
