//! A `train` process's checkpoints: where they go, resuming from them, and
//! handing each save to the background uploader.
//!
//! Checkpoints of a run live in `{checkpoint.storage}/{tenant}/{job}/
//! checkpoints/step-N/` (`trainer::checkpoint`). A worker passes the job's
//! tenant and id; a run by hand is tenant `local` and the spec's `name`.
//! Every rank resumes from the same newest verified checkpoint; only rank 0
//! writes. Not here: the training loop (`train`), the commit protocol.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use job::JobSpec;
use serde_json::json;
use trainer::checkpoint::uploader::PendingCheckpoint;
use trainer::checkpoint::{
    CheckpointNotice, CheckpointStore, CheckpointUploader, Retention, block_on,
};
use trainer::model::LlamaConfig;
use trainer::train::TrainState;

use crate::progress::TrainEvents;

/// The tenant of runs started by hand.
pub const LOCAL_TENANT: &str = "local";

/// Training waits longer than this for the previous upload: worth an event.
const WAIT_WORTH_TELLING: Duration = Duration::from_millis(20);

/// The checkpoints of one run, seen from one rank.
pub struct RunCheckpoints {
    store: CheckpointStore,
    /// Rank 0's background committer; `None` on other ranks.
    uploader: Option<CheckpointUploader>,
    events: bool,
    /// Seconds training stood still for checkpoints (saving and waiting).
    blocking_s: f64,
    spec_yaml: String,
    base_model: String,
}

