//! Media types of the manifests Cairn understands, and `Accept` negotiation.

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

/// Every manifest media type Cairn stores.
pub const MANIFEST_TYPES: [&str; 4] = [
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// Whether `media_type` lists other manifests (an index) rather than blobs.
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// The media types named in all `Accept` header lines, parameters stripped.
///
/// Clients send several `Accept` lines (one per type) or one comma-joined line;
/// both mean the same list.
pub fn accepted<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<String> {
    lines
        .flat_map(|l| l.split(','))
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|t| !t.is_empty())
        .collect()
}

/// Whether a client that sent `accept` can take a manifest of `media_type`.
///
/// A client that names no manifest type at all (no header, `*/*`,
/// `application/json`) takes whatever is stored; one that lists manifest types
/// gets only those, as distribution does for clients that predate OCI.
pub fn acceptable(accept: &[String], media_type: &str) -> bool {
    let names_manifest_types = accept.iter().any(|a| MANIFEST_TYPES.contains(&a.as_str()));
    !names_manifest_types || accept.iter().any(|a| a == media_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_accept_lines() {
        let a = accepted(
            [
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.docker.distribution.manifest.v2+json; q=0.9, */*",
            ]
            .into_iter(),
        );
        assert_eq!(a.len(), 3);
        assert!(acceptable(&a, DOCKER_MANIFEST));
        assert!(acceptable(&a, OCI_MANIFEST));
        assert!(!acceptable(&a, OCI_INDEX));
    }

    #[test]
    fn no_manifest_types_means_anything() {
        assert!(acceptable(&[], OCI_INDEX));
        assert!(acceptable(&["*/*".into()], OCI_INDEX));
    }
}
