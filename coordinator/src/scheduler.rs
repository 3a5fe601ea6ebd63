//! Placement: which waiting jobs start now, and on which workers.
//!
//! [`Scheduler::plan`] turns a [`Snapshot`] (the waiting jobs, the fleet's
//! workers, each tenant's quota and use, and the time) into a [`Plan`]:
//! [`Placement`]s (a job and its gang in rank order), jobs that cannot run
//! as things stand ([`Unfit`]: the server tells their owners in an event),
//! and jobs that simply wait, with why ([`Blocked`]). It is pure: no IO, no
//! clock, no randomness; the same snapshot always gives the same plan. The
//! server builds the snapshot from the store and commits each placement
//! with `Store::start_attempt`, which refuses it if the world moved on.
//!
//! # Rules
//!
//! * **Order.** Higher `priority` first; within a priority, the earlier
//!   submission (`seq`) first; the job id breaks any remaining tie.
//! * **Gangs.** A job gets all the workers of one of its gang sizes at once,
//!   or none: never part of a gang that would sit holding workers. Only
//!   `idle` workers of the job's backend are used, taken in worker-id order;
//!   rank `r` is the `r`-th of them. An elastic job (several sizes) takes
//!   the largest size that is free now.
//! * **Broken pairs.** When two workers' ranks could not reach each other,
//!   the job's next gangs leave out one of the two if other idle workers
//!   can stand in (the lowest ids that do); if none can, the pair is used
//!   again rather than leaving the job waiting.
//! * **Backfill with a deadline.** A job that cannot get its gang now does
//!   not stop later jobs from starting on the free workers of its backend,
//!   as long as it has waited less than [`Scheduler::backfill_window`].
//!   After that it holds the line: no job behind it starts on its backend,
//!   so the workers that finishing jobs release pile up until its gang
//!   fits. A big job thus waits at most the window plus the time the jobs
//!   already running take; it is never starved by a stream of small ones.
//!   Jobs on other backends use other workers and are not held.
//! * **Quota.** A tenant with a quota never has more workers busy than
//!   that. A job over its tenant's remaining quota waits without holding
//!   the line (only the tenant's own jobs are in its way).
//! * **Cannot fit.** A job whose smallest gang is larger than the number of
//!   workers of its backend registered at all (in any state: lost ones may
//!   come back), or than its tenant's quota, is reported as [`Unfit`] and
//!   holds nothing.
//!
//! Not here: retries, cancellation and restarts (the server moves jobs
//! between statuses), or choosing workers by host or memory.

#[cfg(test)]
pub(crate) mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::store::{JobId, TenantId, WorkerId, WorkerState};
use job::spec::Backend;

/// What the scheduler sees: the waiting jobs and the fleet, at time `now`.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Unix seconds.
    pub now: i64,
    /// Jobs that need a placement (`queued` or `restarting`), in any order.
    pub jobs: Vec<WaitingJob>,
    /// Every registered worker, in any order.
    pub workers: Vec<FleetWorker>,
    /// Quotas and current use; a tenant not listed has no quota.
    pub tenants: BTreeMap<TenantId, TenantUsage>,
}

/// A job waiting for workers.
#[derive(Clone, Debug)]
pub struct WaitingJob {
    pub id: JobId,
    pub tenant: TenantId,
    pub priority: i32,
    /// Submit order: smaller was submitted earlier.
    pub seq: i64,
    /// The worker counts the job can run with, ascending (one for a fixed
    /// `resources.workers`; those the global batch divides for a range).
    pub gang_sizes: Vec<u32>,
    pub backend: Backend,
    /// When it started waiting (submit, or its last restart), Unix seconds.
    pub waiting_since: i64,
    /// Pairs of workers whose ranks could not reach each other in an
    /// earlier attempt: a gang without any of them is preferred.
    pub avoid_pairs: Vec<(WorkerId, WorkerId)>,
}

/// A worker as the scheduler sees it.
#[derive(Clone, Debug)]
pub struct FleetWorker {
    pub id: WorkerId,
    pub backend: Backend,
    pub state: WorkerState,
}

/// A tenant's quota on concurrent workers and how many it uses now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantUsage {
    pub quota: Option<u32>,
    pub in_use: u32,
}

/// The decisions of one round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Jobs to start now, in the order they were decided.
    pub placements: Vec<Placement>,
    /// Jobs that cannot run as things stand.
    pub unfit: Vec<(JobId, Unfit)>,
    /// Jobs that wait for this round, with why.
    pub waiting: Vec<(JobId, Blocked)>,
}

