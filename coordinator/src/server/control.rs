//! The control loop: scheduling rounds (a snapshot of the store through the
//! [`Scheduler`](crate::scheduler::Scheduler), each placement committed
//! with `Store::start_attempt` and sent to its gang as assignments), the end
//! of attempts (every rank finished, one rank failed, the job cancelled),
//! and lost workers (silent past the bound, or their connection gone).
//!
//! Every decision here runs under the coordinator's control lock, so two
//! of them never act on the same stale view.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::api::{self, Order, order};
use crate::scheduler::{FleetWorker, Snapshot, TenantUsage, WaitingJob};
use crate::spec::{JobSpec, OutputSpec};
use crate::store::{
    Attempt, Job, JobError, JobId, JobStatus, Level, NewEvent, StoreError, WorkerId, WorkerState,
};
use trainer::checkpoint::CheckpointStore;

use super::Coordinator;

/// Even when nothing wakes it, the loop schedules this often (wait limits
/// and backfill windows depend on the clock).
const IDLE_ROUND: Duration = Duration::from_secs(5);

impl Coordinator {
    /// Runs until the task is aborted.
    pub(super) async fn run_control(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_round = Instant::now() - IDLE_ROUND;
        loop {
            let woken = tokio::select! {
                () = self.inner.wake.notified() => true,
                _ = tick.tick() => false,
            };
            if let Err(error) = self.find_silent_workers().await {
                tracing::error!("checking for lost workers: {error}");
            }
            if woken || last_round.elapsed() >= IDLE_ROUND {
                last_round = Instant::now();
                if let Err(error) = self.schedule_round().await {
                    tracing::error!("scheduling: {error}");
                }
            }
        }
    }

    /// One scheduling round: places what fits and starts it.
    pub(super) async fn schedule_round(&self) -> Result<(), StoreError> {
        let _guard = self.inner.control.lock().await;
        let store = self.store();
        let waiting = store
            .jobs_with_status(&[JobStatus::Queued, JobStatus::Restarting])
            .await?;
        if waiting.is_empty() {
            return Ok(());
        }
        let active = store
            .jobs_with_status(&[JobStatus::Starting, JobStatus::Running])
            .await?;
        let workers = store.list_workers().await?;
        {
            // Reading a spec is the costly part of a snapshot: once per job.
            let mut fleet = self.fleet();
            for job in &waiting {
                if !fleet.gang_sizes.contains_key(&job.id) {
                    fleet.gang_sizes.insert(job.id.clone(), gang_sizes(job));
                }
            }
        }
        let snapshot = {
            let fleet = self.fleet();
            let tenant_of: HashMap<&JobId, _> = active.iter().map(|j| (&j.id, &j.tenant)).collect();
            let mut tenants = BTreeMap::new();
            for policy in self.config().access.tenants() {
                tenants.insert(
                    policy.id.clone(),
                    TenantUsage {
                        quota: policy.max_workers,
                        in_use: 0,
                    },
                );
            }
            for worker in &workers {
                if let Some((job, _)) = &worker.assignment
                    && let Some(tenant) = tenant_of.get(job)
                    && let Some(usage) = tenants.get_mut(*tenant)
                {
                    usage.in_use += 1;
                }
            }
            Snapshot {
                now: crate::store::unix_now(),
                jobs: waiting
                    .iter()
                    .map(|job| {
                        let sizes = fleet
                            .gang_sizes
                            .get(&job.id)
                            .cloned()
                            .unwrap_or_else(|| gang_sizes(job));
                        waiting_job(job, sizes)
                    })
                    .collect(),
                workers: workers
                    .iter()
                    .map(|w| FleetWorker {
                        id: w.id.clone(),
                        backend: w.info.backend,
                        // Idle but not connected: cannot take a job now.
                        state: if fleet
                            .links
                            .get(&w.id)
                            .is_some_and(|l| !l.orders.is_closed())
                        {
                            w.state
                        } else {
                            WorkerState::Lost
                        },
                    })
                    .collect(),
                tenants,
            }
        };
        let plan = self.inner.scheduler.plan(&snapshot);
        for (job, why) in &plan.unfit {
            let first = self.fleet().told_unfit.insert(job.clone());
            if first {
                self.event(
                    job,
                    Level::Warn,
                    "job.unfit",
                    why.to_string(),
                    serde_json::Value::Null,
                )
                .await;
            }
        }
        for placement in plan.placements {
            let attempt = match store
                .start_attempt(&placement.job, &placement.workers)
                .await
            {
                Ok(attempt) => attempt,
                Err(error) => {
                    tracing::warn!("placing job {}: {error}", placement.job);
                    continue;
                }
            };
            self.fleet().told_unfit.remove(&placement.job);
            let job = store.get_job(&placement.job).await?;
            self.assign(&job, &attempt).await?;
        }
        self.publish();
        Ok(())
    }

