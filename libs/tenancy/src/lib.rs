//! Tenant identity and placement.
//!
//! * [`TenantId`] — validated on construction; safe in NATS subjects, Redis keys, SQL and logs.
//! * The header names the tenant travels under: [`GRPC_TENANT_HEADER`], [`NATS_TENANT_HEADER`].
//! * [`ShardMap`] — tenant → one of N logical shards → one of M physical Postgres databases.
//!
//! Architecture invariant: the tenant of a request comes from its verified credentials at the
//! gateway; every hop after that carries it in metadata/headers, never in a request body.

use std::fmt;
use std::str::FromStr;

/// gRPC metadata key (lowercase, as HTTP/2 requires).
pub const GRPC_TENANT_HEADER: &str = "keel-tenant-id";
/// NATS message header.
pub const NATS_TENANT_HEADER: &str = "Keel-Tenant-Id";
/// gRPC metadata / HTTP header that correlates every log line of one request across services.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

const MIN_LEN: usize = 3;
const MAX_LEN: usize = 63; // a DNS label: fits subjects, key prefixes and schema names alike

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantIdError {
    #[error("tenant ID must be {MIN_LEN} to {MAX_LEN} characters, got {0}")]
    Length(usize),
    #[error("tenant ID must start with a lowercase letter")]
    Start,
    #[error("tenant ID may hold only lowercase letters, digits and '-'")]
    Charset,
    #[error("tenant ID must not end with '-' or contain '--'")]
    Hyphens,
}

/// A tenant's ID: 3–63 of `[a-z0-9-]`, starting with a letter, no trailing or doubled hyphen.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(s: &str) -> Result<Self, TenantIdError> {
        let b = s.as_bytes();
        if !(MIN_LEN..=MAX_LEN).contains(&b.len()) {
            return Err(TenantIdError::Length(s.chars().count()));
        }
        if !b[0].is_ascii_lowercase() {
            return Err(TenantIdError::Start);
        }
        if !b
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        {
            return Err(TenantIdError::Charset);
        }
        if b[b.len() - 1] == b'-' || s.contains("--") {
            return Err(TenantIdError::Hyphens);
        }
        Ok(TenantId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `prefix:tenant:key` — every Redis key of a tenant starts with its tenant part, so a
    /// tenant's keys can be listed, limited and deleted together.
    pub fn redis_key(&self, prefix: &str, key: &str) -> String {
        format!("{prefix}:{}:{key}", self.0)
    }
}

impl FromStr for TenantId {
    type Err = TenantIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TenantId::parse(s)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TenantId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TenantId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Default number of logical shards: many more than physical databases, so a database can be
/// split by moving whole logical shards without rehashing a single tenant.
pub const DEFAULT_LOGICAL_SHARDS: u16 = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardMapError {
    #[error("need at least one physical shard")]
    NoPhysical,
    #[error("logical shards ({logical}) must be at least the physical shards ({physical})")]
    TooFewLogical { logical: u16, physical: usize },
}

/// Tenant → logical shard (a stable hash, independent of the deployment) → physical database
/// (contiguous ranges of logical shards per database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    logical: u16,
    physical: usize,
}

impl ShardMap {
    pub fn new(logical: u16, physical: usize) -> Result<Self, ShardMapError> {
        if physical == 0 {
            return Err(ShardMapError::NoPhysical);
        }
        if usize::from(logical) < physical {
            return Err(ShardMapError::TooFewLogical { logical, physical });
        }
        Ok(ShardMap { logical, physical })
    }

    pub fn logical_shards(&self) -> u16 {
        self.logical
    }

    pub fn physical_shards(&self) -> usize {
        self.physical
    }

    /// The logical shard of a tenant: FNV-1a 64 of the ID modulo N. FNV is fixed by its
    /// specification, so placement never changes with a compiler, platform or crate upgrade.
    pub fn logical(&self, tenant: &TenantId) -> u16 {
        (fnv1a64(tenant.as_str().as_bytes()) % u64::from(self.logical)) as u16
    }

