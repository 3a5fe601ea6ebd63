//! Checkpoints end to end, with real processes and a real S3 server
//! (SeaweedFS through testkit): a fleet job writes them to `s3://` (and to
//! a local folder), keeps `keep_last`, and `download` returns the final
//! adapter or names the file that a flipped byte broke; a `train` killed
//! with SIGKILL after a checkpoint resumes to the same losses and adapter,
//! bit for bit, also when the newest checkpoint is corrupt.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use object_store::path::Path as StorePath;
use object_store::{ObjectStoreExt, PutPayload};
use trainer::checkpoint::{CheckpointStore, block_on};
use trainer::storage::Location;

mod common;

use common::fleet::{Fleet, short_spec, status, submit, text, wait_until};
use common::{lorafleet, losses, spec_in};

/// Flips one byte of `file` in the checkpoint at `step`.
fn flip_a_byte(store: &CheckpointStore, step: u64, file: &str) {
    let mut bytes = read(store, step, file);
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    let at = store.location(step).join(file);
    block_on(at.store().put(at.path(), PutPayload::from(bytes))).unwrap();
}

fn read(store: &CheckpointStore, step: u64, file: &str) -> Vec<u8> {
    let at = store.location(step).join(file);
    block_on(async {
        at.store()
            .get(at.path())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec()
    })
}

/// A 2-worker job with checkpoints every 5 of 20 steps, `keep_last: 2`,
/// in `storage` (`None`: the local folder the spec names).
fn fleet_job_keeps_the_last_two_and_downloads(s3: Option<&testkit::SeaweedFs>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let env = s3.map(|s| s.env()).unwrap_or_default();
    let mut fleet = Fleet::serve_with_env(
        &dir.join("state.db"),
        "127.0.0.1:0",
        None,
        "tenant-token-a",
        env,
    );
    fleet.add_worker("w0");
    fleet.add_worker("w1");
    fleet.wait_for_workers(2);

    let local_storage = dir.join("runs");
    let storage = match s3 {
        Some(s3) => s3.url("fleet"),
        None => local_storage.display().to_string(),
    };
    let spec = short_spec(dir, "ckpt", 2, &dir.join("unused"));
    let text_of = std::fs::read_to_string(&spec).unwrap();
    let edited = text_of
        .replace("every_steps: 10", "every_steps: 5")
        .replace(
            &format!("storage: {}", local_storage.display()),
            &format!("storage: {storage}"),
        );
    assert!(edited.contains(&format!("storage: {storage}")) && edited.contains("keep_last: 2"));
    std::fs::write(&spec, edited).unwrap();

    let job = submit(&fleet, &spec);
    wait_until(Duration::from_secs(240), "the job to end", || {
        let s = status(&fleet, &job);
        s["status"] == "succeeded" || s["status"] == "failed"
    });
    let done = status(&fleet, &job);
    assert_eq!(done["status"], "succeeded", "{done}");
    let tenant = done["tenant"].as_str().unwrap().to_string();

    // The coordinator's list and the storage agree: the last two remain.
    let listed = fleet.json(&["checkpoints", &job]);
    let steps: Vec<u64> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["step_number"].as_u64().or(c["step"].as_u64()).unwrap())
        .collect();
    assert_eq!(steps, vec![15, 20], "{listed}");
    let root = match s3 {
        Some(s3) => Location::from_store(s3.store(), StorePath::from("fleet"), s3.url("fleet")),
        None => Location::parse(local_storage.to_str().unwrap()).unwrap(),
    };
    let store = CheckpointStore::at(root.join(&tenant).join(&job));
    assert_eq!(
        block_on(store.steps()).unwrap(),
        vec![15, 20],
        "nothing else is left in storage"
    );
    block_on(store.verify(20)).unwrap();

    // The download is the final checkpoint's adapter, byte for byte.
    let out = dir.join("downloaded");
    let got = fleet.cli(
        Some(&fleet.token),
        &["download", &job, "-o", out.to_str().unwrap()],
    );
    assert!(got.status.success(), "{}", text(&got.stderr));
    for file in ["adapter_model.safetensors", "adapter_config.json"] {
        assert!(
            std::fs::read(out.join(file)).unwrap() == read(&store, 20, file),
            "{file}"
        );
    }
    assert!(out.join("MANIFEST.json").exists());

    // --merged writes what `export --merged` writes from the same adapter.
    let merged = dir.join("merged");
    let got = fleet.cli(
        Some(&fleet.token),
        &["download", &job, "--merged", "-o", merged.to_str().unwrap()],
    );
    assert!(got.status.success(), "{}", text(&got.stderr));
    let base = dir.join("base");
    let exported = dir.join("exported");
    for args in [
        vec![
            "init-model",
            "--preset",
            "tiny",
            "--seed",
            "42",
            "-o",
            base.to_str().unwrap(),
        ],
        vec![
            "export",
            "--merged",
            "--adapter",
            out.to_str().unwrap(),
            "--model",
            base.to_str().unwrap(),
            "-o",
            exported.to_str().unwrap(),
        ],
    ] {
        let done = lorafleet(&args);
        assert!(done.status.success(), "{args:?}: {}", text(&done.stderr));
    }
    assert!(
        std::fs::read(merged.join("model.safetensors")).unwrap()
            == std::fs::read(exported.join("model.safetensors")).unwrap(),
        "download --merged and export --merged write the same model"
    );

    // A flipped byte: the download fails and names the file, leaving the
    // earlier download in place; the step before still downloads.
    flip_a_byte(&store, 20, "adapter_model.safetensors");
    let bad = fleet.cli(
        Some(&fleet.token),
        &["download", &job, "-o", out.to_str().unwrap()],
    );
    assert!(!bad.status.success());
    let err = text(&bad.stderr);
    assert!(
        err.contains("adapter_model.safetensors") && err.contains("SHA-256"),
        "{err}"
    );
    assert!(
        std::fs::read(out.join("adapter_config.json")).is_ok(),
        "the old download stays"
    );
    let older = dir.join("older");
    let ok = fleet.cli(
        Some(&fleet.token),
        &[
            "download",
            &job,
            "--step",
            "15",
            "-o",
            older.to_str().unwrap(),
        ],
    );
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(
        std::fs::read(older.join("adapter_model.safetensors")).unwrap()
            == read(&store, 15, "adapter_model.safetensors")
    );
}

