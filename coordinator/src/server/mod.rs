//! The coordinator process (`lorafleet serve`): the gRPC services of
//! [`crate::api`] over the [`Store`], and the control loop that places
//! waiting jobs with the [`Scheduler`], notices lost workers and ends
//! attempts.
//!
//! * [`access`]: tenants, tokens, versions and storage prefixes.
//! * [`jobs`]: the `Jobs` service (what clients call).
//! * [`workers`]: the `Workers` service (what agents call) and the live
//!   links to connected workers, over which orders go out; [`reports`]
//!   acts on the states and events ranks report through it.
//! * [`control`]: rounds that commit what the pure [`crate::plan`]
//!   decides (placements, elastic growth), attempts that end well;
//!   [`world`] builds what the plan sees.
//! * [`recovery`]: failed attempts and lost workers (restart with backoff
//!   or fail, as [`crate::plan::after_failure`] decides), fences,
//!   preemption (drains, growth).
//!
//! Everything that must survive a restart is in the store; what is held in
//! memory ([`Fleet`]) is rebuilt as workers reconnect: their links, ring
//! addresses and which ranks of an attempt reported success.
//!
//! Not here: decisions of the control loop (`plan`, `scheduler`), SQL
//! (`store`), the worker side (`agent`).

pub mod access;
pub mod catalogue;
mod checkpoints;
mod control;
pub mod hosts;
mod http;
mod inputs;
mod jobs;
mod recovery;
mod reports;
mod specs;
pub mod tls;
mod uploads;
mod workers;
mod world;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Status;

pub use access::{Access, ConfigError, DevTokens, TenantPolicy};

use crate::api::jobs_server::JobsServer;
use crate::api::workers_server::WorkersServer;
use crate::api::{MAX_MESSAGE_BYTES, Order};
use crate::scheduler::Scheduler;
use crate::store::{Job, JobId, Store, StoreError, WorkerId};
use job::spec::JobSpec;
use recovery::Preemption;

/// How a coordinator runs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The SQLite file holding all state.
    pub state: PathBuf,
    /// Where uploaded datasets are kept (`<dir>/datasets/<tenant>/`).
    pub data_dir: PathBuf,
    pub access: Access,
    /// How often workers report.
    pub heartbeat: Duration,
    /// A worker silent this long is lost.
    pub lost_after: Duration,
    /// After a restart, how long workers have to reconnect before their
    /// silence counts.
    pub grace: Duration,
    /// The wait before a failed job's next attempt; it doubles with each
    /// failure of the job (up to a minute). Preemptions do not wait.
    pub restart_backoff: Duration,
    /// The certificate and key served over TLS on the same port; `None`
    /// serves in clear.
    pub tls: Option<tls::ServerTls>,
    /// Whether `/metrics` serves its fleet-wide figures to anyone; per-job
    /// series always need an operator's token or the cluster token.
    pub metrics_public: bool,
}

impl ServerConfig {
    /// Defaults: reports every second, lost after 15 s of silence, 30 s
    /// for workers to come back after a restart, 2 s before a failed job's
    /// second attempt.
    pub fn new(state: PathBuf, data_dir: PathBuf, access: Access) -> ServerConfig {
        ServerConfig {
            state,
            data_dir,
            access,
            heartbeat: Duration::from_secs(1),
            lost_after: Duration::from_secs(15),
            grace: Duration::from_secs(30),
            restart_backoff: Duration::from_secs(2),
            tls: None,
            metrics_public: false,
        }
    }
}

/// Why the coordinator could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot create {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the gRPC server stopped: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The coordinator's shared state; cheap to clone.
#[derive(Clone)]
pub(crate) struct Coordinator {
    inner: Arc<Shared>,
}

struct Shared {
    store: Store,
    config: ServerConfig,
    scheduler: Scheduler,
    /// Each job's stored spec, parsed once.
    specs: specs::Specs,
    started: Instant,
    fleet: Mutex<Fleet>,
    /// Serialises decisions that read then write several rows (placing,
    /// ending attempts), so two of them never act on the same stale view.
    control: tokio::sync::Mutex<()>,
    /// Asks the control loop for a scheduling round.
    wake: Notify,
    /// Bumped after events are written, so watchers look again.
    news: watch::Sender<u64>,
    /// Set when the coordinator begins to stop: open streams end.
    stopping: watch::Sender<bool>,
    /// What `/metrics` counts in memory (requests, checkpoint uploads).
    metrics: http::metrics::Metrics,
}

