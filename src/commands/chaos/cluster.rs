//! [`ChaosCluster`]: the processes a chaos run starts on 127.0.0.1 (or,
//! with `--hosts`, each on a host of a network lab, `hosts`) and the
//! faults it does to them. A coordinator (`serve`) with its state in the
//! run's folder, and worker slots, each holding one `worker` process in a
//! process group of its own, so that a signal to the group reaches the
//! agent and the `train` rank it started, as a dead or frozen machine
//! would. Every process writes its output to a log file in the folder.
//! Everything is stopped when the cluster is dropped, frozen groups
//! included. On the lab a worker can also be cut off the network
//! ([`ChaosCluster::partition`]) and let back on ([`ChaosCluster::heal`]).
//!
//! Starting, signalling and stopping the processes is
//! `coordinator::local_fleet::LocalFleet`'s; this module sets it up for
//! chaos and adds the lab. Not here: when faults happen (`plan`, `drive`),
//! or talking to the coordinator.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use coordinator::local_fleet::LocalFleet;

use super::hosts::HostLab;

/// How the coordinator and workers are set up.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub workers: usize,
    /// The coordinator's `--lost-after`: seconds of silence after which a
    /// worker is lost.
    pub detection_bound: f64,
    /// The coordinator's `--restart-backoff`.
    pub restart_backoff: f64,
    /// The workers' `--ring-timeout`.
    pub ring_timeout: f64,
    /// Each process on a host of its own in a network lab.
    pub hosts: bool,
}

/// A coordinator and its worker slots (a [`LocalFleet`] whose workers are
/// process groups), and the network lab they run on with `--hosts`.
pub struct ChaosCluster {
    pub url: String,
    /// The development tenant's token.
    pub token: String,
    dir: PathBuf,
    /// The processes; dropped (stopped) before the lab.
    fleet: LocalFleet,
    /// Slots cut off the network (on the lab).
    cut: Vec<bool>,
    /// The network lab, with `--hosts`.
    lab: Option<HostLab>,
}

impl ChaosCluster {
    /// Starts the coordinator, waits for its readiness line, and starts the
    /// workers. Logs, state and work folders go under `dir`.
    pub fn start(dir: &Path, options: ClusterOptions) -> anyhow::Result<ChaosCluster> {
        let exe = std::env::current_exe().context("cannot find this program's path")?;
        std::fs::create_dir_all(dir.join("work"))
            .with_context(|| format!("cannot create {}", dir.join("work").display()))?;
        let names: Vec<String> = (1..=options.workers)
            .map(|i| format!("chaos-w{i}"))
            .collect();
        let lab = match options.hosts {
            true => {
                let mut lab = HostLab::start(dir, &names)?;
                lab.enter()?;
                Some(lab)
            }
            false => None,
        };
        let (state, listen) = match &lab {
            // Only the coordinator's host sees its state and uploads.
            Some(lab) => {
                let host = lab.coordinator_host();
                (
                    host.private_dir().join("state.db"),
                    format!("{}:0", host.ip()),
                )
            }
            None => (dir.join("state.db"), "127.0.0.1:0".to_string()),
        };
        let mut builder = LocalFleet::builder(&exe, state)
            .listen(listen)
            .serve_args(["--grace", "1", "--heartbeat-ms", "250"])
            .serve_args(["--lost-after", &options.detection_bound.to_string()])
            .serve_args(["--restart-backoff", &options.restart_backoff.to_string()])
            .worker_args(["--ring-timeout", &options.ring_timeout.to_string()])
            .logs_in(dir)
            .work_dirs_in(dir.join("work"))
            // A signal to a worker's group reaches the agent and the
            // `train` ranks it started, as a dead or frozen machine would.
            .worker_process_groups()
            // No coordinator or worker outlives a chaos run, even one
            // killed with SIGKILL. Processes are started from the main
            // thread, which lasts as long as the run.
            .die_with_parent();
        if let Some(lab) = &lab {
            builder = builder.launcher(lab.launcher());
            for (key, value) in lab.s3_env() {
                builder = builder.env(key, value);
            }
        }
        let mut fleet = builder.start()?;
        for name in &names {
            let ring_host = match &lab {
                Some(lab) if ring_host_needed(&exe) => {
                    vec!["--ring-host".to_string(), lab.host(name).ip().to_string()]
                }
                _ => Vec::new(),
            };
            fleet.add_worker(name, ring_host)?;
        }
        Ok(ChaosCluster {
            url: fleet.url().to_string(),
            token: fleet.tenant_token().to_string(),
            dir: dir.to_path_buf(),
            fleet,
            cut: vec![false; names.len()],
            lab,
        })
    }

