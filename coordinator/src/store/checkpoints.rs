//! Committed checkpoints: one row per job and step, written once rank 0
//! reports that the checkpoint's manifest is in storage.
//!
//! The bytes live in object storage under the URL recorded here; the store
//! only remembers which steps exist and their metrics, so `checkpoints JOB`,
//! `download --step N|latest|best` and a restart from the latest one need no
//! listing of the bucket. Retention deletes rows with [`Store::delete_checkpoint`]
//! after deleting the files.

use sqlx::Row;

use super::{DbRow, JobId, Store, StoreError, parse_json, to_i64, to_u64, unix_now};

/// A checkpoint to record.
#[derive(Clone, Debug, PartialEq)]
pub struct NewCheckpoint {
    pub job: JobId,
    pub step: u64,
    /// Where its folder is: `file://...`, `s3://...`, or a local path.
    pub url: String,
    /// `{"train_loss": ..., "valid_loss": ...}` or any JSON value.
    pub metrics: serde_json::Value,
}

/// A checkpoint as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub job: JobId,
    pub step: u64,
    pub url: String,
    pub metrics: serde_json::Value,
    pub committed_at: i64,
}

macro_rules! checkpoint_columns {
    () => {
        "job_id, step, url, metrics, committed_at"
    };
}

impl Store {
    /// Records a committed checkpoint. Recording the same step again (a
    /// restarted attempt saving it anew) replaces the earlier row.
    pub async fn record_checkpoint(
        &self,
        checkpoint: &NewCheckpoint,
    ) -> Result<Checkpoint, StoreError> {
        let committed_at = unix_now();
        sqlx::query(
            "INSERT INTO checkpoints (job_id, step, url, metrics, committed_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (job_id, step) DO UPDATE SET url = excluded.url, \
             metrics = excluded.metrics, committed_at = excluded.committed_at",
        )
        .bind(checkpoint.job.as_str())
        .bind(to_i64("step", checkpoint.step)?)
        .bind(&checkpoint.url)
        .bind(checkpoint.metrics.to_string())
        .bind(committed_at)
        .execute(&self.pool)
        .await
        .map_err(|error| match &error {
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                StoreError::JobNotFound(checkpoint.job.clone())
            }
            _ => StoreError::Database(error),
        })?;
        Ok(Checkpoint {
            job: checkpoint.job.clone(),
            step: checkpoint.step,
            url: checkpoint.url.clone(),
            metrics: checkpoint.metrics.clone(),
            committed_at,
        })
    }

    /// Job `job`'s checkpoints, by step (oldest first).
    pub async fn list_checkpoints(&self, job: &JobId) -> Result<Vec<Checkpoint>, StoreError> {
        self.get_job(job).await?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            checkpoint_columns!(),
            " FROM checkpoints WHERE job_id = $1 ORDER BY step"
        ))
        .bind(job.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(checkpoint_from_row).collect()
    }

    /// The checkpoint with the highest step, if any: where a restart resumes.
    pub async fn latest_checkpoint(&self, job: &JobId) -> Result<Option<Checkpoint>, StoreError> {
        self.get_job(job).await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            checkpoint_columns!(),
            " FROM checkpoints WHERE job_id = $1 \
             ORDER BY step DESC LIMIT 1"
        ))
        .bind(job.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(checkpoint_from_row).transpose()
    }

    /// Forgets the checkpoint of `job` at `step`; `false` if there was none.
    pub async fn delete_checkpoint(&self, job: &JobId, step: u64) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM checkpoints WHERE job_id = $1 AND step = $2")
            .bind(job.as_str())
            .bind(to_i64("step", step)?)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }
}

fn checkpoint_from_row(row: &DbRow) -> Result<Checkpoint, StoreError> {
    Ok(Checkpoint {
        job: JobId::from(row.try_get::<String, _>("job_id")?),
        step: to_u64("step", row.try_get("step")?)?,
        url: row.try_get("url")?,
        metrics: parse_json("checkpoint metrics", row.try_get("metrics")?)?,
        committed_at: row.try_get("committed_at")?,
    })
}
