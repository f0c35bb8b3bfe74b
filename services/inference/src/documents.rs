//! Documents: validation of inputs, and their storage on the tenant's shard together with the
//! outbox event announcing each change (one transaction per change).

use chrono::{DateTime, Utc};
use keel_store::Shards;
use keel_tenancy::TenantId;
use prost::Message;
use sha2::{Digest, Sha256};
use sqlx::Row;
use uuid::Uuid;

use crate::error::{Error, Result};
use keel_outbox::{self as outbox, NewEvent};

/// Title limit in characters: enough for any real title, small enough to index and display.
pub const MAX_TITLE_CHARS: usize = 512;
/// Content limit in bytes (1 MiB); larger texts belong in object storage, not a row.
pub const MAX_CONTENT_BYTES: usize = 1 << 20;
/// Idempotency key limit in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;
/// List page size when the client sends 0, and the most it may ask for.
pub const DEFAULT_PAGE_SIZE: i64 = 20;
pub const MAX_PAGE_SIZE: i64 = 100;

#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub id: Uuid,
    pub title: String,
    pub content: String,
    pub version: i64,
    pub content_bytes: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

/// A validated title and content.
#[derive(Debug, Clone)]
pub struct DocumentInput {
    pub title: String,
    pub content: String,
}

impl DocumentInput {
    pub fn parse(title: String, content: String) -> Result<Self> {
        let title_chars = title.chars().count();
        if title.trim().is_empty() {
            return Err(invalid("title", "must not be empty"));
        }
        if title_chars > MAX_TITLE_CHARS {
            return Err(invalid(
                "title",
                format!("is {title_chars} characters; the limit is {MAX_TITLE_CHARS}"),
            ));
        }
        if title.chars().any(char::is_control) {
            return Err(invalid("title", "must not contain control characters"));
        }
        if content.len() > MAX_CONTENT_BYTES {
            return Err(invalid(
                "content",
                format!(
                    "is {} bytes; the limit is {MAX_CONTENT_BYTES}",
                    content.len()
                ),
            ));
        }
        if content.contains('\0') {
            return Err(invalid("content", "must not contain NUL characters"));
        }
        Ok(DocumentInput { title, content })
    }

    fn hash(&self) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update((self.title.len() as u64).to_be_bytes());
        h.update(self.title.as_bytes());
        h.update(self.content.as_bytes());
        h.finalize().to_vec()
    }
}

fn invalid(field: &'static str, problem: impl Into<String>) -> Error {
    Error::InvalidArgument {
        field,
        problem: problem.into(),
    }
}

pub fn parse_id(raw: &str) -> Result<Uuid> {
    Uuid::try_parse(raw).map_err(|_| {
        invalid(
            "id",
            "must be a UUID like 0190a5c2-7d1e-7c3a-9f00-1b2c3d4e5f60",
        )
    })
}

pub fn parse_idempotency_key(raw: &str) -> Result<Option<String>> {
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.len() > MAX_IDEMPOTENCY_KEY || !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "idempotency_key",
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"),
        ));
    }
    Ok(Some(raw.to_owned()))
}

pub fn page_size(requested: i32) -> Result<i64> {
    match i64::from(requested) {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if (1..=MAX_PAGE_SIZE).contains(&n) => Ok(n),
        n => Err(invalid(
            "page_size",
            format!("{n} is outside 0..={MAX_PAGE_SIZE}"),
        )),
    }
}

/// Page tokens are the last listed ID, prefixed so a token from another list is refused.
const PAGE_TOKEN_PREFIX: &str = "d1.";

pub fn parse_page_token(raw: &str) -> Result<Option<Uuid>> {
    if raw.is_empty() {
        return Ok(None);
    }
    raw.strip_prefix(PAGE_TOKEN_PREFIX)
        .and_then(|s| Uuid::try_parse(s).ok())
        .map(Some)
        .ok_or(Error::PageTokenInvalid)
}

fn page_token(last: Uuid) -> String {
    format!("{PAGE_TOKEN_PREFIX}{}", last.simple())
}

fn row_to_document(row: &sqlx::postgres::PgRow, with_content: bool) -> Result<Document> {
    let content: String = if with_content {
        row.try_get("content")?
    } else {
        String::new()
    };
    Ok(Document {
        id: row.try_get("id")?,
        title: row.try_get("title")?,
        content,
        version: row.try_get("version")?,
        content_bytes: i64::from(row.try_get::<i32, _>("content_bytes")?),
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
    })
}

const COLUMNS: &str =
    "id, title, content, version, octet_length(content) AS content_bytes, create_time, update_time";

/// The document operations of one service instance.
#[derive(Clone)]
pub struct Documents {
    shards: Shards,
    relay: outbox::Wakeup,
}

impl Documents {
    pub fn new(shards: Shards, relay: outbox::Wakeup) -> Self {
        Documents { shards, relay }
    }

