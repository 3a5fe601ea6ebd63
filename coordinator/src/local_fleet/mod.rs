//! [`LocalFleet`]: a coordinator (`lorafleet serve`) and its workers
//! (`lorafleet worker`) as child processes of a given `lorafleet` binary on
//! this machine. It starts the coordinator and reads its URL from its
//! readiness line (`listening on URL`: the one parser of it), starts,
//! kills, freezes and respawns workers, starts the coordinator again on
//! the same address and state file, and stops them all when dropped:
//! SIGTERM, then SIGKILL after 5 s.
//!
//! Its callers are `lorafleet run` and `bench fleet` (on 127.0.0.1, logs in
//! a temporary folder), `lorafleet chaos` (each worker in a process group
//! of its own, so a signal reaches the `train` ranks it started too; with
//! `--hosts`, every process wrapped to run on a host of a network lab by
//! [`LocalFleetBuilder::launcher`]) and the binary's integration tests.
//!
//! Not here: calling the coordinator (`crate::client`), what the processes
//! do (`crate::server`, `crate::agent`), deciding faults.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::agent::{CLUSTER_TOKEN_ENV, TENANT_TOKEN_ENV};

mod builder;
mod workers;

pub use builder::LocalFleetBuilder;
use workers::WorkerSlot;

/// What `serve` prints on stdout, before its URL, once it accepts calls.
pub const READINESS_PREFIX: &str = "listening on ";

/// How long stopping waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The process of the fleet a command is made for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role<'a> {
    Coordinator,
    /// The worker of this name.
    Worker(&'a str),
}

