//! One rank of an assignment: its inputs fetched, then the child process
//! the [`RankLauncher`](super::RankLauncher) builds, with the attempt's
//! secret in the environment (never on the command line), its event lines
//! ([`JobEvent`]) forwarded, its end reported.
//!
//! A stop order or a fence kills the child at once; a preempt order sends
//! it SIGTERM, and the ranks stop together at the next step boundary after
//! a checkpoint (exit status [`PREEMPTED_EXIT_CODE`], reported as
//! `preempted`). The child dies with the agent (PR_SET_PDEATHSIG), so a
//! killed worker leaves no rank training on behind it.
//!
//! Not here: training itself, the connection (`agent`), the input cache
//! (`inputs`).

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::api::{self, RankState};
use crate::client::Connection;

use job::JobEvent;
use job::event::RankEnd;
use job::recipe::PREEMPTED_EXIT_CODE;
use trainer::collective::SECRET_ENV;

use super::launcher::RankLaunch;
use super::{CLUSTER_TOKEN_ENV, Report, Shared, TENANT_TOKEN_ENV, inputs};

/// Lines of a failed rank's stderr kept for its error.
const STDERR_TAIL: usize = 12;

/// A rank: fetching its inputs, then its child process.
pub(super) struct RankProcess {
    pub job_id: String,
    pub attempt: u32,
    child: Arc<tokio::sync::Mutex<Option<Child>>>,
    /// Set by a preempt order that came before the child started.
    terminate_asked: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RankProcess {
    /// Starts assignment `a`: reports it running at once, fetches its
    /// inputs over `connection`, then starts the child and follows it.
    pub(super) fn start(
        shared: Arc<Shared>,
        connection: Connection,
        a: api::Assignment,
    ) -> RankProcess {
        {
            let mut report = shared.report.lock().expect("report lock");
            *report = Report {
                job_id: a.job_id.clone(),
                attempt: a.attempt,
                state: RankState::Running,
                step: 0,
                error: String::new(),
            };
        }
        shared.changed.notify_one();
        let child = Arc::new(tokio::sync::Mutex::new(None));
        let terminate_asked = Arc::new(AtomicBool::new(false));
        let (job_id, attempt) = (a.job_id.clone(), a.attempt);
        let task = tokio::spawn(run_rank(
            shared,
            connection,
            a,
            child.clone(),
            terminate_asked.clone(),
        ));
        RankProcess {
            job_id,
            attempt,
            child,
            terminate_asked,
            task,
        }
    }

    /// Asks the child to stop at its next step boundary (SIGTERM); one
    /// that has not started yet gets it as it starts.
    pub(super) async fn terminate(&self) {
        self.terminate_asked.store(true, Ordering::SeqCst);
        if let Some(child) = self.child.lock().await.as_ref() {
            sigterm(child);
        }
    }

    /// Kills the child (or stops fetching) and waits for it.
    pub(super) async fn kill(&mut self) {
        self.task.abort();
        let mut child = self.child.lock().await;
        if let Some(child) = child.as_mut() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

fn sigterm(child: &Child) {
    if let Some(pid) = child.id() {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
}

/// A rank's whole life: inputs, child, events, end.
async fn run_rank(
    shared: Arc<Shared>,
    connection: Connection,
    a: api::Assignment,
    slot: Arc<tokio::sync::Mutex<Option<Child>>>,
    terminate_asked: Arc<AtomicBool>,
) {
    let config = &shared.config;
    let spec_yaml = match inputs::prepare(&shared, &connection, &a).await {
        Ok(spec) => spec,
        Err(error) => return not_started(&shared, &a, error).await,
    };
    let spec_file = config
        .work_dir
        .join(format!("{}-{}-rank{}.yaml", a.job_id, a.attempt, a.rank));
    if let Err(e) = std::fs::write(&spec_file, &spec_yaml) {
        let error = format!("cannot write {}: {e}", spec_file.display());
        return not_started(&shared, &a, error).await;
    }
    let launch = RankLaunch {
        spec_file: &spec_file,
        job_id: &a.job_id,
        tenant: &a.tenant,
        attempt: a.attempt,
        rank: a.rank,
        world: a.world,
        peers: &a.peers,
        // Continue from what the last attempt saved, if anything.
        resume: a.attempt > 1,
    };
    let mut command = config.launcher.command(&launch);
    command
        .env(SECRET_ENV, &a.secret)
        // A rank needs no coordinator credential: it reports through
        // this agent.
        .env_remove(CLUSTER_TOKEN_ENV)
        .env_remove(TENANT_TOKEN_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    die_with_parent(&mut command);
    let (stdout, stderr) = {
        let mut slot = slot.lock().await;
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                drop(slot);
                let error = format!("cannot start {}: {e}", config.launcher.describe());
                return not_started(&shared, &a, error).await;
            }
        };
        if terminate_asked.load(Ordering::SeqCst) {
            sigterm(&child);
        }
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        *slot = Some(child);
        (stdout, stderr)
    };
    shared.outbox.push(
        &a.job_id,
        a.attempt,
        &JobEvent::RankStarted {
            rank: a.rank,
            world: a.world,
            worker_id: shared.worker_id(),
            worker_name: config.name.clone(),
            host: config.host.clone(),
        },
    );
    watch_rank(
        shared.clone(),
        slot,
        stdout,
        stderr,
        a.job_id.clone(),
        a.attempt,
        a.rank,
    )
    .await;
}

/// Records that the rank of `a` could not start, and why.
async fn not_started(shared: &Shared, a: &api::Assignment, error: String) {
    let event = JobEvent::RankFailed(RankEnd {
        rank: a.rank,
        error: format!("could not start: {error}"),
        stderr_tail: Vec::new(),
    });
    end_rank(
        shared,
        &a.job_id,
        a.attempt,
        RankState::Failed,
        error,
        &event,
    )
    .await;
}

/// Records how a rank ended: its last event, then (once the coordinator
/// has every event of the attempt, the last checkpoint above all) the
/// state its heartbeats report.
pub(super) async fn end_rank(
    shared: &Shared,
    job_id: &str,
    attempt: u32,
    state: RankState,
    error: String,
    event: &JobEvent,
) {
    shared.outbox.push(job_id, attempt, event);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline && shared.outbox.has_pending(job_id, attempt) {
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
    child: Arc<tokio::sync::Mutex<Option<Child>>>,
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
        // Anything else a rank prints is not news.
        let Ok(event) = JobEvent::from_line(&line) else {
            continue;
        };
        if let Some(step) = event.step() {
            let mut report = shared.report.lock().expect("report lock");
            if report.job_id == job_id && report.attempt == attempt {
                report.step = report.step.max(step);
            }
        }
        shared.outbox.push(&job_id, attempt, &event);
    }
    let _ = errors.await;
    let status = match child.lock().await.as_mut() {
        Some(child) => child.wait().await,
        None => return,
    };
    let tail: Vec<String> = tail.lock().expect("tail lock").iter().cloned().collect();
    let end = |error: String| RankEnd {
        rank,
        error,
        stderr_tail: tail.clone(),
    };
    let (state, event) = match status {
        Ok(s) if s.success() => (
            RankState::Finished,
            JobEvent::RankFinished(end(String::new())),
        ),
        Ok(s) if s.code() == Some(PREEMPTED_EXIT_CODE) => (
            RankState::Preempted,
            JobEvent::RankPreempted(end(String::new())),
        ),
        Ok(s) => {
            let last = tail
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .cloned()
                .unwrap_or_else(|| format!("exited with {s}"));
            (RankState::Failed, JobEvent::RankFailed(end(last)))
        }
        Err(e) => (RankState::Failed, JobEvent::RankFailed(end(e.to_string()))),
    };
    let error = match &event {
        JobEvent::RankFailed(end) => end.error.clone(),
        _ => String::new(),
    };
    end_rank(&shared, &job_id, attempt, state, error, &event).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::agent::{AgentConfig, FenceClock, Outbox, RankLauncher};

    /// A rank that is a shell script.
    #[derive(Debug)]
    struct Script(String);

    impl RankLauncher for Script {
        fn command(&self, _: &RankLaunch<'_>) -> Command {
            let mut command = Command::new("sh");
            command.arg("-c").arg(&self.0);
            command
        }

        fn describe(&self) -> String {
            "sh".into()
        }
    }

    fn shared(script: String) -> Arc<Shared> {
        Arc::new(Shared {
            config: AgentConfig {
                coordinator: "http://127.0.0.1:9".into(),
                cluster_token: String::new(),
                name: "w".into(),
                host: "h".into(),
                backend: "cpu".into(),
                device: "cpu".into(),
                memory_bytes: 0,
                ring_host: None,
                ring_port: 0,
                launcher: Arc::new(Script(script)),
                work_dir: std::env::temp_dir(),
                ca: None,
            },
            report: Mutex::new(Report {
                job_id: "j".into(),
                attempt: 1,
                state: RankState::Running,
                ..Report::default()
            }),
            changed: tokio::sync::Notify::new(),
            outbox: Outbox::default(),
            identity: Mutex::new(("w-1".into(), String::new())),
            rank: tokio::sync::Mutex::new(None),
            fence: Mutex::new(FenceClock::default()),
        })
    }

    /// Runs `script` as rank 0 of attempt 1 of job `j` until it ends;
    /// returns the events it forwarded and the state reported.
    async fn run_script(script: &str) -> (Vec<api::Event>, RankState, String) {
        let shared = shared(script.to_string());
        let launch = RankLaunch {
            spec_file: Path::new("spec.yaml"),
            job_id: "j",
            tenant: "t",
            attempt: 1,
            rank: 0,
            world: 1,
            peers: &[],
            resume: false,
        };
        let mut command = shared.config.launcher.command(&launch);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("sh runs");
        let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let slot = Arc::new(tokio::sync::Mutex::new(Some(child)));
        // The coordinator's side: take events as they come.
        let drained = Arc::new(Mutex::new(Vec::new()));
        let drain = tokio::spawn({
            let (shared, drained) = (shared.clone(), drained.clone());
            async move {
                loop {
                    let batch = shared.outbox.drain();
                    drained.lock().unwrap().extend(batch);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        watch_rank(shared.clone(), slot, stdout, stderr, "j".into(), 1, 0).await;
        drain.abort();
        let mut events = drained.lock().unwrap().clone();
        events.extend(shared.outbox.drain());
        let report = shared.report.lock().unwrap().clone();
        (events, report.state, report.error)
    }

    /// A validation pass at `step`, as a rank prints it.
    fn eval_line(step: usize) -> String {
        JobEvent::TrainEval(trainer::train::EvalMetrics {
            step,
            eval_loss: 1.0,
            target_tokens: 8,
        })
        .to_line()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn event_lines_are_forwarded_other_lines_dropped_and_the_exit_status_is_the_state() {
        let script = format!(
            "echo '{}'; echo 'not an event'; echo '{{\"type\": \"job.succeeded\"}}'; echo oops >&2; exit 75",
            eval_line(3)
        );
        let (events, state, _) = run_script(&script).await;
        let kinds: Vec<&str> = events.iter().map(|e| e.r#type.as_str()).collect();
        assert_eq!(kinds, ["train.eval", "rank.preempted"], "{events:?}");
        assert_eq!(state, RankState::Preempted);
        let step: JobEvent = JobEvent::from_data(
            &events[0].r#type,
            &serde_json::from_str(&events[0].data_json).unwrap(),
        )
        .unwrap();
        assert_eq!(step.step(), Some(3));
        assert_eq!(events[0].message, "step 3: validation loss 1.0000");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_rank_reports_the_last_line_of_its_stderr() {
        let script = format!(
            "echo '{}'; echo 'loading' >&2; echo 'disk full' >&2; echo >&2; exit 3",
            eval_line(1)
        );
        let (events, state, error) = run_script(&script).await;
        assert_eq!(state, RankState::Failed);
        assert_eq!(error, "disk full");
        let last = events.last().unwrap();
        assert_eq!(last.r#type, "rank.failed");
        assert_eq!(last.level, "error");
        let data: serde_json::Value = serde_json::from_str(&last.data_json).unwrap();
        assert_eq!(
            data["stderr_tail"],
            serde_json::json!(["loading", "disk full", ""])
        );
    }
}
