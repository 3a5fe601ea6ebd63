//! What the coordinator tests share: a real server on 127.0.0.1 with a
//! temporary SQLite state, real gRPC clients, and simulated workers (plain
//! tasks that register, open the heartbeat stream and answer their orders).

#![allow(dead_code, unused_imports)]

pub use std::collections::{BTreeMap, BTreeSet};
pub use std::path::{Path, PathBuf};
pub use std::time::Duration;

pub use coordinator::PROTOCOL_VERSION;
pub use coordinator::api::jobs_client::JobsClient;
pub use coordinator::api::{self, Assignment, JobRef, ListJobsRequest, Order, WorkerReport, order};
pub use coordinator::client::{Connection, JobsApi};
pub use coordinator::server::{self, Access, DevTokens, ServerConfig, ServerError};
pub use futures::FutureExt;
pub use tokio::io::AsyncWriteExt;
pub use tokio::sync::{mpsc, oneshot};
pub use tokio::task::JoinHandle;
pub use tokio::time::{sleep, timeout};
pub use tokio_stream::StreamExt;
pub use tokio_stream::wrappers::ReceiverStream;
pub use tonic::service::interceptor::InterceptedService;
pub use tonic::transport::Channel;
pub use tonic::{Code, Status};

pub const TENANT: &str = "tenant-token";
pub const CLUSTER: &str = "cluster-token";
/// The longest any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(10);
pub const SHORT: Duration = Duration::from_millis(20);
/// The restart backoff's base: a failed job's next attempt waits this
/// long, doubled for each earlier failure.
pub const BACKOFF: Duration = Duration::from_millis(200);
/// How long nothing must happen to count as "never".
pub const QUIET: Duration = Duration::from_millis(500);

/// Assignments as received: (worker id, assignment).
pub type Log = Vec<(String, Assignment)>;

pub struct TestCoordinator {
    pub url: String,
    pub dir: tempfile::TempDir,
    pub stop: oneshot::Sender<()>,
    pub server: JoinHandle<Result<(), ServerError>>,
}

impl TestCoordinator {
    pub async fn start() -> TestCoordinator {
        let dir = tempfile::tempdir().unwrap();
        let tokens = DevTokens {
            tenant: TENANT.into(),
            cluster: CLUSTER.into(),
        };
        let access = Access::development(&tokens);
        let (state, data) = (dir.path().join("state.sqlite"), dir.path().join("data"));
        let mut config = ServerConfig::new(state, data, access);
        // Silence never counts here: only a dropped stream loses a worker.
        config.lost_after = Duration::from_secs(600);
        config.restart_backoff = BACKOFF;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(server::serve(config, listener, stopped.map(drop)));
        TestCoordinator {
            url,
            dir,
            stop,
            server,
        }
    }

    pub async fn connect(&self, token: &str) -> Connection {
        let conn = Connection::open(&self.url, token, Duration::from_secs(5));
        conn.await.unwrap()
    }

    /// Stops the server and checks that it stopped cleanly.
    pub async fn shutdown(self) {
        self.stop.send(()).unwrap();
        let stopped = timeout(WAIT, self.server).await.expect("the server stops");
        stopped.unwrap().unwrap();
    }

    /// Commits an empty checkpoint at `step` of `job` (tenant `default`)
    /// to the storage of [`TestCoordinator::spec`]'s jobs.
    pub async fn commit_checkpoint(&self, job: &str, step: u64) {
        let runs = self.dir.path().join("runs");
        let store =
            trainer::checkpoint::CheckpointStore::open(&runs.display().to_string(), "default", job)
                .unwrap();
        let empty = tempfile::tempdir().unwrap();
        store
            .commit(step, empty.path(), serde_json::json!({"train_loss": 1.0}))
            .await
            .unwrap();
    }

    /// A valid spec training on the quickstart data.
    pub fn spec(&self, name: &str, workers: u32, priority: i32) -> String {
        self.spec_on(&quickstart_data(), name, workers, priority)
    }

    pub fn spec_on(&self, train: &Path, name: &str, workers: u32, priority: i32) -> String {
        let (train, runs) = (train.display(), self.dir.path().join("runs"));
        format!(
            "name: {name}\nmodel:\n  preset: tiny\ndataset:\n  train: {train}\n\
             training:\n  max_steps: 2\nresources:\n  workers: {workers}\n  backend: cpu\n\
             \x20 priority: {priority}\ncheckpoint:\n  storage: {}\n",
            runs.display()
        )
    }

    pub fn request(&self, spec_yaml: &str) -> api::SubmitRequest {
        api::SubmitRequest {
            spec_yaml: spec_yaml.to_string(),
            file_name: "job.yaml".into(),
            base_dir: self.dir.path().display().to_string(),
            version: PROTOCOL_VERSION.into(),
            ..Default::default()
        }
    }

    pub async fn submit(&self, jobs: &mut JobsApi, spec_yaml: &str) -> Result<api::Job, Status> {
        let submitted = jobs.submit(self.request(spec_yaml)).await;
        submitted.map(|r| r.into_inner())
    }

