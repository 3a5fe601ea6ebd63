//! The worker agent (`lorafleet worker`): registers with the coordinator,
//! reports on the heartbeat stream, and runs what it is assigned.
//!
//! * `agent` (this file): the connection loop and orders.
//! * [`fence`]: when the coordinator was last surely heard from, and the
//!   rank killed once that is past the lost-after bound.
//! * [`rank`]: one rank of an assignment, a child process.
//! * [`launcher`]: what the agent asks of the program that trains
//!   ([`RankLauncher`], implemented by the binary) and the contract a rank
//!   process keeps.
//! * [`inputs`]: the input cache (uploaded datasets and models fetched
//!   from the coordinator, kept by SHA-256).
//! * [`outbox`]: the ranks' events on their way to the coordinator,
//!   numbered so none is stored twice.
//!
//! If the coordinator goes away, the child keeps training and the agent
//! reconnects, registering under its old id with the attempt it runs, so a
//! restarted coordinator finds the job again. But not for ever: every
//! report is numbered and the coordinator acknowledges it, and once the
//! newest acknowledged report was sent longer ago than the coordinator's
//! lost-after bound (which it sends at `Register`), the coordinator may
//! have declared this worker lost and restarted its job elsewhere. The
//! agent then kills its rank itself (the fence), so a cut-off rank never
//! writes checkpoints beside the job's next attempt.
//!
//! Not here: training itself (the child is whatever the launcher starts:
//! `lorafleet train --events`), or deciding anything about jobs.

mod fence;
mod inputs;
mod launcher;
mod outbox;
mod rank;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::api::{self, RankState, order};
use crate::client::Connection;

use fence::{FENCE_TICK, FenceClock, keep_fence};
use outbox::Outbox;
use rank::RankProcess;

pub use launcher::{RankLaunch, RankLauncher};
pub use rank::kill_when_parent_dies;

/// The environment variable holding the workers' cluster token. Ranks
/// never inherit it.
pub const CLUSTER_TOKEN_ENV: &str = "LORAFLEET_CLUSTER_TOKEN";

/// The environment variable holding a tenant's token (for clients). Ranks
/// never inherit it either.
pub const TENANT_TOKEN_ENV: &str = "LORAFLEET_TOKEN";

/// What a worker is and where it reports.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub coordinator: String,
    pub cluster_token: String,
    pub name: String,
    pub host: String,
    /// `cpu`, `cuda` or `tch`.
    pub backend: String,
    pub device: String,
    pub memory_bytes: u64,
    /// The address this worker's ranks listen on and other hosts reach
    /// them at; `None`: the local address of its connection to the
    /// coordinator, found at every connection.
    pub ring_host: Option<String>,
    /// The port this worker's ranks listen on.
    pub ring_port: u16,
    /// Builds each rank's command (the binary's `train --events`).
    pub launcher: Arc<dyn RankLauncher>,
    /// Where assigned specs are written.
    pub work_dir: PathBuf,
    /// The only CA trusted for an `https://` coordinator (`--ca`); without
    /// it, the public roots.
    pub ca: Option<crate::client::TrustedCa>,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the coordinator refused this worker: {0}")]
    Refused(String),
    #[error("unknown backend {0:?}: use cpu, cuda or tch")]
    Backend(String),
    #[error("cannot write {}: {source}", path.display())]
    WorkDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the worker is doing, as its heartbeats say.
#[derive(Clone, Debug, Default)]
struct Report {
    job_id: String,
    attempt: u32,
    state: RankState,
    step: u64,
    error: String,
}

/// State shared by the agent's tasks.
struct Shared {
    config: AgentConfig,
    report: Mutex<Report>,
    /// Rings when the report changed in a way the coordinator should hear
    /// at once (a rank ended).
    changed: Notify,
    outbox: Outbox,
    /// The worker id and session secret the coordinator gave.
    identity: Mutex<(String, String)>,
    /// The rank this worker runs, if any.
    rank: tokio::sync::Mutex<Option<RankProcess>>,
    fence: Mutex<FenceClock>,
}

impl Shared {
    fn worker_id(&self) -> String {
        self.identity.lock().expect("identity lock").0.clone()
    }

    fn worker_secret(&self) -> String {
        self.identity.lock().expect("identity lock").1.clone()
    }

    fn fence(&self) -> std::sync::MutexGuard<'_, FenceClock> {
        self.fence.lock().expect("fence lock")
    }
}

