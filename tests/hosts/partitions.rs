//! Network partitions during a job, each silent (no reset, no error: the
//! packets vanish) and each ending with the job succeeded, the 1-process
//! adapter (≤ 1e-4) and bounded extra time:
//! - a worker cut from the coordinator past the lost-after bound stops
//!   its rank itself before the job moves (no second writer);
//! - two ring workers cut from each other only: the next attempt uses the
//!   idle third worker instead of the broken pair;
//! - the coordinator cut from every worker for longer than the rest of the
//!   job: the final checkpoint is downloadable afterwards;
//! - a cut well under the bound (0.4 of it: TCP's retransmission backoff
//!   can stretch a cut's silence to about twice its length): no restart.

use std::time::Duration;

use crate::fleet::{COORD, HostFleet, LOST_AFTER_S, RING_TIMEOUT_S, worker_name};
use crate::job::{
    Baseline, JobInputs, JobWatch, STEPS, TOLERANCE, attempt_workers, deviation_from_reference,
    events, manifests, prepare_inputs, run_job, story, undisturbed,
};
use crate::wire::processes_beside;

/// The step at which each fault starts (of [`STEPS`]).
const FAULT_AT_STEP: u64 = 10;
/// Time a restart may cost beyond its detection: the backoff, a new
/// attempt's start (processes, model, dataset) and the steps redone since
/// the last checkpoint, with room for a loaded 2-core machine.
const RESTART_ALLOWANCE: Duration = Duration::from_secs(25);

fn lost_after() -> Duration {
    Duration::from_secs_f64(LOST_AFTER_S)
}

/// A fleet of 3 workers and the job's inputs, or `None` when skipped.
fn fleet() -> Option<(HostFleet, JobInputs)> {
    let fleet = HostFleet::start(3)?;
    let inputs = prepare_inputs(&fleet);
    Some((fleet, inputs))
}

/// The worker hosts running a rank of the job now.
fn rank_hosts(fleet: &HostFleet) -> Vec<String> {
    (1..=3)
        .map(worker_name)
        .filter(|name| !processes_beside(fleet.worker_pid(name), "train").is_empty())
        .collect()
}

/// The job ended as undisturbed, within `allowance` of the undisturbed
/// wall time.
fn assert_ends_as_undisturbed(
    fleet: &HostFleet,
    watch: &JobWatch,
    baseline: Baseline,
    allowance: Duration,
) {
    assert_eq!(
        watch.status,
        "succeeded",
        "{watch:?}\nattempts: {:?}\n{}\n{}",
        attempt_workers(fleet, &watch.id),
        story(fleet, &watch.id),
        fleet.log_tails()
    );
    let deviation = deviation_from_reference(fleet, &watch.id);
    assert!(
        deviation <= TOLERANCE,
        "the adapter deviates {deviation:e} from one process's"
    );
    let baseline = baseline.wall_at_pace_of(fleet, &watch.id);
    let extra = watch.wall.saturating_sub(baseline);
    assert!(
        extra <= allowance,
        "the job took {:.1} s, {:.1} s more than undisturbed ({:.1} s at its pace); allowed {:.1} s",
        watch.wall.as_secs_f64(),
        extra.as_secs_f64(),
        baseline.as_secs_f64(),
        allowance.as_secs_f64()
    );
    eprintln!(
        "{}: attempts {}, {:.1} s ({:+.1} s), deviation {deviation:e}",
        watch.id,
        watch.attempt,
        watch.wall.as_secs_f64(),
        extra.as_secs_f64()
    );
}

