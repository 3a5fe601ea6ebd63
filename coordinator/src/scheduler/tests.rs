//! Every rule of the scheduler, each through `check(snapshot, expect)`: the
//! plan printed one decision a line must equal `expect`.

use super::*;

const NOW: i64 = 1_000_000;

/// Plans with the default policy and compares the printed plan.
fn check(snapshot: &Snapshot, expect: &str) {
    check_with(Scheduler::default(), snapshot, expect);
}

fn check_with(scheduler: Scheduler, snapshot: &Snapshot, expect: &str) {
    let plan = scheduler.plan(snapshot);
    assert_eq!(plan.to_string(), expected(expect), "\nplan:\n{plan}");
}

/// `expect` as a printed plan: one decision a line, the indentation and
/// blank lines of the test's text dropped.
pub(crate) fn expected(expect: &str) -> String {
    expect
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| format!("{line}\n"))
        .collect()
}

/// `count` workers `{prefix}0..` of `backend` in `state`.
fn workers(prefix: &str, count: usize, backend: Backend, state: WorkerState) -> Vec<FleetWorker> {
    (0..count)
        .map(|i| FleetWorker {
            id: WorkerId::from(format!("{prefix}{i}")),
            backend,
            state,
        })
        .collect()
}

fn idle_cpu(count: usize) -> Vec<FleetWorker> {
    workers("w", count, Backend::Cpu, WorkerState::Idle)
}

/// `idle` idle cpu workers `w0..` and `busy` busy ones `busy0..`.
fn cpu_fleet(idle: usize, busy: usize) -> Vec<FleetWorker> {
    let mut fleet = idle_cpu(idle);
    fleet.extend(workers("busy", busy, Backend::Cpu, WorkerState::Busy));
    fleet
}

/// A cpu job of tenant `t` needing `count` workers, submitted `seq`-th,
/// that started waiting just now.
pub(crate) fn job(name: &str, seq: i64, count: u32) -> WaitingJob {
    WaitingJob {
        id: JobId::from(name),
        tenant: TenantId::new("t").unwrap(),
        priority: 0,
        seq,
        gang_sizes: vec![count],
        backend: Backend::Cpu,
        waiting_since: NOW,
        avoid_pairs: Vec::new(),
    }
}

fn snapshot(jobs: Vec<WaitingJob>, workers: Vec<FleetWorker>) -> Snapshot {
    Snapshot {
        now: NOW,
        jobs,
        workers,
        tenants: BTreeMap::new(),
    }
}

#[test]
fn fifo_within_a_priority() {
    let fleet = snapshot(vec![job("b", 2, 2), job("a", 1, 2)], idle_cpu(2));
    check(
        &fleet,
        "place a: w0 w1
         wait b: needs 2 idle cpu workers, 0 free",
    );
}

#[test]
fn higher_priority_goes_first_even_when_submitted_later() {
    let mut urgent = job("urgent", 2, 2);
    urgent.priority = 5;
    let fleet = snapshot(vec![job("early", 1, 2), urgent], idle_cpu(2));
    check(
        &fleet,
        "place urgent: w0 w1
         wait early: needs 2 idle cpu workers, 0 free",
    );
}

#[test]
fn gangs_are_all_or_nothing() {
    // The case: 3 workers, jobs needing 2, 2 and 1. The second
    // never holds a partial gang; the third backfills the worker left.
    let fleet = snapshot(
        vec![job("a", 1, 2), job("b", 2, 2), job("c", 3, 1)],
        idle_cpu(3),
    );
    check(
        &fleet,
        "place a: w0 w1
         place c: w2
         wait b: needs 2 idle cpu workers, 1 free",
    );
}

#[test]
fn only_idle_workers_of_the_jobs_backend_are_placed() {
    let mut fleet = workers("busy", 1, Backend::Cpu, WorkerState::Busy);
    fleet.extend(workers("drain", 1, Backend::Cpu, WorkerState::Draining));
    fleet.extend(workers("lost", 1, Backend::Cpu, WorkerState::Lost));
    fleet.extend(workers("gpu", 2, Backend::Cuda, WorkerState::Idle));
    fleet.extend(idle_cpu(1));
    let mut on_gpu = job("on-gpu", 2, 2);
    on_gpu.backend = Backend::Cuda;
    check(
        &snapshot(
            vec![job("two-cpu", 1, 2), on_gpu, job("one-cpu", 3, 1)],
            fleet,
        ),
        "place on-gpu: gpu0 gpu1
         place one-cpu: w0
         wait two-cpu: needs 2 idle cpu workers, 1 free",
    );
}

