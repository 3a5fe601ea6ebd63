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
//! Not here: when faults happen (`plan`, `drive`), or talking to the
//! coordinator beyond reading its readiness line.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::hosts::HostLab;
use crate::commands::fleet::CLUSTER_TOKEN_ENV;

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

/// A coordinator and its worker slots.
pub struct ChaosCluster {
    pub url: String,
    /// The development tenant's token.
    pub token: String,
    cluster_token: String,
    exe: PathBuf,
    dir: PathBuf,
    options: ClusterOptions,
    server: Option<Child>,
    slots: Vec<WorkerSlot>,
    /// The network lab, with `--hosts`; dropped after the processes.
    lab: Option<HostLab>,
}

/// One worker's place in the fleet: the process now filling it, if any.
struct WorkerSlot {
    name: String,
    /// `None` while the slot's last process is dead and not yet replaced.
    process: Option<Child>,
    /// Processes started for this slot so far.
    started: u32,
    frozen: bool,
    /// Cut off the network (on the lab).
    cut: bool,
}

impl ChaosCluster {
    /// Starts the coordinator, waits for its readiness line, and starts the
    /// workers. Logs, state and work folders go under `dir`.
    pub fn start(dir: &Path, options: ClusterOptions) -> anyhow::Result<ChaosCluster> {
        let exe = std::env::current_exe().context("cannot find this program's path")?;
        std::fs::create_dir_all(dir.join("work"))
            .with_context(|| format!("cannot create {}", dir.join("work").display()))?;
        let mut cluster = ChaosCluster {
            url: String::new(),
            token: coordinator::store::new_token(),
            cluster_token: coordinator::store::new_token(),
            exe,
            dir: dir.to_path_buf(),
            slots: (1..=options.workers)
                .map(|i| WorkerSlot {
                    name: format!("chaos-w{i}"),
                    process: None,
                    started: 0,
                    frozen: false,
                    cut: false,
                })
                .collect(),
            options,
            server: None,
            lab: None,
        };
        if cluster.options.hosts {
            let mut lab = HostLab::start(dir, &cluster.names())?;
            lab.enter()?;
            cluster.lab = Some(lab);
        }
        let log = cluster.log_file("coordinator.log")?;
        let (mut server, listen, state) = match &cluster.lab {
            Some(lab) => {
                let host = lab.coordinator_host();
                // Only the coordinator's host sees its state and uploads.
                let state = host.private_dir().join("state.db");
                let mut command = host.command(&cluster.exe);
                command.envs(lab.s3_env().iter().map(|(k, v)| (k, v)));
                (command, format!("{}:0", host.ip()), state)
            }
            None => (
                Command::new(&cluster.exe),
                "127.0.0.1:0".to_string(),
                dir.join("state.db"),
            ),
        };
        server
            .args(["serve", "--listen", &listen, "--grace", "1"])
            .arg("--state")
            .arg(state)
            .arg("--lost-after")
            .arg(cluster.options.detection_bound.to_string())
            .args(["--heartbeat-ms", "250"])
            .arg("--restart-backoff")
            .arg(cluster.options.restart_backoff.to_string())
            .env("LORAFLEET_TOKEN", &cluster.token)
            .env(CLUSTER_TOKEN_ENV, &cluster.cluster_token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        die_with_this_process(&mut server);
        let mut server = server.spawn().context("cannot start the coordinator")?;
        let stdout = server.stdout.take().expect("piped");
        cluster.server = Some(server);
        let mut stdout = BufReader::new(stdout);
        let ready = (&mut stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("listening on ").map(str::to_string));
        // The rest of its stdout goes on to the log (a closed pipe would
        // fail its next print).
        let mut rest = cluster.log_file("coordinator.stdout.log")?;
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut rest));
        let Some(url) = ready else {
            bail!(
                "the coordinator did not start; see {}",
                dir.join("coordinator.log").display()
            );
        };
        cluster.url = url;
        for slot in 0..cluster.slots.len() {
            cluster.respawn(slot)?;
        }
        Ok(cluster)
    }

    /// The folder holding the logs, state and work folders.
    pub fn folder(&self) -> &Path {
        &self.dir
    }

    /// The slots' worker names, as the coordinator knows them.
    pub fn names(&self) -> Vec<String> {
        self.slots.iter().map(|s| s.name.clone()).collect()
    }

    pub fn name(&self, slot: usize) -> &str {
        &self.slots[slot].name
    }

    /// The slots whose process runs, is not frozen and not cut off.
    pub fn alive(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| {
                let s = &self.slots[i];
                s.process.is_some() && !s.frozen && !s.cut
            })
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
            lab.cut_off(&self.slots[slot].name);
            self.slots[slot].cut = true;
        }
    }

    /// Ends slot `slot`'s partition.
    pub fn heal(&mut self, slot: usize) {
        if let Some(lab) = &self.lab {
            lab.heal(&self.slots[slot].name);
        }
        self.slots[slot].cut = false;
    }

    /// SIGKILL to slot `slot`'s process group; the slot is empty until
    /// [`ChaosCluster::respawn`].
    pub fn kill(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        if let Some(mut child) = s.process.take() {
            signal_group(&child, libc::SIGKILL);
            let _ = child.wait();
        }
        s.frozen = false;
    }

    /// SIGSTOP to slot `slot`'s process group.
    pub fn freeze(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        if let Some(child) = &s.process {
            signal_group(child, libc::SIGSTOP);
            s.frozen = true;
        }
    }

    /// SIGCONT to slot `slot`'s process group.
    pub fn thaw(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        if let Some(child) = &s.process {
            signal_group(child, libc::SIGCONT);
        }
        s.frozen = false;
    }

    /// Starts a new worker process in slot `slot` (killing the one there,
    /// if any), with a log file and work folder of its own.
    pub fn respawn(&mut self, slot: usize) -> anyhow::Result<()> {
        self.kill(slot);
        let s = &self.slots[slot];
        let run = s.started + 1;
        let tag = format!("{}.{run}", s.name);
        let work = self.dir.join("work").join(&tag);
        let log = self.log_file(&format!("{tag}.log"))?;
        let mut command = match &self.lab {
            Some(lab) => {
                let host = lab.host(&s.name);
                let mut command = host.command(&self.exe);
                command
                    .args(["worker", "--coordinator", &self.url, "--name", &s.name])
                    .envs(lab.s3_env().iter().map(|(k, v)| (k, v)));
                if ring_host_needed(&self.exe) {
                    command.args(["--ring-host", host.ip()]);
                }
                command
            }
            None => {
                let mut command = Command::new(&self.exe);
                command.args(["worker", "--coordinator", &self.url, "--name", &s.name]);
                command
            }
        };
        command
            .arg("--ring-timeout")
            .arg(self.options.ring_timeout.to_string())
            .arg("--work-dir")
            .arg(&work)
            .env(CLUSTER_TOKEN_ENV, &self.cluster_token)
            // Its coordinator is this run's own, in plain http: a CA meant
            // for another fleet would make the worker refuse it.
            .env_remove("LORAFLEET_CA")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cannot share a log file")?)
            .stderr(log)
            .process_group(0);
        die_with_this_process(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start worker {}", s.name))?;
        let s = &mut self.slots[slot];
        s.process = Some(child);
        s.started = run;
        Ok(())
    }

    /// Slots whose process exited on its own (not by a fault), with how.
    pub fn exited(&mut self) -> Vec<(usize, String)> {
        let mut gone = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Some(child) = &mut s.process
                && let Ok(Some(status)) = child.try_wait()
            {
                gone.push((i, status.to_string()));
                s.process = None;
            }
        }
        gone
    }

    /// The log files written so far, the coordinator's first.
    pub fn logs(&self) -> Vec<PathBuf> {
        let mut logs = vec![self.dir.join("coordinator.log")];
        for s in &self.slots {
            logs.extend((1..=s.started).map(|run| self.dir.join(format!("{}.{run}.log", s.name))));
        }
        logs
    }

    /// Prints the last `lines` lines of every log to stderr.
    pub fn show_logs(&self, lines: usize) {
        for path in self.logs() {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            if !tail.is_empty() {
                eprintln!("--- last lines of {}:", path.display());
                for line in tail {
                    eprintln!("{line}");
                }
            }
        }
    }

    /// Stops every worker group (thawed first so it can hear SIGTERM),
    /// then the coordinator: SIGTERM, and SIGKILL to whatever is left
    /// after 5 s.
    pub fn stop(&mut self) {
        let mut groups = Vec::new();
        for s in &mut self.slots {
            if let Some(child) = s.process.take() {
                signal_group(&child, libc::SIGCONT);
                signal_group(&child, libc::SIGTERM);
                groups.push(child);
            }
            s.frozen = false;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for child in &mut groups {
            wait_until(child, deadline);
            // The agent is gone; anything left in its group goes too.
            signal_group(child, libc::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut server) = self.server.take() {
            if matches!(server.try_wait(), Ok(None)) {
                // SAFETY: kill(2) on a child we started and have not reaped.
                unsafe { libc::kill(server.id() as libc::pid_t, libc::SIGTERM) };
            }
            wait_until(&mut server, Instant::now() + Duration::from_secs(5));
            let _ = server.kill();
            let _ = server.wait();
        }
    }

    fn log_file(&self, name: &str) -> anyhow::Result<File> {
        let path = self.dir.join(name);
        File::create(&path).with_context(|| format!("cannot create {}", path.display()))
    }
}

impl Drop for ChaosCluster {
    fn drop(&mut self) {
        self.stop();
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

/// Has the kernel kill `command`'s process if the thread that starts it
/// ends first (the whole run killed with SIGKILL included), so no
/// coordinator or worker outlives a chaos run. Processes are started from
/// the main thread, which lasts as long as the run.
fn die_with_this_process(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let hook = coordinator::agent::kill_when_parent_dies();
    // SAFETY: the hook makes only async-signal-safe calls.
    unsafe {
        command.pre_exec(hook);
    }
}
