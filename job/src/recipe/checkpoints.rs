//! A run's checkpoints, seen from one rank: where they go, resuming from
//! them, and handing each save to the background uploader.
//!
//! Checkpoints of a run live in `{checkpoint.storage}/{tenant}/{job}/
//! checkpoints/step-N/` (`trainer::checkpoint`). A worker passes the job's
//! tenant and id; a run by hand is tenant `local` and the spec's `name`.
//! Every rank resumes from the same newest verified checkpoint; only rank 0
//! writes. Not here: the training loop (`recipe`), the commit protocol.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use trainer::checkpoint::uploader::PendingCheckpoint;
use trainer::checkpoint::{
    CheckpointNotice, CheckpointStore, CheckpointUploader, Retention, block_on,
};
use trainer::model::LlamaConfig;
use trainer::train::TrainState;

use super::sink::EventSink;
use super::{RecipeError, RunIdentity};
use crate::{JobEvent, JobSpec};

/// Training waits longer than this for the previous upload: worth an event.
const WAIT_WORTH_TELLING: Duration = Duration::from_millis(20);

/// The checkpoints of one run, seen from one rank.
pub struct RunCheckpoints {
    store: CheckpointStore,
    /// Rank 0's background committer; `None` on other ranks.
    uploader: Option<CheckpointUploader>,
    sink: Arc<dyn EventSink>,
    /// Seconds training stood still for checkpoints (saving and waiting).
    blocking_s: f64,
    spec_yaml: String,
    base_model: String,
}

impl RunCheckpoints {
    /// Opens the run's checkpoint folder. On rank 0 of a fresh start
    /// (`resume` false), checkpoints left by an earlier run of the same job
    /// are removed first, so they can neither be resumed by mistake nor
    /// outrank the new run's in retention. Rank 0's manifests are signed
    /// with the identity's writer.
    pub fn open(
        spec: &JobSpec,
        identity: &RunIdentity,
        rank: usize,
        base_model: &str,
        sink: Arc<dyn EventSink>,
    ) -> Result<RunCheckpoints, RecipeError> {
        let storage = spec.checkpoint.storage.to_string();
        let store = CheckpointStore::open(&storage, &identity.tenant, &identity.job_id)
            .map_err(|e| RecipeError::context("checkpoint.storage cannot be opened", e))?
            .with_writer(identity.writer());
        let mut committed = Vec::new();
        if rank == 0 {
            let steps = block_on(store.steps()).map_err(|e| {
                RecipeError::context(format!("cannot list {}", store.root().name()), e)
            })?;
            if !identity.resume && !steps.is_empty() {
                eprintln!(
                    "removing {} checkpoint(s) of an earlier run in {} (--resume continues one instead)",
                    steps.len(),
                    store.root().name()
                );
                for step in steps {
                    block_on(store.delete(step)).map_err(RecipeError::checkpoint)?;
                }
            } else {
                committed = block_on(store.committed()).map_err(RecipeError::checkpoint)?;
            }
        }
        let uploader = (rank == 0).then(|| {
            let retention = Retention {
                keep_last: spec.checkpoint.keep_last as usize,
                keep_best: spec.checkpoint.keep_best,
            };
            let sink = sink.clone();
            CheckpointUploader::start(
                store.clone(),
                retention,
                committed,
                Box::new(move |notice| tell(notice, &*sink)),
            )
        });
        Ok(RunCheckpoints {
            store,
            uploader,
            sink,
            blocking_s: 0.0,
            spec_yaml: spec.to_yaml(),
            base_model: base_model.to_string(),
        })
    }

    /// The newest checkpoint that verifies, loaded; `None` when there is
    /// none. Newer ones that do not verify are skipped with an event.
    pub fn restore(&self, model: &LlamaConfig) -> Result<Option<TrainState>, RecipeError> {
        let staging = tempfile::tempdir()
            .map_err(|e| RecipeError::context("cannot create a temporary folder", e))?;
        let sink = self.sink.clone();
        let mut skipped = move |step: u64, error: &trainer::checkpoint::CheckpointError| {
            sink.emit(JobEvent::CheckpointSkipped {
                step,
                error: error.to_string(),
            });
        };
        let found =
            block_on(self.store.restore_latest(staging.path(), &mut skipped)).map_err(|e| {
                RecipeError::context(
                    format!("cannot read checkpoints in {}", self.store.root().name()),
                    e,
                )
            })?;
        let Some(manifest) = found else {
            return Ok(None);
        };
        let state = TrainState::load(staging.path(), model).map_err(|e| {
            RecipeError::context(
                format!(
                    "the checkpoint at step {} in {} verifies but cannot be loaded",
                    manifest.step,
                    self.store.root().name()
                ),
                e,
            )
        })?;
        Ok(Some(state))
    }