#[test]
fn ranks_follow_worker_ids_whatever_the_input_order() {
    let mut fleet = idle_cpu(4);
    fleet.reverse();
    let mut jobs = vec![job("a", 1, 3), job("b", 2, 1)];
    check(
        &snapshot(jobs.clone(), fleet.clone()),
        "place a: w0 w1 w2
         place b: w3",
    );
    jobs.reverse();
    fleet.swap(0, 2);
    check(
        &snapshot(jobs, fleet),
        "place a: w0 w1 w2
         place b: w3",
    );
}

#[test]
fn equal_priority_and_seq_fall_back_to_the_job_id() {
    let fleet = snapshot(vec![job("y", 1, 1), job("x", 1, 1)], idle_cpu(1));
    check(
        &fleet,
        "place x: w0
         wait y: needs 1 idle cpu workers, 0 free",
    );
}

#[test]
fn elastic_jobs_take_the_largest_gang_that_is_free() {
    let mut elastic = job("elastic", 1, 1);
    elastic.gang_sizes = vec![1, 2, 4];
    check(
        &snapshot(vec![elastic.clone()], idle_cpu(3)),
        "place elastic: w0 w1",
    );
    check(
        &snapshot(vec![elastic], idle_cpu(5)),
        "place elastic: w0 w1 w2 w3",
    );
}

#[test]
fn a_young_big_job_lets_smaller_later_jobs_backfill() {
    let fleet = cpu_fleet(2, 2);
    let mut big = job("big", 1, 3);
    big.waiting_since = NOW - 599;
    check(
        &snapshot(vec![big, job("small", 2, 1)], fleet),
        "place small: w0
         wait big: needs 3 idle cpu workers, 2 free",
    );
}

#[test]
fn a_big_job_past_the_backfill_window_holds_its_backends_free_workers() {
    let mut fleet = cpu_fleet(2, 2);
    fleet.extend(workers("gpu", 1, Backend::Cuda, WorkerState::Idle));
    let mut big = job("big", 1, 3);
    big.waiting_since = NOW - 600;
    let mut on_gpu = job("on-gpu", 3, 1);
    on_gpu.backend = Backend::Cuda;
    check(
        &snapshot(vec![big, job("small", 2, 1), on_gpu], fleet),
        "place on-gpu: gpu0
         wait big: needs 3 idle cpu workers, 2 free
         wait small: free workers are held for big",
    );
}

#[test]
fn the_backfill_window_is_a_policy_setting() {
    let mut big = job("big", 1, 3);
    big.waiting_since = NOW - 5;
    let fleet = snapshot(vec![big, job("small", 2, 1)], cpu_fleet(2, 1));
    check_with(
        Scheduler { backfill_window: 5 },
        &fleet,
        "wait big: needs 3 idle cpu workers, 2 free
         wait small: free workers are held for big",
    );
    check_with(
        Scheduler { backfill_window: 6 },
        &fleet,
        "place small: w0
         wait big: needs 3 idle cpu workers, 2 free",
    );
}

#[test]
fn a_held_backend_still_serves_jobs_ahead_of_the_holder() {
    let mut first = job("first", 1, 1);
    first.priority = 1;
    let mut big = job("big", 2, 4);
    big.waiting_since = NOW - 10_000;
    check(
        &snapshot(vec![big, first, job("later", 3, 1)], cpu_fleet(3, 1)),
        "place first: w0
         wait big: needs 4 idle cpu workers, 2 free
         wait later: free workers are held for big",
    );
}

#[test]
fn a_job_larger_than_the_registered_fleet_is_unfit_and_holds_nothing() {
    let mut fleet = idle_cpu(1);
    fleet.extend(workers("busy", 1, Backend::Cpu, WorkerState::Busy));
    fleet.extend(workers("lost", 1, Backend::Cpu, WorkerState::Lost));
    let mut huge = job("huge", 1, 4);
    huge.waiting_since = NOW - 100_000;
    let mut no_gpus = job("no-gpus", 2, 1);
    no_gpus.backend = Backend::Cuda;
    check(
        &snapshot(vec![huge, no_gpus, job("small", 3, 1)], fleet),
        "place small: w0
         unfit huge: needs 4 cpu workers but the fleet has 3 registered; start more workers or lower resources.workers
         unfit no-gpus: needs 1 cuda workers but the fleet has 0 registered; start more workers or lower resources.workers",
    );
}

