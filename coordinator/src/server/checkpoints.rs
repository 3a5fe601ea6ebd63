//! What the `Jobs` service serves of a job's checkpoints: the list (from
//! the store) and downloads (from checkpoint storage, through the
//! coordinator, so clients never need storage credentials).
//!
//! A download sends every file the checkpoint's manifest lists, then the
//! manifest itself. Each file is checked against the manifest as it
//! streams: a file that differs ends the download with `DATA_LOSS` naming
//! it, and the last chunk of each file carries the manifest's SHA-256 so
//! the client checks the bytes it received too. Not here: who may ask
//! (`access`), the commit protocol (`trainer::checkpoint`).

use std::pin::Pin;

use axum::body::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use trainer::checkpoint::{CheckpointManifest, CheckpointStore, FileCheck, MANIFEST_FILE};

use crate::api::{self, CHUNK_BYTES};
use crate::store::{Checkpoint, Job, NewCheckpoint};
use job::spec::JobSpec;

use super::control::job_checkpoints;
use super::{Coordinator, status_of};

pub(super) type FileStream = Pin<Box<dyn Stream<Item = Result<api::FileChunk, Status>> + Send>>;
type ChunkSender = mpsc::Sender<Result<api::FileChunk, Status>>;

impl Coordinator {
    /// Makes the store's list of `job`'s checkpoints what checkpoint
    /// storage holds: a checkpoint is committed when its manifest is there
    /// (whatever events said or failed to say), so ones the store lacks
    /// are recorded from their manifests and ones storage lacks are
    /// forgotten. Called when an attempt starts, before a restart picks
    /// its resume step, and before a job is marked succeeded. Says what
    /// changed, for the log; an unreachable storage changes nothing.
    pub(super) async fn reconcile_checkpoints(&self, job: &Job) -> Result<(), String> {
        let spec: std::sync::Arc<JobSpec> = self
            .spec_of(job)
            .map_err(|e| format!("the stored spec no longer reads: {e}"))?;
        let storage = job_checkpoints(&spec, job.tenant.as_str(), &job.id)?;
        let committed = storage
            .committed()
            .await
            .map_err(|e| format!("cannot list the checkpoints: {e}"))?;
        let store = self.store();
        let recorded = store
            .list_checkpoints(&job.id)
            .await
            .map_err(|e| e.to_string())?;
        for manifest in &committed {
            if recorded.iter().any(|c| c.step == manifest.step) {
                continue;
            }
            tracing::info!(
                "job {}: checkpoint at step {} found in storage (its event was lost); recorded",
                job.id,
                manifest.step
            );
            let checkpoint = NewCheckpoint {
                job: job.id.clone(),
                step: manifest.step,
                url: storage.location(manifest.step).name().to_string(),
                metrics: manifest.metrics.clone(),
            };
            store
                .record_checkpoint(&checkpoint)
                .await
                .map_err(|e| e.to_string())?;
        }
        for checkpoint in &recorded {
            if committed.iter().any(|m| m.step == checkpoint.step) {
                continue;
            }
            tracing::info!(
                "job {}: checkpoint at step {} is not in storage; forgotten",
                job.id,
                checkpoint.step
            );
            store
                .delete_checkpoint(&job.id, checkpoint.step)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// [`Coordinator::reconcile_checkpoints`], with a failure logged.
    pub(super) async fn reconcile_or_log(&self, job: &Job) {
        if let Err(error) = self.reconcile_checkpoints(job).await {
            tracing::warn!(
                "job {}: checkpoints not checked against storage: {error}",
                job.id
            );
        }
    }

    /// Job `job`'s committed checkpoints, oldest first.
    pub(super) async fn checkpoint_list(&self, job: &Job) -> Result<api::CheckpointList, Status> {
        let checkpoints = self
            .store()
            .list_checkpoints(&job.id)
            .await
            .map_err(status_of)?;
        Ok(api::CheckpointList {
            data: checkpoints.iter().map(api::Checkpoint::from).collect(),
        })
    }

    /// The manifest of the checkpoint of `job` that `step` names
    /// (`latest`, `best` or a number), and the storage it is in.
    pub(super) async fn checkpoint_manifest(
        &self,
        job: &Job,
        step: &str,
    ) -> Result<(CheckpointStore, CheckpointManifest), Status> {
        let checkpoints = self
            .store()
            .list_checkpoints(&job.id)
            .await
            .map_err(status_of)?;
        let checkpoint = pick_checkpoint(&checkpoints, step)
            .map_err(|message| Status::not_found(format!("job {}: {message}", job.id)))?;
        let store = self.checkpoint_storage(job)?;
        let manifest = store
            .manifest(checkpoint.step)
            .await
            .map_err(|e| Status::data_loss(e.to_string()))?;
        Ok((store, manifest))
    }

    /// Where `job`'s checkpoints are, as its stored spec says.
    pub(super) fn checkpoint_storage(&self, job: &Job) -> Result<CheckpointStore, Status> {
        let spec: std::sync::Arc<JobSpec> = self
            .spec_of(job)
            .map_err(|e| Status::internal(format!("the stored spec no longer reads: {e}")))?;
        job_checkpoints(&spec, job.tenant.as_str(), &job.id).map_err(Status::failed_precondition)
    }

    /// Streams file `name` (one the manifest lists, or the manifest
    /// itself) of the checkpoint of `job` that `step` names, checked
    /// against the manifest as it goes: bytes that differ end the stream
    /// with `DATA_LOSS`. Returns its size and its bytes.
    pub(super) async fn checkpoint_file(
        &self,
        job: &Job,
        step: &str,
        name: &str,
    ) -> Result<(u64, mpsc::Receiver<Result<Bytes, Status>>), Status> {
        let (store, manifest) = self.checkpoint_manifest(job, step).await?;
        let (tx, rx) = mpsc::channel(4);
        if name == MANIFEST_FILE {
            let bytes = manifest.to_json();
            let size = bytes.len() as u64;
            let _ = tx.send(Ok(Bytes::from(bytes))).await;
            return Ok((size, rx));
        }
        let Some(file) = manifest.files.iter().find(|f| f.path == name).cloned() else {
            let names: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
            return Err(Status::not_found(format!(
                "job {}: the checkpoint at step {} has no file {name:?} (it has: {}, {MANIFEST_FILE})",
                job.id,
                manifest.step,
                names.join(", ")
            )));
        };
        let size = file.bytes;
        let step = manifest.step;
        tokio::spawn(async move {
            let checkpoint = store.location(step).name().to_string();
            let mut check = FileCheck::new(&checkpoint, &file);
            let mut stream = match store.file_stream(step, &file.path).await {
                Ok(stream) => stream,
                Err(e) => {
                    let _ = tx.send(Err(Status::data_loss(e.to_string()))).await;
                    return;
                }
            };
            while let Some(bytes) = stream.next().await {
                let checked = bytes
                    .map_err(|e| Status::unavailable(e.to_string()))
                    .and_then(|bytes| {
                        check
                            .update(&bytes)
                            .map(|()| bytes)
                            .map_err(|e| Status::data_loss(e.to_string()))
                    });
                let failed = checked.is_err();
                if tx.send(checked).await.is_err() || failed {
                    return;
                }
            }
            if let Err(e) = check.finish() {
                let _ = tx.send(Err(Status::data_loss(e.to_string()))).await;
            }
        });
        Ok((size, rx))
    }

    /// Streams the files of the checkpoint of `job` that `step` names.
    pub(super) async fn checkpoint_files(
        &self,
        job: &Job,
        step: &str,
    ) -> Result<FileStream, Status> {
        let (store, manifest) = self.checkpoint_manifest(job, step).await?;
        let step = manifest.step;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for file in &manifest.files {
                if let Err(status) = send_file(&store, step, file, &tx).await {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
            let bytes = manifest.to_json();
            let sha256 = hex::encode(Sha256::digest(&bytes));
            let chunk = api::FileChunk {
                path: MANIFEST_FILE.to_string(),
                data: bytes,
                sha256,
                step,
            };
            let _ = tx.send(Ok(chunk)).await;
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

/// Streams one file in chunks of at most `CHUNK_BYTES`, checking it
/// against the manifest; its last chunk carries the manifest's SHA-256.
async fn send_file(
    store: &CheckpointStore,
    step: u64,
    file: &trainer::checkpoint::ManifestFile,
    tx: &ChunkSender,
) -> Result<(), Status> {
    let checkpoint = store.location(step).name().to_string();
    let mut check = FileCheck::new(&checkpoint, file);
    let mut stream = store
        .file_stream(step, &file.path)
        .await
        .map_err(|e| Status::data_loss(e.to_string()))?;
    let mut pending: Option<Vec<u8>> = None;
    while let Some(bytes) = stream.next().await {
        let bytes = bytes.map_err(|e| Status::unavailable(e.to_string()))?;
        check
            .update(&bytes)
            .map_err(|e| Status::data_loss(e.to_string()))?;
        for piece in bytes.chunks(CHUNK_BYTES) {
            if let Some(data) = pending.replace(piece.to_vec()) {
                let chunk = api::FileChunk {
                    path: file.path.clone(),
                    data,
                    sha256: String::new(),
                    step,
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    let sha256 = check
        .finish()
        .map_err(|e| Status::data_loss(e.to_string()))?;
    let chunk = api::FileChunk {
        path: file.path.clone(),
        data: pending.unwrap_or_default(),
        sha256,
        step,
    };
    let _ = tx.send(Ok(chunk)).await;
    Ok(())
}

/// The checkpoint `step` names: `latest` (or empty), `best` (lowest
/// validation loss, else latest) or a step number.
fn pick_checkpoint<'a>(
    checkpoints: &'a [Checkpoint],
    step: &str,
) -> Result<&'a Checkpoint, String> {
    let latest = checkpoints.iter().max_by_key(|c| c.step);
    let picked = match step {
        "" | "latest" => latest,
        "best" => checkpoints
            .iter()
            .filter_map(|c| c.metrics["eval_loss"].as_f64().map(|loss| (loss, c)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, c)| c)
            .or(latest),
        number => {
            let step: u64 = number.parse().map_err(|_| {
                format!("--step {number:?}: expected latest, best or a step number")
            })?;
            return checkpoints.iter().find(|c| c.step == step).ok_or_else(|| {
                let have: Vec<String> = checkpoints.iter().map(|c| c.step.to_string()).collect();
                let have = if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                };
                format!("no checkpoint at step {step} (there are: {have})")
            });
        }
    };
    picked.ok_or_else(|| "no checkpoint yet".to_string())
}