/// A job and its gang: `workers[r]` is rank `r`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub job: JobId,
    pub workers: Vec<WorkerId>,
}

/// Why a job cannot run as things stand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unfit {
    /// More workers of its backend than are registered in the whole fleet.
    FleetTooSmall {
        backend: Backend,
        needed: u32,
        registered: u32,
    },
    /// More workers than its tenant may ever use at once.
    OverQuota { needed: u32, quota: u32 },
    /// It has no usable gang size (its worker range is empty).
    NoGangSize,
}

/// Why a job that could run waits this round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// Fewer idle workers of its backend than its smallest gang.
    FewerFree {
        backend: Backend,
        needed: u32,
        free: u32,
    },
    /// Its tenant's quota has fewer workers left than its smallest gang.
    Quota { needed: u32, left: u32 },
    /// An earlier job that has waited past the backfill window holds the
    /// free workers of this backend.
    HeldFor(JobId),
}

/// The placement policy: [`Scheduler::plan`] applies it to a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scheduler {
    /// Seconds a job that cannot fit may be overtaken by later jobs
    /// (backfill) before it holds the free workers of its backend.
    pub backfill_window: u64,
}

impl Default for Scheduler {
    fn default() -> Scheduler {
        Scheduler {
            backfill_window: Scheduler::DEFAULT_BACKFILL_WINDOW,
        }
    }
}

/// Takes `size` workers from `pool` (the smallest ids are at its end):
/// the first gang in id order that holds no pair of `avoid` (searched
/// depth-first, within a bound), or, if there is none, the first `size`.
fn take_gang(
    pool: &mut Vec<&WorkerId>,
    size: usize,
    avoid: &[(WorkerId, WorkerId)],
) -> Vec<WorkerId> {
    let in_order: Vec<usize> = (0..pool.len()).rev().collect();
    let mut chosen = Vec::new();
    let mut budget = 10_000u32;
    let found =
        !avoid.is_empty() && gang_without(pool, &in_order, size, avoid, &mut chosen, &mut budget);
    if !found {
        chosen = in_order.into_iter().take(size).collect();
    }
    let gang = chosen.iter().map(|&i| pool[i].clone()).collect();
    chosen.sort_unstable_by(|a, b| b.cmp(a));
    for i in chosen {
        pool.remove(i);
    }
    gang
}

/// Extends `chosen` (indices into `pool`) from `candidates` to `size`
/// workers with no pair of `avoid` among them; false if it cannot (or the
/// search `budget` ran out).
fn gang_without(
    pool: &[&WorkerId],
    candidates: &[usize],
    size: usize,
    avoid: &[(WorkerId, WorkerId)],
    chosen: &mut Vec<usize>,
    budget: &mut u32,
) -> bool {
    if chosen.len() == size {
        return true;
    }
    let broken = |a: &WorkerId, b: &WorkerId| {
        avoid
            .iter()
            .any(|(x, y)| (x == a && y == b) || (x == b && y == a))
    };
    for (n, &i) in candidates.iter().enumerate() {
        if *budget == 0 || candidates.len() - n < size - chosen.len() {
            return false;
        }
        *budget -= 1;
        if chosen.iter().all(|&j| !broken(pool[i], pool[j])) {
            chosen.push(i);
            if gang_without(pool, &candidates[n + 1..], size, avoid, chosen, budget) {
                return true;
            }
            chosen.pop();
        }
    }
    false
}

impl Scheduler {
    /// Ten minutes: long enough for small jobs to fill gaps, short enough
    /// that a big job waits for running jobs, not for the queue.
    pub const DEFAULT_BACKFILL_WINDOW: u64 = 600;

