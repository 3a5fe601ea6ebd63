//! Attempts: each placement of a job on a gang of workers.
//!
//! [`Store::start_attempt`] commits one placement atomically: the job moves
//! to `starting` with its attempt number raised, every worker of the gang
//! goes from `idle` to `busy` at its rank, the attempt is written with a
//! fresh secret (the ring's handshake key, handed to exactly these ranks;
//! the store keeps only its SHA-256), and `job.starting` is logged (for a
//! later attempt, with the checkpoint it resumes from: the newest one
//! recorded then). If any worker is not idle, not of the job's backend or
//! unknown, nothing is written. [`Store::finish_attempt`] closes
//! an attempt, counts a failure, and frees the gang; what the job does next
//! (succeed, restart, fail) is a separate [`Store::move_job`].

use std::fmt;

use rand::Rng;
use sha2::{Digest, Sha256};
use sqlx::Row;

use job::JobEvent;
use job::event::{RestartNext, StatusChange};

use super::events::{self, NewEvent};
use super::jobs::{fetch_job, update_status};
use super::workers::{worker_columns, worker_from_row};
use super::{
    Connection, DbRow, JobId, JobStatus, Store, StoreError, WorkerId, parse_json, to_u32, to_u64,
    unix_now,
};

/// One placement of a job.
#[derive(Clone, PartialEq, Eq)]
pub struct Attempt {
    pub job: JobId,
    /// 1 for the first placement, then 2, 3, ...
    pub number: u32,
    /// The gang in rank order: `workers[r]` is rank `r`.
    pub workers: Vec<WorkerId>,
    /// 64 hex digits shared by this attempt's ranks: only on the attempt
    /// [`Store::start_attempt`] returns, to go into the assignments. The
    /// store keeps its SHA-256 only, so a copy of the database holds no
    /// ring key.
    pub secret: Option<String>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// Why it ended, if it failed.
    pub failure: Option<String>,
}

/// Leaves the secret out, so logging an attempt cannot leak it.
impl fmt::Debug for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attempt")
            .field("job", &self.job)
            .field("number", &self.number)
            .field("workers", &self.workers)
            .field("secret", &"<hidden>")
            .field("started_at", &self.started_at)
            .field("finished_at", &self.finished_at)
            .field("failure", &self.failure)
            .finish()
    }
}

macro_rules! attempt_columns {
    () => {
        "job_id, number, workers, secret, started_at, finished_at, failure"
    };
}

