//! The byte streams the node protocol runs over, taken from the caller: links dial through a
//! [`Dialer`] and servers accept any stream of incoming connections ([`crate::serve_incoming`]).
//!
//! [`TcpDialer`] is the network; [`MemoryNetwork`] is a network inside one process (in-memory
//! pipes, addresses as names, listeners that can be made unreachable), so a whole cluster runs
//! the real encoder, batching, lanes and HTTP/2 on paused time.

use std::collections::{HashMap, HashSet};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint, Uri};

/// A connection's bytes, either way.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A connection a server accepts: bytes both ways, and what the server learns of it (its
/// `ConnectInfo`). Every type that is all of these is one.
pub trait Accepted:
    AsyncRead
    + AsyncWrite
    + tonic::transport::server::Connected<ConnectInfo: Clone + Send + Sync + 'static>
    + Unpin
    + Send
    + 'static
{
}

impl<T> Accepted for T where
    T: AsyncRead
        + AsyncWrite
        + tonic::transport::server::Connected<ConnectInfo: Clone + Send + Sync + 'static>
        + Unpin
        + Send
        + 'static
{
}

/// Opens connections to nodes by address.
pub trait Dialer: Send + Sync + 'static {
    /// A new connection to the node serving at `address`.
    fn dial(&self, address: &str) -> BoxFuture<'static, io::Result<Box<dyn Io>>>;
}

/// Dials over TCP (no Nagle delay: the protocol batches itself).
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpDialer;

impl Dialer for TcpDialer {
    fn dial(&self, address: &str) -> BoxFuture<'static, io::Result<Box<dyn Io>>> {
        let address = address.to_owned();
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(&address).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as Box<dyn Io>)
        })
    }
}

/// An HTTP/2 channel to `address` over a connection `dialer` opens within `connect_timeout`,
/// pinging an idle connection every 10 s and dropping it after 20 s without an answer.
pub(crate) async fn channel(
    address: &str,
    dialer: &Arc<dyn Dialer>,
    connect_timeout: Duration,
) -> Result<Channel, crate::LinkError> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| crate::LinkError::BadAddress {
            address: address.to_owned(),
            reason: e.to_string(),
        })?
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20));
    let dialer = dialer.clone();
    let address = address.to_owned();
    let connector = tower::service_fn(move |_: Uri| {
        let dial = dialer.dial(&address);
        async move { dial.await.map(TokioIo::new) }
    });
    let dialed = tokio::time::timeout(connect_timeout, endpoint.connect_with_connector(connector));
    match dialed.await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(err)) => {
            // The innermost cause says it best ("Connection refused (os error 111)").
            let mut cause: &dyn std::error::Error = &err;
            while let Some(source) = cause.source() {
                cause = source;
            }
            Err(crate::LinkError::Connect(cause.to_string()))
        }
        Err(_) => Err(crate::LinkError::ConnectTimeout(connect_timeout)),
    }
}

/// A network inside one process: listeners by address, connections as in-memory pipes.
///
/// `listen` takes an address; [`Dialer::dial`] to it hands the listener one end of a new pipe.
/// [`MemoryNetwork::set_reachable`] makes an address refuse new connections and breaks the
/// ones open to it (a node cut off), as a refused or reset TCP connection would look.
#[derive(Default)]
pub struct MemoryNetwork {
    listeners: Mutex<HashMap<String, mpsc::UnboundedSender<MemoryStream>>>,
    unreachable: Mutex<HashSet<String>>,
    /// Every connection's cut switch, by the address it was dialed to.
    open: Mutex<HashMap<String, Vec<std::sync::Weak<Cut>>>>,
    dialed: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryNetwork")
            .field(
                "listeners",
                &self.listeners.lock().keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// How much one direction of a pipe buffers before the writer waits.
const PIPE_BYTES: usize = 256 * 1024;

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Listens at `address`; refused when something listens there already.
    pub fn listen(&self, address: &str) -> io::Result<MemoryIncoming> {
        let mut listeners = self.listeners.lock();
        if listeners.get(address).is_some_and(|tx| !tx.is_closed()) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{address} is already listened on"),
            ));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        listeners.insert(address.to_owned(), tx);
        Ok(MemoryIncoming { rx })
    }

    /// Connections made so far.
    pub fn connections_made(&self) -> u64 {
        self.dialed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Makes `address` reachable again, or (`false`) refuses new connections to it and breaks
    /// the open ones.
    pub fn set_reachable(&self, address: &str, reachable: bool) {
        if reachable {
            self.unreachable.lock().remove(address);
            return;
        }
        self.unreachable.lock().insert(address.to_owned());
        let open = self.open.lock().remove(address).unwrap_or_default();
        for cut in open.iter().filter_map(std::sync::Weak::upgrade) {
            cut.cut();
        }
    }
}

