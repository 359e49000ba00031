//! The server side: a port's certificate and what it asks of clients, the handshake (a
//! plaintext client is told, in its own protocol, that the port needs TLS), and the connection
//! a server then serves.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};

use crate::files::{CertInfo, load_certs, load_key, load_roots, log_own_certificate};
use crate::reload::{Reloadable, Stamps};
use crate::verify::NamingClientVerifier;
use crate::{TlsError, provider};

/// Whether a port asks its clients for certificates.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// No client certificates (clients authenticate some other way, e.g. bearer tokens).
    #[default]
    None,
    /// A client may present one signed by this CA; one that presents another is refused.
    Optional(PathBuf),
    /// Every client must present one signed by this CA (mutual TLS).
    Required(PathBuf),
}

/// The files of a port's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    /// The certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// What is asked of clients.
    pub client_auth: ClientAuth,
}

/// A port's TLS configuration, rebuilt from its files on [`Reloadable::reload`].
#[derive(Debug)]
pub struct ServerTls {
    port: String,
    files: ServerFiles,
    alpn: Vec<Vec<u8>>,
    current: ArcSwap<ServerConfig>,
    stamps: Stamps,
}

/// ALPN of a gRPC port (HTTP/2 only; gRPC clients insist on it).
pub const ALPN_H2: &[&[u8]] = &[b"h2"];
/// ALPN of an HTTP port (HTTP/2 or HTTP/1.1).
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

impl ServerTls {
    /// Loads `files` for the port `port` ("gate gRPC"), offering `alpn` ([`ALPN_H2`],
    /// [`ALPN_HTTP`]).
    pub fn load(
        port: impl Into<String>,
        files: ServerFiles,
        alpn: &[&[u8]],
    ) -> Result<Arc<Self>, TlsError> {
        let port = port.into();
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let config = build(&port, &files, &alpn)?;
        let mut paths = vec![files.cert.clone(), files.key.clone()];
        if let ClientAuth::Optional(ca) | ClientAuth::Required(ca) = &files.client_auth {
            paths.push(ca.clone());
        }
        Ok(Arc::new(Self {
            port,
            current: ArcSwap::from_pointee(config),
            stamps: Stamps::new(paths),
            files,
            alpn,
        }))
    }

    /// The configuration new connections get.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// The port's name.
    pub fn port(&self) -> &str {
        &self.port
    }

    /// Reads a connection's first byte: a TLS client's handshake is completed (within the
    /// caller's deadline); anything else is [`Handshake::Plaintext`], which
    /// [`refuse_plaintext`] answers.
    pub async fn accept<IO>(
        &self,
        mut io: IO,
        remote: Option<SocketAddr>,
    ) -> Result<Handshake<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let mut first = [0u8; 1];
        let n = io.read(&mut first).await.map_err(HandshakeError::Io)?;
        if n == 0 {
            return Err(HandshakeError::Closed);
        }
        let io = Rewind::new(io, first[0]);
        // A TLS record of type handshake (22) starts every TLS connection.
        if first[0] != 0x16 {
            return Ok(Handshake::Plaintext(io));
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config());
        let stream = acceptor.accept(io).await.map_err(|err| {
            match err
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(tls) => HandshakeError::Tls(tls.clone()),
                None => HandshakeError::Io(err),
            }
        })?;
        let peer = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| CertInfo::of(leaf))
            .map(Arc::new);
        Ok(Handshake::Tls(TlsConn {
            stream: Box::new(stream),
            info: TlsConnectInfo { remote, peer },
        }))
    }
}

fn build(port: &str, files: &ServerFiles, alpn: &[Vec<u8>]) -> Result<ServerConfig, TlsError> {
    let chain = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    log_own_certificate(port, &files.cert, &chain);
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|cause| TlsError::Refused {
            what: "the TLS versions".to_owned(),
            cause,
        })?;
    let builder = match &files.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional(ca) | ClientAuth::Required(ca) => {
            let roots = Arc::new(load_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            let verifier = if matches!(files.client_auth, ClientAuth::Optional(_)) {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|e| {
                TlsError::Setting(format!("the client CA in {}: {e}", ca.display()))
            })?;
            builder.with_client_cert_verifier(Arc::new(NamingClientVerifier(verifier)))
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|cause| TlsError::Refused {
            what: format!(
                "the certificate {} with the key {}",
                files.cert.display(),
                files.key.display()
            ),
            cause,
        })?;
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}

