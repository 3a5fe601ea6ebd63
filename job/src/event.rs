//! The closed set of events a job emits, from the training process, the
//! worker agent and the coordinator alike.
//!
//! [`JobEvent`] is one serde enum tagged by `type` (`train.step`,
//! `checkpoint.saved`, `job.succeeded`, ...): a rank prints one per line on
//! stdout (`train --events`), the agent reads them back and forwards them,
//! the coordinator stores them (the serialized event is the stored event's
//! `data`) and `logs` shows them. [`Display`](fmt::Display) is the one-line
//! message and [`JobEvent::level`] its level, so each is written once.
//! [`step_summary`] is the progress line of a step, shared by every
//! progress bar.
//!
//! Type names are a contract (docs/ARCHITECTURE.md, "Events"): add
//! variants freely, rename none. Not here: how events are stored, sent or
//! drawn.

use std::fmt;

use serde::{Deserialize, Serialize};
use trainer::train::{EvalMetrics, StepMetrics};

/// How much an event matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    /// The word used in the API, the database and `--json` output.
    pub fn name(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<Level> {
        [Level::Info, Level::Warn, Level::Error]
            .into_iter()
            .find(|l| l.name() == text)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that happens to a job worth telling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum JobEvent {
    // ---- from the training process (`train --events`) ----
    /// Training begins (or resumes) at `step`.
    #[serde(rename = "train.started")]
    TrainStarted {
        step: usize,
        total_steps: usize,
        world: usize,
    },
    /// An optimizer step is done.
    #[serde(rename = "train.step")]
    TrainStep {
        total_steps: usize,
        #[serde(flatten)]
        metrics: StepMetrics,
    },
    /// A validation pass.
    #[serde(rename = "train.eval")]
    TrainEval(EvalMetrics),
    /// A checkpoint is committed to storage.
    #[serde(rename = "checkpoint.saved")]
    CheckpointSaved {
        step: u64,
        path: String,
        /// `train_loss`, `eval_loss` (either may be null).
        metrics: serde_json::Value,
        bytes: u64,
        upload_s: f64,
    },
    /// Retention removed a checkpoint.
    #[serde(rename = "checkpoint.deleted")]
    CheckpointDeleted { step: u64 },
    /// Training stood still for the previous checkpoint's upload.
    #[serde(rename = "checkpoint.waiting")]
    CheckpointWaiting { step: u64, waited_s: f64 },
    /// A newer checkpoint did not verify; an older one is resumed.
    #[serde(rename = "checkpoint.skipped")]
    CheckpointSkipped { step: u64, error: String },
    /// Retention could not remove a checkpoint.
    #[serde(rename = "checkpoint.delete_failed")]
    CheckpointDeleteFailed {
        step: u64,
        #[serde(default)]
        error: String,
    },
    /// The ranks stopped together after a checkpoint, as asked.
    #[serde(rename = "train.preempted")]
    TrainPreempted { step: usize, checkpoints: String },
    /// Training is done.
    #[serde(rename = "train.finished")]
    TrainFinished(RunSummary),
    /// Training failed; `ring_peer` is the rank this one could not reach,
    /// when that is why.
    #[serde(rename = "train.failed")]
    TrainFailed {
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ring_peer: Option<usize>,
    },

    // ---- from the worker agent ----
    #[serde(rename = "rank.started")]
    RankStarted {
        rank: u32,
        world: u32,
        worker_id: String,
        worker_name: String,
        host: String,
    },
    #[serde(rename = "rank.finished")]
    RankFinished(RankEnd),
    #[serde(rename = "rank.preempted")]
    RankPreempted(RankEnd),
    #[serde(rename = "rank.failed")]
    RankFailed(RankEnd),
    /// The agent killed its rank: the coordinator did not acknowledge its
    /// reports within the lost-after bound.
    #[serde(rename = "rank.fenced")]
    RankFenced { error: String, silent_s: f64 },

    // ---- from the coordinator ----
    #[serde(rename = "job.queued")]
    JobQueued(StatusChange),
    #[serde(rename = "job.starting")]
    JobStarting(StatusChange),
    #[serde(rename = "job.running")]
    JobRunning(StatusChange),
    #[serde(rename = "job.restarting")]
    JobRestarting(StatusChange),
    #[serde(rename = "job.succeeded")]
    JobSucceeded(StatusChange),
    #[serde(rename = "job.failed")]
    JobFailed(StatusChange),
    #[serde(rename = "job.cancelled")]
    JobCancelled(StatusChange),
    /// `resume` sent a failed or cancelled job back.
    #[serde(rename = "job.resumed")]
    JobResumed { status: String },
    /// The job can never be placed on the fleet as it is.
    #[serde(rename = "job.unfit")]
    JobUnfit {
        #[serde(default)]
        reason: String,
    },
    /// The next attempt runs on a different number of workers.
    #[serde(rename = "job.resized")]
    JobResized {
        from: usize,
        to: usize,
        attempt: u32,
    },
    /// An elastic job stops after a checkpoint to grow into idle workers.
    #[serde(rename = "job.growing")]
    JobGrowing { from: usize, to: usize },
    /// A drained worker's job stopped and moves elsewhere.
    #[serde(rename = "worker.drained")]
    WorkerDrained {
        worker_id: String,
        worker_name: String,
        step: u64,
    },
    /// A worker of the job stopped answering.
    #[serde(rename = "worker.lost")]
    WorkerLost {
        worker_id: String,
        worker_name: String,
        #[serde(default)]
        reason: String,
    },
}

/// How a rank's process ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RankEnd {
    pub rank: u32,
    /// Empty unless it failed.
    #[serde(default)]
    pub error: String,
    /// The last lines of its stderr.
    #[serde(default)]
    pub stderr_tail: Vec<String>,
}

/// A job's move to the status its event type names.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusChange {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<EventError>,
    /// With `job.starting`: the attempt that starts; with
    /// `job.restarting`: the one that comes next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// With `job.starting`: the gang's worker ids in rank order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<String>,
    /// With `job.restarting`: what comes next, as known then. With the
    /// `job.starting` of a later attempt: the checkpoint it resumes from,
    /// chosen once the ranks of the attempt before had stopped.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartNext>,
}

