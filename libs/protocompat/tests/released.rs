//! The guard: the contracts under the workspace's `proto/` must not break the newest release in
//! `proto/released/`. If this fails, a published contract was broken: restore it, or retire the
//! element properly (reserve its number and name), or put the change in a new major package.

use std::path::Path;

use keel_protocompat::{compare, compile_dir, released};

const PROTO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");

#[test]
fn current_contracts_do_not_break_the_newest_release() {
    let proto = Path::new(PROTO);
    let newest = released::newest(&released::dir(proto))
        .unwrap()
        .expect("proto/released holds at least one release");
    let current = compile_dir(proto).unwrap();
    let findings = compare(&newest.load().unwrap(), &current);
    let listed: Vec<String> = findings.iter().map(ToString::to_string).collect();
    assert!(
        findings.is_empty(),
        "the current contracts break release {}:\n  {}",
        newest.version,
        listed.join("\n  ")
    );
}

#[test]
fn every_release_is_a_decodable_descriptor_set_of_keel_packages() {
    let releases = released::list(&released::dir(Path::new(PROTO))).unwrap();
    assert!(!releases.is_empty());
    for release in releases {
        let set = release.load().unwrap();
        assert!(
            set.file.iter().any(|f| f.package() == "keel.v1"),
            "{} holds no keel.v1 file",
            release.path.display()
        );
    }
}

#[test]
fn every_release_is_compatible_with_the_one_before() {
    let releases = released::list(&released::dir(Path::new(PROTO))).unwrap();
    for pair in releases.windows(2) {
        let findings = compare(&pair[0].load().unwrap(), &pair[1].load().unwrap());
        assert_eq!(
            findings,
            [],
            "{} breaks {}",
            pair[1].version,
            pair[0].version
        );
    }
}
