//! Every rule of the control plan, each through `check(world, expect)`: the
//! round printed one decision a line must equal `expect`; restarts and
//! fences through their own small functions.

use super::*;
use crate::store::{Job, JobError, JobStatus};

const NOW: i64 = 1_000_000;

/// Plans with the default scheduler and compares the printed round.
fn check(world: &World, expect: &str) {
    let round = plan(&Scheduler::default(), world);
    let expect = crate::scheduler::tests::expected(expect);
    assert_eq!(round.to_string(), expect, "\nround:\n{round}");
}

fn tenant() -> TenantId {
    TenantId::new("t").unwrap()
}

/// An empty world at `now`.
fn world(now: Instant) -> World {
    World {
        now,
        unix_now: NOW,
        waiting: Vec::new(),
        active: Vec::new(),
        workers: Vec::new(),
        quotas: BTreeMap::new(),
    }
}

/// `count` connected cpu workers `{prefix}0..` in `state`.
fn workers(prefix: &str, count: usize, state: WorkerState) -> Vec<LiveWorker> {
    (0..count)
        .map(|i| LiveWorker {
            id: WorkerId::from(format!("{prefix}{i}")),
            backend: Backend::Cpu,
            state,
            connected: true,
            job: None,
        })
        .collect()
}

/// A cpu job of tenant `t` needing `count` workers, waiting since now,
/// nothing holding it back.
fn waiting(name: &str, seq: i64, count: u32) -> WaitingJob {
    WaitingJob {
        job: crate::scheduler::tests::job(name, seq, count),
        backoff_until: None,
        fenced_until: None,
    }
}

/// A running elastic cpu job of tenant `t` on busy workers `{name}-0..`
/// (`from` of them, added to `world`), able to run on `sizes`.
fn running(world: &mut World, name: &str, from: usize, sizes: &[u32]) {
    let gang: Vec<WorkerId> = (0..from)
        .map(|i| WorkerId::from(format!("{name}-{i}")))
        .collect();
    for id in &gang {
        world.workers.push(LiveWorker {
            id: id.clone(),
            backend: Backend::Cpu,
            state: WorkerState::Busy,
            connected: true,
            job: Some(JobId::from(name)),
        });
    }
    world.active.push(ActiveJob {
        id: JobId::from(name),
        tenant: tenant(),
        elastic: Some(ElasticRun {
            backend: Backend::Cpu,
            gang_sizes: sizes.to_vec(),
            attempt: 1,
            gang,
            ended: false,
            preempting: false,
        }),
    });
}

fn elastic<'w>(world: &'w mut World, name: &str) -> &'w mut ElasticRun {
    world
        .active
        .iter_mut()
        .find(|j| j.id.as_str() == name)
        .and_then(|j| j.elastic.as_mut())
        .unwrap()
}

#[test]
fn a_job_in_its_restart_backoff_sits_out_and_holds_nothing() {
    let now = Instant::now();
    let mut w = world(now);
    let mut first = waiting("first", 1, 2);
    first.backoff_until = Some(now + Duration::from_secs(3));
    w.waiting = vec![first, waiting("second", 2, 2)];
    w.workers = workers("w", 2, WorkerState::Idle);
    check(
        &w,
        "hold first: restart backoff, 3s left
         place second: w0 w1",
    );
}

#[test]
fn a_backoff_that_ended_no_longer_holds() {
    let now = Instant::now();
    let mut w = world(now + Duration::from_secs(3));
    let mut job = waiting("job", 1, 1);
    job.backoff_until = Some(now + Duration::from_secs(3));
    w.waiting = vec![job];
    w.workers = workers("w", 1, WorkerState::Idle);
    check(&w, "place job: w0");
}

#[test]
fn a_job_waits_until_no_rank_of_an_earlier_attempt_may_run() {
    let now = Instant::now();
    let mut w = world(now);
    let mut fenced = waiting("fenced", 1, 1);
    fenced.fenced_until = Some(now + Duration::from_millis(1500));
    w.waiting = vec![fenced.clone()];
    w.workers = workers("w", 1, WorkerState::Idle);
    check(
        &w,
        "hold fenced: a rank of an earlier attempt may still run, 1.5s left",
    );
    w.now = now + Duration::from_millis(1500);
    check(&w, "place fenced: w0");
}

