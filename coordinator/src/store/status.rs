//! The job status machine (docs/ARCHITECTURE.md): which status may follow which.
//!
//! ```text
//! queued ──► starting ──► running ──► succeeded
//!   │          │  ▲         │
//!   │          ▼  │         ├──► failed
//!   │        restarting ◄───┤
//!   │          │            └──► cancelled
//!   └──────────┴─► cancelled, failed (from any non-final status)
//! ```
//!
//! [`JobStatus::can_move_to`] is the whole table; the store checks every
//! write against it.

use std::fmt;

/// Where a job stands (docs/ARCHITECTURE.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobStatus {
    /// Waiting for a gang of workers.
    Queued,
    /// Placed; its workers are joining the ring.
    Starting,
    /// Every rank has started training.
    Running,
    /// An attempt failed; waiting to be placed again.
    Restarting,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 7] = [
        JobStatus::Queued,
        JobStatus::Starting,
        JobStatus::Running,
        JobStatus::Restarting,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    /// The word used in the database, the API and `--json` output.
    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Starting => "starting",
            JobStatus::Running => "running",
            JobStatus::Restarting => "restarting",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<JobStatus> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.name() == text)
    }

    /// `succeeded`, `failed` and `cancelled`: nothing moves a job out of them.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// `queued` and `restarting`: the job needs a placement.
    pub fn is_waiting(self) -> bool {
        matches!(self, JobStatus::Queued | JobStatus::Restarting)
    }

    /// Whether a job may move from `self` to `next`.
    pub fn can_move_to(self, next: JobStatus) -> bool {
        use JobStatus::*;
        match (self, next) {
            (from, _) if from.is_final() => false,
            (_, Failed | Cancelled) => true,
            (Queued | Restarting, Starting) => true,
            (Starting, Running) => true,
            (Starting | Running, Restarting) => true,
            (Running, Succeeded) => true,
            _ => false,
        }
    }

    /// The statuses a job may reach `self` from.
    pub(super) fn sources(self) -> Vec<JobStatus> {
        JobStatus::ALL
            .into_iter()
            .filter(|from| from.can_move_to(self))
            .collect()
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
