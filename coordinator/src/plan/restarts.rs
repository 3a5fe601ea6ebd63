//! What follows an attempt that ended early, pure: whether the job
//! restarts and after which backoff, or fails and with what error
//! ([`after_failure`]), and until when each of its ranks may still run
//! ([`fences`]).
//!
//! Not here: finishing the attempt, stopping its ranks, moving the job
//! (`server::recovery` commits these decisions).

use std::time::{Duration, Instant};

use crate::store::{Job, JobError, WorkerId};

/// The longest wait between attempts, however many failures came before.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What a worker's fence may take beyond the lost-after bound: its clock
/// tick, killing the rank, and the acknowledgement's way back.
pub const FENCE_MARGIN: Duration = Duration::from_secs(1);

/// What a job does after a failed attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// It is placed again after `backoff`; `error` says why it restarted.
    Restart { error: JobError, backoff: Duration },
    /// It fails with `error`.
    Fail { error: JobError },
}

/// The wait before the attempt that follows a job's `failures`-th
/// failure: `base`, doubling with each failure, at most [`MAX_BACKOFF`].
pub fn restart_backoff(base: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    base.saturating_mul(2u32.pow(doublings)).min(MAX_BACKOFF)
}

/// What follows an attempt of `job` that failed with `reason`; `job` is
/// read after the failure was recorded (its `failures` include it).
/// `counts`: whether the failure counts against `max_failures` (a failure
/// to start, such as a spec the coordinator cannot resolve, ends the job
/// at once). `base_backoff`: the configured wait before a second attempt.
pub fn after_failure(
    job: &Job,
    reason: &str,
    counts: bool,
    base_backoff: Duration,
) -> AfterFailure {
    if !counts {
        let error = JobError {
            code: "cannot_start".into(),
            message: reason.to_string(),
        };
        return AfterFailure::Fail { error };
    }
    if job.may_restart() {
        let error = JobError {
            code: "attempt_failed".into(),
            message: reason.to_string(),
        };
        let backoff = restart_backoff(base_backoff, job.failures);
        return AfterFailure::Restart { error, backoff };
    }
    let error = JobError {
        code: "max_failures".into(),
        message: format!(
            "failed {} times (max_failures: {}); last: {reason}",
            job.failures, job.max_failures
        ),
    };
    AfterFailure::Fail { error }
}

/// A rank of an attempt that ended early, as the coordinator last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankSeen {
    pub worker: WorkerId,
    /// Its worker reported it ended (failed, finished or preempted).
    pub ended: bool,
    /// When its worker last reported anything; `None`: not since the
    /// coordinator started.
    pub last_heard: Option<Instant>,
}

/// The ranks that may still run and until when: a rank its worker
/// reported ended is not running; any other stops by itself at the latest
/// `lost_after` + [`FENCE_MARGIN`] after its worker was last heard from
/// (`now` if never), when the worker's fence fires.
pub fn fences(ranks: &[RankSeen], now: Instant, lost_after: Duration) -> Vec<(WorkerId, Instant)> {
    let bound = lost_after + FENCE_MARGIN;
    ranks
        .iter()
        .filter(|rank| !rank.ended)
        .map(|rank| (rank.worker.clone(), rank.last_heard.unwrap_or(now) + bound))
        .collect()
}