/// Makes the command that runs the binary as a role (arguments come after).
type Launcher = Box<dyn Fn(&Path, Role<'_>) -> Command + Send>;

/// Why a fleet process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalFleetError {
    /// The io error is part of the message, so that it is printed once.
    #[error("cannot start {what}: {error}")]
    Spawn { what: String, error: std::io::Error },
    #[error("cannot create {}: {error}", path.display())]
    Log {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the coordinator did not start{}", see_log(log))]
    NotReady { log: Option<PathBuf> },
    #[error("the coordinator started again on {found}, not on {expected}")]
    Moved { expected: String, found: String },
}

fn see_log(log: &Option<PathBuf>) -> String {
    log.as_ref()
        .map(|path| format!("; see {}", path.display()))
        .unwrap_or_default()
}

/// The URL in a line of `serve`'s stdout, if it is the readiness line.
pub fn readiness_url(line: &str) -> Option<&str> {
    line.strip_prefix(READINESS_PREFIX)
}

/// A coordinator and its workers, running; stopped when dropped.
pub struct LocalFleet {
    config: LocalFleetBuilder,
    url: String,
    coordinator: Option<Child>,
    workers: Vec<WorkerSlot>,
}

impl LocalFleet {
    /// A fleet of the `lorafleet` binary at `exe` with its state in the
    /// SQLite file `state`.
    pub fn builder(exe: impl Into<PathBuf>, state: impl Into<PathBuf>) -> LocalFleetBuilder {
        LocalFleetBuilder {
            exe: exe.into(),
            state: state.into(),
            listen: "127.0.0.1:0".into(),
            tenant_token: crate::store::new_token(),
            cluster_token: crate::store::new_token(),
            serve_args: Vec::new(),
            worker_args: Vec::new(),
            env: Vec::new(),
            logs: None,
            work_dirs: None,
            worker_groups: false,
            die_with_parent: false,
            launcher: None,
        }
    }

    /// The coordinator's URL, as it printed it.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn tenant_token(&self) -> &str {
        &self.config.tenant_token
    }

    pub fn cluster_token(&self) -> &str {
        &self.config.cluster_token
    }

    /// The coordinator's SQLite file.
    pub fn state(&self) -> &Path {
        &self.config.state
    }

    /// The coordinator's process id, while it runs.
    pub fn coordinator_pid(&self) -> Option<u32> {
        self.coordinator.as_ref().map(Child::id)
    }

    /// How the coordinator ended, if it has (it is reaped).
    pub fn coordinator_exit(&mut self) -> Option<ExitStatus> {
        self.coordinator.as_mut()?.try_wait().ok().flatten()
    }

    /// Sends `signal` to the coordinator.
    pub fn signal_coordinator(&mut self, signal: libc::c_int) {
        if let Some(child) = &mut self.coordinator
            && matches!(child.try_wait(), Ok(None))
        {
            signal_process(child, signal);
        }
    }

    /// SIGKILL to the coordinator; waits until it is gone.
    pub fn kill_coordinator(&mut self) {
        if let Some(child) = &mut self.coordinator {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the coordinator again on its address and state file (killing
    /// it first if it still runs). Workers and clients reconnect to it.
    pub fn restart_coordinator(&mut self) -> Result<(), LocalFleetError> {
        self.kill_coordinator();
        let address = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, rest)| rest)
            .to_string();
        let found = self.spawn_coordinator(&address, true)?;
        if found != self.url {
            return Err(LocalFleetError::Moved {
                expected: self.url.clone(),
                found,
            });
        }
        Ok(())
    }

    /// The log files written so far, the coordinator's first (none without
    /// [`LocalFleetBuilder::logs_in`]).
    pub fn logs(&self) -> Vec<PathBuf> {
        let Some(folder) = &self.config.logs else {
            return Vec::new();
        };
        let mut logs = vec![
            folder.join("coordinator.log"),
            folder.join("coordinator.stdout.log"),
        ];
        for w in &self.workers {
            logs.extend((1..=w.starts).map(|n| folder.join(format!("{}.{n}.log", w.name))));
        }
        logs
    }

    /// The last `lines` lines of every log that has any.
    pub fn log_tails(&self, lines: usize) -> Vec<(PathBuf, Vec<String>)> {
        self.logs()
            .into_iter()
            .filter_map(|path| {
                let text = std::fs::read_to_string(&path).ok()?;
                let all: Vec<&str> = text.lines().collect();
                let tail = &all[all.len().saturating_sub(lines)..];
                let tail: Vec<String> = tail.iter().map(|l| l.to_string()).collect();
                (!tail.is_empty()).then_some((path, tail))
            })
            .collect()
    }

    /// Stops the workers (thawed first so they hear it), then the
    /// coordinator: SIGTERM, and SIGKILL to whatever is left after 5 s.
    pub fn stop(&mut self) {
        let groups = self.config.worker_groups;
        let mut running = Vec::new();
        for worker in &mut self.workers {
            if let Some(child) = worker.process.take() {
                if groups {
                    signal_group(&child, libc::SIGCONT);
                    signal_group(&child, libc::SIGTERM);
                } else {
                    signal_process(&child, libc::SIGCONT);
                    signal_process(&child, libc::SIGTERM);
                }
                running.push(child);
            }
            worker.frozen = false;
        }
        let deadline = Instant::now() + STOP_GRACE;
        for child in &mut running {
            wait_until(child, deadline);
            if groups {
                // The agent is gone; anything left in its group goes too.
                signal_group(child, libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut child) = self.coordinator.take() {
            if matches!(child.try_wait(), Ok(None)) {
                signal_process(&child, libc::SIGTERM);
            }
            wait_until(&mut child, Instant::now() + STOP_GRACE);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts `serve` on `listen` and returns the URL of its readiness line;
    /// `restart` appends to the coordinator's log instead of creating it.
    fn spawn_coordinator(
        &mut self,
        listen: &str,
        restart: bool,
    ) -> Result<String, LocalFleetError> {
        let config = &self.config;
        let mut command = config.command(Role::Coordinator);
        command
            .args(["serve", "--listen", listen, "--state"])
            .arg(&config.state)
            .args(&config.serve_args)
            .envs(config.env.iter().map(|(k, v)| (k, v)))
            .env(TENANT_TOKEN_ENV, &config.tenant_token)
            .env(CLUSTER_TOKEN_ENV, &config.cluster_token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let (log, stderr) = match config.log_file("coordinator.log", restart)? {
            Some((path, file)) => (Some(path), Stdio::from(file)),
            None => (None, Stdio::null()),
        };
        command.stderr(stderr);
        let rest = config.log_file("coordinator.stdout.log", restart)?;
        let mut child = config.spawn(command, "the coordinator")?;
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        self.coordinator = Some(child);
        let url = (&mut stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| readiness_url(&line).map(str::to_string));
        // The rest of its stdout goes on (a closed pipe would fail its next
        // print).
        std::thread::spawn(move || match rest {
            Some((_, mut file)) => std::io::copy(&mut stdout, &mut file),
            None => std::io::copy(&mut stdout, &mut std::io::sink()),
        });
        url.ok_or(LocalFleetError::NotReady { log })
    }
}

impl Drop for LocalFleet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends `signal` to `child`.
fn signal_process(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) on a child we started and have not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}

/// Sends `signal` to the process group `child` leads.
fn signal_group(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) on the group of a child we started in a group of its
    // own (process_group(0)); its id is the group's id.
    unsafe {
        libc::kill(-(child.id() as libc::pid_t), signal);
    }
}

fn wait_until(child: &mut Child, deadline: Instant) {
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readiness_line_gives_the_url() {
        assert_eq!(
            readiness_url("listening on http://127.0.0.1:4567"),
            Some("http://127.0.0.1:4567")
        );
        assert_eq!(readiness_url("starting up"), None);
    }
}
