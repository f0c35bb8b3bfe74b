//! Typed configuration from an injected environment.
//!
//! Services never read `std::env` below `main`: `main` takes one snapshot with
//! [`Env::from_process`], tests build an [`Env`] from pairs. Every reader names its key in the
//! error, never echoes a secret value, and every default is a named constant at its use site.

use std::collections::HashMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{key} is required but not set")]
    Missing { key: String },
    #[error("{key}={shown} is not valid: {problem}")]
    Invalid {
        key: String,
        /// The value, or `<redacted>` for keys that may hold secrets.
        shown: String,
        problem: String,
    },
}

/// A snapshot of environment variables.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

/// Keys whose values may hold credentials are never echoed in errors.
fn is_secret(key: &str) -> bool {
    ["URL", "URLS", "SECRET", "KEY", "PASSWORD", "TOKEN"]
        .iter()
        .any(|s| key.ends_with(s))
}

impl Env {
    /// The process environment, read once. Only binaries call this.
    #[allow(clippy::disallowed_methods)]
    pub fn from_process() -> Self {
        Env {
            vars: std::env::vars().collect(),
        }
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// Returns a copy with `key` set (for tests and for deriving child configs).
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.vars.insert(key.into(), value.into());
        self
    }

    /// Every variable (for handing the same configuration to a child process).
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The raw value; empty strings count as unset.
    pub fn raw(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    fn invalid(key: &str, value: &str, problem: impl Display) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_owned(),
            shown: if is_secret(key) {
                "<redacted>".to_owned()
            } else {
                format!("{value:?}")
            },
            problem: problem.to_string(),
        }
    }

    /// Parses `key` with `FromStr`, or returns `None` when unset.
    pub fn optional<T: FromStr>(&self, key: &str) -> Result<Option<T>, ConfigError>
    where
        T::Err: Display,
    {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|e| Self::invalid(key, v, e)),
        }
    }

    pub fn or<T: FromStr>(&self, key: &str, default: T) -> Result<T, ConfigError>
    where
        T::Err: Display,
    {
        Ok(self.optional(key)?.unwrap_or(default))
    }

    pub fn required<T: FromStr>(&self, key: &str) -> Result<T, ConfigError>
    where
        T::Err: Display,
    {
        self.optional(key)?.ok_or_else(|| ConfigError::Missing {
            key: key.to_owned(),
        })
    }

    /// A `host:port` socket address (`127.0.0.1:0` picks a free port).
    pub fn addr(&self, key: &str, default: SocketAddr) -> Result<SocketAddr, ConfigError> {
        self.or(key, default)
    }

    /// A duration written as `250ms`, `5s`, `2m` or `1h`.
    pub fn duration(&self, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.raw(key) {
            None => Ok(default),
            Some(v) => parse_duration(v).map_err(|e| Self::invalid(key, v, e)),
        }
    }

    /// A comma-separated, non-empty list.
    pub fn list(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        let v = self.raw(key).ok_or_else(|| ConfigError::Missing {
            key: key.to_owned(),
        })?;
        let items: Vec<String> = v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if items.is_empty() {
            return Err(Self::invalid(key, v, "expected a comma-separated list"));
        }
        Ok(items)
    }

    /// A URL with one of the given schemes (`postgres`, `redis`, `nats`, `http`...).
    pub fn url(&self, key: &str, schemes: &[&str]) -> Result<String, ConfigError> {
        let v: String = self.required(key)?;
        check_url(key, &v, schemes)?;
        Ok(v)
    }

    /// Like [`Env::url`] for a comma-separated list of URLs.
    pub fn urls(&self, key: &str, schemes: &[&str]) -> Result<Vec<String>, ConfigError> {
        let list = self.list(key)?;
        for v in &list {
            check_url(key, v, schemes)?;
        }
        Ok(list)
    }

    pub fn bool(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(key) {
            None => Ok(default),
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(Self::invalid(key, v, "expected true or false")),
            },
        }
    }
}

fn check_url(key: &str, v: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let ok = v
        .split_once("://")
        .is_some_and(|(scheme, rest)| schemes.contains(&scheme) && !rest.is_empty());
    if ok {
        Ok(())
    } else {
        Err(Env::invalid(
            key,
            v,
            format!("expected a URL with scheme {}", schemes.join(" or ")),
        ))
    }
}

/// Parses `250ms`, `5s`, `2m`, `1h`, `7d` (a bare number is rejected: units are explicit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit (use ms, s, m, h or d)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} does not start with a number"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        _ => {
            return Err(format!(
                "{s:?} has unknown unit {unit:?} (use ms, s, m, h or d)"
            ));
        }
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn secrets_are_not_echoed() {
        let env = Env::from_pairs([("KEEL_DATABASE_URLS", "mysql://u:hunter2@h/db")]);
        let err = env.urls("KEEL_DATABASE_URLS", &["postgres"]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.to_string().contains("KEEL_DATABASE_URLS"));
    }

    #[test]
    fn errors_name_the_key() {
        let env = Env::from_pairs([("KEEL_X_ADDR", "nowhere")]);
        let err = env
            .addr("KEEL_X_ADDR", SocketAddr::from(([127, 0, 0, 1], 1)))
            .unwrap_err();
        assert!(
            err.to_string().starts_with("KEEL_X_ADDR=\"nowhere\""),
            "{err}"
        );
        assert_eq!(
            env.required::<u32>("KEEL_MISSING").unwrap_err(),
            ConfigError::Missing {
                key: "KEEL_MISSING".into()
            }
        );
    }

    #[test]
    fn empty_means_unset() {
        let env = Env::from_pairs([("A", "  ")]);
        assert_eq!(env.or("A", 7u32), Ok(7));
    }
}
