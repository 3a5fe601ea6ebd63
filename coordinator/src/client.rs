//! Calling a coordinator: one [`Connection`] holds the channel, adds
//! the bearer token and this program's version to every call, and sets the
//! message size limits. The CLI and the worker agent both use it.
//!
//! Its typed methods (`calls`) are what the CLI uses: [`Connection::submit`],
//! [`Connection::list`], [`Connection::status`], [`Connection::cancel`],
//! [`Connection::resume`], [`Connection::watch`], [`Connection::checkpoints`],
//! [`Connection::download`], [`Connection::upload`] and the worker calls
//! take and return the plain types of `types` ([`Job`] with a [`JobStatus`],
//! [`Event`], [`Checkpoint`], ...) and fail with a [`CallError`]; the
//! protobuf messages stay behind them (`api::convert` translates). The raw
//! stubs ([`Connection::jobs`], [`Connection::workers`]) are for the agent
//! and the coordinator's own tests.
//!
//! A URL's scheme says how: `http://` in clear, `https://` over TLS,
//! verified against a [`TrustedCa`] when one is given (`--ca` /
//! `LORAFLEET_CA`) and against the public roots otherwise. With a CA a
//! bare `host:port` means `https://` and an `http://` URL is refused, so a
//! token never leaves in clear once TLS is configured. A refused handshake
//! says why (the `tls` submodule); a plain URL that meets a TLS port says
//! so too.
//!
//! Not here: what any command does with the answers, or retrying (the
//! channel reconnects by itself; when to give up is the caller's call).

mod calls;
mod error;
mod tls;
pub mod types;

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub use calls::{ChunkStream, EventStream};
pub use error::{CallError, ErrorKind, UploadError};
pub use tls::{CaError, TrustedCa, use_ring_provider, utc_time};
pub use types::{
    Checkpoint, Event, EventLevel, FileChunk, Job, JobError, JobPage, JobStatus, Submission,
    UploadPurpose, Uploaded, Worker, WorkerState,
};

use crate::api::jobs_client::JobsClient;
use crate::api::workers_client::WorkersClient;
use crate::api::{AUTHORIZATION, MAX_MESSAGE_BYTES, VERSION_HEADER, bearer};

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "{url} is not a coordinator address (expected http://host:port or https://host:port): {reason}"
    )]
    BadAddress { url: String, reason: String },
    #[error(
        "{url} is plain http:// but a CA is given ({}): a coordinator serving TLS is reached at https://; for one without TLS, unset LORAFLEET_CA and drop --ca",
        ca.display()
    )]
    PlainWithCa { url: String, ca: PathBuf },
    #[error("the token has characters that cannot go in a request header")]
    BadToken,
    #[error("cannot reach the coordinator at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot connect to the coordinator at {url}: {reason}")]
    Tls { url: String, reason: String },
    #[error(
        "the coordinator at {url} serves TLS: connect to https://{authority} (with --ca FILE or LORAFLEET_CA if its certificate is not from a public CA)"
    )]
    TlsExpected { url: String, authority: String },
}

/// `url` with its scheme settled: `http://` or `https://`, from the URL,
/// or for a bare `host:port` from whether a CA is given. Refuses `http://`
/// together with a CA, and any other scheme.
pub fn coordinator_url(url: &str, ca: Option<&TrustedCa>) -> Result<String, ConnectError> {
    let url = url.trim();
    let url = match (url.split_once("://"), ca) {
        (None, None) => format!("http://{url}"),
        (None, Some(_)) => format!("https://{url}"),
        (Some(("https", _)), _) => url.to_string(),
        (Some(("http", _)), None) => url.to_string(),
        (Some(("http", _)), Some(ca)) => {
            return Err(ConnectError::PlainWithCa {
                url: url.to_string(),
                ca: ca.path().to_path_buf(),
            });
        }
        (Some((scheme, _)), _) => {
            return Err(ConnectError::BadAddress {
                url: url.to_string(),
                reason: format!("the scheme {scheme}:// is neither http:// nor https://"),
            });
        }
    };
    Ok(url)
}

/// Adds `authorization: Bearer <token>` and the program's version to a call.
#[derive(Clone)]
pub struct Credentials {
    authorization: MetadataValue<tonic::metadata::Ascii>,
    version: MetadataValue<tonic::metadata::Ascii>,
}

impl Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let metadata = request.metadata_mut();
        metadata.insert(AUTHORIZATION, self.authorization.clone());
        metadata.insert(VERSION_HEADER, self.version.clone());
        Ok(request)
    }
}

