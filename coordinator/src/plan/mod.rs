//! The control loop's decisions, pure.
//!
//! [`plan`] turns a [`World`] (what the store holds and what the
//! coordinator knows of its connected workers, at one moment) into a
//! [`Round`]: the waiting jobs that sit the round out ([`Hold`]: a restart
//! backoff or a fence not yet over), the [`Scheduler`]'s plan for the
//! others, and the running elastic jobs that grow into idle workers
//! ([`Growth`]). [`after_failure`] decides what follows a failed attempt
//! (a restart after a doubling backoff, or the end of the job) and
//! [`fences`] until when each rank of an attempt that ended early may
//! still run.
//!
//! No IO, no clock, no randomness: `now` is part of the world, so the same
//! world always gives the same round and every rule is a unit test
//! (`tests.rs`, `check(world, expect)`).
//!
//! # Rules
//!
//! * **Holds.** A waiting job whose restart backoff or fence ends after
//!   `now` is left out of the scheduler's snapshot: it holds no workers
//!   and blocks no one, but it still counts as waiting for growth.
//! * **Quota use** is counted once, here: the workers assigned to a
//!   starting or running job of each tenant. Placements and growth both
//!   stay within what is left.
//! * **Growth.** Only when no job waits at all (held ones included): a
//!   running elastic job whose attempt has not ended and was not told to
//!   stop grows to its largest gang size that the idle connected workers
//!   of its backend, and its tenant's quota, allow. Jobs grow in the order
//!   of [`World::active`]; each takes its new workers from the idle ones
//!   before the next is looked at.
//!
//! Not here: the placement rules ([`crate::scheduler`]); committing a
//! round, sending orders and logging events (`server::control` and
//! `server::recovery`); when a worker counts as lost.

mod restarts;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use crate::scheduler::{self, FleetWorker, Scheduler, Snapshot, TenantUsage};
use crate::store::{JobId, TenantId, WorkerId, WorkerState};
use job::spec::Backend;

pub use restarts::{
    AfterFailure, FENCE_MARGIN, MAX_BACKOFF, RankSeen, after_failure, fences, restart_backoff,
};

/// What the control loop knows at one moment.
#[derive(Clone, Debug)]
pub struct World {
    /// The coordinator's monotonic clock: backoffs and fences end at an
    /// instant.
    pub now: Instant,
    /// Unix seconds (the scheduler's backfill window).
    pub unix_now: i64,
    /// Jobs `queued` or `restarting`, in any order.
    pub waiting: Vec<WaitingJob>,
    /// Jobs `starting` or `running`, in submit order (the order they grow).
    pub active: Vec<ActiveJob>,
    /// Every registered worker, in any order.
    pub workers: Vec<LiveWorker>,
    /// Each configured tenant's quota on concurrent workers (`None`: no
    /// quota); a tenant not listed has none either.
    pub quotas: BTreeMap<TenantId, Option<u32>>,
}

/// A job waiting for workers and what may hold it back.
#[derive(Clone, Debug)]
pub struct WaitingJob {
    /// The job as the scheduler sees it.
    pub job: scheduler::WaitingJob,
    /// The end of its restart backoff, if it restarted after a failure.
    pub backoff_until: Option<Instant>,
    /// When the last rank of an earlier attempt that may still run is
    /// known to have stopped.
    pub fenced_until: Option<Instant>,
}

/// A job that holds workers (`starting` or `running`).
#[derive(Clone, Debug)]
pub struct ActiveJob {
    pub id: JobId,
    pub tenant: TenantId,
    /// Set for a running job whose worker range is wider than one count.
    pub elastic: Option<ElasticRun>,
}

/// The attempt a running elastic job runs now: what growth looks at.
#[derive(Clone, Debug)]
pub struct ElasticRun {
    pub backend: Backend,
    /// The worker counts the job can run with, ascending.
    pub gang_sizes: Vec<u32>,
    /// Its number.
    pub attempt: u32,
    /// Its gang in rank order.
    pub gang: Vec<WorkerId>,
    /// Whether it has ended (the job is about to move on).
    pub ended: bool,
    /// Whether its ranks were told to stop at the next step boundary.
    pub preempting: bool,
}

/// A registered worker, as the store and the live links know it.
#[derive(Clone, Debug)]
pub struct LiveWorker {
    pub id: WorkerId,
    pub backend: Backend,
    /// Its state in the store.
    pub state: WorkerState,
    /// Whether its heartbeat stream is open (orders can reach it).
    pub connected: bool,
    /// The job it is assigned to.
    pub job: Option<JobId>,
}

/// The decisions of one round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Waiting jobs left out of this round, with why.
    pub held: Vec<(JobId, Hold)>,
    /// The scheduler's plan for the waiting jobs not held.
    pub schedule: scheduler::Plan,
    /// Running elastic jobs to preempt so they restart on more workers.
    pub growth: Vec<Growth>,
}

/// Why a waiting job sits a round out; `left` is how long still.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// It restarted after a failure and waits its backoff.
    Backoff { left: Duration },
    /// A rank of an earlier attempt may still run.
    Fenced { left: Duration },
}