    /// Queues a valid job needing `workers` at `priority`.
    pub async fn job(
        &self,
        jobs: &mut JobsApi,
        name: &str,
        workers: u32,
        priority: i32,
    ) -> api::Job {
        let spec = self.spec(name, workers, priority);
        self.submit(jobs, &spec).await.unwrap()
    }
}

pub fn quickstart_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/quickstart-train.jsonl")
}

/// A worker without a trainer: it registers, reports when told to, and
/// keeps every order it receives.
pub struct SimWorker {
    pub id: String,
    /// The session secret its registration returned.
    pub secret: String,
    pub conn: Connection,
    pub reports: mpsc::Sender<WorkerReport>,
    pub orders: mpsc::UnboundedReceiver<Order>,
}

impl SimWorker {
    /// Registers a new worker and opens the heartbeat stream; returns once
    /// the coordinator holds its link. (`old_id` must be empty: joining
    /// again needs the secret, see [`SimWorker::join_again`].)
    pub async fn join(tc: &TestCoordinator, old_id: &str, name: &str) -> SimWorker {
        SimWorker::join_again(tc, old_id, "", name).await
    }

    /// Registers again under `old_id` with its session `secret` (or anew,
    /// when `old_id` is empty) and opens the heartbeat stream.
    pub async fn join_again(
        tc: &TestCoordinator,
        old_id: &str,
        secret: &str,
        name: &str,
    ) -> SimWorker {
        let conn = tc.connect(CLUSTER).await;
        let request = api::RegisterRequest {
            name: name.into(),
            host: "127.0.0.1".into(),
            backend: api::Backend::Cpu.into(),
            version: PROTOCOL_VERSION.into(),
            ring_addr: "127.0.0.1:1".into(),
            worker_id: old_id.into(),
            worker_secret: secret.into(),
            ..Default::default()
        };
        let reply = conn.workers().register(request).await.unwrap();
        let reply = reply.into_inner();
        let (id, secret) = (reply.worker_id, reply.worker_secret);
        let (reports, outgoing) = mpsc::channel(16);
        let first = WorkerReport {
            worker_id: id.clone(),
            state: api::RankState::Idle.into(),
            worker_secret: secret.clone(),
            ..Default::default()
        };
        reports.send(first).await.unwrap();
        let opened = conn
            .workers()
            .heartbeat(ReceiverStream::new(outgoing))
            .await;
        let mut stream = opened.unwrap().into_inner();
        let (tx, orders) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(order)) = stream.next().await {
                if tx.send(order).is_err() {
                    return;
                }
            }
        });
        SimWorker {
            id,
            secret,
            conn,
            reports,
            orders,
        }
    }

    pub async fn report(&self, a: &Assignment, state: &str) {
        let report = WorkerReport {
            worker_id: self.id.clone(),
            job_id: a.job_id.clone(),
            attempt: a.attempt,
            state: rank_state(state).into(),
            ..Default::default()
        };
        self.reports.send(report).await.unwrap();
    }

    /// Reports no rank running.
    pub async fn idle(&self) {
        let report = WorkerReport {
            worker_id: self.id.clone(),
            state: api::RankState::Idle.into(),
            ..Default::default()
        };
        self.reports.send(report).await.unwrap();
    }

    /// Reports the rank running, then finished.
    pub async fn finish(&self, a: &Assignment) {
        self.report(a, "running").await;
        self.report(a, "finished").await;
    }

    /// The next order within `within`, if any.
    pub async fn next_order(&mut self, within: Duration) -> Option<order::Kind> {
        let order = timeout(within, self.orders.recv()).await;
        order.ok().flatten().and_then(|o| o.kind)
    }

    /// The next assignment, skipping other orders (stops of an attempt
    /// that is over).
    pub async fn next_assignment_after_stops(&mut self) -> Assignment {
        loop {
            match self.next_order(WAIT).await {
                Some(order::Kind::Assign(a)) => return a,
                // As an agent does: the rank is killed, the worker idle.
                Some(order::Kind::Stop(_)) => self.idle().await,
                other => panic!("worker {} expected an assignment, got {other:?}", self.id),
            }
        }
    }

    /// The next preempt order, skipping drain orders.
    pub async fn next_preempt(&mut self) -> api::Stop {
        loop {
            match self.next_order(WAIT).await {
                Some(order::Kind::Preempt(p)) => return p,
                Some(order::Kind::Drain(_)) => {}
                other => panic!("worker {} expected a preempt order, got {other:?}", self.id),
            }
        }
    }

    pub async fn next_assignment(&mut self) -> Assignment {
        match self.next_order(WAIT).await {
            Some(order::Kind::Assign(a)) => a,
            other => panic!("worker {} expected an assignment, got {other:?}", self.id),
        }
    }

    /// Assignments already received, added to `log`, without waiting.
    pub fn received(&mut self, log: &mut Log) {
        while let Ok(order) = self.orders.try_recv() {
            match order.kind {
                Some(order::Kind::Assign(a)) => log.push((self.id.clone(), a)),
                other => panic!("worker {} got an unexpected order {other:?}", self.id),
            }
        }
    }

    pub async fn step_event(&self, a: &Assignment, step: u64, total: u64) {
        self.event(a, "train.step", &step_data(step, total)).await;
    }

    /// Reports rank 0's checkpoint at `step` in folder `path`.
    pub async fn checkpoint_event(&self, a: &Assignment, step: u64, path: &str) {
        let saved = job::JobEvent::CheckpointSaved {
            step,
            path: path.into(),
            metrics: serde_json::json!({"train_loss": 1.0, "eval_loss": null}),
            bytes: 1,
            upload_s: 0.0,
        };
        self.event(a, "checkpoint.saved", &saved.to_line()).await;
    }

    /// Reports one event of `kind` with `data_json` for `a`.
    pub async fn event(&self, a: &Assignment, kind: &str, data_json: &str) {
        let event = api::Event {
            level: "info".into(),
            r#type: kind.into(),
            message: kind.into(),
            data_json: data_json.into(),
            ..Default::default()
        };
        let request = api::ReportEventsRequest {
            worker_id: self.id.clone(),
            job_id: a.job_id.clone(),
            attempt: a.attempt,
            events: vec![event],
            worker_secret: self.secret.clone(),
            ..Default::default()
        };
        self.conn.workers().report_events(request).await.unwrap();
    }
}

