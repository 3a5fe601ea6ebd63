//! lorafleet's own `/v1/` endpoints beside the OpenAI API, the ones the web
//! console draws from and OpenAI has no call for:
//!
//! * `GET /v1/fine_tuning/jobs/{id}/metrics`: a job's training curves, one
//!   point per step (train loss, learning rate, throughput, and the
//!   validation loss where a validation pass ran), read from its stored
//!   `train.step` and `train.eval` events.
//! * `GET /v1/workers`: the fleet, as the `Workers` service lists it.
//!
//! Both take the tenant's bearer token ([`Caller`]) and decide what it may
//! see exactly as the gRPC API does: another tenant's job is "not found"
//! (`Coordinator::owned_job`), and the worker list hides other tenants'
//! jobs (`Workers::list`). Not here: the events themselves (the OpenAI
//! events endpoint in `openai`) and the pages that draw the curves
//! (`console`).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::api;
use crate::api::workers_server::Workers;
use crate::store::{Event, JobId, Store, StoreError};
use job::JobEvent;

use super::super::{Coordinator, status_of};
use super::{ApiError, Caller};

/// Events read from the store at a time while a series is built.
const EVENTS_PER_PAGE: u32 = 1000;

pub(super) fn routes() -> Router<Coordinator> {
    Router::new()
        .route("/v1/fine_tuning/jobs/{id}/metrics", get(job_metrics))
        .route("/v1/workers", get(list_workers))
}

/// OpenAI's list envelope, without paging: `{"object": "list", "data"}`.
#[derive(Debug, Serialize)]
struct List<T> {
    object: &'static str,
    data: Vec<T>,
}

impl<T> List<T> {
    fn of(data: Vec<T>) -> List<T> {
        List {
            object: "list",
            data,
        }
    }
}

/// What a job's events say about one optimizer step.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
struct StepPoint {
    step: u64,
    train_loss: Option<f64>,
    learning_rate: Option<f64>,
    tokens_per_s: Option<f64>,
    /// Set only when a validation pass ran after this step.
    valid_loss: Option<f64>,
}

/// A job's curves as its events, read in order, build them: one point per
/// step, the latest attempt's.
#[derive(Debug, Default)]
struct Series {
    points: BTreeMap<u64, StepPoint>,
}

impl Series {
    /// Takes one stored event in; events of other types are skipped
    /// without being parsed.
    fn add(&mut self, event: &Event) {
        if !matches!(
            event.kind.as_str(),
            "train.started" | "train.step" | "train.eval"
        ) {
            return;
        }
        // A stored event always parsed once; one that no longer does is
        // from another version and has no point to give.
        if let Ok(parsed) = JobEvent::from_data(&event.kind, &event.data) {
            self.add_event(&parsed);
        }
    }

    fn add_event(&mut self, event: &JobEvent) {
        match event {
            // A new attempt resumes at `step`: what an earlier one did
            // after it is no longer the job's history.
            JobEvent::TrainStarted { step, .. } => {
                self.points.split_off(&(*step as u64 + 1));
            }
            JobEvent::TrainStep { metrics, .. } => {
                let point = self.point(metrics.step as u64);
                point.train_loss = Some(metrics.loss);
                point.learning_rate = Some(metrics.learning_rate);
                point.tokens_per_s = Some(metrics.tokens_per_s);
            }
            JobEvent::TrainEval(metrics) => {
                self.point(metrics.step as u64).valid_loss = Some(metrics.eval_loss);
            }
            _ => {}
        }
    }

    /// Job `job`'s series from its whole event log, read `per_page`
    /// events at a time.
    async fn read(store: &Store, job: &JobId, per_page: u32) -> Result<Series, StoreError> {
        let mut series = Series::default();
        let mut after = 0;
        loop {
            let page = store.events_after(job, after, per_page).await?;
            for event in &page {
                series.add(event);
            }
            match page.last() {
                Some(last) if page.len() == per_page as usize => after = last.id,
                _ => return Ok(series),
            }
        }
    }

