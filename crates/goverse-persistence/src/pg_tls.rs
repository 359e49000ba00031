//! TLS to PostgreSQL as libpq's `sslmode` says: `disable`, `allow`/`prefer` (TLS when the server
//! offers it, nothing checked), `require` (TLS, nothing checked unless `sslrootcert` is given,
//! then as `verify-ca`), `verify-ca` (the server's certificate signed by `sslrootcert`),
//! `verify-full` (that, and naming the host). `sslcert`/`sslkey` present a client certificate.
//!
//! tokio-postgres knows only `disable`, `prefer` and `require`, so these settings are taken out
//! of the connection string before it parses it, and the checking is done here, on rustls.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use goverse_core::InvalidSetting;
use goverse_tls::{ClientConn, ClientFiles, ClientTls, Verify};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// The TLS settings of a connection string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SslSettings {
    /// `sslmode` as written (`""` when absent).
    pub(crate) mode: String,
    pub(crate) root_cert: Option<PathBuf>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
}

const KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl SslSettings {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "sslmode" => self.mode = value,
            "sslrootcert" => self.root_cert = Some(value.into()),
            "sslcert" => self.cert = Some(value.into()),
            _ => self.key = Some(value.into()),
        }
    }

    /// What tokio-postgres is told, and how the server's certificate is checked (`None`: no
    /// TLS at all).
    pub(crate) fn plan(&self) -> Result<(SslMode, Option<Verify>), InvalidSetting> {
        let verify_with_root = || {
            if self.root_cert.is_some() {
                Verify::CaOnly
            } else {
                Verify::Nothing
            }
        };
        let needs_root = |mode: &str| {
            if self.root_cert.is_none() {
                Err(InvalidSetting::new(
                    "sslmode",
                    format!("{mode} checks the server's certificate: give sslrootcert (its CA)"),
                ))
            } else {
                Ok(())
            }
        };
        Ok(match self.mode.as_str() {
            "" | "disable" => (SslMode::Disable, None),
            "allow" | "prefer" => (SslMode::Prefer, Some(Verify::Nothing)),
            "require" => (SslMode::Require, Some(verify_with_root())),
            "verify-ca" => {
                needs_root("verify-ca")?;
                (SslMode::Require, Some(Verify::CaOnly))
            }
            "verify-full" => {
                needs_root("verify-full")?;
                (SslMode::Require, Some(Verify::Full))
            }
            other => {
                return Err(InvalidSetting::new(
                    "sslmode",
                    format!(
                        "{other:?} is not one of disable, allow, prefer, require, verify-ca, \
                         verify-full"
                    ),
                ));
            }
        })
    }

    /// The rustls side of [`SslSettings::plan`]'s `verify`.
    pub(crate) fn connector(&self, verify: Verify) -> Result<PgTls, InvalidSetting> {
        let tls = ClientTls::load(
            "PostgreSQL",
            ClientFiles {
                ca: self.root_cert.clone(),
                cert: self.cert.clone(),
                key: self.key.clone(),
                verify,
            },
            &[],
        )
        .map_err(|e| InvalidSetting::new("sslrootcert", e))?;
        Ok(PgTls { tls })
    }
}

/// Takes the TLS settings out of a connection string (a URL's query, or `key=value` pairs);
/// returns the rest, which tokio-postgres parses.
pub(crate) fn split_ssl(url: &str) -> (String, SslSettings) {
    let mut ssl = SslSettings::default();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_owned(), ssl);
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if KEYS.contains(&key) {
                ssl.set(key, percent_decode(value));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return (rest, ssl);
    }
    let mut kept = Vec::new();
    for (raw, key, value) in pairs(url) {
        if KEYS.contains(&key.as_str()) {
            ssl.set(&key, value);
        } else {
            kept.push(raw);
        }
    }
    (kept.join(" "), ssl)
}

