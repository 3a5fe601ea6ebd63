//! What the control loop reads each round, in one call: the jobs waiting
//! for workers and those holding them, every worker, and the current
//! attempt of each running elastic job.
//!
//! Not here: what the coordinator knows only in memory (live links,
//! backoffs, fences) and the decisions (`plan`).

use super::{Attempt, Job, JobStatus, Store, StoreError, Worker};

/// The store's rows for one control round.
#[derive(Clone, Debug, Default)]
pub struct StoreSnapshot {
    /// Jobs `queued` or `restarting`, in submit order.
    pub waiting: Vec<Job>,
    /// Jobs `starting` or `running`, in submit order.
    pub active: Vec<Job>,
    /// Every registered worker.
    pub workers: Vec<Worker>,
    /// The current attempt of each running job whose worker range is wider
    /// than one count (those that may grow), in submit order.
    pub elastic_attempts: Vec<Attempt>,
}

impl Store {
    /// Reads the rows of a control round. The reads are not one
    /// transaction: the coordinator's control lock keeps the decisions
    /// that change them out meanwhile.
    pub async fn snapshot(&self) -> Result<StoreSnapshot, StoreError> {
        use JobStatus::{Queued, Restarting, Running, Starting};
        let jobs = self
            .jobs_with_status(&[Queued, Restarting, Starting, Running])
            .await?;
        let (waiting, active): (Vec<Job>, Vec<Job>) = jobs
            .into_iter()
            .partition(|job| matches!(job.status, Queued | Restarting));
        let workers = self.list_workers().await?;
        let mut elastic_attempts = Vec::new();
        for job in &active {
            if job.status == Running && job.workers_max > job.workers_min {
                elastic_attempts.push(self.get_attempt(&job.id, job.attempt).await?);
            }
        }
        Ok(StoreSnapshot {
            waiting,
            active,
            workers,
            elastic_attempts,
        })
    }
}
