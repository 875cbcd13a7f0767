//! Provenance documents arrive from CI and inside pushed attestations: parsing
//! them must never panic, and what it accepts must name its subjects.
#![no_main]

use cairn::domain::provenance;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(statements) = provenance::parse_document(data) {
        assert!(statements.len() <= provenance::MAX_STATEMENTS);
        for s in &statements {
            assert!(!s.subjects.is_empty());
            for subject in &s.subjects {
                for (alg, hex) in &subject.digests {
                    if !alg.contains(':') && !alg.is_empty() && !hex.is_empty() {
                        assert!(s.names_digest(&format!("{alg}:{hex}")));
                    }
                }
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let labels = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let _ = provenance::label_facts(&labels);
    }
});
