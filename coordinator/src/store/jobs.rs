//! Jobs: what was submitted, by whom, and where it stands.
//!
//! A job row keeps the spec YAML exactly as submitted (the source of truth
//! for re-reading it after a restart) next to the few fields the control
//! plane queries: tenant, priority, worker range, backend, status, progress
//! and the attempt/failure counters.
//!
//! Status changes follow [`JobStatus::can_move_to`]; [`Store::move_job`]
//! writes a move only if the stored status allows it, in one conditional
//! `UPDATE`, so two racing writers cannot both win.

use sqlx::{AssertSqlSafe, Row};

use super::events::{self, NewEvent};
use super::{
    Connection, DbRow, JobId, JobStatus, Store, StoreError, TenantId, parse_word, to_i64, to_u32,
    to_u64, unix_now,
};
use job::JobEvent;
use job::event::{EventError, RestartNext, StatusChange};
use job::spec::{Backend, JobSpec, TrainingLength};

/// Why a job failed: a stable machine-readable code and a message for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

/// A job to submit.
#[derive(Clone, Debug, PartialEq)]
pub struct NewJob {
    pub tenant: TenantId,
    pub name: String,
    /// The spec file's text, exactly as submitted.
    pub spec_yaml: String,
    pub priority: i32,
    pub workers_min: u32,
    pub workers_max: u32,
    pub backend: Backend,
    /// `None` until known (a spec that counts epochs needs the dataset size).
    pub total_steps: Option<u64>,
    pub max_failures: u32,
}

impl NewJob {
    /// The job for a validated spec and the text it was read from.
    pub fn from_spec(tenant: TenantId, spec: &JobSpec, spec_yaml: String) -> NewJob {
        NewJob {
            tenant,
            name: spec.name.clone(),
            spec_yaml,
            priority: spec.resources.priority,
            workers_min: spec.resources.workers.min,
            workers_max: spec.resources.workers.max,
            backend: spec.resources.backend,
            total_steps: match spec.training.length {
                TrainingLength::MaxSteps(steps) => Some(steps),
                TrainingLength::Epochs(_) => None,
            },
            max_failures: spec.checkpoint.max_failures,
        }
    }
}

/// How a job restarts: what [`Store::restart_job`] records in its event.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RestartPlan {
    /// The newest checkpoint the coordinator knows of.
    pub resume_step: Option<u64>,
    /// Seconds the job waits before it is placed again.
    pub backoff_s: f64,
}

/// A job as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub id: JobId,
    /// Submit order: larger is later. FIFO and paging use it.
    pub seq: i64,
    pub tenant: TenantId,
    pub name: String,
    pub spec_yaml: String,
    pub priority: i32,
    pub workers_min: u32,
    pub workers_max: u32,
    pub backend: Backend,
    pub status: JobStatus,
    /// The last completed optimizer step.
    pub step: u64,
    pub total_steps: Option<u64>,
    /// Attempts started so far (the current one's number once placed).
    pub attempt: u32,
    /// Attempts that failed.
    pub failures: u32,
    /// Failed attempts the job may restart after; one more and it fails.
    pub max_failures: u32,
    pub created_at: i64,
    /// When the job last started waiting for workers (submit, or restart).
    pub waiting_since: i64,
    pub finished_at: Option<i64>,
    pub error: Option<JobError>,
    /// What ranks last reported of the training itself.
    pub progress: JobProgress,
}

/// The latest figures ranks reported for a job: none until its first step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobProgress {
    /// The training loss of the last step.
    pub train_loss: Option<f64>,
    /// The loss of the last validation pass.
    pub valid_loss: Option<f64>,
    /// The last step's wall time.
    pub step_seconds: Option<f64>,
    /// The last step's throughput (all ranks).
    pub tokens_per_s: Option<f64>,
    /// Target tokens of every step reported, steps run again included.
    pub trained_tokens: u64,
}

impl Job {
    /// Whether another failed attempt may still be followed by a restart.
    pub fn may_restart(&self) -> bool {
        self.failures <= self.max_failures
    }

