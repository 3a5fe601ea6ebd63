//! [`HostFleet`]: lorafleet on separate hosts of a network lab. The
//! coordinator (`serve`) runs on host `coord` with its state and data
//! folder in that host's private folder (an empty tmpfs on every other
//! host), SeaweedFS on host `storage`, and one `worker` on each worker
//! host. Clients (`submit`, `status`, `logs`, `download`) run on `coord`.
//! Every process writes its output to a log under the lab's `logs/`,
//! whose tails a failing test prints.
//!
//! Not here: the jobs a test runs (`job`), what it asserts.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use coordinator::local_fleet::readiness_url;
use testkit::SeaweedFs;
use testkit::netlab::{HostProcess, Lab};

use crate::common::fleet::text;

pub const COORD: &str = "coord";
pub const STORAGE: &str = "storage";
pub const TOKEN: &str = "tenant-token-for-the-hosts-suite";
pub const CLUSTER_TOKEN: &str = "cluster-token-for-the-hosts-suite";
/// The coordinator's `--lost-after`.
pub const LOST_AFTER_S: f64 = 3.0;
/// The workers' `--ring-timeout`.
pub const RING_TIMEOUT_S: f64 = 5.0;
/// The coordinator's `--restart-backoff`.
pub const RESTART_BACKOFF_S: f64 = 0.5;
/// How long a client command may take.
const CLIENT_LIMIT: Duration = Duration::from_secs(120);

/// The lab, its S3 server, coordinator and workers; all stopped on drop
/// (fields drop in order: workers, coordinator, S3 server, lab).
pub struct HostFleet {
    workers: Vec<(String, HostProcess)>,
    /// Held for its drop, which stops it.
    _coordinator: HostProcess,
    pub s3: SeaweedFs,
    /// `http://COORD_IP:PORT`.
    pub url: String,
    logs: PathBuf,
    pub lab: Lab,
}

impl HostFleet {
    /// A lab with `coord`, `storage` and `w1`..`wN`, and the processes on
    /// them; `None` (with the reason printed) where the machine cannot
    /// build a lab.
    pub fn start(workers: usize) -> Option<HostFleet> {
        if let Err(why) = Lab::available() {
            eprintln!("skipped: this test needs a network lab, and {why}");
            return None;
        }
        let names: Vec<String> = [COORD.to_string(), STORAGE.to_string()]
            .into_iter()
            .chain((1..=workers).map(worker_name))
            .collect();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let lab = Lab::start(&name_refs);
        let logs = lab.dir().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let s3 = SeaweedFs::start_on(lab.host(STORAGE));
        let coordinator = spawn_coordinator(&lab, &s3, &logs);
        let (coordinator, url) = coordinator;
        let mut fleet = HostFleet {
            workers: Vec::new(),
            _coordinator: coordinator,
            s3,
            url,
            logs,
            lab,
        };
        for i in 1..=workers {
            fleet.start_worker(&worker_name(i));
        }
        fleet.wait_for_idle_workers(workers, Duration::from_secs(30));
        Some(fleet)
    }

    /// Starts `lorafleet worker` on host `name`.
    pub fn start_worker(&mut self, name: &str) {
        let host = self.lab.host(name);
        let mut command = host.command(env!("CARGO_BIN_EXE_lorafleet"));
        command
            .args(["worker", "--coordinator", &self.url, "--name", name])
            .arg("--ring-timeout")
            .arg(RING_TIMEOUT_S.to_string())
            .arg("--work-dir")
            .arg(host.private_dir().join("work"));
        if ring_host_needed() {
            command.args(["--ring-host", host.ip()]);
        }
        self.set_env(&mut command);
        let log = self.log(&format!("{name}.log"));
        command.stdout(log.try_clone().unwrap()).stderr(log);
        let process = host.spawn(command);
        self.workers.push((name.to_string(), process));
    }

