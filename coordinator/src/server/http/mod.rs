//! The coordinator's HTTP face, served on the gRPC port: tonic answers
//! gRPC (HTTP/2, `content-type: application/grpc`) and hands every other
//! request to the router built here, over HTTP/1.1 or HTTP/2.
//!
//! * [`openai`]: the OpenAI-compatible fine-tuning API under `/v1/`
//!   (files, jobs, events, checkpoints and their downloads).
//! * [`console`]: the web console at `/`, assets embedded in the binary.
//! * [`metrics`]: Prometheus's `/metrics`.
//!
//! Every `/v1/` call names its tenant with `Authorization: Bearer TOKEN`,
//! the same tokens the gRPC API takes ([`Caller`]), and reaches the same
//! checks: the handlers call the `Jobs` service's own methods
//! ([`grpc_request`]) where one exists, so what a tenant may see and do is
//! decided in one place. Errors are OpenAI's error objects ([`ApiError`]).
//!
//! Not here: what the calls do to jobs (the `Jobs` service, `server::jobs`).

mod caller;
mod console;
mod error;
pub(super) mod metrics;
mod openai;
mod series;

use axum::Router;

pub(crate) use caller::{Caller, grpc_request};
pub(crate) use error::ApiError;

use super::Coordinator;

/// Everything the coordinator serves over plain HTTP.
pub(crate) fn router(coordinator: Coordinator) -> Router {
    Router::new()
        .merge(openai::routes())
        .merge(console::routes())
        .merge(metrics::routes())
        .merge(series::routes())
        .layer(axum::middleware::from_fn(metrics::label_route))
        .with_state(coordinator)
}
