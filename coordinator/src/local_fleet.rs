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

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::agent::{CLUSTER_TOKEN_ENV, TENANT_TOKEN_ENV, kill_when_parent_dies};

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

/// How a [`LocalFleet`] starts its processes; [`LocalFleetBuilder::start`]
/// starts the coordinator.
pub struct LocalFleetBuilder {
    exe: PathBuf,
    state: PathBuf,
    listen: String,
    tenant_token: String,
    cluster_token: String,
    serve_args: Vec<OsString>,
    worker_args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    logs: Option<PathBuf>,
    work_dirs: Option<PathBuf>,
    worker_groups: bool,
    die_with_parent: bool,
    launcher: Option<Launcher>,
}

impl LocalFleetBuilder {
    /// `serve` listens on this address (default `127.0.0.1:0`).
    pub fn listen(mut self, address: impl Into<String>) -> Self {
        self.listen = address.into();
        self
    }

    /// The development tenant's token (`LORAFLEET_TOKEN` of `serve`;
    /// default: a fresh one).
    pub fn tenant_token(mut self, token: impl Into<String>) -> Self {
        self.tenant_token = token.into();
        self
    }

    /// The workers' cluster token (default: a fresh one).
    pub fn cluster_token(mut self, token: impl Into<String>) -> Self {
        self.cluster_token = token.into();
        self
    }

    /// More flags for `serve` (`--grace`, `--lost-after`, `--config`, ...).
    pub fn serve_args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.serve_args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// More flags for every `worker` (`--backend`, `--ring-timeout`, ...).
    pub fn worker_args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.worker_args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// An environment variable for every process. Workers do not inherit
    /// `LORAFLEET_CA` (the fleet's coordinator is its own); set it here for
    /// one that serves TLS.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Output into log files in `folder`: `coordinator.log` (its stderr,
    /// appended to by restarts), `coordinator.stdout.log` (its stdout after
    /// the readiness line), `{worker}.{n}.log` (the n-th process of a
    /// worker). Without it, all output is discarded.
    pub fn logs_in(mut self, folder: impl Into<PathBuf>) -> Self {
        self.logs = Some(folder.into());
        self
    }

    /// Gives the n-th process of each worker `--work-dir folder/{worker}.{n}`.
    pub fn work_dirs_in(mut self, folder: impl Into<PathBuf>) -> Self {
        self.work_dirs = Some(folder.into());
        self
    }

    /// Starts each worker in a process group of its own; kills, freezes and
    /// stops then signal the whole group (the agent and its ranks).
    pub fn worker_process_groups(mut self) -> Self {
        self.worker_groups = true;
        self
    }

    /// Has the kernel SIGKILL every process when the thread that started it
    /// ends (this process killed with SIGKILL included). Start them from a
    /// thread that lives as long as the fleet.
    pub fn die_with_parent(mut self) -> Self {
        self.die_with_parent = true;
        self
    }

    /// Makes each process's command (the binary's path, a role) instead of
    /// `Command::new(exe)`: a wrapper such as a network namespace's, or a
    /// role's own environment. The fleet adds the arguments after.
    pub fn launcher(
        mut self,
        launcher: impl Fn(&Path, Role<'_>) -> Command + Send + 'static,
    ) -> Self {
        self.launcher = Some(Box::new(launcher));
        self
    }

    /// Starts the coordinator and waits for its readiness line.
    pub fn start(self) -> Result<LocalFleet, LocalFleetError> {
        let listen = self.listen.clone();
        let mut fleet = LocalFleet {
            config: self,
            url: String::new(),
            coordinator: None,
            workers: Vec::new(),
        };
        fleet.url = fleet.spawn_coordinator(&listen, false)?;
        Ok(fleet)
    }
}

/// A coordinator and its workers, running; stopped when dropped.
pub struct LocalFleet {
    config: LocalFleetBuilder,
    url: String,
    coordinator: Option<Child>,
    workers: Vec<WorkerSlot>,
}

/// One worker of the fleet: its name, flags and the process now running
/// under that name, if any.
struct WorkerSlot {
    name: String,
    args: Vec<OsString>,
    /// `None` while its last process is dead and not replaced.
    process: Option<Child>,
    /// Processes started under this name so far.
    starts: u32,
    frozen: bool,
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

    /// Adds a worker named `name`, with `args` after the fleet's worker
    /// flags, and starts it; returns its slot.
    pub fn add_worker<S: AsRef<OsStr>>(
        &mut self,
        name: &str,
        args: impl IntoIterator<Item = S>,
    ) -> Result<usize, LocalFleetError> {
        self.workers.push(WorkerSlot {
            name: name.to_string(),
            args: args.into_iter().map(|a| a.as_ref().to_owned()).collect(),
            process: None,
            starts: 0,
            frozen: false,
        });
        let slot = self.workers.len() - 1;
        self.respawn_worker(slot)?;
        Ok(slot)
    }