    /// The physical database (index into the configured URL list) holding a logical shard.
    pub fn physical_of(&self, logical: u16) -> usize {
        usize::from(logical) * self.physical / usize::from(self.logical)
    }

    pub fn physical(&self, tenant: &TenantId) -> usize {
        self.physical_of(self.logical(tenant))
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[test]
    fn valid_and_invalid_ids() {
        for ok in ["acme", "a1b", "demo-tenant", "x-1-2", &"a".repeat(63)] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        let cases = [
            ("", TenantIdError::Length(0)),
            ("ab", TenantIdError::Length(2)),
            ("1abc", TenantIdError::Start),
            ("-abc", TenantIdError::Start),
            ("Acme", TenantIdError::Start),
            ("acMe", TenantIdError::Charset),
            ("ac.me", TenantIdError::Charset),
            ("ac me", TenantIdError::Charset),
            ("acme>", TenantIdError::Charset),
            ("ac*e", TenantIdError::Charset),
            ("acme-", TenantIdError::Hyphens),
            ("ac--me", TenantIdError::Hyphens),
        ];
        for (s, e) in cases {
            assert_eq!(TenantId::parse(s), Err(e), "{s:?}");
        }
        assert!(TenantId::parse(&"a".repeat(64)).is_err());
        assert!(TenantId::parse("äcme").is_err());
    }

    /// Placement is part of the data's address: these values must never change.
    #[test]
    fn placement_is_stable() {
        let map = ShardMap::new(64, 2).unwrap();
        let golden: Vec<(u16, usize)> = ["acme", "demo", "globex", "initech"]
            .iter()
            .map(|s| (map.logical(&t(s)), map.physical(&t(s))))
            .collect();
        assert_eq!(golden, vec![(15, 0), (22, 0), (46, 1), (1, 0)]);
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn spread_is_even() {
        let map = ShardMap::new(64, 4).unwrap();
        let n = 40_000;
        let mut logical = vec![0u32; 64];
        let mut physical = vec![0u32; 4];
        for i in 0..n {
            let id = t(&format!("tenant-{i}"));
            logical[usize::from(map.logical(&id))] += 1;
            physical[map.physical(&id)] += 1;
        }
        let expect = f64::from(n) / 64.0;
        // chi-squared with 63 degrees of freedom: 99.9th percentile is about 103.4
        let chi2: f64 = logical
            .iter()
            .map(|&c| (f64::from(c) - expect).powi(2) / expect)
            .sum();
        assert!(chi2 < 103.4, "chi2={chi2} counts={logical:?}");
        for c in physical {
            let share = f64::from(c) / f64::from(n);
            assert!((share - 0.25).abs() < 0.02, "physical share {share}");
        }
    }

    #[test]
    fn ranges_cover_every_database() {
        for physical in 1..=8 {
            let map = ShardMap::new(64, physical).unwrap();
            let mut seen = vec![false; physical];
            let mut last = 0;
            for l in 0..64 {
                let p = map.physical_of(l);
                assert!(p >= last, "ranges must be contiguous");
                last = p;
                seen[p] = true;
            }
            assert!(seen.iter().all(|s| *s));
        }
        assert_eq!(ShardMap::new(64, 0), Err(ShardMapError::NoPhysical));
        assert!(ShardMap::new(2, 3).is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_accepts_only_the_alphabet(s in "\\PC{0,80}") {
            if let Ok(id) = TenantId::parse(&s) {
                prop_assert!(id.as_str().bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'));
                prop_assert!((3..=63).contains(&id.as_str().len()));
            }
        }

        #[test]
        fn generated_valid_ids_parse_and_place_in_range(s in "[a-z]([a-z0-9]|-[a-z0-9]){2,30}", physical in 1usize..8) {
            let id = TenantId::parse(&s).unwrap();
            let map = ShardMap::new(64, physical).unwrap();
            prop_assert!(map.logical(&id) < 64);
            prop_assert!(map.physical(&id) < physical);
            prop_assert_eq!(map.physical(&id), map.physical(&id.clone()));
        }
    }
}
