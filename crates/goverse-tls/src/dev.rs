//! A development certificate authority: what `goverse config gen --tls` writes, and what tests
//! issue their certificates from. Keys are ECDSA P-256. Not a production CA: its key sits in a
//! file beside the certificates.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::TlsError;

/// A CA that issues certificates.
#[derive(Debug)]
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

/// A certificate and its key, as PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl Issued {
    /// Writes `{dir}/{stem}.pem` and `{dir}/{stem}-key.pem` (the key readable by its owner only).
    pub fn write(&self, dir: &Path, stem: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(format!("{stem}.pem")), &self.cert_pem)?;
        write_private(&dir.join(format!("{stem}-key.pem")), &self.key_pem)
    }
}

/// What a certificate is issued for.
#[derive(Debug, Clone)]
pub struct Subject {
    /// Its common name.
    pub common_name: String,
    /// Host names and IP addresses it is valid for.
    pub hosts: Vec<String>,
    /// A cluster member's name (`node/node-1`, `gate/gate-1`), written as the URI
    /// `goverse://node/node-1`; `None` for clients.
    pub member: Option<String>,
    /// Valid from...
    pub not_before: SystemTime,
    /// ...until.
    pub not_after: SystemTime,
}

impl Subject {
    /// A certificate for `common_name` on `hosts`, valid from an hour ago for `valid_for`.
    pub fn new(common_name: impl Into<String>, hosts: Vec<String>, valid_for: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            common_name: common_name.into(),
            hosts,
            member: None,
            not_before: now - Duration::from_secs(3600),
            not_after: now + valid_for,
        }
    }

    /// The same, naming a cluster member (`"node/node-1"`).
    pub fn member(mut self, member: impl Into<String>) -> Self {
        self.member = Some(member.into());
        self
    }
}

fn generate_error(what: &str) -> impl FnOnce(rcgen::Error) -> TlsError + '_ {
    move |cause| TlsError::Generate {
        what: what.to_owned(),
        cause,
    }
}

impl DevCa {
    /// A new CA named `common_name`, valid for ten years.
    pub fn generate(common_name: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate().map_err(generate_error("the CA key"))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, common_name);
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(10 * 365 * 24 * 3600)).into();
        let cert = params
            .self_signed(&key)
            .map_err(generate_error("the CA certificate"))?;
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA of `cert` and `key` (PEM files written by [`DevCa::write`]).
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert_pem = String::from_utf8_lossy(&crate::files::read(cert)?).into_owned();
        let key_pem = String::from_utf8_lossy(&crate::files::read(key)?).into_owned();
        let pair = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Pem {
            path: key.to_owned(),
            problem: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, pair).map_err(|e| TlsError::Pem {
            path: cert.to_owned(),
            problem: e.to_string(),
        })?;
        Ok(Self {
            issuer,
            cert_pem,
            key_pem,
        })
    }

    /// The CA's certificate.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes `{dir}/ca.pem` and `{dir}/ca-key.pem`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("ca.pem"), &self.cert_pem)?;
        write_private(&dir.join("ca-key.pem"), &self.key_pem)
    }

    /// Issues a certificate for `subject`, good for servers and clients both.
    pub fn issue(&self, subject: &Subject) -> Result<Issued, TlsError> {
        let what = format!("the certificate of {}", subject.common_name);
        let key = KeyPair::generate().map_err(generate_error(&what))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, subject.common_name.as_str());
        params.distinguished_name = name;
        for host in &subject.hosts {
            let san = match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.clone().try_into().map_err(generate_error(&what))?),
            };
            params.subject_alt_names.push(san);
        }
        if let Some(member) = &subject.member {
            params.subject_alt_names.push(SanType::URI(
                format!("{}{member}", crate::MEMBER_URI_PREFIX)
                    .try_into()
                    .map_err(generate_error(&what))?,
            ));
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = subject.not_before.into();
        params.not_after = subject.not_after.into();
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generate_error(&what))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(contents.as_bytes())
    }
    #[cfg(not(unix))]
    std::fs::write(path, contents)
}
