//! `lorafleet train` and `lorafleet validate` as a user runs them: the
//! quickstart learns, the output folder is a PEFT adapter with its state,
//! and bad specs or datasets fail before training with a message that
//! points at the file, line and key.

use std::path::Path;
use std::process::Output;

mod common;

use common::{lorafleet, repo, spec_in};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn quickstart_learns_and_leaves_a_peft_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec_in(tmp.path(), "quickstart.yaml", |t| t);
    let out = lorafleet(&["train", spec.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = summary["eval_loss_initial"].as_f64().unwrap();
    let last = summary["eval_loss_final"].as_f64().unwrap();
    println!("quickstart validation loss: {first:.4} at step 0, {last:.4} at the end");
    assert!(
        last < 0.6 * first,
        "validation loss {first} → {last}: not below 60%"
    );
    assert_eq!(summary["steps"], 150);

    let final_dir = tmp.path().join("runs/quickstart/final");
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
        "metrics.jsonl",
        "job.yaml",
        "final_metrics.json",
    ] {
        assert!(final_dir.join(f).exists(), "{f} in the output folder");
    }
    let metrics = std::fs::read_to_string(final_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 150, "one line per step");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(final_dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 16);
    assert_eq!(config["target_modules"].as_array().unwrap().len(), 7);

    // The adapter applies to the same random base written as a folder.
    let base = tmp.path().join("base");
    let init = lorafleet(&[
        "init-model",
        "--preset",
        "tiny",
        "--seed",
        "42",
        "-o",
        base.to_str().unwrap(),
    ]);
    assert!(init.status.success());
    let generated = lorafleet(&[
        "generate",
        "--model",
        base.to_str().unwrap(),
        "--adapter",
        final_dir.to_str().unwrap(),
        "--prompt",
        "Uppercase: dog\n",
        "--max-new-tokens",
        "8",
        "--json",
    ]);
    assert!(generated.status.success(), "{}", stderr(&generated));
}

#[test]
fn resume_continues_from_the_saved_state() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec_in(tmp.path(), "ci-tiny.yaml", |t| t);
    let straight = lorafleet(&["train", spec.to_str().unwrap(), "--json"]);
    assert!(straight.status.success(), "{}", stderr(&straight));
    let out_dir = tmp.path().join("runs/ci-tiny/final");
    let straight_log = std::fs::read_to_string(out_dir.join("metrics.jsonl")).unwrap();

    // Stop after step 3 (state saved), then resume to the end.
    std::fs::remove_dir_all(&out_dir).unwrap();
    let first = lorafleet(&["train", spec.to_str().unwrap(), "--stop-after", "3"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("trainer_state.json")).unwrap())
            .unwrap();
    assert_eq!(state["global_step"], 3);
    let resumed = lorafleet(&["train", spec.to_str().unwrap(), "--resume"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(stderr(&resumed).contains("resuming ci-tiny from step 3"));
    let losses = |log: &str| -> Vec<String> {
        log.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].to_string())
            .collect()
    };
    let resumed_log = std::fs::read_to_string(out_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(losses(&resumed_log), losses(&straight_log));
}

#[test]
fn validate_reports_counts_without_training() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec_in(tmp.path(), "quickstart.yaml", |t| t);
    let out = lorafleet(&["validate", spec.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["train"]["samples"], 2000);
    assert_eq!(v["validation"]["samples"], 200);
    assert_eq!(v["steps_per_epoch"], 125);
    assert_eq!(v["train"]["truncated"], 0);
    assert!(!tmp.path().join("runs").exists(), "nothing written");
}

/// Runs `train` on a broken spec: exit 2, no panic, no output folder, and
/// stderr contains every needle.
fn assert_rejected(spec: &Path, needles: &[&str]) {
    let out = lorafleet(&["train", spec.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
    assert!(
        !spec.parent().unwrap().join("runs").exists(),
        "nothing trained"
    );
}

#[test]
fn spec_mistakes_point_at_file_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let unknown = spec_in(tmp.path(), "ci-tiny.yaml", |t| {
        t.replace("  alpha: 32", "  alpha: 32\n  rank: 4")
    });
    assert_rejected(
        &unknown,
        &["ci-tiny.yaml:", "lora.rank: unknown key; did you mean r?"],
    );

    let tmp = tempfile::tempdir().unwrap();
    let zero = spec_in(tmp.path(), "ci-tiny.yaml", |t| {
        t.replace("  r: 16", "  r: 0")
    });
    assert_rejected(&zero, &["lora.r: must be between 1 and 1024, got 0"]);

    let tmp = tempfile::tempdir().unwrap();
    let wrong = spec_in(tmp.path(), "ci-tiny.yaml", |t| {
        t.replace("  r: 16", "  r: eight")
    });
    assert_rejected(&wrong, &["lora.r:", "\"eight\""]);

    let tmp = tempfile::tempdir().unwrap();
    let missing = spec_in(tmp.path(), "ci-tiny.yaml", |t| {
        t.replace("quickstart-train.jsonl", "no-such-file.jsonl")
    });
    assert_rejected(&missing, &["no-such-file.jsonl", "not found"]);
}

#[test]
fn dataset_mistakes_name_the_file_and_line() {
    let cases: [(&str, &str, &[&str]); 3] = [
        (
            "{\"prompt\": \"a\", \"completion\": \"b\"}\nnot json\n",
            "bad.jsonl",
            &["bad.jsonl:2:"],
        ),
        (
            "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
            "chat.jsonl",
            &["chat.jsonl:1:", "assistant"],
        ),
        ("\n\n", "empty.jsonl", &["empty.jsonl", "empty dataset"]),
    ];
    for (content, name, needles) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join(name);
        std::fs::write(&data, content).unwrap();
        let spec = spec_in(tmp.path(), "ci-tiny.yaml", |t| {
            let train = repo("examples/data/quickstart-train.jsonl");
            t.replace(train.to_str().unwrap(), data.to_str().unwrap())
        });
        assert_rejected(&spec, needles);
    }
}
