//! A job's event log: `job.queued`, `train.metrics`, `checkpoint.saved`,
//! `worker.lost`, ... each with a level, a message and a JSON payload.
//!
//! Event ids grow with every append across all jobs, so a client that has
//! seen event `N` asks for [`Store::events_after`] `N` to replay what it
//! missed, then keeps asking with the last id it got to follow the log
//! (`logs -f`, `WatchEvents`). Waking followers when an event lands is the
//! server's business, not the store's.

use sqlx::Row;

use super::{
    Connection, DbRow, JobId, Store, StoreError, WorkerId, parse_json, parse_word, unix_now,
};

pub use job::event::Level;

/// An event to append.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub job: JobId,
    pub level: Level,
    /// The event's type (`type` in JSON), e.g. `train.metrics`.
    pub kind: String,
    pub message: String,
    /// Any JSON value; `null` when there is nothing more to say.
    pub data: serde_json::Value,
}

impl NewEvent {
    /// `event` of `job`, with its own level, type, message and data.
    pub fn of(job: &JobId, event: &job::JobEvent) -> NewEvent {
        NewEvent {
            job: job.clone(),
            level: event.level(),
            kind: event.kind().to_string(),
            message: event.to_string(),
            data: event.to_data(),
        }
    }

    /// The same event with a message that says more than the event's own
    /// (the job's id, say).
    pub fn with_message(mut self, message: impl Into<String>) -> NewEvent {
        self.message = message.into();
        self
    }
}

/// An event as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Increases with every append, across all jobs.
    pub id: i64,
    pub job: JobId,
    pub created_at: i64,
    pub level: Level,
    pub kind: String,
    pub message: String,
    pub data: serde_json::Value,
}

impl Store {
    /// Appends an event to its job's log.
    pub async fn append_event(&self, event: &NewEvent) -> Result<Event, StoreError> {
        let mut conn = self.pool.acquire().await?;
        insert(&mut conn, event).await
    }

    /// Job `job`'s events with an id above `after` (0: from the start), in
    /// order, at most `limit` of them.
    pub async fn events_after(
        &self,
        job: &JobId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, job_id, created_at, level, type, message, data FROM events \
             WHERE job_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(job.as_str())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            // An unknown job is an error, not an empty log.
            self.get_job(job).await?;
        }
        rows.iter().map(event_from_row).collect()
    }

    /// A page of job `job`'s events, newest first, with ids below
    /// `before` (`None`: from the newest).
    pub async fn events_before(
        &self,
        job: &JobId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<super::Page<Event>, StoreError> {
        let limit = limit.max(1);
        let rows = sqlx::query(
            "SELECT id, job_id, created_at, level, type, message, data FROM events \
             WHERE job_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(job.as_str())
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut data = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let has_more = data.len() > limit as usize;
        data.truncate(limit as usize);
        Ok(super::Page { data, has_more })
    }
}

impl Store {
    /// The number of the newest event that worker `worker` reported for
    /// attempt `attempt` of `job` (0: none yet).
    pub async fn event_cursor(
        &self,
        job: &JobId,
        attempt: u32,
        worker: &WorkerId,
    ) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT last_seq FROM event_cursors \
             WHERE job_id = $1 AND attempt = $2 AND worker_id = $3",
        )
        .bind(job.as_str())
        .bind(i64::from(attempt))
        .bind(worker.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(row) => row.try_get::<i64, _>("last_seq")?.max(0) as u64,
            None => 0,
        })
    }

    /// Appends `event`, the one numbered `seq` by the agent of `worker` for
    /// attempt `attempt`, and moves that agent's cursor to it, in one
    /// transaction: a crash keeps both or neither.
    pub async fn append_reported_event(
        &self,
        event: &NewEvent,
        attempt: u32,
        worker: &WorkerId,
        seq: u64,
    ) -> Result<Event, StoreError> {
        let mut tx = self.pool.begin().await?;
        let stored = insert(&mut tx, event).await?;
        sqlx::query(
            "INSERT INTO event_cursors (job_id, attempt, worker_id, last_seq) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (job_id, attempt, worker_id) DO UPDATE SET last_seq = excluded.last_seq",
        )
        .bind(event.job.as_str())
        .bind(i64::from(attempt))
        .bind(worker.as_str())
        .bind(seq as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(stored)
    }
}

/// Appends `event` on `conn`, inside the caller's transaction if it has one.
pub(super) async fn insert(conn: &mut Connection, event: &NewEvent) -> Result<Event, StoreError> {
    let created_at = unix_now();
    let row = sqlx::query(
        "INSERT INTO events (job_id, created_at, level, type, message, data) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(event.job.as_str())
    .bind(created_at)
    .bind(event.level.name())
    .bind(&event.kind)
    .bind(&event.message)
    .bind(event.data.to_string())
    .fetch_one(&mut *conn)
    .await
    .map_err(|error| match &error {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            StoreError::JobNotFound(event.job.clone())
        }
        _ => StoreError::Database(error),
    })?;
    Ok(Event {
        id: row.try_get("id")?,
        job: event.job.clone(),
        created_at,
        level: event.level,
        kind: event.kind.clone(),
        message: event.message.clone(),
        data: event.data.clone(),
    })
}

fn event_from_row(row: &DbRow) -> Result<Event, StoreError> {
    Ok(Event {
        id: row.try_get("id")?,
        job: JobId::from(row.try_get::<String, _>("job_id")?),
        created_at: row.try_get("created_at")?,
        level: parse_word("event level", row.try_get("level")?, Level::parse)?,
        kind: row.try_get("type")?,
        message: row.try_get("message")?,
        data: parse_json("event data", row.try_get("data")?)?,
    })
}