    /// Sends every rank of `attempt` its assignment; fails the attempt if a
    /// rank cannot be reached.
    async fn assign(&self, job: &Job, attempt: &Attempt) -> Result<(), StoreError> {
        let (spec_yaml, output) = match assigned_spec(job) {
            Ok(resolved) => resolved,
            Err(message) => {
                return self.end_failed(job, attempt, &message, false).await;
            }
        };
        let peers: Option<Vec<String>> = {
            let fleet = self.fleet();
            attempt
                .workers
                .iter()
                .map(|w| {
                    let connected = fleet.links.get(w).is_some_and(|l| !l.orders.is_closed());
                    fleet.ring_addrs.get(w).filter(|_| connected).cloned()
                })
                .collect()
        };
        let Some(peers) = peers else {
            let message = "a worker of the gang disconnected before it got its assignment";
            return self.end_failed(job, attempt, message, true).await;
        };
        for (rank, worker) in attempt.workers.iter().enumerate() {
            let order = Order {
                kind: Some(order::Kind::Assign(api::Assignment {
                    job_id: job.id.to_string(),
                    attempt: attempt.number,
                    rank: rank as u32,
                    world: attempt.workers.len() as u32,
                    peers: peers.clone(),
                    secret: attempt.secret.clone(),
                    spec_yaml: spec_yaml.clone(),
                    output_url: output.clone(),
                    tenant: job.tenant.to_string(),
                })),
            };
            if !self.send(worker, order) {
                let message = format!("worker {worker} (rank {rank}) could not be reached");
                return self.end_failed(job, attempt, &message, true).await;
            }
        }
        Ok(())
    }

    /// Notes that rank `rank` of `attempt` finished; once every rank has,
    /// the job succeeds.
    pub(super) async fn rank_finished(
        &self,
        job: &Job,
        attempt: &Attempt,
        rank: u32,
    ) -> Result<(), StoreError> {
        let _guard = self.inner.control.lock().await;
        let key = (job.id.clone(), attempt.number);
        let done = {
            let mut fleet = self.fleet();
            let ranks = fleet.finished.entry(key.clone()).or_default();
            ranks.insert(rank);
            ranks.len() == attempt.workers.len()
        };
        if !done {
            return Ok(());
        }
        {
            let mut fleet = self.fleet();
            fleet.finished.remove(&key);
            fleet.live.remove(&key);
        }
        let store = self.store();
        let current = store.get_job(&job.id).await?;
        if current.status.is_final() || current.attempt != attempt.number {
            return Ok(());
        }
        store.finish_attempt(&job.id, attempt.number, None).await?;
        if current.status == JobStatus::Starting {
            store.move_job(&job.id, JobStatus::Running, None).await?;
        }
        store.move_job(&job.id, JobStatus::Succeeded, None).await?;
        self.publish();
        self.wake();
        Ok(())
    }

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
    /// is final at once).
    async fn end_failed(
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
        store
            .finish_attempt(&job.id, attempt.number, Some(reason))
            .await?;
        self.fleet()
            .finished
            .remove(&(job.id.clone(), attempt.number));
        self.stop_gang(attempt, reason);
        let after = store.get_job(&job.id).await?;
        let error = JobError {
            code: "attempt_failed".into(),
            message: reason.to_string(),
        };
        if counts && after.may_restart() {
            store
                .move_job(&job.id, JobStatus::Restarting, Some(&error))
                .await?;
        } else {
            let error = JobError {
                code: if counts {
                    "max_failures"
                } else {
                    "cannot_start"
                }
                .into(),
                message: if counts {
                    format!(
                        "failed {} times (max_failures: {}); last: {reason}",
                        after.failures, after.max_failures
                    )
                } else {
                    reason.to_string()
                },
            };
            store
                .move_job(&job.id, JobStatus::Failed, Some(&error))
                .await?;
        }
        self.publish();
        self.wake();
        Ok(())
    }

    /// Cancels job `id`: a waiting job never starts, a running one is
    /// stopped.
    pub(super) async fn cancel(&self, id: &JobId) -> Result<Job, StoreError> {
        let _guard = self.inner.control.lock().await;
        let store = self.store();
        let job = store.get_job(id).await?;
        if job.status.is_final() {
            return Ok(job);
        }
        let error = JobError {
            code: "cancelled".into(),
            message: "cancelled by its owner".into(),
        };
        let moved = store
            .move_job(id, JobStatus::Cancelled, Some(&error))
            .await?;
        if job.attempt > 0 {
            let attempt = store.get_attempt(id, job.attempt).await?;
            self.fleet().live.remove(&(id.clone(), job.attempt));
            if attempt.finished_at.is_none() {
                store.finish_attempt(id, job.attempt, None).await?;
                self.stop_gang(&attempt, "the job was cancelled");
            }
        }
        self.publish();
        self.wake();
        Ok(moved)
    }

