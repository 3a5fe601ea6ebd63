//! A job's checkpoints as OpenAI's checkpoint objects, and their files as
//! downloads.
//!
//! `GET .../checkpoints` lists them newest first; each names its files
//! (from its manifest) under `lorafleet.files`, with the URL that
//! downloads each: `GET .../checkpoints/{step}/files/{name}`, where `step`
//! is a step number, `latest` or `best`. A download is checked against
//! the manifest as it streams (the same check `lorafleet download` makes):
//! bytes that differ end the response early, so a client never gets a
//! whole-looking wrong file.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::super::{ApiError, Caller};
use super::jobs::{fine_tuned_model, model_name};
use super::{Paging, list_object};
use crate::server::Coordinator;
use crate::store::{Checkpoint, Job};

/// The id of `job`'s checkpoint at `step`.
fn checkpoint_id(job: &Job, step: u64) -> String {
    format!("ftckpt-{}-{step}", job.id)
}

/// `GET /v1/fine_tuning/jobs/{id}/checkpoints`.
pub(super) async fn list(
    State(coordinator): State<Coordinator>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<Paging>,
) -> Result<Json<Value>, ApiError> {
    let job = coordinator.owned_job(&caller.tenant, &id).await?;
    let mut checkpoints: Vec<Checkpoint> = coordinator
        .store()
        .list_checkpoints(&job.id)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    checkpoints.sort_by_key(|c| std::cmp::Reverse(c.step));
    if let Some(after) = &query.after {
        let Some(at) = checkpoints
            .iter()
            .position(|c| checkpoint_id(&job, c.step) == *after)
        else {
            return Err(
                ApiError::not_found(format!("job {id} has no checkpoint {after}")).param("after"),
            );
        };
        checkpoints.drain(..=at);
    }
    let limit = query.limit(10, 100) as usize;
    let has_more = checkpoints.len() > limit;
    checkpoints.truncate(limit);
    let request = coordinator
        .store()
        .job_request(&job.id)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let spec = coordinator.spec_of(&job).ok();
    let model = model_name(spec.as_deref(), request.as_ref());
    let suffix = request.as_ref().and_then(|r| r["suffix"].as_str());
    let name = fine_tuned_model(&job, &model, suffix);
    // One storage for the list; each checkpoint's manifest names its files.
    let storage = coordinator.checkpoint_storage(&job);
    let mut data = Vec::with_capacity(checkpoints.len());
    for checkpoint in &checkpoints {
        let manifest = match &storage {
            Ok(storage) => storage
                .manifest(checkpoint.step)
                .await
                .map_err(|e| e.to_string()),
            Err(status) => Err(status.message().to_string()),
        };
        let files = match manifest {
            Ok(manifest) => manifest
                .files
                .iter()
                .map(|file| {
                    json!({
                        "name": file.path,
                        "bytes": file.bytes,
                        "sha256": file.sha256,
                        "url": format!(
                            "/v1/fine_tuning/jobs/{}/checkpoints/{}/files/{}",
                            job.id, checkpoint.step, file.path
                        ),
                    })
                })
                .collect(),
            Err(error) => {
                tracing::warn!(
                    "job {}: checkpoint {} listed without files: {error}",
                    job.id,
                    checkpoint.step
                );
                Vec::new()
            }
        };
        data.push(json!({
            "object": "fine_tuning.job.checkpoint",
            "id": checkpoint_id(&job, checkpoint.step),
            "created_at": checkpoint.committed_at,
            "fine_tuned_model_checkpoint": format!("{name}:ckpt-step-{}", checkpoint.step),
            "fine_tuning_job_id": job.id.as_str(),
            "step_number": checkpoint.step,
            "metrics": {
                "step": checkpoint.step,
                "train_loss": checkpoint.metrics["train_loss"],
                "valid_loss": checkpoint.metrics["eval_loss"],
            },
            "lorafleet": { "files": files },
        }));
    }
    Ok(Json(list_object(data, has_more)))
}

/// `GET /v1/fine_tuning/jobs/{id}/checkpoints/{step}/files/{name}`.
pub(super) async fn download(
    State(coordinator): State<Coordinator>,
    caller: Caller,
    Path((id, step, name)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let job = coordinator.owned_job(&caller.tenant, &id).await?;
    let (size, bytes) = coordinator.checkpoint_file(&job, &step, &name).await?;
    let body = ReceiverStream::new(bytes).map(|chunk| {
        chunk.map_err(|status| {
            tracing::warn!("a checkpoint download ended early: {}", status.message());
            std::io::Error::other(status.message().to_string())
        })
    });
    let disposition = format!("attachment; filename=\"{}\"", name.replace('"', ""));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(body),
    )
        .into_response())
}
