//! What ranks report: the state in each heartbeat report (a rank that
//! finished, was preempted or failed ends its part of the attempt) and the
//! events sent with `ReportEvents` (stored, and acted on when they carry
//! progress, a checkpoint or a ring pair that could not connect).
//!
//! Events and states for an attempt the worker is not a rank of are refused
//! and logged; those from an attempt that is over are stale and dropped.
//!
//! Not here: the `Workers` service's entry points and the checks that a
//! caller is the worker it names ([`workers`](super::workers)), what
//! happens to a failed attempt ([`recovery`](super::recovery)).

use tonic::Status;

use crate::api::{self, RankState, WorkerReport};
use crate::store::{JobId, JobStatus, NewCheckpoint, NewEvent, StepReport, WorkerId};
use job::JobEvent;

use super::recovery::stop_order;
use super::{Coordinator, status_of};

/// Longest event message kept, in bytes.
const MAX_MESSAGE_CHARS: usize = 4096;

impl Coordinator {
    /// Handles one heartbeat report of worker `id`; `write`: record the
    /// heartbeat in the store.
    pub(super) async fn on_report(
        &self,
        id: &WorkerId,
        report: WorkerReport,
        write: bool,
    ) -> Result<(), Status> {
        if write {
            self.store().heartbeat_worker(id).await.map_err(status_of)?;
        }
        let state = report.state();
        {
            // A worker told to stop a rank answers with a report that no
            // longer runs it: that rank is gone.
            let mut fleet = self.fleet();
            let stopped = fleet.unfenced.get(id).is_some_and(|u| {
                u.job.as_str() != report.job_id
                    || u.attempt != report.attempt
                    || state != RankState::Running
            });
            if stopped {
                fleet.unfenced.remove(id);
            }
            fleet
                .last_state
                .insert(id.clone(), (report.job_id.clone(), report.attempt, state));
        }
        if report.job_id.is_empty() {
            return Ok(());
        }
        let job = JobId::from(report.job_id.as_str());
        let Some(rank) = self.live_rank(&job, report.attempt, id).await? else {
            if !self.was_rank(&job, report.attempt, id).await? {
                // Logged; the stream goes on (the worker's other news is
                // its own).
                let _ = not_its_attempt(id, &job, report.attempt);
                return Ok(());
            }
            if state == RankState::Running {
                let order = stop_order(&job, report.attempt, "that attempt is over");
                self.send(id, order);
            }
            return Ok(());
        };
        match state {
            RankState::Finished | RankState::Preempted => {
                let job_row = self.store().get_job(&job).await.map_err(status_of)?;
                let attempt = self
                    .store()
                    .get_attempt(&job, report.attempt)
                    .await
                    .map_err(status_of)?;
                self.rank_ended(&job_row, &attempt, rank, state == RankState::Preempted)
                    .await
                    .map_err(status_of)?;
            }
            RankState::Failed => {
                let worker = self.store().get_worker(id).await.map_err(status_of)?;
                let reason = format!(
                    "rank {rank} on worker {} ({id}) failed: {}",
                    worker.info.name,
                    first_line(&report.error)
                );
                self.attempt_failed(&job, report.attempt, &reason)
                    .await
                    .map_err(status_of)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The rank of `worker` in attempt `attempt` of `job`, if that attempt
    /// is the job's current one and still running.
    pub(super) async fn live_rank(
        &self,
        job: &JobId,
        attempt: u32,
        worker: &WorkerId,
    ) -> Result<Option<u32>, Status> {
        let key = (job.clone(), attempt);
        if let Some(gang) = self.fleet().live.get(&key) {
            return Ok(gang.iter().position(|w| w == worker).map(|r| r as u32));
        }
        let store = self.store();
        let row = match store.get_job(job).await {
            Ok(row) => row,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(status_of(e)),
        };
        if row.status.is_final() || row.attempt != attempt || attempt == 0 {
            return Ok(None);
        }
        let attempt = store.get_attempt(job, attempt).await.map_err(status_of)?;
        if attempt.finished_at.is_some() {
            return Ok(None);
        }
        self.fleet().live.insert(key, attempt.workers.clone());
        Ok(attempt
            .workers
            .iter()
            .position(|w| w == worker)
            .map(|r| r as u32))
    }

    /// Whether `worker` was a rank of attempt `attempt` of `job` (now over
    /// or not).
    pub(super) async fn was_rank(
        &self,
        job: &JobId,
        attempt: u32,
        worker: &WorkerId,
    ) -> Result<bool, Status> {
        match self.store().get_attempt(job, attempt).await {
            Ok(attempt) => Ok(attempt.workers.contains(worker)),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(status_of(e)),
        }
    }

    /// Stores one event a rank reported, and acts on the ones that carry
    /// progress or a checkpoint.
    pub(super) async fn rank_event(
        &self,
        job: &JobId,
        from: &Reporter<'_>,
        event: api::Event,
    ) -> Result<(), Status> {
        let rank = from.rank;
        let store = self.store();
        let data: serde_json::Value =
            serde_json::from_str(&event.data_json).unwrap_or(serde_json::Value::Null);
        // Only the events a rank and its agent emit, each as its type
        // says; anything else is dropped (a worker has no say in what the
        // coordinator itself reports, `job.*` and `worker.*`).
        let parsed = match JobEvent::from_data(&event.r#type, &data) {
            Ok(parsed) if parsed.from_rank() => parsed,
            Ok(_) | Err(_) => {
                tracing::warn!(
                    "job {job}: worker {} reported an event of type {:?} that is no rank's; dropped",
                    from.worker,
                    event.r#type
                );
                return Ok(());
            }
        };
        let mut message = parsed.to_string();
        if message.len() > MAX_MESSAGE_CHARS {
            let mut cut = MAX_MESSAGE_CHARS;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        match &parsed {
            JobEvent::TrainStep {
                total_steps,
                metrics,
            } => {
                let report = StepReport {
                    step: metrics.step as u64,
                    total_steps: *total_steps as u64,
                    loss: metrics.loss,
                    step_seconds: metrics.step_time_s,
                    tokens_per_s: metrics.tokens_per_s,
                    target_tokens: metrics.target_tokens as u64,
                };
                store
                    .record_step(job, &report, rank == 0)
                    .await
                    .map_err(status_of)?;
                self.now_running(job).await?
            }
            JobEvent::TrainEval(metrics) if rank == 0 => store
                .record_eval(job, metrics.eval_loss)
                .await
                .map_err(status_of)?,
            JobEvent::TrainStarted {
                step, total_steps, ..
            } => {
                self.progress(job, *step as u64, *total_steps as u64)
                    .await?
            }
            JobEvent::CheckpointSaved {
                step,
                path,
                metrics,
                bytes,
                upload_s,
            } if rank == 0 => {
                self.inner.metrics.checkpoint_saved(*bytes, *upload_s);
                let total = store.get_job(job).await.map_err(status_of)?.total_steps;
                if total.is_some_and(|total| *step > total) {
                    // A checkpoint past the last step cannot be real; it
                    // would become the job's "latest".
                    tracing::warn!(
                        "job {job}: rank 0 reported a checkpoint at step {step} of {total:?}; not recorded"
                    );
                } else {
                    let checkpoint = NewCheckpoint {
                        job: job.clone(),
                        step: *step,
                        url: path.clone(),
                        metrics: metrics.clone(),
                    };
                    store
                        .record_checkpoint(&checkpoint)
                        .await
                        .map_err(status_of)?;
                }
            }
            JobEvent::CheckpointDeleted { step } if rank == 0 => {
                store
                    .delete_checkpoint(job, *step)
                    .await
                    .map_err(status_of)?;
            }
            JobEvent::TrainFailed {
                ring_peer: Some(peer),
                ..
            } => {
                self.note_broken_pair(job, from.attempt, rank, *peer as u32)
                    .await?;
            }
            _ => {}
        }
        let new = NewEvent::of(job, &parsed).with_message(message);
        if from.seq > 0 {
            store
                .append_reported_event(&new, from.attempt, from.worker, from.seq)
                .await
                .map_err(status_of)?;
        } else {
            store.append_event(&new).await.map_err(status_of)?;
        }
        Ok(())
    }

    /// A rank reported `step` of `total`: the job's progress, and a
    /// starting job is now running.
    async fn progress(&self, job: &JobId, step: u64, total: u64) -> Result<(), Status> {
        self.store()
            .set_job_progress(job, step, Some(total))
            .await
            .map_err(status_of)?;
        self.now_running(job).await
    }

    /// A rank reported training: a starting job is now running.
    async fn now_running(&self, job: &JobId) -> Result<(), Status> {
        let store = self.store();
        let row = store.get_job(job).await.map_err(status_of)?;
        if row.status == JobStatus::Starting {
            store
                .move_job(job, JobStatus::Running, None)
                .await
                .map_err(status_of)?;
        }
        Ok(())
    }

    /// Ranks `rank` and `peer` of attempt `attempt` could not reach each
    /// other: the job's next attempts prefer gangs without that pair.
    async fn note_broken_pair(
        &self,
        job: &JobId,
        attempt: u32,
        rank: u32,
        peer: u32,
    ) -> Result<(), Status> {
        let gang = self
            .store()
            .get_attempt(job, attempt)
            .await
            .map_err(status_of)?
            .workers;
        let (Some(a), Some(b)) = (gang.get(rank as usize), gang.get(peer as usize)) else {
            return Ok(());
        };
        if a == b {
            return Ok(());
        }
        let pair = if a < b {
            (a.clone(), b.clone())
        } else {
            (b.clone(), a.clone())
        };
        tracing::warn!(
            "job {job}: ranks {rank} ({a}) and {peer} ({b}) could not reach each other; the next attempt avoids that pair"
        );
        let mut fleet = self.fleet();
        let pairs = fleet.broken_pairs.entry(job.clone()).or_default();
        if !pairs.contains(&pair) {
            pairs.push(pair);
        }
        Ok(())
    }
}

/// Who reported an event: the worker, its rank in the attempt, and the
/// number its agent gave the event (0: none).
pub(super) struct Reporter<'a> {
    pub(super) worker: &'a WorkerId,
    pub(super) rank: u32,
    pub(super) attempt: u32,
    pub(super) seq: u64,
}

/// Refuses news from `worker` about an attempt it is not a rank of, and
/// logs it.
pub(super) fn not_its_attempt(worker: &WorkerId, job: &JobId, attempt: u32) -> Status {
    tracing::warn!(
        "refused: worker {worker} reported on job {job} attempt {attempt}, which it does not run"
    );
    Status::permission_denied(format!(
        "worker {worker} is not a rank of job {job} attempt {attempt}"
    ))
}

fn first_line(text: &str) -> &str {
    let text = text.trim();
    if text.is_empty() {
        "no reason given"
    } else {
        text
    }
}
