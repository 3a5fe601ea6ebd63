//! [`FaultPlan`]: which faults a chaos run injects into one job, and when.
//! The plan is drawn from a ChaCha8 stream seeded by `--seed`, so a seed
//! repeats the schedule: the moments, the kinds, how long a frozen worker
//! stays frozen, how long a killed one stays dead and how long a cut-off
//! one stays cut. Which worker a fault
//! hits is settled only when it fires, when it is known which workers are
//! alive and which run a rank of the job, from a number drawn here
//! ([`PlannedFault::target`]).
//!
//! Not here: sending signals (`cluster`) or watching the job (`drive`).

use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::cli::FaultKindArg;

/// The least time between two faults of one job.
pub const MIN_GAP: Duration = Duration::from_secs(2);

/// What a fault does to a worker.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FaultKind {
    /// SIGKILL to the worker's process group (the agent and its rank); a
    /// new worker process takes the slot after `dead_for`.
    Kill { dead_for: Duration },
    /// SIGSTOP to the worker's process group, SIGCONT after `frozen_for`
    /// (longer than the detection bound: the coordinator must notice).
    Freeze { frozen_for: Duration },
    /// The worker's host cut from every other host (silently: packets
    /// vanish), healed after `cut_for`: sometimes shorter than the
    /// detection bound (nothing should restart), sometimes longer. Only on
    /// a network lab (`--hosts`).
    Partition { cut_for: Duration },
}

impl FaultKind {
    /// `kill`, `freeze` or `partition`, as reports name it.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Kill { .. } => "kill",
            FaultKind::Freeze { .. } => "freeze",
            FaultKind::Partition { .. } => "partition",
        }
    }

    /// How long the worker is out: dead until its respawn, frozen, or cut.
    pub fn out_for(&self) -> Duration {
        match *self {
            FaultKind::Kill { dead_for } => dead_for,
            FaultKind::Freeze { frozen_for } => frozen_for,
            FaultKind::Partition { cut_for } => cut_for,
        }
    }
}

/// One fault of a job's plan.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlannedFault {
    /// When it fires, counted from the job's submission.
    pub at: Duration,
    pub kind: FaultKind,
    /// Hit a worker that runs a rank of the job when there is one (always
    /// so for a job's first fault); otherwise any live worker.
    pub prefer_busy: bool,
    /// Picks the worker among the candidates ([`PlannedFault::target`]).
    pick: u64,
}

impl PlannedFault {
    /// The worker this fault hits: one of `busy` (live workers running a
    /// rank of the job) if it prefers those and there is one, else one of
    /// `alive`; `None` when no worker is alive.
    pub fn target(&self, busy: &[usize], alive: &[usize]) -> Option<usize> {
        let among = if self.prefer_busy && !busy.is_empty() {
            busy
        } else {
            alive
        };
        let len = u64::try_from(among.len()).ok().filter(|&n| n > 0)?;
        // The remainder is below `among.len()`, so it fits in a usize.
        Some(among[(self.pick % len) as usize])
    }
}

/// The faults of one job, in the order they fire.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultPlan {
    pub faults: Vec<PlannedFault>,
}

impl FaultPlan {
    /// No faults: the undisturbed run.
    pub fn none() -> FaultPlan {
        FaultPlan { faults: Vec::new() }
    }

