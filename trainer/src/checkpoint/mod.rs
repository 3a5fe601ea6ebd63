//! Checkpoints in object storage: atomic commits, retention, resume.
//!
//! One code path for every store `crate::storage` opens (local folders,
//! `file://`, `memory://`, `s3://`, `gs://`, `az://`). A checkpoint is a
//! folder `checkpoints/step-{step:09}/` under the job's root holding a saved
//! [`TrainState`](crate::train::TrainState) (the PEFT adapter, optimizer
//! state, `trainer_state.json`, `metrics.jsonl`, `job.yaml`) and
//! `MANIFEST.json`, written last: a checkpoint without a manifest that
//! verifies does not exist.
//!
//! - [`manifest`]: the commit record and its checks.
//! - [`store`]: commit, list, verify, fetch and delete ([`CheckpointStore`]).
//! - [`retention`]: which checkpoints `keep_last` / `keep_best` let go.
//! - [`uploader`]: commits in a background thread while training goes on,
//!   at most one in flight ([`CheckpointUploader`]).
//!
//! Not here: what a training state holds (`train::state`), or recording
//! checkpoints in the coordinator's database.

pub mod manifest;
pub mod retention;
pub mod store;
pub mod uploader;

use std::path::Path;

pub use manifest::{CheckpointManifest, MANIFEST_FILE, ManifestFile};
pub use retention::Retention;
pub use store::{CheckpointStore, FileCheck, step_folder};
pub use uploader::{CheckpointNotice, CheckpointUploader};

use crate::storage::{Location, StorageError};

/// Why a checkpoint could not be written, read or trusted.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Location(#[from] StorageError),
    #[error("{location}: {source}")]
    Store {
        location: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{checkpoint}: no {MANIFEST_FILE}, so it was never committed")]
    Uncommitted { checkpoint: String },
    #[error("{location}: {message}")]
    Invalid { location: String, message: String },
    #[error("{checkpoint}: {file}: {message}")]
    Corrupt {
        checkpoint: String,
        file: String,
        message: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the checkpoint uploader stopped: {0}")]
    Uploader(String),
}

impl CheckpointError {
    fn store(at: &Location, source: object_store::Error) -> CheckpointError {
        CheckpointError::Store {
            location: at.name().to_string(),
            source,
        }
    }

    fn io(path: &Path, source: std::io::Error) -> CheckpointError {
        CheckpointError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Runs `future` to completion on a small runtime of its own, for the
/// synchronous parts of the trainer (resume, retention at start).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
        .block_on(future)
}
