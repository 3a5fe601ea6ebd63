//! The worker agent (`lorafleet worker`): registers with the coordinator,
//! reports on the heartbeat stream, and runs what it is assigned.
//!
//! Each assignment runs as a child process, one rank of the job's ring:
//! `<program> train SPEC --events --rank R --world N --peers ...` with the
//! attempt's secret in the environment (never on the command line). The
//! child prints one JSON event per line on stdout; the agent forwards them
//! with `ReportEvents` and reports the rank's end (finished, or failed with
//! the last lines of its stderr) in its heartbeats until the next
//! assignment. A stop order kills the child at once; a preempt order (a
//! drain, a resize) sends it SIGTERM, and the ranks stop together at the
//! next step boundary after a checkpoint (exit status
//! [`PREEMPTED_EXIT_CODE`], reported as `preempted`). The child dies with
//! the agent (PR_SET_PDEATHSIG), so a killed worker leaves no rank
//! training on behind it.
//!
//! If the coordinator goes away, the child keeps training and the agent
//! reconnects, registering under its old id with the attempt it runs, so a
//! restarted coordinator finds the job again.
//!
//! Not here: training itself (the child is a `lorafleet train` process),
//! or deciding anything about jobs.

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Notify, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::api::{self, order};
use crate::client::Connection;

/// The environment variable that carries an attempt's ring secret to a rank.
pub const RING_SECRET_ENV: &str = "LORAFLEET_RING_SECRET";

/// The environment variable holding the workers' cluster token. Ranks
/// never inherit it.
pub const CLUSTER_TOKEN_ENV: &str = "LORAFLEET_CLUSTER_TOKEN";

/// The environment variable holding a tenant's token (for clients). Ranks
/// never inherit it either.
pub const TENANT_TOKEN_ENV: &str = "LORAFLEET_TOKEN";

/// The exit status of a rank that stopped when asked (SIGTERM) after
/// committing a checkpoint at a step boundary (BSD's `EX_TEMPFAIL`).
pub const PREEMPTED_EXIT_CODE: i32 = 75;

