//! The OpenAI-compatible fine-tuning API under `/v1/`.

use axum::Router;

use super::super::Coordinator;

pub(super) fn routes() -> Router<Coordinator> {
    Router::new()
}
