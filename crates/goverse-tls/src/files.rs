//! PEM files: certificates, keys and trust roots, with errors that name the file; and what a
//! certificate says of itself (its names and validity), for logs.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        cause: std::io::Error,
    },
    /// A file holds no PEM block of the kind expected, or a broken one.
    #[error("{path}: {problem}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong ("no certificate in it", ...).
        problem: String,
    },
    /// rustls refused the material (a key that does not match its certificate, a CA that is not
    /// one).
    #[error("{what}: {cause}")]
    Refused {
        /// Which files, and what was being built.
        what: String,
        /// rustls' reason.
        cause: rustls::Error,
    },
    /// A setting is missing or contradicts another.
    #[error("{0}")]
    Setting(String),
    /// Generating a certificate failed.
    #[error("cannot generate {what}: {cause}")]
    Generate {
        /// The certificate.
        what: String,
        /// rcgen's reason.
        cause: rcgen::Error,
    },
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|cause| TlsError::Read {
        path: path.to_owned(),
        cause,
    })
}

/// The certificates of a PEM file, in order (a leaf first, then its intermediates).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            problem: format!("not a readable PEM file ({e})"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            problem: "no certificate in it (expected a -----BEGIN CERTIFICATE----- block)"
                .to_owned(),
        });
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        problem: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no private key in it (expected a -----BEGIN PRIVATE KEY----- block)".to_owned()
            }
            other => format!("not a readable private key ({other})"),
        },
    })
}

/// The trust roots of a PEM file of CA certificates.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|cause| TlsError::Refused {
            what: format!("the CA certificate in {}", path.display()),
            cause,
        })?;
    }
    Ok(roots)
}

/// What a certificate says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Its subject's common name (or the whole subject when it has none).
    pub subject: String,
    /// Its subject alternative names: DNS names, IP addresses and URIs, as text.
    pub names: Vec<String>,
    /// Its issuer.
    pub issuer: String,
    /// Valid from...
    pub not_before: SystemTime,
    /// ...until.
    pub not_after: SystemTime,
}

impl CertInfo {
    /// Reads a DER certificate; `None` when it cannot be parsed.
    pub fn of(der: &[u8]) -> Option<Self> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map_or_else(|| cert.subject().to_string(), str::to_owned);
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => names.push((*dns).to_owned()),
                    GeneralName::URI(uri) => names.push((*uri).to_owned()),
                    GeneralName::IPAddress(bytes) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                            names.push(std::net::Ipv4Addr::from(v4).to_string());
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                            names.push(std::net::Ipv6Addr::from(v6).to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        let time = |t: x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
            } else {
                SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
            }
        };
        Some(Self {
            subject,
            names,
            issuer: cert.issuer().to_string(),
            not_before: time(cert.validity().not_before),
            not_after: time(cert.validity().not_after),
        })
    }

    /// Whether it has expired at `now`.
    pub fn expired_at(&self, now: SystemTime) -> bool {
        now > self.not_after
    }

    /// Whether it names `host` (an IP address or a DNS name) among its alternative names.
    pub fn names_host(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.names
            .iter()
            .any(|name| name.eq_ignore_ascii_case(host))
    }

    /// The role and id its `goverse://ROLE/ID` name gives (`("node", "node-1")`), if any.
    pub fn member(&self) -> Option<(&str, &str)> {
        self.names
            .iter()
            .find_map(|name| name.strip_prefix(MEMBER_URI_PREFIX))
            .and_then(|rest| rest.split_once('/'))
    }
}

impl std::fmt::Display for CertInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CN={} [{}] valid {} to {}",
            self.subject,
            self.names.join(", "),
            rfc3339(self.not_before),
            rfc3339(self.not_after)
        )
    }
}

/// How the certificates of cluster members name them: `goverse://node/ID`,
/// `goverse://gate/ID`. A node admits peers whose certificate has such a name.
pub const MEMBER_URI_PREFIX: &str = "goverse://";

/// A time as `2026-12-07T14:00:00Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t}"))
}

/// Logs what the certificate chain in `path` is, and an error when its leaf has expired or
/// expires within a week. What a process loading its own certificate calls.
pub(crate) fn log_own_certificate(port: &str, path: &Path, chain: &[CertificateDer<'_>]) {
    let Some(info) = chain.first().and_then(|c| CertInfo::of(c)) else {
        return;
    };
    let now = SystemTime::now();
    if info.expired_at(now) {
        tracing::error!(
            port, file = %path.display(), certificate = %info,
            "this process's certificate has EXPIRED: peers will refuse it; replace the file (it is reloaded on SIGHUP or change)"
        );
    } else if info.not_before > now {
        tracing::error!(
            port, file = %path.display(), certificate = %info,
            "this process's certificate is not valid yet (is the clock right?)"
        );
    } else if info.not_after < now + Duration::from_secs(7 * 24 * 3600) {
        tracing::warn!(port, file = %path.display(), certificate = %info,
            "this process's certificate expires within a week");
    } else {
        tracing::info!(port, file = %path.display(), certificate = %info, "certificate loaded");
    }
}

/// Describes a refused certificate for the log: what it is and why it was refused.
pub(crate) fn log_refused(side: &str, der: &CertificateDer<'_>, error: &rustls::Error) {
    let what =
        CertInfo::of(der).map_or_else(|| "an unreadable certificate".to_owned(), |i| i.to_string());
    tracing::warn!(certificate = %what, reason = %explain(error), "refused the {side}'s certificate");
}

/// rustls' error, with what it means for an operator.
pub fn explain(error: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match error {
        E::InvalidCertificate(C::Expired) => "the certificate has expired".to_owned(),
        E::InvalidCertificate(C::ExpiredContext { time, not_after }) => format!(
            "the certificate expired at {} (now {})",
            rfc3339(unix(*not_after)),
            rfc3339(unix(*time))
        ),
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the certificate is not valid yet (check the clocks)".to_owned()
        }
        E::InvalidCertificate(C::UnknownIssuer) => {
            "the certificate is not signed by a trusted CA (another CA's certificate, or self-signed)"
                .to_owned()
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            format!("{error} (the certificate does not name the address dialed)")
        }
        E::NoCertificatesPresented => {
            "the peer presented no certificate, and this port requires one (mutual TLS)".to_owned()
        }
        E::AlertReceived(A::UnknownCA | A::BadCertificate | A::CertificateUnknown) => format!(
            "the peer refused this side's certificate ({error}): it does not trust our CA"
        ),
        E::AlertReceived(A::CertificateExpired) => {
            "the peer refused this side's certificate as expired".to_owned()
        }
        E::AlertReceived(A::CertificateRequired) => {
            "the peer requires a client certificate, and none is configured".to_owned()
        }
        E::InvalidMessage(_) => {
            format!("{error} (the other side does not speak TLS: is it serving plaintext?)")
        }
        other => other.to_string(),
    }
}

fn unix(t: rustls::pki_types::UnixTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(t.as_secs())
}
