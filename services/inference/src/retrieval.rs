//! Retrieval over a tenant's documents: their chunks and embeddings, stored on the tenant's
//! shard (post-processing writes them), and the search that finds the chunks most similar to a
//! query — used by Generate's `retrieve_top_k` and by `keel.inference.v1.Retrieval/Search`.
//!
//! Search is exact (every chunk of the tenant for the embedding version is scored in Postgres):
//! right for the thousands of chunks a typical tenant has; an approximate index (pgvector HNSW)
//! is the path for tenants with millions.

use std::sync::Arc;

use keel_proto::inference as inf;
use keel_runtime::context::tenant;
use keel_store::Shards;
use keel_tenancy::TenantId;
use sqlx::Row;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::Error;
use crate::generation::Inference;
use crate::registry::{Kind, ModelSpec};

/// Chunks of one document, at most (a 1 MiB document in 1 KiB chunks).
pub const MAX_CHUNKS: usize = 1024;
pub const MAX_CHUNK_CHARS: usize = 8192;
pub const MAX_DIMENSIONS: usize = 4096;
/// Chunks added to a prompt, at most.
pub const MAX_TOP_K: u32 = 8;
/// The embedding model retrieval uses unless configured (`KEEL_INFERENCE_RETRIEVAL_MODEL`).
pub const DEFAULT_RETRIEVAL_MODEL: &str = crate::models::EMBED;

fn invalid(field: &'static str, problem: impl Into<String>) -> Error {
    Error::InvalidArgument {
        field,
        problem: problem.into(),
    }
}

#[derive(Debug, Clone)]
pub struct Match {
    pub document_id: Uuid,
    pub chunk_index: u32,
    pub text: String,
    pub score: f32,
}

pub struct Retrieval {
    shards: Shards,
    inference: Arc<Inference>,
    /// The embedding model queries and chunks are embedded with.
    model: String,
}

impl Retrieval {
    pub fn new(shards: Shards, inference: Arc<Inference>, model: String) -> Self {
        Retrieval {
            shards,
            inference,
            model,
        }
    }

    /// The embedding version retrieval uses for this tenant.
    pub fn model(&self, tenant: &TenantId) -> Result<Arc<ModelSpec>, Error> {
        let spec = self.inference.registry.default_for(tenant, &self.model)?;
        if spec.kind != Kind::Embedding {
            return Err(invalid(
                "model",
                "the retrieval model is not an embedding model",
            ));
        }
        Ok(spec)
    }

