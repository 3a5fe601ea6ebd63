//! Protobuf ↔ domain, in one place: the server's side (store rows and
//! enums → the `Jobs` service's messages) and the client's side (those
//! messages → [`client`](crate::client)'s types). A message never travels
//! further than the module that sends or receives it.
//!
//! Going out, every value has a message. Coming in, an enum value this
//! build does not know (or UNSPECIFIED) is an [`UnknownValue`] rather than
//! a guess; strings that are not JSON become null, as before.
//!
//! Not here: the `Workers` service's messages (the agent and
//! `server::workers` read them where they use them).

use serde_json::Value;

use super::generated as api;
use crate::client::types::{self as domain, EventLevel, JobStatus, WorkerState};
use crate::store;
use job::spec::Backend;

/// A value the other side sent that this build has no meaning for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the coordinator sent {what} {value}, which this lorafleet does not know")]
pub struct UnknownValue {
    what: &'static str,
    value: String,
}

impl UnknownValue {
    pub fn new(what: &'static str, value: impl ToString) -> UnknownValue {
        UnknownValue {
            what,
            value: value.to_string(),
        }
    }
}

// ------------------------------------------------------------- enums

impl From<JobStatus> for api::JobStatus {
    fn from(status: JobStatus) -> api::JobStatus {
        match status {
            JobStatus::Queued => api::JobStatus::Queued,
            JobStatus::Starting => api::JobStatus::Starting,
            JobStatus::Running => api::JobStatus::Running,
            JobStatus::Restarting => api::JobStatus::Restarting,
            JobStatus::Succeeded => api::JobStatus::Succeeded,
            JobStatus::Failed => api::JobStatus::Failed,
            JobStatus::Cancelled => api::JobStatus::Cancelled,
        }
    }
}

/// The job status a message's field holds.
pub fn job_status(value: i32) -> Result<JobStatus, UnknownValue> {
    let unknown = || UnknownValue::new("job status", value);
    Ok(
        match api::JobStatus::try_from(value).map_err(|_| unknown())? {
            api::JobStatus::Unspecified => return Err(unknown()),
            api::JobStatus::Queued => JobStatus::Queued,
            api::JobStatus::Starting => JobStatus::Starting,
            api::JobStatus::Running => JobStatus::Running,
            api::JobStatus::Restarting => JobStatus::Restarting,
            api::JobStatus::Succeeded => JobStatus::Succeeded,
            api::JobStatus::Failed => JobStatus::Failed,
            api::JobStatus::Cancelled => JobStatus::Cancelled,
        },
    )
}

impl From<EventLevel> for api::EventLevel {
    fn from(level: EventLevel) -> api::EventLevel {
        match level {
            EventLevel::Info => api::EventLevel::Info,
            EventLevel::Warn => api::EventLevel::Warn,
            EventLevel::Error => api::EventLevel::Error,
        }
    }
}

/// The event level a message's field holds.
pub fn event_level(value: i32) -> Result<EventLevel, UnknownValue> {
    let unknown = || UnknownValue::new("event level", value);
    Ok(
        match api::EventLevel::try_from(value).map_err(|_| unknown())? {
            api::EventLevel::Unspecified => return Err(unknown()),
            api::EventLevel::Info => EventLevel::Info,
            api::EventLevel::Warn => EventLevel::Warn,
            api::EventLevel::Error => EventLevel::Error,
        },
    )
}

impl From<Backend> for api::Backend {
    fn from(backend: Backend) -> api::Backend {
        match backend {
            Backend::Cpu => api::Backend::Cpu,
            Backend::Cuda => api::Backend::Cuda,
            Backend::Tch => api::Backend::Tch,
        }
    }
}

/// The backend a message's field holds.
pub fn backend(value: i32) -> Result<Backend, UnknownValue> {
    let unknown = || UnknownValue::new("backend", value);
    Ok(
        match api::Backend::try_from(value).map_err(|_| unknown())? {
            api::Backend::Unspecified => return Err(unknown()),
            api::Backend::Cpu => Backend::Cpu,
            api::Backend::Cuda => Backend::Cuda,
            api::Backend::Tch => Backend::Tch,
        },
    )
}

impl From<WorkerState> for api::WorkerState {
    fn from(state: WorkerState) -> api::WorkerState {
        match state {
            WorkerState::Idle => api::WorkerState::Idle,
            WorkerState::Busy => api::WorkerState::Busy,
            WorkerState::Draining => api::WorkerState::Draining,
            WorkerState::Lost => api::WorkerState::Lost,
        }
    }
}

/// The worker state a message's field holds.
pub fn worker_state(value: i32) -> Result<WorkerState, UnknownValue> {
    let unknown = || UnknownValue::new("worker state", value);
    Ok(
        match api::WorkerState::try_from(value).map_err(|_| unknown())? {
            api::WorkerState::Unspecified => return Err(unknown()),
            api::WorkerState::Idle => WorkerState::Idle,
            api::WorkerState::Busy => WorkerState::Busy,
            api::WorkerState::Draining => WorkerState::Draining,
            api::WorkerState::Lost => WorkerState::Lost,
        },
    )
}

