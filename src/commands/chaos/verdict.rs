//! Judging a chaos run. The undisturbed job is the [`Baseline`]; each
//! disturbed job gets a [`JobReport`]: its adapter's deviation from the
//! baseline's, and its extra time against an allowance of what its faults
//! may cost. A fault may cost the detection bound (if it froze a worker),
//! the wait before the restart: the backoff of the failure it causes
//! (base·2^(k−1) for the job's k-th, capped at 60 s) or, if longer, the
//! fence (a rank whose worker went silent may run until the detection
//! bound plus [`FENCE_MARGIN_S`] after it was last heard from, and the
//! coordinator waits that out), a fresh start-up (the baseline's time to
//! its first step), and the steps since the last checkpoint
//! (`every_steps` × the mean step time); a fixed slack of
//! [`SLACK_S`] covers noise on a shared machine. A job whose steps ran
//! slower than the baseline's (the machine was busier) is judged against
//! the baseline slowed by the same pace: its wall time, start-up and
//! steps. [`ChaosReport`] is the whole run: the lines people read, the `--json` object, and the
//! verdict.
//!
//! Not here: running jobs or reading adapters (`drive`, `adapter`).

use anyhow::bail;
use serde_json::{Value, json};

use super::drive::{InjectedFault, JobRun, rank_text};
use super::plan::FaultKind;

/// Seconds of noise any disturbed job may add.
pub const SLACK_S: f64 = 3.0;
/// The most an adapter may deviate from the undisturbed one.
pub const MAX_DEVIATION: f64 = 1e-4;
/// The coordinator's longest restart backoff, in seconds.
const BACKOFF_CAP_S: f64 = 60.0;
/// What the coordinator adds to the detection bound before it restarts a
/// job whose rank may still run on a silent worker (its `FENCE_MARGIN`).
pub const FENCE_MARGIN_S: f64 = 1.0;

/// What the undisturbed job measured, and the settings faults are judged by.
#[derive(Clone, Debug)]
pub struct Baseline {
    pub wall_s: f64,
    /// From submission to the first step.
    pub startup_s: f64,
    pub mean_step_s: f64,
    pub every_steps: u64,
    pub detection_bound_s: f64,
    pub restart_backoff_s: f64,
}

impl Baseline {
    /// This baseline on a machine `pace` times slower (≥ 1): start-up and
    /// steps take that much longer.
    pub fn at_pace(&self, pace: f64) -> Baseline {
        Baseline {
            wall_s: self.wall_s * pace,
            startup_s: self.startup_s * pace,
            mean_step_s: self.mean_step_s * pace,
            ..self.clone()
        }
    }

    /// The coordinator's wait before restarting a job after its `k`-th
    /// failure (k ≥ 1).
    pub fn backoff_s(&self, k: u32) -> f64 {
        let doublings = k.saturating_sub(1).min(30) as i32;
        (self.restart_backoff_s * 2f64.powi(doublings)).min(BACKOFF_CAP_S)
    }

    /// How much longer than the baseline a job with `faults` may take.
    pub fn allowance_s(&self, faults: &[InjectedFault]) -> f64 {
        let lost_steps = self.every_steps as f64 * self.mean_step_s;
        let per_fault: f64 = (1u32..)
            .zip(faults)
            .map(|(k, fault)| {
                // A killed worker is noticed at once, but its rank counts
                // as running until the fence; a frozen one is noticed at
                // the bound, a margin before its fence.
                // A partition is judged as a freeze: a short one may cost
                // no more than its length, a long one what a freeze does.
                let (detection, fence) = match fault.kind {
                    FaultKind::Freeze { .. } | FaultKind::Partition { .. } => {
                        (self.detection_bound_s, FENCE_MARGIN_S)
                    }
                    FaultKind::Kill { .. } => (0.0, self.detection_bound_s + FENCE_MARGIN_S),
                };
                detection + self.backoff_s(k).max(fence) + self.startup_s + lost_steps
            })
            .sum();
        per_fault + SLACK_S
    }
}

/// One disturbed job, judged.
#[derive(Clone, Debug)]
pub struct JobReport {
    pub run: JobRun,
    /// Against the baseline's adapter; `None` when there was none to read.
    pub deviation: Option<f64>,
    /// Why the adapter could not be compared.
    pub adapter_error: Option<String>,
    /// Wall time beyond the baseline's (at this job's pace).
    pub extra_s: f64,
    pub allowance_s: f64,
    /// This job's mean step time over the baseline's, at least 1.
    pub pace: f64,
    /// The baseline's mean step time, to tell a slower machine from a
    /// slow recovery.
    baseline_step_s: f64,
}

