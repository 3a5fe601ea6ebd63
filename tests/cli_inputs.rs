//! Inputs that live only on the submitter's machine: `submit` uploads the
//! local datasets and the local base model (a Hugging Face folder), and
//! workers fetch them from the coordinator into their cache, checked by
//! SHA-256. The submitter's copies are deleted before the job starts, so
//! the job can only succeed through what the coordinator serves. Real
//! processes on 127.0.0.1. (Across hosts: tests/hosts/.)

mod common;

use std::path::Path;
use std::time::Duration;

use common::fleet::{Fleet, text, wait_until};
use common::{lorafleet, spec_in};
use sha2::{Digest, Sha256};

fn sha256_of(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn uploaded_datasets_and_model_reach_workers_through_the_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let mine = dir.path().join("submitter");
    std::fs::create_dir_all(&mine).unwrap();
    // The submitter's own model and data, nowhere else.
    let model = mine.join("model");
    let made = lorafleet(&[
        "init-model",
        "--preset",
        "tiny",
        "--seed",
        "3",
        "-o",
        model.to_str().unwrap(),
    ]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let data = common::repo("examples/data");
    for name in ["quickstart-train.jsonl", "quickstart-val.jsonl"] {
        std::fs::copy(data.join(name), mine.join(name)).unwrap();
    }
    let train_sha = sha256_of(&mine.join("quickstart-train.jsonl"));
    let weights_sha = sha256_of(&model.join("model.safetensors"));
    let spec = spec_in(&mine, "quickstart.yaml", |t| {
        t.replace("preset: tiny", &format!("path: {}", model.display()))
            .replace(&data.display().to_string(), mine.to_str().unwrap())
            .replace("max_steps: 150", "max_steps: 6")
            .replace("every_steps: 50", "every_steps: 3")
            .replace("threads_per_worker: 2", "threads_per_worker: 1")
    });

    let state = dir.path().join("fleet").join("state.sqlite");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    let mut fleet = Fleet::serve(&state, "127.0.0.1:0", None, "inputs-token");
    // The workers join only once the submitter's files are gone.
    let job = fleet.json(&["submit", spec.to_str().unwrap()]);
    let id = job["id"].as_str().unwrap().to_string();
    std::fs::remove_dir_all(&model).unwrap();
    for name in ["quickstart-train.jsonl", "quickstart-val.jsonl"] {
        std::fs::remove_file(mine.join(name)).unwrap();
    }
    fleet.add_worker("w0");
    wait_until(Duration::from_secs(180), "the job to end", || {
        let status = fleet.json(&["status", &id]);
        matches!(
            status["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        )
    });
    let status = fleet.json(&["status", &id]);
    assert_eq!(status["status"], "succeeded", "{status}");

    // The worker's cache holds each input once, by its SHA-256.
    let cache = dir.path().join("fleet").join("work-w0").join("inputs");
    for sha in [&train_sha, &weights_sha] {
        let cached = cache.join(sha);
        assert!(cached.is_file(), "{} is not cached", cached.display());
        assert_eq!(&sha256_of(&cached), sha);
    }
    let out = dir.path().join("adapter");
    fleet.json(&["download", &id, "-o", out.to_str().unwrap()]);
    assert!(out.join("adapter_model.safetensors").is_file());
}
