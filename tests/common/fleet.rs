//! A fleet of real processes on 127.0.0.1 for the tests: `serve`, its
//! `worker`s, and the job commands run against it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::spec_in;

pub const CLUSTER_TOKEN: &str = "cluster-token-for-tests-0123456789";

/// A coordinator process and the workers started for it; all are killed
/// when it is dropped.
pub struct Fleet {
    pub server: Child,
    pub workers: Vec<Child>,
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
        let (server, url) = spawn_server(state, listen, config, token, &env);
        Fleet {
            server,
            workers: Vec::new(),
            url,
            token: token.to_string(),
            state: state.to_path_buf(),
            env,
        }
    }

    /// Kills the coordinator with SIGKILL and starts it again on the same
    /// address and state file.
    pub fn kill_and_restart_server(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let address = self.url.trim_start_matches("http://").to_string();
        let (server, url) = spawn_server(&self.state, &address, None, &self.token, &self.env);
        self.server = server;
        assert_eq!(url, self.url);
    }

    pub fn add_worker(&mut self, name: &str) {
        // Inside the test's folder: a worker killed with SIGKILL cannot
        // remove a temporary folder of its own.
        let parent = self.state.parent().expect("the state file is in a folder");
        let work_dir = parent.join(format!("work-{name}"));
        let child = Command::new(env!("CARGO_BIN_EXE_lorafleet"))
            .args(["worker", "--coordinator", &self.url, "--name", name])
            .args(["--ring-timeout", "20"])
            .arg("--work-dir")
            .arg(&work_dir)
            .env("LORAFLEET_CLUSTER_TOKEN", CLUSTER_TOKEN)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("worker starts");
        self.workers.push(child);
    }

    /// Runs a job command against this coordinator as `token`.
    pub fn cli(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lorafleet"));
        command
            .args(args)
            .env("LORAFLEET_COORDINATOR", &self.url)
            .env_remove("LORAFLEET_TOKEN")
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

impl Drop for Fleet {
    /// SIGTERM first, so workers stop the ranks they started; SIGKILL
    /// for whatever is still there after 5 s.
    fn drop(&mut self) {
        for child in self.workers.iter_mut().chain([&mut self.server]) {
            if matches!(child.try_wait(), Ok(None)) {
                // SAFETY: signalling a child we started and have not reaped.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for child in self.workers.iter_mut().chain([&mut self.server]) {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `serve`; returns the process and the address it printed.
pub fn spawn_server(
    state: &Path,
    listen: &str,
    config: Option<&Path>,
    token: &str,
    env: &[(String, String)],
) -> (Child, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lorafleet"));
    command
        .args([
            "serve",
            "--listen",
            listen,
            "--grace",
            "3",
            "--lost-after",
            "5",
        ])
        .arg("--state")
        .arg(state)
        .env("LORAFLEET_TOKEN", token)
        .env("LORAFLEET_CLUSTER_TOKEN", CLUSTER_TOKEN)
        .env("RUST_BACKTRACE", "0")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let mut server = command.spawn().expect("serve starts");
    let stdout = server.stdout.take().unwrap();
    let url = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("listening on ").map(str::to_string))
        .expect("serve prints its readiness line");
    (server, url)
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
