//! Followers that outlive their coordinator: `submit --wait` and `logs -f`
//! (one of them frozen through the whole outage and the end of the job)
//! while the coordinator is killed with SIGKILL mid-job and started again
//! on the same address and state file, and `run` whose own coordinator is
//! killed. Each exits 0 when the job succeeds, having printed every event
//! exactly once and in order.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod common;

use common::fleet::{Fleet, job_events, short_spec, status, text, wait_until};

/// A command whose stdout lines are collected as they come.
struct Follower {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Follower {
    fn start(mut command: Command) -> Follower {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary runs");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Follower {
            child,
            lines,
            reader: Some(reader),
        }
    }

    /// The JSON events printed so far (lines with a `type`).
    fn events(&self) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("type").is_some())
            .collect()
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: signalling a child we started and have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// Waits (at most `limit`) for it to exit; its status, stderr and
    /// events.
    fn finish(
        mut self,
        limit: Duration,
        what: &str,
    ) -> (std::process::ExitStatus, String, Vec<serde_json::Value>) {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("{what} did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        self.reader.take().unwrap().join().unwrap();
        let mut stderr = String::new();
        use std::io::Read;
        let _ = self
            .child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr);
        (status, stderr, self.events())
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ids(events: &[serde_json::Value]) -> Vec<i64> {
    events.iter().map(|e| e["id"].as_i64().unwrap()).collect()
}

/// The quickstart for one worker, long enough to be killed in the middle of.
fn long_spec(dir: &Path, tag: &str) -> std::path::PathBuf {
    let spec = short_spec(dir, tag, 1, &dir.join(format!("out-{tag}")));
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, text.replace("max_steps: 20", "max_steps: 60")).unwrap();
    spec
}

#[test]
fn submit_wait_and_logs_follow_ride_out_a_coordinator_killed_mid_job() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut fleet = Fleet::serve(&dir.join("state.db"), "127.0.0.1:0", None, "tenant-token");
    fleet.add_worker("w0");
    fleet.wait_for_workers(1);
    let spec = long_spec(dir, "restart");
    // What waiting cannot fix ends a follower at once, with its code.
    for (token, job, code) in [
        ("tenant-token", "j-no-such-job", 5),
        ("a-wrong-token", "j-no-such-job", 4),
    ] {
        let started = Instant::now();
        let out = fleet.cli(Some(token), &["logs", job, "-f"]);
        assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{job}: not at once"
        );
        assert!(!text(&out.stderr).contains("reconnecting"));
    }

    let command = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lorafleet"));
        command
            .args(args)
            .env("LORAFLEET_COORDINATOR", &fleet.url)
            .env("LORAFLEET_TOKEN", &fleet.token)
            .env("RUST_BACKTRACE", "0");
        command
    };
    let submitter = Follower::start(command(&[
        "submit",
        spec.to_str().unwrap(),
        "--wait",
        "--json",
    ]));
    wait_until(Duration::from_secs(30), "the submitted job", || {
        !submitter.lines.lock().unwrap().is_empty()
    });
    let job: serde_json::Value = serde_json::from_str(&submitter.lines.lock().unwrap()[0]).unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let follower = Follower::start(command(&["logs", &id, "-f", "--json"]));
    // Frozen before the coordinator dies, thawed after the job ended: it
    // finds its connection gone and the job over.
    let sleeper = Follower::start(command(&["logs", &id, "-f", "--json"]));

    wait_until(Duration::from_secs(60), "a training step", || {
        follower.events().iter().any(|e| e["type"] == "train.step")
    });
    std::thread::sleep(Duration::from_millis(300));
    sleeper.signal(libc::SIGSTOP);
    let seen_before = follower.events().len();
    // SIGKILL, a pause the followers notice, then the same address and state.
    fleet.kill_server();
    std::thread::sleep(Duration::from_secs(3));
    fleet.kill_and_restart_server();

    wait_until(Duration::from_secs(180), "the job to succeed", || {
        status(&fleet, &id)["status"] == "succeeded"
    });
    sleeper.signal(libc::SIGCONT);

    let all = ids(&job_events(&fleet, &id));
    let limit = Duration::from_secs(60);
    for (name, runner) in [
        ("submit --wait", submitter),
        ("logs -f", follower),
        ("logs -f (frozen)", sleeper),
    ] {
        let (exit, stderr, events) = runner.finish(limit, name);
        eprintln!("{name} said on stderr:\n{stderr}");
        assert!(exit.success(), "{name}: {exit}: {stderr}");
        assert_eq!(ids(&events), all, "{name}: every event once, in order");
        assert_eq!(events.last().unwrap()["type"], "job.succeeded", "{name}");
        if name != "logs -f (frozen)" {
            assert!(
                stderr.contains("lost the coordinator at"),
                "{name}: {stderr}"
            );
            assert!(
                stderr.contains("reconnected to the coordinator"),
                "{name}: {stderr}"
            );
            // Down 3 s and back at once: found again within the pauses
            // (0.5, 1, 2, 4 s), not when the stream ends.
            let after: f64 = stderr
                .split("reconnected to the coordinator at ")
                .nth(1)
                .and_then(|rest| rest.split(" after ").nth(1))
                .and_then(|rest| rest.split(' ').next())
                .and_then(|secs| secs.parse().ok())
                .expect("the reconnect line says after how long");
            assert!(after < 20.0, "{name}: reconnected only after {after} s");
        }
    }
    assert!(
        all.len() > seen_before,
        "the coordinator was killed after the job's last event"
    );
}

#[test]
fn run_starts_its_coordinator_again_when_it_is_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spec = long_spec(dir, "run");
    let mut command = Command::new(env!("CARGO_BIN_EXE_lorafleet"));
    command
        .args(["run", spec.to_str().unwrap(), "--json"])
        // A CA for some remote fleet: the embedded one is plain, on loopback.
        .env("LORAFLEET_CA", dir.join("no-such-ca.pem"))
        .env("RUST_BACKTRACE", "0");
    let run = Follower::start(command);
    wait_until(Duration::from_secs(90), "a training step", || {
        run.events().iter().any(|e| e["type"] == "train.step")
    });
    let coordinator = children_of(run.child.id())
        .into_iter()
        .find(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"serve"))
        })
        .expect("run's coordinator");
    // SAFETY: a process of this test's own `run`.
    unsafe { libc::kill(coordinator as libc::pid_t, libc::SIGKILL) };

    let (exit, stderr, events) = run.finish(Duration::from_secs(180), "run");
    assert!(exit.success(), "run: {exit}: {stderr}");
    assert!(stderr.contains("started it again"), "{stderr}");
    let ids = ids(&events);
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "events out of order or twice: {ids:?}"
    );
    assert_eq!(events.last().unwrap()["type"], "job.succeeded");
    let out = dir.join("out-run");
    assert!(
        out.join("adapter_model.safetensors").exists(),
        "no adapter in {}",
        out.display()
    );
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    // pid (comm) state ppid ...: comm may hold spaces.
                    let after = &stat[stat.rfind(')')? + 2..];
                    after.split(' ').nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}