#[test]
fn the_backoff_is_named_before_the_fence() {
    let now = Instant::now();
    let mut w = world(now);
    let mut job = waiting("job", 1, 1);
    job.fenced_until = Some(now + Duration::from_secs(9));
    job.backoff_until = Some(now + Duration::from_secs(2));
    w.waiting = vec![job];
    check(&w, "hold job: restart backoff, 2s left");
}

#[test]
fn disconnected_idle_workers_take_no_job() {
    let mut w = world(Instant::now());
    w.waiting = vec![waiting("job", 1, 2)];
    w.workers = workers("w", 3, WorkerState::Idle);
    w.workers[0].connected = false;
    check(&w, "place job: w1 w2");
}

#[test]
fn quota_use_counts_the_workers_of_starting_and_running_jobs() {
    let mut w = world(Instant::now());
    w.quotas.insert(tenant(), Some(3));
    running(&mut w, "old", 2, &[2]);
    w.waiting = vec![waiting("new", 1, 2)];
    w.workers.extend(workers("w", 2, WorkerState::Idle));
    check(
        &w,
        "wait new: needs 2 workers, its tenant's quota has 1 left",
    );
}

#[test]
fn an_elastic_job_grows_into_idle_workers_when_nothing_waits() {
    let mut w = world(Instant::now());
    running(&mut w, "elastic", 1, &[1, 2, 4]);
    w.workers.extend(workers("w", 3, WorkerState::Idle));
    check(&w, "grow elastic: 1 -> 4 workers (tell elastic-0)");
    // Only sizes the global batch divides: 3 idle of 4 is not enough for 8.
    elastic(&mut w, "elastic").gang_sizes = vec![1, 2, 8];
    check(&w, "grow elastic: 1 -> 2 workers (tell elastic-0)");
}

#[test]
fn nothing_grows_while_a_job_waits_even_one_held_back() {
    let now = Instant::now();
    let mut w = world(now);
    running(&mut w, "elastic", 1, &[1, 2]);
    w.workers.extend(workers("w", 1, WorkerState::Idle));
    let mut restarting = waiting("restarting", 2, 4);
    restarting.backoff_until = Some(now + Duration::from_secs(1));
    w.waiting = vec![restarting];
    check(&w, "hold restarting: restart backoff, 1s left");
}

#[test]
fn growth_uses_only_connected_idle_workers_of_the_jobs_backend() {
    let mut w = world(Instant::now());
    running(&mut w, "elastic", 1, &[1, 2, 3, 4]);
    let mut others = workers("w", 4, WorkerState::Idle);
    others[0].connected = false;
    others[1].backend = Backend::Cuda;
    others[2].state = WorkerState::Draining;
    w.workers.extend(others);
    check(&w, "grow elastic: 1 -> 2 workers (tell elastic-0)");
}

#[test]
fn an_attempt_told_to_stop_or_ended_does_not_grow() {
    let mut w = world(Instant::now());
    running(&mut w, "stopping", 1, &[1, 2]);
    running(&mut w, "ended", 1, &[1, 2]);
    running(&mut w, "fixed", 1, &[1]);
    w.active.push(ActiveJob {
        id: JobId::from("starting"),
        tenant: tenant(),
        elastic: None,
    });
    elastic(&mut w, "stopping").preempting = true;
    elastic(&mut w, "ended").ended = true;
    w.workers.extend(workers("w", 4, WorkerState::Idle));
    check(&w, "");
}

#[test]
fn jobs_grow_in_order_each_taking_its_workers_first() {
    let mut w = world(Instant::now());
    running(&mut w, "a", 1, &[1, 2, 3]);
    running(&mut w, "b", 1, &[1, 2, 3]);
    w.workers.extend(workers("w", 3, WorkerState::Idle));
    check(
        &w,
        "grow a: 1 -> 3 workers (tell a-0)
         grow b: 1 -> 2 workers (tell b-0)",
    );
}

