//! The figures read from the store at each scrape: jobs by status, the
//! queue, workers by state, attempt totals, and the progress of every job
//! not in a final state.
//!
//! A scrape costs three queries, whatever the fleet does meanwhile: one
//! aggregate over the jobs per status ([`Store::job_totals`], however long
//! the history), the rows of the jobs not in a final state (at most the
//! jobs waiting or holding workers: the per-job series) and the worker
//! rows.
//!
//! [`Store::job_totals`]: crate::store::Store::job_totals
//!
//! Not here: who may see which figures, and the figures counted in memory
//! (`metrics`).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::store::{JobFigures, JobStatus, JobTotals, Worker, WorkerState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// The labels of a job's series. Not `job`: Prometheus gives every scraped
/// series its target's `job` label, and a clash would rename ours.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job_id: String,
    job_name: String,
    tenant: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Registers the fleet-wide figures (`totals` per status, `workers`) in
/// `registry`, and with `per_job`, the progress of each of `unfinished`.
pub(super) fn register(
    registry: &mut Registry,
    totals: &[(JobStatus, JobTotals)],
    unfinished: &[JobFigures],
    workers: &[Worker],
    per_job: bool,
) {
    let of = |status: JobStatus| {
        totals
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, t)| *t)
            .unwrap_or_default()
    };
    let by_status: Family<StatusLabel, Gauge> = Family::default();
    for status in JobStatus::ALL {
        by_status
            .get_or_create(&StatusLabel {
                status: status.name(),
            })
            .set(saturate(of(status).jobs));
    }
    registry.register("jobs", "Jobs by status, every status listed", by_status);
    let waiting: Gauge = Gauge::default();
    let queue: u64 = JobStatus::ALL
        .into_iter()
        .filter(|status| status.is_waiting())
        .map(|status| of(status).jobs)
        .sum();
    waiting.set(saturate(queue));
    registry.register(
        "jobs_waiting",
        "Jobs waiting for workers (queued or restarting): the queue's length",
        waiting,
    );
    let sum = |field: fn(&JobTotals) -> u64| totals.iter().map(|(_, t)| field(t)).sum::<u64>();
    let attempts = sum(|t| t.attempts);
    let restarts = sum(|t| t.restarts);
    let failures = sum(|t| t.failures);
    let trained = sum(|t| t.trained_tokens);
    registry.register(
        "job_attempts_started",
        "Attempts started, over every job the store holds",
        ConstCounter::new(attempts),
    );
    registry.register(
        "job_restarts",
        "Attempts after a job's first (restarts after failures, preemptions, resumes), over every job",
        ConstCounter::new(restarts),
    );
    let failed: Gauge = Gauge::default();
    failed.set(saturate(failures));
    registry.register(
        "job_failures",
        "Failed attempts that count against the jobs' max_failures (a resume sets a job's back to 0)",
        failed,
    );
    registry.register_with_unit(
        "trained",
        "Target tokens trained, over every job (steps run again included)",
        Unit::Other("tokens".into()),
        ConstCounter::new(trained),
    );

    let by_state: Family<StateLabel, Gauge> = Family::default();
    for state in [
        WorkerState::Idle,
        WorkerState::Busy,
        WorkerState::Draining,
        WorkerState::Lost,
    ] {
        let count = workers
            .iter()
            .filter(|worker| worker.state == state)
            .count();
        by_state
            .get_or_create(&StateLabel {
                state: state.name(),
            })
            .set(count as i64);
    }
    registry.register(
        "workers",
        "Registered workers by state, every state listed",
        by_state,
    );

    if per_job {
        register_jobs(registry, unfinished);
    }
}

/// Each unfinished job's progress, one series per job and figure; a
/// figure not reported yet has no series.
fn register_jobs(registry: &mut Registry, jobs: &[JobFigures]) {
    let step: Family<JobLabels, Gauge> = Family::default();
    let total_steps: Family<JobLabels, Gauge> = Family::default();
    let train_loss: Family<JobLabels, FloatGauge> = Family::default();
    let valid_loss: Family<JobLabels, FloatGauge> = Family::default();
    let tokens_per_s: Family<JobLabels, FloatGauge> = Family::default();
    let step_seconds: Family<JobLabels, FloatGauge> = Family::default();
    let eta_seconds: Family<JobLabels, FloatGauge> = Family::default();
    let trained: Family<JobLabels, Counter> = Family::default();
    for job in jobs.iter().filter(|job| !job.status.is_final()) {
        let labels = JobLabels {
            job_id: job.id.as_str().to_string(),
            job_name: job.name.clone(),
            tenant: job.tenant.as_str().to_string(),
        };
        step.get_or_create(&labels).set(saturate(job.step));
        trained
            .get_or_create(&labels)
            .inc_by(job.progress.trained_tokens);
        if let Some(total) = job.total_steps {
            total_steps.get_or_create(&labels).set(saturate(total));
        }
        let figures = [
            (&train_loss, job.progress.train_loss),
            (&valid_loss, job.progress.valid_loss),
            (&tokens_per_s, job.progress.tokens_per_s),
            (&step_seconds, job.progress.step_seconds),
            (&eta_seconds, job.eta_seconds()),
        ];
        for (family, value) in figures {
            if let Some(value) = value {
                family.get_or_create(&labels).set(value);
            }
        }
    }
    registry.register(
        "job_step",
        "The last completed step of each unfinished job",
        step,
    );
    registry.register(
        "job_total_steps",
        "The steps each unfinished job runs in all, once known",
        total_steps,
    );
    registry.register(
        "job_train_loss",
        "The training loss of each unfinished job's last step",
        train_loss,
    );
    registry.register(
        "job_valid_loss",
        "The loss of each unfinished job's last validation pass",
        valid_loss,
    );
    registry.register(
        "job_tokens_per_second",
        "Each unfinished job's throughput at its last step, all ranks together",
        tokens_per_s,
    );
    registry.register_with_unit(
        "job_step_duration",
        "The wall time of each unfinished job's last step",
        Unit::Seconds,
        step_seconds,
    );
    registry.register_with_unit(
        "job_eta",
        "Time until each running job's last step at its last step's pace",
        Unit::Seconds,
        eta_seconds,
    );
    registry.register_with_unit(
        "job_trained",
        "Target tokens each unfinished job has trained (steps run again included)",
        Unit::Other("tokens".into()),
        trained,
    );
}

fn saturate(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