    /// `count` faults spread over a job expected to last `expected`
    /// (the undisturbed run's duration): the span from 15 % to 85 % of it
    /// is cut into `count` equal parts and each fault falls at a random
    /// moment of its part, at least [`MIN_GAP`] after the one before. A
    /// frozen worker stays frozen `detection_bound` plus 0.5 to 2 s; a
    /// killed one is respawned after 0.5 to 3 s; a partition lasts 0.3 to
    /// 0.7 of the bound or the bound plus 0.5 to 2 s, equally likely. The
    /// first faults are one of each kind in `kinds` in a random order;
    /// later ones are any of them, equally likely.
    pub fn draw(
        rng: &mut ChaCha8Rng,
        count: u32,
        expected: Duration,
        detection_bound: Duration,
        kinds: &[FaultKindArg],
    ) -> FaultPlan {
        let start = expected.mul_f64(0.15);
        let part = expected.mul_f64(0.70) / count.max(1);
        let mut faults: Vec<PlannedFault> = Vec::new();
        let mut first_round = kinds.to_vec();
        for i in (1..first_round.len()).rev() {
            first_round.swap(i, rng.random_range(0..=i));
        }
        for i in 0..count {
            let mut at = start + part * i + part.mul_f64(rng.random::<f64>());
            if let Some(before) = faults.last() {
                at = at.max(before.at + MIN_GAP);
            }
            let name = match first_round.get(i as usize) {
                Some(name) => *name,
                None => kinds[rng.random_range(0..kinds.len())],
            };
            let kind = match name {
                FaultKindArg::Kill => FaultKind::Kill {
                    dead_for: Duration::from_secs_f64(rng.random_range(0.5..3.0)),
                },
                FaultKindArg::Freeze => FaultKind::Freeze {
                    frozen_for: detection_bound
                        + Duration::from_secs_f64(rng.random_range(0.5..2.0)),
                },
                FaultKindArg::Partition => FaultKind::Partition {
                    cut_for: if rng.random_bool(0.5) {
                        detection_bound.mul_f64(rng.random_range(0.3..0.7))
                    } else {
                        detection_bound + Duration::from_secs_f64(rng.random_range(0.5..2.0))
                    },
                },
            };
            let prefer_busy = i == 0 || rng.random_bool(0.75);
            faults.push(PlannedFault {
                at,
                kind,
                prefer_busy,
                pick: rng.random(),
            });
        }
        FaultPlan { faults }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn draw(seed: u64, count: u32) -> FaultPlan {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        FaultPlan::draw(
            &mut rng,
            count,
            Duration::from_secs(20),
            Duration::from_secs(3),
            &[FaultKindArg::Kill, FaultKindArg::Freeze],
        )
    }

    #[test]
    fn a_seed_repeats_the_plan_and_another_seed_changes_it() {
        assert_eq!(draw(7, 4), draw(7, 4));
        assert_ne!(draw(7, 4), draw(8, 4));
    }

    #[test]
    fn faults_are_spread_apart_and_the_first_hits_a_busy_worker() {
        let plan = draw(3, 5);
        assert_eq!(plan.faults.len(), 5);
        assert_ne!(plan.faults[0].kind.name(), plan.faults[1].kind.name());
        assert!(plan.faults[0].prefer_busy);
        assert!(plan.faults[0].at >= Duration::from_secs(3));
        for pair in plan.faults.windows(2) {
            assert!(pair[1].at >= pair[0].at + MIN_GAP, "{pair:?}");
        }
        for fault in &plan.faults {
            match fault.kind {
                FaultKind::Kill { dead_for } => {
                    assert!((0.5..3.0).contains(&dead_for.as_secs_f64()));
                }
                FaultKind::Freeze { frozen_for } => {
                    assert!((3.5..5.0).contains(&frozen_for.as_secs_f64()));
                }
                FaultKind::Partition { .. } => panic!("not asked for: {fault:?}"),
            }
        }
    }

    #[test]
    fn partitions_are_drawn_when_asked_for_some_under_the_bound_some_past_it() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let bound = Duration::from_secs(3);
        let kinds = [
            FaultKindArg::Kill,
            FaultKindArg::Freeze,
            FaultKindArg::Partition,
        ];
        let plan = FaultPlan::draw(&mut rng, 40, Duration::from_secs(400), bound, &kinds);
        let cuts: Vec<Duration> = plan
            .faults
            .iter()
            .filter_map(|f| match f.kind {
                FaultKind::Partition { cut_for } => Some(cut_for),
                _ => None,
            })
            .collect();
        let mut first: Vec<&str> = plan.faults[..3].iter().map(|f| f.kind.name()).collect();
        first.sort();
        assert_eq!(first, ["freeze", "kill", "partition"]);
        assert!(cuts.iter().any(|c| *c < bound) && cuts.iter().any(|c| *c > bound));
        for cut in cuts {
            let s = cut.as_secs_f64();
            assert!((0.9..2.1).contains(&s) || (3.5..5.0).contains(&s), "{s}");
        }
    }

    #[test]
    fn the_target_prefers_busy_workers_and_needs_a_live_one() {
        let fault = PlannedFault {
            at: Duration::ZERO,
            kind: FaultKind::Kill {
                dead_for: Duration::from_secs(1),
            },
            prefer_busy: true,
            pick: 5,
        };
        assert_eq!(fault.target(&[0, 2], &[0, 1, 2]), Some(2));
        assert_eq!(fault.target(&[], &[0, 1, 2]), Some(2));
        assert_eq!(fault.target(&[], &[]), None);
        let anywhere = PlannedFault {
            prefer_busy: false,
            ..fault
        };
        assert_eq!(anywhere.target(&[0], &[0, 1]), Some(1));
    }
}