/// The `Jobs` service as a client sees it.
pub type JobsApi = JobsClient<InterceptedService<Channel, Credentials>>;
/// The `Workers` service as a client sees it.
pub type WorkersApi = WorkersClient<InterceptedService<Channel, Credentials>>;

/// An open channel to a coordinator and the credentials to use on it.
#[derive(Clone)]
pub struct Connection {
    channel: Channel,
    credentials: Credentials,
    url: String,
}

impl Connection {
    /// Connects to `url` (`http://host:port` or `https://host:port` with
    /// the public roots; a bare `host:port` gets `http://`), giving up
    /// after `timeout`.
    pub async fn open(
        url: &str,
        token: &str,
        timeout: Duration,
    ) -> Result<Connection, ConnectError> {
        Connection::open_with(url, token, None, timeout).await
    }

    /// As [`Connection::open`], trusting only `ca` for `https://` (and then
    /// refusing `http://`; see [`coordinator_url`]).
    pub async fn open_with(
        url: &str,
        token: &str,
        ca: Option<&TrustedCa>,
        timeout: Duration,
    ) -> Result<Connection, ConnectError> {
        Connection::connect(url, token, ca, crate::PROTOCOL_VERSION, timeout).await
    }

    /// As [`Connection::open`], claiming to be `version` (tests use it to
    /// check that a mismatch is refused).
    pub async fn open_as(
        url: &str,
        token: &str,
        version: &str,
        timeout: Duration,
    ) -> Result<Connection, ConnectError> {
        Connection::connect(url, token, None, version, timeout).await
    }

    async fn connect(
        url: &str,
        token: &str,
        ca: Option<&TrustedCa>,
        version: &str,
        timeout: Duration,
    ) -> Result<Connection, ConnectError> {
        // Checked before anything is sent.
        let credentials = Credentials {
            authorization: bearer(token).parse().map_err(|_| ConnectError::BadToken)?,
            version: version.parse().map_err(|_| ConnectError::BadToken)?,
        };
        let url = coordinator_url(url, ca)?;
        let bad = |reason: String| ConnectError::BadAddress {
            url: url.clone(),
            reason,
        };
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20));
        let uri = endpoint.uri().clone();
        let host = uri
            .host()
            .ok_or_else(|| bad("no host".to_string()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let authority = uri
            .authority()
            .map_or_else(|| host.clone(), |a| a.to_string());
        let tls = uri.scheme_str() == Some("https");
        if tls {
            tls::use_ring_provider();
            endpoint = endpoint
                .tls_config(tls::client_config(ca, &host, timeout))
                .map_err(|e| bad(e.to_string()))?;
        } else if speaks_tls(&authority, timeout).await {
            return Err(ConnectError::TlsExpected { url, authority });
        }
        let channel = match endpoint.connect().await {
            Ok(channel) => channel,
            Err(source) => {
                return Err(match tls::explain_handshake(&source, &host, ca) {
                    Some(reason) => ConnectError::Tls { url, reason },
                    None => ConnectError::Unreachable { url, source },
                });
            }
        };
        Ok(Connection {
            channel,
            credentials,
            url,
        })
    }

    /// The address connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The `Jobs` service's raw stub (messages in and out); clients use
    /// the typed methods instead.
    pub fn jobs(&self) -> JobsApi {
        JobsClient::with_interceptor(self.channel.clone(), self.credentials.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The `Workers` service's raw stub: the agent's side of the fleet.
    pub fn workers(&self) -> WorkersApi {
        WorkersClient::with_interceptor(self.channel.clone(), self.credentials.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// Whether the server at `authority` answers an HTTP/2 greeting in clear
/// with a TLS record (a coordinator started with `--tls-cert`), looked at
/// before a plain `http://` channel is opened: the channel itself would
/// only fail later with an obscure HTTP/2 error. Anything else (no
/// answer, a refused connection, HTTP/2) is left to the channel.
async fn speaks_tls(authority: &str, timeout: Duration) -> bool {
    // The client connection preface, then an empty SETTINGS frame.
    const GREETING: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await.ok()?;
        stream.write_all(GREETING).await.ok()?;
        let mut first = [0u8; 1];
        let n = stream.read(&mut first).await.ok()?;
        // TLS records start with their content type: 0x15 is an alert,
        // 0x16 a handshake. An HTTP/2 frame starts with its length, far
        // below 0x15 << 16 for a SETTINGS frame.
        Some(n == 1 && matches!(first[0], 0x15 | 0x16))
    };
    tokio::time::timeout(timeout, probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
