//! The OpenAI-compatible fine-tuning API under `/v1/`: the subset of
//! OpenAI's published API that fine-tuning clients use, with lorafleet's
//! own fields beside OpenAI's under the key `lorafleet`.
//!
//! * [`files`]: `/v1/files` (upload, list, get, content, delete).
//! * [`jobs`]: `/v1/fine_tuning/jobs` (create, list, get, cancel) and the
//!   job object; [`create`] turns a request into a job spec.
//! * [`events`]: a job's events as OpenAI event objects.
//! * [`checkpoints`]: a job's checkpoints and their files' downloads.
//! * `GET /v1/models`: the catalogue's base models and the tenant's
//!   fine-tuned ones.
//!
//! Lists are `{"object": "list", "data", "has_more"}`, newest first,
//! paged with `after` (the last id of the previous page) and `limit`.
//! A tenant sees only its own files and jobs; another tenant's are not
//! found, exactly as over gRPC (the handlers go through the same
//! `owned_job`). Not here: authentication ([`super::Caller`]).

mod checkpoints;
mod create;
mod events;
mod files;
mod jobs;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::server::Coordinator;
use crate::server::uploads::MAX_UPLOAD_BYTES;

pub(super) fn routes() -> Router<Coordinator> {
    Router::new()
        .route(
            "/v1/files",
            post(files::upload)
                .get(files::list)
                .layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES as usize + (1 << 20))),
        )
        .route("/v1/files/{id}", get(files::get).delete(files::delete))
        .route("/v1/files/{id}/content", get(files::content))
        .route("/v1/fine_tuning/jobs", post(jobs::create).get(jobs::list))
        .route("/v1/fine_tuning/jobs/{id}", get(jobs::get))
        .route("/v1/fine_tuning/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/fine_tuning/jobs/{id}/events", get(events::list))
        .route(
            "/v1/fine_tuning/jobs/{id}/checkpoints",
            get(checkpoints::list),
        )
        .route(
            "/v1/fine_tuning/jobs/{id}/checkpoints/{step}/files/{name}",
            get(checkpoints::download),
        )
        .route("/v1/models", get(jobs::models))
}

/// A list's page: `after` (the last id of the previous page) and `limit`.
#[derive(Debug, serde::Deserialize)]
pub(super) struct Paging {
    after: Option<String>,
    limit: Option<u32>,
}

impl Paging {
    /// `limit`, or `default` without one, within 1..=`max`.
    fn limit(&self, default: u32, max: u32) -> u32 {
        self.limit.unwrap_or(default).clamp(1, max)
    }
}

/// OpenAI's list object around `data`.
pub(super) fn list_object(data: Vec<Value>, has_more: bool) -> Value {
    let first_id = data.first().map(|item| item["id"].clone());
    let last_id = data.last().map(|item| item["id"].clone());
    json!({
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": first_id,
        "last_id": last_id,
    })
}
