//! The control loop: scheduling rounds (a snapshot of the store through the
//! [`Scheduler`](crate::scheduler::Scheduler), each placement committed
//! with `Store::start_attempt` and sent to its gang as assignments), elastic
//! jobs growing into idle workers, and the normal ends of attempts (every
//! rank finished or stopped when told, the job cancelled). Failures, lost
//! workers and preemption are `recovery`'s.
//!
//! Every decision here runs under the coordinator's control lock, so two
//! of them never act on the same stale view.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::api::{self, Order, order};
use crate::scheduler::{FleetWorker, Snapshot, TenantUsage, WaitingJob};
use crate::store::{
    Attempt, Job, JobError, JobId, JobStatus, Level, NewEvent, StoreError, WorkerState,
};
use job::spec::{JobSpec, OutputSpec};
use trainer::checkpoint::CheckpointStore;

use super::Coordinator;
use super::recovery::Preemption;

/// Even when nothing wakes it, the loop schedules this often (wait limits
/// and backfill windows depend on the clock).
const IDLE_ROUND: Duration = Duration::from_secs(5);

impl Coordinator {
    /// Runs until the task is aborted.
    pub(super) async fn run_control(self) {
        // Silence is checked every tick: a lost worker is found within a
        // quarter of a second of the bound.
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut last_round = Instant::now() - IDLE_ROUND;
        loop {
            // A job's restart backoff or fence wait running out is worth
            // a round.
            let backoff_ends = {
                let mut fleet = self.fleet();
                let now = Instant::now();
                fleet.unfenced.retain(|_, u| u.until > now);
                let fences = fleet.unfenced.values().map(|u| u.until);
                fleet.not_before.values().copied().chain(fences).min()
            };
            let backoff = async move {
                match backoff_ends {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            let woken = tokio::select! {
                () = self.inner.wake.notified() => true,
                () = backoff => true,
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
                if let Err(error) = self.grow_elastic_jobs().await {
                    tracing::error!("growing elastic jobs: {error}");
                }
            }
        }
    }

    /// One scheduling round: places what fits and starts it.
    pub(super) async fn schedule_round(&self) -> Result<(), StoreError> {
        let _guard = self.inner.control.lock().await;
        let store = self.store();
        let mut waiting = store
            .jobs_with_status(&[JobStatus::Queued, JobStatus::Restarting])
            .await?;
        {
            // Jobs in their restart backoff sit this round out.
            let now = Instant::now();
            let mut fleet = self.fleet();
            fleet.not_before.retain(|_, until| *until > now);
            waiting.retain(|job| !fleet.not_before.contains_key(&job.id));
        }
        // So do jobs whose earlier attempt may still run somewhere.
        waiting.retain(|job| self.fenced_until(&job.id).is_none());
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
                        let mut waiting = waiting_job(job, sizes);
                        waiting.avoid_pairs =
                            fleet.broken_pairs.get(&job.id).cloned().unwrap_or_default();
                        waiting
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
        let uploads = self.config().data_dir.join("datasets");
        let inputs = match JobSpec::from_yaml(&job.spec_yaml, "job.yaml", "/")
            .map_err(|e| e.to_string())
            .and_then(|spec| super::inputs::assignment_inputs(&spec, &uploads))
        {
            Ok(inputs) => inputs.into_iter().map(|i| i.file).collect::<Vec<_>>(),
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
        self.reconcile_or_log(job).await;
        let Some(secret) = attempt.secret.clone() else {
            let message = "the attempt's ring secret is only known when it starts";
            return self.end_failed(job, attempt, message, true).await;
        };
        for (rank, worker) in attempt.workers.iter().enumerate() {
            let order = Order::of(order::Kind::Assign(api::Assignment {
                job_id: job.id.to_string(),
                attempt: attempt.number,
                rank: rank as u32,
                world: attempt.workers.len() as u32,
                peers: peers.clone(),
                secret: secret.clone(),
                spec_yaml: spec_yaml.clone(),
                output_url: output.clone(),
                tenant: job.tenant.to_string(),
                inputs: inputs.clone(),
                lost_after_ms: self.config().lost_after.as_millis() as u32,
            }));
            if !self.send(worker, order) {
                let message = format!("worker {worker} (rank {rank}) could not be reached");
                return self.end_failed(job, attempt, &message, true).await;
            }
        }
        if attempt.number > 1 {
            let before = self
                .store()
                .get_attempt(&job.id, attempt.number - 1)
                .await?;
            let (from, to) = (before.workers.len(), attempt.workers.len());
            if from != to {
                self.event(
                    &job.id,
                    Level::Info,
                    "job.resized",
                    format!(
                        "job {} resized from {from} to {to} workers (attempt {})",
                        job.id, attempt.number
                    ),
                    serde_json::json!({"from": from, "to": to, "attempt": attempt.number}),
                )
                .await;
            }
        }
        Ok(())
    }

    /// Elastic jobs running on fewer workers than they could use grow when
    /// idle workers of their backend wait and no job is waiting for them:
    /// the job is preempted (its ranks stop together after a checkpoint)
    /// and placed again, on the larger gang the scheduler then finds free.
    pub(super) async fn grow_elastic_jobs(&self) -> Result<(), StoreError> {
        let _guard = self.inner.control.lock().await;
        let store = self.store();
        let waiting = store
            .jobs_with_status(&[JobStatus::Queued, JobStatus::Restarting])
            .await?;
        let running = store.jobs_with_status(&[JobStatus::Running]).await?;
        if !waiting.is_empty() || !running.iter().any(|j| j.workers_max > j.workers_min) {
            return Ok(());
        }
        let workers = store.list_workers().await?;
        let mut idle: Vec<_> = {
            let fleet = self.fleet();
            workers
                .iter()
                .filter(|w| w.state == WorkerState::Idle)
                .filter(|w| {
                    fleet
                        .links
                        .get(&w.id)
                        .is_some_and(|l| !l.orders.is_closed())
                })
                .map(|w| w.info.backend)
                .collect()
        };
        let tenant_of: HashMap<&JobId, _> = running.iter().map(|j| (&j.id, &j.tenant)).collect();
        for job in running.iter().filter(|j| j.workers_max > j.workers_min) {
            if self.is_preempting(&job.id, job.attempt) {
                continue;
            }
            let attempt = store.get_attempt(&job.id, job.attempt).await?;
            if attempt.finished_at.is_some() {
                continue;
            }
            let world = attempt.workers.len();
            let mut free = idle.iter().filter(|b| **b == job.backend).count();
            let quota = self
                .config()
                .access
                .tenant(&job.tenant)
                .and_then(|t| t.max_workers);
            if let Some(quota) = quota {
                let in_use = workers
                    .iter()
                    .filter_map(|w| w.assignment.as_ref())
                    .filter(|(j, _)| tenant_of.get(j) == Some(&&job.tenant))
                    .count();
                free = free.min((quota as usize).saturating_sub(in_use));
            }
            let sizes = {
                let fleet = self.fleet();
                fleet.gang_sizes.get(&job.id).cloned()
            }
            .unwrap_or_else(|| gang_sizes(job));
            let Some(to) = sizes
                .iter()
                .map(|s| *s as usize)
                .filter(|s| *s > world && *s <= world + free)
                .max()
            else {
                continue;
            };
            if self.preempt(
                &attempt,
                &attempt.workers[0],
                Preemption::Grow { from: world, to },
            ) {
                for _ in world..to {
                    if let Some(i) = idle.iter().position(|b| *b == job.backend) {
                        idle.swap_remove(i);
                    }
                }
                self.event(
                    &job.id,
                    Level::Info,
                    "job.growing",
                    format!(
                        "{} idle worker(s) free: the job stops at its next step boundary after a checkpoint and restarts on {to} workers instead of {world}",
                        to - world
                    ),
                    serde_json::json!({"from": world, "to": to}),
                )
                .await;
            }
        }
        Ok(())
    }

    /// Notes that rank `rank` of `attempt` ended well: it finished, or
    /// (`preempted`) stopped after a checkpoint when told to. Once every
    /// rank has, the job succeeds, or is placed again if it was preempted.
    pub(super) async fn rank_ended(
        &self,
        job: &Job,
        attempt: &Attempt,
        rank: u32,
        preempted: bool,
    ) -> Result<(), StoreError> {
        let _guard = self.inner.control.lock().await;
        let key = (job.id.clone(), attempt.number);
        let ended = {
            let mut fleet = self.fleet();
            let ranks = fleet.ended.entry(key.clone()).or_default();
            ranks.insert(rank, preempted);
            (ranks.len() == attempt.workers.len()).then(|| ranks.values().any(|p| *p))
        };
        let Some(any_preempted) = ended else {
            return Ok(());
        };
        let why = {
            let mut fleet = self.fleet();
            fleet.ended.remove(&key);
            fleet.live.remove(&key);
            fleet.preempting.remove(&key)
        };
        let store = self.store();
        let current = store.get_job(&job.id).await?;
        if current.status.is_final() || current.attempt != attempt.number {
            return Ok(());
        }
        if any_preempted {
            return self.end_preempted(&current, attempt, why).await;
        }
        self.reconcile_or_log(&current).await;
        store.finish_attempt(&job.id, attempt.number, None).await?;
        if current.status == JobStatus::Starting {
            store.move_job(&job.id, JobStatus::Running, None).await?;
        }
        store.move_job(&job.id, JobStatus::Succeeded, None).await?;
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
            {
                let mut fleet = self.fleet();
                let key = (id.clone(), job.attempt);
                fleet.live.remove(&key);
                fleet.ended.remove(&key);
                fleet.preempting.remove(&key);
            }
            if attempt.finished_at.is_none() {
                store.finish_attempt(id, job.attempt, None).await?;
                self.stop_gang(&attempt, "the job was cancelled");
                // A `resume` must not start beside a rank cut off from
                // the stop order.
                self.hold_until_fenced(&attempt);
            }
        }
        self.publish();
        self.wake();
        Ok(moved)
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
        avoid_pairs: Vec::new(),
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