    fn point(&mut self, step: u64) -> &mut StepPoint {
        self.points.entry(step).or_insert_with(|| StepPoint {
            step,
            ..StepPoint::default()
        })
    }

    fn into_points(self) -> Vec<StepPoint> {
        self.points.into_values().collect()
    }
}

/// `GET /v1/fine_tuning/jobs/{id}/metrics`.
async fn job_metrics(
    State(coordinator): State<Coordinator>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<List<StepPoint>>, ApiError> {
    let job = coordinator.owned_job(&caller.tenant, &id).await?;
    let series = Series::read(coordinator.store(), &job.id, EVENTS_PER_PAGE)
        .await
        .map_err(status_of)?;
    Ok(Json(List::of(series.into_points())))
}

/// One worker as `GET /v1/workers` lists it.
#[derive(Debug, Serialize)]
struct WorkerRow {
    id: String,
    name: String,
    host: String,
    /// `idle`, `busy`, `draining` or `lost`.
    state: &'static str,
    /// `cpu`, `cuda` or `tch`.
    backend: &'static str,
    device: String,
    /// The job it runs, when that job is the caller's.
    job_id: Option<String>,
    rank: Option<u32>,
    /// Unix seconds.
    last_heartbeat: i64,
}

impl WorkerRow {
    fn of(worker: api::WorkerInfo) -> Result<WorkerRow, ApiError> {
        let unknown = |e: api::convert::UnknownValue| ApiError::internal(e.to_string());
        Ok(WorkerRow {
            state: api::convert::worker_state(worker.state)
                .map_err(unknown)?
                .name(),
            backend: api::convert::backend(worker.backend)
                .map_err(unknown)?
                .name(),
            job_id: (!worker.job_id.is_empty()).then_some(worker.job_id),
            rank: worker.rank,
            id: worker.id,
            name: worker.name,
            host: worker.host,
            device: worker.device,
            last_heartbeat: worker.last_heartbeat,
        })
    }
}

/// `GET /v1/workers`.
async fn list_workers(
    State(coordinator): State<Coordinator>,
    caller: Caller,
) -> Result<Json<List<WorkerRow>>, ApiError> {
    let request = caller.request(api::ListWorkersRequest {});
    let workers = Workers::list(&coordinator, request).await?.into_inner();
    let rows = workers
        .data
        .into_iter()
        .map(WorkerRow::of)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(List::of(rows)))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use futures::FutureExt;
    use job::spec::Backend;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;
    use trainer::train::{EvalMetrics, StepMetrics};

    use super::*;
    use crate::server::{Access, ServerConfig, ServerError, serve};
    use crate::store::{JobStatus, NewEvent, NewJob, TenantId, TokenHash, WorkerInfo};

    const TOKEN_A: &str = "token-of-team-a";
    const TOKEN_B: &str = "token-of-team-b";
    const LIMIT: Duration = Duration::from_secs(30);

    fn started(step: usize) -> JobEvent {
        JobEvent::TrainStarted {
            step,
            total_steps: 20,
            world: 1,
        }
    }

    fn step(step: usize, loss: f64) -> JobEvent {
        JobEvent::TrainStep {
            total_steps: 20,
            metrics: StepMetrics {
                step,
                epoch: 0,
                loss,
                learning_rate: 1e-4 * step as f64,
                grad_norm: 1.0,
                target_tokens: 100,
                tokens_per_s: 1000.0 + step as f64,
                step_time_s: 0.1,
            },
        }
    }

    fn eval(step: usize, eval_loss: f64) -> JobEvent {
        JobEvent::TrainEval(EvalMetrics {
            step,
            eval_loss,
            target_tokens: 50,
        })
    }

    /// Two attempts: the first reached step 4 (validated at 0 and 3), the
    /// second resumed from step 2's checkpoint and ran step 3 again.
    fn two_attempts() -> Vec<JobEvent> {
        vec![
            started(0),
            eval(0, 3.0),
            step(1, 2.9),
            step(2, 2.8),
            step(3, 2.7),
            eval(3, 2.75),
            step(4, 2.6),
            started(2),
            step(3, 2.5),
        ]
    }

    fn losses(points: &[StepPoint]) -> Vec<(u64, Option<f64>, Option<f64>)> {
        points
            .iter()
            .map(|p| (p.step, p.train_loss, p.valid_loss))
            .collect()
    }

    #[test]
    fn each_step_keeps_the_latest_attempts_figures() {
        let mut series = Series::default();
        for event in two_attempts() {
            series.add_event(&event);
        }
        let points = series.into_points();
        assert_eq!(
            losses(&points),
            vec![
                (0, None, Some(3.0)),
                (1, Some(2.9), None),
                (2, Some(2.8), None),
                (3, Some(2.5), None),
            ]
        );
        assert_eq!(points[2].learning_rate, Some(2e-4));
        assert_eq!(points[2].tokens_per_s, Some(1002.0));
        let json = serde_json::to_value(&points[1]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "step": 1, "train_loss": 2.9, "learning_rate": 1e-4,
                "tokens_per_s": 1001.0, "valid_loss": null
            })
        );
    }

    /// Job `tenant`'s job with `events` in the store at `state`, and a
    /// registered worker.
    async fn seed(state: &std::path::Path, tenant: &str, events: &[JobEvent]) -> JobId {
        let store = Store::open(state).await.unwrap();
        let tenant = TenantId::new(tenant).unwrap();
        store
            .put_tenant(&tenant, &TokenHash::of_token(TOKEN_A))
            .await
            .unwrap();
        let job = store
            .create_job(&NewJob {
                tenant,
                name: "curves".into(),
                spec_yaml: "name: curves\n".into(),
                priority: 0,
                workers_min: 1,
                workers_max: 1,
                backend: Backend::Cpu,
                total_steps: Some(20),
                max_failures: 3,
            })
            .await
            .unwrap();
        // Ended, so the control loop leaves it alone.
        store
            .move_job(&job.id, JobStatus::Cancelled, None)
            .await
            .unwrap();
        for event in events {
            store
                .append_event(&NewEvent::of(&job.id, event))
                .await
                .unwrap();
            // Events the series has no use for, between them.
            let other = JobEvent::CheckpointWaiting {
                step: 1,
                waited_s: 0.5,
            };
            store
                .append_event(&NewEvent::of(&job.id, &other))
                .await
                .unwrap();
        }
        store
            .register_worker(&WorkerInfo {
                name: "gpu-node-3/0".into(),
                host: "gpu-node-3".into(),
                backend: Backend::Cpu,
                device: "cpu".into(),
                memory_bytes: 1 << 30,
                version: "test".into(),
            })
            .await
            .unwrap();
        store.close().await;
        job.id
    }

    #[tokio::test]
    async fn a_series_read_in_small_pages_is_the_whole_series() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.sqlite");
        let job = seed(&state, "team-a", &two_attempts()).await;
        let store = Store::open(&state).await.unwrap();
        // job.queued, job.cancelled, and each event with one to skip.
        let log = store.events_after(&job, 0, 100).await.unwrap();
        assert_eq!(log.len(), 20);
        let whole = Series::read(&store, &job, EVENTS_PER_PAGE).await.unwrap();
        assert_eq!(whole.points.len(), 4);
        let whole = whole.into_points();
        // 4 divides the log's length: the last page is full, then one is
        // empty; 3 does not.
        for per_page in [1, 3, 4] {
            let paged = Series::read(&store, &job, per_page).await.unwrap();
            assert_eq!(paged.into_points(), whole, "{per_page} a page");
        }
        store.close().await;
    }

    /// A coordinator on 127.0.0.1 with tenants `team-a` and `team-b`.
    struct Served {
        addr: SocketAddr,
        stop: oneshot::Sender<()>,
        server: tokio::task::JoinHandle<Result<(), ServerError>>,
        _dir: tempfile::TempDir,
    }

    impl Served {
        async fn start(events: &[JobEvent]) -> (Served, JobId) {
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path().join("state.sqlite");
            let job = seed(&state, "team-a", events).await;
            let config = dir.path().join("tenants.yaml");
            let hash = |token: &str| TokenHash::of_token(token).to_hex();
            std::fs::write(
                &config,
                format!(
                    "cluster_token_sha256: {}\ntenants:\n  team-a:\n    token_sha256: {}\n  team-b:\n    token_sha256: {}\n",
                    hash("cluster"),
                    hash(TOKEN_A),
                    hash(TOKEN_B)
                ),
            )
            .unwrap();
            let access = Access::from_file(&config).unwrap();
            let config = ServerConfig::new(state, dir.path().join("data"), access);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = oneshot::channel::<()>();
            let server = tokio::spawn(serve(config, listener, stopped.map(drop)));
            let served = Served {
                addr,
                stop,
                server,
                _dir: dir,
            };
            (served, job)
        }

        /// `GET path` with `token`: the status and the JSON body.
        async fn get(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
            let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
            let auth = token
                .map(|t| format!("Authorization: Bearer {t}\r\n"))
                .unwrap_or_default();
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\n\r\n",
                self.addr
            );
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await.unwrap();
            let text = String::from_utf8(response).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
            (status, json)
        }

        async fn shutdown(self) {
            self.stop.send(()).unwrap();
            let stopped = tokio::time::timeout(LIMIT, self.server).await;
            stopped.expect("the server stops").unwrap().unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metrics_are_the_owners_alone_and_workers_list_the_fleet() {
        tokio::time::timeout(LIMIT, async {
            let (served, job) = Served::start(&two_attempts()).await;
            let path = format!("/v1/fine_tuning/jobs/{job}/metrics");

            let (status, body) = served.get(&path, Some(TOKEN_A)).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["object"], "list");
            let steps: Vec<_> = body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p["step"].as_u64().unwrap(), p["train_loss"].as_f64()))
                .collect();
            assert_eq!(
                steps,
                vec![(0, None), (1, Some(2.9)), (2, Some(2.8)), (3, Some(2.5))]
            );
            assert_eq!(body["data"][0]["valid_loss"], 3.0);

            // Another tenant's job does not exist for this one.
            let (status, body) = served.get(&path, Some(TOKEN_B)).await;
            assert_eq!(status, 404, "{body}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains("team-b has no job"), "{message}");
            let (status, _) = served
                .get("/v1/fine_tuning/jobs/job-missing/metrics", Some(TOKEN_A))
                .await;
            assert_eq!(status, 404);
            let (status, body) = served.get(&path, None).await;
            assert_eq!(status, 401, "{body}");
            assert_eq!(body["error"]["code"], "invalid_api_key");
            let (status, _) = served.get(&path, Some("not-a-token")).await;
            assert_eq!(status, 401);

            let (status, body) = served.get("/v1/workers", Some(TOKEN_B)).await;
            assert_eq!(status, 200, "{body}");
            let workers = body["data"].as_array().unwrap();
            assert_eq!(workers.len(), 1, "{body}");
            let worker = &workers[0];
            assert_eq!(
                (
                    &worker["name"],
                    &worker["host"],
                    &worker["backend"],
                    &worker["device"]
                ),
                (
                    &"gpu-node-3/0".into(),
                    &"gpu-node-3".into(),
                    &"cpu".into(),
                    &"cpu".into()
                )
            );
            assert!(
                ["idle", "lost"].contains(&worker["state"].as_str().unwrap()),
                "{worker}"
            );
            assert!(
                worker["job_id"].is_null() && worker["rank"].is_null(),
                "{worker}"
            );
            assert!(worker["id"].as_str().is_some_and(|id| !id.is_empty()));
            assert!(worker["last_heartbeat"].as_i64().unwrap() > 0);
            let (status, _) = served.get("/v1/workers", None).await;
            assert_eq!(status, 401);

            served.shutdown().await;
        })
        .await
        .expect("the test ends in time");
    }
}
