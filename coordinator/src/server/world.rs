//! The world the control plan ([`crate::plan`]) decides on: the store's
//! rows of one round ([`StoreSnapshot`]) joined with what the coordinator
//! knows only in memory (open links, restart backoffs, fences, broken ring
//! pairs, preemptions sent) and each job's gang sizes from its spec.
//!
//! Not here: the decisions (`plan`), committing them (`control`), or
//! keeping the in-memory state up to date (`workers`, `recovery`).

use std::time::Instant;

use crate::plan::{self, ActiveJob, ElasticRun, LiveWorker, World};
use crate::scheduler::WaitingJob;
use crate::store::{Job, StoreSnapshot};

use super::Coordinator;

impl Coordinator {
    /// The world as the control plan sees it: `rows` and the live fleet
    /// (links, restart backoffs, fences, broken ring pairs, preemptions).
    pub(super) fn world(&self, rows: &StoreSnapshot) -> World {
        let attempt_of = |job: &Job| {
            rows.elastic_attempts
                .iter()
                .find(|a| a.job == job.id && a.number == job.attempt)
        };
        let sizes = |job: &Job| self.gang_sizes(job);
        let now = Instant::now();
        let mut fleet = self.fleet();
        fleet.not_before.retain(|_, until| *until > now);
        fleet.unfenced.retain(|_, u| u.until > now);
        let waiting = rows
            .waiting
            .iter()
            .map(|job| {
                let mut waiting = waiting_job(job, sizes(job));
                waiting.avoid_pairs = fleet.broken_pairs.get(&job.id).cloned().unwrap_or_default();
                plan::WaitingJob {
                    job: waiting,
                    backoff_until: fleet.not_before.get(&job.id).copied(),
                    fenced_until: fleet
                        .unfenced
                        .values()
                        .filter(|u| u.job == job.id)
                        .map(|u| u.until)
                        .max(),
                }
            })
            .collect();
        let active = rows
            .active
            .iter()
            .map(|job| ActiveJob {
                id: job.id.clone(),
                tenant: job.tenant.clone(),
                elastic: attempt_of(job).map(|attempt| ElasticRun {
                    backend: job.backend,
                    gang_sizes: sizes(job),
                    attempt: attempt.number,
                    gang: attempt.workers.clone(),
                    ended: attempt.finished_at.is_some(),
                    preempting: fleet
                        .preempting
                        .contains_key(&(job.id.clone(), attempt.number)),
                }),
            })
            .collect();
        let workers = rows
            .workers
            .iter()
            .map(|w| LiveWorker {
                id: w.id.clone(),
                backend: w.info.backend,
                state: w.state,
                connected: fleet
                    .links
                    .get(&w.id)
                    .is_some_and(|l| !l.orders.is_closed()),
                job: w.assignment.as_ref().map(|(job, _)| job.clone()),
            })
            .collect();
        let quotas = self
            .config()
            .access
            .tenants()
            .map(|policy| (policy.id.clone(), policy.max_workers))
            .collect();
        World {
            now,
            unix_now: crate::store::unix_now(),
            waiting,
            active,
            workers,
            quotas,
        }
    }

    /// The worker counts `job` can run with. The stored spec was valid at
    /// submit; it gives the sizes the global batch allows.
    fn gang_sizes(&self, job: &Job) -> Vec<u32> {
        self.spec_of(job)
            .map(|spec| spec.usable_worker_counts())
            .unwrap_or_else(|_| (job.workers_min..=job.workers_max).collect())
    }
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
        avoid_pairs: Vec::new(),
    }
}