/// Lines of a failed rank's stderr kept for its error.
const STDERR_TAIL: usize = 12;

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
    /// `host:port` this worker's rank listens on when it trains.
    pub ring_addr: String,
    /// The program started for each rank (`lorafleet`), run as
    /// `<program> train ...`.
    pub program: PathBuf,
    /// Where assigned specs are written.
    pub work_dir: PathBuf,
    /// Extra arguments for every `train` run (e.g. `--ring-timeout 30`).
    pub train_args: Vec<String>,
    /// The only CA trusted for an `https://` coordinator (`--ca`); without
    /// it, the public roots.
    pub ca: Option<crate::client::TrustedCa>,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the coordinator refused this worker: {0}")]
    Refused(String),
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
    /// idle | running | finished | failed | preempted
    state: &'static str,
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
    /// Events waiting to be sent, with the job attempt they belong to.
    outbox: Mutex<VecDeque<(String, u32, api::Event)>>,
    outbox_ready: Notify,
    worker_id: Mutex<String>,
    /// The session secret the coordinator gave with `worker_id`.
    worker_secret: Mutex<String>,
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
            state: "idle",
            ..Report::default()
        }),
        changed: Notify::new(),
        outbox: Mutex::new(VecDeque::new()),
        outbox_ready: Notify::new(),
        worker_id: Mutex::new(String::new()),
        worker_secret: Mutex::new(String::new()),
    });
    let mut rank: Option<RankProcess> = None;
    tokio::pin!(shutdown);
    let mut first = true;
    loop {
        let session = tokio::select! {
            () = &mut shutdown => break,
            result = connect_and_serve(&shared, &mut rank, first) => result,
        };
        first = false;
        match session {
            Err(AgentError::Refused(why)) => {
                if let Some(mut r) = rank.take() {
                    r.kill().await;
                }
                return Err(AgentError::Refused(why));
            }
            Err(other) => return Err(other),
            Ok(why) => {
                tracing::warn!("lost the coordinator ({why}); reconnecting");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
    if let Some(mut r) = rank.take() {
        r.kill().await;
    }
    Ok(())
}

/// One connection: register, then report and obey until the stream ends.
/// Returns why it ended; `Err` only for what reconnecting cannot fix.
async fn connect_and_serve(
    shared: &Arc<Shared>,
    rank: &mut Option<RankProcess>,
    first: bool,
) -> Result<String, AgentError> {
    let config = &shared.config;
    let connection = match Connection::open_with(
        &config.coordinator,
        &config.cluster_token,
        config.ca.as_ref(),
        Duration::from_secs(5),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            if first {
                tracing::info!("waiting for the coordinator: {e}");
            }
            return Ok(e.to_string());
        }
    };
    let mut workers = connection.workers();
    let report = shared.report.lock().expect("report lock").clone();
    let worker_id = shared.worker_id.lock().expect("id lock").clone();
    let request = api::RegisterRequest {
        name: config.name.clone(),
        host: config.host.clone(),
        backend: config.backend.clone(),
        device: config.device.clone(),
        memory_bytes: config.memory_bytes,
        version: crate::PROTOCOL_VERSION.to_string(),
        ring_addr: config.ring_addr.clone(),
        worker_id,
        job_id: report.job_id.clone(),
        attempt: report.attempt,
        worker_secret: shared.worker_secret.lock().expect("secret lock").clone(),
    };
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
                _ => Ok(status.message().to_string()),
            };
        }
    };
    *shared.worker_id.lock().expect("id lock") = reply.worker_id.clone();
    *shared.worker_secret.lock().expect("secret lock") = reply.worker_secret.clone();
    if first {
        tracing::info!(
            "registered with {} as worker {} ({})",
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
    let forwarder = tokio::spawn(forward_events(shared.clone(), connection.clone()));
    let result = workers.heartbeat(ReceiverStream::new(outgoing)).await;
    let why = match result {
        Err(status) => status.message().to_string(),
        Ok(response) => {
            let mut orders = response.into_inner();
            loop {
                match orders.next().await {
                    None => break "the coordinator closed the stream".to_string(),
                    Some(Err(status)) => break status.message().to_string(),
                    Some(Ok(order)) => obey(shared, rank, order).await,
                }
            }
        }
    };
    sender.abort();
    forwarder.abort();
    Ok(why)
}

fn current_report(shared: &Shared, worker_id: &str) -> api::WorkerReport {
    let r = shared.report.lock().expect("report lock").clone();
    api::WorkerReport {
        worker_id: worker_id.to_string(),
        job_id: r.job_id,
        attempt: r.attempt,
        step: r.step,
        state: r.state.to_string(),
        error: r.error,
        worker_secret: shared.worker_secret.lock().expect("secret lock").clone(),
    }
}

/// Carries out one order.
async fn obey(shared: &Arc<Shared>, rank: &mut Option<RankProcess>, order: api::Order) {
    match order.kind {
        Some(order::Kind::Assign(assignment)) => {
            if let Some(mut old) = rank.take() {
                old.kill().await;
            }
            let (job, attempt) = (assignment.job_id.clone(), assignment.attempt);
            match RankProcess::start(shared.clone(), assignment).await {
                Ok(process) => *rank = Some(process),
                Err(error) => {
                    let mut report = shared.report.lock().expect("report lock");
                    *report = Report {
                        job_id: job,
                        attempt,
                        state: "failed",
                        step: 0,
                        error,
                    };
                    drop(report);
                    shared.changed.notify_one();
                }
            }
        }
        Some(order::Kind::Stop(stop)) => {
            let ours = rank
                .as_ref()
                .is_some_and(|r| r.job_id == stop.job_id && r.attempt == stop.attempt);
            if ours && let Some(mut process) = rank.take() {
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
                        state: "idle",
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
            let ours = rank
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

/// A running rank: the child process of one assignment.
struct RankProcess {
    job_id: String,
    attempt: u32,
    child: Arc<tokio::sync::Mutex<Child>>,
    watcher: tokio::task::JoinHandle<()>,
}

impl RankProcess {
    async fn start(shared: Arc<Shared>, a: api::Assignment) -> Result<RankProcess, String> {
        let config = &shared.config;
        let spec_file = config
            .work_dir
            .join(format!("{}-{}-rank{}.yaml", a.job_id, a.attempt, a.rank));
        std::fs::write(&spec_file, &a.spec_yaml)
            .map_err(|e| format!("cannot write {}: {e}", spec_file.display()))?;
        let mut command = Command::new(&config.program);
        command
            .arg("train")
            .arg(&spec_file)
            .arg("--events")
            .arg("--no-output")
            .arg("--job-id")
            .arg(&a.job_id)
            .arg("--tenant")
            .arg(&a.tenant);
        if a.world > 1 {
            command
                .arg("--rank")
                .arg(a.rank.to_string())
                .arg("--world")
                .arg(a.world.to_string())
                .arg("--peers")
                .arg(a.peers.join(","));
        }
        if a.attempt > 1 {
            // Continue from what the last attempt saved, if anything.
            command.arg("--resume");
        }
        command
            .args(&config.train_args)
            .env(RING_SECRET_ENV, &a.secret)
            // A rank needs no coordinator credential: it reports through
            // this agent.
            .env_remove(CLUSTER_TOKEN_ENV)
            .env_remove(TENANT_TOKEN_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        die_with_parent(&mut command);
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", config.program.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        {
            let mut report = shared.report.lock().expect("report lock");
            *report = Report {
                job_id: a.job_id.clone(),
                attempt: a.attempt,
                state: "running",
                step: 0,
                error: String::new(),
            };
        }
        shared.changed.notify_one();
        let worker_id = shared.worker_id.lock().expect("id lock").clone();
        push_event(
            &shared,
            &a.job_id,
            a.attempt,
            "rank.started",
            None,
            format!(
                "rank {} of {} started on worker {}",
                a.rank, a.world, config.name
            ),
            serde_json::json!({
                "rank": a.rank, "world": a.world, "worker_id": worker_id,
                "worker_name": config.name, "host": config.host,
            }),
        );
        let child = Arc::new(tokio::sync::Mutex::new(child));
        let watcher = tokio::spawn(watch_rank(
            shared.clone(),
            child.clone(),
            stdout,
            stderr,
            a.job_id.clone(),
            a.attempt,
            a.rank,
        ));
        Ok(RankProcess {
            job_id: a.job_id,
            attempt: a.attempt,
            child,
            watcher,
        })
    }

    /// Asks the child to stop at its next step boundary (SIGTERM).
    async fn terminate(&self) {
        if let Some(pid) = self.child.lock().await.id() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }

    /// Kills the child and waits for it.
    async fn kill(&mut self) {
        self.watcher.abort();
        let mut child = self.child.lock().await;
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

/// Makes the child get SIGKILL when the agent dies, however it dies.
fn die_with_parent(command: &mut Command) {
    let hook = kill_when_parent_dies();
    // SAFETY: the hook makes only async-signal-safe calls.
    unsafe {
        command.pre_exec(hook);
    }
}

/// A `pre_exec` hook that has the kernel SIGKILL the child once the thread
/// that starts it ends (with its process, however that dies). Start
/// children from a thread that lives as long as the process.
pub fn kill_when_parent_dies() -> impl FnMut() -> std::io::Result<()> + Send + Sync + 'static {
    let parent = std::process::id() as libc::pid_t;
    move || {
        // SAFETY: prctl, getppid and _exit are async-signal-safe.
        unsafe {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
        }
        Ok(())
    }
}

/// Follows a rank's output until it exits, then records how it ended.
async fn watch_rank(
    shared: Arc<Shared>,
    child: Arc<tokio::sync::Mutex<Child>>,
    stdout: tokio::process::ChildStdout,
    stderr: tokio::process::ChildStderr,
    job_id: String,
    attempt: u32,
    rank: u32,
) {
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let errors = tokio::spawn({
        let tail = tail.clone();
        let prefix = format!("[{job_id} rank {rank}]");
        async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("{prefix} {line}");
                let mut tail = tail.lock().expect("tail lock");
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        }
    });
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let kind = value["type"].as_str().unwrap_or("train.log").to_string();
        if let Some(step) = value["step"].as_u64() {
            let mut report = shared.report.lock().expect("report lock");
            if report.job_id == job_id && report.attempt == attempt {
                report.step = report.step.max(step);
            }
        }
        let message = value["message"].as_str().unwrap_or_default().to_string();
        let message = if message.is_empty() {
            describe(&kind, &value)
        } else {
            message
        };
        let level = value["level"].as_str().map(str::to_string);
        push_event(&shared, &job_id, attempt, &kind, level, message, value);
    }
    let _ = errors.await;
    let status = child.lock().await.wait().await;
    let tail: Vec<String> = tail.lock().expect("tail lock").iter().cloned().collect();
    let (state, error, kind, message) = match status {
        Ok(s) if s.success() => (
            "finished",
            String::new(),
            "rank.finished",
            format!("rank {rank} finished"),
        ),
        Ok(s) if s.code() == Some(PREEMPTED_EXIT_CODE) => (
            "preempted",
            String::new(),
            "rank.preempted",
            format!("rank {rank} stopped after a checkpoint, as asked"),
        ),
        Ok(s) => {
            let last = tail
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .cloned()
                .unwrap_or_else(|| format!("exited with {s}"));
            let message = format!("rank {rank} failed ({s}): {last}");
            ("failed", last, "rank.failed", message)
        }
        Err(e) => (
            "failed",
            e.to_string(),
            "rank.failed",
            format!("rank {rank}: {e}"),
        ),
    };
    push_event(
        &shared,
        &job_id,
        attempt,
        kind,
        None,
        message,
        serde_json::json!({"rank": rank, "error": error, "stderr_tail": tail}),
    );
    // The coordinator must have every event (the last checkpoint above
    // all) before it hears that the rank ended.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline && has_pending(&shared, &job_id, attempt) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    {
        let mut report = shared.report.lock().expect("report lock");
        if report.job_id == job_id && report.attempt == attempt {
            report.state = state;
            report.error = error;
        }
    }
    shared.changed.notify_one();
}

/// Whether events of this job attempt are still waiting to be sent.
fn has_pending(shared: &Shared, job_id: &str, attempt: u32) -> bool {
    let outbox = shared.outbox.lock().expect("outbox lock");
    outbox.iter().any(|(j, a, _)| j == job_id && *a == attempt)
}

/// A one-line message for an event the child printed without one.
fn describe(kind: &str, v: &serde_json::Value) -> String {
    match kind {
        "train.step" => format!(
            "step {}/{}: loss {:.4}, {:.0} tokens/s",
            v["step"],
            v["total_steps"],
            v["loss"].as_f64().unwrap_or(f64::NAN),
            v["tokens_per_s"].as_f64().unwrap_or(0.0)
        ),
        "train.eval" => format!(
            "step {}: validation loss {:.4}",
            v["step"],
            v["eval_loss"].as_f64().unwrap_or(f64::NAN)
        ),
        "checkpoint.saved" => format!(
            "checkpoint at step {} saved to {}",
            v["step"],
            v["path"].as_str().unwrap_or("?")
        ),
        "checkpoint.deleted" => format!("checkpoint at step {} deleted (retention)", v["step"]),
        "train.preempted" => format!("stopped at step {} after a checkpoint, as asked", v["step"]),
        "train.finished" => format!(
            "training done: {} steps, train loss {:.4}",
            v["steps"],
            v["train_loss"].as_f64().unwrap_or(f64::NAN)
        ),
        other => other.to_string(),
    }
}

fn push_event(
    shared: &Shared,
    job_id: &str,
    attempt: u32,
    kind: &str,
    level: Option<String>,
    message: String,
    data: serde_json::Value,
) {
    let level = match level.as_deref() {
        Some(l @ ("info" | "warn" | "error")) => l,
        _ if kind.ends_with(".failed") => "error",
        _ => "info",
    };
    let event = api::Event {
        id: 0,
        job_id: job_id.to_string(),
        created_at: 0,
        level: level.to_string(),
        r#type: kind.to_string(),
        message,
        data_json: data.to_string(),
    };
    let mut outbox = shared.outbox.lock().expect("outbox lock");
    // Bounded: a coordinator away for long loses the oldest news, never
    // this process's memory.
    if outbox.len() >= 10_000 {
        outbox.pop_front();
    }
    outbox.push_back((job_id.to_string(), attempt, event));
    drop(outbox);
    shared.outbox_ready.notify_one();
}

/// Sends queued events in batches, one job attempt per call; what fails
/// to go out stays queued for the next connection.
async fn forward_events(shared: Arc<Shared>, connection: Connection) {
    let mut workers = connection.workers();
    loop {
        let batch: Vec<(String, u32, api::Event)> = {
            let outbox = shared.outbox.lock().expect("outbox lock");
            match outbox.front() {
                // Left queued until sent: the rank's end waits for an
                // empty queue.
                Some((job, attempt, _)) => outbox
                    .iter()
                    .take(500)
                    .take_while(|(j, a, _)| j == job && a == attempt)
                    .cloned()
                    .collect(),
                None => Vec::new(),
            }
        };
        if batch.is_empty() {
            shared.outbox_ready.notified().await;
            continue;
        }
        let (job_id, attempt) = (batch[0].0.clone(), batch[0].1);
        let request = api::ReportEventsRequest {
            worker_id: shared.worker_id.lock().expect("id lock").clone(),
            job_id,
            attempt,
            events: batch.iter().map(|(_, _, e)| e.clone()).collect(),
            worker_secret: shared.worker_secret.lock().expect("secret lock").clone(),
        };
        match workers.report_events(request).await {
            Ok(_) => {
                let mut outbox = shared.outbox.lock().expect("outbox lock");
                let sent = batch.len().min(outbox.len());
                outbox.drain(..sent);
            }
            Err(status) => {
                tracing::warn!("cannot report events: {}", status.message());
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
