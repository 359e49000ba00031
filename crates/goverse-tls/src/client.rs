//! The client side: whom a process trusts, what certificate it presents, and the handshake over
//! a connection it opened.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ClientConfig;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::ServerName;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::files::{load_certs, load_key, load_roots, log_own_certificate};
use crate::reload::{Reloadable, Stamps};
use crate::verify::{ServerVerifier, Verify};
use crate::{TlsError, provider};

/// The files of a client's TLS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientFiles {
    /// The CA certificates servers are checked against (PEM). Needed unless `verify` is
    /// [`Verify::Nothing`].
    pub ca: Option<PathBuf>,
    /// The certificate to present (mutual TLS), with `key`.
    pub cert: Option<PathBuf>,
    /// The key of `cert`.
    pub key: Option<PathBuf>,
    /// How much of the server's certificate is checked.
    pub verify: Verify,
}

/// A client's TLS configuration, rebuilt from its files on [`Reloadable::reload`].
#[derive(Debug)]
pub struct ClientTls {
    what: String,
    files: ClientFiles,
    alpn: Vec<Vec<u8>>,
    current: ArcSwap<ClientConfig>,
    stamps: Stamps,
}

impl ClientTls {
    /// Loads `files` for `what` ("node links", "etcd"), offering `alpn`.
    pub fn load(
        what: impl Into<String>,
        files: ClientFiles,
        alpn: &[&[u8]],
    ) -> Result<Arc<Self>, TlsError> {
        let what = what.into();
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let config = build(&what, &files, &alpn)?;
        let paths = [&files.ca, &files.cert, &files.key]
            .into_iter()
            .flatten()
            .cloned()
            .collect::<Vec<_>>();
        Ok(Arc::new(Self {
            what,
            current: ArcSwap::from_pointee(config),
            stamps: Stamps::new(paths),
            files,
            alpn,
        }))
    }

    /// The configuration new connections get.
    pub fn config(&self) -> Arc<ClientConfig> {
        self.current.load_full()
    }

    /// Runs the handshake over `io`, a connection to `address` (`host:port`, optionally with
    /// a scheme), checking the server's certificate against the host. The error names the
    /// address and says what went wrong.
    pub async fn connect<IO>(&self, io: IO, address: &str) -> io::Result<ClientConn<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let name = server_name(address)?;
        let connector = tokio_rustls::TlsConnector::from(self.config());
        let address: Arc<str> = address.into();
        match connector.connect(name, io).await {
            Ok(stream) => Ok(ClientConn {
                stream: Box::new(stream),
                address,
            }),
            Err(err) => Err(explained(err, "TLS handshake with", &address)),
        }
    }
}

/// `err`, its rustls cause explained, naming the server.
fn explained(err: io::Error, what: &str, address: &str) -> io::Error {
    let why = match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => crate::files::explain(tls),
        None => err.to_string(),
    };
    io::Error::new(err.kind(), format!("{what} {address} failed: {why}"))
}

/// A TLS connection to a server. A TLS 1.3 server refuses a client's certificate after the
/// client considers the handshake done, so that refusal arrives on the first read: errors are
/// explained and name the server here too.
#[derive(Debug)]
pub struct ClientConn<IO> {
    stream: Box<tokio_rustls::client::TlsStream<IO>>,
    address: Arc<str>,
}

impl<IO> ClientConn<IO> {
    /// The protocol the server chose by ALPN.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.stream.get_ref().1.alpn_protocol()
    }
}

/// Explains a TLS error, and logs it: HTTP/2 clients report a connection that failed under
/// them as merely closed, so the log is where its reason shows.
fn map<T>(polled: Poll<io::Result<T>>, address: &str) -> Poll<io::Result<T>> {
    match polled {
        Poll::Ready(Err(err))
            if err
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>()) =>
        {
            let err = explained(err, "TLS connection to", address);
            tracing::warn!("{err}");
            Poll::Ready(Err(err))
        }
        other => other,
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientConn<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        map(
            Pin::new(&mut *this.stream).poll_read(cx, buf),
            &this.address,
        )
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClientConn<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        map(
            Pin::new(&mut *this.stream).poll_write(cx, buf),
            &this.address,
        )
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        map(
            Pin::new(&mut *this.stream).poll_write_vectored(cx, bufs),
            &this.address,
        )
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        map(Pin::new(&mut *this.stream).poll_flush(cx), &this.address)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The name a server at `address` is checked against: its host, an IP address or a DNS name.
pub fn server_name(address: &str) -> io::Result<ServerName<'static>> {
    let rest = address.split_once("://").map_or(address, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or(v6)
    } else {
        authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host)
    };
    ServerName::try_from(host.to_owned()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{address}: {host:?} is not a host name or IP address ({e})"),
        )
    })
}

fn build(what: &str, files: &ClientFiles, alpn: &[Vec<u8>]) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let inner = match (&files.ca, files.verify) {
        (_, Verify::Nothing) => None,
        (Some(ca), _) => {
            let roots = Arc::new(load_roots(ca)?);
            let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| TlsError::Setting(format!("the CA in {}: {e}", ca.display())))?;
            Some(verifier as Arc<dyn rustls::client::danger::ServerCertVerifier>)
        }
        (None, verify) => {
            return Err(TlsError::Setting(format!(
                "{what}: checking servers' certificates ({verify:?}) needs a CA file"
            )));
        }
    };
    let verifier = Arc::new(ServerVerifier {
        inner,
        verify: files.verify,
        provider: provider.clone(),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|cause| TlsError::Refused {
            what: "the TLS versions".to_owned(),
            cause,
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let chain = load_certs(cert)?;
            log_own_certificate(what, cert, &chain);
            builder
                .with_client_auth_cert(chain, load_key(key)?)
                .map_err(|cause| TlsError::Refused {
                    what: format!(
                        "the certificate {} with the key {}",
                        cert.display(),
                        key.display()
                    ),
                    cause,
                })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(TlsError::Setting(format!(
                "{what}: a client certificate needs both a certificate and a key file"
            )));
        }
    };
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}

impl Reloadable for ClientTls {
    fn reload(&self, force: bool) -> Result<bool, TlsError> {
        if !self.stamps.changed() && !force {
            return Ok(false);
        }
        let config = build(&self.what, &self.files, &self.alpn)?;
        self.current.store(Arc::new(config));
        Ok(true)
    }

    fn describe(&self) -> String {
        format!("{} TLS", self.what)
    }
}

impl ClientTls {
    /// A TCP connection to `address` (no Nagle delay) with the handshake done over it.
    pub async fn dial(&self, address: &str) -> io::Result<ClientConn<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(address).await?;
        tcp.set_nodelay(true)?;
        self.connect(tcp, address).await
    }
}

/// The connector of a tonic channel to `address` over TLS (hand it to
/// `Endpoint::connect_with_connector`): each connection is [`ClientTls::dial`]ed.
pub fn connector(
    tls: Arc<ClientTls>,
    address: String,
) -> impl tower::Service<
    http::Uri,
    Response = hyper_util::rt::TokioIo<ClientConn<tokio::net::TcpStream>>,
    Error = io::Error,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_: http::Uri| {
        let (tls, address) = (tls.clone(), address.clone());
        async move { tls.dial(&address).await.map(hyper_util::rt::TokioIo::new) }
    })
}
