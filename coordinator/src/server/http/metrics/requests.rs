//! Counts and latencies of the requests the coordinator's port answers.
//!
//! One tower layer, [`RequestMetricsLayer`], wraps the whole tonic server
//! (gRPC and the HTTP router behind it) and records every request:
//!
//! * a gRPC call (`content-type: application/grpc…`) when it ends, so its
//!   code is the `grpc-status` it ended with (in the headers of an
//!   error answered at once, else in the trailers) and its time is the
//!   whole call: a unary call's handling, a stream's life. A call whose
//!   client went away first counts as `Canceled`. A path that is no
//!   method of `Jobs` or `Workers` counts under service and method
//!   `unknown`, so a client cannot make series up.
//! * an HTTP request when its response head is ready (a download's time is
//!   its time to first byte), labelled with the route pattern the router
//!   matched ([`label_route`], an axum middleware on the HTTP router, hands
//!   it over in the response's extensions), or `unmatched`: never the raw
//!   path.
//!
//! Not here: the routes and handlers themselves (`server::http`), the
//! encoding of the figures (`metrics`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{MatchedPath, Request};
use axum::http::{self, HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tower_layer::Layer;
use tower_service::Service;

use crate::api::{jobs_server, workers_server};

use super::super::super::Coordinator;

/// Bucket bounds of request latencies, in seconds: from half a millisecond
/// (an in-memory read) to five minutes (a stream's life lands above).
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
    300.0,
];

/// The labels of a gRPC call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    /// `lorafleet.v1.Jobs`, `lorafleet.v1.Workers` or `unknown`.
    service: &'static str,
    /// The method's name as in the proto (`Submit`), or `unknown`.
    method: String,
    /// The gRPC status code's name as gRPC's Go library spells it (`OK`,
    /// `NotFound`, ...).
    code: &'static str,
}

/// The labels of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    /// `GET`, `POST`, ... or `other`.
    method: &'static str,
    /// The route's pattern (`/v1/fine_tuning/jobs/{id}`) or `unmatched`.
    route: String,
    /// The HTTP status code.
    code: u16,
}

type LatencyFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The request instruments, registered once in the coordinator's registry.
#[derive(Debug)]
pub(super) struct RequestMetrics {
    grpc_calls: Family<GrpcLabels, Counter>,
    grpc_seconds: LatencyFamily<GrpcLabels>,
    http_requests: Family<HttpLabels, Counter>,
    http_seconds: LatencyFamily<HttpLabels>,
}

impl RequestMetrics {
    pub(super) fn register(registry: &mut Registry) -> RequestMetrics {
        let metrics = RequestMetrics {
            grpc_calls: Family::default(),
            grpc_seconds: Family::new_with_constructor(latency_histogram),
            http_requests: Family::default(),
            http_seconds: Family::new_with_constructor(latency_histogram),
        };
        registry.register(
            "grpc_requests",
            "gRPC calls answered, by service, method and status code (counted when the call ends)",
            metrics.grpc_calls.clone(),
        );
        registry.register_with_unit(
            "grpc_request_duration",
            "How long gRPC calls took, to their last byte (a stream's whole life)",
            Unit::Seconds,
            metrics.grpc_seconds.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route pattern and status code",
            metrics.http_requests.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "How long HTTP requests took, to the response head",
            Unit::Seconds,
            metrics.http_seconds.clone(),
        );
        metrics
    }

    fn record_grpc(&self, labels: &GrpcLabels, seconds: f64) {
        self.grpc_calls.get_or_create(labels).inc();
        self.grpc_seconds.get_or_create(labels).observe(seconds);
    }

    fn record_http(&self, labels: &HttpLabels, seconds: f64) {
        self.http_requests.get_or_create(labels).inc();
        self.http_seconds.get_or_create(labels).observe(seconds);
    }
}

/// The route pattern a request matched, set on its response by
/// [`label_route`].
#[derive(Clone, Debug)]
struct MatchedRoute(String);

/// Axum middleware on the HTTP router: hands the route pattern the
/// request matched to [`RequestMetricsLayer`], which records the request.
pub(crate) async fn label_route(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string());
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(MatchedRoute(route));
    }
    response
}

/// The tower layer on the tonic server that records every request.
#[derive(Clone)]
pub(crate) struct RequestMetricsLayer {
    coordinator: Coordinator,
}

impl RequestMetricsLayer {
    pub(crate) fn new(coordinator: &Coordinator) -> RequestMetricsLayer {
        RequestMetricsLayer {
            coordinator: coordinator.clone(),
        }
    }
}

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetricsService<S>;

    fn layer(&self, inner: S) -> RequestMetricsService<S> {
        RequestMetricsService {
            inner,
            coordinator: self.coordinator.clone(),
        }
    }
}

/// [`RequestMetricsLayer`]'s service around the tonic server's routes.
#[derive(Clone)]
pub(crate) struct RequestMetricsService<S> {
    inner: S,
    coordinator: Coordinator,
}

impl<S, B, R> Service<http::Request<B>> for RequestMetricsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Body<Data = Bytes> + Unpin,
{
    type Response = http::Response<MeasuredBody<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let kind = if is_grpc(request.headers()) {
            RequestKind::Grpc {
                path: request.uri().path().to_string(),
            }
        } else {
            RequestKind::Http {
                method: method_label(request.method()),
            }
        };
        // A call that is dropped before its answer (the client went away)
        // still counts, as `Canceled`.
        let pending = PendingCall {
            coordinator: self.coordinator.clone(),
            started,
            labels: None,
            kind: Some(kind),
        };
        // The clone that was made ready stays with this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let answer = inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(pending.answered(response))
        })
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"))
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