    /// Seconds until the last step at the last step's pace, while the job
    /// runs and both are known.
    pub fn eta_seconds(&self) -> Option<f64> {
        eta_seconds(self.status, self.step, self.total_steps, &self.progress)
    }
}

/// What a job's row says of its progress, without its spec: what
/// `/metrics` shows of each unfinished job ([`Store::job_figures`]).
#[derive(Clone, Debug, PartialEq)]
pub struct JobFigures {
    pub id: JobId,
    pub name: String,
    pub tenant: TenantId,
    pub status: JobStatus,
    pub step: u64,
    pub total_steps: Option<u64>,
    pub progress: JobProgress,
}

impl JobFigures {
    /// As [`Job::eta_seconds`].
    pub fn eta_seconds(&self) -> Option<f64> {
        eta_seconds(self.status, self.step, self.total_steps, &self.progress)
    }
}

fn eta_seconds(
    status: JobStatus,
    step: u64,
    total_steps: Option<u64>,
    progress: &JobProgress,
) -> Option<f64> {
    if status != JobStatus::Running {
        return None;
    }
    let left = total_steps?.saturating_sub(step);
    Some(left as f64 * progress.step_seconds?)
}

/// Sums over the jobs in one status, as [`Store::job_totals`] counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobTotals {
    pub jobs: u64,
    /// Attempts started.
    pub attempts: u64,
    /// Attempts after each job's first.
    pub restarts: u64,
    /// Failed attempts that count against `max_failures`.
    pub failures: u64,
    pub trained_tokens: u64,
}

/// A training step as [`Store::record_step`] keeps it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    pub step: u64,
    pub total_steps: u64,
    pub loss: f64,
    pub step_seconds: f64,
    pub tokens_per_s: f64,
    pub target_tokens: u64,
}

/// Which jobs [`Store::list_jobs`] returns, newest first.
#[derive(Clone, Debug, Default)]
pub struct JobQuery {
    /// Only this tenant's jobs.
    pub tenant: Option<TenantId>,
    /// Only jobs submitted before this one: the last id of the previous page.
    pub after: Option<JobId>,
    /// At most this many (at least 1 is returned when any match).
    pub limit: u32,
    /// Only jobs in one of these statuses; empty: any.
    pub statuses: Vec<JobStatus>,
}

/// One page of a list: `has_more` says whether a next page exists.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub has_more: bool,
}

macro_rules! job_columns {
    () => {
        "seq, id, tenant_id, name, spec_yaml, priority, workers_min, \
     workers_max, backend, status, step, total_steps, attempt, failures, max_failures, \
     created_at, waiting_since, finished_at, error_code, error_message, \
     train_loss, valid_loss, step_seconds, tokens_per_s, trained_tokens"
    };
}

