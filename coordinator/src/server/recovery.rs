//! How attempts end early, and what comes after: a rank failed or a
//! worker was lost (the gang is stopped at once, the job restarts after a
//! backoff while `max_failures` allows, or fails with the reason), or the
//! job was preempted (a drained worker, an elastic job growing: the ranks
//! stop together after a checkpoint and the job is placed again without
//! counting a failure).
//!
//! What follows a failure and how long a rank may still run are decided
//! by the pure [`crate::plan::after_failure`] and [`crate::plan::fences`];
//! this module commits them (store writes, stop and preempt orders,
//! events). Detection lives here too: a worker silent past `lost_after` is
//! lost (its closed heartbeat stream is reported by `workers`). Not here:
//! placing the next attempt (`control`, the plan), success.

use std::time::{Duration, Instant};

use crate::api::{self, Order, RankState, order};
use crate::plan::{self, AfterFailure, RankSeen};
use crate::store::{
    Attempt, Job, JobError, JobId, JobStatus, RestartPlan, StoreError, WorkerId, WorkerState,
};
use job::JobEvent;

use super::{Coordinator, Unfenced};

/// Why a live attempt was told to stop at its next step boundary.
#[derive(Clone, Debug)]
pub(super) enum Preemption {
    /// Worker `worker` is draining.
    Drain { worker: WorkerId, name: String },
    /// An elastic job grows from `from` to `to` workers.
    Grow { from: usize, to: usize },
}

impl Coordinator {
    /// Ends `attempt` as failed with `reason`: its other ranks are told to
    /// stop, and the job restarts (if failures allow) or fails.
    pub(super) async fn attempt_failed(
        &self,
        job: &JobId,
        attempt: u32,
        reason: &str,
    ) -> Result<(), StoreError> {
        let _guard = self.inner.control.lock().await;
        let job = self.store().get_job(job).await?;
        let attempt = self.store().get_attempt(&job.id, attempt).await?;
        self.end_failed(&job, &attempt, reason, true).await
    }

    /// [`Coordinator::attempt_failed`] with the control lock held.
    /// `counts`: whether the failure counts against `max_failures` (a
    /// failure to start it, such as a spec the coordinator cannot resolve,
    /// is final at once). An attempt that was being preempted restarts
    /// without counting: it was going to stop anyway.
    pub(super) async fn end_failed(
        &self,
        job: &Job,
        attempt: &Attempt,
        reason: &str,
        counts: bool,
    ) -> Result<(), StoreError> {
        let store = self.store();
        let current = store.get_job(&job.id).await?;
        if attempt.finished_at.is_some()
            || current.status.is_final()
            || current.attempt != attempt.number
        {
            return Ok(());
        }
        let key = (job.id.clone(), attempt.number);
        let preempting = {
            let mut fleet = self.fleet();
            fleet.ended.remove(&key);
            fleet.live.remove(&key);
            fleet.preempting.remove(&key)
        };
        self.stop_gang(attempt, reason);
        self.hold_until_fenced(attempt);
        if counts && preempting.is_some() {
            store.finish_attempt(&job.id, attempt.number, None).await?;
            return self.restart(job, None, Duration::ZERO).await;
        }
        store
            .finish_attempt(&job.id, attempt.number, Some(reason))
            .await?;
        let after = store.get_job(&job.id).await?;
        match plan::after_failure(&after, reason, counts, self.config().restart_backoff) {
            AfterFailure::Restart { error, backoff } => {
                self.restart(job, Some(&error), backoff).await
            }
            AfterFailure::Fail { error } => {
                store
                    .move_job(&job.id, JobStatus::Failed, Some(&error))
                    .await?;
                self.publish();
                self.wake();
                Ok(())
            }
        }
    }

    /// Every rank of `attempt` stopped after a checkpoint, as told: the
    /// attempt ends well and the job is placed again.
    pub(super) async fn end_preempted(
        &self,
        job: &Job,
        attempt: &Attempt,
        why: Option<Preemption>,
    ) -> Result<(), StoreError> {
        let store = self.store();
        store.finish_attempt(&job.id, attempt.number, None).await?;
        if let Some(Preemption::Drain { worker, name }) = &why {
            let step = store.get_job(&job.id).await?.step;
            let drained = JobEvent::WorkerDrained {
                worker_id: worker.as_str().to_string(),
                worker_name: name.clone(),
                step,
            };
            self.event(&job.id, &drained, None).await;
        }
        self.restart(job, None, Duration::ZERO).await
    }

    /// Moves `job` to `restarting`, to be placed again after `backoff`.
    async fn restart(
        &self,
        job: &Job,
        error: Option<&JobError>,
        backoff: Duration,
    ) -> Result<(), StoreError> {
        let store = self.store();
        self.reconcile_or_log(job).await;
        let plan = RestartPlan {
            resume_step: store.latest_checkpoint(&job.id).await?.map(|c| c.step),
            backoff_s: backoff.as_secs_f64(),
        };
        store.restart_job(&job.id, error, &plan).await?;
        if !backoff.is_zero() {
            self.fleet()
                .not_before
                .insert(job.id.clone(), Instant::now() + backoff);
        }
        self.publish();
        self.wake();
        Ok(())
    }

