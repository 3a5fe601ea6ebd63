//! The `--json` shapes of what the coordinator reports (README.md, "A fleet": keys
//! are a contract, added never renamed; statuses and levels are the
//! lower-case words) and the plain renderings shared by the job commands'
//! tables: UTC times and short durations.
//!
//! Not here: how an event reads as a text line (`commands::logs`), tables
//! (`commands::jobs`), or any call.

use std::time::{SystemTime, UNIX_EPOCH};

use coordinator::client::{Checkpoint, Event, Job, Worker};
use serde_json::{Value, json};

pub use coordinator::client::utc_time;

/// A job as `--json` prints it (README.md, "A fleet"), without its spec.
pub fn job_json(job: &Job) -> Value {
    json!({
        "id": job.id,
        "name": job.name,
        "status": job.status.name(),
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "step": job.step,
        "total_steps": job.total_steps,
        "attempt": job.attempt,
        "error": job.error.as_ref().map(|e| json!({"code": e.code, "message": e.message})),
        "priority": job.priority,
        "workers_min": job.workers_min,
        "workers_max": job.workers_max,
        "backend": job.backend,
        "failures": job.failures,
        "max_failures": job.max_failures,
        "tenant": job.tenant,
        "train_loss": job.train_loss,
        "valid_loss": job.valid_loss,
        "step_seconds": job.step_seconds,
        "tokens_per_s": job.tokens_per_s,
        "trained_tokens": job.trained_tokens,
        "eta_seconds": job.eta_seconds,
    })
}

/// A list as `--json` prints it: `{"data": [...], "has_more"}`.
pub fn list_json(data: Vec<Value>, has_more: bool) -> Value {
    json!({ "data": data, "has_more": has_more })
}

/// An event as `logs --json` prints it (README.md, "A fleet"): one NDJSON line.
pub fn event_json(event: &Event) -> Value {
    json!({
        "id": event.id,
        "job_id": event.job_id,
        "created_at": event.created_at,
        "level": event.level.name(),
        "type": event.kind,
        "message": event.message,
        "data": event.data,
    })
}

/// A checkpoint as `checkpoints --json` prints it.
pub fn checkpoint_json(c: &Checkpoint) -> Value {
    json!({
        "step": c.step,
        "url": c.url,
        "metrics": c.metrics,
        "committed_at": c.committed_at,
    })
}

/// A worker as `--json` prints it: every field the coordinator reports,
/// with null for no job and no rank.
pub fn worker_json(w: &Worker) -> Value {
    json!({
        "id": w.id,
        "name": w.name,
        "host": w.host,
        "backend": w.backend,
        "device": w.device,
        "memory_bytes": w.memory_bytes,
        "version": w.version,
        "state": w.state.name(),
        "job_id": w.job_id,
        "rank": w.rank,
        "registered_at": w.registered_at,
        "last_heartbeat": w.last_heartbeat,
        "ring_addr": w.ring_addr,
    })
}

/// Now, in Unix seconds.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A span of seconds, short: `42s`, `5m`, `3h`, `2d`.
pub fn short_duration(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coordinator::client::{EventLevel, JobError, JobStatus, WorkerState};

    #[test]
    fn job_json_has_the_designed_keys_and_no_spec() {
        let job = Job {
            created_at: 100,
            finished_at: Some(200),
            step: 7,
            attempt: 2,
            error: Some(JobError {
                code: "worker_lost".into(),
                message: "rank 1 went away".into(),
            }),
            spec_yaml: "name: secret".into(),
            train_loss: Some(1.5),
            eta_seconds: Some(12.0),
            trained_tokens: 4096,
            ..Job::new("j-1", "quickstart", JobStatus::Failed)
        };
        let value = job_json(&job);
        let object = value.as_object().expect("an object");
        for key in [
            "id",
            "name",
            "status",
            "created_at",
            "finished_at",
            "step",
            "total_steps",
            "attempt",
            "error",
            "priority",
            "workers_min",
            "workers_max",
            "backend",
            "failures",
            "max_failures",
            "tenant",
            "train_loss",
            "valid_loss",
            "step_seconds",
            "tokens_per_s",
            "trained_tokens",
            "eta_seconds",
        ] {
            assert!(object.contains_key(key), "missing {key}");
        }
        assert_eq!(value["train_loss"], 1.5);
        assert_eq!(value["valid_loss"], Value::Null);
        assert_eq!(value["eta_seconds"], 12.0);
        assert_eq!(value["trained_tokens"], 4096);
        assert!(!value.to_string().contains("secret"));
        assert_eq!(value["status"], "failed");
        assert_eq!(value["finished_at"], 200);
        assert_eq!(value["total_steps"], Value::Null);
        assert_eq!(value["error"]["code"], "worker_lost");
        assert_eq!(value["error"]["message"], "rank 1 went away");
        let plain = Job::new("j-2", "x", JobStatus::Queued);
        assert_eq!(job_json(&plain)["error"], Value::Null);
    }

    #[test]
    fn event_json_has_the_designed_keys() {
        let event = Event {
            id: 3,
            job_id: "j-1".into(),
            created_at: 50,
            level: EventLevel::Info,
            kind: "train.step".into(),
            message: "step 1".into(),
            data: json!({"step": 1, "loss": 2.5}),
        };
        let value = event_json(&event);
        for key in [
            "id",
            "created_at",
            "level",
            "type",
            "message",
            "data",
            "job_id",
        ] {
            assert!(value.get(key).is_some(), "missing {key}");
        }
        assert_eq!(value["level"], "info");
        assert_eq!(value["type"], "train.step");
        assert_eq!(value["data"]["loss"], 2.5);
    }

    #[test]
    fn worker_json_has_every_field() {
        let worker = Worker {
            id: "w-1".into(),
            name: String::new(),
            host: String::new(),
            backend: "cpu".into(),
            device: String::new(),
            memory_bytes: 0,
            version: String::new(),
            state: WorkerState::Draining,
            job_id: None,
            rank: Some(0),
            registered_at: 0,
            last_heartbeat: 0,
            ring_addr: String::new(),
        };
        let value = worker_json(&worker);
        for key in [
            "id",
            "name",
            "host",
            "backend",
            "device",
            "memory_bytes",
            "version",
            "state",
            "job_id",
            "rank",
            "registered_at",
            "last_heartbeat",
            "ring_addr",
        ] {
            assert!(value.get(key).is_some(), "missing {key}");
        }
        assert_eq!(value["state"], "draining");
        assert_eq!(value["job_id"], Value::Null);
        assert_eq!(value["rank"], 0);
    }

    #[test]
    fn times_and_durations_print_plainly() {
        assert_eq!(utc_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_time(1_735_787_045), "2025-01-02T03:04:05Z");
        assert_eq!(short_duration(-3), "0s");
        assert_eq!(short_duration(59), "59s");
        assert_eq!(short_duration(61), "1m");
        assert_eq!(short_duration(7200), "2h");
        assert_eq!(short_duration(200_000), "2d");
    }
}
