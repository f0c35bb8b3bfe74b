//! The GitLab pipeline (`.gitlab-ci.yml`) as the delivery checks read it: its stages, its jobs
//! with `extends:` merged the way GitLab merges them, the shell commands each job runs, the
//! stage order of `needs:`, and a scanner for secret literals anywhere in the file.
//!
//! Not modelled: `include:`, `!reference` tags, and what a job inherits from `default:` (image,
//! `before_script`, …): the checks read what the jobs themselves declare.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::CheckError;

/// Top-level keywords that are not jobs.
pub const GLOBAL_KEYWORDS: &[&str] = &[
    "after_script",
    "before_script",
    "cache",
    "default",
    "image",
    "include",
    "services",
    "spec",
    "stages",
    "variables",
    "workflow",
];

/// GitLab's limit on `extends:` nesting.
const MAX_EXTENDS_DEPTH: usize = 11;

/// A parsed pipeline file.
#[derive(Debug)]
pub struct Pipeline {
    /// `stages:`, in order.
    pub stages: Vec<String>,
    /// Every job (hidden `.templates` excluded), with its `extends:` merged in.
    pub jobs: BTreeMap<String, Value>,
    /// The whole file as parsed, templates included (what the secret scanner reads).
    pub document: Value,
}

fn invalid(what: &str, msg: impl Into<String>) -> CheckError {
    CheckError::Pipeline {
        what: what.to_owned(),
        msg: msg.into(),
    }
}

impl Pipeline {
    /// Parses the file's text; `what` names it in errors.
    pub fn parse(what: &str, text: &str) -> Result<Pipeline, CheckError> {
        let mut docs = crate::yaml::documents(what, text)?;
        if docs.len() != 1 {
            return Err(invalid(
                what,
                format!("expected one YAML document, found {}", docs.len()),
            ));
        }
        let document = docs.remove(0);
        let root = document
            .as_object()
            .ok_or_else(|| invalid(what, "the top level is not a mapping"))?;
        let stages = match root.get("stages") {
            None => ["build", "test", "deploy"].map(str::to_owned).to_vec(),
            Some(v) => v
                .as_array()
                .ok_or_else(|| invalid(what, "`stages` is not a list"))?
                .iter()
                .map(|s| {
                    s.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| invalid(what, "a stage is not a string"))
                })
                .collect::<Result<_, _>>()?,
        };
        let mut jobs = BTreeMap::new();
        for (name, value) in root {
            if name.starts_with('.') || GLOBAL_KEYWORDS.contains(&name.as_str()) {
                continue;
            }
            if !value.is_object() {
                return Err(invalid(what, format!("job {name} is not a mapping")));
            }
            let job = resolve(root, name, 0).map_err(|msg| invalid(what, msg))?;
            jobs.insert(name.clone(), job);
        }
        Ok(Pipeline {
            stages,
            jobs,
            document,
        })
    }

    /// A job by name.
    pub fn job(&self, name: &str) -> Option<&Value> {
        self.jobs.get(name)
    }

    /// The job's stage (GitLab's default is `test`).
    pub fn stage_of<'a>(&self, job: &'a Value) -> &'a str {
        job["stage"].as_str().unwrap_or("test")
    }

    /// Position of a stage in `stages:`.
    pub fn stage_index(&self, stage: &str) -> Option<usize> {
        self.stages.iter().position(|s| s == stage)
    }

    /// The names of the jobs in `stage`.
    pub fn jobs_in(&self, stage: &str) -> Vec<&str> {
        self.jobs
            .iter()
            .filter(|(_, job)| self.stage_of(job) == stage)
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// What is wrong with the stage order: jobs in undeclared stages, `needs:` naming a job that
    /// does not exist (or a hidden template), or a job of a later stage.
    pub fn ordering_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, job) in &self.jobs {
            let stage = self.stage_of(job);
            let Some(at) = self.stage_index(stage) else {
                out.push(format!("job {name} runs in the undeclared stage {stage}"));
                continue;
            };
            for need in needs(job).unwrap_or_default() {
                match self.jobs.get(&need) {
                    None => out.push(format!("job {name} needs the unknown job {need}")),
                    Some(needed) => {
                        let needed_stage = self.stage_of(needed);
                        match self.stage_index(needed_stage) {
                            Some(n) if n <= at => {}
                            _ => out.push(format!(
                                "job {name} (stage {stage}) needs {need} of the later stage {needed_stage}"
                            )),
                        }
                    }
                }
            }
        }
        out
    }
}