impl Store {
    /// Stores a new job as `queued` and logs `job.queued`.
    pub async fn create_job(&self, job: &NewJob) -> Result<Job, StoreError> {
        if job.workers_min == 0 || job.workers_min > job.workers_max {
            return Err(StoreError::InvalidValue {
                what: "worker range",
                value: format!("{}..{}", job.workers_min, job.workers_max),
                reason: "needs 1 <= min <= max",
            });
        }
        let id = JobId::generate();
        let now = unix_now();
        let total_steps = job
            .total_steps
            .map(|steps| to_i64("total_steps", steps))
            .transpose()?;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO jobs (id, tenant_id, name, spec_yaml, priority, workers_min, workers_max, \
             backend, status, step, total_steps, attempt, failures, max_failures, created_at, \
             waiting_since) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10, 0, 0, $11, $12, $12)",
        )
        .bind(id.as_str())
        .bind(job.tenant.as_str())
        .bind(&job.name)
        .bind(&job.spec_yaml)
        .bind(job.priority)
        .bind(i64::from(job.workers_min))
        .bind(i64::from(job.workers_max))
        .bind(job.backend.name())
        .bind(JobStatus::Queued.name())
        .bind(total_steps)
        .bind(i64::from(job.max_failures))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|error| match &error {
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                StoreError::TenantNotFound(job.tenant.clone())
            }
            _ => StoreError::Database(error),
        })?;
        events::insert(&mut tx, &status_event(&id, JobStatus::Queued, None)).await?;
        let created = fetch_job(&mut tx, &id).await?;
        tx.commit().await?;
        Ok(created)
    }

    pub async fn get_job(&self, id: &JobId) -> Result<Job, StoreError> {
        let mut conn = self.pool.acquire().await?;
        fetch_job(&mut conn, id).await
    }

    /// A page of jobs, newest first. `after` must name a job that the
    /// query's tenant (if any) can see.
    pub async fn list_jobs(&self, query: &JobQuery) -> Result<Page<Job>, StoreError> {
        let before_seq = match &query.after {
            None => i64::MAX,
            Some(after) => {
                let job = self.get_job(after).await?;
                if query
                    .tenant
                    .as_ref()
                    .is_some_and(|tenant| *tenant != job.tenant)
                {
                    return Err(StoreError::JobNotFound(after.clone()));
                }
                job.seq
            }
        };
        let limit = query.limit.max(1);
        let rows = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE seq < $1 AND ($2 IS NULL OR tenant_id = $2) \
             AND ($4 = '' OR instr($4, ',' || status || ',') > 0) \
             ORDER BY seq DESC LIMIT $3"
        ))
        .bind(before_seq)
        .bind(query.tenant.as_ref().map(TenantId::as_str))
        .bind(i64::from(limit) + 1)
        .bind(status_set(&query.statuses))
        .fetch_all(&self.pool)
        .await?;
        let mut data = rows
            .iter()
            .map(job_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let has_more = data.len() > limit as usize;
        data.truncate(limit as usize);
        Ok(Page { data, has_more })
    }

    /// Every job in one of `statuses`, in submit order (oldest first): the
    /// waiting jobs for the scheduler, the running ones after a restart.
    pub async fn jobs_with_status(&self, statuses: &[JobStatus]) -> Result<Vec<Job>, StoreError> {
        let names: Vec<&str> = statuses.iter().map(|status| status.name()).collect();
        // Audited: only numbered placeholders are spliced in.
        let sql = format!(
            concat!(
                "SELECT ",
                job_columns!(),
                " FROM jobs WHERE status IN ({}) ORDER BY seq"
            ),
            placeholders(1, names.len())
        );
        let rows = sqlx::query(AssertSqlSafe(sql));
        let rows = names
            .iter()
            .fold(rows, |query, name| query.bind(*name))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Moves job `id` to `to` if its current status allows it, and logs
    /// `job.<to>`. `error`, when given, becomes the job's error (why it
    /// failed, restarted or was cancelled). Final statuses set
    /// `finished_at`; `restarting` restarts the wait for workers.
    ///
    /// A job reaches `starting` only through [`Store::start_attempt`],
    /// which also records its gang.
    pub async fn move_job(
        &self,
        id: &JobId,
        to: JobStatus,
        error: Option<&JobError>,
    ) -> Result<Job, StoreError> {
        if to == JobStatus::Starting {
            return Err(StoreError::InvalidValue {
                what: "job status",
                value: to.name().to_string(),
                reason: "a job starts through start_attempt, which records its workers",
            });
        }
        let mut tx = self.pool.begin().await?;
        let moved = update_status(&mut tx, id, to, error).await?;
        events::insert(&mut tx, &status_event(id, to, error)).await?;
        tx.commit().await?;
        Ok(moved)
    }

    /// Moves job `id` to `restarting` after an attempt ended early
    /// (`error`: why it failed; `None` for a preemption), its event saying
    /// which attempt comes next, the step it resumes from and how long it
    /// waits first.
    pub async fn restart_job(
        &self,
        id: &JobId,
        error: Option<&JobError>,
        plan: &RestartPlan,
    ) -> Result<Job, StoreError> {
        let mut tx = self.pool.begin().await?;
        let moved = update_status(&mut tx, id, JobStatus::Restarting, error).await?;
        let next = moved.attempt + 1;
        let from = match plan.resume_step {
            Some(step) => format!("from its checkpoint at step {step}"),
            None => "from the start (no checkpoint yet)".to_string(),
        };
        let mut message = status_event(id, JobStatus::Restarting, error).message;
        message = format!("{message}; attempt {next} resumes {from}");
        if plan.backoff_s > 0.0 {
            message = format!("{message} in {:.1} s", plan.backoff_s);
        }
        let restarting = JobEvent::JobRestarting(StatusChange {
            status: JobStatus::Restarting.name().into(),
            error: error.map(event_error),
            attempt: Some(next),
            workers: Vec::new(),
            restart: Some(RestartNext {
                resume_step: plan.resume_step,
                backoff_s: plan.backoff_s,
                failures: moved.failures,
                max_failures: moved.max_failures,
            }),
        });
        let event = NewEvent::of(id, &restarting).with_message(message);
        events::insert(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(moved)
    }

    /// Sends a failed or cancelled job back to the scheduler as
    /// `restarting`, with a fresh `max_failures` budget and its error
    /// cleared: its next attempt continues from its latest checkpoint.
    /// Logs `job.resumed` with `message`.
    pub async fn resume_job(&self, id: &JobId, message: &str) -> Result<Job, StoreError> {
        let mut tx = self.pool.begin().await?;
        let result = sqlx::query(
            "UPDATE jobs SET status = 'restarting', failures = 0, finished_at = NULL, \
             error_code = NULL, error_message = NULL, waiting_since = $1 \
             WHERE id = $2 AND status IN ('failed', 'cancelled')",
        )
        .bind(unix_now())
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
        let job = fetch_job(&mut tx, id).await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::IllegalTransition {
                job: id.clone(),
                from: job.status,
                to: JobStatus::Restarting,
            });
        }
        let resumed = JobEvent::JobResumed {
            status: JobStatus::Restarting.name().into(),
        };
        let event = NewEvent::of(id, &resumed).with_message(message);
        events::insert(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(job)
    }

    /// Records training progress: the last completed step and, once known,
    /// the total.
    pub async fn set_job_progress(
        &self,
        id: &JobId,
        step: u64,
        total_steps: Option<u64>,
    ) -> Result<(), StoreError> {
        let total = total_steps
            .map(|steps| to_i64("total_steps", steps))
            .transpose()?;
        let result = sqlx::query(
            "UPDATE jobs SET step = $1, total_steps = COALESCE($2, total_steps) WHERE id = $3",
        )
        .bind(to_i64("step", step)?)
        .bind(total)
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::JobNotFound(id.clone()));
        }
        Ok(())
    }

    /// Records a training step: progress as [`Store::set_job_progress`],
    /// and the step's loss, time and throughput. `count_tokens` adds the
    /// step's target tokens to the job's total (one rank's report counts).
    pub async fn record_step(
        &self,
        id: &JobId,
        report: &StepReport,
        count_tokens: bool,
    ) -> Result<(), StoreError> {
        let tokens = if count_tokens {
            report.target_tokens
        } else {
            0
        };
        let result = sqlx::query(
            "UPDATE jobs SET step = $1, total_steps = $2, train_loss = $3, step_seconds = $4, \
             tokens_per_s = $5, trained_tokens = trained_tokens + $6 WHERE id = $7",
        )
        .bind(to_i64("step", report.step)?)
        .bind(to_i64("total_steps", report.total_steps)?)
        .bind(finite(report.loss))
        .bind(finite(report.step_seconds))
        .bind(finite(report.tokens_per_s))
        .bind(to_i64("target_tokens", tokens)?)
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::JobNotFound(id.clone()));
        }
        Ok(())
    }

    /// Per status, the number of jobs and the sums of their attempts,
    /// restarts, failures and trained tokens: one aggregate query, however
    /// long the job history (what `/metrics` reads at each scrape).
    pub async fn job_totals(&self) -> Result<Vec<(JobStatus, JobTotals)>, StoreError> {
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS jobs, COALESCE(SUM(attempt), 0) AS attempts, \
             COALESCE(SUM(CASE WHEN attempt > 1 THEN attempt - 1 ELSE 0 END), 0) AS restarts, \
             COALESCE(SUM(failures), 0) AS failures, \
             COALESCE(SUM(trained_tokens), 0) AS trained_tokens \
             FROM jobs GROUP BY status",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let status = parse_word("job status", row.try_get("status")?, JobStatus::parse)?;
                let totals = JobTotals {
                    jobs: to_u64("jobs", row.try_get("jobs")?)?,
                    attempts: to_u64("attempts", row.try_get("attempts")?)?,
                    restarts: to_u64("restarts", row.try_get("restarts")?)?,
                    failures: to_u64("failures", row.try_get("failures")?)?,
                    trained_tokens: to_u64("trained_tokens", row.try_get("trained_tokens")?)?,
                };
                Ok((status, totals))
            })
            .collect()
    }

    /// The figures of every job in one of `statuses`, in submit order,
    /// without reading their specs.
    pub async fn job_figures(&self, statuses: &[JobStatus]) -> Result<Vec<JobFigures>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, tenant_id, status, step, total_steps, train_loss, valid_loss, \
             step_seconds, tokens_per_s, trained_tokens FROM jobs \
             WHERE instr($1, ',' || status || ',') > 0 ORDER BY seq",
        )
        .bind(status_set(statuses))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let total_steps: Option<i64> = row.try_get("total_steps")?;
                Ok(JobFigures {
                    id: JobId::from(row.try_get::<String, _>("id")?),
                    name: row.try_get("name")?,
                    tenant: TenantId::from_row(row.try_get("tenant_id")?),
                    status: parse_word("job status", row.try_get("status")?, JobStatus::parse)?,
                    step: to_u64("step", row.try_get("step")?)?,
                    total_steps: total_steps
                        .map(|steps| to_u64("total_steps", steps))
                        .transpose()?,
                    progress: progress_from_row(row)?,
                })
            })
            .collect()
    }

    /// Records the loss of a validation pass as the job's latest.
    pub async fn record_eval(&self, id: &JobId, valid_loss: f64) -> Result<(), StoreError> {
        let result = sqlx::query("UPDATE jobs SET valid_loss = $1 WHERE id = $2")
            .bind(finite(valid_loss))
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::JobNotFound(id.clone()));
        }
        Ok(())
    }
}