impl Dialer for MemoryNetwork {
    fn dial(&self, address: &str) -> BoxFuture<'static, io::Result<Box<dyn Io>>> {
        let refused = |why: &str| io::Error::new(io::ErrorKind::ConnectionRefused, why.to_owned());
        let dialed = (|| {
            if self.unreachable.lock().contains(address) {
                return Err(refused("unreachable (cut off in this process's network)"));
            }
            let listeners = self.listeners.lock();
            let Some(listener) = listeners.get(address) else {
                return Err(refused("nothing listens there"));
            };
            let cut = Arc::new(Cut::default());
            let (near, far) = tokio::io::duplex(PIPE_BYTES);
            let server = MemoryStream {
                pipe: far,
                cut: cut.clone(),
            };
            if listener.send(server).is_err() {
                return Err(refused("nothing listens there any more"));
            }
            let mut open = self.open.lock();
            let cuts = open.entry(address.to_owned()).or_default();
            cuts.retain(|cut| cut.strong_count() > 0);
            cuts.push(Arc::downgrade(&cut));
            self.dialed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(Box::new(MemoryStream { pipe: near, cut }) as Box<dyn Io>)
        })();
        Box::pin(std::future::ready(dialed))
    }
}

/// The connections arriving at a [`MemoryNetwork`] listener.
#[derive(Debug)]
pub struct MemoryIncoming {
    rx: mpsc::UnboundedReceiver<MemoryStream>,
}

impl Stream for MemoryIncoming {
    type Item = io::Result<MemoryStream>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|next| next.map(Ok))
    }
}

/// A connection's cut switch, shared by its two ends: once cut, every read and write fails,
/// and reads waiting for bytes are woken to find out.
#[derive(Debug, Default)]
struct Cut {
    done: std::sync::atomic::AtomicBool,
    waiting: Mutex<Vec<std::task::Waker>>,
}

impl Cut {
    fn cut(&self) {
        self.done.store(true, std::sync::atomic::Ordering::Release);
        for waker in std::mem::take(&mut *self.waiting.lock()) {
            waker.wake();
        }
    }

    fn wait(&self, cx: &Context<'_>) {
        let mut waiting = self.waiting.lock();
        if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
            waiting.push(cx.waker().clone());
        }
    }
}

/// One end of an in-memory connection.
#[derive(Debug)]
pub struct MemoryStream {
    pipe: DuplexStream,
    cut: Arc<Cut>,
}

impl MemoryStream {
    fn check(&self) -> io::Result<()> {
        if self.cut.done.load(std::sync::atomic::Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "cut off in this process's network",
            ));
        }
        Ok(())
    }
}

impl AsyncRead for MemoryStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        let polled = Pin::new(&mut this.pipe).poll_read(cx, buf);
        if polled.is_pending() {
            this.cut.wait(cx);
        }
        polled
    }
}

impl AsyncWrite for MemoryStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.pipe).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.pipe).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().pipe).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for MemoryStream {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}
