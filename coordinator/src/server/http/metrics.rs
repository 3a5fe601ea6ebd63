//! Prometheus's `/metrics`.

use axum::Router;

use super::super::Coordinator;

pub(super) fn routes() -> Router<Coordinator> {
    Router::new()
}