#[test]
fn a_fleet_job_on_s3_keeps_the_last_checkpoints_and_downloads_the_final_adapter() {
    let s3 = testkit::SeaweedFs::start();
    fleet_job_keeps_the_last_two_and_downloads(Some(&s3));
}

#[test]
fn a_fleet_job_on_a_local_folder_does_the_same() {
    fleet_job_keeps_the_last_two_and_downloads(None);
}

/// ci-tiny for 12 steps with a checkpoint every 4, in `storage`.
fn twelve_steps(dir: &Path, storage: &str) -> std::path::PathBuf {
    spec_in(dir, "ci-tiny.yaml", |t| {
        t.replace("max_steps: 6", "max_steps: 12")
            .replace("every_steps: 3", "every_steps: 4")
            .replace("eval_every: 3", "eval_every: 4")
            .replace("keep_last: 2", "keep_last: 3")
            .replace(
                &format!("storage: {}", dir.join("runs").display()),
                &format!("storage: {storage}"),
            )
    })
}

#[test]
fn a_run_killed_after_a_checkpoint_resumes_bit_for_bit_even_past_a_corrupt_one() {
    let s3 = testkit::SeaweedFs::start();
    let straight_dir = tempfile::tempdir().unwrap();
    let straight_spec = twelve_steps(
        straight_dir.path(),
        &straight_dir.path().join("runs").display().to_string(),
    );
    let straight = lorafleet(&["train", straight_spec.to_str().unwrap()]);
    assert!(straight.status.success(), "{}", text(&straight.stderr));

    // The same run with checkpoints on S3, killed with SIGKILL once the
    // checkpoint of step 8 is committed.
    let dir = tempfile::tempdir().unwrap();
    let spec = twelve_steps(dir.path(), &s3.url("resume"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_lorafleet"))
        .args(["train", spec.to_str().unwrap(), "--events"])
        .envs(s3.env())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.map_while(Result::ok) {
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        seen.push(event["type"].as_str().unwrap_or("").to_string());
        if event["type"] == "checkpoint.saved" && event["step"] == 8 {
            child.kill().unwrap();
            break;
        }
    }
    child.wait().unwrap();
    assert!(
        !seen.iter().any(|t| t == "train.finished"),
        "killed before the end: {seen:?}"
    );

    // Break the newest checkpoint: resume says so and takes the one before.
    let root = Location::from_store(s3.store(), StorePath::from("resume"), s3.url("resume"));
    let store = CheckpointStore::at(root.join("local").join("ci-tiny"));
    assert_eq!(block_on(store.steps()).unwrap(), vec![4, 8]);
    flip_a_byte(&store, 8, "optimizer.safetensors");

    let mut resume = Command::new(env!("CARGO_BIN_EXE_lorafleet"));
    resume
        .args(["train", spec.to_str().unwrap(), "--resume"])
        .envs(s3.env());
    let resumed = resume.output().unwrap();
    let err = text(&resumed.stderr);
    assert!(resumed.status.success(), "{err}");
    assert!(
        err.contains("skipping the checkpoint at step 8") && err.contains("optimizer.safetensors"),
        "{err}"
    );
    assert!(err.contains("resuming ci-tiny from step 4"), "{err}");

    let out = dir.path().join("runs/ci-tiny/final");
    let straight_out = straight_dir.path().join("runs/ci-tiny/final");
    assert_eq!(
        losses(&out),
        losses(&straight_out),
        "the same losses, bit for bit"
    );
    assert!(
        std::fs::read(out.join("adapter_model.safetensors")).unwrap()
            == std::fs::read(straight_out.join("adapter_model.safetensors")).unwrap(),
        "the same final adapter, bit for bit"
    );
    // The final checkpoint is the final state too; 3 are kept.
    assert_eq!(block_on(store.steps()).unwrap(), vec![4, 8, 12]);
    assert!(
        read(&store, 12, "adapter_model.safetensors")
            == std::fs::read(out.join("adapter_model.safetensors")).unwrap()
    );

    // A new run may start from that checkpoint's adapter, read from S3:
    // its first validation loss is the last one of the run it came from.
    let next_dir = tempfile::tempdir().unwrap();
    let from = format!(
        "{}/local/ci-tiny/checkpoints/step-000000012",
        s3.url("resume")
    );
    let next_spec = spec_in(next_dir.path(), "ci-tiny.yaml", |t| {
        t.replace(
            "  target_modules: all-linear",
            &format!("  target_modules: all-linear\n  init_adapter: {from}"),
        )
        .replace("max_steps: 6", "max_steps: 1")
    });
    let mut next = Command::new(env!("CARGO_BIN_EXE_lorafleet"));
    next.args(["train", next_spec.to_str().unwrap(), "--json"])
        .envs(s3.env());
    let next = next.output().unwrap();
    assert!(next.status.success(), "{}", text(&next.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&next.stdout).unwrap();
    let before: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("final_metrics.json")).unwrap())
            .unwrap();
    assert_eq!(
        summary["eval_loss_initial"], before["eval_loss_final"],
        "{summary}"
    );
}
