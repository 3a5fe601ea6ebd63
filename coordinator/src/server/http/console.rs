//! The web console at `/`: pages embedded in the binary.

use axum::Router;

use super::super::Coordinator;

pub(super) fn routes() -> Router<Coordinator> {
    Router::new()
}
