//! Workers: every agent that registered, what it offers, what it runs now
//! and when it was last heard from.
//!
//! A worker is `idle` or `busy` (assigned to a job at a rank through
//! [`Store::start_attempt`], freed by [`Store::finish_attempt`]),
//! `draining` (finishes its job, takes no new one) or `lost` (missed its
//! heartbeats). A heartbeat brings a lost worker back. Each worker's
//! session secret is kept as its SHA-256 only. Deciding that a
//! worker is lost (how long a silence is too long) is the server's call:
//! [`Store::workers_silent_since`] only finds the silent ones.

use std::fmt;

use sqlx::Row;

use super::{
    DbRow, JobId, Store, StoreError, TokenHash, WorkerId, parse_word, to_i64, to_u32, to_u64,
    unix_now,
};
use job::spec::Backend;

/// Whether a worker can take work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkerState {
    Idle,
    Busy,
    Draining,
    Lost,
}

impl WorkerState {
    pub fn name(self) -> &'static str {
        match self {
            WorkerState::Idle => "idle",
            WorkerState::Busy => "busy",
            WorkerState::Draining => "draining",
            WorkerState::Lost => "lost",
        }
    }

    pub fn parse(text: &str) -> Option<WorkerState> {
        [
            WorkerState::Idle,
            WorkerState::Busy,
            WorkerState::Draining,
            WorkerState::Lost,
        ]
        .into_iter()
        .find(|state| state.name() == text)
    }
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a worker says about itself when it registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    /// A name for people (`gpu-node-3/0`); need not be unique.
    pub name: String,
    pub host: String,
    pub backend: Backend,
    /// The device it trains on, e.g. `cpu`, `cuda:0`.
    pub device: String,
    pub memory_bytes: u64,
    /// lorafleet version of the worker binary.
    pub version: String,
}

/// A worker as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Worker {
    pub id: WorkerId,
    pub info: WorkerInfo,
    pub state: WorkerState,
    /// The job it is assigned to and its rank there, while busy (or
    /// draining or lost with a job).
    pub assignment: Option<(JobId, u32)>,
    pub registered_at: i64,
    pub last_heartbeat: i64,
}

macro_rules! worker_columns {
    () => {
        "id, name, host, backend, device, memory_bytes, version, state, \
     job_id, rank, registered_at, last_heartbeat"
    };
}
pub(super) use worker_columns;

impl Store {
    /// Registers a new worker, idle, with a fresh id.
    pub async fn register_worker(&self, info: &WorkerInfo) -> Result<Worker, StoreError> {
        let id = WorkerId::generate();
        let now = unix_now();
        sqlx::query(
            "INSERT INTO workers (id, name, host, backend, device, memory_bytes, version, state, \
             registered_at, last_heartbeat) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        )
        .bind(id.as_str())
        .bind(&info.name)
        .bind(&info.host)
        .bind(info.backend.name())
        .bind(&info.device)
        .bind(to_i64("memory_bytes", info.memory_bytes)?)
        .bind(&info.version)
        .bind(WorkerState::Idle.name())
        .bind(now)
        .execute(&self.pool)
        .await?;
        self.get_worker(&id).await
    }

    pub async fn get_worker(&self, id: &WorkerId) -> Result<Worker, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            worker_columns!(),
            " FROM workers WHERE id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::WorkerNotFound(id.clone()))?;
        worker_from_row(&row)
    }

