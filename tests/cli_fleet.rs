//! A fleet of real processes on 127.0.0.1: `serve`, `worker`s and the job
//! commands. A job run by two workers downloads the adapter `train --world
//! 2` gives; tenants cannot touch each other's jobs; a coordinator killed
//! with SIGKILL and restarted on its SQLite file loses nothing.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;

use common::fleet::{
    CLUSTER_TOKEN, Fleet, assert_trains_as_undisturbed, processes_with, short_spec, status, submit,
    text, wait_until,
};
use common::{adapter, free_peers, lorafleet, max_relative_difference, spawn_rank};

#[test]
fn two_workers_train_what_train_world_2_trains_and_the_adapter_downloads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut fleet = Fleet::serve(&dir.join("state.db"), "127.0.0.1:0", None, "tenant-token-a");
    fleet.add_worker("w0");
    fleet.add_worker("w1");
    fleet.wait_for_workers(2);

    let spec = short_spec(dir, "fleet", 2, &dir.join("unused"));
    let spec_arg = spec.to_str().unwrap();
    let out = fleet.cli(
        Some(&fleet.token),
        &["submit", spec_arg, "--wait", "--json"],
    );
    assert!(out.status.success(), "submit --wait: {}", text(&out.stderr));
    let lines = text(&out.stdout);
    let job: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    let id = job["id"].as_str().unwrap();
    // The events streamed as NDJSON, each with the keys scripts rely on.
    let events: Vec<serde_json::Value> = lines
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for key in ["id", "created_at", "level", "type", "message", "data"] {
        assert!(events.iter().all(|e| e.get(key).is_some()), "{key}");
    }
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    for kind in [
        "job.starting",
        "rank.started",
        "train.step",
        "checkpoint.saved",
        "job.succeeded",
    ] {
        assert!(types.contains(&kind), "no {kind} event in {types:?}");
    }
    let done = status(&fleet, id);
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["step"], 20);

    let downloaded = dir.join("downloaded");
    let d = fleet.json(&["download", id, "-o", downloaded.to_str().unwrap()]);
    assert_eq!(d["step"], 20);

    // The same spec by `train` in two rank processes, and in one.
    let two = dir.join("two");
    let spec_two = short_spec(dir, "two", 2, &two);
    let peers = free_peers(2);
    let ranks: Vec<Child> = (0..2)
        .map(|rank| spawn_rank(&["train", spec_two.to_str().unwrap()], rank, 2, &peers))
        .collect();
    for child in ranks {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "train --world 2: {}", text(&o.stderr));
    }
    let one = dir.join("one");
    let spec_one = short_spec(dir, "one", 1, &one);
    let o = lorafleet(&["train", spec_one.to_str().unwrap()]);
    assert!(o.status.success(), "train: {}", text(&o.stderr));

    let file = "adapter_model.safetensors";
    assert_eq!(
        std::fs::read(downloaded.join(file)).unwrap(),
        std::fs::read(two.join(file)).unwrap(),
        "the fleet's adapter differs from train --world 2's"
    );
    let dev = max_relative_difference(&adapter(&downloaded), &adapter(&one));
    assert!(dev <= 1e-4, "2 workers vs 1 process: {dev:e}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(downloaded.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");

    // SIGTERM stops the coordinator promptly, workers connected or not.
    fleet.signal_server(libc::SIGTERM);
    wait_until(Duration::from_secs(10), "serve to exit on SIGTERM", || {
        fleet.server_exited()
    });
}

