//! Just enough YAML writing for the rule files: double-quoted scalars and literal blocks.

/// A double-quoted scalar. JSON's string escapes are a subset of YAML's.
pub fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// `key: |-` followed by `text`, every line indented by `indent` spaces.
pub fn block(key: &str, text: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = format!("{key}: |-\n");
    for line in text.lines() {
        if !line.is_empty() {
            out.push_str(&pad);
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_blocks() {
        assert_eq!(quoted(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        assert_eq!(block("expr", "a\nb", 4), "expr: |-\n    a\n    b\n");
    }
}
