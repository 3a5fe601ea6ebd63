//! Prometheus's `GET /metrics`: the coordinator's figures in the Prometheus
//! text exposition format (0.0.4), every name `lorafleet_*`;
//! docs/METRICS.md lists them all.
//!
//! Two kinds of figure:
//! * counted in memory as things happen, since this process started
//!   ([`Metrics`]): requests ([`requests`]: a tower layer on the tonic
//!   server and an axum middleware on the HTTP router) and checkpoint
//!   uploads (as rank 0 reports `checkpoint.saved`);
//! * read from the store at each scrape ([`fleet`]): jobs by status, the
//!   queue, workers by state, attempt totals, and each unfinished job's
//!   progress, so they are right after a restart too.
//!
//! Who may scrape. Per-job series name jobs, their names and their
//! tenants: tenants' data, so only an operator's token or the cluster
//! token (what a cluster's Prometheus is given) sees them. The other
//! figures name no tenant: with `serve --metrics-public`
//! ([`ServerConfig::metrics_public`]) anyone may read those (a scrape with
//! no token, or with a tenant's token, gets them alone); without it a
//! scrape with no token is 401 and one with a tenant's token 403. A token
//! that is no one's is 401 either way. In the development setup the
//! tenant's token is also the operator's, so it sees everything.
//!
//! Not here: the store's queries (`store`), what the figures mean for an
//! operator (docs/METRICS.md).
//!
//! [`ServerConfig::metrics_public`]: crate::server::ServerConfig::metrics_public

mod fleet;
mod requests;

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

pub(crate) use requests::{RequestMetricsLayer, label_route};

use super::super::Coordinator;
use super::super::access::FleetCaller;
use super::caller::bearer_of;
use super::grpc_request;
use crate::store::JobStatus;
use requests::RequestMetrics;

/// The prefix of every metric name.
const PREFIX: &str = "lorafleet";

pub(super) fn routes() -> Router<Coordinator> {
    Router::new().route("/metrics", get(scrape))
}

/// The figures the coordinator counts in memory, and the registry that
/// encodes them.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: RequestMetrics,
    checkpoint_upload_seconds: Histogram,
    checkpoint_bytes: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let requests = RequestMetrics::register(&mut registry);
        // 50 ms to about 7 minutes, doubling.
        let checkpoint_upload_seconds = Histogram::new(exponential_buckets(0.05, 2.0, 14));
        registry.register_with_unit(
            "checkpoint_upload_duration",
            "How long rank 0 took to commit each checkpoint to storage, as reported with checkpoint.saved",
            Unit::Seconds,
            checkpoint_upload_seconds.clone(),
        );
        let checkpoint_bytes = Counter::default();
        registry.register_with_unit(
            "checkpoint_uploaded",
            "Bytes of the checkpoints committed to storage, as reported with checkpoint.saved",
            Unit::Bytes,
            checkpoint_bytes.clone(),
        );
        let started: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
        started.set(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |since| since.as_secs_f64()),
        );
        registry.register_with_unit(
            "start_time",
            "When this coordinator process started, in seconds since the Unix epoch",
            Unit::Seconds,
            started,
        );
        let build: Family<VersionLabel, Gauge> = Family::default();
        build
            .get_or_create(&VersionLabel {
                version: crate::PROTOCOL_VERSION,
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1, labelled with this coordinator's lorafleet version",
            build,
        );
        Metrics {
            registry,
            requests,
            checkpoint_upload_seconds,
            checkpoint_bytes,
        }
    }

    /// Rank 0 committed a checkpoint of `bytes` in `upload_s` seconds.
    pub(crate) fn checkpoint_saved(&self, bytes: u64, upload_s: f64) {
        self.checkpoint_bytes.inc_by(bytes);
        if upload_s.is_finite() && upload_s >= 0.0 {
            self.checkpoint_upload_seconds.observe(upload_s);
        }
    }
}

/// What a scrape may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    /// The figures that name no tenant.
    Fleet,
    /// Those and every unfinished job's series.
    Everything,
}

/// Why a scrape is refused.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = [(header::WWW_AUTHENTICATE, "Bearer")];
            (self.status, challenge, self.message).into_response()
        } else {
            (self.status, self.message).into_response()
        }
    }
}

/// What the caller of a scrape may see.
fn scope_of(coordinator: &Coordinator, headers: &HeaderMap) -> Result<Scope, Refusal> {
    let public = coordinator.config().metrics_public;
    let unauthorized = |message: &str| Refusal {
        status: StatusCode::UNAUTHORIZED,
        message: message.to_string(),
    };
    let Some(token) = bearer_of(headers) else {
        return if public {
            Ok(Scope::Fleet)
        } else {
            Err(unauthorized(
                "/metrics needs `Authorization: Bearer TOKEN` with an operator's token or the cluster token (or serve --metrics-public for the fleet-wide figures)",
            ))
        };
    };
    match coordinator.config().access.fleet(&grpc_request(token, ())) {
        Ok(FleetCaller::Operator(_) | FleetCaller::Worker) => Ok(Scope::Everything),
        Ok(FleetCaller::Tenant(_)) if public => Ok(Scope::Fleet),
        Ok(FleetCaller::Tenant(tenant)) => Err(Refusal {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "tenant {} may not read /metrics: it shows the whole fleet; use an operator's token or the cluster token",
                tenant.id
            ),
        }),
        Err(_) => Err(unauthorized("the token is not valid for this coordinator")),
    }
}

async fn scrape(State(coordinator): State<Coordinator>, headers: HeaderMap) -> Response {
    let scope = match scope_of(&coordinator, &headers) {
        Ok(scope) => scope,
        Err(refused) => return refused.into_response(),
    };
    let store = coordinator.store();
    let rows = async {
        let totals = store.job_totals().await?;
        let unfinished: Vec<JobStatus> = JobStatus::ALL
            .into_iter()
            .filter(|status| !status.is_final())
            .collect();
        let jobs = store.job_figures(&unfinished).await?;
        let workers = store.list_workers().await?;
        Ok::<_, crate::store::StoreError>((totals, jobs, workers))
    };
    let (totals, jobs, workers) = match rows.await {
        Ok(rows) => rows,
        Err(error) => {
            tracing::error!("/metrics: the store failed: {error}");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the coordinator's store failed: {error}"),
            )
                .into_response();
        }
    };
    let mut figures = Registry::with_prefix(PREFIX);
    fleet::register(
        &mut figures,
        &totals,
        &jobs,
        &workers,
        scope == Scope::Everything,
    );
    let connected: Gauge = Gauge::default();
    connected.set(coordinator.fleet().links.len() as i64);
    figures.register(
        "workers_connected",
        "Workers with an open heartbeat stream to this coordinator",
        connected,
    );
    let mut text = String::with_capacity(16 * 1024);
    let encoded = prometheus_text::encode(&mut text, &coordinator.inner.metrics.registry)
        .and_then(|()| prometheus_text::encode(&mut text, &figures));
    if encoded.is_err() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded",
        )
            .into_response();
    }
    (
        [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
        text,
    )
        .into_response()
}
