//! Jobs on a fleet of real processes that lose or give up workers: a
//! drained worker's job stops at a step boundary after a checkpoint (the
//! rank gets SIGTERM), moves to another worker without counting as a
//! failure, and ends with the adapter an undisturbed run gives.

use std::time::Duration;

mod common;

use common::fleet::{Fleet, short_spec, status, submit, text, wait_until};
use common::lorafleet;

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

    let out = fleet.cli(Some(&fleet.token), &["logs", &id, "--json"]);
    assert!(out.status.success(), "logs: {}", text(&out.stderr));
    let events: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
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
    let downloaded = dir.join("downloaded");
    fleet.json(&["download", &id, "-o", downloaded.to_str().unwrap()]);
    let reference = dir.join("reference");
    let spec = long(short_spec(dir, "reference", 1, &reference));
    let o = lorafleet(&["train", spec.to_str().unwrap()]);
    assert!(o.status.success(), "train: {}", text(&o.stderr));
    let file = "adapter_model.safetensors";
    assert_eq!(
        std::fs::read(downloaded.join(file)).unwrap(),
        std::fs::read(reference.join(file)).unwrap(),
        "the moved job's adapter differs from an undisturbed run's"
    );
}
