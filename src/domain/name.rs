//! Repository names, tags and references, with the grammar of the distribution spec.

use std::fmt;
use std::str::FromStr;

use super::digest::{Digest, DigestError};

/// Longest repository name accepted (distribution's limit, so names that work here
/// work everywhere).
pub const MAX_NAME_LEN: usize = 255;
/// Longest tag the spec allows.
pub const MAX_TAG_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("repository name {0:?} is invalid: use lowercase path components of [a-z0-9] separated by '.', '_', '__' or '-', joined by '/'")]
    InvalidName(String),
    #[error("repository name is longer than {MAX_NAME_LEN} characters")]
    NameTooLong,
    #[error("tag {0:?} is invalid: up to 128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'")]
    InvalidTag(String),
    #[error(transparent)]
    Digest(#[from] DigestError),
}

/// A repository name such as `team/app/api`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl FromStr for RepoName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::NameTooLong);
        }
        if s.split('/').all(valid_component) {
            Ok(RepoName(s.to_string()))
        } else {
            Err(NameError::InvalidName(s.to_string()))
        }
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tag such as `v1.4.2`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_TAG_LEN
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter()
                .all(|&x| x.is_ascii_alphanumeric() || x == b'_' || x == b'.' || x == b'-');
        if ok {
            Ok(Tag(s.to_string()))
        } else {
            Err(NameError::InvalidTag(s.to_string()))
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `<reference>` of a manifest URL: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl FromStr for Reference {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(s.parse()?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_spec_names() {
        for n in [
            "a",
            "library/alpine",
            "team/app/api",
            "a.b_c__d---e/f0",
            "x1/y2/z3/w4",
        ] {
            assert!(n.parse::<RepoName>().is_ok(), "{n}");
        }
    }

    #[test]
    fn rejects_bad_names() {
        for n in [
            "", "A", "a//b", "/a", "a/", "a..b", "a___b", "-a", "a-", "a.-b", "a b", "a/.b",
        ] {
            assert!(n.parse::<RepoName>().is_err(), "{n}");
        }
        assert_eq!(
            "a".repeat(256).parse::<RepoName>(),
            Err(NameError::NameTooLong)
        );
    }

    #[test]
    fn tags_follow_the_grammar() {
        assert!("v1.4.2".parse::<Tag>().is_ok());
        assert!("_x".parse::<Tag>().is_ok());
        assert!("A".repeat(128).parse::<Tag>().is_ok());
        assert!("A".repeat(129).parse::<Tag>().is_err());
        assert!(".x".parse::<Tag>().is_err());
        assert!("-x".parse::<Tag>().is_err());
        assert!("x/y".parse::<Tag>().is_err());
        assert!("".parse::<Tag>().is_err());
    }

    #[test]
    fn references_are_tags_or_digests() {
        assert!(matches!("latest".parse(), Ok(Reference::Tag(_))));
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(matches!(d.parse(), Ok(Reference::Digest(_))));
        assert!("sha256:xyz".parse::<Reference>().is_err());
    }

    proptest! {
        #[test]
        fn name_parser_never_panics(s in ".*") { let _ = s.parse::<RepoName>(); }

        #[test]
        fn generated_names_parse(s in "[a-z0-9]{1,8}((\\.|_|__|-{1,3})[a-z0-9]{1,8}){0,3}(/[a-z0-9]{1,8}((\\.|_|__|-{1,3})[a-z0-9]{1,8}){0,3}){0,3}") {
            prop_assert!(s.len() <= MAX_NAME_LEN);
            prop_assert!(s.parse::<RepoName>().is_ok());
        }

        #[test]
        fn generated_tags_parse(s in "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}") {
            prop_assert!(s.parse::<Tag>().is_ok());
        }

        #[test]
        fn names_with_uppercase_fail(s in "[a-z]{1,5}[A-Z][a-z]{0,5}") {
            prop_assert!(s.parse::<RepoName>().is_err());
        }
    }
}
