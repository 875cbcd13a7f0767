//! Parsing and validating pushed manifests.
//!
//! Cairn never re-serialises a manifest: the bytes a client pushed are the bytes
//! every client pulls (their digest is the identity). This module only reads
//! what the registry must know (media type, what the manifest references, its
//! subject, its artifact type) and rejects documents that are not manifests.
//! The structs are deliberately lenient about unknown fields, since the image spec
//! requires consumers to ignore them.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::digest::Digest;
use super::media;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("manifest schemaVersion must be 2")]
    SchemaVersion,
    #[error("manifest media type {0:?} is not supported; push an OCI image manifest or index, or a Docker schema 2 manifest or manifest list")]
    UnsupportedMediaType(String),
    #[error("manifest mediaType field {field:?} does not match the Content-Type {header:?}")]
    MediaTypeMismatch { field: String, header: String },
    #[error("manifest has no mediaType field and no Content-Type header")]
    NoMediaType,
    #[error("{0}")]
    Invalid(String),
}

/// A descriptor as it appears in a manifest.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RawDescriptor {
    pub media_type: Option<String>,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub urls: Option<Vec<String>>,
    #[serde(default)]
    pub artifact_type: Option<String>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub platform: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
    subject: Option<RawDescriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

/// A validated descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    /// Non-distributable layers carry URLs and need not be in the registry.
    pub has_urls: bool,
    /// A BuildKit attestation manifest inside an index
    /// (`vnd.docker.reference.type: attestation-manifest`).
    pub attestation: bool,
}

/// What the registry needs to know about a pushed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedManifest {
    pub media_type: String,
    /// `artifactType`, or for image manifests without one the config media type,
    /// as the referrers API reports it.
    pub artifact_type: Option<String>,
    pub config: Option<Descriptor>,
    /// Blob references (layers, or blobs of an artifact manifest).
    pub layers: Vec<Descriptor>,
    /// Child manifests of an index.
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub annotations: BTreeMap<String, String>,
}

impl ParsedManifest {
    /// Every blob this manifest needs in the repository.
    pub fn blob_refs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(self.layers.iter())
    }
}

fn descriptor(raw: &RawDescriptor, what: &str) -> Result<Descriptor, ManifestError> {
    let digest: Digest = raw
        .digest
        .parse()
        .map_err(|e| ManifestError::Invalid(format!("{what}: {e}")))?;
    if raw.size < 0 {
        return Err(ManifestError::Invalid(format!(
            "{what} {digest}: size must not be negative"
        )));
    }
    let media_type = raw.media_type.clone().unwrap_or_default();
    if media_type.is_empty() {
        return Err(ManifestError::Invalid(format!(
            "{what} {digest}: mediaType is required"
        )));
    }
    Ok(Descriptor {
        media_type,
        digest,
        size: raw.size as u64,
        has_urls: raw.urls.as_ref().is_some_and(|u| !u.is_empty()),
        attestation: raw
            .annotations
            .as_ref()
            .and_then(|a| a.get("vnd.docker.reference.type"))
            .is_some_and(|t| t == "attestation-manifest"),
    })
}