// ------------------------------------------------ server: store → message

impl From<&store::Job> for api::Job {
    fn from(job: &store::Job) -> api::Job {
        api::Job {
            id: job.id.to_string(),
            name: job.name.clone(),
            status: api::JobStatus::from(job.status).into(),
            created_at: job.created_at,
            finished_at: job.finished_at,
            step: job.step,
            total_steps: job.total_steps,
            attempt: job.attempt,
            error: job.error.as_ref().map(|e| api::JobError {
                code: e.code.clone(),
                message: e.message.clone(),
            }),
            priority: job.priority,
            workers_min: job.workers_min,
            workers_max: job.workers_max,
            backend: api::Backend::from(job.backend).into(),
            failures: job.failures,
            max_failures: job.max_failures,
            spec_yaml: job.spec_yaml.clone(),
            tenant: job.tenant.to_string(),
            train_loss: job.progress.train_loss,
            valid_loss: job.progress.valid_loss,
            step_seconds: job.progress.step_seconds,
            tokens_per_s: job.progress.tokens_per_s,
            trained_tokens: job.progress.trained_tokens,
            eta_seconds: job.eta_seconds(),
        }
    }
}

impl From<store::Event> for api::JobEvent {
    fn from(event: store::Event) -> api::JobEvent {
        api::JobEvent {
            id: event.id,
            job_id: event.job.to_string(),
            created_at: event.created_at,
            level: api::EventLevel::from(event.level).into(),
            r#type: event.kind,
            message: event.message,
            data_json: event.data.to_string(),
        }
    }
}

impl From<&store::Checkpoint> for api::Checkpoint {
    fn from(c: &store::Checkpoint) -> api::Checkpoint {
        api::Checkpoint {
            step: c.step,
            url: c.url.clone(),
            metrics_json: c.metrics.to_string(),
            committed_at: c.committed_at,
        }
    }
}

// ---------------------------------------------- client: message → domain

impl TryFrom<api::Job> for domain::Job {
    type Error = UnknownValue;

    fn try_from(job: api::Job) -> Result<domain::Job, UnknownValue> {
        Ok(domain::Job {
            status: job_status(job.status)?,
            id: job.id,
            name: job.name,
            created_at: job.created_at,
            finished_at: job.finished_at,
            step: job.step,
            total_steps: job.total_steps,
            attempt: job.attempt,
            error: job.error.map(|e| domain::JobError {
                code: e.code,
                message: e.message,
            }),
            priority: job.priority,
            workers_min: job.workers_min,
            workers_max: job.workers_max,
            backend: backend(job.backend)?.name().to_string(),
            failures: job.failures,
            max_failures: job.max_failures,
            spec_yaml: job.spec_yaml,
            tenant: job.tenant,
            train_loss: job.train_loss,
            valid_loss: job.valid_loss,
            step_seconds: job.step_seconds,
            tokens_per_s: job.tokens_per_s,
            trained_tokens: job.trained_tokens,
            eta_seconds: job.eta_seconds,
        })
    }
}

impl TryFrom<api::JobList> for domain::JobPage {
    type Error = UnknownValue;

    fn try_from(list: api::JobList) -> Result<domain::JobPage, UnknownValue> {
        Ok(domain::JobPage {
            data: list
                .data
                .into_iter()
                .map(domain::Job::try_from)
                .collect::<Result<_, _>>()?,
            has_more: list.has_more,
        })
    }
}

impl TryFrom<api::JobEvent> for domain::Event {
    type Error = UnknownValue;

    fn try_from(event: api::JobEvent) -> Result<domain::Event, UnknownValue> {
        Ok(domain::Event {
            level: event_level(event.level)?,
            id: event.id,
            job_id: event.job_id,
            created_at: event.created_at,
            kind: event.r#type,
            message: event.message,
            data: json_or_null(&event.data_json),
        })
    }
}

impl From<api::Checkpoint> for domain::Checkpoint {
    fn from(c: api::Checkpoint) -> domain::Checkpoint {
        domain::Checkpoint {
            step: c.step,
            metrics: json_or_null(&c.metrics_json),
            url: c.url,
            committed_at: c.committed_at,
        }
    }
}

impl From<api::FileChunk> for domain::FileChunk {
    fn from(chunk: api::FileChunk) -> domain::FileChunk {
        domain::FileChunk {
            path: chunk.path,
            data: chunk.data,
            sha256: (!chunk.sha256.is_empty()).then_some(chunk.sha256),
            step: chunk.step,
        }
    }
}

impl From<api::DatasetRef> for domain::Uploaded {
    fn from(r: api::DatasetRef) -> domain::Uploaded {
        domain::Uploaded {
            url: r.url,
            sha256: r.sha256,
            size_bytes: r.size_bytes,
        }
    }
}

impl TryFrom<api::WorkerInfo> for domain::Worker {
    type Error = UnknownValue;

