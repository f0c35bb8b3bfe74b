//! Released contracts: `proto/released/<MAJOR.MINOR.PATCH>.binpb`, each the encoded
//! `FileDescriptorSet` of one release, written once by [`snapshot`] and never changed.
//!
//! The current contracts are checked against the newest release only; that is enough because each
//! release was itself checked against the one before it when it was snapshotted.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use prost::Message;
use prost_types::FileDescriptorSet;

use crate::{Error, Finding, compare, compile_dir};

/// The folder under the proto root that holds the releases.
pub const DIR: &str = "released";
/// File extension of a release (buf's name for an encoded descriptor set).
pub const EXTENSION: &str = "binpb";

/// A release version, `MAJOR.MINOR.PATCH`, ordered numerically (`0.10.0` > `0.9.0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl FromStr for Version {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let invalid = || Error::Version {
            text: text.to_owned(),
        };
        let number = |part: Option<&str>| -> Result<u64, Error> {
            let part = part.ok_or_else(invalid)?;
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            part.parse().map_err(|_| invalid())
        };
        let mut parts = text.split('.');
        let version = Version {
            major: number(parts.next())?,
            minor: number(parts.next())?,
            patch: number(parts.next())?,
        };
        match parts.next() {
            Some(_) => Err(invalid()),
            None => Ok(version),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// One released contract on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub version: Version,
    pub path: PathBuf,
}

impl Release {
    /// Reads and decodes the release's descriptor set.
    pub fn load(&self) -> Result<FileDescriptorSet, Error> {
        let bytes = std::fs::read(&self.path).map_err(Error::io(&self.path))?;
        FileDescriptorSet::decode(bytes.as_slice()).map_err(|source| Error::Decode {
            path: self.path.clone(),
            source,
        })
    }
}

/// The releases folder of a proto root (`proto/` → `proto/released`).
pub fn dir(proto_root: &Path) -> PathBuf {
    proto_root.join(DIR)
}

/// Every release under `released_dir`, oldest first; none if the folder does not exist. Dotfiles
/// are ignored; any other file not named `<MAJOR.MINOR.PATCH>.binpb` is an error, so a misnamed
/// release is never silently skipped.
pub fn list(released_dir: &Path) -> Result<Vec<Release>, Error> {
    let entries = match std::fs::read_dir(released_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(released_dir)(e)),
    };
    let mut releases = Vec::new();
    for entry in entries {
        let path = entry.map_err(Error::io(released_dir))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        let version = name
            .strip_suffix(EXTENSION)
            .and_then(|stem| stem.strip_suffix('.'))
            .filter(|_| path.is_file())
            .and_then(|stem| stem.parse::<Version>().ok())
            .ok_or_else(|| Error::StrayFile { path: path.clone() })?;
        releases.push(Release { version, path });
    }
    releases.sort_by_key(|r| r.version);
    Ok(releases)
}

/// The newest release under `released_dir`, if any.
pub fn newest(released_dir: &Path) -> Result<Option<Release>, Error> {
    Ok(list(released_dir)?.pop())
}

/// The outcome of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The release compared against; `None` when nothing has been released yet.
    pub against: Option<Version>,
    /// Breaking changes; empty means the current contracts are compatible.
    pub findings: Vec<Finding>,
}

/// Compiles the contracts under `proto_root` and compares them with its newest release.
pub fn check(proto_root: &Path) -> Result<Check, Error> {
    let current = compile_dir(proto_root)?;
    let Some(release) = newest(&dir(proto_root))? else {
        return Ok(Check {
            against: None,
            findings: Vec::new(),
        });
    };
    Ok(Check {
        against: Some(release.version),
        findings: compare(&release.load()?, &current),
    })
}

