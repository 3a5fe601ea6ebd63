//! The coordinator's state, kept in a database so that a restart loses
//! nothing.
//!
//! [`Store`] is the one handle: [`Store::open`] opens (or creates) a SQLite
//! file in WAL mode with foreign keys on and a busy timeout, and brings its
//! schema up to date from the migrations embedded from
//! `coordinator/migrations/`. Its methods are grouped by table, one file each:
//! tenants and their token hashes (`tenants.rs`), jobs and their status
//! machine (`jobs.rs`), attempts, i.e. placements of a job on a gang of
//! workers (`attempts.rs`), workers (`workers.rs`), the per-job event log
//! (`events.rs`) and committed checkpoints (`checkpoints.rs`);
//! [`Store::snapshot`] reads what a control round needs (`snapshot.rs`).
//!
//! A job moves `queued → starting → running → succeeded | failed |
//! cancelled`, with `restarting` between attempts ([`JobStatus`]). Every
//! status change is a conditional write checked against that machine, so an
//! illegal move is refused with [`StoreError::IllegalTransition`], never
//! written; and it appends its `job.<status>` event in the same
//! transaction, so the event log never misses a transition.
//!
//! Errors ([`StoreError`]) name the object and the problem in one lowercase
//! line (`job job-4f… not found`); [`StoreError::is_not_found`] tells a
//! missing object from a broken database.
//!
//! Not here: deciding placements (`scheduler`), parsing specs (`spec`),
//! talking to workers or clients. Tokens are never stored, only their
//! SHA-256 ([`TokenHash`]).
//!
//! **Architecture invariant:** the only module with SQL. Queries are plain
//! runtime SQL with `$N` parameters that PostgreSQL reads too; the SQLite
//! specifics are the pool options in [`Store::open`] and the auto-assigned
//! keys of the migration (see its header). Times are Unix seconds from the
//! system clock.

mod attempts;
mod checkpoints;
mod events;
mod files;
mod ids;
mod jobs;
mod snapshot;
mod status;
mod tenants;
mod workers;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

pub use attempts::Attempt;
pub use checkpoints::{Checkpoint, NewCheckpoint};
pub use events::{Event, Level, NewEvent};
pub use files::{FileRecord, NewFile};
pub use ids::{JobId, TenantId, WorkerId};
pub use jobs::{
    Job, JobError, JobFigures, JobProgress, JobQuery, JobTotals, NewJob, Page, RestartPlan,
    StepReport,
};
pub use snapshot::StoreSnapshot;
pub use status::JobStatus;
pub use tenants::{Tenant, TokenHash, new_token};
pub use workers::{Worker, WorkerInfo, WorkerState};

/// The database the store runs on. A PostgreSQL store would change this
/// alias, the pool options in [`Store::open`] and the migrations' key types.
type Db = sqlx::Sqlite;
type Connection = <Db as sqlx::Database>::Connection;
type DbRow = <Db as sqlx::Database>::Row;

/// How long a write waits for another connection's write to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The schema, embedded at build time from `coordinator/migrations/`.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The coordinator's state: a pool of connections to one database.
///
/// Cheap to clone (the pool is shared). All methods are async and need a
/// tokio runtime.
#[derive(Clone, Debug)]
pub struct Store {
    pool: sqlx::Pool<Db>,
}

impl Store {
    /// Opens the SQLite database at `path`, creating the file if missing,
    /// and applies any migrations it lacks.
    pub async fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref();
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Store { pool })
    }

    /// Waits for every connection to close (the WAL is checkpointed into
    /// the main file when the last one does).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// What can go wrong reading or writing the coordinator's state.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open state database {}: {source}", path.display())]
    Open { path: PathBuf, source: sqlx::Error },
    #[error(
        "cannot bring the schema of state database {} up to date: {source}",
        path.display()
    )]
    Migrate {
        path: PathBuf,
        source: sqlx::migrate::MigrateError,
    },
    #[error("job {0} not found")]
    JobNotFound(JobId),
    #[error("worker {0} not found")]
    WorkerNotFound(WorkerId),
    #[error("tenant {0} not found")]
    TenantNotFound(TenantId),
    #[error("file {0} not found")]
    FileNotFound(String),
    #[error("job {job} has no attempt {number}")]
    AttemptNotFound { job: JobId, number: u32 },
    #[error("cannot move job {job} from {from} to {to}")]
    IllegalTransition {
        job: JobId,
        from: JobStatus,
        to: JobStatus,
    },
    #[error("cannot place job {job} on worker {worker}: it is {state}, not idle")]
    WorkerUnavailable {
        job: JobId,
        worker: WorkerId,
        state: WorkerState,
    },
    #[error("cannot place job {job} on worker {worker}: it runs {backend}, the job needs {needed}")]
    WrongBackend {
        job: JobId,
        worker: WorkerId,
        backend: job::spec::Backend,
        needed: job::spec::Backend,
    },
    #[error("cannot place job {job} on no workers")]
    EmptyGang { job: JobId },
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidValue {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("state database holds an unreadable {what}: {value:?}")]
    Corrupt { what: &'static str, value: String },
    #[error("state database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// Whether the error says a job, worker, tenant or attempt does not
    /// exist (a client error), as opposed to a refused change or a broken
    /// database.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            StoreError::JobNotFound(_)
                | StoreError::WorkerNotFound(_)
                | StoreError::TenantNotFound(_)
                | StoreError::FileNotFound(_)
                | StoreError::AttemptNotFound { .. }
        )
    }
}

/// The current time in Unix seconds.
pub fn unix_now() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX)
}

/// Parses a word stored in a TEXT column (a status, a level, a backend).
fn parse_word<T>(
    what: &'static str,
    text: String,
    parse: fn(&str) -> Option<T>,
) -> Result<T, StoreError> {
    parse(&text).ok_or(StoreError::Corrupt { what, value: text })
}

/// Reads a JSON TEXT column.
fn parse_json(what: &'static str, text: String) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(&text).map_err(|_| StoreError::Corrupt { what, value: text })
}

/// An INTEGER column that holds a count or a number that fits `u32`.
fn to_u32(what: &'static str, value: i64) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt {
        what,
        value: value.to_string(),
    })
}

/// A BIGINT column that holds a non-negative count.
fn to_u64(what: &'static str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt {
        what,
        value: value.to_string(),
    })
}

/// A count to store in a BIGINT column (SQL integers are signed).
fn to_i64(what: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::InvalidValue {
        what,
        value: value.to_string(),
        reason: "too large to store",
    })
}
