//! What every command that talks to a coordinator shares: the
//! `--coordinator` / `--token` / `--ca` flags and connecting with them, a tokio
//! runtime to run the calls on, turning a gRPC status into a message and an
//! exit code (DESIGN.md §5), and the `--json` shapes of a job and an event.
//!
//! Not here: any one command (see `jobs`, `logs`, `download`), or the
//! connection itself (`coordinator::client`).

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use coordinator::api::{Event, Job};
use coordinator::client::{ConnectError, Connection, TrustedCa};
use serde_json::{Value, json};
use tonic::Code;

use super::UsageError;

/// How long connecting to a coordinator may take before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the coordinator is, who is asking, and whom to trust.
#[derive(clap::Args, Debug, Clone)]
pub struct RemoteArgs {
    /// The coordinator's address: http://host:port, or https://host:port
    /// for one serving TLS.
    #[arg(
        long,
        env = "LORAFLEET_COORDINATOR",
        default_value = "http://127.0.0.1:7070",
        value_name = "URL"
    )]
    pub coordinator: String,
    /// The tenant token sent with every call.
    #[arg(long, env = "LORAFLEET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The PEM CA bundle that signed the coordinator's TLS certificate:
    /// the only roots trusted (default: the public ones). With it, a bare
    /// host:port means https:// and an http:// address is refused, so the
    /// token never goes out in clear.
    #[arg(long, env = "LORAFLEET_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

impl RemoteArgs {
    /// The coordinator at `url` as `token`, trusting the public roots.
    pub fn new(url: &str, token: &str) -> RemoteArgs {
        RemoteArgs {
            coordinator: url.to_string(),
            token: Some(token.to_string()),
            ca: None,
        }
    }

    /// The CA bundle named by `--ca` / `LORAFLEET_CA`, read and checked.
    pub fn trusted_ca(&self) -> anyhow::Result<Option<TrustedCa>> {
        let Some(path) = self.ca.as_deref().filter(|p| !p.as_os_str().is_empty()) else {
            return Ok(None);
        };
        let ca = TrustedCa::load(path).map_err(|e| UsageError(e.to_string()))?;
        Ok(Some(ca))
    }
}

/// Connects to the coordinator named by `args`.
pub async fn connect(args: &RemoteArgs) -> anyhow::Result<Connection> {
    let token = args
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            UsageError(
                "no token to call the coordinator with: set LORAFLEET_TOKEN or pass --token"
                    .to_string(),
            )
        })?;
    let ca = args.trusted_ca()?;
    let connection =
        Connection::open_with(&args.coordinator, token, ca.as_ref(), CONNECT_TIMEOUT).await?;
    Ok(connection)
}

/// Runs `future` to completion on a fresh multi-threaded runtime.
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the operating system refused to start the async runtime's threads")
        .block_on(future)
}

/// A refusal or failure reported by the coordinator. Its text is the
/// status's message alone; the status stays inside for [`rpc_exit_code`].
#[derive(Debug, thiserror::Error)]
#[error("{}", describe(.0))]
pub struct RpcError(pub tonic::Status);

fn describe(status: &tonic::Status) -> String {
    let message = status.message().trim();
    match (status.code(), message.is_empty()) {
        (Code::Unavailable, true) => "the coordinator is unavailable".to_string(),
        (Code::Unavailable, false) => format!("the coordinator is unavailable: {message}"),
        (code, true) => code.description().to_string(),
        (_, false) => message.to_string(),
    }
}

/// `status` as an error whose text is what the coordinator said.
pub fn rpc(status: tonic::Status) -> anyhow::Error {
    anyhow::Error::new(RpcError(status))
}

