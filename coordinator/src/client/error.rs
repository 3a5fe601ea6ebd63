//! How a call to the coordinator fails: [`CallError`], opaque and
//! queryable ([`CallError::kind`] for what to tell the user,
//! [`CallError::is_transient`] for whether to try again), its text what the
//! coordinator said. [`UploadError`] adds the local file an upload reads.
//!
//! Not here: failing to connect at all (`ConnectError`), or exit codes
//! (the CLI maps kinds to them).

use std::path::PathBuf;

use tonic::Code;

use crate::api::convert::UnknownValue;

/// What kind of failure a [`CallError`] is, as far as a caller decides
/// anything on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The token was refused, or does not allow the call.
    Refused,
    /// No such job, worker or checkpoint (for this tenant).
    NotFound,
    /// The request was malformed, or does not fit the state of what it
    /// names (a spec with errors, another lorafleet version).
    Invalid,
    /// The coordinator could not be reached, or went away mid-call.
    Unavailable,
    /// Anything else the coordinator answered (its store failed, a limit).
    Failed,
    /// The reply holds a value this client does not know.
    BadReply,
}

/// A call the coordinator refused, failed, or never answered. Its text is
/// what the coordinator said (or, for a lost coordinator, that it is
/// unavailable).
#[derive(Clone, Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub struct CallError {
    /// `None` for a reply this client could not read.
    code: Option<Code>,
    message: String,
}

impl CallError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self.code {
            None => ErrorKind::BadReply,
            Some(Code::Unauthenticated | Code::PermissionDenied) => ErrorKind::Refused,
            Some(Code::NotFound) => ErrorKind::NotFound,
            Some(Code::InvalidArgument | Code::FailedPrecondition) => ErrorKind::Invalid,
            Some(Code::Unavailable) => ErrorKind::Unavailable,
            Some(_) => ErrorKind::Failed,
        }
    }

    /// Whether the same call may succeed once the coordinator is back: it
    /// could not be reached, or the connection broke under the call. A
    /// refusal, a missing job or a bad argument is not.
    pub fn is_transient(&self) -> bool {
        match self.code {
            Some(Code::Unavailable | Code::Unknown | Code::Cancelled) => true,
            // A connection torn down mid-stream (h2 GOAWAY, reset).
            Some(Code::Internal) => self.message.starts_with("h2 protocol error"),
            _ => false,
        }
    }

    /// The coordinator's message as sent (may be empty).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The first line of the message, or the kind of failure when there is
    /// none: for one-line notes.
    pub fn brief(&self) -> String {
        let message = self.message.lines().next().unwrap_or("").trim();
        match (message.is_empty(), self.code) {
            (false, _) => message.to_string(),
            (true, Some(code)) => format!("{code:?}"),
            (true, None) => "BadReply".to_string(),
        }
    }

    fn describe(&self) -> String {
        let message = self.message.trim();
        match (self.code, message.is_empty()) {
            (Some(Code::Unavailable), true) => "the coordinator is unavailable".to_string(),
            (Some(Code::Unavailable), false) => {
                format!("the coordinator is unavailable: {message}")
            }
            (Some(code), true) => code.description().to_string(),
            (_, _) => message.to_string(),
        }
    }
}

impl From<tonic::Status> for CallError {
    fn from(status: tonic::Status) -> CallError {
        CallError {
            code: Some(status.code()),
            message: status.message().to_string(),
        }
    }
}

impl From<&tonic::Status> for CallError {
    fn from(status: &tonic::Status) -> CallError {
        CallError {
            code: Some(status.code()),
            message: status.message().to_string(),
        }
    }
}

impl From<UnknownValue> for CallError {
    fn from(unknown: UnknownValue) -> CallError {
        CallError {
            code: None,
            message: unknown.to_string(),
        }
    }
}

/// Why an upload failed: the coordinator's answer, or reading the file.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    #[test]
    fn codes_fall_into_kinds() {
        let kind = |s: Status| CallError::from(s).kind();
        assert_eq!(
            kind(Status::unauthenticated("bad token")),
            ErrorKind::Refused
        );
        assert_eq!(kind(Status::permission_denied("no")), ErrorKind::Refused);
        assert_eq!(kind(Status::not_found("no job j-1")), ErrorKind::NotFound);
        assert_eq!(kind(Status::invalid_argument("x")), ErrorKind::Invalid);
        assert_eq!(kind(Status::failed_precondition("x")), ErrorKind::Invalid);
        assert_eq!(kind(Status::unavailable("down")), ErrorKind::Unavailable);
        assert_eq!(kind(Status::internal("boom")), ErrorKind::Failed);
        let unknown = UnknownValue::new("job status", 42);
        assert_eq!(CallError::from(unknown).kind(), ErrorKind::BadReply);
    }

    #[test]
    fn only_a_lost_connection_is_transient() {
        let transient = |s: Status| CallError::from(s).is_transient();
        assert!(transient(Status::unavailable("tcp connect error")));
        assert!(transient(Status::unknown("h2 protocol error: broken pipe")));
        assert!(transient(Status::internal("h2 protocol error: reset")));
        assert!(!transient(Status::internal("the store failed")));
        for code in [
            Code::NotFound,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::InvalidArgument,
            Code::FailedPrecondition,
        ] {
            assert!(!transient(Status::new(code, "no")), "{code:?}");
        }
        assert!(!CallError::from(UnknownValue::new("job status", 9)).is_transient());
    }

    #[test]
    fn the_text_is_what_the_coordinator_said() {
        let text = |s: Status| CallError::from(s).to_string();
        assert_eq!(text(Status::not_found("no job j-1")), "no job j-1");
        assert_eq!(
            text(Status::unavailable("")),
            "the coordinator is unavailable"
        );
        assert_eq!(
            text(Status::unavailable("refused")),
            "the coordinator is unavailable: refused"
        );
        assert_eq!(
            text(Status::internal("")),
            Code::Internal.description().to_string()
        );
        assert_eq!(
            CallError::from(Status::unavailable("a\nb")).brief(),
            "a".to_string()
        );
        assert_eq!(
            CallError::from(Status::unavailable("")).brief(),
            "Unavailable"
        );
    }
}