    /// Decides this round's placements (see the module docs for the rules).
    pub fn plan(&self, snapshot: &Snapshot) -> Plan {
        let mut jobs: Vec<&WaitingJob> = snapshot.jobs.iter().collect();
        jobs.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(a.seq.cmp(&b.seq))
                .then(a.id.cmp(&b.id))
        });

        // Keyed by backend for lookups only: nothing iterates these maps, so
        // their order cannot leak into the plan.
        let mut registered: HashMap<Backend, u32> = HashMap::new();
        let mut free: HashMap<Backend, Vec<&WorkerId>> = HashMap::new();
        for worker in &snapshot.workers {
            *registered.entry(worker.backend).or_default() += 1;
            if worker.state == WorkerState::Idle {
                free.entry(worker.backend).or_default().push(&worker.id);
            }
        }
        for workers in free.values_mut() {
            workers.sort();
            // Taken from the end: reverse so the smallest ids come first.
            workers.reverse();
        }
        let mut quota_left: BTreeMap<&TenantId, u32> = snapshot
            .tenants
            .iter()
            .filter_map(|(tenant, usage)| {
                let quota = usage.quota?;
                Some((tenant, quota.saturating_sub(usage.in_use)))
            })
            .collect();
        let mut held: HashMap<Backend, &JobId> = HashMap::new();

        let mut plan = Plan::default();
        for job in jobs {
            let waited = u64::try_from(snapshot.now - job.waiting_since).unwrap_or(0);
            let sizes: Vec<u32> = job.gang_sizes.iter().copied().filter(|&n| n > 0).collect();
            let Some(&smallest) = sizes.iter().min() else {
                plan.unfit.push((job.id.clone(), Unfit::NoGangSize));
                continue;
            };
            let fleet = registered.get(&job.backend).copied().unwrap_or(0);
            if smallest > fleet {
                let unfit = Unfit::FleetTooSmall {
                    backend: job.backend,
                    needed: smallest,
                    registered: fleet,
                };
                plan.unfit.push((job.id.clone(), unfit));
                continue;
            }
            let quota = snapshot
                .tenants
                .get(&job.tenant)
                .and_then(|usage| usage.quota);
            if let Some(quota) = quota.filter(|&quota| smallest > quota) {
                let unfit = Unfit::OverQuota {
                    needed: smallest,
                    quota,
                };
                plan.unfit.push((job.id.clone(), unfit));
                continue;
            }

            let pool = free.entry(job.backend).or_default();
            let left = quota_left.get(&job.tenant).copied().unwrap_or(u32::MAX);
            let free_now = u32::try_from(pool.len()).unwrap_or(u32::MAX);
            let size = sizes
                .into_iter()
                .filter(|&size| size <= free_now && size <= left)
                .max();
            let blocked = match (held.get(&job.backend), size) {
                (Some(holder), _) => Blocked::HeldFor((*holder).clone()),
                (None, Some(size)) => {
                    let workers = take_gang(pool, size as usize, &job.avoid_pairs);
                    if let Some(left) = quota_left.get_mut(&job.tenant) {
                        *left -= size;
                    }
                    plan.placements.push(Placement {
                        job: job.id.clone(),
                        workers,
                    });
                    continue;
                }
                (None, None) if smallest > left => Blocked::Quota {
                    needed: smallest,
                    left,
                },
                (None, None) => {
                    if waited >= self.backfill_window {
                        held.insert(job.backend, &job.id);
                    }
                    Blocked::FewerFree {
                        backend: job.backend,
                        needed: smallest,
                        free: free_now,
                    }
                }
            };
            plan.waiting.push((job.id.clone(), blocked));
        }
        plan
    }
}

impl fmt::Display for Unfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unfit::FleetTooSmall {
                backend,
                needed,
                registered,
            } => write!(
                f,
                "needs {needed} {backend} workers but the fleet has {registered} registered; \
                 start more workers or lower resources.workers"
            ),
            Unfit::OverQuota { needed, quota } => write!(
                f,
                "needs {needed} workers but its tenant may use at most {quota} at once; \
                 lower resources.workers"
            ),
            Unfit::NoGangSize => write!(f, "has no usable worker count"),
        }
    }
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocked::FewerFree {
                backend,
                needed,
                free,
            } => write!(f, "needs {needed} idle {backend} workers, {free} free"),
            Blocked::Quota { needed, left } => {
                write!(
                    f,
                    "needs {needed} workers, its tenant's quota has {left} left"
                )
            }
            Blocked::HeldFor(job) => write!(f, "free workers are held for {job}"),
        }
    }
}

/// One line per decision: `place JOB: W0 W1`, `unfit JOB: why`,
/// `wait JOB: why`.
impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for placement in &self.placements {
            let workers: Vec<&str> = placement.workers.iter().map(WorkerId::as_str).collect();
            writeln!(f, "place {}: {}", placement.job, workers.join(" "))?;
        }
        for (job, unfit) in &self.unfit {
            writeln!(f, "unfit {job}: {unfit}")?;
        }
        for (job, blocked) in &self.waiting {
            writeln!(f, "wait {job}: {blocked}")?;
        }
        Ok(())
    }
}