impl JobReport {
    pub fn new(run: JobRun, baseline: &Baseline, deviation: Result<f64, String>) -> JobReport {
        let (deviation, adapter_error) = match deviation {
            Ok(d) => (Some(d), None),
            Err(e) => (None, Some(e)),
        };
        let pace = run
            .mean_step_s
            .filter(|s| s.is_finite() && baseline.mean_step_s > 0.0)
            .map_or(1.0, |s| (s / baseline.mean_step_s).max(1.0));
        let paced = baseline.at_pace(pace);
        JobReport {
            extra_s: run.wall_s - paced.wall_s,
            allowance_s: paced.allowance_s(&run.faults),
            pace,
            baseline_step_s: baseline.mean_step_s,
            run,
            deviation,
            adapter_error,
        }
    }

    pub fn succeeded(&self) -> bool {
        self.run.ending.succeeded()
    }

    pub fn over_allowance(&self) -> bool {
        self.succeeded() && self.extra_s > self.allowance_s
    }

    /// What went wrong with this job; empty when it passed.
    pub fn problems(&self) -> Vec<String> {
        let job = format!("job {} ({})", self.run.name, self.run.id);
        let mut problems = Vec::new();
        if !self.succeeded() {
            let error = self.run.error.as_deref().unwrap_or("no error given");
            problems.push(format!("{job} ended {}: {error}", self.run.ending));
            return problems;
        }
        if let Some(error) = &self.adapter_error {
            problems.push(format!("{job}: cannot compare its adapter: {error}"));
        }
        if let Some(d) = self.deviation.filter(|d| d.is_nan() || *d > MAX_DEVIATION) {
            problems.push(format!(
                "{job}: its adapter deviates from the undisturbed one by {d:.3e} (at most {MAX_DEVIATION:e} allowed)"
            ));
        }
        if self.over_allowance() {
            let mut problem = format!(
                "{job} took {:.1} s longer than the undisturbed job, over its allowance of {:.1} s",
                self.extra_s, self.allowance_s
            );
            if let Some(step) = self.run.mean_step_s {
                problem.push_str(&format!(
                    " (its steps took {step:.3} s on average against {:.3} s undisturbed; both figures are at that pace)",
                    self.baseline_step_s
                ));
            }
            problems.push(problem);
        }
        problems
    }

    /// What a person reads about this job.
    pub fn line(&self) -> String {
        let faults: Vec<String> = self.run.faults.iter().map(fault_text).collect();
        let faults = if faults.is_empty() {
            "none".to_string()
        } else {
            faults.join(", ")
        };
        let deviation = match (self.deviation, &self.adapter_error) {
            (Some(d), _) => format!("{d:.3e}"),
            (None, Some(_)) => "unknown".to_string(),
            (None, None) => "-".to_string(),
        };
        let mut line = format!(
            "{} ({}): {} in {:.1} s; faults: {faults}; {} failure(s), {} attempt(s); deviation {deviation}; extra {:.1} s of {:.1} s allowed (pace {:.2})",
            self.run.name,
            self.run.id,
            self.run.ending,
            self.run.wall_s,
            self.run.failures,
            self.run.attempts,
            self.extra_s,
            self.allowance_s,
            self.pace
        );
        if self.run.not_injected > 0 {
            line.push_str(&format!(
                "; {} planned fault(s) not injected (the job had ended)",
                self.run.not_injected
            ));
        }
        for problem in self.problems() {
            line.push_str(&format!("\n  FAILED: {problem}"));
        }
        for note in &self.run.anomalies {
            line.push_str(&format!("\n  note: {note}"));
        }
        line
    }

    pub fn to_json(&self) -> Value {
        let faults: Vec<Value> = self
            .run
            .faults
            .iter()
            .map(|f| {
                json!({
                    "kind": f.kind.name(),
                    "worker": f.worker,
                    "busy": f.busy,
                    "rank": f.rank,
                    "at_s": f.at_s,
                    "out_s": f.kind.out_for().as_secs_f64(),
                })
            })
            .collect();
        json!({
            "name": self.run.name,
            "id": self.run.id,
            "status": self.run.ending.name(),
            "error": self.run.error,
            "wall_s": self.run.wall_s,
            "startup_s": self.run.startup_s,
            "mean_step_s": self.run.mean_step_s,
            "pace": self.pace,
            "attempts": self.run.attempts,
            "failures": self.run.failures,
            "faults": faults,
            "not_injected": self.run.not_injected,
            "deviation": self.deviation,
            "adapter_error": self.adapter_error,
            "extra_s": self.extra_s,
            "allowance_s": self.allowance_s,
            "anomalies": self.run.anomalies,
        })
    }
}

