//! Multi-document YAML (a rendered overlay, a values file, the CI file) into JSON values, the
//! form the policy engine and the checks read.

use serde::Deserialize;
use serde_json::Value;

use crate::CheckError;

/// Every non-empty document of `text`, in order. `what` names the source in errors.
pub fn documents(what: &str, text: &str) -> Result<Vec<Value>, CheckError> {
    let mut out = Vec::new();
    for doc in yaml_serde::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).map_err(|source| CheckError::Yaml {
            path: what.to_owned(),
            source,
        })?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// A file of YAML documents.
pub fn read_documents(path: &std::path::Path) -> Result<Vec<Value>, CheckError> {
    let text = std::fs::read_to_string(path).map_err(|source| CheckError::Read {
        path: path.to_owned(),
        source,
    })?;
    documents(&path.display().to_string(), &text)
}

/// `Kind/name` of an object, for messages.
pub fn object_name(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj["kind"].as_str().unwrap_or("?"),
        obj["metadata"]["name"].as_str().unwrap_or("?")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_split_and_empty_ones_skipped() {
        let docs = documents("t", "a: 1\n---\n---\nb: [x, y]\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["a"], 1);
        assert_eq!(docs[1]["b"][1], "y");
    }

    #[test]
    fn invalid_yaml_names_its_source() {
        let err = documents("broken.yaml", "a: [1\n").unwrap_err().to_string();
        assert!(err.starts_with("broken.yaml: invalid YAML"), "{err}");
    }
}