#[test]
fn a_worker_cut_from_the_coordinator_past_the_bound_stops_its_rank_before_the_job_moves() {
    let _turn = crate::one_lab_at_a_time();
    let Some((fleet, inputs)) = fleet() else {
        return;
    };
    let baseline = undisturbed(&fleet, &inputs, 1);
    let hold = lost_after() * 3;
    // The victim, when it was cut and healed; what was seen of its rank
    // once the coordinator had moved the job.
    let mut victim: Option<(String, Duration)> = None;
    let mut healed = false;
    let mut second_writer = Vec::new();
    let mut moved_at = None;
    let name = "cut-worker";
    let watch = run_job(&fleet, &inputs, name, 1, |watch| {
        let now = watch.last_poll;
        match &victim {
            None if watch.step_at(now) >= FAULT_AT_STEP => {
                if let Some(host) = rank_hosts(&fleet).pop() {
                    fleet.lab.cut_between(&host, COORD);
                    victim = Some((host, now));
                }
            }
            Some((host, cut_at)) => {
                if watch.attempt >= 2 {
                    let since = watch.attempt_seen.last().map(|(_, t)| *t);
                    moved_at.get_or_insert(since);
                    let ranks = processes_beside(fleet.worker_pid(host), "train");
                    if !ranks.is_empty() {
                        second_writer.push(format!(
                            "attempt {} runs while {host}'s rank {ranks:?} still does",
                            watch.attempt
                        ));
                    }
                }
                if !healed && now.saturating_sub(*cut_at) >= hold {
                    fleet.lab.heal();
                    healed = true;
                }
            }
            None => {}
        }
    });
    fleet.lab.heal();
    let (host, cut_at) = victim.expect("the job ran long enough to cut its worker");
    assert!(
        watch.attempt >= 2,
        "the job moved off {host}: {watch:?}\n{}",
        story(&fleet, &watch.id)
    );
    assert!(second_writer.is_empty(), "second writer: {second_writer:?}");
    // Storage agrees: after the job moved, no manifest appeared that the
    // new attempt could not have written by then. It resumes from step R
    // (already committed) and needs a step's time for each step past R.
    let submitted = watch.submitted_at.unwrap();
    // The move happened after the last poll that did not see it (the
    // poll that did may come a status call later).
    let seen_moved = moved_at.flatten().unwrap_or(cut_at);
    let moved = watch.poll_before(seen_moved).unwrap_or(seen_moved);
    let story_events = events(&fleet, &watch.id);
    let restarting = story_events
        .iter()
        .position(|e| e["type"] == "job.restarting");
    // The step the next attempt resumed from, as its `job.starting` names
    // it: chosen once the cut rank was fenced, so it counts what that rank
    // committed until then.
    let resume_step = restarting
        .and_then(|at| {
            story_events[at..]
                .iter()
                .find(|e| e["type"] == "job.starting")
        })
        .and_then(|e| e["data"]["resume_step"].as_u64())
        .unwrap_or(0);
    let named_at_restart =
        restarting.and_then(|at| story_events[at]["data"]["resume_step"].as_u64());
    eprintln!(
        "{}: job.restarting named step {named_at_restart:?}, the next attempt resumed from {resume_step}",
        watch.id
    );
    // The floor is half a step of the faster of the undisturbed job and
    // the new attempt itself (the machine's load changes between them).
    let fastest_new = story_events[restarting.unwrap_or(0)..]
        .iter()
        .filter(|e| e["type"] == "train.step")
        .filter_map(|e| e["data"]["step_time_s"].as_f64())
        .fold(baseline.step_s, f64::min);
    let step_floor = Duration::from_secs_f64(fastest_new / 2.0);
    let stored = manifests(&fleet, name);
    // Signed: what storage keeps (the last few checkpoints) is signed by
    // this job, and nothing the first attempt signed lies past the step the
    // job resumed from (such a commit would have come after the new
    // attempt was placed: a second writer).
    let prefix = format!("job {} attempt ", watch.id);
    assert!(
        !stored.is_empty() && stored.iter().all(|m| m.writer.starts_with(&prefix)),
        "every kept manifest is signed by an attempt of {}: {stored:?}",
        watch.id
    );
    let late_first: Vec<u64> = stored
        .iter()
        .filter(|m| m.writer == format!("{prefix}1") && m.step > resume_step)
        .map(|m| m.step)
        .collect();
    // Timed: an overwritten manifest keeps only its last signature, so the
    // times are checked too. S3 dates are whole seconds (HTTP dates), so a
    // manifest listed at t was written in [t, t + 1 s).
    let granularity = Duration::from_secs(1);
    let ahead: Vec<(u64, f64)> = stored
        .iter()
        .filter_map(|m| {
            let at = m.written.duration_since(submitted).ok()?;
            let earliest_new = moved + step_floor * m.step.saturating_sub(resume_step) as u32;
            (at > moved && (m.step <= resume_step || at + granularity < earliest_new))
                .then_some((m.step, at.as_secs_f64()))
        })
        .collect();
    assert!(
        ahead.is_empty() && late_first.is_empty(),
        "checkpoints written after the job moved that its new attempt (resuming from step \
         {resume_step}) could not have written by then (step, s after submit): {ahead:?}; \
         steps signed by attempt 1 past the resume step: {late_first:?}; \
         {host} was cut from the coordinator at {:.1} s, attempt 2 was not yet seen by a \
         status call sent at {:.1} s\n{}\n{}",
        cut_at.as_secs_f64(),
        moved.as_secs_f64(),
        story(&fleet, &watch.id),
        fleet.log_tails()
    );
    let allowance = lost_after() + RESTART_ALLOWANCE;
    assert_ends_as_undisturbed(&fleet, &watch, baseline, allowance);
}

#[test]
fn ring_workers_cut_from_each_other_restart_with_the_idle_third() {
    let _turn = crate::one_lab_at_a_time();
    let Some((fleet, inputs)) = fleet() else {
        return;
    };
    let baseline = undisturbed(&fleet, &inputs, 2);
    let mut pair: Option<Vec<String>> = None;
    let watch = run_job(&fleet, &inputs, "cut-pair", 2, |watch| {
        if pair.is_none() && watch.steps.last().is_some_and(|(_, s)| *s >= FAULT_AT_STEP) {
            let ranks = rank_hosts(&fleet);
            if ranks.len() == 2 {
                fleet.lab.cut_between(&ranks[0], &ranks[1]);
                pair = Some(ranks);
            }
        }
    });
    let pair = pair.expect("the job ran long enough to cut its ring");
    let attempts = attempt_workers(&fleet, &watch.id);
    fleet.lab.heal();
    assert!(
        attempts.len() >= 2,
        "the ring failed and the job restarted: {attempts:?}"
    );
    for (i, gang) in attempts.iter().enumerate().skip(1) {
        assert!(
            !pair.iter().all(|w| gang.contains(w)),
            "attempt {} was placed on the broken pair {pair:?} again (attempts: {attempts:?})\n{}",
            i + 1,
            story(&fleet, &watch.id)
        );
    }
    let allowance = Duration::from_secs_f64(RING_TIMEOUT_S) + RESTART_ALLOWANCE;
    assert_ends_as_undisturbed(&fleet, &watch, baseline, allowance);
}