/// `kill chaos-w2 (rank 1) at 4.2 s`.
fn fault_text(fault: &InjectedFault) -> String {
    format!(
        "{} {} ({}) at {:.1} s",
        fault.kind.name(),
        fault.worker,
        rank_text(fault),
        fault.at_s
    )
}

/// A whole chaos run.
#[derive(Clone, Debug)]
pub struct ChaosReport {
    pub seed: u64,
    pub baseline: Baseline,
    pub jobs: Vec<JobReport>,
}

impl ChaosReport {
    pub fn faults(&self) -> usize {
        self.jobs.iter().map(|j| j.run.faults.len()).sum()
    }

    pub fn succeeded(&self) -> usize {
        self.jobs.iter().filter(|j| j.succeeded()).count()
    }

    pub fn max_deviation(&self) -> Option<f64> {
        self.jobs
            .iter()
            .filter_map(|j| j.deviation)
            .reduce(f64::max)
    }

    /// The succeeded job with the most extra time.
    fn worst(&self) -> Option<&JobReport> {
        self.jobs
            .iter()
            .filter(|j| j.succeeded())
            .max_by(|a, b| a.extra_s.total_cmp(&b.extra_s))
    }

    /// The summary a person reads.
    pub fn summary_line(&self) -> String {
        let deviation = self
            .max_deviation()
            .map_or_else(|| "unknown".to_string(), |d| format!("{d:.3e}"));
        let worst = self.worst().map_or_else(
            || "none succeeded".to_string(),
            |j| format!("{:.1} s (allowance {:.1} s)", j.extra_s, j.allowance_s),
        );
        let b = &self.baseline;
        format!(
            "chaos: {} job(s), {} fault(s), {} succeeded; max deviation {deviation}; worst extra {worst}; undisturbed {:.1} s (first step after {:.1} s, {:.3} s/step)",
            self.jobs.len(),
            self.faults(),
            self.succeeded(),
            b.wall_s,
            b.startup_s,
            b.mean_step_s
        )
    }

    /// `--json`'s object.
    pub fn to_json(&self) -> Value {
        let names = |keep: &dyn Fn(&JobReport) -> bool| -> Vec<String> {
            self.jobs
                .iter()
                .filter(|j| keep(j))
                .map(|j| j.run.name.clone())
                .collect()
        };
        let b = &self.baseline;
        json!({
            "runs": self.jobs.len(),
            "faults": self.faults(),
            "succeeded": self.succeeded(),
            "max_deviation": self.max_deviation(),
            "worst_extra_s": self.worst().map(|j| j.extra_s),
            "worst_allowance_s": self.worst().map(|j| j.allowance_s),
            "over_allowance": names(&JobReport::over_allowance),
            "failed": names(&|j| !j.succeeded()),
            "undisturbed_s": b.wall_s,
            "startup_s": b.startup_s,
            "mean_step_s": b.mean_step_s,
            "seed": self.seed,
            "detection_bound_s": b.detection_bound_s,
            "restart_backoff_s": b.restart_backoff_s,
            "jobs": self.jobs.iter().map(JobReport::to_json).collect::<Vec<_>>(),
        })
    }

