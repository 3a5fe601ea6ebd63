//! The client's side of TLS: the CA bundle a client trusts
//! ([`TrustedCa`], from `--ca` / `LORAFLEET_CA`), the tonic TLS settings
//! built from it, and turning a refused handshake into a sentence that says
//! what to fix ([`explain_handshake`]).
//!
//! Not here: which URL means TLS (`client`), the server's certificate
//! (`server::tls`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{CertificateError, RootCertStore};
use tonic::transport::{Certificate, ClientTlsConfig};

/// A CA bundle read from a PEM file: the only roots a client trusts when
/// it is given one.
#[derive(Clone, Debug)]
pub struct TrustedCa {
    path: PathBuf,
    pem: Vec<u8>,
}

/// Why a CA bundle cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read the CA bundle {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the CA bundle {} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
        path.display()
    )]
    Empty { path: PathBuf },
    #[error("the CA bundle {} is not valid PEM: {reason}", path.display())]
    BadPem { path: PathBuf, reason: String },
    #[error("certificate {index} in the CA bundle {} cannot be a CA: {reason}", path.display())]
    NotACa {
        path: PathBuf,
        index: usize,
        reason: String,
    },
}

impl TrustedCa {
    /// Reads and checks the PEM bundle at `path`: it must hold at least one
    /// certificate, each usable as a trust anchor.
    pub fn load(path: &Path) -> Result<TrustedCa, CaError> {
        let pem = std::fs::read(path).map_err(|source| CaError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        TrustedCa::from_pem(path, pem)
    }

    /// As [`TrustedCa::load`], with the file's bytes already read.
    pub fn from_pem(path: &Path, pem: Vec<u8>) -> Result<TrustedCa, CaError> {
        let path = path.to_path_buf();
        let mut roots = RootCertStore::empty();
        for (index, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
            let cert = cert.map_err(|e| CaError::BadPem {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            roots.add(cert).map_err(|e| CaError::NotACa {
                path: path.clone(),
                index: index + 1,
                reason: e.to_string(),
            })?;
        }
        if roots.is_empty() {
            return Err(CaError::Empty { path });
        }
        Ok(TrustedCa { path, pem })
    }

    /// The file the bundle came from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// tonic's TLS settings: the bundle's roots only, or without one the
/// public roots compiled in (Mozilla's, from `webpki-roots`); `domain` is
/// the name the certificate must hold (the URL's host); the handshake
/// must end within `timeout`.
pub(super) fn client_config(
    ca: Option<&TrustedCa>,
    domain: &str,
    timeout: Duration,
) -> ClientTlsConfig {
    let config = ClientTlsConfig::new().domain_name(domain).timeout(timeout);
    match ca {
        Some(ca) => config.ca_certificate(Certificate::from_pem(&ca.pem)),
        None => config.with_webpki_roots(),
    }
}

/// Makes rustls use ring in this process (tonic's `tls-ring`), whatever
/// other crypto providers the dependency graph enabled. Idempotent.
pub fn use_ring_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What went wrong in a TLS handshake with the coordinator at `host`, as
/// a sentence saying what to fix; `None` when `error`'s chain holds no TLS
/// failure (then the plain transport error says enough).
pub(super) fn explain_handshake(
    error: &(dyn std::error::Error + 'static),
    host: &str,
    ca: Option<&TrustedCa>,
) -> Option<String> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(tls) = as_rustls(current) {
            return Some(explain(tls, host, ca));
        }
        cause = current.source();
    }
    None
}

/// A rustls error, held directly or inside an `io::Error` (whose `source`
/// skips the error it wraps).
fn as_rustls<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = error.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    error
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

fn explain(error: &rustls::Error, host: &str, ca: Option<&TrustedCa>) -> String {
    let signer = match ca {
        Some(ca) => format!("the CA in {}", ca.path().display()),
        None => "a public CA (no --ca or LORAFLEET_CA given)".to_string(),
    };
    let certificate = match error {
        rustls::Error::InvalidCertificate(certificate) => certificate,
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            return format!(
                "{host} did not answer in TLS ({error}): it may serve plain http://, or be something else than a coordinator"
            );
        }
        rustls::Error::AlertReceived(alert) => {
            return format!("the coordinator ended the TLS handshake: {alert:?}");
        }
        other => return format!("the TLS handshake failed: {other}"),
    };
    match certificate {
        CertificateError::UnknownIssuer => {
            let fix = if ca.is_some() {
                "give the CA that signed it"
            } else {
                "pass --ca FILE or set LORAFLEET_CA to the CA that signed it"
            };
            format!("the coordinator's certificate is not signed by {signer}: {fix}")
        }
        CertificateError::NotValidForName => {
            format!("the coordinator's certificate is not valid for the name {host}")
        }
        CertificateError::NotValidForNameContext { presented, .. } => format!(
            "the coordinator's certificate is not valid for the name {host}: it holds {}; connect to one of those or issue a certificate with {host} among its subject alternative names",
            presented
                .iter()
                .map(|name| bare_name(name))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        CertificateError::Expired => "the coordinator's certificate has expired".to_string(),
        CertificateError::ExpiredContext { time, not_after } => format!(
            "the coordinator's certificate expired at {} (it is {} here)",
            utc_time(not_after.as_secs() as i64),
            utc_time(time.as_secs() as i64)
        ),
        CertificateError::NotValidYet => {
            "the coordinator's certificate is not valid yet (check this machine's clock)"
                .to_string()
        }
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "the coordinator's certificate is valid only from {} (it is {} here: check the clocks)",
            utc_time(not_before.as_secs() as i64),
            utc_time(time.as_secs() as i64)
        ),
        other => format!("the coordinator's certificate was refused: {other:?}"),
    }
}

/// A presented name as rustls writes it (`DnsName("a.example")`,
/// `IpAddress(10.0.0.1)`), without the kind.
fn bare_name(presented: &str) -> &str {
    presented
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .map_or(presented, |inner| inner.trim_matches('"'))
}

/// Unix seconds as UTC `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_time(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Days to the civil calendar (H. Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_without_certificates_or_a_missing_file_is_named() {
        let err = TrustedCa::from_pem(Path::new("/etc/ca.pem"), b"hello".to_vec()).unwrap_err();
        assert!(matches!(err, CaError::Empty { .. }), "{err}");
        assert!(err.to_string().contains("/etc/ca.pem"), "{err}");
        let err = TrustedCa::load(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn an_unknown_issuer_names_the_bundle() {
        let ca = TrustedCa {
            path: "/etc/lorafleet/ca.pem".into(),
            pem: Vec::new(),
        };
        let error = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, error);
        let text = explain_handshake(&io, "10.0.0.1", Some(&ca)).unwrap();
        assert_eq!(
            text,
            "the coordinator's certificate is not signed by the CA in /etc/lorafleet/ca.pem: give the CA that signed it"
        );
        let text = explain_handshake(&io, "10.0.0.1", None).unwrap();
        assert!(text.contains("LORAFLEET_CA"), "{text}");
        assert_eq!(
            explain_handshake(&std::io::Error::other("x"), "h", None),
            None
        );
    }

    #[test]
    fn presented_names_lose_their_kind() {
        assert_eq!(bare_name("DnsName(\"a.example\")"), "a.example");
        assert_eq!(bare_name("IpAddress(10.0.0.1)"), "10.0.0.1");
        assert_eq!(bare_name("plain"), "plain");
    }

    #[test]
    fn times_print_as_utc() {
        assert_eq!(utc_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_time(1_735_787_045), "2025-01-02T03:04:05Z");
    }
}