/// Runs the agent until `shutdown` completes; any child is killed then.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    std::fs::create_dir_all(&config.work_dir).map_err(|source| AgentError::WorkDir {
        path: config.work_dir.clone(),
        source,
    })?;
    let shared = Arc::new(Shared {
        config,
        report: Mutex::new(Report {
            state: RankState::Idle,
            ..Report::default()
        }),
        changed: Notify::new(),
        outbox: Outbox::default(),
        identity: Mutex::new((String::new(), String::new())),
        rank: tokio::sync::Mutex::new(None),
        fence: Mutex::new(FenceClock::default()),
    });
    let fence = tokio::spawn(keep_fence(shared.clone()));
    tokio::pin!(shutdown);
    let mut first = true;
    let outcome = loop {
        let session = tokio::select! {
            () = &mut shutdown => break Ok(()),
            result = connect_and_serve(&shared, first) => result,
        };
        first = false;
        match session {
            Err(error) => break Err(error),
            Ok(ended) => {
                tracing::warn!("lost the coordinator ({}); reconnecting", ended.why);
                // A session that was up tries again at once; a failed
                // attempt to connect waits a little.
                let pause = if ended.was_up {
                    Duration::ZERO
                } else {
                    Duration::from_millis(500)
                };
                tokio::select! {
                    () = &mut shutdown => break Ok(()),
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    };
    fence.abort();
    if let Some(mut r) = shared.rank.lock().await.take() {
        r.kill().await;
    }
    outcome
}

/// The backend this worker was started with, as the protocol names it.
fn backend_of(word: &str) -> Result<api::Backend, AgentError> {
    job::spec::Backend::parse(word)
        .map(api::Backend::from)
        .ok_or_else(|| AgentError::Backend(word.to_string()))
}

/// The address other hosts reach this host at: the local address of a
/// connection to the coordinator at `url`.
async fn discover_ring_host(url: &str) -> Result<String, String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let default_port = if url.starts_with("https://") { 443 } else { 80 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (
            host,
            port.parse::<u16>()
                .map_err(|_| format!("{url}: bad port {port:?}"))?,
        ),
        _ => (authority, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .map_err(|_| format!("no connection to {host}:{port} within 5 s"))?
    .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let local = stream.local_addr().map_err(|e| e.to_string())?;
    Ok(local.ip().to_string())
}

/// How a connection ended.
struct Ended {
    why: String,
    /// It was registered and reporting (not a failed attempt to connect).
    was_up: bool,
}

impl Ended {
    fn failed(why: String) -> Ended {
        Ended { why, was_up: false }
    }
}

/// One connection: register, then report and obey until the stream ends.
/// Returns why it ended; `Err` only for what reconnecting cannot fix.
async fn connect_and_serve(shared: &Arc<Shared>, first: bool) -> Result<Ended, AgentError> {
    let config = &shared.config;
    // Short enough that a new try (a fresh SYN) follows soon after the
    // network comes back; TCP's own retries back off to seconds.
    let connect_within = shared
        .fence()
        .lost_after
        .map_or(Duration::from_secs(5), |bound| {
            (bound / 4).clamp(Duration::from_secs(1), Duration::from_secs(5))
        });
    let connection = match Connection::open_with(
        &config.coordinator,
        &config.cluster_token,
        config.ca.as_ref(),
        connect_within,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            if first {
                tracing::info!("waiting for the coordinator: {e}");
            }
            return Ok(Ended::failed(e.to_string()));
        }
    };
    let ring_host = match &config.ring_host {
        Some(host) => host.clone(),
        None => match discover_ring_host(&config.coordinator).await {
            Ok(host) => host,
            Err(e) => {
                return Ok(Ended::failed(format!(
                    "cannot find this host's address: {e}"
                )));
            }
        },
    };
    let ring_addr = match ring_host.parse::<std::net::IpAddr>() {
        Ok(ip) => std::net::SocketAddr::new(ip, config.ring_port).to_string(),
        Err(_) => format!("{ring_host}:{}", config.ring_port),
    };
    let mut workers = connection.workers();
    let report = shared.report.lock().expect("report lock").clone();
    let (worker_id, worker_secret) = shared.identity.lock().expect("identity lock").clone();
    let request = api::RegisterRequest {
        name: config.name.clone(),
        host: config.host.clone(),
        backend: backend_of(&config.backend)?.into(),
        device: config.device.clone(),
        memory_bytes: config.memory_bytes,
        version: crate::PROTOCOL_VERSION.to_string(),
        ring_addr: ring_addr.clone(),
        worker_id,
        job_id: report.job_id.clone(),
        attempt: report.attempt,
        worker_secret,
        boot_id: crate::server::hosts::boot_id(),
    };
    let asked_at = Instant::now();
    let reply = match workers.register(request).await {
        Ok(reply) => reply.into_inner(),
        Err(status) => {
            return match status.code() {
                tonic::Code::Unauthenticated
                | tonic::Code::PermissionDenied
                | tonic::Code::FailedPrecondition
                | tonic::Code::InvalidArgument => {
                    Err(AgentError::Refused(status.message().to_string()))
                }
                _ => Ok(Ended::failed(status.message().to_string())),
            };
        }
    };
    *shared.identity.lock().expect("identity lock") =
        (reply.worker_id.clone(), reply.worker_secret.clone());
    {
        let mut fence = shared.fence();
        fence.lost_after = (reply.lost_after_ms > 0)
            .then(|| Duration::from_millis(u64::from(reply.lost_after_ms)));
        fence.heard = Some(fence.heard.map_or(asked_at, |h| h.max(asked_at)));
        // Reports of an earlier connection will never be acknowledged.
        fence.sent.clear();
    }
    if first {
        tracing::info!(
            "registered with {} as worker {} ({}), ring at {ring_addr}",
            connection.url(),
            reply.worker_id,
            config.name
        );
        println!(
            "worker {} registered with {}",
            reply.worker_id,
            connection.url()
        );
    }
    let period = Duration::from_millis(u64::from(reply.heartbeat_ms.clamp(100, 60_000)));

    // Reports go out every period, and at once when a rank ends.
    let (reports, outgoing) = mpsc::channel(8);
    reports
        .send(current_report(shared, &reply.worker_id))
        .await
        .expect("the channel is open");
    let sender = tokio::spawn({
        let shared = shared.clone();
        let id = reply.worker_id.clone();
        async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(period) => {}
                    () = shared.changed.notified() => {}
                }
                if reports.send(current_report(&shared, &id)).await.is_err() {
                    return;
                }
            }
        }
    });
    let forwarder = tokio::spawn(outbox::forward(shared.clone(), connection.clone()));
    let result = workers.heartbeat(ReceiverStream::new(outgoing)).await;
    let why = match result {
        Err(status) => status.message().to_string(),
        Ok(response) => {
            let mut orders = response.into_inner();
            let mut watch = tokio::time::interval(FENCE_TICK);
            loop {
                let next = tokio::select! {
                    next = orders.next() => next,
                    _ = watch.tick() => {
                        if let Some(waited) = shared.fence().stuck() {
                            break format!(
                                "no acknowledgement for {:.1} s; trying a fresh connection",
                                waited.as_secs_f64()
                            );
                        }
                        continue;
                    }
                };
                match next {
                    None => break "the coordinator closed the stream".to_string(),
                    Some(Err(status)) => break status.message().to_string(),
                    Some(Ok(order)) => {
                        if order.ack > 0 {
                            shared.fence().acked(order.ack);
                        }
                        obey(shared, &connection, order).await;
                    }
                }
            }
        }
    };
    sender.abort();
    forwarder.abort();
    Ok(Ended { why, was_up: true })
}