/// The rank state a word of the old protocol names (`running`, ...).
pub fn rank_state(word: &str) -> api::RankState {
    api::RankState::from_str_name(&format!("RANK_STATE_{}", word.to_uppercase()))
        .unwrap_or_else(|| panic!("no rank state {word:?}"))
}

/// The data of a `train.step` event at `step` of `total`, as a rank
/// reports it.
pub fn step_data(step: u64, total: u64) -> String {
    job::JobEvent::TrainStep {
        total_steps: total as usize,
        metrics: trainer::train::StepMetrics {
            step: step as usize,
            epoch: 0,
            loss: 1.0,
            learning_rate: 1e-3,
            grad_norm: 1.0,
            target_tokens: 8,
            tokens_per_s: 100.0,
            step_time_s: 0.1,
        },
    }
    .to_line()
}

pub async fn get(jobs: &mut JobsApi, id: &str) -> api::Job {
    let job = jobs.get(JobRef { id: id.into() }).await;
    job.unwrap().into_inner()
}

pub async fn cancel(jobs: &mut JobsApi, id: &str) -> api::Job {
    let job = jobs.cancel(JobRef { id: id.into() }).await;
    job.unwrap().into_inner()
}

/// The error of `result`, checked to have `code`.
pub fn refused<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    let status = result.unwrap_err();
    assert_eq!(status.code(), code, "{status:?}");
    status
}

/// A job's status as `--json` spells it (`queued`, `succeeded`).
pub fn status(job: &api::Job) -> &'static str {
    coordinator::api::convert::job_status(job.status)
        .expect("a known job status")
        .name()
}

/// A watched event's level as `--json` spells it (`info`, `warn`).
pub fn level(event: &api::JobEvent) -> &'static str {
    coordinator::api::convert::event_level(event.level)
        .expect("a known event level")
        .name()
}

/// Polls `Jobs.Get` until job `id` has status `want`.
pub async fn wait_status(jobs: &mut JobsApi, id: &str, want: &str) -> api::Job {
    let mut last = String::new();
    let polled = timeout(WAIT, async {
        loop {
            let job = get(jobs, id).await;
            if status(&job) == want {
                return job;
            }
            last = status(&job).to_string();
            sleep(SHORT).await;
        }
    });
    let polled = polled.await;
    polled.unwrap_or_else(|_| panic!("job {id} never became {want} (last {last})"))
}

/// Gathers the assignments the workers receive until `log` holds `count`.
pub async fn gather(workers: &mut [SimWorker], log: &mut Log, count: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        for w in workers.iter_mut() {
            w.received(log);
        }
        if log.len() >= count {
            return;
        }
        let got: Vec<_> = log.iter().map(|(w, a)| (w, &a.job_id)).collect();
        assert!(tokio::time::Instant::now() < deadline, "got {got:?}");
        sleep(SHORT).await;
    }
}

/// Has each logged worker report its assignment finished.
pub async fn finish_all(workers: &[SimWorker], log: &[(String, Assignment)]) {
    for (id, a) in log {
        let worker = workers.iter().find(|w| &w.id == id).unwrap();
        worker.finish(a).await;
    }
}

pub fn count_for(log: &[(String, Assignment)], job: &str) -> usize {
    log.iter().filter(|(_, a)| a.job_id == job).count()
}

/// Every job holds either no worker or its whole gang, per `Workers.List`.
pub async fn assert_whole_gangs(conn: &Connection, jobs: &mut JobsApi) {
    let fleet = conn.workers().list(api::ListWorkersRequest {}).await;
    let mut held: BTreeMap<String, u32> = BTreeMap::new();
    for w in fleet.unwrap().into_inner().data {
        if !w.job_id.is_empty() {
            *held.entry(w.job_id).or_default() += 1;
        }
    }
    for (job, count) in held {
        let want = get(jobs, &job).await.workers_min;
        assert_eq!(count, want, "job {job} holds a partial gang");
    }
}