#[test]
fn tenants_see_only_their_own_jobs_and_bad_tokens_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let hash = |t: &str| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(t.as_bytes()))
    };
    let config = dir.join("coordinator.yaml");
    std::fs::write(
        &config,
        format!(
            "cluster_token_sha256: {}\ntenants:\n  team-a:\n    token_sha256: {}\n    storage: [{}]\n  team-b:\n    token_sha256: {}\n    storage: [{}/b-only]\n",
            hash(CLUSTER_TOKEN),
            hash("token-of-a"),
            dir.display(),
            hash("token-of-b"),
            dir.display(),
        ),
    )
    .unwrap();
    let fleet = Fleet::serve(
        &dir.join("state.db"),
        "127.0.0.1:0",
        Some(&config),
        "token-of-a",
    );
    // No worker: A's job stays queued.
    let spec = short_spec(dir, "a", 1, &dir.join("out-a"));
    let id = submit(&fleet, &spec);

    let b = Some("token-of-b");
    for args in [
        vec!["status", id.as_str()],
        vec!["logs", id.as_str()],
        vec!["cancel", id.as_str()],
        vec!["checkpoints", id.as_str()],
        vec![
            "download",
            id.as_str(),
            "-o",
            dir.join("stolen").to_str().unwrap(),
        ],
    ] {
        let out = fleet.cli(b, &args);
        assert_eq!(
            out.status.code(),
            Some(5),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("has no job"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    assert!(!dir.join("stolen").exists());
    let listed = fleet.cli(b, &["jobs", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 0);
    // Still queued: B's cancel did nothing.
    assert_eq!(status(&fleet, &id)["status"], "queued");

    // B may not name storage outside its prefixes (here A's folder).
    let out = fleet.cli(b, &["submit", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("checkpoint.storage"),
        "{}",
        text(&out.stderr)
    );

    for token in [None, Some("not-a-token")] {
        let out = fleet.cli(token, &["jobs"]);
        let code = if token.is_none() { 2 } else { 4 };
        assert_eq!(
            out.status.code(),
            Some(code),
            "{token:?}: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stderr).contains("token"), "{}", text(&out.stderr));
    }
    // A tenant token does not make a worker.
    let worker = Command::new(env!("CARGO_BIN_EXE_lorafleet"))
        .args(["worker", "--coordinator", &fleet.url])
        .env("LORAFLEET_CLUSTER_TOKEN", "token-of-a")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!worker.status.success());
    assert!(
        text(&worker.stderr).contains("cluster token"),
        "{}",
        text(&worker.stderr)
    );
}

#[test]
fn a_coordinator_killed_and_restarted_loses_no_job() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let state = dir.join("state.db");
    let mut fleet = Fleet::serve(&state, "127.0.0.1:0", None, "tenant-token");
    fleet.add_worker("w0");
    fleet.wait_for_workers(1);
    let running = submit(&fleet, &short_spec(dir, "running", 1, &dir.join("out-1")));
    let queued = submit(&fleet, &short_spec(dir, "queued", 1, &dir.join("out-2")));
    wait_until(Duration::from_secs(60), "the first job to train", || {
        let s = status(&fleet, &running);
        s["status"] == "running" && s["step"].as_u64().unwrap_or(0) >= 2
    });
    assert_eq!(status(&fleet, &queued)["status"], "queued");

    fleet.kill_and_restart_server();

    let list = fleet.json(&["jobs"]);
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&running.as_str()) && ids.contains(&queued.as_str()),
        "{ids:?}"
    );
    for id in [&running, &queued] {
        wait_until(Duration::from_secs(120), "both jobs to succeed", || {
            let s = status(&fleet, id);
            assert!(
                !["failed", "cancelled"].contains(&s["status"].as_str().unwrap()),
                "{s}"
            );
            s["status"] == "succeeded"
        });
    }
    // The worker was found again: the running job kept its first attempt.
    assert_eq!(status(&fleet, &running)["attempt"], 1);

    // And it ended with what an undisturbed run trains, bit for bit.
    let reference = dir.join("reference");
    let spec = short_spec(dir, "reference", 1, &reference);
    assert_trains_as_undisturbed(&fleet, &running, &spec, &reference);
}

fn start_run(spec: &Path, marker: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lorafleet"))
        .args(["run", spec.to_str().unwrap()])
        .env("LORAFLEET_TEST_MARKER", marker)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn run_trains_on_an_embedded_fleet_and_stops_everything_it_started() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = dir.join("adapter");
    let spec = short_spec(dir, "run", 1, &out);
    let marker = format!("run-{}", std::process::id());
    let o = start_run(&spec, &marker).wait_with_output().unwrap();
    assert!(o.status.success(), "run: {}", text(&o.stderr));
    assert!(text(&o.stderr).contains("succeeded"), "{}", text(&o.stderr));
    assert!(out.join("adapter_model.safetensors").is_file());
    assert!(out.join("adapter_config.json").is_file());
    wait_until(Duration::from_secs(10), "run's processes to end", || {
        processes_with(&marker).is_empty()
    });

    // Interrupted mid-job: exit 130, and nothing it started survives.
    let marker = format!("interrupted-{}", std::process::id());
    let mut child = start_run(&spec, &marker);
    wait_until(Duration::from_secs(30), "a rank to start", || {
        processes_with(&marker).len() >= 4 // run, serve, worker, train
    });
    // SAFETY: signalling a child we started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    wait_until(Duration::from_secs(10), "run's processes to end", || {
        processes_with(&marker).is_empty()
    });
}
