//! Each job's stored spec, parsed once per job per process.
//!
//! A job's `spec_yaml` is written at submit and never changes, so a parsed
//! spec never goes stale: [`Specs::of`] parses it on first use and hands
//! out the same [`Arc`] after. A spec that no longer reads is not kept
//! (every caller reports the error in its own words).
//!
//! Not here: reading a spec a client submits (`jobs`, with the client's
//! folder), or what the spec means for a placement (`control`, `inputs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use job::spec::JobSpec;

use crate::store::{Job, JobId};

/// The parsed stored specs, by job.
#[derive(Default)]
pub(super) struct Specs {
    parsed: Mutex<HashMap<JobId, Arc<JobSpec>>>,
}

impl Specs {
    /// The stored spec of `job`; the error is the parser's message.
    pub(super) fn of(&self, job: &Job) -> Result<Arc<JobSpec>, String> {
        if let Some(spec) = self.lock().get(&job.id) {
            return Ok(Arc::clone(spec));
        }
        // Parsed outside the lock; a race parses twice and keeps the first.
        let spec =
            JobSpec::from_yaml(&job.spec_yaml, "job.yaml", "/").map_err(|e| e.to_string())?;
        let mut parsed = self.lock();
        Ok(Arc::clone(
            parsed
                .entry(job.id.clone())
                .or_insert_with(|| Arc::new(spec)),
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Arc<JobSpec>>> {
        self.parsed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{JobStatus, TenantId};

    fn job(id: &str, spec_yaml: &str) -> Job {
        Job {
            id: JobId::from(id),
            seq: 1,
            tenant: TenantId::new("t").unwrap(),
            name: id.into(),
            spec_yaml: spec_yaml.into(),
            priority: 0,
            workers_min: 1,
            workers_max: 1,
            backend: job::spec::Backend::Cpu,
            status: JobStatus::Queued,
            step: 0,
            total_steps: None,
            attempt: 0,
            failures: 0,
            max_failures: 0,
            created_at: 0,
            waiting_since: 0,
            finished_at: None,
            error: None,
            progress: Default::default(),
        }
    }

    #[test]
    fn a_spec_is_parsed_once_and_a_broken_one_is_not_kept() {
        let specs = Specs::default();
        let broken = job("j", "model: [");
        assert!(specs.of(&broken).is_err());
        assert!(specs.lock().is_empty());
        let yaml =
            "name: t\nmodel: {preset: tiny}\ndataset: {train: d}\ntraining: {max_steps: 1}\n";
        let first = specs.of(&job("k", yaml)).unwrap();
        // Read again by job id, not from the text.
        let again = specs.of(&job("k", "not even yaml: [")).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
    }
}
