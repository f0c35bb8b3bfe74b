//! The tenant directory: tenants, their contract tier and status, each stored on its own shard.

use chrono::{DateTime, Utc};
use keel_errors::{KeelError, Reason};
use keel_store::{Shards, StoreError};
use keel_tenancy::TenantId;
use sqlx::Row;

/// Display names are for humans in consoles: bounded so they fit any UI.
pub const MAX_DISPLAY_NAME_CHARS: usize = 200;
pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Free,
    Pro,
    Enterprise,
}

impl Tier {
    pub fn parse(s: &str) -> Option<Tier> {
        match s {
            "free" => Some(Tier::Free),
            "pro" => Some(Tier::Pro),
            "enterprise" => Some(Tier::Enterprise),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Pro => "pro",
            Tier::Enterprise => "enterprise",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub id: TenantId,
    pub display_name: String,
    pub tier: Tier,
    pub active: bool,
    pub create_time: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {problem}")]
    InvalidArgument {
        field: &'static str,
        problem: String,
    },
    #[error("tenant {0} does not exist")]
    Unknown(String),
    #[error("tenant {0} already exists with different settings")]
    Conflict(String),
    #[error("page token is not valid for this query")]
    PageTokenInvalid,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Store(e.into())
    }
}

impl KeelError for Error {
    fn reason(&self) -> Reason {
        match self {
            Error::InvalidArgument { .. } => Reason::InvalidArgument,
            Error::Unknown(_) => Reason::TenantUnknown,
            Error::Conflict(_) => Reason::IdempotencyKeyReused,
            Error::PageTokenInvalid => Reason::PageTokenInvalid,
            Error::Store(e) => e.reason(),
        }
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        match self {
            Error::InvalidArgument { field, .. } => vec![("field", (*field).into())],
            Error::Unknown(t) => vec![("tenant_id", t.clone())],
            Error::Store(e) => e.details(),
            _ => Vec::new(),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        keel_errors::to_status(&e)
    }
}

pub fn parse_tenant_id(raw: &str) -> Result<TenantId, Error> {
    TenantId::parse(raw).map_err(|e| Error::InvalidArgument {
        field: "tenant_id",
        problem: e.to_string(),
    })
}

fn row_to_tenant(row: &sqlx::postgres::PgRow) -> Result<Tenant, Error> {
    let id: String = row.try_get("tenant_id")?;
    let tier: String = row.try_get("tier")?;
    let status: String = row.try_get("status")?;
    Ok(Tenant {
        id: parse_tenant_id(&id)?,
        display_name: row.try_get("display_name")?,
        tier: Tier::parse(&tier).unwrap_or(Tier::Free),
        active: status == "active",
        create_time: row.try_get("create_time")?,
    })
}

#[derive(Clone)]
pub struct Directory {
    shards: Shards,
}

impl Directory {
    pub fn new(shards: Shards) -> Self {
        Directory { shards }
    }

    pub async fn get(&self, id: &TenantId) -> Result<Tenant, Error> {
        let row = sqlx::query("SELECT * FROM tenants WHERE tenant_id = $1")
            .bind(id.as_str())
            .fetch_optional(self.shards.pool(id))
            .await?
            .ok_or_else(|| Error::Unknown(id.to_string()))?;
        row_to_tenant(&row)
    }

    /// Creates the tenant; repeating the same creation returns the existing tenant.
    pub async fn create(
        &self,
        id: &TenantId,
        display_name: &str,
        tier: &str,
    ) -> Result<Tenant, Error> {
        let tier = Tier::parse(tier).ok_or_else(|| Error::InvalidArgument {
            field: "tier",
            problem: "must be free, pro or enterprise".into(),
        })?;
        let name = display_name.trim();
        if name.is_empty()
            || name.chars().count() > MAX_DISPLAY_NAME_CHARS
            || name.chars().any(char::is_control)
        {
            return Err(Error::InvalidArgument {
                field: "display_name",
                problem: format!("must be 1 to {MAX_DISPLAY_NAME_CHARS} printable characters"),
            });
        }
        let inserted = sqlx::query(
            "INSERT INTO tenants (tenant_id, display_name, tier) VALUES ($1, $2, $3)
             ON CONFLICT (tenant_id) DO NOTHING RETURNING *",
        )
        .bind(id.as_str())
        .bind(name)
        .bind(tier.as_str())
        .fetch_optional(self.shards.pool(id))
        .await?;
        match inserted {
            Some(row) => {
                tracing::info!(tenant = %id, tier = tier.as_str(), "tenant created");
                row_to_tenant(&row)
            }
            None => {
                let existing = self.get(id).await?;
                if existing.display_name == name && existing.tier == tier {
                    Ok(existing)
                } else {
                    Err(Error::Conflict(id.to_string()))
                }
            }
        }
    }

    /// Changes the display name and/or tier (`None`: unchanged).
    pub async fn update(
        &self,
        id: &TenantId,
        display_name: Option<&str>,
        tier: Option<&str>,
    ) -> Result<Tenant, Error> {
        let tier = match tier {
            Some(t) => Some(Tier::parse(t).ok_or_else(|| Error::InvalidArgument {
                field: "tier",
                problem: "must be free, pro or enterprise".into(),
            })?),
            None => None,
        };
        let name = display_name.map(str::trim);
        if let Some(n) = name
            && (n.is_empty()
                || n.chars().count() > MAX_DISPLAY_NAME_CHARS
                || n.chars().any(char::is_control))
        {
            return Err(Error::InvalidArgument {
                field: "display_name",
                problem: format!("must be 1 to {MAX_DISPLAY_NAME_CHARS} printable characters"),
            });
        }
        let row = sqlx::query(
            "UPDATE tenants SET display_name = COALESCE($2, display_name), tier = COALESCE($3, tier)
             WHERE tenant_id = $1 RETURNING *",
        )
        .bind(id.as_str())
        .bind(name)
        .bind(tier.map(Tier::as_str))
        .fetch_optional(self.shards.pool(id))
        .await?
        .ok_or_else(|| Error::Unknown(id.to_string()))?;
        tracing::info!(tenant = %id, "tenant updated");
        row_to_tenant(&row)
    }

    /// Tenants in ID order across all shards.
    pub async fn list(
        &self,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<Tenant>, String), Error> {
        let size = match i64::from(page_size) {
            0 => DEFAULT_PAGE_SIZE,
            n if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            n => {
                return Err(Error::InvalidArgument {
                    field: "page_size",
                    problem: format!("{n} is outside 0..={MAX_PAGE_SIZE}"),
                });
            }
        };
        let after = match page_token {
            "" => None,
            t => Some(
                t.strip_prefix("t1.")
                    .and_then(|s| TenantId::parse(s).ok())
                    .ok_or(Error::PageTokenInvalid)?,
            ),
        };
        let mut all = Vec::new();
        for pool in self.shards.pools() {
            let rows = sqlx::query(
                "SELECT * FROM tenants WHERE ($1::text IS NULL OR tenant_id > $1)
                 ORDER BY tenant_id LIMIT $2",
            )
            .bind(after.as_ref().map(TenantId::as_str))
            .bind(size + 1)
            .fetch_all(pool)
            .await?;
            for r in &rows {
                all.push(row_to_tenant(r)?);
            }
        }
        all.sort_by(|a, b| a.id.cmp(&b.id));
        let next = if all.len() as i64 > size {
            all.truncate(size as usize);
            all.last()
                .map(|t| format!("t1.{}", t.id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok((all, next))
    }
}