    #[tracing::instrument(name = "documents.create", skip_all, fields(db.system = "postgresql"))]
    pub async fn create(
        &self,
        tenant: &TenantId,
        input: DocumentInput,
        idempotency_key: Option<String>,
    ) -> Result<Document> {
        let mut tx = self.shards.begin(tenant).await?;
        let id = Uuid::now_v7();
        if let Some(key) = &idempotency_key {
            let hash = input.hash();
            let claimed = sqlx::query(
                "INSERT INTO idempotency_keys (tenant_id, key, request_hash, document_id)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(tenant.as_str())
            .bind(key)
            .bind(&hash)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !claimed {
                // The key exists (a concurrent first request has committed by now: the insert
                // waited on its row lock). Replay its result if the body matches.
                let row = sqlx::query(
                    "SELECT request_hash, document_id FROM idempotency_keys
                     WHERE tenant_id = $1 AND key = $2",
                )
                .bind(tenant.as_str())
                .bind(key)
                .fetch_one(&mut *tx)
                .await?;
                let stored: Vec<u8> = row.try_get("request_hash")?;
                if stored != hash {
                    return Err(Error::IdempotencyKeyReused);
                }
                let existing: Uuid = row.try_get("document_id")?;
                tx.rollback().await?;
                return self.get(tenant, existing).await;
            }
        }
        self.write(tx, tenant, id, &input, Write::Create).await
    }

    #[tracing::instrument(name = "documents.get", skip_all, fields(db.system = "postgresql"))]
    pub async fn get(&self, tenant: &TenantId, id: Uuid) -> Result<Document> {
        let mut tx = self.shards.begin(tenant).await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM documents WHERE tenant_id = $1 AND id = $2"
        )))
        .bind(tenant.as_str())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(Error::DocumentNotFound(id))?;
        tx.commit().await?;
        row_to_document(&row, true)
    }

    /// Newest first; returns the page and the next page token (empty at the end).
    #[tracing::instrument(name = "documents.list", skip_all, fields(db.system = "postgresql"))]
    pub async fn list(
        &self,
        tenant: &TenantId,
        page_size: i64,
        after: Option<Uuid>,
        with_content: bool,
    ) -> Result<(Vec<Document>, String)> {
        let mut tx = self.shards.begin(tenant).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM documents
             WHERE tenant_id = $1 AND ($2::uuid IS NULL OR id < $2)
             ORDER BY id DESC LIMIT $3"
        )))
        .bind(tenant.as_str())
        .bind(after)
        .bind(page_size + 1)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut docs = rows
            .iter()
            .map(|r| row_to_document(r, with_content))
            .collect::<Result<Vec<_>>>()?;
        let next = if docs.len() as i64 > page_size {
            docs.truncate(page_size as usize);
            docs.last().map(|d| page_token(d.id)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((docs, next))
    }

    #[tracing::instrument(name = "documents.update", skip_all, fields(db.system = "postgresql"))]
    pub async fn update(
        &self,
        tenant: &TenantId,
        id: Uuid,
        input: DocumentInput,
        expected_version: Option<i64>,
    ) -> Result<Document> {
        let mut tx = self.shards.begin(tenant).await?;
        let current = lock_version(&mut tx, tenant, id).await?;
        check_version(expected_version, current)?;
        self.write(tx, tenant, id, &input, Write::Update).await
    }

    #[tracing::instrument(name = "documents.delete", skip_all, fields(db.system = "postgresql"))]
    pub async fn delete(
        &self,
        tenant: &TenantId,
        id: Uuid,
        expected_version: Option<i64>,
    ) -> Result<()> {
        let mut tx = self.shards.begin(tenant).await?;
        let current = lock_version(&mut tx, tenant, id).await?;
        check_version(expected_version, current)?;
        sqlx::query("DELETE FROM documents WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.as_str())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        announce(
            &mut tx,
            tenant,
            Change::Deleted {
                id,
                version: current,
            },
        )
        .await?;
        tx.commit().await?;
        self.relay.wake();
        Ok(())
    }
    /// Inserts or updates the row, announces the change in the same transaction, commits, and
    /// wakes the relay.
    async fn write(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        tenant: &TenantId,
        id: Uuid,
        input: &DocumentInput,
        write: Write,
    ) -> Result<Document> {
        let sql = match write {
            Write::Create => format!(
                "INSERT INTO documents (tenant_id, id, title, content, version)
                 VALUES ($1, $2, $3, $4, 1) RETURNING {COLUMNS}"
            ),
            Write::Update => format!(
                "UPDATE documents SET title = $3, content = $4, version = version + 1, update_time = now()
                 WHERE tenant_id = $1 AND id = $2 RETURNING {COLUMNS}"
            ),
        };
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(id)
            .bind(&input.title)
            .bind(&input.content)
            .fetch_one(&mut *tx)
            .await?;
        let doc = row_to_document(&row, true)?;
        let change = match write {
            Write::Create => Change::Created(&doc),
            Write::Update => Change::Updated(&doc),
        };
        announce(&mut tx, tenant, change).await?;
        tx.commit().await?;
        self.relay.wake();
        Ok(doc)
    }
}

