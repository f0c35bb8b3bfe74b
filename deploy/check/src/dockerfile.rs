//! What the Dockerfile copies from the build context and which binaries it names.

use std::collections::BTreeSet;

/// The Dockerfile's logical lines: continuations (`\` at the end) joined, comments dropped.
pub fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

/// The sources of every `COPY`/`ADD` that reads the build context (not `--from=` another stage
/// or image), as written.
pub fn context_sources(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in logical_lines(text) {
        let mut words = line.split_whitespace();
        let Some(instruction) = words.next() else {
            continue;
        };
        if !matches!(instruction.to_ascii_uppercase().as_str(), "COPY" | "ADD") {
            continue;
        }
        let args: Vec<&str> = words.collect();
        if args.iter().any(|a| a.starts_with("--from=")) {
            continue;
        }
        let paths: Vec<&str> = args
            .iter()
            .copied()
            .filter(|a| !a.starts_with("--"))
            .collect();
        // The last path is the destination.
        if let Some((_, sources)) = paths.split_last() {
            out.extend(sources.iter().map(|s| (*s).to_owned()));
        }
    }
    out
}

/// The packages built (`cargo build … -p <package>`).
pub fn built_packages(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in logical_lines(text) {
        // The arguments of `cargo build`, up to the end of that command.
        let Some((_, rest)) = line.split_once("cargo build") else {
            continue;
        };
        let command = rest.split(['&', ';', '|']).next().unwrap_or_default();
        let words: Vec<&str> = command.split_whitespace().collect();
        for pair in words.windows(2) {
            if matches!(pair[0], "-p" | "--package") {
                out.insert(pair[1].to_owned());
            }
        }
    }
    out
}

/// Every binary the Dockerfile names: the words `keelctl` and `keel-…` in its instructions
/// (the install loop, `COPY --from=builder /out/<bin>`, `ENTRYPOINT`), except the package names
/// after `-p`.
pub fn named_binaries(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in logical_lines(text) {
        let upper = line.to_ascii_uppercase();
        if !["RUN", "COPY", "ENTRYPOINT", "CMD"]
            .iter()
            .any(|i| upper.starts_with(i))
        {
            continue;
        }
        let mut previous = "";
        for token in line.split_whitespace() {
            if !matches!(previous, "-p" | "--package") {
                let words =
                    token.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'));
                for word in words {
                    if word == "keelctl" || word.starts_with("keel-") {
                        out.insert(word.to_owned());
                    }
                }
            }
            previous = token;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# comment\nFROM x AS b\nCOPY . .\nCOPY --chown=1:1 a.txt b/ /dst/\n\
        RUN cargo build --release \\\n  -p keel-auth -p keel-cli \\\n && for bin in keel-auth keelctl; do \\\n\
        mkdir -p /out && install \"target/release/${bin}\" /out/; done\nFROM y\nCOPY --from=b /out/keel-auth /usr/local/bin/keel-auth\n\
        ENTRYPOINT [\"/usr/local/bin/keel-auth\"]\n";

    #[test]
    fn sources_skip_other_stages_and_the_destination() {
        assert_eq!(context_sources(SAMPLE), vec![".", "a.txt", "b/"]);
    }

    #[test]
    fn packages_and_binaries_are_told_apart() {
        assert_eq!(
            built_packages(SAMPLE),
            BTreeSet::from(["keel-auth".to_owned(), "keel-cli".to_owned()])
        );
        // keel-cli is only a package (its binary is keelctl); keel-auth is both.
        assert_eq!(
            named_binaries(SAMPLE),
            BTreeSet::from(["keel-auth".to_owned(), "keelctl".to_owned()])
        );
    }
}
