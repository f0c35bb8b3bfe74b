-- Chunks of a tenant's documents with their embeddings (written by post-processing through
-- keel.inference.v1.Retrieval), searched by cosine similarity for retrieval. Brute force over
-- the tenant's chunks of one embedding model version; the index keeps that scan to the tenant.
CREATE TABLE document_chunks (
    tenant_id        text        NOT NULL,
    document_id      uuid        NOT NULL,
    chunk_index      integer     NOT NULL,
    document_version bigint      NOT NULL,
    model_version    text        NOT NULL,
    text             text        NOT NULL,
    embedding        real[]      NOT NULL,
    PRIMARY KEY (tenant_id, document_id, chunk_index)
);

CREATE INDEX document_chunks_model ON document_chunks (tenant_id, model_version);

GRANT SELECT, INSERT, UPDATE, DELETE ON document_chunks TO keel_inference_tenant;
ALTER TABLE document_chunks ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON document_chunks
    USING (tenant_id = current_setting('keel.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('keel.tenant_id', true));
