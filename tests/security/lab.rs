//! The lab the tenant and worker attacks run in: a real `serve --config`
//! with two tenants (`team-a`, `team-b`), an operator, their folders on
//! disk and prefixes in a real S3 server (SeaweedFS), and gRPC clients
//! that speak to the coordinator as any of them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use coordinator::api;
use coordinator::client::Connection;
use sha2::Digest;
use tempfile::TempDir;
use testkit::SeaweedFs;

use crate::common::fleet::{CLUSTER_TOKEN, Fleet, text};

pub const TOKEN_A: &str = "tenant-a-token-for-the-attack-suite";
pub const TOKEN_B: &str = "tenant-b-token-for-the-attack-suite";
pub const OPERATOR: &str = "operator-token-for-the-attack-suite";

/// The served coordinator and the tenants' storage.
pub struct Lab {
    pub fleet: Fleet,
    /// Team A's folder: its data, adapters and model.
    pub a: PathBuf,
    /// Team B's folder; `b/link` is a symlink to `a`.
    pub b: PathBuf,
    /// The coordinator's folder of uploads (`datasets/{tenant}/`).
    pub uploads: PathBuf,
    pub s3: &'static SeaweedFs,
    pub runtime: tokio::runtime::Runtime,
    dir: TempDir,
}

impl Lab {
    /// Starts the coordinator. Team A's storage is `a/` and
    /// `s3://BUCKET/a`, team B's `b/` and `s3://BUCKET/b`; both prefixes
    /// are written as paths and as `file://` URLs.
    pub fn start() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let (a, b) = (root.join("a"), root.join("b"));
        std::fs::create_dir_all(a.join("adapter")).unwrap();
        std::fs::create_dir_all(b.join("runs")).unwrap();
        let data = crate::common::repo("examples/data/quickstart-train.jsonl");
        std::fs::copy(&data, a.join("secret.jsonl")).unwrap();
        std::fs::copy(&data, b.join("data.jsonl")).unwrap();
        std::fs::write(a.join("adapter/adapter_config.json"), "{}").unwrap();
        std::os::unix::fs::symlink(&a, b.join("link")).unwrap();
        let s3 = SeaweedFs::shared();
        let hash = |t: &str| hex::encode(sha2::Sha256::digest(t.as_bytes()));
        let config = root.join("coordinator.yaml");
        let storage = |folder: &Path, prefix: &str| {
            format!(
                "[{}, file://{}, {}]",
                folder.display(),
                folder.display(),
                s3.url(prefix)
            )
        };
        std::fs::write(
            &config,
            format!(
                "cluster_token_sha256: {}\noperators:\n  ops:\n    token_sha256: {}\ntenants:\n  team-a:\n    token_sha256: {}\n    storage: {}\n  team-b:\n    token_sha256: {}\n    storage: {}\n",
                hash(CLUSTER_TOKEN),
                hash(OPERATOR),
                hash(TOKEN_A),
                storage(&a, "a"),
                hash(TOKEN_B),
                storage(&b, "b"),
            ),
        )
        .unwrap();
        let state = root.join("state.db");
        let fleet = Fleet::serve_with_env(&state, "127.0.0.1:0", Some(&config), TOKEN_A, s3.env());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Lab {
            fleet,
            a,
            b,
            uploads: root.join("state.db.d/datasets"),
            s3,
            runtime,
            dir,
        }
    }

    /// Kills the coordinator with SIGKILL and starts it again on the same
    /// address, state and config.
    pub fn kill_and_restart_server(&mut self) {
        self.fleet.kill_and_restart_server();
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A connection to the coordinator as `token`.
    pub fn connect(&self, token: &str) -> Connection {
        connect(&self.runtime, &self.fleet.url, token)
    }

    /// Submits `spec_yaml` (paths relative to the lab's folder) as `token`.
    pub fn submit(&self, token: &str, spec_yaml: &str) -> Result<api::Job, tonic::Status> {
        let conn = self.connect(token);
        let request = submit_request(spec_yaml, self.root());
        self.runtime
            .block_on(conn.jobs().submit(request))
            .map(|r| r.into_inner())
    }

    /// The fleet as `token` sees it (`workers --json`'s `data`).
    pub fn workers(&self, token: &str) -> Vec<serde_json::Value> {
        let out = self.fleet.cli(Some(token), &["workers", "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        list["data"].as_array().unwrap().clone()
    }

    /// Every file below `folder`, with its bytes.
    pub fn snapshot(folder: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut files = Vec::new();
        let mut pending = vec![folder.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let kind = entry.file_type().unwrap();
                if kind.is_dir() {
                    pending.push(entry.path());
                } else if kind.is_file() {
                    files.push((entry.path(), std::fs::read(entry.path()).unwrap()));
                }
            }
        }
        files.sort();
        files
    }
}

/// A gRPC connection to the coordinator at `url` as `token`.
pub fn connect(runtime: &tokio::runtime::Runtime, url: &str, token: &str) -> Connection {
    runtime
        .block_on(Connection::open(url, token, Duration::from_secs(10)))
        .unwrap()
}

/// `Jobs.Submit` of `spec_yaml`, whose relative paths start at `base_dir`,
/// as this version of lorafleet sends it.
pub fn submit_request(spec_yaml: &str, base_dir: &Path) -> api::SubmitRequest {
    api::SubmitRequest {
        spec_yaml: spec_yaml.to_string(),
        file_name: "job.yaml".into(),
        base_dir: base_dir.display().to_string(),
        version: coordinator::PROTOCOL_VERSION.into(),
        ..Default::default()
    }
}

/// A small valid spec training on `train` and checkpointing to `storage`,
/// for `workers` workers; `max_steps` steps.
pub fn spec(train: &str, storage: &str, max_steps: u32) -> String {
    format!(
        "name: attack\nmodel:\n  preset: tiny\ndataset:\n  train: {train}\n  max_seq_len: 64\nlora:\n  r: 4\n  alpha: 8\ntraining:\n  max_steps: {max_steps}\n  global_batch_size: 4\n  micro_batch_size: 4\n  learning_rate: 1.0e-3\n  seed: 1\nresources:\n  workers: 1\n  threads_per_worker: 1\ncheckpoint:\n  every_steps: 5\n  storage: {storage}\n"
    )
}