/// How a restarting job goes on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestartNext {
    /// The checkpoint it resumes from (`None`: from the start). With
    /// `job.restarting` this is the newest checkpoint committed when the
    /// attempt ended; a rank cut off from the coordinator may commit a
    /// newer one until its fence stops it, and the next attempt's
    /// `job.starting` names the one it resumes from.
    pub resume_step: Option<u64>,
    /// Seconds it waits first.
    pub backoff_s: f64,
    pub failures: u32,
    pub max_failures: u32,
}

/// Why a job failed or was cancelled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventError {
    pub code: String,
    pub message: String,
}

/// What a finished run did (`train.finished`, and `train --json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub name: String,
    pub steps: usize,
    pub train_loss: Option<f64>,
    pub eval_loss_initial: Option<f64>,
    pub eval_loss_final: Option<f64>,
    pub trained_tokens: usize,
    pub elapsed_s: f64,
    /// Where the final adapter went (`None` with `--no-output`).
    pub output_dir: Option<String>,
    /// The job's checkpoint folder.
    pub checkpoints: String,
    /// Seconds training stood still for checkpoints.
    pub checkpoint_blocking_s: f64,
    pub world: usize,
}

/// A line that is not an event of this version.
#[derive(Debug, thiserror::Error)]
#[error("not a lorafleet event: {0}")]
pub struct UnknownEvent(#[from] serde_json::Error);

impl JobEvent {
    /// The event's type, as in JSON.
    pub fn kind(&self) -> &'static str {
        use JobEvent::*;
        match self {
            TrainStarted { .. } => "train.started",
            TrainStep { .. } => "train.step",
            TrainEval(_) => "train.eval",
            CheckpointSaved { .. } => "checkpoint.saved",
            CheckpointDeleted { .. } => "checkpoint.deleted",
            CheckpointWaiting { .. } => "checkpoint.waiting",
            CheckpointSkipped { .. } => "checkpoint.skipped",
            CheckpointDeleteFailed { .. } => "checkpoint.delete_failed",
            TrainPreempted { .. } => "train.preempted",
            TrainFinished(_) => "train.finished",
            TrainFailed { .. } => "train.failed",
            RankStarted { .. } => "rank.started",
            RankFinished(_) => "rank.finished",
            RankPreempted(_) => "rank.preempted",
            RankFailed(_) => "rank.failed",
            RankFenced { .. } => "rank.fenced",
            JobQueued(_) => "job.queued",
            JobStarting(_) => "job.starting",
            JobRunning(_) => "job.running",
            JobRestarting(_) => "job.restarting",
            JobSucceeded(_) => "job.succeeded",
            JobFailed(_) => "job.failed",
            JobCancelled(_) => "job.cancelled",
            JobResumed { .. } => "job.resumed",
            JobUnfit { .. } => "job.unfit",
            JobResized { .. } => "job.resized",
            JobGrowing { .. } => "job.growing",
            WorkerDrained { .. } => "worker.drained",
            WorkerLost { .. } => "worker.lost",
        }
    }

    /// The event of a job's move to `status` (`queued`, `running`, ...);
    /// `None` for a word that is no status.
    pub fn status_change(status: &str, error: Option<EventError>) -> Option<JobEvent> {
        let change = StatusChange {
            status: status.to_string(),
            error,
            ..StatusChange::default()
        };
        Some(match status {
            "queued" => JobEvent::JobQueued(change),
            "starting" => JobEvent::JobStarting(change),
            "running" => JobEvent::JobRunning(change),
            "restarting" => JobEvent::JobRestarting(change),
            "succeeded" => JobEvent::JobSucceeded(change),
            "failed" => JobEvent::JobFailed(change),
            "cancelled" => JobEvent::JobCancelled(change),
            _ => return None,
        })
    }

    /// Whether a rank or its agent emits this event (`train.*`,
    /// `checkpoint.*`, `rank.*`), rather than the coordinator.
    pub fn from_rank(&self) -> bool {
        let kind = self.kind();
        ["train.", "checkpoint.", "rank."]
            .iter()
            .any(|prefix| kind.starts_with(prefix))
    }

    pub fn level(&self) -> Level {
        use JobEvent::*;
        match self {
            TrainFailed { .. } | RankFailed(_) | RankFenced { .. } | JobFailed(_) => Level::Error,
            // A restart after a preemption is routine.
            JobRestarting(c) if c.error.is_none() && c.restart.is_some() => Level::Info,
            CheckpointWaiting { .. }
            | CheckpointSkipped { .. }
            | CheckpointDeleteFailed { .. }
            | JobRestarting(_)
            | JobUnfit { .. }
            | WorkerLost { .. } => Level::Warn,
            _ => Level::Info,
        }
    }

    /// The training step the event speaks of, if any.
    pub fn step(&self) -> Option<u64> {
        use JobEvent::*;
        match self {
            TrainStarted { step, .. } | TrainPreempted { step, .. } => Some(*step as u64),
            TrainStep { metrics, .. } => Some(metrics.step as u64),
            TrainEval(m) => Some(m.step as u64),
            CheckpointSaved { step, .. }
            | CheckpointDeleted { step }
            | CheckpointWaiting { step, .. }
            | CheckpointSkipped { step, .. }
            | CheckpointDeleteFailed { step, .. }
            | WorkerDrained { step, .. } => Some(*step),
            _ => None,
        }
    }

    /// One JSON line (`train --events`).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("an event is plain data and always serializes")
    }

    /// Reads an event back from one JSON line.
    pub fn from_line(line: &str) -> Result<JobEvent, UnknownEvent> {
        Ok(serde_json::from_str(line)?)
    }

    /// The stored form: the event as a JSON object, `type` included.
    pub fn to_data(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("an event is plain data and always serializes")
    }

    /// Reads a stored event of type `kind` back from its `data` (which
    /// may lack the `type` key).
    pub fn from_data(kind: &str, data: &serde_json::Value) -> Result<JobEvent, UnknownEvent> {
        let mut data = match data {
            serde_json::Value::Object(fields) => fields.clone(),
            _ => serde_json::Map::new(),
        };
        data.insert("type".into(), kind.into());
        Ok(serde_json::from_value(serde_json::Value::Object(data))?)
    }
}

