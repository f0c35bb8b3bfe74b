//! The breaking-change check of keel's wire contracts.
//!
//! This crate owns the rule for what counts as a breaking change to `proto/keel/**.proto`, and the
//! released contracts it is checked against (`proto/released/<MAJOR.MINOR.PATCH>.binpb`, each the
//! encoded `FileDescriptorSet` of one release).
//!
//! * [`compare`] — pure: a released descriptor set against the current one, giving one typed
//!   [`Finding`] per break (see [`Kind`] for the list). Additions, comments and reserving what was
//!   removed are not breaks; dropping a whole package `foo.vN` is allowed only once `foo.vM`
//!   (M > N) exists.
//! * [`compile`] — the current `proto/` compiled with protox (no protoc), collected the way
//!   `libs/proto/build.rs` collects it.
//! * [`released`] — the release snapshots: [`Version`] order, [`released::newest`],
//!   [`released::snapshot`] (never overwrites) and [`released::check`].
//!
//! The `keel-protocompat` binary (`snapshot <version>`, `check`) is a thin shell over these; the
//! crate's integration test runs the same check, so a broken published contract fails
//! `cargo test`.

pub mod compare;
pub mod compile;
pub mod released;

#[cfg(test)]
mod testdir;

use std::path::PathBuf;

pub use compare::{Finding, Kind, compare};
pub use compile::{compile_dir, proto_files};
pub use released::Version;

/// Everything outside [`compare`] that can fail: reading, compiling, decoding and writing
/// descriptor sets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot compile the contracts under {root}: {source}")]
    Compile {
        root: PathBuf,
        source: protox::Error,
    },
    #[error("{path} is not an encoded FileDescriptorSet: {source}")]
    Decode {
        path: PathBuf,
        source: prost::DecodeError,
    },
    #[error("{text:?} is not a release version (expected MAJOR.MINOR.PATCH, e.g. 0.1.0)")]
    Version { text: String },
    #[error("{path} is in the released contracts but is not named <MAJOR.MINOR.PATCH>.binpb")]
    StrayFile { path: PathBuf },
    #[error("{path} already exists: a released contract is never overwritten")]
    AlreadyReleased { path: PathBuf },
    #[error("version {version} is not newer than the newest release {newest}")]
    NotNewer { version: Version, newest: Version },
    #[error(
        "the current contracts break release {newest} ({} finding(s)); fix them before releasing",
        findings.len()
    )]
    Breaking {
        newest: Version,
        findings: Vec<Finding>,
    },
}

impl Error {
    fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
