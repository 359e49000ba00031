//! The node protocol over TLS: links dial through [`TlsDialer`] (mutual TLS: they present the
//! process's certificate), and the node service accepts through [`tls_incoming`].

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use goverse_tls::{ClientTls, Handshake, HandshakeError, ServerTls, TlsConn};
use tokio::sync::mpsc;

use crate::io::{Dialer, Io};
use crate::listen::{Acceptor, Guarded, Throttle};

/// Dials through another [`Dialer`] and runs a TLS handshake over what it opens, checking the
/// node's certificate against the address dialed.
pub struct TlsDialer {
    inner: Arc<dyn Dialer>,
    tls: Arc<ClientTls>,
}

impl std::fmt::Debug for TlsDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsDialer")
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl TlsDialer {
    /// TLS with `tls` over connections `inner` opens.
    pub fn new(inner: Arc<dyn Dialer>, tls: Arc<ClientTls>) -> Self {
        Self { inner, tls }
    }
}

impl Dialer for TlsDialer {
    fn dial(&self, address: &str) -> BoxFuture<'static, io::Result<Box<dyn Io>>> {
        let dial = self.inner.dial(address);
        let tls = self.tls.clone();
        let address = address.to_owned();
        Box::pin(async move {
            let io = dial.await?;
            let stream = tls.connect(io, &address).await?;
            Ok(Box::new(stream) as Box<dyn Io>)
        })
    }
}

/// How long a plaintext client of a TLS port is kept to be told so.
const PLAINTEXT_ANSWER_DEADLINE: Duration = Duration::from_secs(5);
/// One log line per this long for failed handshakes on a port.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The TLS connections of `acceptor`: each handshake runs in a task of its own within the
/// port's header timeout (a slow or silent client holds no other), failures are logged (once
/// per interval, with the client's address and why), and plaintext clients are told the port
/// needs TLS (as a gRPC status or an HTTP 400) before they are closed.
pub fn tls_incoming(
    mut acceptor: Acceptor,
    tls: Arc<ServerTls>,
) -> impl futures::Stream<Item = io::Result<TlsConn<Guarded>>> + Send + 'static {
    let (tx, rx) = mpsc::channel(64);
    let handshake_timeout = acceptor.limits().header_timeout;
    let failures = Arc::new(HandshakeLog::default());
    tokio::spawn(async move {
        loop {
            let (io, remote) = tokio::select! {
                () = tx.closed() => return,
                accepted = acceptor.accept() => accepted,
            };
            let (tx, tls, failures) = (tx.clone(), tls.clone(), failures.clone());
            tokio::spawn(async move {
                let accepted = accept_tls(&tls, io, remote, handshake_timeout, &failures);
                if let Some(conn) = accepted.await {
                    let _ = tx.send(Ok(conn)).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The log of a port's failed handshakes: one line per interval for plaintext clients and one
/// for other failures, each with how many more there were.
#[derive(Debug)]
pub struct HandshakeLog {
    plaintext: Throttle,
    failed: Throttle,
}

impl Default for HandshakeLog {
    fn default() -> Self {
        Self {
            plaintext: Throttle::new(LOG_INTERVAL),
            failed: Throttle::new(LOG_INTERVAL),
        }
    }
}

/// One connection's TLS handshake within `deadline`; `None` when it failed (logged through
/// `failures`, with the client's address and why) or the client spoke plaintext (told in its
/// own protocol that the port needs TLS, then closed).
pub async fn accept_tls(
    tls: &ServerTls,
    io: Guarded,
    remote: std::net::SocketAddr,
    deadline: Duration,
    failures: &HandshakeLog,
) -> Option<TlsConn<Guarded>> {
    let why = match tokio::time::timeout(deadline, tls.accept(io, Some(remote))).await {
        Ok(Ok(Handshake::Tls(conn))) => return Some(conn),
        Ok(Ok(Handshake::Plaintext(io))) => {
            if let Some(more) = failures.plaintext.hit() {
                tracing::warn!(port = tls.port(), peer = %remote, refused_since_last = more,
                    "refused a plaintext connection: this port accepts only TLS");
            }
            goverse_tls::refuse_plaintext(io, PLAINTEXT_ANSWER_DEADLINE).await;
            return None;
        }
        Ok(Err(HandshakeError::Closed)) => return None,
        Ok(Err(err)) => err.to_string(),
        Err(_) => format!("no handshake within {deadline:?}"),
    };
    if let Some(more) = failures.failed.hit() {
        tracing::warn!(port = tls.port(), peer = %remote, refused_since_last = more,
            "TLS handshake failed: {why}");
    }
    None
}