fn current_report(shared: &Shared, worker_id: &str) -> api::WorkerReport {
    let r = shared.report.lock().expect("report lock").clone();
    api::WorkerReport {
        worker_id: worker_id.to_string(),
        job_id: r.job_id,
        attempt: r.attempt,
        step: r.step,
        state: r.state.into(),
        error: r.error,
        worker_secret: shared.worker_secret(),
        seq: shared.fence().sending(),
    }
}

/// Carries out one order.
async fn obey(shared: &Arc<Shared>, connection: &Connection, order: api::Order) {
    match order.kind {
        Some(order::Kind::Assign(assignment)) => {
            let mut slot = shared.rank.lock().await;
            if let Some(mut old) = slot.take() {
                old.kill().await;
            }
            *slot = Some(RankProcess::start(
                shared.clone(),
                connection.clone(),
                assignment,
            ));
        }
        Some(order::Kind::Stop(stop)) => {
            let mut slot = shared.rank.lock().await;
            let ours = slot
                .as_ref()
                .is_some_and(|r| r.job_id == stop.job_id && r.attempt == stop.attempt);
            if ours && let Some(mut process) = slot.take() {
                tracing::info!(
                    "stopping rank of job {} attempt {}: {}",
                    stop.job_id,
                    stop.attempt,
                    stop.reason
                );
                process.kill().await;
                let mut report = shared.report.lock().expect("report lock");
                if report.job_id == stop.job_id && report.attempt == stop.attempt {
                    *report = Report {
                        state: RankState::Idle,
                        ..Report::default()
                    };
                }
            }
        }
        Some(order::Kind::Drain(true)) => {
            tracing::info!("draining: this worker's job moves elsewhere and it takes no new one");
        }
        Some(order::Kind::Drain(false)) => {
            tracing::info!("undrained: this worker takes jobs again");
        }
        Some(order::Kind::Preempt(preempt)) => {
            let slot = shared.rank.lock().await;
            let ours = slot
                .as_ref()
                .filter(|r| r.job_id == preempt.job_id && r.attempt == preempt.attempt);
            if let Some(process) = ours {
                tracing::info!(
                    "preempting rank of job {} attempt {}: {}",
                    preempt.job_id,
                    preempt.attempt,
                    preempt.reason
                );
                process.terminate().await;
            }
        }
        None => {}
    }
}
