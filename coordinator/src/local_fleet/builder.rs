//! [`LocalFleetBuilder`]: how a [`LocalFleet`] starts its processes (the
//! binary, address, tokens, flags, environment, log and work folders,
//! process groups, a launcher), and the spawning and log files every
//! process shares.
//!
//! Not here: the running fleet (`super`), its workers (`super::workers`).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use super::{Launcher, LocalFleet, LocalFleetError, Role};
use crate::agent::kill_when_parent_dies;

/// How a [`LocalFleet`] starts its processes; [`LocalFleetBuilder::start`]
/// starts the coordinator.
pub struct LocalFleetBuilder {
    pub(super) exe: PathBuf,
    pub(super) state: PathBuf,
    pub(super) listen: String,
    pub(super) tenant_token: String,
    pub(super) cluster_token: String,
    pub(super) serve_args: Vec<OsString>,
    pub(super) worker_args: Vec<OsString>,
    pub(super) env: Vec<(OsString, OsString)>,
    pub(super) logs: Option<PathBuf>,
    pub(super) work_dirs: Option<PathBuf>,
    pub(super) worker_groups: bool,
    pub(super) die_with_parent: bool,
    pub(super) launcher: Option<Launcher>,
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

impl LocalFleetBuilder {
    pub(super) fn command(&self, role: Role<'_>) -> Command {
        match &self.launcher {
            Some(launcher) => launcher(&self.exe, role),
            None => Command::new(&self.exe),
        }
    }

    pub(super) fn spawn(&self, mut command: Command, what: &str) -> Result<Child, LocalFleetError> {
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
    pub(super) fn log_file(
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
