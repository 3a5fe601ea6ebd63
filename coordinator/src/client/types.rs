//! What the typed calls of [`Connection`](super::Connection) take and
//! return: plain data with the coordinator's own enums ([`JobStatus`],
//! [`EventLevel`], [`WorkerState`]), no protobuf message among them.
//!
//! Not here: turning these into messages and back (`api::convert`), or
//! printing them (the CLI decides its `--json` shapes).

use std::collections::HashMap;

pub use crate::store::{JobError, JobStatus, Level as EventLevel, WorkerState};

/// A job as the coordinator reports it to its tenant.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub id: String,
    pub name: String,
    pub status: JobStatus,
    /// Unix seconds.
    pub created_at: i64,
    pub finished_at: Option<i64>,
    /// The last completed optimizer step.
    pub step: u64,
    /// `None` until known (a spec that counts epochs).
    pub total_steps: Option<u64>,
    /// Attempts started so far.
    pub attempt: u32,
    pub error: Option<JobError>,
    pub priority: i32,
    pub workers_min: u32,
    pub workers_max: u32,
    /// `cpu`, `cuda`, ...
    pub backend: String,
    pub failures: u32,
    pub max_failures: u32,
    /// The spec as stored (paths resolved, uploads in place).
    pub spec_yaml: String,
    pub tenant: String,
    /// The last step's training loss.
    pub train_loss: Option<f64>,
    /// The last validation pass's loss.
    pub valid_loss: Option<f64>,
    /// The last step's wall time.
    pub step_seconds: Option<f64>,
    /// The last step's throughput (all ranks).
    pub tokens_per_s: Option<f64>,
    /// Target tokens trained so far.
    pub trained_tokens: u64,
    /// Seconds to the last step at the last step's pace, while running.
    pub eta_seconds: Option<f64>,
}

impl Job {
    /// A job called `name` with status `status` and nothing else set:
    /// a starting point for tests and examples.
    pub fn new(id: &str, name: &str, status: JobStatus) -> Job {
        Job {
            id: id.to_string(),
            name: name.to_string(),
            status,
            created_at: 0,
            finished_at: None,
            step: 0,
            total_steps: None,
            attempt: 0,
            error: None,
            priority: 0,
            workers_min: 0,
            workers_max: 0,
            backend: String::new(),
            failures: 0,
            max_failures: 0,
            spec_yaml: String::new(),
            tenant: String::new(),
            train_loss: None,
            valid_loss: None,
            step_seconds: None,
            tokens_per_s: None,
            trained_tokens: 0,
            eta_seconds: None,
        }
    }
}

/// One page of [`Connection::list`](super::Connection::list), newest first.
#[derive(Clone, Debug, PartialEq)]
pub struct JobPage {
    pub data: Vec<Job>,
    /// Whether a next page exists (ask with the last id as `after`).
    pub has_more: bool,
}

/// One event of a job's log.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Grows with every event stored, across all jobs.
    pub id: i64,
    pub job_id: String,
    pub created_at: i64,
    pub level: EventLevel,
    /// The event's type (`type` in JSON): `train.step`, `job.failed`, ...
    pub kind: String,
    pub message: String,
    /// Any JSON value; null when the coordinator sent none or not JSON.
    pub data: serde_json::Value,
}

/// A committed checkpoint of a job.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub step: u64,
    /// Where its folder is in the job's storage.
    pub url: String,
    /// `{"train_loss": ..., ...}`; null when there are none.
    pub metrics: serde_json::Value,
    pub committed_at: i64,
}

/// A piece of a downloaded checkpoint file. A file's pieces come in a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileChunk {
    /// The file's path inside the checkpoint folder, as the coordinator
    /// sent it (check it before use).
    pub path: String,
    pub data: Vec<u8>,
    /// On the file's last piece: the hex SHA-256 of the whole file.
    pub sha256: Option<String>,
    /// The checkpoint's step.
    pub step: u64,
}

/// A worker of the fleet, as `Workers.List` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Worker {
    pub id: String,
    pub name: String,
    pub host: String,
    pub backend: String,
    pub device: String,
    pub memory_bytes: u64,
    pub version: String,
    pub state: WorkerState,
    /// The job it runs a rank of, if any.
    pub job_id: Option<String>,
    pub rank: Option<u32>,
    pub registered_at: i64,
    pub last_heartbeat: i64,
    pub ring_addr: String,
}

/// A spec to queue ([`Connection::submit`](super::Connection::submit)).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Submission {
    /// The spec file's text, exactly as written.
    pub spec_yaml: String,
    /// How messages name the file (`job.yaml`).
    pub file_name: String,
    /// The absolute folder relative paths in the spec start from.
    pub base_dir: String,
    /// `dataset.train` / `dataset.validation` → the URL of an upload that
    /// replaces the path in the spec.
    pub datasets: HashMap<String, String>,
    /// An uploaded base model replacing `model.path`: (file name, upload
    /// URL) per file.
    pub model_files: Vec<(String, String)>,
    /// The model is a Hugging Face folder of those files (not one file).
    pub model_is_folder: bool,
}

/// What an upload is for; it sets the size limit the coordinator applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadPurpose {
    Dataset,
    /// A base model's file (which may be larger).
    Model,
}

impl UploadPurpose {
    /// The word the API uses.
    pub fn name(self) -> &'static str {
        match self {
            UploadPurpose::Dataset => "dataset",
            UploadPurpose::Model => "model",
        }
    }
}

/// Where an uploaded file was stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uploaded {
    /// Where workers read it; what a [`Submission`] names it by.
    pub url: String,
    pub sha256: String,
    pub size_bytes: u64,
}