impl Reloadable for ServerTls {
    fn reload(&self, force: bool) -> Result<bool, TlsError> {
        if !self.stamps.changed() && !force {
            return Ok(false);
        }
        let config = build(&self.port, &self.files, &self.alpn)?;
        self.current.store(Arc::new(config));
        Ok(true)
    }

    fn describe(&self) -> String {
        format!("{} TLS ({})", self.port, self.files.cert.display())
    }
}

/// What a connection turned out to be.
#[derive(Debug)]
pub enum Handshake<IO> {
    /// A TLS connection, handshake done.
    Tls(TlsConn<IO>),
    /// A client that does not speak TLS; its first byte is put back.
    Plaintext(Rewind<IO>),
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client closed the connection before sending anything.
    #[error("closed before sending anything")]
    Closed,
    /// The connection failed.
    #[error("{0}")]
    Io(io::Error),
    /// TLS failed (a certificate refused either way, a protocol error).
    #[error("{}", crate::files::explain(.0))]
    Tls(rustls::Error),
}

/// What a server knows of a TLS connection: the client's address and, when it presented one,
/// its certificate. Found in a request's extensions (see [`remote_addr`]).
#[derive(Debug, Clone)]
pub struct TlsConnectInfo {
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// The client's certificate, verified.
    pub peer: Option<Arc<CertInfo>>,
}

/// A TLS connection a server accepted.
#[derive(Debug)]
pub struct TlsConn<IO> {
    stream: Box<tokio_rustls::server::TlsStream<Rewind<IO>>>,
    info: TlsConnectInfo,
}

impl<IO> TlsConn<IO> {
    /// What is known of the client.
    pub fn info(&self) -> &TlsConnectInfo {
        &self.info
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsConn<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().stream).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsConn<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().stream).poll_shutdown(cx)
    }
}

impl<IO> tonic::transport::server::Connected for TlsConn<IO> {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

/// The client's address of a request a tonic server received, over TLS or not.
pub fn remote_addr<T>(request: &tonic::Request<T>) -> Option<SocketAddr> {
    request.remote_addr().or_else(|| {
        request
            .extensions()
            .get::<TlsConnectInfo>()
            .and_then(|info| info.remote)
    })
}

/// The verified certificate a request's client presented, if any.
pub fn peer_certificate<T>(request: &tonic::Request<T>) -> Option<Arc<CertInfo>> {
    request
        .extensions()
        .get::<TlsConnectInfo>()
        .and_then(|info| info.peer.clone())
}

/// A connection whose first byte was read and is put back in front of the rest.
#[derive(Debug)]
pub struct Rewind<IO> {
    first: Option<u8>,
    io: IO,
}

impl<IO> Rewind<IO> {
    fn new(io: IO, first: u8) -> Self {
        Self {
            first: Some(first),
            io,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(byte) = this.first
            && buf.remaining() > 0
        {
            buf.put_slice(&[byte]);
            this.first = None;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// What a plaintext client of a TLS port is told.
pub const PLAINTEXT_REFUSED: &str = "this port accepts only TLS connections: connect with TLS (https://, or TLS channel credentials for gRPC)";

/// Answers a plaintext client of a TLS port in its own protocol, for at most `deadline`: a
/// gRPC call gets `UNAUTHENTICATED` with [`PLAINTEXT_REFUSED`], any other HTTP request a
/// 400 with the same text. Then the connection is closed.
pub async fn refuse_plaintext<IO>(io: Rewind<IO>, deadline: Duration)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let service = hyper::service::service_fn(|request: hyper::Request<hyper::body::Incoming>| {
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        let response = if grpc {
            http::Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .header("grpc-status", "16")
                .header("grpc-message", PLAINTEXT_REFUSED)
                .body(String::new())
        } else {
            http::Response::builder()
                .status(400)
                .header("content-type", "text/plain; charset=utf-8")
                .header("connection", "close")
                .body(format!("{PLAINTEXT_REFUSED}\n"))
        };
        std::future::ready(response)
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let served = builder.serve_connection(TokioIo::new(io), service);
    let _ = tokio::time::timeout(deadline, served).await;
}