/// The exit code DESIGN.md §5 gives a failed call, if `err` comes from one:
/// 2 bad request (a malformed address, `http://` with a CA, a plain URL
/// for a TLS port), 3 unreachable (also: its certificate refused, or lost
/// for longer than a follower waits), 4 refused, 5 not found.
pub fn rpc_exit_code(err: &anyhow::Error) -> Option<u8> {
    err.chain().find_map(|cause| {
        if cause.is::<super::logs::CoordinatorLost>() {
            return Some(3);
        }
        if let Some(RpcError(status)) = cause.downcast_ref::<RpcError>() {
            return status_exit_code(status);
        }
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            return status_exit_code(status);
        }
        match cause.downcast_ref::<ConnectError>()? {
            ConnectError::Unreachable { .. } | ConnectError::Tls { .. } => Some(3),
            ConnectError::BadAddress { .. }
            | ConnectError::BadToken
            | ConnectError::PlainWithCa { .. }
            | ConnectError::TlsExpected { .. } => Some(2),
        }
    })
}

/// The status of a failed call in `err`'s chain, if it is one worth
/// making again (`logs::is_transient`).
pub fn transient_status(err: &anyhow::Error) -> Option<tonic::Status> {
    err.chain().find_map(|cause| {
        let status = match cause.downcast_ref::<RpcError>() {
            Some(RpcError(status)) => status,
            None => cause.downcast_ref::<tonic::Status>()?,
        };
        super::logs::is_transient(status)
            .then(|| tonic::Status::new(status.code(), status.message()))
    })
}

fn status_exit_code(status: &tonic::Status) -> Option<u8> {
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => Some(4),
        Code::NotFound => Some(5),
        Code::InvalidArgument | Code::FailedPrecondition => Some(2),
        Code::Unavailable => Some(3),
        _ => None,
    }
}

/// Asks for job `id`.
pub async fn get_job(conn: &Connection, id: &str) -> anyhow::Result<Job> {
    let job = conn
        .jobs()
        .get(coordinator::api::JobRef { id: id.to_string() })
        .await
        .map_err(rpc)
        .with_context(|| format!("cannot get job {id}"))?;
    Ok(job.into_inner())
}

/// Statuses after which a job changes no more.
pub fn is_final(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "cancelled")
}

/// A job as `--json` prints it (DESIGN.md §5), without its spec.
pub fn job_json(job: &Job) -> Value {
    json!({
        "id": job.id,
        "name": job.name,
        "status": job.status,
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
    })
}

/// An event as `logs --json` prints it (DESIGN.md §5): one NDJSON line.
pub fn event_json(event: &Event) -> Value {
    json!({
        "id": event.id,
        "job_id": event.job_id,
        "created_at": event.created_at,
        "level": event.level,
        "type": event.r#type,
        "message": event.message,
        "data": parse_json(&event.data_json),
    })
}