/// `value`, or NULL for NaN and infinities (which SQLite cannot keep).
fn finite(value: f64) -> Option<f64> {
    value.is_finite().then_some(value)
}

/// `statuses` as one bound text, `,queued,running,` (empty for any), which
/// the list query tests with `instr`.
fn status_set(statuses: &[JobStatus]) -> String {
    if statuses.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = statuses.iter().map(|status| status.name()).collect();
    format!(",{},", names.join(","))
}

/// `$first, $first+1, ...`: `count` numbered parameters.
pub(super) fn placeholders(first: usize, count: usize) -> String {
    let numbers: Vec<String> = (first..first + count).map(|n| format!("${n}")).collect();
    numbers.join(", ")
}

/// The conditional status write behind every move; returns the moved job.
pub(super) async fn update_status(
    conn: &mut Connection,
    id: &JobId,
    to: JobStatus,
    error: Option<&JobError>,
) -> Result<Job, StoreError> {
    let now = unix_now();
    let sources: Vec<&str> = to.sources().iter().map(|status| status.name()).collect();
    let finished_at = to.is_final().then_some(now);
    let sql = format!(
        "UPDATE jobs SET status = $1, finished_at = COALESCE($2, finished_at), \
         waiting_since = CASE WHEN $1 = 'restarting' THEN $3 ELSE waiting_since END, \
         error_code = COALESCE($4, error_code), error_message = COALESCE($5, error_message) \
         WHERE id = $6 AND status IN ({})",
        placeholders(7, sources.len())
    );
    // Audited: only numbered placeholders are spliced in.
    let query = sqlx::query(AssertSqlSafe(sql))
        .bind(to.name())
        .bind(finished_at)
        .bind(now)
        .bind(error.map(|e| e.code.as_str()))
        .bind(error.map(|e| e.message.as_str()))
        .bind(id.as_str());
    let result = sources
        .iter()
        .fold(query, |query, name| query.bind(*name))
        .execute(&mut *conn)
        .await?;
    let job = fetch_job(conn, id).await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::IllegalTransition {
            job: id.clone(),
            from: job.status,
            to,
        });
    }
    Ok(job)
}