/// A step's progress in a few words: loss, learning rate, tokens/s.
pub fn step_summary(m: &StepMetrics) -> String {
    format!(
        "loss {:.4} · lr {:.2e} · {:.0} tok/s",
        m.loss, m.learning_rate, m.tokens_per_s
    )
}

impl fmt::Display for JobEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use JobEvent::*;
        match self {
            TrainStarted {
                step,
                total_steps,
                world,
            } => write!(
                f,
                "training started at step {step} of {total_steps} on {world} rank(s)"
            ),
            TrainStep {
                total_steps,
                metrics: m,
            } => write!(
                f,
                "step {}/{total_steps}: loss {:.4}, {:.0} tokens/s",
                m.step, m.loss, m.tokens_per_s
            ),
            TrainEval(m) => write!(f, "step {}: validation loss {:.4}", m.step, m.eval_loss),
            CheckpointSaved { step, path, .. } => {
                write!(f, "checkpoint at step {step} saved to {path}")
            }
            CheckpointDeleted { step } => {
                write!(f, "checkpoint at step {step} deleted (retention)")
            }
            CheckpointWaiting { step, waited_s } => write!(
                f,
                "training waited {waited_s:.2} s at step {step} for the previous checkpoint to finish uploading"
            ),
            CheckpointSkipped { step, error } => {
                write!(f, "skipping the checkpoint at step {step}: {error}")
            }
            CheckpointDeleteFailed { step, error } => write!(
                f,
                "the checkpoint at step {step} could not be deleted: {error}"
            ),
            TrainPreempted { step, .. } => {
                write!(f, "stopped at step {step} after a checkpoint, as asked")
            }
            TrainFinished(s) => write!(
                f,
                "training done: {} steps, train loss {:.4}",
                s.steps,
                s.train_loss.unwrap_or(f64::NAN)
            ),
            TrainFailed { error, .. } => f.write_str(error),
            RankStarted {
                rank,
                world,
                worker_name,
                ..
            } => write!(f, "rank {rank} of {world} started on worker {worker_name}"),
            RankFinished(end) => write!(f, "rank {} finished", end.rank),
            RankPreempted(end) => {
                write!(f, "rank {} stopped after a checkpoint, as asked", end.rank)
            }
            RankFailed(end) => write!(f, "rank {} failed: {}", end.rank, end.error),
            RankFenced { error, .. } => f.write_str(error),
            JobQueued(c) | JobStarting(c) | JobRunning(c) | JobRestarting(c) | JobSucceeded(c)
            | JobFailed(c) | JobCancelled(c) => {
                write!(f, "job is {}", c.status)?;
                match &c.error {
                    Some(e) => write!(f, ": {}", e.message),
                    None => Ok(()),
                }
            }
            JobResumed { status } => write!(f, "job resumed: it is {status}"),
            JobUnfit { reason } => f.write_str(reason),
            JobResized { from, to, attempt } => write!(
                f,
                "job resized from {from} to {to} workers (attempt {attempt})"
            ),
            JobGrowing { from, to } => write!(
                f,
                "{} idle worker(s) free: the job stops at its next step boundary after a checkpoint and restarts on {to} workers instead of {from}",
                to.saturating_sub(*from)
            ),
            WorkerDrained {
                worker_id,
                worker_name,
                step,
            } => write!(
                f,
                "worker {worker_name} ({worker_id}) drained: the job stopped at step {step} after a checkpoint and moves to other workers"
            ),
            WorkerLost {
                worker_id,
                worker_name,
                reason,
            } => {
                if reason.is_empty() {
                    write!(f, "worker {worker_name} ({worker_id}) was lost")
                } else {
                    f.write_str(reason)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
