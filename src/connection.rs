//! Reaching the coordinator the flags name: the `--coordinator` / `--token`
//! / `--ca` values ([`RemoteArgs`], parsed in `cli`) turned into an open
//! [`Connection`], a tokio runtime to make the calls on, and the exit code
//! README.md ("A fleet") gives a failed call ([`call_exit_code`]).
//!
//! Not here: the calls themselves (`coordinator::client`'s typed methods),
//! riding out a lost coordinator (`commands::logs::reconnect`), or what a
//! command prints (`output`).

use std::future::Future;
use std::time::Duration;

use coordinator::client::{CallError, ConnectError, Connection, ErrorKind, TrustedCa, UploadError};

use crate::cli::RemoteArgs;
use crate::commands::UsageError;
use crate::commands::logs::CoordinatorLost;

/// How long connecting to a coordinator may take before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
                "no token to call the coordinator with: set LORAFLEET_TOKEN, pass --token, or put token: in ~/.config/lorafleet/config.yaml"
                    .to_string(),
            )
        })?;
    let ca = args.trusted_ca()?;
    let connection =
        Connection::open_with(&args.coordinator, token, ca.as_ref(), CONNECT_TIMEOUT).await?;
    Ok(connection)
}

/// Connects as `remote` says and runs `calls` on the connection, on a
/// fresh runtime: what a one-shot command does.
pub fn with_connection<T>(
    remote: &RemoteArgs,
    calls: impl AsyncFnOnce(&Connection) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    block_on(async {
        let conn = connect(remote).await?;
        calls(&conn).await
    })
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

/// The failed call in `err`'s chain, if there is one.
pub fn call_error(err: &anyhow::Error) -> Option<CallError> {
    err.chain().find_map(|cause| {
        if let Some(call) = cause.downcast_ref::<CallError>() {
            return Some(call.clone());
        }
        if let Some(UploadError::Call(call)) = cause.downcast_ref::<UploadError>() {
            return Some(call.clone());
        }
        cause.downcast_ref::<tonic::Status>().map(CallError::from)
    })
}

/// The exit code README.md ("A fleet") gives a failed call, if `err` comes from one:
/// 2 bad request (also: a malformed address, `http://` with a CA, a plain
/// URL for a TLS port), 3 unreachable (also: its certificate refused, or
/// lost for longer than a follower waits), 4 refused, 5 not found.
pub fn call_exit_code(err: &anyhow::Error) -> Option<u8> {
    if err.chain().any(|cause| cause.is::<CoordinatorLost>()) {
        return Some(3);
    }
    if let Some(call) = call_error(err) {
        return match call.kind() {
            ErrorKind::Refused => Some(4),
            ErrorKind::NotFound => Some(5),
            ErrorKind::Invalid => Some(2),
            ErrorKind::Unavailable => Some(3),
            ErrorKind::Failed | ErrorKind::BadReply => None,
        };
    }
    err.chain()
        .find_map(|cause| match cause.downcast_ref::<ConnectError>()? {
            ConnectError::Unreachable { .. } | ConnectError::Tls { .. } => Some(3),
            ConnectError::BadAddress { .. }
            | ConnectError::BadToken
            | ConnectError::PlainWithCa { .. }
            | ConnectError::TlsExpected { .. } => Some(2),
        })
}

/// The failed call in `err`'s chain, if it is one worth making again.
pub fn transient_call(err: &anyhow::Error) -> Option<CallError> {
    call_error(err).filter(CallError::is_transient)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    fn failed(status: Status) -> anyhow::Error {
        anyhow::Error::new(CallError::from(status))
    }

    #[test]
    fn calls_map_to_the_designed_exit_codes() {
        let code = |s: Status| call_exit_code(&failed(s));
        assert_eq!(code(Status::unauthenticated("bad token")), Some(4));
        assert_eq!(code(Status::permission_denied("no")), Some(4));
        assert_eq!(code(Status::not_found("no job j-1")), Some(5));
        assert_eq!(code(Status::invalid_argument("x")), Some(2));
        assert_eq!(code(Status::failed_precondition("x")), Some(2));
        assert_eq!(code(Status::unavailable("down")), Some(3));
        assert_eq!(code(Status::internal("boom")), None);
        assert_eq!(call_exit_code(&anyhow::anyhow!("something else")), None);
    }

    #[test]
    fn exit_codes_survive_added_context() {
        let err = failed(Status::not_found("no job j-1")).context("cannot cancel job j-1");
        assert_eq!(call_exit_code(&err), Some(5));
        let err = anyhow::Error::new(Status::permission_denied("no")).context("listing");
        assert_eq!(call_exit_code(&err), Some(4));
        let err = anyhow::Error::new(ConnectError::BadToken).context("connecting");
        assert_eq!(call_exit_code(&err), Some(2));
        let upload = UploadError::Call(CallError::from(Status::permission_denied("no")));
        let err = anyhow::Error::new(upload).context("dataset.train: cannot upload a.jsonl");
        assert_eq!(call_exit_code(&err), Some(4));
    }

    #[test]
    fn tls_mistakes_are_usage_errors_and_a_refused_certificate_or_a_lost_coordinator_exit_3() {
        let url = "http://10.0.0.1:7070".to_string();
        let code = |e: ConnectError| call_exit_code(&anyhow::Error::new(e));
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
        let lost = CoordinatorLost {
            url,
            waited: Duration::from_secs(120),
            last: "connection refused".into(),
        };
        assert_eq!(
            call_exit_code(&anyhow::Error::new(lost).context("following j-1")),
            Some(3)
        );
    }

    #[test]
    fn only_transient_failures_are_made_again() {
        let err = failed(Status::unavailable("down")).context("cannot download");
        assert_eq!(
            transient_call(&err).map(|c| c.kind()),
            Some(ErrorKind::Unavailable)
        );
        let err = failed(Status::not_found("no job")).context("cannot download");
        assert!(transient_call(&err).is_none());
        assert!(transient_call(&anyhow::anyhow!("disk full")).is_none());
    }

    #[test]
    fn a_failed_call_reads_as_the_coordinator_message() {
        let err = failed(Status::not_found("no job j-1"));
        assert_eq!(format!("{err:#}"), "no job j-1");
        let err = failed(Status::unavailable(""));
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
}
