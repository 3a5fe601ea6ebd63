//! The OpenAI-compatible API driven by the real `openai` Python package
//! (tests/openai/client.py) against a coordinator and a worker on
//! 127.0.0.1: files, a job on the catalogue's `tiny` base followed to
//! success, paging, events, checkpoints, a download byte-identical to
//! `lorafleet download`'s, a cancel, OpenAI-shaped errors, and a second
//! tenant that finds none of the first's objects.

mod common;

use std::path::Path;
use std::process::Command;

use common::fleet::{CLUSTER_TOKEN, Fleet, text};
use common::repo;

/// The interpreter with `openai` installed (scripts/test makes it).
fn python() -> String {
    std::env::var("LORAFLEET_PYTHON").expect(
        "LORAFLEET_PYTHON is not set: run the tests with scripts/test, which installs the openai package",
    )
}

fn hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Two tenants, and a catalogue with the tiny random base.
fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("coordinator.yaml");
    let text = format!(
        "cluster_token_sha256: {}\n\
         tenants:\n  team-a:\n    token_sha256: {}\n    storage: [{a}]\n  \
         team-b:\n    token_sha256: {}\n    storage: [{b}]\n\
         models:\n  tiny:\n    preset: tiny\n    learning_rate: 2.0e-3\n    max_seq_len: 64\n    batch_size: 8\n    n_epochs: 1\n",
        hash(CLUSTER_TOKEN),
        hash("token-of-a"),
        hash("token-of-b"),
        a = dir.join("a").display(),
        b = dir.join("b").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_openai_client_fine_tunes_downloads_and_cannot_cross_tenants() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = config(dir);
    let mut fleet = Fleet::serve(
        &dir.join("state.db"),
        "127.0.0.1:0",
        Some(&config),
        "token-of-a",
    );
    fleet.add_worker("w0");
    fleet.wait_for_workers(1);

    let api_out = dir.join("api-download");
    let run = Command::new(python())
        .arg(repo("tests/openai/client.py"))
        .args([&fleet.url, "token-of-a", "token-of-b"])
        .arg(repo("examples/data"))
        .arg(&api_out)
        .output()
        .expect("python runs");
    assert!(
        run.status.success(),
        "client.py failed:\n{}\n{}",
        text(&run.stdout),
        text(&run.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(text(&run.stdout).lines().last().unwrap()).unwrap();
    let job = summary["job"].as_str().unwrap();
    let step = summary["step"].as_u64().unwrap().to_string();

    // The same checkpoint through the CLI: byte for byte the same adapter.
    let cli_out = dir.join("cli-download");
    let out = fleet.cli(
        Some("token-of-a"),
        &[
            "download",
            job,
            "--step",
            &step,
            "-o",
            cli_out.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let name = "adapter_model.safetensors";
    let api = std::fs::read(api_out.join(name)).unwrap();
    let cli = std::fs::read(cli_out.join(name)).unwrap();
    assert!(!api.is_empty());
    assert!(
        api == cli,
        "the API's adapter differs from lorafleet download's"
    );
    drop(fleet);
}
