//! Jobs on a fleet of real processes that lose or give up workers: a
//! drained worker's job stops at a step boundary after a checkpoint (the
//! rank gets SIGTERM), moves to another worker without counting as a
//! failure, and ends with the adapter an undisturbed run gives; and
//! `lorafleet chaos` in its short form: a job survives a killed and a
//! frozen worker, finishes with the undisturbed job's adapter within its
//! time allowance, and nothing the run started outlives it. An elastic job
//! shrinks to the worker left when one dies and grows back when one
//! joins, ending within float rounding of one undisturbed process.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::fleet::{
    Fleet, assert_trains_as_undisturbed, job_events, processes_with, short_spec, status, submit,
    text, wait_until,
};
use common::{adapter, lorafleet, max_relative_difference};

#[test]
fn a_drained_workers_job_moves_after_a_checkpoint_and_ends_as_if_undisturbed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut fleet = Fleet::serve(&dir.join("state.db"), "127.0.0.1:0", None, "tenant-token");
    fleet.add_worker("w0");
    fleet.add_worker("w1");
    fleet.wait_for_workers(2);
    let long = |spec: std::path::PathBuf| {
        let text = std::fs::read_to_string(&spec).unwrap();
        std::fs::write(&spec, text.replace("max_steps: 20", "max_steps: 30")).unwrap();
        spec
    };
    let spec = long(short_spec(dir, "drain", 1, &dir.join("unused")));
    let id = submit(&fleet, &spec);
    wait_until(
        Duration::from_secs(120),
        "the job to train a few steps",
        || {
            let s = status(&fleet, &id);
            s["status"] == "running" && s["step"].as_u64().unwrap_or(0) >= 3
        },
    );
    let workers = fleet.json(&["workers"]);
    let holder = workers["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["job_id"] == id.as_str())
        .expect("a worker holds the job")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let drained = fleet.json(&["drain", &holder]);
    assert_eq!(drained["state"], "draining");

    wait_until(Duration::from_secs(180), "the job to succeed", || {
        let s = status(&fleet, &id);
        assert!(
            !["failed", "cancelled"].contains(&s["status"].as_str().unwrap()),
            "{s}"
        );
        s["status"] == "succeeded"
    });
    let done = status(&fleet, &id);
    assert_eq!(done["failures"], 0, "a drain is not a failure: {done}");
    assert_eq!(done["attempt"], 2, "{done}");

    let events = job_events(&fleet, &id);
    let of = |kind: &str| -> Vec<&serde_json::Value> {
        events.iter().filter(|e| e["type"] == kind).collect()
    };
    // The rank stopped at a step boundary and committed that step; the
    // next attempt resumed exactly there.
    let stopped = of("train.preempted");
    assert_eq!(stopped.len(), 1, "{events:#?}");
    let step = stopped[0]["data"]["step"].as_u64().unwrap();
    assert!((3..30).contains(&step), "stopped at step {step}");
    let saved: Vec<u64> = of("checkpoint.saved")
        .iter()
        .filter_map(|e| e["data"]["step"].as_u64())
        .collect();
    assert!(
        saved.contains(&step),
        "no checkpoint at step {step}: {saved:?}"
    );
    let restart = of("job.restarting");
    assert_eq!(restart.len(), 1, "{restart:#?}");
    assert_eq!(restart[0]["data"]["resume_step"], step);
    assert_eq!(restart[0]["level"], "info");
    let note = of("worker.drained");
    assert_eq!(note.len(), 1);
    assert!(note[0]["message"].as_str().unwrap().contains(&holder));
    assert_eq!(of("rank.failed").len(), 0, "{events:#?}");
    let workers = fleet.json(&["workers"]);
    let drained = workers["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == holder.as_str())
        .unwrap();
    assert_eq!(drained["state"], "draining");
    assert!(drained["job_id"].is_null(), "{drained}");

    // Bit for bit what one process trains undisturbed.
    let reference = dir.join("reference");
    let spec = long(short_spec(dir, "reference", 1, &reference));
    assert_trains_as_undisturbed(&fleet, &id, &spec, &reference);
}

#[test]
fn an_elastic_job_shrinks_to_the_worker_left_and_grows_back_with_the_same_result() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut fleet = Fleet::serve(&dir.join("state.db"), "127.0.0.1:0", None, "tenant-token");
    fleet.add_worker("w0");
    fleet.add_worker("w1");
    fleet.wait_for_workers(2);
    let spec = short_spec(dir, "elastic", 1, &dir.join("reference"));
    let text_of = std::fs::read_to_string(&spec).unwrap();
    let elastic = text_of
        .replace("max_steps: 20", "max_steps: 40")
        .replace("  workers: 1\n", "  workers: \"1..2\"\n");
    assert_ne!(elastic, text_of);
    std::fs::write(&spec, elastic).unwrap();
    let id = submit(&fleet, &spec);
    let events = |fleet: &Fleet, kind: &str| -> Vec<serde_json::Value> {
        let all = job_events(fleet, &id);
        all.into_iter().filter(|e| e["type"] == kind).collect()
    };
    let holders = |fleet: &Fleet| {
        let list = fleet.json(&["workers"]);
        let data = list["data"].as_array().unwrap().clone();
        data.iter().filter(|w| w["job_id"] == id.as_str()).count()
    };
    // It may start on one worker if the second is not connected yet; it
    // then grows to two.
    wait_until(
        Duration::from_secs(120),
        "two ranks past a checkpoint",
        || {
            let s = status(&fleet, &id);
            s["status"] == "running"
                && s["step"].as_u64().unwrap_or(0) >= 12
                && holders(&fleet) == 2
        },
    );
    // One of the two workers dies: the job goes on alone on the other.
    fleet.kill_worker(1);
    let shrunk = |fleet: &Fleet| {
        let resized = events(fleet, "job.resized");
        resized.iter().any(|e| e["data"]["to"] == 1)
    };
    wait_until(Duration::from_secs(60), "the job to shrink", || {
        shrunk(&fleet)
    });
    // A worker joins: the job stops after a checkpoint and grows back.
    fleet.add_worker("w2");
    wait_until(Duration::from_secs(180), "the job to succeed", || {
        let s = status(&fleet, &id);
        assert!(
            !["failed", "cancelled"].contains(&s["status"].as_str().unwrap()),
            "{s}"
        );
        s["status"] == "succeeded"
    });
    let sizes: Vec<(u64, u64)> = events(&fleet, "job.resized")
        .iter()
        .map(|e| {
            (
                e["data"]["from"].as_u64().unwrap(),
                e["data"]["to"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(sizes.ends_with(&[(2, 1), (1, 2)]), "{sizes:?}");
    assert_eq!(events(&fleet, "worker.lost").len(), 1);
    assert!(!events(&fleet, "job.growing").is_empty());
    assert_eq!(
        status(&fleet, &id)["failures"],
        1,
        "only the lost worker counts"
    );

    // Within float rounding of one undisturbed process.
    let downloaded = dir.join("downloaded");
    fleet.json(&["download", &id, "-o", downloaded.to_str().unwrap()]);
    let o = lorafleet(&["train", spec.to_str().unwrap()]);
    assert!(o.status.success(), "train: {}", text(&o.stderr));
    let deviation =
        max_relative_difference(&adapter(&downloaded), &adapter(&dir.join("reference")));
    assert!(deviation <= 1e-4, "deviation {deviation:e}");
}

/// Longest the whole run may take before it is stopped and the test fails.
const LIMIT: Duration = Duration::from_secs(400);

#[test]
fn a_job_survives_killed_and_frozen_workers_and_nothing_outlives_the_run() {
    let marker = format!("chaos-{}", std::process::id());
    let mut child = Command::new(env!("CARGO_BIN_EXE_lorafleet"))
        .args([
            "chaos",
            "--runs",
            "1",
            "--seed",
            "7",
            "--detection-bound",
            "3",
        ])
        .args(["--faults-per-job", "2", "--steps", "30", "--json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("LORAFLEET_TEST_MARKER", &marker)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let stdout = read_in_background(child.stdout.take().unwrap());
    let stderr = read_in_background(child.stderr.take().unwrap());
    let finished = wait_at_most(&mut child, LIMIT);
    let stdout = stdout.join().unwrap();
    let stderr = stderr.join().unwrap();
    let Some(status) = finished else {
        panic!("chaos ran past {LIMIT:?} and was stopped; its stderr:\n{stderr}");
    };
    assert!(status.success(), "chaos exited with {status}:\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {stdout}\n{stderr}"));
    for key in [
        "runs",
        "faults",
        "succeeded",
        "max_deviation",
        "worst_extra_s",
    ] {
        assert!(report.get(key).is_some(), "no {key} in {report}\n{stderr}");
    }
    assert_eq!(report["runs"], 1, "{report}");
    assert_eq!(report["succeeded"], report["runs"], "{report}\n{stderr}");
    assert!(
        report["faults"].as_u64().unwrap() >= 2,
        "{report}\n{stderr}"
    );
    let deviation = report["max_deviation"].as_f64().unwrap();
    assert!(deviation <= 1e-4, "{report}\n{stderr}");

    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_with(&marker).is_empty() {
        assert!(
            Instant::now() < deadline,
            "processes started by chaos outlived it: {:?}",
            processes_with(&marker)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_in_background(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Waits for `child` up to `limit`; past it, SIGTERM (so it stops what it
/// started), then SIGKILL after 15 s, and `None`.
fn wait_at_most(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: signalling a child we started and have not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}