#[test]
fn growth_stays_within_the_tenants_quota() {
    let mut w = world(Instant::now());
    w.quotas.insert(tenant(), Some(4));
    running(&mut w, "a", 1, &[1, 2, 3]);
    running(&mut w, "b", 1, &[1, 2, 3]);
    w.workers.extend(workers("w", 4, WorkerState::Idle));
    // 2 in use, 2 left: a takes both, b none.
    check(&w, "grow a: 1 -> 3 workers (tell a-0)");
    w.quotas.insert(tenant(), None);
    check(
        &w,
        "grow a: 1 -> 3 workers (tell a-0)
         grow b: 1 -> 3 workers (tell b-0)",
    );
}

#[test]
fn a_broken_ring_pair_is_avoided_by_the_next_gang() {
    let mut w = world(Instant::now());
    let mut retry = waiting("retry", 1, 2);
    retry.job.avoid_pairs = vec![(WorkerId::from("w0"), WorkerId::from("w1"))];
    w.waiting = vec![retry];
    w.workers = workers("w", 3, WorkerState::Idle);
    check(&w, "place retry: w0 w2");
}

#[test]
fn an_empty_world_gives_an_empty_round() {
    let round = plan(&Scheduler::default(), &world(Instant::now()));
    assert_eq!(round, Round::default());
}

/// Job `j` after its `failures`-th failure, allowed `max_failures`.
fn failed_job(failures: u32, max_failures: u32) -> Job {
    Job {
        id: JobId::from("j"),
        seq: 1,
        tenant: tenant(),
        name: "j".into(),
        spec_yaml: String::new(),
        priority: 0,
        workers_min: 1,
        workers_max: 1,
        backend: Backend::Cpu,
        status: JobStatus::Running,
        step: 0,
        total_steps: None,
        attempt: failures,
        failures,
        max_failures,
        created_at: NOW,
        waiting_since: NOW,
        finished_at: None,
        error: None,
        progress: Default::default(),
    }
}

fn error(code: &str, message: &str) -> JobError {
    JobError {
        code: code.into(),
        message: message.into(),
    }
}

#[test]
fn the_restart_backoff_doubles_per_failure_up_to_a_minute() {
    let base = Duration::from_secs(2);
    let waits: Vec<u64> = (0..=7)
        .map(|failures| restart_backoff(base, failures).as_secs())
        .collect();
    assert_eq!(waits, [2, 2, 4, 8, 16, 32, 60, 60]);
    assert_eq!(restart_backoff(base, u32::MAX), MAX_BACKOFF);
    assert_eq!(restart_backoff(Duration::ZERO, 5), Duration::ZERO);
}

#[test]
fn a_failure_restarts_the_job_while_max_failures_allows() {
    let base = Duration::from_millis(100);
    assert_eq!(
        after_failure(&failed_job(2, 2), "rank 1 died", true, base),
        AfterFailure::Restart {
            error: error("attempt_failed", "rank 1 died"),
            backoff: Duration::from_millis(200),
        }
    );
    assert_eq!(
        after_failure(&failed_job(3, 2), "rank 1 died", true, base),
        AfterFailure::Fail {
            error: error(
                "max_failures",
                "failed 3 times (max_failures: 2); last: rank 1 died"
            ),
        }
    );
}

#[test]
fn a_failure_to_start_ends_the_job_at_once() {
    assert_eq!(
        after_failure(
            &failed_job(1, 5),
            "the spec no longer reads",
            false,
            MAX_BACKOFF
        ),
        AfterFailure::Fail {
            error: error("cannot_start", "the spec no longer reads"),
        }
    );
}

#[test]
fn a_rank_may_run_until_its_workers_fence_fires() {
    let heard = Instant::now();
    let now = heard + Duration::from_secs(4);
    let lost_after = Duration::from_secs(15);
    let ranks = [
        RankSeen {
            worker: WorkerId::from("heard"),
            ended: false,
            last_heard: Some(heard),
        },
        RankSeen {
            worker: WorkerId::from("ended"),
            ended: true,
            last_heard: Some(heard),
        },
        RankSeen {
            worker: WorkerId::from("never-heard"),
            ended: false,
            last_heard: None,
        },
    ];
    assert_eq!(
        fences(&ranks, now, lost_after),
        [
            (WorkerId::from("heard"), heard + lost_after + FENCE_MARGIN),
            (
                WorkerId::from("never-heard"),
                now + lost_after + FENCE_MARGIN
            ),
        ]
    );
}