#[test]
fn the_coordinator_cut_from_every_worker_past_the_jobs_end_still_ends_with_the_final_checkpoint() {
    let _turn = crate::one_lab_at_a_time();
    let Some((fleet, inputs)) = fleet() else {
        return;
    };
    let baseline = undisturbed(&fleet, &inputs, 2);
    let workers: Vec<String> = (1..=3).map(worker_name).collect();
    // (cut at, how long) once cut.
    let mut cut: Option<(Duration, Duration)> = None;
    let mut healed = false;
    let watch = run_job(&fleet, &inputs, "cut-coordinator", 2, |watch| {
        let now = watch.last_poll;
        let step = watch.step_at(now);
        match cut {
            None if step >= FAULT_AT_STEP => {
                // Longer than the rest of the job at the pace so far.
                let first = watch.steps.iter().find(|(_, s)| *s > 0).copied();
                let per_step = first
                    .filter(|(t, s)| *s < step && *t < now)
                    .map(|(t, s)| (now - t) / (step - s) as u32)
                    .unwrap_or(Duration::from_millis(200));
                let hold = per_step * (STEPS - step) as u32 + lost_after() + Duration::from_secs(2);
                for worker in &workers {
                    fleet.lab.cut_between(COORD, worker);
                }
                cut = Some((now, hold));
            }
            Some((at, hold)) if !healed && now >= at + hold => {
                fleet.lab.heal();
                healed = true;
            }
            _ => {}
        }
    });
    fleet.lab.heal();
    let (_, hold) = cut.expect("the job ran long enough to cut the coordinator off");
    // The final step's checkpoint is listed and downloadable (the
    // download checks its step).
    let checkpoints = fleet.json(&["checkpoints", &watch.id]);
    assert!(
        checkpoints
            .to_string()
            .contains(&format!("\"step\":{STEPS}")),
        "the final checkpoint is listed: {checkpoints}"
    );
    // The best one and the final step by number download too.
    let folder = fleet.lab.host(COORD).private_dir().to_path_buf();
    for which in ["best", &STEPS.to_string()] {
        let out = folder.join(format!("checkpoint-{which}"));
        let got = fleet.json(&[
            "download",
            &watch.id,
            "--step",
            which,
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(
            got["step"].as_u64().is_some(),
            "download --step {which}: {got}"
        );
    }
    let allowance = hold + RESTART_ALLOWANCE;
    assert_ends_as_undisturbed(&fleet, &watch, baseline, allowance);
}

#[test]
fn a_cut_shorter_than_the_bound_restarts_nothing() {
    let _turn = crate::one_lab_at_a_time();
    let Some((fleet, inputs)) = fleet() else {
        return;
    };
    let baseline = undisturbed(&fleet, &inputs, 2);
    // Half the bound. A connection stalled by a cut only resumes at TCP's
    // next retransmission (the timer doubles from 0.2 s: 0.2, 0.6, 1.4,
    // 3.0 s after the first loss), so a cut of c could hold a worker's
    // reports back for about 2c; the agent opens a fresh connection once
    // a report waits past a quarter of the bound, which gets through as
    // soon as the network does.
    let short = lost_after().mul_f64(0.5);
    let mut cut: Option<std::time::Instant> = None;
    let mut healed = false;
    let watch = run_job(&fleet, &inputs, "short-cut", 2, |watch| match cut {
        None if watch.steps.last().is_some_and(|(_, s)| *s >= FAULT_AT_STEP) => {
            if let Some(host) = rank_hosts(&fleet).pop() {
                fleet.lab.cut_off(&host);
                cut = Some(std::time::Instant::now());
            }
        }
        Some(at) if !healed && at.elapsed() >= short => {
            fleet.lab.heal();
            healed = true;
        }
        _ => {}
    });
    fleet.lab.heal();
    assert!(cut.is_some(), "the job ran long enough to cut a worker off");
    assert_eq!(
        watch.attempt,
        1,
        "no restart: {watch:?}\n{}\n{}",
        story(&fleet, &watch.id),
        fleet.log_tails()
    );
    assert_eq!(watch.failures, 0, "no failure: {watch:?}");
    let allowance = short + Duration::from_secs(6);
    assert_ends_as_undisturbed(&fleet, &watch, baseline, allowance);
}