enum RequestKind {
    Grpc { path: String },
    Http { method: &'static str },
}

/// A request not recorded yet; recorded when dropped.
struct PendingCall {
    coordinator: Coordinator,
    started: Instant,
    /// A gRPC call's labels once its answer's head is known (its code
    /// from the trailers, if they come, replaces the one there).
    labels: Option<GrpcLabels>,
    /// What the request was, until it is recorded.
    kind: Option<RequestKind>,
}

impl PendingCall {
    /// The answer's head is here: an HTTP request is recorded now, a gRPC
    /// call when its body ends.
    fn answered<R>(mut self, response: http::Response<R>) -> http::Response<MeasuredBody<R>> {
        match self.kind.take() {
            Some(RequestKind::Http { method }) => {
                let route = response
                    .extensions()
                    .get::<MatchedRoute>()
                    .map_or_else(|| "unmatched".to_string(), |route| route.0.clone());
                let labels = HttpLabels {
                    method,
                    route,
                    code: response.status().as_u16(),
                };
                let seconds = self.started.elapsed().as_secs_f64();
                self.coordinator
                    .inner
                    .metrics
                    .requests
                    .record_http(&labels, seconds);
                response.map(|inner| MeasuredBody { inner, call: None })
            }
            Some(RequestKind::Grpc { path }) => {
                let status = grpc_status(response.headers());
                let (service, method) = if status == Some(tonic::Code::Unimplemented as i32) {
                    // Tonic answers a path that is no method this way.
                    ("unknown", "unknown".to_string())
                } else {
                    grpc_method(&path)
                };
                self.labels = Some(GrpcLabels {
                    service,
                    method,
                    code: status.map_or("Unknown", code_name),
                });
                response.map(|inner| MeasuredBody {
                    inner,
                    call: Some(self),
                })
            }
            None => response.map(|inner| MeasuredBody { inner, call: None }),
        }
    }

    /// The trailers of a gRPC call: its final code.
    fn trailers(&mut self, trailers: &HeaderMap) {
        if let (Some(labels), Some(status)) = (self.labels.as_mut(), grpc_status(trailers)) {
            labels.code = code_name(status);
        }
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        let seconds = self.started.elapsed().as_secs_f64();
        let requests = &self.coordinator.inner.metrics.requests;
        match (self.labels.take(), self.kind.take()) {
            (Some(labels), _) => requests.record_grpc(&labels, seconds),
            (None, Some(RequestKind::Grpc { path })) => {
                let (service, method) = grpc_method(&path);
                let labels = GrpcLabels {
                    service,
                    method,
                    code: "Canceled",
                };
                requests.record_grpc(&labels, seconds);
            }
            (None, Some(RequestKind::Http { method })) => {
                let labels = HttpLabels {
                    method,
                    route: "unmatched".to_string(),
                    // nginx's "client closed request": no status was sent.
                    code: 499,
                };
                requests.record_http(&labels, seconds);
            }
            (None, None) => {}
        }
    }
}

/// Service and method of a gRPC path `/lorafleet.v1.Jobs/Submit`; a
/// service this coordinator does not serve is `unknown`.
fn grpc_method(path: &str) -> (&'static str, String) {
    let unknown = || ("unknown", "unknown".to_string());
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return unknown();
    };
    let service = [jobs_server::SERVICE_NAME, workers_server::SERVICE_NAME]
        .into_iter()
        .find(|known| *known == service);
    match service {
        Some(service) if !method.is_empty() && !method.contains('/') => {
            (service, method.to_string())
        }
        _ => unknown(),
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
}

/// The name of gRPC status code `code` as gRPC's Go library (and so most
/// dashboards) spells it.
fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

/// A response body that records its gRPC call when it ends (or is dropped
/// unfinished), with the code of its trailers.
pub(crate) struct MeasuredBody<B> {
    inner: B,
    call: Option<PendingCall>,
}

impl<B> Body for MeasuredBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(call), Some(trailers)) = (this.call.as_mut(), frame.trailers_ref()) {
                    call.trailers(trailers);
                }
            }
            // The end (or a broken body): record the call now rather than
            // when the connection lets the body go.
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => drop(this.call.take()),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths_name_only_served_services() {
        assert_eq!(
            grpc_method("/lorafleet.v1.Jobs/Submit"),
            ("lorafleet.v1.Jobs", "Submit".to_string())
        );
        assert_eq!(
            grpc_method("/lorafleet.v1.Workers/Heartbeat"),
            ("lorafleet.v1.Workers", "Heartbeat".to_string())
        );
        for path in [
            "/lorafleet.v1.Other/Submit",
            "/lorafleet.v1.Jobs/",
            "/lorafleet.v1.Jobs/a/b",
            "/",
            "",
        ] {
            assert_eq!(
                grpc_method(path),
                ("unknown", "unknown".to_string()),
                "{path}"
            );
        }
    }

    #[test]
    fn codes_are_named_as_grpc_spells_them() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(tonic::Code::NotFound as i32), "NotFound");
        assert_eq!(
            code_name(tonic::Code::Unauthenticated as i32),
            "Unauthenticated"
        );
        assert_eq!(code_name(99), "Unknown");
    }
}
