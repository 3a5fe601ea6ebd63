//! `GET /v1/fine_tuning/jobs/{id}/events`: a job's events as OpenAI's
//! event objects, newest first, paged with `after` (an event id) and
//! `limit`.
//!
//! Each lorafleet event keeps its level, message and data; `type` is
//! OpenAI's `metrics` for training steps and validation passes (their
//! data then also carries OpenAI's `train_loss` / `valid_loss`) and
//! `message` for everything else. lorafleet's own type stays in
//! `data.type`.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde_json::{Value, json};

use super::super::{ApiError, Caller};
use super::{Paging, list_object};
use crate::server::Coordinator;
use crate::store::Event;

/// An event id as the API writes it.
const EVENT_PREFIX: &str = "ftevent-";

/// `event` as OpenAI's event object.
fn event_object(event: &Event) -> Value {
    let mut data = event.data.clone();
    let metrics = match event.kind.as_str() {
        "train.step" => {
            data["train_loss"] = data["loss"].clone();
            true
        }
        "train.eval" => {
            data["valid_loss"] = data["eval_loss"].clone();
            true
        }
        _ => false,
    };
    if data.is_object() && data.get("type").is_none() {
        data["type"] = json!(event.kind);
    }
    json!({
        "object": "fine_tuning.job.event",
        "id": format!("{EVENT_PREFIX}{}", event.id),
        "created_at": event.created_at,
        "level": event.level.name(),
        "message": event.message,
        "type": if metrics { "metrics" } else { "message" },
        "data": data,
    })
}

/// `GET /v1/fine_tuning/jobs/{id}/events`.
pub(super) async fn list(
    State(coordinator): State<Coordinator>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<Paging>,
) -> Result<Json<Value>, ApiError> {
    let job = coordinator.owned_job(&caller.tenant, &id).await?;
    let before = match &query.after {
        None => None,
        Some(after) => Some(
            after
                .strip_prefix(EVENT_PREFIX)
                .unwrap_or(after)
                .parse::<i64>()
                .map_err(|_| {
                    ApiError::invalid(format!("after {after:?}: expected an event id"))
                        .param("after")
                })?,
        ),
    };
    let limit = query.limit(20, 1000);
    let page = coordinator
        .store()
        .events_before(&job.id, before, limit)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let data = page.data.iter().map(event_object).collect();
    Ok(Json(list_object(data, page.has_more)))
}