    /// The folder holding the logs, state and work folders.
    pub fn folder(&self) -> &Path {
        &self.dir
    }

    /// The slots' worker names, as the coordinator knows them.
    pub fn names(&self) -> Vec<String> {
        self.fleet.worker_names()
    }

    pub fn name(&self, slot: usize) -> &str {
        self.fleet.worker_name(slot)
    }

    /// The slots whose process runs, is not frozen and not cut off.
    pub fn alive(&self) -> Vec<usize> {
        (0..self.fleet.worker_count())
            .filter(|&i| self.fleet.worker_running(i) && !self.cut[i])
            .collect()
    }

    /// Where jobs keep checkpoints on the lab (its S3 server); `None` on
    /// 127.0.0.1, where a folder does.
    pub fn checkpoint_url(&self) -> Option<String> {
        self.lab.as_ref().map(HostLab::checkpoint_url)
    }

    /// Cuts slot `slot`'s host from every other host, silently.
    pub fn partition(&mut self, slot: usize) {
        if let Some(lab) = &self.lab {
            lab.cut_off(self.fleet.worker_name(slot));
            self.cut[slot] = true;
        }
    }

    /// Ends slot `slot`'s partition.
    pub fn heal(&mut self, slot: usize) {
        if let Some(lab) = &self.lab {
            lab.heal(self.fleet.worker_name(slot));
        }
        self.cut[slot] = false;
    }

    /// SIGKILL to slot `slot`'s process group; the slot is empty until
    /// [`ChaosCluster::respawn`].
    pub fn kill(&mut self, slot: usize) {
        self.fleet.kill_worker(slot);
    }

    /// SIGSTOP to slot `slot`'s process group.
    pub fn freeze(&mut self, slot: usize) {
        self.fleet.freeze_worker(slot);
    }

    /// SIGCONT to slot `slot`'s process group.
    pub fn thaw(&mut self, slot: usize) {
        self.fleet.thaw_worker(slot);
    }

    /// Starts a new worker process in slot `slot` (killing the one there,
    /// if any), with a log file and work folder of its own.
    pub fn respawn(&mut self, slot: usize) -> anyhow::Result<()> {
        Ok(self.fleet.respawn_worker(slot)?)
    }

    /// Slots whose process exited on its own (not by a fault), with how.
    pub fn exited(&mut self) -> Vec<(usize, String)> {
        self.fleet
            .exited_workers()
            .into_iter()
            .map(|(slot, status)| (slot, status.to_string()))
            .collect()
    }

    /// Prints the last `lines` lines of every log to stderr.
    pub fn show_logs(&self, lines: usize) {
        for (path, tail) in self.fleet.log_tails(lines) {
            eprintln!("--- last lines of {}:", path.display());
            for line in tail {
                eprintln!("{line}");
            }
        }
    }

    /// Stops every worker group (thawed first so it can hear SIGTERM),
    /// then the coordinator: SIGTERM, and SIGKILL to whatever is left
    /// after 5 s.
    pub fn stop(&mut self) {
        self.fleet.stop();
    }
}

/// Whether `worker` still needs `--ring-host` to advertise an address
/// other hosts reach (its help shows a 127.0.0.1 default).
fn ring_host_needed(exe: &Path) -> bool {
    static NEEDED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *NEEDED.get_or_init(|| {
        let help = Command::new(exe).args(["worker", "--help"]).output();
        help.map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.contains("--ring-host") && l.contains("[default: 127.0.0.1]"))
        })
        .unwrap_or(false)
    })
}