    /// Notes every rank of `attempt` (which ended early) as possibly still
    /// running until its worker answers the stop order or its fence time
    /// passes ([`plan::fences`]). The job's next attempt waits for both.
    pub(super) fn hold_until_fenced(&self, attempt: &Attempt) {
        let now = Instant::now();
        let mut fleet = self.fleet();
        let ranks: Vec<RankSeen> = attempt
            .workers
            .iter()
            .map(|worker| RankSeen {
                worker: worker.clone(),
                ended: fleet.last_state.get(worker).is_some_and(|(job, n, state)| {
                    job == attempt.job.as_str()
                        && *n == attempt.number
                        && matches!(
                            state,
                            RankState::Failed | RankState::Finished | RankState::Preempted
                        )
                }),
                last_heard: fleet.last_report.get(worker).copied(),
            })
            .collect();
        for (worker, until) in plan::fences(&ranks, now, self.config().lost_after) {
            let unfenced = Unfenced {
                job: attempt.job.clone(),
                attempt: attempt.number,
                until,
            };
            fleet.unfenced.insert(worker, unfenced);
        }
    }

    /// Tells every connected rank of `attempt` to stop.
    pub(super) fn stop_gang(&self, attempt: &Attempt, reason: &str) {
        for worker in &attempt.workers {
            self.send(worker, stop_order(&attempt.job, attempt.number, reason));
        }
    }

    /// Tells the ranks of `attempt` (through `worker`, one of them: the
    /// ranks agree on when to stop) to stop at the next step boundary after
    /// a checkpoint. Says whether the order went out.
    pub(super) fn preempt(&self, attempt: &Attempt, worker: &WorkerId, why: Preemption) -> bool {
        let reason = match &why {
            Preemption::Drain { name, .. } => format!("worker {name} is draining"),
            Preemption::Grow { from, to } => format!("growing from {from} to {to} workers"),
        };
        let order = Order::of(order::Kind::Preempt(api::Stop {
            job_id: attempt.job.to_string(),
            attempt: attempt.number,
            reason,
        }));
        let sent = self.send(worker, order);
        if sent {
            self.fleet()
                .preempting
                .insert((attempt.job.clone(), attempt.number), why);
        }
        sent
    }

    /// Whether attempt `number` of `job` was told to stop at a step boundary.
    pub(super) fn is_preempting(&self, job: &JobId, number: u32) -> bool {
        self.fleet().preempting.contains_key(&(job.clone(), number))
    }

    /// Marks workers silent past the bound lost, and fails their attempts:
    /// a connected worker whose reports stopped (timed here, to the
    /// millisecond), or one that never came back after a restart of the
    /// coordinator (from the store, once the grace period is over).
    pub(super) async fn find_silent_workers(&self) -> Result<(), StoreError> {
        let config = self.config();
        let bound = config.lost_after;
        let quiet: Vec<WorkerId> = {
            let fleet = self.fleet();
            fleet
                .links
                .keys()
                .filter(|id| {
                    fleet
                        .last_report
                        .get(*id)
                        .is_none_or(|t| t.elapsed() > bound)
                })
                .cloned()
                .collect()
        };
        let mut silent = Vec::new();
        for id in quiet {
            silent.push(self.store().get_worker(&id).await?);
        }
        if self.inner.started.elapsed() >= config.grace {
            let cutoff = crate::store::unix_now() - bound.as_secs_f64().ceil().max(1.0) as i64;
            silent.extend(self.store().workers_silent_since(cutoff).await?);
        }
        for worker in silent {
            let why = format!(
                "worker {} ({}) sent no heartbeat for {} s",
                worker.info.name,
                worker.id,
                bound.as_secs_f64()
            );
            self.worker_lost(&worker.id, &why).await?;
        }
        Ok(())
    }

    /// Worker `id` is gone: marks it lost and fails the attempt it ran.
    pub(super) async fn worker_lost(&self, id: &WorkerId, why: &str) -> Result<(), StoreError> {
        let before = self.store().get_worker(id).await?;
        if before.state == WorkerState::Lost {
            return Ok(());
        }
        let worker = self.store().mark_worker_lost(id).await?;
        tracing::warn!("{why}");
        // The job it runs; or, when that attempt already ended (its ring
        // broke before the worker was found lost), the job it last
        // reported on, which hears of it too.
        let (job, runs_it) = match &worker.assignment {
            Some((job, _)) => (job.clone(), true),
            None => {
                let last = self.fleet().last_state.get(id).cloned();
                match last {
                    Some((job, _, _)) if !job.is_empty() => (JobId::from(job.as_str()), false),
                    _ => return Ok(()),
                }
            }
        };
        let current = match self.store().get_job(&job).await {
            Ok(current) => current,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        if !runs_it && current.status.is_final() {
            return Ok(());
        }
        let lost = JobEvent::WorkerLost {
            worker_id: id.as_str().to_string(),
            worker_name: worker.info.name.clone(),
            reason: why.to_string(),
        };
        self.event(&job, &lost, None).await;
        if runs_it && current.attempt > 0 {
            self.attempt_failed(&job, current.attempt, why).await?;
        }
        Ok(())
    }
}

pub(super) fn stop_order(job: &JobId, attempt: u32, reason: &str) -> Order {
    Order::of(order::Kind::Stop(api::Stop {
        job_id: job.to_string(),
        attempt,
        reason: reason.to_string(),
    }))
}
