//! The gRPC edge: `keel.inference.v1.DocumentStore`. Converts wire types to domain types and
//! back; the only module of this crate that knows the wire format of the API.

use keel_proto::inference as store;
use keel_proto::public as pb;
use keel_runtime::context::tenant;
use tonic::{Request, Response, Status};

use crate::documents::{self, Document, DocumentInput, Documents};

pub struct DocumentStoreService {
    docs: Documents,
}

impl DocumentStoreService {
    pub fn new(docs: Documents) -> Self {
        DocumentStoreService { docs }
    }
}

fn to_pb(d: Document) -> pb::Document {
    pb::Document {
        id: d.id.to_string(),
        title: d.title,
        content: d.content,
        version: d.version,
        create_time: Some(documents::timestamp(d.create_time)),
        update_time: Some(documents::timestamp(d.update_time)),
        content_bytes: d.content_bytes,
    }
}

fn expected(v: i64) -> Result<Option<i64>, Status> {
    match v {
        0 => Ok(None),
        v if v > 0 => Ok(Some(v)),
        _ => Err(crate::Error::InvalidArgument {
            field: "expected_version",
            problem: "must be 0 (any) or a positive version".into(),
        }
        .into()),
    }
}

#[tonic::async_trait]
impl store::document_store_server::DocumentStore for DocumentStoreService {
    async fn create_document(
        &self,
        req: Request<pb::CreateDocumentRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let key = documents::parse_idempotency_key(&r.idempotency_key)?;
        let input = DocumentInput::parse(r.title, r.content)?;
        let doc = self.docs.create(&tenant, input, key).await?;
        Ok(Response::new(to_pb(doc)))
    }

    async fn get_document(
        &self,
        req: Request<pb::GetDocumentRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let tenant = tenant(&req)?;
        let id = documents::parse_id(&req.get_ref().id)?;
        Ok(Response::new(to_pb(self.docs.get(&tenant, id).await?)))
    }

    async fn list_documents(
        &self,
        req: Request<pb::ListDocumentsRequest>,
    ) -> Result<Response<pb::ListDocumentsResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let size = documents::page_size(r.page_size)?;
        let after = documents::parse_page_token(&r.page_token)?;
        let (docs, next) = self
            .docs
            .list(&tenant, size, after, !r.omit_content)
            .await?;
        Ok(Response::new(pb::ListDocumentsResponse {
            documents: docs.into_iter().map(to_pb).collect(),
            next_page_token: next,
        }))
    }

    async fn update_document(
        &self,
        req: Request<pb::UpdateDocumentRequest>,
    ) -> Result<Response<pb::Document>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let id = documents::parse_id(&r.id)?;
        let exp = expected(r.expected_version)?;
        let input = DocumentInput::parse(r.title, r.content)?;
        Ok(Response::new(to_pb(
            self.docs.update(&tenant, id, input, exp).await?,
        )))
    }

    async fn delete_document(
        &self,
        req: Request<pb::DeleteDocumentRequest>,
    ) -> Result<Response<pb::DeleteDocumentResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let id = documents::parse_id(&r.id)?;
        let exp = expected(r.expected_version)?;
        self.docs.delete(&tenant, id, exp).await?;
        Ok(Response::new(pb::DeleteDocumentResponse {}))
    }
}
