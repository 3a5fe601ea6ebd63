//! The control loop: rounds that commit what the pure control plan
//! ([`crate::plan`]) decides from the store's snapshot and the live fleet
//! (each placement committed with `Store::start_attempt` and sent to its
//! gang as assignments; each growing elastic job told to stop after a
//! checkpoint), and the normal ends of attempts (every rank finished or
//! stopped when told, the job cancelled). Failures, lost workers and
//! preemption are `recovery`'s.
//!
//! Decisions are not made here: a round takes the world (`world.rs`),
//! calls [`plan::plan`], then only writes the store, sends orders and logs
//! events. Every round runs under the coordinator's control lock, so two
//! decisions never act on the same stale view.

use std::time::{Duration, Instant};

use crate::api::{self, Order, order};
use crate::plan::{self, Growth};
use crate::scheduler::Plan;
use crate::store::{Attempt, Job, JobError, JobId, JobStatus, NewEvent, StoreError};
use job::JobEvent;
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
                // A round that placed jobs is followed by a second look,
                // so elastic jobs grow into the workers left at once.
                for _ in 0..2 {
                    match self.control_round().await {
                        Ok(placed) if placed > 0 => continue,
                        Ok(_) => break,
                        Err(error) => {
                            tracing::error!("control round: {error}");
                            break;
                        }
                    }
                }
            }
        }
    }

    /// One control round: the store's rows and what is known of the live
    /// fleet become a [`plan::World`], [`plan::plan`] decides, and the
    /// round is committed: each placement by `Store::start_attempt` and
    /// sent to its gang, each growth by a preempt order. Returns how many
    /// jobs it placed.
    pub(super) async fn control_round(&self) -> Result<usize, StoreError> {
        let _guard = self.inner.control.lock().await;
        let rows = self.store().snapshot().await?;
        let world = self.world(&rows);
        let round = plan::plan(&self.inner.scheduler, &world);
        let placed = self.commit_schedule(round.schedule).await?;
        self.commit_growth(&round.growth, &rows.elastic_attempts)
            .await;
        Ok(placed)
    }

    /// Tells the owners of jobs that cannot fit (once each), and starts
    /// each placement. Returns how many jobs it placed.
    async fn commit_schedule(&self, schedule: Plan) -> Result<usize, StoreError> {
        if schedule == Plan::default() {
            return Ok(0);
        }
        let store = self.store();
        for (job, why) in &schedule.unfit {
            let first = self.fleet().told_unfit.insert(job.clone());
            if first {
                let unfit = JobEvent::JobUnfit {
                    reason: why.to_string(),
                };
                self.event(job, &unfit, None).await;
            }
        }
        let mut placed = 0;
        for placement in schedule.placements {
            // A later attempt resumes from the newest checkpoint in
            // storage: the ranks of the one before may have committed some
            // that their events never reported (cut off, they ran on until
            // their fences stopped them, which placement waited for).
            match store.get_job(&placement.job).await {
                Ok(job) if job.attempt > 0 => self.reconcile_or_log(&job).await,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!("placing job {}: {error}", placement.job);
                    continue;
                }
            }
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
            placed += 1;
            self.fleet().told_unfit.remove(&placement.job);
            let job = store.get_job(&placement.job).await?;
            self.assign(&job, &attempt).await?;
        }
        self.publish();
        Ok(placed)
    }

    /// Sends every rank of `attempt` its assignment; fails the attempt if a
    /// rank cannot be reached.
    async fn assign(&self, job: &Job, attempt: &Attempt) -> Result<(), StoreError> {
        let spec = match self.spec_of(job) {
            Ok(spec) => spec,
            Err(e) => {
                let message = format!("the stored spec no longer reads: {e}");
                return self.end_failed(job, attempt, &message, false).await;
            }
        };
        let (spec_yaml, output) = match assigned_spec(job, &spec) {
            Ok(resolved) => resolved,
            Err(message) => {
                return self.end_failed(job, attempt, &message, false).await;
            }
        };
        let uploads = self.config().data_dir.join("datasets");
        let inputs = match super::inputs::assignment_inputs(&spec, &uploads) {
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
                let resized = JobEvent::JobResized {
                    from,
                    to,
                    attempt: attempt.number,
                };
                let message = format!("job {} {resized}", job.id);
                self.event(&job.id, &resized, Some(message)).await;
            }
        }
        Ok(())
    }

    /// Elastic jobs running on fewer workers than they could use grow:
    /// each is preempted (its ranks stop together after a checkpoint) and
    /// placed again, on the larger gang the scheduler then finds free.
    async fn commit_growth(&self, growth: &[Growth], attempts: &[Attempt]) {
        for grow in growth {
            let Some(attempt) = attempts
                .iter()
                .find(|a| a.job == grow.job && a.number == grow.attempt)
            else {
                continue;
            };
            let why = Preemption::Grow {
                from: grow.from,
                to: grow.to,
            };
            if self.preempt(attempt, &grow.tell, why) {
                let (from, to) = (grow.from, grow.to);
                self.event(&grow.job, &JobEvent::JobGrowing { from, to }, None)
                    .await;
            }
        }
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
    /// `message` replaces the event's own when it says more.
    pub(super) async fn event(&self, job: &JobId, event: &JobEvent, message: Option<String>) {
        let mut new = NewEvent::of(job, event);
        if let Some(message) = message {
            new = new.with_message(message);
        }
        if let Err(error) = self.store().append_event(&new).await {
            tracing::error!("cannot log {} for job {job}: {error}", event.kind());
        }
        self.publish();
    }
}

/// The spec an attempt's ranks run (`job`'s stored `spec`, its output
/// left to the checkpoints) and the job's folder in checkpoint storage.
fn assigned_spec(job: &Job, spec: &JobSpec) -> Result<(String, String), String> {
    let store = job_checkpoints(spec, job.tenant.as_str(), &job.id)?;
    let spec = JobSpec {
        output: OutputSpec { dir: None },
        ..spec.clone()
    };
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