#[derive(Clone, Copy)]
enum Write {
    Create,
    Update,
}

/// The change an outbox event announces.
enum Change<'a> {
    Created(&'a Document),
    Updated(&'a Document),
    Deleted { id: Uuid, version: i64 },
}

/// Writes the event announcing `change` into the transaction that makes it.
async fn announce(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    tenant: &TenantId,
    change: Change<'_>,
) -> Result<()> {
    use keel_proto::events;
    let event_id = Uuid::now_v7();
    let (eid, tid) = (event_id.to_string(), tenant.to_string());
    let (kind, event_type, payload) = match change {
        Change::Created(d) => (
            "document.created",
            "keel.events.v1.DocumentCreated",
            events::DocumentCreated {
                event_id: eid,
                tenant_id: tid,
                document_id: d.id.to_string(),
                version: d.version,
                title: d.title.clone(),
                content_bytes: d.content_bytes,
                occur_time: Some(timestamp(d.create_time)),
            }
            .encode_to_vec(),
        ),
        Change::Updated(d) => (
            "document.updated",
            "keel.events.v1.DocumentUpdated",
            events::DocumentUpdated {
                event_id: eid,
                tenant_id: tid,
                document_id: d.id.to_string(),
                version: d.version,
                title: d.title.clone(),
                content_bytes: d.content_bytes,
                occur_time: Some(timestamp(d.update_time)),
            }
            .encode_to_vec(),
        ),
        Change::Deleted { id, version } => (
            "document.deleted",
            "keel.events.v1.DocumentDeleted",
            events::DocumentDeleted {
                event_id: eid,
                tenant_id: tid,
                document_id: id.to_string(),
                version,
                occur_time: Some(timestamp(Utc::now())),
            }
            .encode_to_vec(),
        ),
    };
    outbox::insert(
        tx,
        NewEvent::new(event_id, tenant, kind, event_type, payload),
    )
    .await?;
    Ok(())
}

async fn lock_version(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    tenant: &TenantId,
    id: Uuid,
) -> Result<i64> {
    let row =
        sqlx::query("SELECT version FROM documents WHERE tenant_id = $1 AND id = $2 FOR UPDATE")
            .bind(tenant.as_str())
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or(Error::DocumentNotFound(id))?;
    Ok(row.try_get("version")?)
}

fn check_version(expected: Option<i64>, actual: i64) -> Result<()> {
    match expected {
        Some(expected) if expected != actual => Err(Error::VersionConflict { expected, actual }),
        _ => Ok(()),
    }
}

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    keel_proto::timestamp_from_micros(t.timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_validated() {
        assert!(DocumentInput::parse("t".into(), String::new()).is_ok());
        let field = |r: Result<DocumentInput>| match r {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        };
        assert_eq!(field(DocumentInput::parse(" ".into(), "x".into())), "title");
        assert_eq!(
            field(DocumentInput::parse("a".repeat(513), "x".into())),
            "title"
        );
        assert_eq!(
            field(DocumentInput::parse("a\u{7}".into(), "x".into())),
            "title"
        );
        assert_eq!(
            field(DocumentInput::parse(
                "t".into(),
                "x".repeat(MAX_CONTENT_BYTES + 1)
            )),
            "content"
        );
        assert_eq!(
            field(DocumentInput::parse("t".into(), "a\0b".into())),
            "content"
        );
        assert!(DocumentInput::parse("é".repeat(512), "x".into()).is_ok());
    }

    #[test]
    fn ids_keys_and_pages() {
        assert!(parse_id("not-a-uuid").is_err());
        assert!(parse_id("").is_err());
        assert!(parse_id("0190a5c2-7d1e-7c3a-9f00-1b2c3d4e5f60").is_ok());
        assert_eq!(parse_idempotency_key("").unwrap(), None);
        assert!(parse_idempotency_key("has space").is_err());
        assert!(parse_idempotency_key(&"k".repeat(129)).is_err());
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert!(page_size(101).is_err());
        assert!(page_size(-1).is_err());
        let id = Uuid::now_v7();
        assert_eq!(parse_page_token(&page_token(id)).unwrap(), Some(id));
        assert!(matches!(
            parse_page_token("garbage"),
            Err(Error::PageTokenInvalid)
        ));
        assert!(matches!(
            parse_page_token(&id.to_string()),
            Err(Error::PageTokenInvalid)
        ));
    }

    #[test]
    fn same_body_same_hash() {
        let a = DocumentInput::parse("ab".into(), "c".into()).unwrap();
        let b = DocumentInput::parse("a".into(), "bc".into()).unwrap();
        assert_ne!(a.hash(), b.hash());
        assert_eq!(
            a.hash(),
            DocumentInput::parse("ab".into(), "c".into())
                .unwrap()
                .hash()
        );
    }
}
