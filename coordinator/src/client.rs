//! Connecting to a coordinator: one [`Connection`] holds the channel, adds
//! the bearer token and this program's version to every call, and sets the
//! message size limits. The CLI and the worker agent both use it.
//!
//! Not here: what any command does with the answers.

use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::api::jobs_client::JobsClient;
use crate::api::workers_client::WorkersClient;
use crate::api::{AUTHORIZATION, MAX_MESSAGE_BYTES, VERSION_HEADER, bearer};

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{url} is not a coordinator address (expected http://host:port): {reason}")]
    BadAddress { url: String, reason: String },
    #[error("the token has characters that cannot go in a request header")]
    BadToken,
    #[error("cannot reach the coordinator at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
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
    /// Connects to `url` (`http://host:port`; a bare `host:port` gets
    /// `http://`), giving up after `timeout`.
    pub async fn open(
        url: &str,
        token: &str,
        timeout: Duration,
    ) -> Result<Connection, ConnectError> {
        Connection::open_as(url, token, crate::PROTOCOL_VERSION, timeout).await
    }

    /// As [`Connection::open`], claiming to be `version` (tests use it to
    /// check that a mismatch is refused).
    pub async fn open_as(
        url: &str,
        token: &str,
        version: &str,
        timeout: Duration,
    ) -> Result<Connection, ConnectError> {
        let url = if url.contains("://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        let bad = |reason: String| ConnectError::BadAddress {
            url: url.clone(),
            reason,
        };
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20));
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| ConnectError::Unreachable {
                url: url.clone(),
                source,
            })?;
        let credentials = Credentials {
            authorization: bearer(token).parse().map_err(|_| ConnectError::BadToken)?,
            version: version.parse().map_err(|_| ConnectError::BadToken)?,
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

    pub fn jobs(&self) -> JobsApi {
        JobsClient::with_interceptor(self.channel.clone(), self.credentials.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn workers(&self) -> WorkersApi {
        WorkersClient::with_interceptor(self.channel.clone(), self.credentials.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}