    fn try_from(w: api::WorkerInfo) -> Result<domain::Worker, UnknownValue> {
        let state = worker_state(w.state)?;
        Ok(domain::Worker {
            id: w.id,
            name: w.name,
            host: w.host,
            backend: backend(w.backend)?.name().to_string(),
            device: w.device,
            memory_bytes: w.memory_bytes,
            version: w.version,
            state,
            job_id: (!w.job_id.is_empty()).then_some(w.job_id),
            rank: w.rank,
            registered_at: w.registered_at,
            last_heartbeat: w.last_heartbeat,
            ring_addr: w.ring_addr,
        })
    }
}

/// A submission as the request that carries it, stamped with `version`.
pub fn submit_request(submission: domain::Submission, version: &str) -> api::SubmitRequest {
    api::SubmitRequest {
        spec_yaml: submission.spec_yaml,
        file_name: submission.file_name,
        base_dir: submission.base_dir,
        datasets: submission.datasets,
        version: version.to_string(),
        model_files: submission
            .model_files
            .into_iter()
            .map(|(name, url)| api::UploadedFile { name, url })
            .collect(),
        model_is_folder: submission.model_is_folder,
    }
}

/// `text` as a JSON value, or null when it is empty or not JSON.
fn json_or_null(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_status_goes_and_comes_back() {
        for status in JobStatus::ALL {
            let wire: i32 = api::JobStatus::from(status).into();
            assert_eq!(job_status(wire), Ok(status));
        }
        assert!(job_status(0).is_err(), "UNSPECIFIED is no status");
        assert!(job_status(99).is_err());
    }

    #[test]
    fn every_event_level_goes_and_comes_back() {
        for level in [EventLevel::Info, EventLevel::Warn, EventLevel::Error] {
            let wire: i32 = api::EventLevel::from(level).into();
            assert_eq!(event_level(wire), Ok(level));
        }
        let err = event_level(0).unwrap_err();
        assert!(err.to_string().contains("event level 0"), "{err}");
    }

    #[test]
    fn a_job_reads_back_with_its_status_and_error() {
        let message = api::Job {
            id: "j-1".into(),
            name: "quickstart".into(),
            status: api::JobStatus::Failed.into(),
            backend: api::Backend::Cuda.into(),
            total_steps: Some(20),
            error: Some(api::JobError {
                code: "max_failures".into(),
                message: "rank 1 ran out of memory".into(),
            }),
            ..api::Job::default()
        };
        let job = domain::Job::try_from(message).unwrap();
        assert_eq!(job.status, JobStatus::Failed);
        assert_eq!(job.backend, "cuda");
        assert_eq!(job.total_steps, Some(20));
        assert_eq!(job.error.unwrap().code, "max_failures");
        assert!(domain::Job::try_from(api::Job::default()).is_err());
    }

    #[test]
    fn events_parse_their_data_and_tolerate_garbage() {
        let message = api::JobEvent {
            id: 3,
            level: api::EventLevel::Warn.into(),
            r#type: "worker.lost".into(),
            data_json: r#"{"rank": 1}"#.into(),
            ..api::JobEvent::default()
        };
        let event = domain::Event::try_from(message.clone()).unwrap();
        assert_eq!(event.level, EventLevel::Warn);
        assert_eq!(event.kind, "worker.lost");
        assert_eq!(event.data["rank"], 1);
        let garbage = api::JobEvent {
            data_json: "{not json".into(),
            ..message
        };
        assert_eq!(domain::Event::try_from(garbage).unwrap().data, Value::Null);
    }

    #[test]
    fn chunks_and_workers_say_none_for_empty_fields() {
        let chunk = domain::FileChunk::from(api::FileChunk {
            path: "a".into(),
            data: b"x".to_vec(),
            sha256: String::new(),
            step: 4,
        });
        assert_eq!(chunk.sha256, None);
        let worker = api::WorkerInfo {
            id: "w-1".into(),
            state: api::WorkerState::Idle.into(),
            backend: api::Backend::Cuda.into(),
            ..api::WorkerInfo::default()
        };
        let worker = domain::Worker::try_from(worker).unwrap();
        assert_eq!((worker.state, worker.job_id), (WorkerState::Idle, None));
        assert_eq!(worker.backend, "cuda");
        for odd in [
            api::WorkerInfo {
                state: 99,
                backend: api::Backend::Cpu.into(),
                ..api::WorkerInfo::default()
            },
            api::WorkerInfo {
                state: api::WorkerState::Busy.into(),
                ..api::WorkerInfo::default()
            },
        ] {
            assert!(domain::Worker::try_from(odd).is_err());
        }
        for b in Backend::ALL {
            assert_eq!(backend(api::Backend::from(*b).into()).unwrap(), *b);
        }
        for w in [
            WorkerState::Idle,
            WorkerState::Busy,
            WorkerState::Draining,
            WorkerState::Lost,
        ] {
            assert_eq!(worker_state(api::WorkerState::from(w).into()).unwrap(), w);
        }
    }
}