/// Parses `bytes` pushed with `content_type` (the request's `Content-Type`).
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<ParsedManifest, ManifestError> {
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
    let header = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim().to_string())
        .filter(|c| !c.is_empty());
    let media_type = match (&raw.media_type, &header) {
        (Some(f), Some(h)) if f != h && media::MANIFEST_TYPES.contains(&h.as_str()) => {
            return Err(ManifestError::MediaTypeMismatch {
                field: f.clone(),
                header: h.clone(),
            })
        }
        (Some(f), _) => f.clone(),
        (None, Some(h)) => h.clone(),
        (None, None) => return Err(ManifestError::NoMediaType),
    };
    if !media::MANIFEST_TYPES.contains(&media_type.as_str()) {
        return Err(ManifestError::UnsupportedMediaType(media_type));
    }
    if raw.schema_version != Some(2) {
        return Err(ManifestError::SchemaVersion);
    }
    let subject = raw
        .subject
        .as_ref()
        .map(|s| descriptor(s, "subject"))
        .transpose()?;
    let annotations = raw.annotations.unwrap_or_default();

    if media::is_index(&media_type) {
        if raw.config.is_some() || raw.layers.is_some() {
            return Err(ManifestError::Invalid(
                "an index lists manifests; it must not have config or layers".into(),
            ));
        }
        let manifests = raw
            .manifests
            .as_deref()
            .ok_or_else(|| ManifestError::Invalid("index has no manifests field".into()))?
            .iter()
            .map(|d| descriptor(d, "manifest"))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(ParsedManifest {
            media_type,
            artifact_type: raw.artifact_type,
            config: None,
            layers: vec![],
            manifests,
            subject,
            annotations,
        });
    }

    if raw.manifests.is_some() {
        return Err(ManifestError::Invalid(
            "an image manifest must not have a manifests field".into(),
        ));
    }
    let config = descriptor(
        raw.config
            .as_ref()
            .ok_or_else(|| ManifestError::Invalid("manifest has no config descriptor".into()))?,
        "config",
    )?;
    let layers = raw
        .layers
        .as_deref()
        .ok_or_else(|| ManifestError::Invalid("manifest has no layers field".into()))?
        .iter()
        .map(|d| descriptor(d, "layer"))
        .collect::<Result<Vec<_>, _>>()?;
    if media_type == media::DOCKER_MANIFEST && layers.is_empty() {
        return Err(ManifestError::Invalid(
            "a Docker schema 2 manifest needs at least one layer".into(),
        ));
    }
    let artifact_type = raw
        .artifact_type
        .clone()
        .or_else(|| Some(config.media_type.clone()));
    if raw.artifact_type.is_some() && raw.artifact_type.as_deref() == Some("") {
        return Err(ManifestError::Invalid(
            "artifactType must not be empty".into(),
        ));
    }
    Ok(ParsedManifest {
        media_type,
        artifact_type,
        config: Some(config),
        layers,
        manifests: vec![],
        subject,
        annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":3}}]{extra}}}"#,
            media::OCI_MANIFEST,
            d('a'),
            d('b')
        )
    }

    #[test]
    fn parses_an_image_manifest() {
        let m = parse(image("").as_bytes(), Some(media::OCI_MANIFEST)).unwrap();
        assert_eq!(m.media_type, media::OCI_MANIFEST);
        assert_eq!(m.blob_refs().count(), 2);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn reads_subject_and_artifact_type() {
        let extra = format!(
            r#","artifactType":"application/x-sbom","subject":{{"mediaType":"{}","digest":"{}","size":9}}"#,
            media::OCI_MANIFEST,
            d('c')
        );
        let m = parse(image(&extra).as_bytes(), None).unwrap();
        assert_eq!(m.artifact_type.as_deref(), Some("application/x-sbom"));
        assert_eq!(m.subject.unwrap().digest, d('c').parse().unwrap());
    }

    #[test]
    fn rejects_what_is_not_a_manifest() {
        assert!(matches!(parse(b"{", None), Err(ManifestError::Json(_))));
        assert!(matches!(
            parse(image("").as_bytes(), Some(media::OCI_INDEX)),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        let v1 = image("").replace("\"schemaVersion\":2", "\"schemaVersion\":1");
        assert_eq!(
            parse(v1.as_bytes(), None),
            Err(ManifestError::SchemaVersion)
        );
        let bad = image("").replace(&d('b'), "sha256:nothex");
        assert!(matches!(
            parse(bad.as_bytes(), None),
            Err(ManifestError::Invalid(_))
        ));
        assert!(matches!(
            parse(br#"{"schemaVersion":2}"#, Some("text/plain")),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn parses_an_index() {
        let idx = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","digest":"{}","size":5,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            media::OCI_INDEX,
            media::OCI_MANIFEST,
            d('e')
        );
        let m = parse(idx.as_bytes(), None).unwrap();
        assert_eq!(m.manifests.len(), 1);
        assert!(m.config.is_none());
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&b, Some(media::OCI_MANIFEST));
        }

        #[test]
        fn never_panics_on_arbitrary_json(s in "\\{\"schemaVersion\":2(,\"[a-zA-Z]{1,12}\":(\"[a-z:0-9./+-]{0,70}\"|[0-9]{1,3}|\\[\\]|\\{\\}))*\\}") {
            let _ = parse(s.as_bytes(), Some(media::OCI_MANIFEST));
        }
    }
}