/// A job with its `extends:` chain merged in: parents first (in order), the job's own keys last;
/// mappings merge key by key, everything else (lists included) is replaced.
fn resolve(root: &Map<String, Value>, name: &str, depth: usize) -> Result<Value, String> {
    if depth > MAX_EXTENDS_DEPTH {
        return Err(format!(
            "`extends` nests deeper than {MAX_EXTENDS_DEPTH} at {name}"
        ));
    }
    let job = root
        .get(name)
        .and_then(Value::as_object)
        .ok_or_else(|| format!("`extends` names {name}, which is not a mapping in the file"))?;
    let parents: Vec<&str> = match job.get("extends") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| format!("{name}: `extends` entry is not a string"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(format!("{name}: `extends` is neither a string nor a list")),
    };
    let mut merged = Value::Object(Map::new());
    for parent in parents {
        deep_merge(&mut merged, resolve(root, parent, depth + 1)?);
    }
    let mut own = job.clone();
    own.remove("extends");
    deep_merge(&mut merged, Value::Object(own));
    Ok(merged)
}

fn deep_merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        deep_merge(existing, value);
                    }
                    _ => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

/// The job names a job's `needs:` lists (`None` without the keyword; entries naming another
/// project's or pipeline's jobs are left out).
pub fn needs(job: &Value) -> Option<Vec<String>> {
    let list = job.get("needs")?.as_array()?;
    Some(
        list.iter()
            .filter_map(|n| n.as_str().or_else(|| n["job"].as_str()))
            .map(str::to_owned)
            .collect(),
    )
}

fn flatten_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|i| flatten_strings(i, out)),
        _ => {}
    }
}

