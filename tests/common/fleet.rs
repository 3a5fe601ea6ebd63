//! A fleet of real processes on 127.0.0.1 for the tests: `serve`, its
//! `worker`s (a `coordinator::local_fleet::LocalFleet` of the built
//! binary), and the job commands run against it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use coordinator::local_fleet::LocalFleet;

use super::spec_in;

pub const CLUSTER_TOKEN: &str = "cluster-token-for-tests-0123456789";

/// A coordinator process and the workers started for it; all are stopped
/// when it is dropped (SIGTERM, so workers stop the ranks they started;
/// SIGKILL for whatever is still there after 5 s).
pub struct Fleet {
    processes: LocalFleet,
    pub url: String,
    pub token: String,
    pub state: PathBuf,
    /// Set on every process it starts (storage credentials, ...).
    pub env: Vec<(String, String)>,
}

impl Fleet {
    /// `serve` on `listen` with the state in `state`; `config` picks
    /// tenants (otherwise the development tenant with `token`).
    pub fn serve(state: &Path, listen: &str, config: Option<&Path>, token: &str) -> Fleet {
        Fleet::serve_with_env(state, listen, config, token, Vec::new())
    }

    /// As [`Fleet::serve`], with `env` set on every process of the fleet.
    pub fn serve_with_env(
        state: &Path,
        listen: &str,
        config: Option<&Path>,
        token: &str,
        env: Vec<(String, String)>,
    ) -> Fleet {
        let config_args = config.map(|c| vec![OsStr::new("--config"), c.as_os_str()]);
        Fleet::serve_with_args(state, listen, token, env, &config_args.unwrap_or_default())
    }

    /// As [`Fleet::serve_with_env`], with more flags for `serve`
    /// (`--config`, `--tls-cert`, ...).
    pub fn serve_with_args(
        state: &Path,
        listen: &str,
        token: &str,
        env: Vec<(String, String)>,
        serve_args: &[&OsStr],
    ) -> Fleet {
        let mut builder = LocalFleet::builder(env!("CARGO_BIN_EXE_lorafleet"), state)
            .listen(listen)
            .tenant_token(token)
            .cluster_token(CLUSTER_TOKEN)
            .serve_args(["--grace", "3", "--lost-after", "5"])
            .serve_args(serve_args)
            .worker_args(["--ring-timeout", "20"])
            .env("RUST_BACKTRACE", "0");
        for (key, value) in &env {
            builder = builder.env(key, value);
        }
        let processes = builder.start().expect("serve starts");
        Fleet {
            url: processes.url().to_string(),
            processes,
            token: token.to_string(),
            state: state.to_path_buf(),
            env,
        }
    }

    /// Kills the coordinator with SIGKILL and starts it again on the same
    /// address and state file.
    pub fn kill_and_restart_server(&mut self) {
        self.processes
            .restart_coordinator()
            .expect("serve starts again on its address");
    }

    /// Kills the coordinator with SIGKILL.
    pub fn kill_server(&mut self) {
        self.processes.kill_coordinator();
    }

    /// Sends `signal` to the coordinator.
    pub fn signal_server(&mut self, signal: libc::c_int) {
        self.processes.signal_coordinator(signal);
    }

    /// Whether the coordinator has exited.
    pub fn server_exited(&mut self) -> bool {
        self.processes.coordinator_exit().is_some()
    }

    pub fn add_worker(&mut self, name: &str) {
        // Inside the test's folder: a worker killed with SIGKILL cannot
        // remove a temporary folder of its own.
        let parent = self.state.parent().expect("the state file is in a folder");
        let work_dir = parent.join(format!("work-{name}"));
        // Variables set on the fleet since it started reach the worker too.
        for (key, value) in &self.env {
            self.processes.set_env(key, value);
        }
        self.processes
            .add_worker(name, [OsStr::new("--work-dir"), work_dir.as_os_str()])
            .expect("worker starts");
    }

    /// Kills the `index`-th worker added with SIGKILL.
    pub fn kill_worker(&mut self, index: usize) {
        self.processes.kill_worker(index);
    }

    /// Runs a job command against this coordinator as `token`.
    pub fn cli(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lorafleet"));
        command
            .args(args)
            .env("LORAFLEET_COORDINATOR", &self.url)
            .env_remove("LORAFLEET_TOKEN")
            // The user's own client config (a token, a CA) stays out: no
            // lorafleet/config.yaml is in the state's folder.
            .env_remove("LORAFLEET_CONFIG")
            .env(
                "XDG_CONFIG_HOME",
                self.state.parent().unwrap_or(&self.state),
            )
            .env("RUST_BACKTRACE", "0")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(token) = token {
            command.env("LORAFLEET_TOKEN", token);
        }
        command.output().expect("the binary runs")
    }

    /// `args` with `--json` as this fleet's tenant; the parsed output.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.cli(Some(&self.token), &all);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("--json prints JSON")
    }

    pub fn wait_for_workers(&self, count: usize) {
        wait_until(Duration::from_secs(30), "workers to join", || {
            let list = self.json(&["workers"]);
            let idle = list["data"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|w| w["state"] == "idle")
                .count();
            idle >= count
        });
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The 20-step quickstart for `workers` workers, one thread each.
pub fn short_spec(dir: &Path, tag: &str, workers: u32, out: &Path) -> PathBuf {
    let spec = spec_in(dir, "quickstart.yaml", |t| {
        t.replace("max_steps: 150", "max_steps: 20")
            .replace("threads_per_worker: 2", "threads_per_worker: 1")
            .replace("eval_every: 25", "eval_every: 10")
            .replace("every_steps: 50", "every_steps: 10")
            .replace("workers: 1", &format!("workers: {workers}"))
            .replace(
                &format!("{}/quickstart/final", dir.join("runs").display()),
                out.to_str().unwrap(),
            )
    });
    let renamed = dir.join(format!("quickstart-{tag}.yaml"));
    std::fs::rename(&spec, &renamed).unwrap();
    renamed
}

pub fn submit(fleet: &Fleet, spec: &Path) -> String {
    let job = fleet.json(&["submit", spec.to_str().unwrap()]);
    job["id"].as_str().unwrap().to_string()
}

pub fn status(fleet: &Fleet, job: &str) -> serde_json::Value {
    fleet.json(&["status", job])
}

/// Processes whose environment holds `marker` (the ones a run started).
pub fn processes_with(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    let needle = format!("LORAFLEET_TEST_MARKER={marker}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// Downloads job `job`'s final adapter and checks it is bit for bit the
/// one `train SPEC` (an undisturbed run in one process, writing to
/// `reference`) trains.
pub fn assert_trains_as_undisturbed(fleet: &Fleet, job: &str, spec: &Path, reference: &Path) {
    let downloaded = reference.with_extension("downloaded");
    fleet.json(&["download", job, "-o", downloaded.to_str().unwrap()]);
    let o = super::lorafleet(&["train", spec.to_str().unwrap()]);
    assert!(o.status.success(), "train: {}", text(&o.stderr));
    let file = "adapter_model.safetensors";
    assert_eq!(
        std::fs::read(downloaded.join(file)).unwrap(),
        std::fs::read(reference.join(file)).unwrap(),
        "job {job}'s adapter differs from an undisturbed run's"
    );
}

/// Every event of job `job` so far, as `logs --json` prints them.
pub fn job_events(fleet: &Fleet, job: &str) -> Vec<serde_json::Value> {
    let out = fleet.cli(Some(&fleet.token), &["logs", job, "--json"]);
    assert!(out.status.success(), "logs: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