/// A running elastic job grows: attempt `attempt` is preempted (through
/// rank 0's worker, `tell`) and the job is placed again on `to` workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Growth {
    pub job: JobId,
    pub attempt: u32,
    pub tell: WorkerId,
    pub from: usize,
    pub to: usize,
}

/// Decides one round (see the module docs for the rules).
pub fn plan(scheduler: &Scheduler, world: &World) -> Round {
    let tenants = tenant_usage(world);
    let mut round = Round::default();
    let mut ready = Vec::new();
    for waiting in &world.waiting {
        match hold(waiting, world.now) {
            Some(hold) => round.held.push((waiting.job.id.clone(), hold)),
            None => ready.push(waiting.job.clone()),
        }
    }
    if !ready.is_empty() {
        let snapshot = Snapshot {
            now: world.unix_now,
            jobs: ready,
            workers: world
                .workers
                .iter()
                .map(|w| FleetWorker {
                    id: w.id.clone(),
                    backend: w.backend,
                    // Not connected: cannot take a job now.
                    state: if w.connected {
                        w.state
                    } else {
                        WorkerState::Lost
                    },
                })
                .collect(),
            tenants: tenants.clone(),
        };
        round.schedule = scheduler.plan(&snapshot);
    }
    if world.waiting.is_empty() {
        round.growth = growth(world, tenants);
    }
    round
}

/// Why `job` sits this round out, if it does: its backoff first.
fn hold(job: &WaitingJob, now: Instant) -> Option<Hold> {
    let left = |until: Option<Instant>| until.filter(|t| *t > now).map(|t| t - now);
    if let Some(left) = left(job.backoff_until) {
        return Some(Hold::Backoff { left });
    }
    left(job.fenced_until).map(|left| Hold::Fenced { left })
}

/// Each configured tenant's quota and the workers its active jobs hold.
fn tenant_usage(world: &World) -> BTreeMap<TenantId, TenantUsage> {
    let tenant_of: HashMap<&JobId, &TenantId> =
        world.active.iter().map(|j| (&j.id, &j.tenant)).collect();
    let mut tenants: BTreeMap<TenantId, TenantUsage> = world
        .quotas
        .iter()
        .map(|(tenant, quota)| {
            let usage = TenantUsage {
                quota: *quota,
                in_use: 0,
            };
            (tenant.clone(), usage)
        })
        .collect();
    for worker in &world.workers {
        if let Some(job) = &worker.job
            && let Some(tenant) = tenant_of.get(job)
            && let Some(usage) = tenants.get_mut(*tenant)
        {
            usage.in_use += 1;
        }
    }
    tenants
}

/// The running elastic jobs that grow into the idle workers.
fn growth(world: &World, mut tenants: BTreeMap<TenantId, TenantUsage>) -> Vec<Growth> {
    let mut idle: HashMap<Backend, usize> = HashMap::new();
    for worker in &world.workers {
        if worker.state == WorkerState::Idle && worker.connected {
            *idle.entry(worker.backend).or_default() += 1;
        }
    }
    let mut grown = Vec::new();
    for job in &world.active {
        let Some(run) = &job.elastic else { continue };
        if run.preempting || run.ended {
            continue;
        }
        let Some(tell) = run.gang.first() else {
            continue;
        };
        let from = run.gang.len();
        let idle_here = idle.get(&run.backend).copied().unwrap_or(0);
        let usage = tenants.get_mut(&job.tenant);
        let quota_left = usage
            .as_ref()
            .and_then(|u| u.quota.map(|q| q.saturating_sub(u.in_use) as usize));
        let free = quota_left.map_or(idle_here, |left| idle_here.min(left));
        let Some(to) = run
            .gang_sizes
            .iter()
            .map(|s| *s as usize)
            .filter(|s| *s > from && *s <= from + free)
            .max()
        else {
            continue;
        };
        let added = to - from;
        idle.insert(run.backend, idle_here - added);
        if let Some(usage) = usage {
            usage.in_use += u32::try_from(added).unwrap_or(u32::MAX);
        }
        grown.push(Growth {
            job: job.id.clone(),
            attempt: run.attempt,
            tell: tell.clone(),
            from,
            to,
        });
    }
    grown
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hold::Backoff { left } => write!(f, "restart backoff, {left:?} left"),
            Hold::Fenced { left } => {
                write!(
                    f,
                    "a rank of an earlier attempt may still run, {left:?} left"
                )
            }
        }
    }
}

/// One line per decision: `hold JOB: why`, then the scheduler's lines
/// (`place`, `unfit`, `wait`), then `grow JOB: FROM -> TO workers (tell W)`.
impl fmt::Display for Round {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (job, hold) in &self.held {
            writeln!(f, "hold {job}: {hold}")?;
        }
        write!(f, "{}", self.schedule)?;
        for growth in &self.growth {
            writeln!(
                f,
                "grow {}: {} -> {} workers (tell {})",
                growth.job, growth.from, growth.to, growth.tell
            )?;
        }
        Ok(())
    }
}