/// Whitespace runs collapsed to one space, ends trimmed.
pub fn normalize(command: &str) -> String {
    command.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The shell lines a job runs (`before_script`, then `script`): continuation lines joined,
/// whitespace collapsed, blank lines and comments dropped.
pub fn commands(job: &Value) -> Vec<String> {
    let mut entries = Vec::new();
    flatten_strings(&job["before_script"], &mut entries);
    flatten_strings(&job["script"], &mut entries);
    let mut out = Vec::new();
    for entry in entries {
        let joined = entry.replace("\\\n", " ");
        for line in joined.lines() {
            let line = normalize(line);
            if !line.is_empty() && !line.starts_with('#') {
                out.push(line);
            }
        }
    }
    out
}

/// Whether one of the job's command lines contains every one of `needles` (each compared with
/// its whitespace collapsed).
pub fn runs(job: &Value, needles: &[&str]) -> bool {
    let needles: Vec<String> = needles.iter().map(|n| normalize(n)).collect();
    commands(job)
        .iter()
        .any(|line| needles.iter().all(|n| line.contains(n.as_str())))
}

/// Whether the job only ever starts by hand: `when: manual`, or every rule that can add it
/// (not `when: never`) says `when: manual`.
pub fn is_manual(job: &Value) -> bool {
    if job["when"] == "manual" {
        return true;
    }
    let Some(rules) = job["rules"].as_array() else {
        return false;
    };
    let adding: Vec<&Value> = rules.iter().filter(|r| r["when"] != "never").collect();
    !adding.is_empty() && adding.iter().all(|r| r["when"] == "manual")
}

/// The `if:` expressions of the rules that can add the job (not `when: never`).
pub fn rule_conditions(job: &Value) -> Vec<String> {
    job["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["when"] != "never")
        .map(|r| normalize(r["if"].as_str().unwrap_or("")))
        .collect()
}

/// The Dockerfile's `cargo build …` command (up to the end of that command in its `RUN`),
/// whitespace collapsed.
pub fn dockerfile_cargo_build(dockerfile: &str) -> Option<String> {
    crate::dockerfile::logical_lines(dockerfile)
        .iter()
        .find_map(|line| {
            let at = line.find("cargo build")?;
            let command = line[at..].split(['&', ';', '|']).next()?;
            Some(normalize(command))
        })
}

/// One secret literal the scanner found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFinding {
    /// Where in the document (`images.script[2]`, `variables.API_TOKEN`).
    pub at: String,
    /// Which rule: `private-key`, `aws-access-key`, `platform-token`, `jwt`, `url-credentials`,
    /// `secret-assignment`, `secret-flag`, `secret-variable`.
    pub rule: &'static str,
}

/// Every secret literal in a parsed pipeline document: every string value is scanned (jobs,
/// hidden templates, `variables:` blocks, services, rules), and every variable (in any
/// `variables:` block or `parallel: matrix` entry) whose name looks secret must be a `$`
/// reference.
pub fn secret_literals(document: &Value) -> Vec<SecretFinding> {
    let mut out = Vec::new();
    walk(document, "", &mut out);
    out
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn walk(value: &Value, path: &str, out: &mut Vec<SecretFinding>) {
    match value {
        Value::String(s) => {
            for rule in scan_text(s) {
                out.push(SecretFinding {
                    at: path.to_owned(),
                    rule,
                });
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let at = child(path, key);
                if key == "variables" {
                    check_variables(item, &at, out);
                } else if key == "matrix" {
                    for (i, entry) in item.as_array().into_iter().flatten().enumerate() {
                        check_variables(entry, &format!("{at}[{i}]"), out);
                    }
                }
                walk(item, &at, out);
            }
        }
        _ => {}
    }
}

/// A `variables:` block (or a matrix entry): a secret-looking name must hold a reference.
fn check_variables(block: &Value, path: &str, out: &mut Vec<SecretFinding>) {
    let Some(map) = block.as_object() else {
        return;
    };
    for (name, value) in map {
        if !secret_name(name, &['_']) {
            continue;
        }
        // `NAME: value`, `NAME: {value: …, description: …}`, or a matrix's list of values.
        let values: Vec<&Value> = match value {
            Value::Object(o) => o.get("value").into_iter().collect(),
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        for v in values {
            let literal = match v {
                Value::String(s) => literal_value(s),
                Value::Number(_) | Value::Bool(_) | Value::Null => false,
                _ => true,
            };
            if literal {
                out.push(SecretFinding {
                    at: child(path, name),
                    rule: "secret-variable",
                });
            }
        }
    }
}

/// Name parts (split on `separators`) that mark a secret.
const SECRET_WORDS: &[&str] = &[
    "PASSWORD",
    "PASSWD",
    "PASS",
    "PWD",
    "SECRET",
    "SECRETS",
    "TOKEN",
    "KEY",
    "APIKEY",
    "CREDENTIAL",
    "CREDENTIALS",
];

/// Whether a name looks like it holds a secret: one of its parts is a secret word, or ends in
/// PASSWORD, SECRET or TOKEN (`DBPASSWORD`, `ACCESSTOKEN`).
pub fn secret_name(name: &str, separators: &[char]) -> bool {
    name.split(separators).any(|part| {
        let part = part.to_ascii_uppercase();
        SECRET_WORDS.contains(&part.as_str())
            || ["PASSWORD", "SECRET", "TOKEN"]
                .iter()
                .any(|w| part.len() > w.len() && part.ends_with(w))
    })
}

/// Whether an assigned value is a literal: not empty, not a `$` reference (`$X`, `${X}`,
/// `$(command)`, quoted or not), not a number, boolean or duration.
fn literal_value(raw: &str) -> bool {
    let v = raw.trim().trim_start_matches(['"', '\'']);
    let v = v.trim_end_matches(['"', '\'']);
    if v.is_empty() || v.starts_with('$') {
        return false;
    }
    if matches!(v, "true" | "false") {
        return false;
    }
    let digits = v.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &v[digits.len()..];
    if !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && matches!(unit, "" | "ms" | "s" | "m" | "h" | "d")
    {
        return false;
    }
    true
}

/// The value after an `=` at `at`: up to whitespace or a shell separator, quotes kept (so a
/// quoted reference stays recognisable).
fn value_after(text: &str, at: usize) -> &str {
    let rest = &text[at + 1..];
    let end = rest
        .find(|c: char| c.is_whitespace() || matches!(c, ';' | '&' | '|' | ')'))
        .unwrap_or(rest.len());
    &rest[..end]
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The rules a piece of text breaks (each at most once).
pub fn scan_text(text: &str) -> Vec<&'static str> {
    let mut rules = Vec::new();
    let mut hit = |rule: &'static str| {
        if !rules.contains(&rule) {
            rules.push(rule);
        }
    };
    if text.contains("-----BEGIN") {
        hit("private-key");
    }
    if has_aws_key(text) {
        hit("aws-access-key");
    }
    if has_platform_token(text) {
        hit("platform-token");
    }
    if has_jwt(text) {
        hit("jwt");
    }
    if has_url_credentials(text) {
        hit("url-credentials");
    }
    if has_secret_assignment(text) {
        hit("secret-assignment");
    }
    if has_secret_flag(text) {
        hit("secret-flag");
    }
    rules
}

/// `AKIA`/`ASIA` and 16 more upper-case letters or digits: an AWS access key ID.
fn has_aws_key(text: &str) -> bool {
    let bytes = text.as_bytes();
    ["AKIA", "ASIA"].iter().any(|prefix| {
        text.match_indices(prefix).any(|(at, _)| {
            let tail = &bytes[at + 4..];
            tail.len() >= 16
                && tail[..16]
                    .iter()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        })
    })
}

/// GitLab and GitHub token prefixes followed by at least 20 token characters.
fn has_platform_token(text: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "glpat-",
        "gldt-",
        "glrt-",
        "glptt-",
        "glcbt-",
        "gloas-",
        "GR1348941",
        "ghp_",
        "gho_",
        "ghs_",
        "github_pat_",
        "xoxb-",
        "xoxp-",
    ];
    PREFIXES.iter().any(|prefix| {
        text.match_indices(prefix).any(|(at, _)| {
            text[at + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .count()
                >= 20
        })
    })
}

/// `eyJ….eyJ…`: a JSON Web Token (a base64url JSON header, a dot, a base64url JSON payload).
fn has_jwt(text: &str) -> bool {
    let b64 = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    text.match_indices("eyJ").any(|(at, _)| {
        let rest = &text[at..];
        let header = rest.chars().take_while(|c| b64(*c)).count();
        header >= 10
            && rest[header..]
                .strip_prefix('.')
                .is_some_and(|payload| payload.starts_with("eyJ"))
    })
}

/// `scheme://user:password@host` with a password that is not a `$` reference.
fn has_url_credentials(text: &str) -> bool {
    text.match_indices("://").any(|(at, _)| {
        let rest = &text[at + 3..];
        let authority_end = rest
            .find(|c: char| c == '/' || c.is_whitespace() || matches!(c, '"' | '\'' | '?' | '#'))
            .unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let Some((userinfo, _)) = authority.rsplit_once('@') else {
            return false;
        };
        userinfo
            .split_once(':')
            .is_some_and(|(_, password)| literal_value(password))
    })
}

/// A literal assigned to something secret: a shell variable (`API_TOKEN=abc`), a key in a
/// query or connection string (`password=abc`, `secret=…`), or a key of
/// `--from-literal=<key>=<value>`.
fn has_secret_assignment(text: &str) -> bool {
    for (at, _) in text.match_indices('=') {
        let before = &text[..at];
        // `==`, `!=`, `<=`, `>=` are comparisons.
        if before.ends_with(['=', '!', '<', '>']) || text[at + 1..].starts_with('=') {
            continue;
        }
        let value = value_after(text, at);
        if !literal_value(value) {
            continue;
        }
        // The word right before `=` (letters, digits, `_`).
        let word_start = before
            .char_indices()
            .rev()
            .take_while(|(_, c)| is_word_char(*c))
            .last()
            .map_or(at, |(i, _)| i);
        let word = &before[word_start..];
        if word.is_empty() {
            continue;
        }
        let boundary = before[..word_start].chars().next_back();
        // A shell assignment: the word starts a command (or follows `export`, `;`, `(`, …).
        let shell = matches!(
            boundary,
            None | Some(' ' | '\t' | '\n' | ';' | '(' | '&' | '|')
        );
        if shell && secret_name(word, &['_']) {
            return true;
        }
        // A key in a query or connection string.
        let lower = word.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "password"
                | "passwd"
                | "pwd"
                | "secret"
                | "token"
                | "apikey"
                | "api_key"
                | "access_token"
        ) {
            return true;
        }
        // `--from-literal=<key>=<value>`: the key may contain `-` and `.`.
        let key_start = before
            .char_indices()
            .rev()
            .take_while(|(_, c)| is_word_char(*c) || matches!(c, '-' | '.'))
            .last()
            .map_or(at, |(i, _)| i);
        if before[..key_start].ends_with("--from-literal=")
            && secret_name(&before[key_start..], &['_', '-', '.'])
        {
            return true;
        }
    }
    false
}

/// A literal after a secret-valued flag: `--password abc`, `--token abc`, or `-p abc` in a
/// `login` command (the `=` forms are assignments).
fn has_secret_flag(text: &str) -> bool {
    const FLAGS: &[&str] = &[
        "--password",
        "--token",
        "--secret",
        "--client-secret",
        "--api-key",
        "--access-key",
        "--secret-key",
    ];
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let login = words.contains(&"login");
        for pair in words.windows(2) {
            let flag = FLAGS.contains(&pair[0]) || (login && pair[0] == "-p");
            if flag && !pair[1].starts_with('-') && literal_value(pair[1]) {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
stages: [build, test]
variables:
  GLOBAL: "1"
.base:
  image: rust
  cache:
    key: k
    paths: [target/]
  script: [echo base]
.more:
  extends: .base
  cache:
    paths: [other/]
a:
  stage: build
  extends: .more
  needs: []
  script:
    - |
      cargo build \
        --release
    # a comment
b:
  needs: [a, {job: c, artifacts: true}]
  script: [echo b]
c:
  stage: test
  script: [echo c]
d:
  stage: build
  needs: [b]
  script: [echo d]
e:
  stage: deploy
  script: [echo e]
"#;

    #[test]
    fn extends_merges_mappings_and_replaces_lists() {
        let p = Pipeline::parse("t", SAMPLE).unwrap();
        assert_eq!(p.stages, ["build", "test"]);
        assert_eq!(p.jobs.keys().collect::<Vec<_>>(), ["a", "b", "c", "d", "e"]);
        let a = p.job("a").unwrap();
        assert_eq!(a["image"], "rust");
        assert_eq!(a["cache"]["key"], "k");
        assert_eq!(a["cache"]["paths"], serde_json::json!(["other/"]));
        assert_eq!(commands(a), ["cargo build --release"]);
        assert!(runs(a, &["cargo   build", "--release"]));
        assert!(!runs(a, &["echo base"]));
        assert_eq!(p.stage_of(p.job("b").unwrap()), "test");
        assert_eq!(needs(p.job("b").unwrap()).unwrap(), ["a", "c"]);
        assert_eq!(needs(a).unwrap(), Vec::<String>::new());
        assert!(needs(p.job("c").unwrap()).is_none());
    }

    #[test]
    fn needs_of_later_stages_and_undeclared_stages_are_reported() {
        let p = Pipeline::parse("t", SAMPLE).unwrap();
        let problems = p.ordering_problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("job d (stage build) needs b of the later stage test"));
        assert!(problems[1].contains("job e runs in the undeclared stage deploy"));
    }

    #[test]
    fn an_extends_cycle_is_an_error() {
        let err = Pipeline::parse(
            "ci.yml",
            ".x: {extends: .y}\n.y: {extends: .x}\nj: {extends: .x, script: [a]}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("nests deeper"), "{err}");
    }

    #[test]
    fn manual_means_every_adding_rule_is_manual() {
        let job = |y: &str| crate::yaml::documents("t", y).unwrap().remove(0);
        assert!(is_manual(&job("when: manual")));
        assert!(is_manual(&job(
            "rules: [{if: $A, when: never}, {if: $B, when: manual}]"
        )));
        assert!(!is_manual(&job(
            "rules: [{if: $A}, {if: $B, when: manual}]"
        )));
        assert!(!is_manual(&job("script: [x]")));
        assert_eq!(
            rule_conditions(&job("rules: [{if: $A, when: never}, {if: '$B  == \"x\"'}]")),
            ["$B == \"x\""]
        );
    }

    #[test]
    fn the_dockerfile_build_command_ends_at_the_next_shell_operator() {
        let dockerfile = "FROM x\nRUN --mount=type=cache,target=/t \\\n    cargo build --release --locked \\\n  -p a -p b \\\n && mkdir /out\n";
        assert_eq!(
            dockerfile_cargo_build(dockerfile).unwrap(),
            "cargo build --release --locked -p a -p b"
        );
        assert!(dockerfile_cargo_build("FROM x\nRUN make\n").is_none());
    }

    #[test]
    fn references_and_harmless_values_pass() {
        for ok in [
            "echo \"$CI_REGISTRY_PASSWORD\" | docker login -u \"$CI_REGISTRY_USER\" --password-stdin \"$CI_REGISTRY\"",
            "kubectl create secret generic s --from-literal=auth-master-key=\"$(head -c32 /dev/urandom | base64)\"",
            "helm upgrade --set auth.existingSecret=keel-ephemeral,auth.existingSecretPasswordKey=redis-password",
            "DIGEST=$(digest_of \"$SERVICE\")",
            "KEEL_TEST_PG_URL=postgres://postgres@postgres:5432",
            "if: $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH",
            "API_TOKEN=${API_TOKEN_FROM_VAULT} ./run",
            "ACCESS_TOKEN_TTL=5m ./run",
            "https://user:${PASS}@example.com/x",
            "cosign sign --key \"$COSIGN_PRIVATE_KEY\" \"$IMAGE@$DIGEST\"",
            "eyJhbGciOiJIUzI1NiJ9 alone is only a header",
        ] {
            assert_eq!(scan_text(ok), Vec::<&str>::new(), "{ok}");
        }
    }

    #[test]
    fn each_rule_fires() {
        // Assembled at run time, so that this file holds no secret-shaped literal itself.
        let aws = format!("AKIA{}", "IOSFODNN7EXAMPL0");
        let glpat = format!("gl{}-{}", "pat", "x".repeat(20));
        let jwt = format!("{}.{}.sig", "eyJhbGciOiJIUzI1NiJ9", "eyJzdWIiOiIxIn0");
        let pem = format!("-----{} RSA PRIVATE KEY-----", "BEGIN");
        for (text, rule) in [
            (pem.as_str(), "private-key"),
            (aws.as_str(), "aws-access-key"),
            (glpat.as_str(), "platform-token"),
            (jwt.as_str(), "jwt"),
            ("redis://:hunter2@redis:6379", "url-credentials"),
            ("export DB_PASSWORD=hunter2", "secret-assignment"),
            ("API_TOKEN=abc123 ./deploy", "secret-assignment"),
            (
                "postgres://db/app?sslmode=require&password=hunter2",
                "secret-assignment",
            ),
            ("--from-literal=admin-token=abcdef", "secret-assignment"),
            ("docker login -u me --password hunter2 reg", "secret-flag"),
            ("cosign login reg -u me -p hunter2", "secret-flag"),
        ] {
            assert!(
                scan_text(text).contains(&rule),
                "{rule} not found in {text}"
            );
        }
    }

    #[test]
    fn secret_variables_must_be_references() {
        let doc = crate::yaml::documents(
            "t",
            "variables:\n  DEPLOY_TOKEN: abc\n  OK_TOKEN: $FROM_SETTINGS\n  TOKEN_TTL: 30s\n  PLAIN: abc\n\
             j:\n  variables:\n    DB_PASSWORD: {value: hunter2, description: x}\n  parallel:\n    matrix:\n      - API_KEY: [one, $TWO]\n  script: [x]\n",
        )
        .unwrap()
        .remove(0);
        let found = secret_literals(&doc);
        let mut at: Vec<&str> = found.iter().map(|f| f.at.as_str()).collect();
        at.sort_unstable();
        assert_eq!(
            at,
            [
                "j.parallel.matrix[0].API_KEY",
                "j.variables.DB_PASSWORD",
                "variables.DEPLOY_TOKEN"
            ],
            "{found:?}"
        );
        assert!(found.iter().all(|f| f.rule == "secret-variable"));
    }

    #[test]
    fn secret_names() {
        for yes in [
            "DB_PASSWORD",
            "API_KEY",
            "DEPLOYTOKEN",
            "client_secret",
            "KEY",
        ] {
            assert!(secret_name(yes, &['_']), "{yes}");
        }
        for no in [
            "KEYCLOAK_URL",
            "MONKEY",
            "CARGO_HOME",
            "TOKENIZER_PATH",
            "PASSAGE",
        ] {
            assert!(!secret_name(no, &['_']), "{no}");
        }
    }
}
