//! Committing checkpoints in the background while training goes on.
//!
//! The training loop saves a state into a local staging folder (fast: a
//! LoRA state is small) and hands it to [`CheckpointUploader::submit`]; a
//! thread of its own uploads it, commits it, then applies retention. At most
//! one checkpoint is in flight: a submit while one is still uploading waits
//! for it, and says how long it waited. A failed upload is never silent: the
//! next `submit` or [`CheckpointUploader::finish`] returns its error.
//!
//! Not here: the commit protocol (`store`) or what to keep (`retention`).

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{CheckpointError, CheckpointManifest, CheckpointStore, Retention};

/// A saved state waiting to be committed.
pub struct PendingCheckpoint {
    pub step: u64,
    /// Deleted once uploaded.
    pub folder: tempfile::TempDir,
    pub metrics: serde_json::Value,
}

/// What the uploader tells its owner, from its own thread.
#[derive(Debug)]
pub enum CheckpointNotice {
    Committed {
        manifest: CheckpointManifest,
        /// The checkpoint folder's location.
        location: String,
        upload_s: f64,
    },
    /// Retention deleted this committed checkpoint.
    Deleted { step: u64 },
    /// Retention could not delete it; it stays, and training goes on.
    DeleteFailed { step: u64, error: String },
}

type Notify = Box<dyn FnMut(CheckpointNotice) + Send>;

/// The background committer of one job's checkpoints.
pub struct CheckpointUploader {
    work: Option<SyncSender<PendingCheckpoint>>,
    results: Receiver<Result<(), CheckpointError>>,
    in_flight: bool,
    thread: Option<JoinHandle<()>>,
}

impl CheckpointUploader {
    /// Starts the uploader thread. `committed` are the checkpoints already
    /// in `store` (retention counts them too).
    pub fn start(
        store: CheckpointStore,
        retention: Retention,
        committed: Vec<CheckpointManifest>,
        notify: Notify,
    ) -> CheckpointUploader {
        let (work_tx, work_rx) = sync_channel::<PendingCheckpoint>(0);
        let (result_tx, result_rx) = sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("lorafleet-checkpoint".into())
            .spawn(move || uploader_thread(store, retention, committed, notify, work_rx, result_tx))
            .expect("spawning the checkpoint uploader");
        CheckpointUploader {
            work: Some(work_tx),
            results: result_rx,
            in_flight: false,
            thread: Some(thread),
        }
    }

    /// Whether a checkpoint is still uploading.
    pub fn busy(&self) -> bool {
        self.in_flight
    }

    /// Hands `pending` to the uploader, after waiting for the one before
    /// (if any) to finish. Returns how long it waited; fails with the
    /// previous upload's error if it failed.
    pub fn submit(&mut self, pending: PendingCheckpoint) -> Result<Duration, CheckpointError> {
        let started = Instant::now();
        self.wait()?;
        let waited = started.elapsed();
        let work = self.work.as_ref().expect("submit after finish");
        work.send(pending)
            .map_err(|_| CheckpointError::Uploader("its thread ended".into()))?;
        self.in_flight = true;
        Ok(waited)
    }

    /// Waits for the checkpoint in flight (if any) and stops the thread.
    pub fn finish(mut self) -> Result<(), CheckpointError> {
        let result = self.wait();
        self.work = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        result
    }

    fn wait(&mut self) -> Result<(), CheckpointError> {
        if !self.in_flight {
            return Ok(());
        }
        self.in_flight = false;
        self.results
            .recv()
            .map_err(|_| CheckpointError::Uploader("its thread ended".into()))?
    }
}

impl Drop for CheckpointUploader {
    fn drop(&mut self) {
        self.work = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn uploader_thread(
    store: CheckpointStore,
    retention: Retention,
    mut committed: Vec<CheckpointManifest>,
    mut notify: Notify,
    work: Receiver<PendingCheckpoint>,
    results: SyncSender<Result<(), CheckpointError>>,
) {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("lorafleet-upload")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = results.send(Err(CheckpointError::Uploader(e.to_string())));
            return;
        }
    };
    while let Ok(pending) = work.recv() {
        let started = Instant::now();
        let result =
            runtime.block_on(store.commit(pending.step, pending.folder.path(), pending.metrics));
        let manifest = match result {
            Ok(m) => m,
            Err(e) => {
                let _ = results.send(Err(e));
                continue;
            }
        };
        committed.retain(|m| m.step != manifest.step);
        committed.push(manifest.clone());
        notify(CheckpointNotice::Committed {
            location: store.location(manifest.step).name().to_string(),
            manifest,
            upload_s: started.elapsed().as_secs_f64(),
        });
        for step in retention.expired(&committed) {
            match runtime.block_on(store.delete(step)) {
                Ok(()) => {
                    committed.retain(|m| m.step != step);
                    notify(CheckpointNotice::Deleted { step });
                }
                Err(e) => notify(CheckpointNotice::DeleteFailed {
                    step,
                    error: e.to_string(),
                }),
            }
        }
        if results.send(Ok(())).is_err() {
            return;
        }
    }
}
