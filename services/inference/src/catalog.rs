//! The gRPC edge of the model registry (`keel.inference.v1.Models`): the models a tenant may
//! call, the export of a built-in model's artefact (audited), and A/B splits.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use keel_proto::inference as inf;
use keel_proto::public as pb;
use keel_runtime::context::tenant;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::Error;
use crate::events::Events;
use crate::models;
use crate::registry::{Backend, ModelSpec, Registry};

/// Export chunks are this large (well under gRPC's 4 MiB default message cap).
pub const EXPORT_CHUNK_BYTES: usize = 64 * 1024;
const MAX_PAGE: i32 = 100;

pub struct ModelsService {
    registry: Arc<Registry>,
    events: Events,
}

impl ModelsService {
    pub fn new(registry: Arc<Registry>, events: Events) -> Self {
        ModelsService { registry, events }
    }
}

fn to_pb(m: &ModelSpec) -> pb::Model {
    pb::Model {
        name: m.name.clone(),
        version: m.version.clone(),
        kind: m.kind.as_str().into(),
        context_length_tokens: m.context_length,
        max_output_tokens: m.max_output_tokens,
        embedding_dimension: m.embedding_dimension,
    }
}

fn split_pb(
    model: String,
    default: &ModelSpec,
    split: Option<crate::registry::Split>,
) -> inf::Split {
    inf::Split {
        model,
        version_a: default.version.clone(),
        version_b: split
            .as_ref()
            .map(|s| s.version_b.clone())
            .unwrap_or_default(),
        percent_b: split.map_or(0, |s| s.percent_b),
    }
}

fn invalid(field: &'static str, problem: impl Into<String>) -> Status {
    Error::InvalidArgument {
        field,
        problem: problem.into(),
    }
    .into()
}

type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportModelChunk, Status>> + Send>>;

#[tonic::async_trait]
impl inf::models_server::Models for ModelsService {
    type ExportModelStream = ExportStream;

    async fn list_models(
        &self,
        req: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let size = match r.page_size {
            0 => MAX_PAGE,
            n if (1..=MAX_PAGE).contains(&n) => n,
            _ => return Err(invalid("page_size", format!("must be 0 to {MAX_PAGE}"))),
        } as usize;
        let start = match r.page_token.as_str() {
            "" => 0,
            t => t
                .parse::<usize>()
                .map_err(|_| Status::from(Error::PageTokenInvalid))?,
        };
        let visible = self.registry.visible(&tenant);
        if start > visible.len() {
            return Err(Error::PageTokenInvalid.into());
        }
        let page: Vec<pb::Model> = visible
            .iter()
            .skip(start)
            .take(size)
            .map(|m| to_pb(m))
            .collect();
        let next = start + page.len();
        Ok(Response::new(pb::ListModelsResponse {
            models: page,
            next_page_token: if next < visible.len() {
                next.to_string()
            } else {
                String::new()
            },
        }))
    }

    async fn export_model(
        &self,
        req: Request<inf::ExportModelCall>,
    ) -> Result<Response<Self::ExportModelStream>, Status> {
        let tenant = tenant(&req)?;
        let call = req.into_inner();
        let r = call.request.unwrap_or_default();
        let spec = match r.version.as_str() {
            "" => self.registry.default_for(&tenant, &r.name)?,
            v => self
                .registry
                .version(v)
                .filter(|m| m.name == r.name && m.visible_to(&tenant))
                .ok_or_else(|| Error::ModelNotFound(v.chars().take(100).collect()))?,
        };
        let salt = match &spec.backend {
            Backend::Tiny { salt, .. } => Some(*salt),
            Backend::Embed => None,
            Backend::OpenAi { .. } => {
                return Err(invalid(
                    "name",
                    format!(
                        "{:?} is served by an upstream provider; only built-in models can be exported",
                        spec.version
                    ),
                ));
            }
        };
        // The audit record comes first: an export that cannot be audited does not happen.
        self.events
            .exported(&tenant, &call.subject, &spec.version)
            .await?;
        tracing::warn!(model_version = %spec.version, "model exported");
        let bytes = models::artefact(&spec.name, &spec.version, salt);
        let digest = hex::encode(Sha256::digest(&bytes));
        let n = bytes.len().div_ceil(EXPORT_CHUNK_BYTES).max(1);
        let chunks: Vec<Result<pb::ExportModelChunk, Status>> = (0..n)
            .map(|i| {
                let lo = i * EXPORT_CHUNK_BYTES;
                let hi = (lo + EXPORT_CHUNK_BYTES).min(bytes.len());
                Ok(pb::ExportModelChunk {
                    offset: lo as u64,
                    data: bytes[lo..hi].to_vec(),
                    sha256: if i + 1 == n {
                        digest.clone()
                    } else {
                        String::new()
                    },
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn set_split(
        &self,
        req: Request<inf::SetSplitRequest>,
    ) -> Result<Response<inf::Split>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let default = self.registry.default_for(&tenant, &r.model)?;
        let split = self
            .registry
            .set_split(&tenant, &r.model, &r.version_b, r.percent_b)
            .await?;
        tracing::info!(model = %r.model, version_b = %r.version_b, percent_b = r.percent_b, "model split changed");
        Ok(Response::new(split_pb(r.model, &default, split)))
    }

    async fn get_split(
        &self,
        req: Request<inf::GetSplitRequest>,
    ) -> Result<Response<inf::Split>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let default = self.registry.default_for(&tenant, &r.model)?;
        let split = self.registry.split(&tenant, &r.model).await?;
        Ok(Response::new(split_pb(r.model, &default, split)))
    }
}