fn event_error(e: &JobError) -> EventError {
    EventError {
        code: e.code.clone(),
        message: e.message.clone(),
    }
}

/// The `job.<status>` event a move logs.
pub(super) fn status_event(id: &JobId, status: JobStatus, error: Option<&JobError>) -> NewEvent {
    let event = JobEvent::status_change(status.name(), error.map(event_error))
        .expect("every JobStatus has its event");
    let mut message = match status {
        JobStatus::Queued => format!("job {id} is queued"),
        JobStatus::Starting => format!("job {id} is starting"),
        JobStatus::Running => format!("job {id} is running"),
        JobStatus::Restarting => format!("job {id} is restarting"),
        JobStatus::Succeeded => format!("job {id} succeeded"),
        JobStatus::Failed => format!("job {id} failed"),
        JobStatus::Cancelled => format!("job {id} was cancelled"),
    };
    if let Some(error) = error {
        message = format!("{message}: {}", error.message);
    }
    NewEvent::of(id, &event).with_message(message)
}

pub(super) async fn fetch_job(conn: &mut Connection, id: &JobId) -> Result<Job, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs WHERE id = $1"
    ))
    .bind(id.as_str())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::JobNotFound(id.clone()))?;
    job_from_row(&row)
}

fn job_from_row(row: &DbRow) -> Result<Job, StoreError> {
    let error_code: Option<String> = row.try_get("error_code")?;
    let error_message: Option<String> = row.try_get("error_message")?;
    let error = match (error_code, error_message) {
        (None, None) => None,
        (code, message) => Some(JobError {
            code: code.unwrap_or_default(),
            message: message.unwrap_or_default(),
        }),
    };
    let total_steps: Option<i64> = row.try_get("total_steps")?;
    Ok(Job {
        id: JobId::from(row.try_get::<String, _>("id")?),
        seq: row.try_get("seq")?,
        tenant: TenantId::from_row(row.try_get("tenant_id")?),
        name: row.try_get("name")?,
        spec_yaml: row.try_get("spec_yaml")?,
        priority: row.try_get("priority")?,
        workers_min: to_u32("workers_min", row.try_get("workers_min")?)?,
        workers_max: to_u32("workers_max", row.try_get("workers_max")?)?,
        backend: parse_word("backend", row.try_get("backend")?, Backend::parse)?,
        status: parse_word("job status", row.try_get("status")?, JobStatus::parse)?,
        step: to_u64("step", row.try_get("step")?)?,
        total_steps: total_steps
            .map(|steps| to_u64("total_steps", steps))
            .transpose()?,
        attempt: to_u32("attempt", row.try_get("attempt")?)?,
        failures: to_u32("failures", row.try_get("failures")?)?,
        max_failures: to_u32("max_failures", row.try_get("max_failures")?)?,
        created_at: row.try_get("created_at")?,
        waiting_since: row.try_get("waiting_since")?,
        finished_at: row.try_get("finished_at")?,
        error,
        progress: progress_from_row(row)?,
    })
}

fn progress_from_row(row: &DbRow) -> Result<JobProgress, StoreError> {
    Ok(JobProgress {
        train_loss: row.try_get("train_loss")?,
        valid_loss: row.try_get("valid_loss")?,
        step_seconds: row.try_get("step_seconds")?,
        tokens_per_s: row.try_get("tokens_per_s")?,
        trained_tokens: to_u64("trained_tokens", row.try_get("trained_tokens")?)?,
    })
}