    /// Saves `state` as the checkpoint of its step (rank 0; other ranks do
    /// nothing): written to a local staging folder, then committed in the
    /// background. Fails if the previous checkpoint's upload failed.
    pub fn save(&mut self, state: &TrainState) -> Result<(), RecipeError> {
        let Some(uploader) = self.uploader.as_mut() else {
            return Ok(());
        };
        let started = Instant::now();
        let folder = tempfile::tempdir()
            .map_err(|e| RecipeError::context("cannot create a temporary folder", e))?;
        write_state(folder.path(), state, &self.spec_yaml, &self.base_model)?;
        let step = state.step as u64;
        let metrics = json!({
            "train_loss": state.log.last().map(|m| m.loss),
            "eval_loss": state.evals.last().filter(|e| e.step == state.step).map(|e| e.eval_loss),
        });
        let busy = uploader.busy();
        let waited = uploader
            .submit(PendingCheckpoint {
                step,
                folder,
                metrics,
            })
            .map_err(|e| RecipeError::context("a checkpoint upload failed", e))?;
        if busy && waited > WAIT_WORTH_TELLING {
            self.sink.emit(JobEvent::CheckpointWaiting {
                step,
                waited_s: waited.as_secs_f64(),
            });
        }
        self.blocking_s += started.elapsed().as_secs_f64();
        Ok(())
    }

    /// Waits for the last upload; fails if it failed. Returns the seconds
    /// training stood still for checkpoints, this last wait included.
    pub fn finish(mut self) -> Result<f64, RecipeError> {
        if let Some(uploader) = self.uploader.take() {
            let started = Instant::now();
            uploader.finish().map_err(|e| {
                RecipeError::context("the last checkpoint could not be committed", e)
            })?;
            self.blocking_s += started.elapsed().as_secs_f64();
        }
        Ok(self.blocking_s)
    }

    pub fn location(&self) -> String {
        self.store.root().name().to_string()
    }
}

/// The step at which a run at `step` next stops to checkpoint: the next
/// multiple of `every` (0: none before the end), or `end`.
pub fn next_checkpoint(step: usize, every: usize, end: usize) -> usize {
    if every == 0 {
        return end;
    }
    (step / every + 1).saturating_mul(every).min(end)
}

/// Tells the sink what the uploader did.
fn tell(notice: CheckpointNotice, sink: &dyn EventSink) {
    sink.emit(match notice {
        CheckpointNotice::Committed {
            manifest,
            location,
            upload_s,
        } => JobEvent::CheckpointSaved {
            step: manifest.step,
            path: location,
            bytes: manifest.total_bytes(),
            metrics: manifest.metrics,
            upload_s,
        },
        CheckpointNotice::Deleted { step } => JobEvent::CheckpointDeleted { step },
        CheckpointNotice::DeleteFailed { step, error } => JobEvent::CheckpointDeleteFailed {
            step,
            error: error.to_string(),
        },
    });
}

/// Writes a whole training state into `dir`: the PEFT adapter, optimizer
/// and trainer state, `metrics.jsonl` (one line per step) and `job.yaml`.
pub fn write_state(
    dir: &Path,
    state: &TrainState,
    spec_yaml: &str,
    base_model: &str,
) -> Result<(), RecipeError> {
    state
        .save(dir, base_model)
        .map_err(|e| RecipeError::context(format!("cannot write {}", dir.display()), e))?;
    let mut lines = String::new();
    for m in &state.log {
        lines.push_str(&serde_json::to_string(m).expect("metrics are plain data"));
        lines.push('\n');
    }
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text)
            .map_err(|e| RecipeError::context(format!("cannot write {}", dir.display()), e))
    };
    write("metrics.jsonl", &lines)?;
    write("job.yaml", spec_yaml)
}

#[cfg(test)]
mod tests {
    use super::next_checkpoint;

    #[test]
    fn a_run_stops_at_each_multiple_and_at_the_end() {
        assert_eq!(next_checkpoint(0, 3, 10), 3);
        assert_eq!(next_checkpoint(3, 3, 10), 6);
        assert_eq!(next_checkpoint(9, 3, 10), 10);
        assert_eq!(next_checkpoint(4, 0, 10), 10);
    }
}