    /// The pid of the worker process on host `name`.
    pub fn worker_pid(&self, name: &str) -> u32 {
        self.workers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.id())
            .unwrap_or_else(|| panic!("no worker on {name}"))
    }

    fn set_env(&self, command: &mut std::process::Command) {
        command
            .env("LORAFLEET_CLUSTER_TOKEN", CLUSTER_TOKEN)
            .env("RUST_BACKTRACE", "0")
            .envs(self.s3.env());
    }

    /// `lorafleet ARGS` on `coord` as the tenant, to its end.
    pub fn client(&self, args: &[&str]) -> Output {
        let host = self.lab.host(COORD);
        let mut command = host.command(env!("CARGO_BIN_EXE_lorafleet"));
        command
            .args(args)
            .env("LORAFLEET_COORDINATOR", &self.url)
            .env("LORAFLEET_TOKEN", TOKEN)
            .env("RUST_BACKTRACE", "0");
        host.output(command, CLIENT_LIMIT)
    }

    /// `lorafleet ARGS --json`, which must succeed; its output parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.client(&all);
        assert!(
            out.status.success(),
            "{args:?}: {}\n{}",
            text(&out.stderr),
            self.log_tails()
        );
        serde_json::from_slice(&out.stdout).expect("--json prints JSON")
    }

    /// `workers --json`'s list.
    pub fn workers(&self) -> Vec<serde_json::Value> {
        self.json(&["workers"])["data"].as_array().unwrap().clone()
    }

    pub fn wait_for_idle_workers(&self, count: usize, limit: Duration) {
        let start = std::time::Instant::now();
        loop {
            let idle = self
                .workers()
                .iter()
                .filter(|w| w["state"] == "idle")
                .count();
            if idle >= count {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "{idle} of {count} workers idle after {limit:?}\n{}",
                self.log_tails()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The last lines of every process's log, for a failure message.
    pub fn log_tails(&self) -> String {
        let mut all = String::new();
        let Ok(entries) = std::fs::read_dir(&self.logs) else {
            return all;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let body = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = body.lines().collect();
            all.push_str(&format!("--- {}:\n", path.display()));
            for line in &lines[lines.len().saturating_sub(12)..] {
                all.push_str(line);
                all.push('\n');
            }
        }
        all
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::File::create(self.logs.join(name)).unwrap()
    }
}

pub fn worker_name(i: usize) -> String {
    format!("w{i}")
}

/// Starts `serve` on `coord`'s lab address; the process and its URL.
fn spawn_coordinator(lab: &Lab, s3: &SeaweedFs, logs: &std::path::Path) -> (HostProcess, String) {
    let host = lab.host(COORD);
    let state = host.private_dir().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut command = host.command(env!("CARGO_BIN_EXE_lorafleet"));
    command
        .args(["serve", "--listen", &format!("{}:0", host.ip())])
        .arg("--state")
        .arg(state.join("state.db"))
        .arg("--data-dir")
        .arg(state.join("data"))
        .arg("--lost-after")
        .arg(LOST_AFTER_S.to_string())
        .args(["--heartbeat-ms", "300", "--grace", "2"])
        .arg("--restart-backoff")
        .arg(RESTART_BACKOFF_S.to_string())
        .env("LORAFLEET_TOKEN", TOKEN)
        .env("LORAFLEET_CLUSTER_TOKEN", CLUSTER_TOKEN)
        .env("RUST_BACKTRACE", "0")
        .envs(s3.env())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(logs.join("coordinator.log")).unwrap());
    let mut process = host.spawn(command);
    let stdout = process.stdout.take().unwrap();
    let mut rest = std::fs::File::create(logs.join("coordinator.stdout.log")).unwrap();
    let (ready, url) = std::sync::mpsc::channel();
    // Reads the readiness line, then copies the rest of its stdout to a
    // log (a closed pipe would fail its next print).
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let line = (&mut reader)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| readiness_url(&l).map(str::to_string));
        let _ = ready.send(line);
        std::io::copy(&mut reader, &mut rest)
    });
    let url = url
        .recv_timeout(Duration::from_secs(30))
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            let log = std::fs::read_to_string(logs.join("coordinator.log")).unwrap_or_default();
            panic!("the coordinator printed no readiness line within 30 s; its log:\n{log}")
        });
    (process, url)
}

/// Whether workers still need `--ring-host` (their ring address defaults
/// to 127.0.0.1 until they discover it from their coordinator connection).
fn ring_host_needed() -> bool {
    static NEEDED: OnceLock<bool> = OnceLock::new();
    *NEEDED.get_or_init(|| {
        let out = crate::common::lorafleet(&["worker", "--help"]);
        let help = text(&out.stdout);
        help.lines()
            .any(|l| l.contains("--ring-host") && l.contains("[default: 127.0.0.1]"))
    })
}