/// What the coordinator knows only while it runs.
#[derive(Default)]
struct Fleet {
    links: HashMap<WorkerId, Link>,
    /// Where each registered worker's ring rank listens.
    ring_addrs: HashMap<WorkerId, String>,
    /// When each connected worker last reported (the store keeps whole
    /// seconds, written less often).
    last_report: HashMap<WorkerId, Instant>,
    /// The gangs (rank order) of attempts known to be running; an attempt
    /// leaves when it ends. Spares the store a read per report.
    live: HashMap<(JobId, u32), Vec<WorkerId>>,
    /// Ranks of a live attempt that ended well: `true` for one that
    /// stopped when told to (preempted), `false` for one that finished.
    ended: HashMap<(JobId, u32), BTreeMap<u32, bool>>,
    /// Live attempts told to stop at their next step boundary, and why.
    preempting: HashMap<(JobId, u32), Preemption>,
    /// Restarting jobs held back until then (the restart backoff). Lost
    /// with a coordinator restart, which only shortens a wait.
    not_before: HashMap<JobId, Instant>,
    /// Jobs already told they cannot fit (told once).
    told_unfit: HashSet<JobId>,
    /// Each registered worker's host (kernel boot id).
    boot_ids: HashMap<WorkerId, String>,
    /// The job attempt each worker last reported on, and its state then.
    last_state: HashMap<WorkerId, (String, u32, crate::api::RankState)>,
    /// Workers whose rank of an attempt that ended early may still run:
    /// told to stop but not yet heard from since. The job's next attempt
    /// waits for each to answer or for its fence time to pass.
    unfenced: HashMap<WorkerId, Unfenced>,
    /// Pairs of workers whose ranks could not reach each other, per job:
    /// its next attempts prefer gangs without them.
    broken_pairs: HashMap<JobId, Vec<(WorkerId, WorkerId)>>,
    next_session: u64,
}

/// A rank that may still be running after its attempt ended.
#[derive(Clone, Debug)]
struct Unfenced {
    job: JobId,
    attempt: u32,
    /// By then the worker has stopped the rank itself, if it never heard
    /// the stop order: it was last heard from before `until - lost_after`.
    until: Instant,
}

/// A connected worker: where its orders go.
struct Link {
    orders: mpsc::Sender<Result<Order, Status>>,
    /// Tells this connection from a later one of the same worker.
    session: u64,
}

/// Runs a coordinator on `listener` until `shutdown` completes.
pub async fn serve(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let uploads = config.data_dir.join("datasets");
    std::fs::create_dir_all(&uploads).map_err(|source| ServerError::DataDir {
        path: uploads.clone(),
        source,
    })?;
    uploads::remove_unfinished(&uploads);
    let store = Store::open(&config.state).await?;
    for tenant in config.access.tenants() {
        store.put_tenant(&tenant.id, &tenant.token_hash).await?;
    }
    let coordinator = Coordinator {
        inner: Arc::new(Shared {
            store,
            config,
            scheduler: Scheduler::default(),
            specs: specs::Specs::default(),
            started: Instant::now(),
            fleet: Mutex::new(Fleet::default()),
            control: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            news: watch::channel(0).0,
            stopping: watch::channel(false).0,
            metrics: http::metrics::Metrics::new(),
        }),
    };
    // A graceful stop waits for open streams: end them first. Workers keep
    // their jobs (they reconnect to the next coordinator); watchers end.
    let shutdown = {
        let coordinator = coordinator.clone();
        async move {
            shutdown.await;
            // Links first: a stream that ends without its link is not a
            // lost worker.
            coordinator.fleet().links.clear();
            coordinator.inner.stopping.send_replace(true);
        }
    };
    let control = tokio::spawn(coordinator.clone().run_control());
    let jobs = JobsServer::new(coordinator.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let workers = WorkersServer::new(coordinator.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // gRPC and the HTTP face share the port: tonic's router sends what is
    // not one of its services to `http::router`.
    let routes = tonic::service::Routes::new(jobs)
        .add_service(workers)
        .into_axum_router()
        .merge(http::router(coordinator.clone()));
    let router = tonic::transport::Server::builder()
        .layer(http::metrics::RequestMetricsLayer::new(&coordinator))
        .accept_http1(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_routes(tonic::service::Routes::from(routes));
    let result = match coordinator.inner.config.tls.clone() {
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(tls.incoming(listener), shutdown)
                .await
        }
        None => {
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
                .await
        }
    };
    control.abort();
    coordinator.inner.store.close().await;
    result.map_err(ServerError::from)
}

impl Coordinator {
    fn store(&self) -> &Store {
        &self.inner.store
    }

    fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// The stored spec of `job`, parsed once per process; the error is
    /// the parser's message.
    fn spec_of(&self, job: &Job) -> Result<Arc<JobSpec>, String> {
        self.inner.specs.of(job)
    }

    fn fleet(&self) -> std::sync::MutexGuard<'_, Fleet> {
        self.inner.fleet.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks for a scheduling round soon.
    fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Tells event watchers to look again.
    fn publish(&self) {
        self.inner.news.send_modify(|n| *n += 1);
    }

    /// Sends `order` to worker `id` if it is connected; says whether it went.
    fn send(&self, id: &WorkerId, order: Order) -> bool {
        let fleet = self.fleet();
        fleet
            .links
            .get(id)
            .is_some_and(|link| link.orders.try_send(Ok(order)).is_ok())
    }
}

/// A store error as the status a caller gets.
pub(crate) fn status_of(error: StoreError) -> Status {
    if error.is_not_found() {
        Status::not_found(error.to_string())
    } else {
        tracing::error!("store: {error}");
        Status::internal(format!("the coordinator's store failed: {error}"))
    }
}
