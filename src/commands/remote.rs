//! Compatibility only: the names `run` and `chaos` still import from
//! here, forwarding to where they now live (`connection`, `output`,
//! `cli::RemoteArgs`), plus the word-status job view ([`JobWithWords`])
//! and the raw-stub helpers they use. New code uses `crate::connection`,
//! `crate::output` and `coordinator::client`'s typed calls; this module
//! goes once `run.rs` and `chaos/` have moved to them.
//!
//! Not here: anything new.

use anyhow::Context;
use coordinator::client::{CallError, Connection};

pub use crate::cli::RemoteArgs;
pub use crate::connection::{block_on, connect};
pub use crate::output::{job_json, parse_json};

/// `status` (a failed raw-stub call) as an error whose text is what the
/// coordinator said; exit codes and retries see a [`CallError`].
pub fn rpc(status: tonic::Status) -> anyhow::Error {
    anyhow::Error::new(CallError::from(status))
}

/// The failed call in `err`'s chain, if it is one worth making again.
pub fn transient_status(err: &anyhow::Error) -> Option<CallError> {
    crate::connection::transient_call(err)
}

/// Statuses after which a job changes no more, as words.
pub fn is_final(status: &str) -> bool {
    coordinator::client::JobStatus::parse(status).is_some_and(|s| s.is_final())
}

/// A job with its status as a word and its error as the API's message:
/// the shape `chaos` reads and rewrites (a `hung` status of its own).
#[derive(Clone, Debug)]
pub struct JobWithWords {
    pub id: String,
    pub name: String,
    pub status: String,
    pub step: u64,
    pub attempt: u32,
    pub failures: u32,
    pub error: Option<coordinator::api::JobError>,
}

impl From<coordinator::client::Job> for JobWithWords {
    fn from(job: coordinator::client::Job) -> JobWithWords {
        JobWithWords {
            status: job.status.name().to_string(),
            error: job.error.map(|e| coordinator::api::JobError {
                code: e.code,
                message: e.message,
            }),
            id: job.id,
            name: job.name,
            step: job.step,
            attempt: job.attempt,
            failures: job.failures,
        }
    }
}

/// Asks for job `id`.
pub async fn get_job(conn: &Connection, id: &str) -> anyhow::Result<JobWithWords> {
    let job = conn
        .status(id)
        .await
        .with_context(|| format!("cannot get job {id}"))?;
    Ok(job.into())
}