/// The `key=value` pairs of a libpq string: each as written, its key, and its value unquoted.
fn pairs(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return out;
        }
        let (mut raw, mut key, mut value) = (String::new(), String::new(), String::new());
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            raw.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek() == Some(&'=') {
            raw.push('=');
            chars.next();
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            let quoted = chars.peek() == Some(&'\'');
            if quoted {
                raw.push('\'');
                chars.next();
            }
            while let Some(c) = chars.next() {
                if quoted && c == '\'' {
                    raw.push(c);
                    break;
                }
                if !quoted && c.is_whitespace() {
                    break;
                }
                raw.push(c);
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        raw.push(escaped);
                        value.push(escaped);
                    }
                    continue;
                }
                value.push(c);
            }
        }
        out.push((raw, key, value));
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// tokio-postgres' TLS, on [`ClientTls`].
#[derive(Debug, Clone)]
pub(crate) struct PgTls {
    pub(crate) tls: Arc<ClientTls>,
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, host: &str) -> io::Result<PgTlsConnect> {
        Ok(PgTlsConnect {
            tls: self.tls.clone(),
            host: host.to_owned(),
        })
    }
}

/// One connection's handshake.
#[derive(Debug)]
pub(crate) struct PgTlsConnect {
    tls: Arc<ClientTls>,
    host: String,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<PgTlsStream<S>>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            // The host alone: its name is what the certificate is checked against.
            let host = if self.host.contains(':') {
                format!("[{}]:5432", self.host)
            } else {
                self.host.clone()
            };
            let conn = self.tls.connect(stream, &host).await?;
            Ok(PgTlsStream(conn))
        })
    }
}

/// A TLS connection to PostgreSQL.
#[derive(Debug)]
pub(crate) struct PgTlsStream<S>(ClientConn<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_come_out_of_both_forms_of_connection_string() {
        let (rest, ssl) = split_ssl(
            "host='db' port=5432 sslmode=verify-full sslrootcert='/etc/ca dir/ca.pem' user=u",
        );
        assert_eq!(rest, "host='db' port=5432 user=u");
        assert_eq!(ssl.mode, "verify-full");
        assert_eq!(ssl.root_cert, Some("/etc/ca dir/ca.pem".into()));
        let (rest, ssl) = split_ssl(
            "postgres://u:p@db:5432/x?sslmode=verify-ca&application_name=a&sslrootcert=%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u:p@db:5432/x?application_name=a");
        assert_eq!(ssl.mode, "verify-ca");
        assert_eq!(ssl.root_cert, Some("/ca.pem".into()));
        let (rest, ssl) = split_ssl("postgres://u@db/x?sslmode=require");
        assert_eq!(rest, "postgres://u@db/x");
        assert_eq!(
            ssl.plan().unwrap(),
            (SslMode::Require, Some(Verify::Nothing))
        );
    }

    #[test]
    fn each_sslmode_is_planned_as_libpq_reads_it() {
        let with = |mode: &str, root: bool| SslSettings {
            mode: mode.to_owned(),
            root_cert: root.then(|| "ca.pem".into()),
            ..SslSettings::default()
        };
        assert_eq!(with("", false).plan().unwrap(), (SslMode::Disable, None));
        assert_eq!(
            with("disable", true).plan().unwrap(),
            (SslMode::Disable, None)
        );
        assert_eq!(
            with("prefer", false).plan().unwrap(),
            (SslMode::Prefer, Some(Verify::Nothing))
        );
        assert_eq!(
            with("require", true).plan().unwrap(),
            (SslMode::Require, Some(Verify::CaOnly))
        );
        assert_eq!(
            with("verify-full", true).plan().unwrap(),
            (SslMode::Require, Some(Verify::Full))
        );
        let err = with("verify-ca", false).plan().unwrap_err();
        assert!(err.reason.contains("sslrootcert"), "{err}");
        let err = with("verify_full", true).plan().unwrap_err();
        assert!(err.reason.contains("verify-full"), "{err}");
    }
}