    /// Tells every connected rank of `attempt` to stop.
    fn stop_gang(&self, attempt: &Attempt, reason: &str) {
        for worker in &attempt.workers {
            self.send(worker, stop_order(&attempt.job, attempt.number, reason));
        }
    }

    /// Marks workers silent past the bound lost, and fails their attempts.
    async fn find_silent_workers(&self) -> Result<(), StoreError> {
        let config = self.config();
        if self.inner.started.elapsed() < config.grace {
            return Ok(());
        }
        let bound = config.lost_after.as_secs().max(1) as i64;
        let silent = self
            .store()
            .workers_silent_since(crate::store::unix_now() - bound)
            .await?;
        for worker in silent {
            let why = format!(
                "worker {} ({}) sent no heartbeat for {bound} s",
                worker.info.name, worker.id
            );
            self.worker_lost(&worker.id, &why).await?;
        }
        Ok(())
    }

    /// Worker `id` is gone: marks it lost and fails the attempt it ran.
    pub(super) async fn worker_lost(&self, id: &WorkerId, why: &str) -> Result<(), StoreError> {
        let worker = self.store().mark_worker_lost(id).await?;
        tracing::warn!("{why}");
        let Some((job, _)) = worker.assignment else {
            return Ok(());
        };
        let current = self.store().get_job(&job).await?;
        self.event(
            &job,
            Level::Warn,
            "worker.lost",
            why.to_string(),
            serde_json::json!({"worker_id": id.as_str(), "worker_name": worker.info.name}),
        )
        .await;
        if current.attempt > 0 {
            self.attempt_failed(&job, current.attempt, why).await?;
        }
        Ok(())
    }

    /// Appends an event and tells watchers; a store failure is logged, not
    /// returned (an event is never worth failing a decision for).
    pub(super) async fn event(
        &self,
        job: &JobId,
        level: Level,
        kind: &str,
        message: String,
        data: serde_json::Value,
    ) {
        let event = NewEvent {
            job: job.clone(),
            level,
            kind: kind.to_string(),
            message,
            data,
        };
        if let Err(error) = self.store().append_event(&event).await {
            tracing::error!("cannot log {kind} for job {job}: {error}");
        }
        self.publish();
    }
}

pub(super) fn stop_order(job: &JobId, attempt: u32, reason: &str) -> Order {
    Order {
        kind: Some(order::Kind::Stop(api::Stop {
            job_id: job.to_string(),
            attempt,
            reason: reason.to_string(),
        })),
    }
}

/// The worker counts `job` can run with. The stored spec was valid at
/// submit; re-reading it gives the sizes the global batch allows.
fn gang_sizes(job: &Job) -> Vec<u32> {
    JobSpec::from_yaml(&job.spec_yaml, "job.yaml", "/")
        .map(|spec| spec.usable_worker_counts())
        .unwrap_or_else(|_| (job.workers_min..=job.workers_max).collect())
}

/// A waiting job as the scheduler sees it.
fn waiting_job(job: &Job, gang_sizes: Vec<u32>) -> WaitingJob {
    WaitingJob {
        id: job.id.clone(),
        tenant: job.tenant.clone(),
        priority: job.priority,
        seq: job.seq,
        gang_sizes,
        backend: job.backend,
        waiting_since: job.waiting_since,
        max_wait: None,
    }
}

/// The spec an attempt's ranks run (the stored one, its output left to the
/// checkpoints) and the job's folder in checkpoint storage.
pub(super) fn assigned_spec(job: &Job) -> Result<(String, String), String> {
    let mut spec = JobSpec::from_yaml(&job.spec_yaml, "job.yaml", "/")
        .map_err(|e| format!("the stored spec no longer reads: {e}"))?;
    let store = job_checkpoints(&spec, job.tenant.as_str(), &job.id)?;
    spec.output = OutputSpec { dir: None };
    Ok((spec.to_yaml(), store.root().name().to_string()))
}

/// The checkpoints of job `job` of `tenant`: `{checkpoint.storage}/{tenant}/{job}`.
pub(super) fn job_checkpoints(
    spec: &JobSpec,
    tenant: &str,
    job: &JobId,
) -> Result<CheckpointStore, String> {
    CheckpointStore::open(&spec.checkpoint.storage.to_string(), tenant, job.as_str())
        .map_err(|e| format!("checkpoint.storage: {e}"))
}