/// `text` as a JSON value, or null when it is empty or not JSON.
pub fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// Now, in Unix seconds.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub use coordinator::client::utc_time;

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
    use coordinator::api::JobError;

    fn code_of(err: anyhow::Error) -> Option<u8> {
        rpc_exit_code(&err)
    }

    #[test]
    fn statuses_map_to_the_designed_exit_codes() {
        assert_eq!(
            code_of(rpc(tonic::Status::unauthenticated("bad token"))),
            Some(4)
        );
        assert_eq!(
            code_of(rpc(tonic::Status::permission_denied("no"))),
            Some(4)
        );
        assert_eq!(
            code_of(rpc(tonic::Status::not_found("no job j-1"))),
            Some(5)
        );
        assert_eq!(code_of(rpc(tonic::Status::invalid_argument("x"))), Some(2));
        assert_eq!(
            code_of(rpc(tonic::Status::failed_precondition("x"))),
            Some(2)
        );
        assert_eq!(code_of(rpc(tonic::Status::unavailable("down"))), Some(3));
        assert_eq!(code_of(rpc(tonic::Status::internal("boom"))), None);
        assert_eq!(code_of(anyhow::anyhow!("something else")), None);
    }

    #[test]
    fn exit_codes_survive_added_context() {
        let err = rpc(tonic::Status::not_found("no job j-1")).context("cannot cancel job j-1");
        assert_eq!(rpc_exit_code(&err), Some(5));
        let err = anyhow::Error::new(tonic::Status::permission_denied("no")).context("listing");
        assert_eq!(rpc_exit_code(&err), Some(4));
        let err = anyhow::Error::new(ConnectError::BadToken).context("connecting");
        assert_eq!(rpc_exit_code(&err), Some(2));
    }

    #[test]
    fn tls_mistakes_are_usage_errors_and_a_refused_certificate_or_a_lost_coordinator_exit_3() {
        let url = "http://10.0.0.1:7070".to_string();
        let code = |e: ConnectError| rpc_exit_code(&anyhow::Error::new(e));
        assert_eq!(
            code(ConnectError::PlainWithCa {
                url: url.clone(),
                ca: "/ca.pem".into()
            }),
            Some(2)
        );
        assert_eq!(
            code(ConnectError::TlsExpected {
                url: url.clone(),
                authority: "10.0.0.1:7070".into()
            }),
            Some(2)
        );
        assert_eq!(
            code(ConnectError::Tls {
                url: url.clone(),
                reason: "not signed".into()
            }),
            Some(3)
        );
        let lost = super::super::logs::CoordinatorLost {
            url,
            waited: Duration::from_secs(120),
            last: "connection refused".into(),
        };
        assert_eq!(
            rpc_exit_code(&anyhow::Error::new(lost).context("following j-1")),
            Some(3)
        );
    }

    #[test]
    fn only_transient_failures_are_made_again() {
        let err = rpc(tonic::Status::unavailable("down")).context("cannot download");
        assert_eq!(
            transient_status(&err).map(|s| s.code()),
            Some(Code::Unavailable)
        );
        let err = rpc(tonic::Status::not_found("no job")).context("cannot download");
        assert!(transient_status(&err).is_none());
        assert!(transient_status(&anyhow::anyhow!("disk full")).is_none());
    }

    #[test]
    fn an_rpc_error_reads_as_the_coordinator_message() {
        let err = rpc(tonic::Status::not_found("no job j-1"));
        assert_eq!(format!("{err:#}"), "no job j-1");
        let err = rpc(tonic::Status::unavailable(""));
        assert_eq!(err.to_string(), "the coordinator is unavailable");
    }

    #[test]
    fn a_missing_token_is_a_usage_error_naming_both_ways_to_give_one() {
        let args = RemoteArgs::new("http://127.0.0.1:1", "  ");
        let err = block_on(connect(&args)).err().expect("no token must fail");
        assert!(err.is::<UsageError>());
        let text = err.to_string();
        assert!(
            text.contains("LORAFLEET_TOKEN") && text.contains("--token"),
            "{text}"
        );
    }

    #[test]
    fn job_json_has_the_designed_keys_and_no_spec() {
        let job = Job {
            id: "j-1".into(),
            name: "quickstart".into(),
            status: "failed".into(),
            created_at: 100,
            finished_at: Some(200),
            step: 7,
            total_steps: None,
            attempt: 2,
            error: Some(JobError {
                code: "worker_lost".into(),
                message: "rank 1 went away".into(),
            }),
            spec_yaml: "name: secret".into(),
            ..Job::default()
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
        ] {
            assert!(object.contains_key(key), "missing {key}");
        }
        assert!(!value.to_string().contains("secret"));
        assert_eq!(value["finished_at"], 200);
        assert_eq!(value["total_steps"], Value::Null);
        assert_eq!(value["error"]["code"], "worker_lost");
        assert_eq!(value["error"]["message"], "rank 1 went away");
        assert_eq!(job_json(&Job::default())["error"], Value::Null);
    }

    #[test]
    fn event_json_parses_data_and_tolerates_garbage() {
        let event = Event {
            id: 3,
            job_id: "j-1".into(),
            created_at: 50,
            level: "info".into(),
            r#type: "train.step".into(),
            message: "step 1".into(),
            data_json: r#"{"step": 1, "loss": 2.5}"#.into(),
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
        assert_eq!(value["type"], "train.step");
        assert_eq!(value["data"]["loss"], 2.5);
        let garbage = Event {
            data_json: "{not json".into(),
            ..event
        };
        assert_eq!(event_json(&garbage)["data"], Value::Null);
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
