//! Manifest bodies are untrusted bytes: parsing must never panic, and whatever it
//! accepts must carry valid digests.
#![no_main]

use cairn::domain::{manifest, media};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for ct in [None, Some(media::OCI_MANIFEST), Some(media::OCI_INDEX), Some(media::DOCKER_MANIFEST)] {
        if let Ok(m) = manifest::parse(data, ct) {
            assert!(media::MANIFEST_TYPES.contains(&m.media_type.as_str()));
            for d in m.blob_refs().chain(m.manifests.iter()) {
                assert_eq!(d.digest.as_str().parse::<cairn::domain::Digest>().ok(), Some(d.digest.clone()));
            }
        }
    }
});