impl RunCheckpoints {
    /// Opens the run's checkpoint folder. On rank 0 of a fresh start
    /// (`resume` false), checkpoints left by an earlier run of the same job
    /// are removed first, so they can neither be resumed by mistake nor
    /// outrank the new run's in retention.
    /// `writer` signs the manifests rank 0 commits (empty: unsigned).
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        spec: &JobSpec,
        tenant: &str,
        job: &str,
        rank: usize,
        resume: bool,
        events: bool,
        base_model: &str,
        writer: &str,
    ) -> anyhow::Result<RunCheckpoints> {
        let storage = spec.checkpoint.storage.to_string();
        let store = CheckpointStore::open(&storage, tenant, job)
            .context("checkpoint.storage cannot be opened")?
            .with_writer(writer);
        let mut committed = Vec::new();
        if rank == 0 {
            let steps = block_on(store.steps())
                .with_context(|| format!("cannot list {}", store.root().name()))?;
            if !resume && !steps.is_empty() {
                eprintln!(
                    "removing {} checkpoint(s) of an earlier run in {} (--resume continues one instead)",
                    steps.len(),
                    store.root().name()
                );
                for step in steps {
                    block_on(store.delete(step))?;
                }
            } else {
                committed = block_on(store.committed())?;
            }
        }
        let uploader = (rank == 0).then(|| {
            let retention = Retention {
                keep_last: spec.checkpoint.keep_last as usize,
                keep_best: spec.checkpoint.keep_best,
            };
            CheckpointUploader::start(
                store.clone(),
                retention,
                committed,
                Box::new(move |notice| tell(notice, events)),
            )
        });
        Ok(RunCheckpoints {
            store,
            uploader,
            events,
            blocking_s: 0.0,
            spec_yaml: spec.to_yaml(),
            base_model: base_model.to_string(),
        })
    }

    /// The newest checkpoint that verifies, loaded; `None` when there is
    /// none. Newer ones that do not verify are skipped with a warning.
    pub fn restore(&self, model: &LlamaConfig) -> anyhow::Result<Option<TrainState>> {
        let staging = tempfile::tempdir().context("cannot create a temporary folder")?;
        let events = self.events;
        let mut skipped = move |step: u64, error: &trainer::checkpoint::CheckpointError| {
            let message = format!("skipping the checkpoint at step {step}: {error}");
            if events {
                TrainEvents::emit_at(
                    "warn",
                    "checkpoint.skipped",
                    &message,
                    json!({"step": step, "error": error.to_string()}),
                );
            } else {
                eprintln!("warning: {message}");
            }
        };
        let found = block_on(self.store.restore_latest(staging.path(), &mut skipped))
            .with_context(|| format!("cannot read checkpoints in {}", self.store.root().name()))?;
        let Some(manifest) = found else {
            return Ok(None);
        };
        let state = TrainState::load(staging.path(), model).with_context(|| {
            format!(
                "the checkpoint at step {} in {} verifies but cannot be loaded",
                manifest.step,
                self.store.root().name()
            )
        })?;
        Ok(Some(state))
    }

    /// Saves `state` as the checkpoint of its step (rank 0; other ranks do
    /// nothing): written to a local staging folder, then committed in the
    /// background. Fails if the previous checkpoint's upload failed.
    pub fn save(&mut self, state: &TrainState) -> anyhow::Result<()> {
        let Some(uploader) = self.uploader.as_mut() else {
            return Ok(());
        };
        let started = Instant::now();
        let folder = tempfile::tempdir().context("cannot create a temporary folder")?;
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
            .context("a checkpoint upload failed")?;
        if busy && waited > WAIT_WORTH_TELLING && self.events {
            TrainEvents::emit_at(
                "warn",
                "checkpoint.waiting",
                &format!(
                    "training waited {:.2} s at step {step} for the previous checkpoint to finish uploading",
                    waited.as_secs_f64()
                ),
                json!({"step": step, "waited_s": waited.as_secs_f64()}),
            );
        }
        self.blocking_s += started.elapsed().as_secs_f64();
        Ok(())
    }

    /// Waits for the last upload; fails if it failed. Returns the seconds
    /// training stood still for checkpoints, this last wait included.
    pub fn finish(mut self) -> anyhow::Result<f64> {
        if let Some(uploader) = self.uploader.take() {
            let started = Instant::now();
            uploader
                .finish()
                .context("the last checkpoint could not be committed")?;
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

/// Tells the agent (events) or the user (stderr) what the uploader did.
fn tell(notice: CheckpointNotice, events: bool) {
    match notice {
        CheckpointNotice::Committed {
            manifest,
            location,
            upload_s,
        } => {
            if events {
                TrainEvents::emit(
                    "checkpoint.saved",
                    json!({
                        "step": manifest.step,
                        "path": location,
                        "metrics": manifest.metrics,
                        "bytes": manifest.total_bytes(),
                        "upload_s": upload_s,
                    }),
                );
            }
        }
        CheckpointNotice::Deleted { step } => {
            if events {
                TrainEvents::emit("checkpoint.deleted", json!({"step": step}));
            }
        }
        CheckpointNotice::DeleteFailed { step, error } => {
            let message = format!("the checkpoint at step {step} could not be deleted: {error}");
            if events {
                TrainEvents::emit_at(
                    "warn",
                    "checkpoint.delete_failed",
                    &message,
                    json!({"step": step}),
                );
            } else {
                eprintln!("warning: {message}");
            }
        }
    }
}

/// Writes a whole training state into `dir`: the PEFT adapter, optimizer
/// and trainer state, `metrics.jsonl` (one line per step) and `job.yaml`.
pub fn write_state(
    dir: &Path,
    state: &TrainState,
    spec_yaml: &str,
    base_model: &str,
) -> anyhow::Result<()> {
    state.save(dir, base_model)?;
    let mut lines = String::new();
    for m in &state.log {
        lines.push_str(&serde_json::to_string(m)?);
        lines.push('\n');
    }
    std::fs::write(dir.join("metrics.jsonl"), lines)
        .with_context(|| format!("cannot write {}", dir.display()))?;
    std::fs::write(dir.join("job.yaml"), spec_yaml)
        .with_context(|| format!("cannot write {}", dir.display()))?;
    Ok(())
}
