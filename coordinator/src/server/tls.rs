//! The coordinator's side of TLS (`serve --tls-cert FILE --tls-key FILE`):
//! its certificate chain and private key read from PEM files and checked
//! before the port opens, so a wrong file is one clear error naming it
//! rather than a refused handshake later.
//!
//! [`ServerTls::incoming`] turns the listening socket into handshaken
//! connections that offer both `h2` (gRPC, browsers) and `http/1.1` (the
//! HTTP routes' other clients) by ALPN; tonic's own TLS offers only `h2`,
//! which clients limited to HTTP/1.1 cannot agree to.
//!
//! Not here: serving (`server::serve`), the clients' side (`client::tls`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use futures::Stream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// How long a caller has to finish its TLS handshake: connections that
/// open and say nothing do not pile up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate chain and its private key, read and checked.
#[derive(Clone)]
pub struct ServerTls {
    cert_path: PathBuf,
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    /// Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

/// Why the certificate or key cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    #[error("cannot read the TLS {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the TLS certificate file {} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
        path.display()
    )]
    NoCertificate { path: PathBuf },
    #[error(
        "the TLS key file {} holds no PEM private key (expected -----BEGIN PRIVATE KEY-----, RSA or EC): {reason}",
        path.display()
    )]
    NoKey { path: PathBuf, reason: String },
    #[error("the TLS certificate file {} is not valid PEM: {reason}", path.display())]
    BadPem { path: PathBuf, reason: String },
    #[error(
        "the key in {} does not go with the certificate in {}: {reason}",
        key.display(),
        cert.display()
    )]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

impl ServerTls {
    /// Reads `cert` (the server's certificate first, then any
    /// intermediates) and `key`, and checks that they form a usable pair.
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, ServerTlsError> {
        let read = |what, path: &Path| {
            std::fs::read(path).map_err(|source| ServerTlsError::Read {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        let cert_pem = read("certificate file", cert)?;
        let key_pem = read("key file", key)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ServerTlsError::BadPem {
                path: cert.to_path_buf(),
                reason: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(ServerTlsError::NoCertificate {
                path: cert.to_path_buf(),
            });
        }
        let private_key =
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| ServerTlsError::NoKey {
                path: key.to_path_buf(),
                reason: e.to_string(),
            })?;
        let mismatch = |reason: String| ServerTlsError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            reason,
        };
        let mut config = rustls::ServerConfig::builder_with_provider(
            rustls::crypto::ring::default_provider().into(),
        )
        .with_safe_default_protocol_versions()
        .map_err(|e| mismatch(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                mismatch("it is the key of another certificate".to_string())
            }
            other => mismatch(other.to_string()),
        })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls {
            cert_path: cert.to_path_buf(),
            config: Arc::new(config),
        })
    }

    /// The certificate file served.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The connections `listener` accepts, once their TLS handshake is
    /// done. Each handshake runs in its own task and has
    /// [`HANDSHAKE_TIMEOUT`] to finish, so a caller that opens a connection
    /// and says nothing delays no one; failed handshakes are logged and
    /// dropped. Accepting stops when the stream is dropped.
    pub(crate) fn incoming(
        &self,
        listener: TcpListener,
    ) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> + use<> {
        let acceptor = TlsAcceptor::from(self.config.clone());
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = tx.closed() => return,
                };
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, go on.
                        tracing::warn!("cannot accept a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}