impl Store {
    /// Places job `job` on `workers` (rank order) as its next attempt.
    /// The job must be `queued` or `restarting`, the gang's size within the
    /// job's worker range, and every worker idle and of the job's backend.
    pub async fn start_attempt(
        &self,
        job: &JobId,
        workers: &[WorkerId],
    ) -> Result<Attempt, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Writing first takes the write lock before anything is read.
        let moved = update_status(&mut tx, job, JobStatus::Starting, None).await?;
        let size = u32::try_from(workers.len()).unwrap_or(u32::MAX);
        if workers.is_empty() {
            return Err(StoreError::EmptyGang { job: job.clone() });
        }
        if !(moved.workers_min..=moved.workers_max).contains(&size) {
            return Err(StoreError::InvalidValue {
                what: "gang size",
                value: size.to_string(),
                reason: "outside the job's resources.workers range",
            });
        }
        let number = moved.attempt + 1;
        sqlx::query("UPDATE jobs SET attempt = $1 WHERE id = $2")
            .bind(i64::from(number))
            .bind(job.as_str())
            .execute(&mut *tx)
            .await?;
        for (rank, worker) in workers.iter().enumerate() {
            let result = sqlx::query(
                "UPDATE workers SET state = 'busy', job_id = $1, rank = $2 \
                 WHERE id = $3 AND state = 'idle' AND backend = $4",
            )
            .bind(job.as_str())
            .bind(i64::try_from(rank).unwrap_or(i64::MAX))
            .bind(worker.as_str())
            .bind(moved.backend.name())
            .execute(&mut *tx)
            .await?;
            if result.rows_affected() == 0 {
                return Err(refused_worker(&mut tx, job, worker, moved.backend).await);
            }
        }
        let secret_bytes: [u8; 32] = rand::rng().random();
        let attempt = Attempt {
            job: job.clone(),
            number,
            workers: workers.to_vec(),
            secret: Some(hex::encode(secret_bytes)),
            started_at: unix_now(),
            finished_at: None,
            failure: None,
        };
        let worker_names: Vec<&str> = workers.iter().map(WorkerId::as_str).collect();
        sqlx::query(
            "INSERT INTO attempts (job_id, number, workers, secret, started_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(job.as_str())
        .bind(i64::from(number))
        .bind(serde_json::json!(worker_names).to_string())
        .bind(hex::encode(Sha256::digest(hex::encode(secret_bytes))))
        .bind(attempt.started_at)
        .execute(&mut *tx)
        .await?;
        // A later attempt resumes from the newest checkpoint recorded now,
        // which may be newer than the one `job.restarting` named: the
        // ranks of the attempt before could commit one until they stopped.
        let restart = if number > 1 {
            let newest: Option<i64> =
                sqlx::query_scalar("SELECT MAX(step) FROM checkpoints WHERE job_id = $1")
                    .bind(job.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
            Some(RestartNext {
                resume_step: newest.map(|step| to_u64("step", step)).transpose()?,
                backoff_s: 0.0,
                failures: moved.failures,
                max_failures: moved.max_failures,
            })
        } else {
            None
        };
        let mut message = format!("job {job} is starting attempt {number} on {size} workers");
        match restart.as_ref().map(|r| r.resume_step) {
            Some(Some(step)) => message.push_str(&format!(", from its checkpoint at step {step}")),
            Some(None) => message.push_str(", from the start (no checkpoint yet)"),
            None => {}
        }
        let starting = JobEvent::JobStarting(StatusChange {
            status: JobStatus::Starting.name().into(),
            attempt: Some(number),
            workers: worker_names.iter().map(|w| w.to_string()).collect(),
            restart,
            ..StatusChange::default()
        });
        let event = NewEvent::of(job, &starting).with_message(message);
        events::insert(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(attempt)
    }

    /// Ends attempt `number` of `job`: `failure` is why it failed (and
    /// counts against `max_failures`), `None` if it ended well. The gang is
    /// freed: busy workers become idle, draining and lost ones keep their
    /// state. Ending an attempt twice returns it unchanged.
    pub async fn finish_attempt(
        &self,
        job: &JobId,
        number: u32,
        failure: Option<&str>,
    ) -> Result<Attempt, StoreError> {
        let mut tx = self.pool.begin().await?;
        let result = sqlx::query(
            "UPDATE attempts SET finished_at = $1, failure = $2 \
             WHERE job_id = $3 AND number = $4 AND finished_at IS NULL",
        )
        .bind(unix_now())
        .bind(failure)
        .bind(job.as_str())
        .bind(i64::from(number))
        .execute(&mut *tx)
        .await?;
        if result.rows_affected() > 0 {
            if failure.is_some() {
                sqlx::query("UPDATE jobs SET failures = failures + 1 WHERE id = $1")
                    .bind(job.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(
                "UPDATE workers SET state = CASE WHEN state = 'busy' THEN 'idle' ELSE state END, \
                 job_id = NULL, rank = NULL WHERE job_id = $1",
            )
            .bind(job.as_str())
            .execute(&mut *tx)
            .await?;
        }
        let attempt = fetch_attempt(&mut tx, job, number).await?;
        tx.commit().await?;
        Ok(attempt)
    }

    /// Attempt `number` of `job`.
    pub async fn get_attempt(&self, job: &JobId, number: u32) -> Result<Attempt, StoreError> {
        let mut conn = self.pool.acquire().await?;
        fetch_attempt(&mut conn, job, number).await
    }

    /// Every attempt of `job`, first one first.
    pub async fn list_attempts(&self, job: &JobId) -> Result<Vec<Attempt>, StoreError> {
        self.get_job(job).await?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            attempt_columns!(),
            " FROM attempts WHERE job_id = $1 ORDER BY number"
        ))
        .bind(job.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(attempt_from_row).collect()
    }
}

/// Why `worker` could not join `job`'s gang.
async fn refused_worker(
    conn: &mut Connection,
    job: &JobId,
    worker: &WorkerId,
    needed: job::spec::Backend,
) -> StoreError {
    let row = sqlx::query(concat!(
        "SELECT ",
        worker_columns!(),
        " FROM workers WHERE id = $1"
    ))
    .bind(worker.as_str())
    .fetch_optional(&mut *conn)
    .await;
    let found = match row {
        Ok(Some(row)) => worker_from_row(&row),
        Ok(None) => return StoreError::WorkerNotFound(worker.clone()),
        Err(error) => return StoreError::Database(error),
    };
    match found {
        Ok(found) if found.info.backend != needed => StoreError::WrongBackend {
            job: job.clone(),
            worker: worker.clone(),
            backend: found.info.backend,
            needed,
        },
        Ok(found) => StoreError::WorkerUnavailable {
            job: job.clone(),
            worker: worker.clone(),
            state: found.state,
        },
        Err(error) => error,
    }
}

async fn fetch_attempt(
    conn: &mut Connection,
    job: &JobId,
    number: u32,
) -> Result<Attempt, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        attempt_columns!(),
        " FROM attempts WHERE job_id = $1 AND number = $2"
    ))
    .bind(job.as_str())
    .bind(i64::from(number))
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => attempt_from_row(&row),
        None => {
            // Say which is missing: the job or only its attempt.
            fetch_job(conn, job).await?;
            Err(StoreError::AttemptNotFound {
                job: job.clone(),
                number,
            })
        }
    }
}

fn attempt_from_row(row: &DbRow) -> Result<Attempt, StoreError> {
    let workers = match parse_json("attempt workers", row.try_get("workers")?)? {
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                serde_json::Value::String(id) => Ok(WorkerId::from(id)),
                other => Err(StoreError::Corrupt {
                    what: "attempt worker id",
                    value: other.to_string(),
                }),
            })
            .collect::<Result<Vec<_>, _>>()?,
        other => {
            return Err(StoreError::Corrupt {
                what: "attempt workers",
                value: other.to_string(),
            });
        }
    };
    Ok(Attempt {
        job: JobId::from(row.try_get::<String, _>("job_id")?),
        number: to_u32("attempt number", row.try_get("number")?)?,
        workers,
        secret: None,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        failure: row.try_get("failure")?,
    })
}