    /// Starts a new process in slot `slot` (killing the one there, if any),
    /// with a log file and work folder of its own.
    pub fn respawn_worker(&mut self, slot: usize) -> Result<(), LocalFleetError> {
        self.kill_worker(slot);
        let start = self.workers[slot].starts + 1;
        let name = self.workers[slot].name.clone();
        let config = &self.config;
        let mut command = config.command(Role::Worker(&name));
        command.args(["worker", "--coordinator", &self.url, "--name", &name]);
        command
            .args(&config.worker_args)
            .args(&self.workers[slot].args);
        if let Some(folder) = &config.work_dirs {
            command
                .arg("--work-dir")
                .arg(folder.join(format!("{name}.{start}")));
        }
        // Its coordinator is this fleet's own: a CA meant for another
        // would make the worker refuse it.
        command.env_remove("LORAFLEET_CA");
        command.envs(config.env.iter().map(|(k, v)| (k, v)));
        command.env(CLUSTER_TOKEN_ENV, &config.cluster_token);
        let (stdout, stderr) = match config.log_file(&format!("{name}.{start}.log"), false)? {
            Some((path, file)) => {
                let copy = file
                    .try_clone()
                    .map_err(|error| LocalFleetError::Log { path, error })?;
                (Stdio::from(copy), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        if config.worker_groups {
            command.process_group(0);
        }
        let child = config.spawn(command, &format!("worker {name}"))?;
        let worker = &mut self.workers[slot];
        worker.process = Some(child);
        worker.starts = start;
        Ok(())
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// The workers' names, as the coordinator knows them, by slot.
    pub fn worker_names(&self) -> Vec<String> {
        self.workers.iter().map(|w| w.name.clone()).collect()
    }

    pub fn worker_name(&self, slot: usize) -> &str {
        &self.workers[slot].name
    }

    /// Whether slot `slot` has a process that is not frozen.
    pub fn worker_running(&self, slot: usize) -> bool {
        let worker = &self.workers[slot];
        worker.process.is_some() && !worker.frozen
    }

    /// SIGKILL to slot `slot`'s process (its group, with process groups);
    /// the slot is empty until [`LocalFleet::respawn_worker`].
    pub fn kill_worker(&mut self, slot: usize) {
        let groups = self.config.worker_groups;
        let worker = &mut self.workers[slot];
        if let Some(mut child) = worker.process.take() {
            if groups {
                signal_group(&child, libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        worker.frozen = false;
    }

    /// SIGSTOP to slot `slot`'s process (or group).
    pub fn freeze_worker(&mut self, slot: usize) {
        self.signal_worker(slot, libc::SIGSTOP);
        if self.workers[slot].process.is_some() {
            self.workers[slot].frozen = true;
        }
    }

    /// SIGCONT to slot `slot`'s process (or group).
    pub fn thaw_worker(&mut self, slot: usize) {
        self.signal_worker(slot, libc::SIGCONT);
        self.workers[slot].frozen = false;
    }

    fn signal_worker(&self, slot: usize, signal: libc::c_int) {
        if let Some(child) = &self.workers[slot].process {
            if self.config.worker_groups {
                signal_group(child, signal);
            } else {
                signal_process(child, signal);
            }
        }
    }

    /// Slots whose process exited on its own since the last call, with how
    /// (reaped; the slot is empty).
    pub fn exited_workers(&mut self) -> Vec<(usize, ExitStatus)> {
        let mut gone = Vec::new();
        for (slot, worker) in self.workers.iter_mut().enumerate() {
            if let Some(child) = &mut worker.process
                && let Ok(Some(status)) = child.try_wait()
            {
                gone.push((slot, status));
                worker.process = None;
            }
        }
        gone
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

impl LocalFleetBuilder {
    fn command(&self, role: Role<'_>) -> Command {
        match &self.launcher {
            Some(launcher) => launcher(&self.exe, role),
            None => Command::new(&self.exe),
        }
    }

    fn spawn(&self, mut command: Command, what: &str) -> Result<Child, LocalFleetError> {
        if self.die_with_parent {
            let hook = kill_when_parent_dies();
            // SAFETY: the hook makes only async-signal-safe calls.
            unsafe {
                command.pre_exec(hook);
            }
        }
        command.spawn().map_err(|error| LocalFleetError::Spawn {
            what: what.to_string(),
            error,
        })
    }

    /// Log file `name` in the logs folder (created, or opened to append),
    /// `None` without one.
    fn log_file(
        &self,
        name: &str,
        append: bool,
    ) -> Result<Option<(PathBuf, File)>, LocalFleetError> {
        let Some(folder) = &self.logs else {
            return Ok(None);
        };
        let path = folder.join(name);
        let file = if append {
            File::options().append(true).create(true).open(&path)
        } else {
            File::create(&path)
        };
        match file {
            Ok(file) => Ok(Some((path, file))),
            Err(error) => Err(LocalFleetError::Log { path, error }),
        }
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