    /// The `top_k` chunks most similar to `query`, best first.
    pub async fn search(
        &self,
        tenant: &TenantId,
        query: &str,
        top_k: u32,
    ) -> Result<(Vec<Match>, String), Status> {
        if top_k == 0 || top_k > MAX_TOP_K {
            return Err(invalid("top_k", format!("must be 1 to {MAX_TOP_K}")).into());
        }
        let spec = self.model(tenant)?;
        let (vectors, _) = self
            .inference
            .embeddings(tenant, &spec, &[query.to_owned()])
            .await?;
        let query = vectors.into_iter().next().unwrap_or_default();
        let mut tx = self.shards.begin(tenant).await.map_err(Error::from)?;
        let rows = sqlx::query(
            "SELECT document_id, chunk_index, text,
                    (SELECT sum(a * b) FROM unnest(embedding, $3::real[]) AS t(a, b))::real AS score
             FROM document_chunks
             WHERE tenant_id = $1 AND model_version = $2
             ORDER BY score DESC NULLS LAST, document_id, chunk_index
             LIMIT $4",
        )
        .bind(tenant.as_str())
        .bind(&spec.version)
        .bind(&query)
        .bind(i64::from(top_k))
        .fetch_all(&mut *tx)
        .await
        .map_err(Error::from)?;
        tx.commit().await.map_err(Error::from)?;
        let matches = rows
            .iter()
            .map(|r| {
                Ok(Match {
                    document_id: r.try_get("document_id")?,
                    chunk_index: r.try_get::<i32, _>("chunk_index")? as u32,
                    text: r.try_get("text")?,
                    score: r.try_get::<Option<f32>, _>("score")?.unwrap_or(0.0),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(Error::from)?;
        Ok((matches, spec.version.clone()))
    }

    async fn put(&self, tenant: &TenantId, r: inf::PutChunksRequest) -> Result<bool, Error> {
        let document_id = crate::documents::parse_id(&r.document_id)?;
        if r.document_version < 1 {
            return Err(invalid("document_version", "must be positive"));
        }
        if r.chunks.len() > MAX_CHUNKS {
            return Err(invalid(
                "chunks",
                format!("at most {MAX_CHUNKS} per document"),
            ));
        }
        let dim = r.chunks.first().map_or(0, |c| c.embedding.len());
        if dim > MAX_DIMENSIONS
            || r.chunks
                .iter()
                .any(|c| c.embedding.len() != dim || dim == 0)
        {
            return Err(invalid(
                "chunks.embedding",
                format!("every embedding has the same dimension, 1 to {MAX_DIMENSIONS}"),
            ));
        }
        if r.chunks
            .iter()
            .any(|c| c.text.chars().count() > MAX_CHUNK_CHARS || c.text.contains('\0'))
        {
            return Err(invalid(
                "chunks.text",
                format!("at most {MAX_CHUNK_CHARS} characters, no NUL"),
            ));
        }
        if r.chunks
            .iter()
            .any(|c| c.embedding.iter().any(|x| !x.is_finite()))
        {
            return Err(invalid("chunks.embedding", "values must be finite"));
        }
        if r.model_version.is_empty() || r.model_version.len() > 100 {
            return Err(invalid("model_version", "is required"));
        }
        let mut tx = self.shards.begin(tenant).await?;
        // Serialise writers of one document, then compare versions.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))")
            .bind(tenant.as_str())
            .bind(document_id.to_string())
            .execute(&mut *tx)
            .await?;
        let stored: Option<i64> = sqlx::query_scalar(
            "SELECT max(document_version) FROM document_chunks
             WHERE tenant_id = $1 AND document_id = $2",
        )
        .bind(tenant.as_str())
        .bind(document_id)
        .fetch_one(&mut *tx)
        .await?;
        if stored.is_some_and(|v| v > r.document_version) {
            return Ok(false);
        }
        sqlx::query("DELETE FROM document_chunks WHERE tenant_id = $1 AND document_id = $2")
            .bind(tenant.as_str())
            .bind(document_id)
            .execute(&mut *tx)
            .await?;
        for c in &r.chunks {
            sqlx::query(
                "INSERT INTO document_chunks
                   (tenant_id, document_id, chunk_index, document_version, model_version, text, embedding)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (tenant_id, document_id, chunk_index) DO UPDATE
                 SET text = EXCLUDED.text, embedding = EXCLUDED.embedding",
            )
            .bind(tenant.as_str())
            .bind(document_id)
            .bind(c.index as i32)
            .bind(r.document_version)
            .bind(&r.model_version)
            .bind(&c.text)
            .bind(&c.embedding)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn delete(&self, tenant: &TenantId, document_id: &str) -> Result<(), Error> {
        let id = crate::documents::parse_id(document_id)?;
        let mut tx = self.shards.begin(tenant).await?;
        sqlx::query("DELETE FROM document_chunks WHERE tenant_id = $1 AND document_id = $2")
            .bind(tenant.as_str())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The gRPC edge.
pub struct RetrievalService {
    inner: Arc<Retrieval>,
}

impl RetrievalService {
    pub fn new(inner: Arc<Retrieval>) -> Self {
        RetrievalService { inner }
    }
}

#[tonic::async_trait]
impl inf::retrieval_server::Retrieval for RetrievalService {
    async fn put_chunks(
        &self,
        req: Request<inf::PutChunksRequest>,
    ) -> Result<Response<inf::PutChunksResponse>, Status> {
        let tenant = tenant(&req)?;
        let applied = self.inner.put(&tenant, req.into_inner()).await?;
        Ok(Response::new(inf::PutChunksResponse { applied }))
    }

    async fn delete_chunks(
        &self,
        req: Request<inf::DeleteChunksRequest>,
    ) -> Result<Response<inf::DeleteChunksResponse>, Status> {
        let tenant = tenant(&req)?;
        self.inner
            .delete(&tenant, &req.get_ref().document_id)
            .await?;
        Ok(Response::new(inf::DeleteChunksResponse {}))
    }

    async fn search(
        &self,
        req: Request<inf::SearchRequest>,
    ) -> Result<Response<inf::SearchResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        if r.query.trim().is_empty() {
            return Err(invalid("query", "is required").into());
        }
        let (matches, model_version) = self.inner.search(&tenant, &r.query, r.top_k).await?;
        Ok(Response::new(inf::SearchResponse {
            matches: matches
                .into_iter()
                .map(|m| inf::Match {
                    document_id: m.document_id.to_string(),
                    chunk_index: m.chunk_index,
                    text: m.text,
                    score: m.score,
                })
                .collect(),
            model_version,
        }))
    }
}
