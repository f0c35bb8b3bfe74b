//! The generated wire types of every keel contract in `proto/`, and the encoded descriptor set
//! that gRPC reflection serves.
//!
//! Architecture invariant: only the edges of a service (its `grpc` module, the bus codec) use
//! these types; domain logic works on domain types.

#![allow(clippy::all, clippy::unwrap_used, clippy::expect_used, missing_docs)]

/// Encoded `google.protobuf.FileDescriptorSet` of every keel package, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/keel_descriptor.bin"));

pub mod keel {
    pub mod v1 {
        tonic::include_proto!("keel.v1");
    }
    pub mod auth {
        pub mod v1 {
            tonic::include_proto!("keel.auth.v1");
        }
    }
    pub mod inference {
        pub mod v1 {
            tonic::include_proto!("keel.inference.v1");
        }
    }
    pub mod events {
        pub mod v1 {
            tonic::include_proto!("keel.events.v1");
        }
    }
    pub mod postproc {
        pub mod v1 {
            tonic::include_proto!("keel.postproc.v1");
        }
    }
}

pub use keel::{
    auth::v1 as auth, events::v1 as events, inference::v1 as inference, postproc::v1 as postproc,
    v1 as public,
};

/// Client-side helpers for calling keel's services.
pub mod client {
    use tonic::metadata::{Ascii, MetadataValue};

    /// An interceptor that sends `authorization: Bearer <credential>` on every call (access
    /// tokens, or the operator's admin credential).
    #[derive(Clone)]
    pub struct Bearer(MetadataValue<Ascii>);

    impl Bearer {
        /// `None` when the credential cannot be a header value.
        pub fn new(credential: &str) -> Option<Bearer> {
            format!("Bearer {credential}").parse().ok().map(Bearer)
        }
    }

    impl tonic::service::Interceptor for Bearer {
        fn call(
            &mut self,
            mut req: tonic::Request<()>,
        ) -> Result<tonic::Request<()>, tonic::Status> {
            req.metadata_mut().insert("authorization", self.0.clone());
            Ok(req)
        }
    }
}

/// Converts a UTC timestamp in microseconds since the epoch to the protobuf well-known type.
pub fn timestamp_from_micros(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}