#[test]
fn busy_and_lost_workers_count_as_registered() {
    let mut fleet = idle_cpu(1);
    fleet.extend(workers("busy", 1, Backend::Cpu, WorkerState::Busy));
    fleet.extend(workers("lost", 1, Backend::Cpu, WorkerState::Lost));
    check(
        &snapshot(vec![job("three", 1, 3)], fleet),
        "wait three: needs 3 idle cpu workers, 1 free",
    );
}

#[test]
fn a_job_without_a_usable_gang_size_is_unfit() {
    let mut empty = job("empty", 1, 0);
    empty.gang_sizes.clear();
    check(
        &snapshot(vec![empty, job("zero", 2, 0)], idle_cpu(1)),
        "unfit empty: has no usable worker count
         unfit zero: has no usable worker count",
    );
}

#[test]
fn a_tenant_never_exceeds_its_quota() {
    let mut other = job("other", 3, 2);
    other.tenant = TenantId::new("u").unwrap();
    let mut fleet = snapshot(vec![job("a", 1, 1), job("b", 2, 1), other], idle_cpu(4));
    fleet.tenants.insert(
        TenantId::new("t").unwrap(),
        TenantUsage {
            quota: Some(3),
            in_use: 2,
        },
    );
    check(
        &fleet,
        "place a: w0
         place other: w1 w2
         wait b: needs 1 workers, its tenant's quota has 0 left",
    );
}

#[test]
fn quota_caps_an_elastic_gang() {
    let mut elastic = job("elastic", 1, 1);
    elastic.gang_sizes = vec![1, 2, 4];
    let mut fleet = snapshot(vec![elastic], idle_cpu(4));
    fleet.tenants.insert(
        TenantId::new("t").unwrap(),
        TenantUsage {
            quota: Some(3),
            in_use: 0,
        },
    );
    check(&fleet, "place elastic: w0 w1");
}

#[test]
fn a_quota_blocked_job_holds_no_workers() {
    let mut blocked = job("blocked", 1, 2);
    blocked.waiting_since = NOW - 100_000;
    let mut other = job("other", 2, 2);
    other.tenant = TenantId::new("u").unwrap();
    let mut fleet = snapshot(vec![blocked, other], idle_cpu(2));
    fleet.tenants.insert(
        TenantId::new("t").unwrap(),
        TenantUsage {
            quota: Some(2),
            in_use: 1,
        },
    );
    check(
        &fleet,
        "place other: w0 w1
         wait blocked: needs 2 workers, its tenant's quota has 1 left",
    );
}

#[test]
fn a_gang_larger_than_the_quota_is_unfit() {
    let mut fleet = snapshot(vec![job("big", 1, 3)], idle_cpu(4));
    fleet.tenants.insert(
        TenantId::new("t").unwrap(),
        TenantUsage {
            quota: Some(2),
            in_use: 0,
        },
    );
    check(
        &fleet,
        "unfit big: needs 3 workers but its tenant may use at most 2 at once; lower resources.workers",
    );
}

#[test]
fn an_empty_snapshot_gives_an_empty_plan() {
    assert_eq!(
        Scheduler::default().plan(&Snapshot::default()),
        Plan::default()
    );
}

fn pair(a: &str, b: &str) -> (WorkerId, WorkerId) {
    (WorkerId::from(a), WorkerId::from(b))
}

#[test]
fn a_pair_that_could_not_reach_each_other_is_split_when_another_worker_is_idle() {
    let mut retry = job("retry", 1, 2);
    retry.avoid_pairs = vec![pair("w0", "w1")];
    check(
        &snapshot(vec![retry.clone()], idle_cpu(3)),
        "place retry: w0 w2",
    );
    // Both members of two broken pairs: the gang leaves one of each out.
    retry.avoid_pairs = vec![pair("w1", "w0"), pair("w0", "w2")];
    check(
        &snapshot(vec![retry.clone()], idle_cpu(3)),
        "place retry: w1 w2",
    );
}

#[test]
fn a_broken_pair_is_used_again_when_no_one_can_stand_in() {
    let mut retry = job("retry", 1, 2);
    retry.avoid_pairs = vec![pair("w0", "w1")];
    check(
        &snapshot(vec![retry, job("other", 2, 1)], idle_cpu(2)),
        "place retry: w0 w1
         wait other: needs 1 idle cpu workers, 0 free",
    );
}