    /// Every worker ever registered, oldest first.
    pub async fn list_workers(&self) -> Result<Vec<Worker>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            worker_columns!(),
            " FROM workers ORDER BY registered_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(worker_from_row).collect()
    }

    /// Notes that worker `id` is alive. A lost worker comes back `busy` if
    /// it still has a job, `idle` otherwise.
    pub async fn heartbeat_worker(&self, id: &WorkerId) -> Result<Worker, StoreError> {
        let result = sqlx::query(
            "UPDATE workers SET last_heartbeat = $1, state = CASE \
             WHEN state <> 'lost' THEN state WHEN job_id IS NULL THEN 'idle' ELSE 'busy' END \
             WHERE id = $2",
        )
        .bind(unix_now())
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::WorkerNotFound(id.clone()));
        }
        self.get_worker(id).await
    }

    /// Marks worker `id` draining: it keeps its job but gets no new one.
    pub async fn drain_worker(&self, id: &WorkerId) -> Result<Worker, StoreError> {
        self.set_worker_state(id, WorkerState::Draining).await
    }

    /// Lets draining worker `id` take work again: `busy` while it still has
    /// a job, `idle` otherwise. A worker that is not draining is left as it
    /// is.
    pub async fn undrain_worker(&self, id: &WorkerId) -> Result<Worker, StoreError> {
        sqlx::query(
            "UPDATE workers SET state = CASE WHEN job_id IS NULL THEN 'idle' ELSE 'busy' END \
             WHERE id = $1 AND state = 'draining'",
        )
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        self.get_worker(id).await
    }

    /// Keeps the hash of worker `id`'s session secret (replacing any
    /// earlier one).
    pub async fn set_worker_secret(
        &self,
        id: &WorkerId,
        secret: &TokenHash,
    ) -> Result<(), StoreError> {
        let result = sqlx::query("UPDATE workers SET secret_sha256 = $1 WHERE id = $2")
            .bind(secret.to_hex())
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::WorkerNotFound(id.clone()));
        }
        Ok(())
    }

    /// The hash of worker `id`'s session secret, if it has one.
    pub async fn worker_secret(&self, id: &WorkerId) -> Result<Option<TokenHash>, StoreError> {
        let row = sqlx::query("SELECT secret_sha256 FROM workers WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::WorkerNotFound(id.clone()))?;
        let hex: Option<String> = row.try_get("secret_sha256")?;
        Ok(hex.and_then(|h| TokenHash::from_hex(&h).ok()))
    }

    /// Marks worker `id` lost. Its assignment is kept, so the server knows
    /// which job lost a rank; [`Store::finish_attempt`] clears it.
    pub async fn mark_worker_lost(&self, id: &WorkerId) -> Result<Worker, StoreError> {
        self.set_worker_state(id, WorkerState::Lost).await
    }

    /// Workers not lost whose last heartbeat is older than `cutoff` (Unix
    /// seconds), oldest heartbeat first.
    pub async fn workers_silent_since(&self, cutoff: i64) -> Result<Vec<Worker>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            worker_columns!(),
            " FROM workers WHERE state <> 'lost' AND last_heartbeat < $1 \
             ORDER BY last_heartbeat, id"
        ))
        .bind(cutoff)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(worker_from_row).collect()
    }

    async fn set_worker_state(
        &self,
        id: &WorkerId,
        state: WorkerState,
    ) -> Result<Worker, StoreError> {
        let result = sqlx::query("UPDATE workers SET state = $1 WHERE id = $2")
            .bind(state.name())
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::WorkerNotFound(id.clone()));
        }
        self.get_worker(id).await
    }
}

pub(super) fn worker_from_row(row: &DbRow) -> Result<Worker, StoreError> {
    let job: Option<String> = row.try_get("job_id")?;
    let rank: Option<i64> = row.try_get("rank")?;
    let assignment = match (job, rank) {
        (Some(job), Some(rank)) => Some((JobId::from(job), to_u32("rank", rank)?)),
        _ => None,
    };
    Ok(Worker {
        id: WorkerId::from(row.try_get::<String, _>("id")?),
        info: WorkerInfo {
            name: row.try_get("name")?,
            host: row.try_get("host")?,
            backend: parse_word("backend", row.try_get("backend")?, Backend::parse)?,
            device: row.try_get("device")?,
            memory_bytes: to_u64("memory_bytes", row.try_get("memory_bytes")?)?,
            version: row.try_get("version")?,
        },
        state: parse_word("worker state", row.try_get("state")?, WorkerState::parse)?,
        assignment,
        registered_at: row.try_get("registered_at")?,
        last_heartbeat: row.try_get("last_heartbeat")?,
    })
}
