//! The workers of a [`LocalFleet`]: adding, respawning, killing, freezing
//! and thawing them by slot, and noticing the ones that exited.
//!
//! Not here: the coordinator, stopping the fleet (`super`).

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::process::{Child, ExitStatus, Stdio};

use super::{LocalFleet, LocalFleetError, Role, signal_group, signal_process};
use crate::agent::CLUSTER_TOKEN_ENV;

/// One worker of the fleet: its name, flags and the process now running
/// under that name, if any.
pub(super) struct WorkerSlot {
    pub(super) name: String,
    pub(super) args: Vec<OsString>,
    /// `None` while its last process is dead and not replaced.
    pub(super) process: Option<Child>,
    /// Processes started under this name so far.
    pub(super) starts: u32,
    pub(super) frozen: bool,
}

impl LocalFleet {
    /// Sets an environment variable for every process started from now
    /// on (workers added or respawned, a restarted coordinator).
    pub fn set_env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) {
        let (key, value) = (key.as_ref().to_owned(), value.as_ref().to_owned());
        self.config.env.retain(|(k, _)| *k != key);
        self.config.env.push((key, value));
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
}