/// Writes the contracts under `proto_root` as release `version` and returns the file written.
///
/// Refuses when the file exists (a release is never overwritten), when `version` is not newer
/// than the newest release, and when the contracts break the newest release (a snapshot must not
/// launder a break into the baseline).
pub fn snapshot(proto_root: &Path, version: Version) -> Result<PathBuf, Error> {
    let released = dir(proto_root);
    let path = released.join(format!("{version}.{EXTENSION}"));
    if path.exists() {
        return Err(Error::AlreadyReleased { path });
    }
    let current = compile_dir(proto_root)?;
    if let Some(newest) = newest(&released)? {
        if newest.version >= version {
            return Err(Error::NotNewer {
                version,
                newest: newest.version,
            });
        }
        let findings = compare(&newest.load()?, &current);
        if !findings.is_empty() {
            return Err(Error::Breaking {
                newest: newest.version,
                findings,
            });
        }
    }
    std::fs::create_dir_all(&released).map_err(Error::io(&released))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => Error::AlreadyReleased { path: path.clone() },
            _ => Error::io(&path)(source),
        })?;
    if let Err(source) = file
        .write_all(&current.encode_to_vec())
        .and_then(|()| file.sync_all())
    {
        drop(file);
        let _ = std::fs::remove_file(&path);
        return Err(Error::io(&path)(source));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kind;
    use crate::testdir::TestDir;

    const V1: &str = "syntax = \"proto3\";\npackage t.v1;\nmessage M { string a = 1; }\n";

    fn version(text: &str) -> Version {
        text.parse().unwrap()
    }

    #[test]
    fn versions_order_numerically_not_as_strings() {
        assert!(version("0.10.0") > version("0.9.0"));
        assert!(version("1.0.0") > version("0.99.99"));
        assert!(version("0.1.10") > version("0.1.9"));
        assert_eq!(version("01.2.3"), version("1.2.3"));
        assert_eq!(version("1.2.3").to_string(), "1.2.3");
    }

    #[test]
    fn versions_are_exactly_three_numbers() {
        for bad in [
            "", "1", "1.2", "1.2.3.4", "v1.2.3", "1.2.x", "1..3", "1.2.-3", "1.2.+3",
        ] {
            assert!(
                matches!(bad.parse::<Version>(), Err(Error::Version { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn newest_is_the_highest_version_and_a_missing_folder_has_none() {
        let dir = TestDir::new();
        assert_eq!(newest(&dir.path().join("released")).unwrap(), None);
        for v in ["0.9.0", "0.10.0", "0.2.0"] {
            dir.write(&format!("released/{v}.binpb"), "");
        }
        dir.write("released/.gitkeep", "");
        let all = list(&dir.path().join("released")).unwrap();
        let versions: Vec<_> = all.iter().map(|r| r.version.to_string()).collect();
        assert_eq!(versions, ["0.2.0", "0.9.0", "0.10.0"]);
        let newest = newest(&dir.path().join("released")).unwrap().unwrap();
        assert_eq!(newest.version, version("0.10.0"));
    }

    #[test]
    fn a_misnamed_release_is_an_error_not_skipped() {
        let dir = TestDir::new();
        dir.write("released/0.1.0.binpb", "");
        dir.write("released/latest.binpb", "");
        assert!(matches!(
            list(&dir.path().join("released")),
            Err(Error::StrayFile { .. })
        ));
    }

    #[test]
    fn snapshot_then_check_round_trips_and_never_overwrites() {
        let dir = TestDir::new();
        dir.write("t/v1/t.proto", V1);
        assert_eq!(check(dir.path()).unwrap().against, None);

        let path = snapshot(dir.path(), version("0.1.0")).unwrap();
        assert_eq!(path, dir.path().join("released/0.1.0.binpb"));
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            bytes,
            compile_dir(dir.path()).unwrap().encode_to_vec(),
            "a release is the encoded descriptor set of the current contracts"
        );
        let checked = check(dir.path()).unwrap();
        assert_eq!(checked.against, Some(version("0.1.0")));
        assert_eq!(checked.findings, []);

        assert!(matches!(
            snapshot(dir.path(), version("0.1.0")),
            Err(Error::AlreadyReleased { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        assert!(matches!(
            snapshot(dir.path(), version("0.0.9")),
            Err(Error::NotNewer { .. })
        ));
    }

    #[test]
    fn check_reports_a_break_and_snapshot_refuses_to_release_it() {
        let dir = TestDir::new();
        dir.write("t/v1/t.proto", V1);
        snapshot(dir.path(), version("0.1.0")).unwrap();
        dir.write(
            "t/v1/t.proto",
            "syntax = \"proto3\";\npackage t.v1;\nmessage M { int64 a = 1; }\n",
        );
        let checked = check(dir.path()).unwrap();
        assert_eq!(checked.findings.len(), 1);
        assert_eq!(checked.findings[0].kind, Kind::FieldTypeChanged);
        match snapshot(dir.path(), version("0.2.0")) {
            Err(Error::Breaking { newest, findings }) => {
                assert_eq!(newest, version("0.1.0"));
                assert_eq!(findings, checked.findings);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(!dir.path().join("released/0.2.0.binpb").exists());
    }

    #[test]
    fn a_corrupt_release_is_a_decode_error() {
        let dir = TestDir::new();
        dir.write("t/v1/t.proto", V1);
        dir.write("released/0.1.0.binpb", "not a descriptor set");
        assert!(matches!(check(dir.path()), Err(Error::Decode { .. })));
    }
}
