//! The current contracts, compiled with protox the way `libs/proto/build.rs` compiles them: every
//! `.proto` under the root, recursively, sorted, with the root as the one include path.
//!
//! The set holds exactly the files under the root: imports that come from elsewhere (the
//! `google.protobuf` well-known types) are left out, because fields refer to them by name and
//! they are not ours to break. Source info (comments, spans) is left out too, so a snapshot's
//! bytes change only when a contract does.

use std::path::{Path, PathBuf};

use prost_types::FileDescriptorSet;

use crate::Error;

/// Every `.proto` under `root`, recursively, sorted.
pub fn proto_files(root: &Path) -> Result<Vec<PathBuf>, Error> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
        for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
            let path = entry.map_err(Error::io(dir))?.path();
            if path.is_dir() {
                walk(&path, out)?;
            } else if path.extension().is_some_and(|e| e == "proto") {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(root, &mut files)?;
    files.sort();
    Ok(files)
}

/// Compiles every `.proto` under `root` (file names in the set are relative to `root`, e.g.
/// `keel/v1/usage.proto`).
pub fn compile_dir(root: &Path) -> Result<FileDescriptorSet, Error> {
    let files = proto_files(root)?;
    let compile_error = |source| Error::Compile {
        root: root.to_path_buf(),
        source,
    };
    let mut compiler = protox::Compiler::new([root]).map_err(compile_error)?;
    compiler
        .include_imports(false)
        .include_source_info(false)
        .open_files(&files)
        .map_err(compile_error)?;
    Ok(compiler.file_descriptor_set())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;

    #[test]
    fn collects_nested_protos_sorted_and_ignores_other_files() {
        let dir = TestDir::new();
        dir.write("b/v1/b.proto", "syntax = \"proto3\";\npackage b.v1;\n");
        dir.write("a/v1/a.proto", "syntax = \"proto3\";\npackage a.v1;\n");
        dir.write("released/0.1.0.binpb", "");
        dir.write("a/README.md", "");
        let files = proto_files(dir.path()).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.strip_prefix(dir.path()).unwrap().to_path_buf())
            .collect();
        assert_eq!(
            names,
            [PathBuf::from("a/v1/a.proto"), PathBuf::from("b/v1/b.proto")]
        );
    }

    #[test]
    fn names_files_relative_to_the_root_and_leaves_out_well_known_imports() {
        let dir = TestDir::new();
        dir.write(
            "t/v1/t.proto",
            "syntax = \"proto3\";\npackage t.v1;\nimport \"google/protobuf/timestamp.proto\";\n\
             // a comment\nmessage M { google.protobuf.Timestamp at = 1; }\n",
        );
        let set = compile_dir(dir.path()).unwrap();
        let names: Vec<_> = set.file.iter().map(|f| f.name()).collect();
        assert_eq!(names, ["t/v1/t.proto"]);
        assert!(set.file[0].source_code_info.is_none());
    }

    #[test]
    fn a_syntax_error_is_a_compile_error() {
        let dir = TestDir::new();
        dir.write("t.proto", "syntax = \"proto3\";\nmessage {");
        assert!(matches!(
            compile_dir(dir.path()),
            Err(Error::Compile { .. })
        ));
    }
}