    /// Ok when every job succeeded within its allowance with an adapter
    /// close enough to the undisturbed one; otherwise an error naming each
    /// job and what went wrong.
    pub fn verdict(&self) -> anyhow::Result<()> {
        let problems: Vec<String> = self.jobs.iter().flat_map(JobReport::problems).collect();
        if problems.is_empty() {
            return Ok(());
        }
        bail!("chaos run failed:\n  {}", problems.join("\n  "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::chaos::drive::Ending;
    use coordinator::client::JobStatus;
    use std::time::Duration;

    const SUCCEEDED: Ending = Ending::Final(JobStatus::Succeeded);

    fn baseline() -> Baseline {
        Baseline {
            wall_s: 20.0,
            startup_s: 2.0,
            mean_step_s: 0.2,
            every_steps: 5,
            detection_bound_s: 3.0,
            restart_backoff_s: 0.5,
        }
    }

    fn fault(kind: FaultKind) -> InjectedFault {
        InjectedFault {
            kind,
            worker: "chaos-w1".into(),
            busy: true,
            rank: Some(0),
            at_s: 4.0,
        }
    }

    fn run(ending: Ending, wall_s: f64, faults: Vec<InjectedFault>) -> JobRun {
        JobRun {
            name: "chaos-1".into(),
            id: "j-1".into(),
            ending,
            error: None,
            wall_s,
            startup_s: Some(2.0),
            mean_step_s: Some(0.2),
            attempts: 2,
            failures: 1,
            faults,
            not_injected: 0,
            anomalies: Vec::new(),
        }
    }

    #[test]
    fn the_backoff_doubles_per_failure_up_to_a_minute() {
        let b = baseline();
        assert_eq!(b.backoff_s(1), 0.5);
        assert_eq!(b.backoff_s(2), 1.0);
        assert_eq!(b.backoff_s(3), 2.0);
        assert_eq!(b.backoff_s(20), 60.0);
    }

    #[test]
    fn the_allowance_adds_up_each_faults_costs_and_the_slack() {
        let kill = fault(FaultKind::Kill {
            dead_for: Duration::from_secs(1),
        });
        let freeze = fault(FaultKind::Freeze {
            frozen_for: Duration::from_secs(4),
        });
        let b = baseline();
        // kill: the fence (3 bound + 1 margin, over the 0.5 backoff) + 2
        // start-up + 1 (5 steps of 0.2 s).
        assert!((b.allowance_s(std::slice::from_ref(&kill)) - 10.0).abs() < 1e-9);
        // then a freeze: 3 detection + 1 (backoff and margin) + 2 + 1.
        assert!((b.allowance_s(&[kill, freeze]) - 17.0).abs() < 1e-9);
        assert_eq!(b.allowance_s(&[]), SLACK_S);
    }

    #[test]
    fn a_job_on_a_busier_machine_is_judged_at_its_own_pace() {
        let b = baseline();
        let kill = fault(FaultKind::Kill {
            dead_for: Duration::from_secs(1),
        });
        // Steps twice as slow: the baseline becomes 40 s, the allowance
        // 4 (the fence) + 4 + 2 + 3 = 13 s.
        let mut slow_machine = run(SUCCEEDED, 52.0, vec![kill.clone()]);
        slow_machine.mean_step_s = Some(0.4);
        let judged = JobReport::new(slow_machine, &b, Ok(0.0));
        assert_eq!(judged.pace, 2.0);
        assert!((judged.extra_s - 12.0).abs() < 1e-9);
        assert!((judged.allowance_s - 13.0).abs() < 1e-9);
        assert!(!judged.over_allowance());
        // Faster steps never shrink the baseline.
        let mut fast = run(SUCCEEDED, 25.0, vec![kill]);
        fast.mean_step_s = Some(0.1);
        assert_eq!(JobReport::new(fast, &b, Ok(0.0)).pace, 1.0);
    }

    #[test]
    fn the_verdict_names_each_job_and_what_went_wrong() {
        let b = baseline();
        let kill = fault(FaultKind::Kill {
            dead_for: Duration::from_secs(1),
        });
        let good = JobReport::new(run(SUCCEEDED, 25.0, vec![kill.clone()]), &b, Ok(0.0));
        let slow = JobReport::new(run(SUCCEEDED, 40.0, vec![kill.clone()]), &b, Ok(0.0));
        let drifted = JobReport::new(run(SUCCEEDED, 21.0, vec![kill.clone()]), &b, Ok(0.5));
        let mut failed_run = run(Ending::Final(JobStatus::Failed), 30.0, vec![kill]);
        failed_run.error = Some("max_failures: failed 4 times".into());
        let failed = JobReport::new(failed_run, &b, Err("no checkpoint".into()));
        let report = ChaosReport {
            seed: 7,
            baseline: b.clone(),
            jobs: vec![good.clone()],
        };
        assert!(report.verdict().is_ok());
        let value = report.to_json();
        for key in [
            "runs",
            "faults",
            "succeeded",
            "max_deviation",
            "worst_extra_s",
        ] {
            assert!(value.get(key).is_some(), "missing {key}");
        }
        assert_eq!(value["succeeded"], 1);
        assert_eq!(value["worst_extra_s"], 5.0);

        let report = ChaosReport {
            seed: 7,
            baseline: b,
            jobs: vec![good, slow, drifted, failed],
        };
        let text = report.verdict().unwrap_err().to_string();
        assert!(text.contains("took 20.0 s longer"), "{text}");
        assert!(text.contains("deviates"), "{text}");
        assert!(text.contains("ended failed: max_failures"), "{text}");
        let value = report.to_json();
        assert_eq!(value["succeeded"], 3);
        assert_eq!(value["failed"], json!(["chaos-1"]));
        assert_eq!(value["max_deviation"], 0.5);
    }
}
