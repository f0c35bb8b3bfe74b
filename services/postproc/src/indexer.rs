//! Keeps the retrieval index in step with the documents: a created or updated document is read
//! back from inference, split into overlapping chunks, embedded (through inference, in batches,
//! so its cache serves repeats) and stored with `Retrieval/PutChunks`; a deleted one has its
//! chunks removed.
//!
//! Every step is idempotent — `PutChunks` replaces the document's chunks unless a newer version
//! is stored — so a redelivered or reordered event converges on the same index.

use keel_proto::inference as inf;
use keel_proto::inference::document_store_client::DocumentStoreClient;
use keel_proto::inference::generation_client::GenerationClient;
use keel_proto::inference::retrieval_client::RetrievalClient;
use keel_proto::public as pb;
use keel_runtime::context::outgoing;
use keel_tenancy::TenantId;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

/// Words per chunk: a few sentences, small enough to be specific, large enough to make sense.
pub const CHUNK_WORDS: usize = 120;
/// Words shared by neighbouring chunks, so a sentence cut at a boundary is whole in one of them.
pub const CHUNK_OVERLAP: usize = 20;
/// Texts per Embed call (inference takes at most 256).
const EMBED_BATCH: usize = 64;
/// The embedding model (`KEEL_POSTPROC_EMBED_MODEL`); must match inference's retrieval model.
pub const DEFAULT_EMBED_MODEL: &str = "keel-embed";

/// Splits `text` into chunks of at most `CHUNK_WORDS` words overlapping by `CHUNK_OVERLAP`.
pub fn chunk(text: &str) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() {
        return Vec::new();
    }
    let step = CHUNK_WORDS - CHUNK_OVERLAP;
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let end = (start + CHUNK_WORDS).min(words.len());
        out.push(words[start..end].join(" "));
        if end == words.len() {
            return out;
        }
        start += step;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Inference is unreachable or failing: retry later.
    #[error("inference: {0}")]
    Upstream(tonic::Status),
}

#[derive(Clone)]
pub struct Indexer {
    documents: DocumentStoreClient<Channel>,
    generation: GenerationClient<Channel>,
    retrieval: RetrievalClient<Channel>,
    model: String,
}

impl Indexer {
    pub fn new(inference: Channel, model: String) -> Self {
        Indexer {
            documents: DocumentStoreClient::new(inference.clone()),
            generation: GenerationClient::new(inference.clone()),
            retrieval: RetrievalClient::new(inference),
            model,
        }
    }

    /// Indexes the document as it is now (its latest version, or nothing if it is gone).
    #[tracing::instrument(name = "postproc.index", skip_all, fields(document_id = %document_id))]
    pub async fn index(&self, tenant: &TenantId, document_id: Uuid) -> Result<usize, IndexError> {
        let got = self
            .documents
            .clone()
            .get_document(outgoing(
                pb::GetDocumentRequest {
                    id: document_id.to_string(),
                },
                tenant,
            ))
            .await;
        let doc = match got {
            Ok(d) => d.into_inner(),
            // Deleted since: its delete event removes the chunks.
            Err(st) if st.code() == Code::NotFound => return Ok(0),
            Err(st) => return Err(IndexError::Upstream(st)),
        };
        let texts = chunk(&format!("{}\n{}", doc.title, doc.content));
        let mut chunks = Vec::with_capacity(texts.len());
        let mut model_version = String::new();
        for (b, batch) in texts.chunks(EMBED_BATCH).enumerate() {
            let r = self
                .generation
                .clone()
                .embed(outgoing(
                    pb::EmbedRequest {
                        model: self.model.clone(),
                        inputs: batch.to_vec(),
                    },
                    tenant,
                ))
                .await
                .map_err(IndexError::Upstream)?
                .into_inner();
            model_version = r.model_version;
            for (i, (text, e)) in batch.iter().zip(r.embeddings).enumerate() {
                chunks.push(inf::Chunk {
                    index: (b * EMBED_BATCH + i) as u32,
                    text: text.clone(),
                    embedding: e.values,
                });
            }
        }
        let n = chunks.len();
        self.retrieval
            .clone()
            .put_chunks(outgoing(
                inf::PutChunksRequest {
                    document_id: doc.id,
                    document_version: doc.version,
                    model_version,
                    chunks,
                },
                tenant,
            ))
            .await
            .map_err(IndexError::Upstream)?;
        Ok(n)
    }

    pub async fn remove(&self, tenant: &TenantId, document_id: Uuid) -> Result<(), IndexError> {
        self.retrieval
            .clone()
            .delete_chunks(outgoing(
                inf::DeleteChunksRequest {
                    document_id: document_id.to_string(),
                },
                tenant,
            ))
            .await
            .map_err(IndexError::Upstream)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_texts_are_one_chunk_and_empty_ones_none() {
        assert_eq!(chunk("a b  c"), vec!["a b c"]);
        assert!(chunk(" \n ").is_empty());
    }

    proptest! {
        /// Every word lands in a chunk, in order; chunks are bounded and overlap as promised.
        #[test]
        fn chunks_cover_the_text_in_order(n in 0usize..700) {
            let words: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
            let chunks = chunk(&words.join(" "));
            prop_assert!(chunks.iter().all(|c| c.split(' ').count() <= CHUNK_WORDS));
            let mut seen = Vec::new();
            for (k, c) in chunks.iter().enumerate() {
                let ws: Vec<&str> = c.split(' ').collect();
                let skip = if k == 0 { 0 } else { CHUNK_OVERLAP };
                prop_assert!(ws.len() > skip);
                seen.extend(ws[skip..].iter().map(|w| (*w).to_owned()));
            }
            prop_assert_eq!(seen, words);
        }
    }
}
