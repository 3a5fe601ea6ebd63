//! The gRPC API: the messages and services of `proto/lorafleet.proto`,
//! generated at build time (see `build.rs`), plus the few conversions every
//! side needs (bearer tokens in metadata, size limits) and, in [`convert`],
//! every conversion between the `Jobs` service's messages and domain types.
//!
//! **Architecture invariant:** protobuf types stay inside
//! `coordinator::{api, client, server}` (and the agent's side of the
//! `Workers` service). The CLI calls [`crate::client::Connection`]'s typed
//! methods and never names a message.
//!
//! Not here: what the services do (`server`), or the worker's side of them
//! (`agent`).

pub mod convert;

#[allow(clippy::all, missing_docs)]
mod generated {
    tonic::include_proto!("lorafleet.v1");
}

pub use generated::*;

/// The largest message either side accepts, encoded: 4 MiB. Files move in
/// chunks of [`CHUNK_BYTES`], far below it.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The data carried by one chunk of an upload or a download.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// The metadata key of the bearer token.
pub const AUTHORIZATION: &str = "authorization";

/// `token` as the value of an `authorization` header.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The token of an `authorization: Bearer <token>` header, if well formed.
pub fn token_of<T>(request: &tonic::Request<T>) -> Option<&str> {
    token_in(request.metadata().get(AUTHORIZATION)?.to_str().ok()?)
}

/// The token of an `authorization` header's value `Bearer <token>`, if
/// well formed (gRPC metadata and HTTP headers alike).
pub fn token_in(value: &str) -> Option<&str> {
    let token = value.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then_some(token)
}

/// The metadata key carrying the sender's lorafleet version; the
/// coordinator refuses a version other than its own.
pub const VERSION_HEADER: &str = "x-lorafleet-version";

/// The version of a request's sender, if it sent one.
pub fn version_of<T>(request: &tonic::Request<T>) -> Option<&str> {
    request.metadata().get(VERSION_HEADER)?.to_str().ok()
}

impl Order {
    /// An order of `kind` (not an acknowledgement).
    pub fn of(kind: order::Kind) -> Order {
        Order {
            kind: Some(kind),
            ack: 0,
        }
    }

    /// The acknowledgement of the report numbered `seq`.
    pub fn ack(seq: u64) -> Order {
        Order {
            kind: None,
            ack: seq,
        }
    }
}
