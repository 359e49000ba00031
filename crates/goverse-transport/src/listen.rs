//! Accepting connections on a port that strangers can reach: a cap on open connections, idle
//! connections closed, accept errors (out of file descriptors) backed off and logged once per
//! interval instead of spinning a core, and repeated refusals summarised.
//!
//! [`Acceptor`] is the accept loop every server of the project uses (the node service, the
//! gate's gRPC and HTTP ports); [`Guarded`] is the connection it hands out, which holds its slot
//! under the cap and ends itself with `TimedOut` once neither side has sent a byte for the idle
//! timeout.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Limits on the connections of one listening port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections open at once; further ones wait in the kernel's backlog until one
    /// closes. Default 10,000.
    pub max_connections: usize,
    /// A connection on which neither side has sent a byte for this long is closed. Healthy
    /// HTTP/2 peers are never idle this long (the servers ping every 10–15 s, and a live peer
    /// answers); server-sent event streams send heartbeats. Default 60 s.
    pub idle_timeout: Duration,
    /// How long an HTTP/1 client may take to send a request's headers (slow-header clients are
    /// cut off after it). Default 10 s.
    pub header_timeout: Duration,
    /// How long a stopping server lets open requests finish before closing the rest. Default 5 s.
    pub drain_timeout: Duration,
    /// The node service: how many requests of one peer stream may be running at once. While
    /// that many are, the node reads no more of the stream, so HTTP/2 flow control holds a peer
    /// that sends faster than the node answers (its link then fails further calls at once with
    /// `ResourceExhausted` once its own limit of waiting calls is reached). Default 65,536.
    pub peer_requests_in_flight: usize,
    /// Most connections open at once from one IP address; further ones are closed as soon as
    /// they are accepted (and counted in `goverse_connections_refused_total`). Default: no
    /// limit but `max_connections`.
    pub max_connections_per_address: Option<usize>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            peer_requests_in_flight: 65_536,
            max_connections_per_address: None,
        }
    }
}

impl ConnectionLimits {
    /// Checks that every limit is usable.
    pub fn validate(&self) -> Result<(), goverse_core::InvalidSetting> {
        use goverse_core::InvalidSetting;
        if self.max_connections == 0 {
            return Err(InvalidSetting::new("max_connections", "must be at least 1"));
        }
        if self.max_connections_per_address == Some(0) {
            return Err(InvalidSetting::new(
                "max_connections_per_address",
                "must be at least 1",
            ));
        }
        if self.peer_requests_in_flight == 0 {
            return Err(InvalidSetting::new(
                "peer_requests_in_flight",
                "must be at least 1",
            ));
        }
        for (name, value) in [
            ("idle_timeout", self.idle_timeout),
            ("header_timeout", self.header_timeout),
        ] {
            if value < Duration::from_millis(10) {
                return Err(InvalidSetting::new(
                    name,
                    format!("{value:?} is too short (minimum 10ms)"),
                ));
            }
        }
        Ok(())
    }
}

/// Logs an event at most once per interval, with how many were left out since the last line.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    /// A throttle letting one line through per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// Counts an event; `Some(left_out)` when this one should be logged (with the count of
    /// those left out since the last logged one), `None` when it is left out.
    pub fn hit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut state = self.state.lock();
        match state.0 {
            Some(last) if now.duration_since(last) < self.interval => {
                state.1 += 1;
                None
            }
            _ => {
                state.0 = Some(now);
                Some(std::mem::take(&mut state.1))
            }
        }
    }
}

/// Runs `serve` (a server that drains gracefully once `stopping` is cancelled) and gives it
/// `drain` after that to finish; `None` when it had not finished by then (its connections are
/// left to close with the process). `name` names the server in the log.
pub async fn with_drain_deadline<F: std::future::Future>(
    serve: F,
    stopping: tokio_util::sync::CancellationToken,
    drain: Duration,
    name: &'static str,
) -> Option<F::Output> {
    tokio::pin!(serve);
    tokio::select! {
        output = &mut serve => return Some(output),
        () = stopping.cancelled() => {}
    }
    match tokio::time::timeout(drain, serve).await {
        Ok(output) => Some(output),
        Err(_) => {
            tracing::warn!(
                server = name,
                ?drain,
                "connections still open after the drain deadline; leaving them"
            );
            None
        }
    }
}

/// The accept loop of one listening port.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    limits: ConnectionLimits,
    slots: Arc<Semaphore>,
    name: &'static str,
    errors: Throttle,
    full: Throttle,
    /// Connections open per address, when there is a limit per address.
    per_address: Arc<Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    over_address: Throttle,
}

/// Waits after a failed accept, doubling from this...
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// ...up to this.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// One log line per this long for accept errors and a full port.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Acceptor {
    /// Accepts on `listener` within `limits`; `name` ("node service", "gate gRPC") names the port
    /// in logs.
    pub fn new(listener: TcpListener, limits: ConnectionLimits, name: &'static str) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            name,
            errors: Throttle::new(LOG_INTERVAL),
            full: Throttle::new(LOG_INTERVAL),
            per_address: Arc::default(),
            over_address: Throttle::new(LOG_INTERVAL),
        }
    }

    /// Takes a slot of `remote`'s address under the per-address limit, or `None` when the
    /// address has as many open as it may (the connection is to be closed).
    fn address_slot(&self, remote: SocketAddr) -> Option<Option<AddressSlot>> {
        let Some(cap) = self.limits.max_connections_per_address else {
            return Some(None);
        };
        let ip = remote.ip();
        let mut open = self.per_address.lock();
        let count = open.entry(ip).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(Some(AddressSlot {
            open: self.per_address.clone(),
            ip,
        }))
    }

    /// The address the port listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The limits.
    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// The next connection, once there is room for it under the cap. Never fails: accept errors
    /// are logged (once per interval) and retried after a growing pause, so a process out of
    /// file descriptors waits instead of spinning.
    pub async fn accept(&mut self) -> (Guarded, SocketAddr) {
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            let slot = match self.slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    if let Some(left_out) = self.full.hit() {
                        tracing::warn!(
                            port = self.name,
                            max = self.limits.max_connections,
                            times_since_last = left_out,
                            "at the connection cap: new connections wait until one closes"
                        );
                    }
                    match self.slots.clone().acquire_owned().await {
                        Ok(slot) => slot,
                        // The semaphore is never closed.
                        Err(_) => continue,
                    }
                }
            };
            match self.listener.accept().await {
                Ok((stream, remote)) => {
                    let Some(address_slot) = self.address_slot(remote) else {
                        crate::stats::stats().refused_per_address();
                        if let Some(left_out) = self.over_address.hit() {
                            tracing::warn!(
                                port = self.name,
                                peer = %remote,
                                max = self.limits.max_connections_per_address,
                                times_since_last = left_out,
                                "closed a connection: its address has as many open as it may"
                            );
                        }
                        drop(stream);
                        continue;
                    };
                    if let Err(err) = stream.set_nodelay(true) {
                        tracing::debug!(cause = %err, "cannot set TCP_NODELAY");
                    }
                    let mut guarded = Guarded::new(stream, remote, slot, self.limits.idle_timeout);
                    guarded._address = address_slot;
                    return (guarded, remote);
                }
                // The connection died in the backlog: nothing is wrong with the port.
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(err) => {
                    if let Some(left_out) = self.errors.hit() {
                        tracing::warn!(port = self.name, cause = %err, retry_in = ?backoff,
                            errors_since_last = left_out,
                            "cannot accept connections (out of file descriptors?); pausing");
                    }
                    drop(slot);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }

    /// The connections as a stream, for `tonic`'s `serve_with_incoming_shutdown`.
    pub fn into_incoming(
        self,
    ) -> impl futures::Stream<Item = Result<Guarded, io::Error>> + Send + 'static {
        futures::stream::unfold(self, |mut acceptor| async move {
            let (io, _) = acceptor.accept().await;
            Some((Ok(io), acceptor))
        })
    }
}

/// One accepted connection: holds its slot under the port's cap until dropped, and fails its
/// reads and writes with `TimedOut` once neither side has sent a byte for the idle timeout.
///
/// The clock is checked in quarters of the timeout: a connection is closed between one and one
/// and a quarter idle timeouts after its last byte, and busy connections pay no clock read per
/// byte, only a counter.
#[derive(Debug)]
pub struct Guarded {
    stream: TcpStream,
    remote: SocketAddr,
    _slot: OwnedSemaphorePermit,
    _address: Option<AddressSlot>,
    quarter: Duration,
    tick: Pin<Box<Sleep>>,
    /// Reads and writes that moved bytes since the last tick.
    activity: u64,
    /// Ticks in a row without activity.
    quiet: u8,
}

/// A connection's place under its address's limit; given back when dropped.
#[derive(Debug)]
struct AddressSlot {
    open: Arc<Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    ip: std::net::IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl Guarded {
    fn new(
        stream: TcpStream,
        remote: SocketAddr,
        slot: OwnedSemaphorePermit,
        idle: Duration,
    ) -> Self {
        let quarter = idle / 4;
        Self {
            stream,
            remote,
            _slot: slot,
            _address: None,
            quarter,
            tick: Box::pin(tokio::time::sleep(quarter)),
            activity: 0,
            quiet: 0,
        }
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// Polls the idle clock: `Err(TimedOut)` once four quarters in a row passed without a byte.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.tick.as_mut().poll(cx).is_ready() {
            if self.activity == 0 {
                self.quiet += 1;
            } else {
                self.quiet = 0;
                self.activity = 0;
            }
            if self.quiet >= 4 {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "connection from {} idle for {:?}: closed",
                        self.remote,
                        self.quarter * 4
                    ),
                ));
            }
            let next = Instant::now() + self.quarter;
            self.tick.as_mut().reset(next);
        }
        Ok(())
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.activity += 1;
                }
                Poll::Ready(result)
            }
            Poll::Pending => match this.poll_idle(cx) {
                Ok(()) => Poll::Pending,
                Err(err) => Poll::Ready(Err(err)),
            },
        }
    }
}

impl Guarded {
    /// Counts a write that moved bytes; a write that waits checks the idle clock (a peer that
    /// stopped reading is idle too).
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.activity += 1;
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => match self.poll_idle(cx) {
                Ok(()) => Poll::Pending,
                Err(err) => Poll::Ready(Err(err)),
            },
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.wrote(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.wrote(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Guarded {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn limits(max: usize, idle_ms: u64) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: max,
            idle_timeout: Duration::from_millis(idle_ms),
            ..ConnectionLimits::default()
        }
    }

    #[test]
    fn throttle_lets_one_line_through_per_interval_and_counts_the_rest() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let throttle = Throttle::new(Duration::from_secs(10));
            assert_eq!(throttle.hit(), Some(0));
            for _ in 0..99 {
                assert_eq!(throttle.hit(), None);
            }
            tokio::time::advance(Duration::from_secs(11)).await;
            assert_eq!(throttle.hit(), Some(99));
            assert_eq!(throttle.hit(), None);
        });
    }

    // Real time: the connections are loopback sockets, which answer in real time.
    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_idle_timeout_and_a_busy_one_is_not() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut acceptor = Acceptor::new(listener, limits(10, 400), "test");
        let server = tokio::spawn(async move {
            let mut ends = Vec::new();
            for _ in 0..2 {
                let (mut io, _) = acceptor.accept().await;
                ends.push(tokio::spawn(async move {
                    let started = Instant::now();
                    let mut buf = [0u8; 64];
                    loop {
                        match io.read(&mut buf).await {
                            Ok(0) => return (started.elapsed(), "eof".to_owned()),
                            Ok(_) => {}
                            Err(err) => return (started.elapsed(), err.kind().to_string()),
                        }
                    }
                }));
            }
            let mut out = Vec::new();
            for end in ends {
                out.push(end.await.unwrap());
            }
            out
        });
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut busy = TcpStream::connect(addr).await.unwrap();
        // The busy one writes every 100 ms for 1 s, then closes.
        for _ in 0..10 {
            busy.write_all(b"x").await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(busy);
        let ends = server.await.unwrap();
        let (silent_after, silent_how) = &ends[0];
        assert_eq!(silent_how, "timed out");
        assert!(
            *silent_after >= Duration::from_millis(400)
                && *silent_after < Duration::from_millis(900),
            "{silent_after:?}"
        );
        let (busy_after, busy_how) = &ends[1];
        assert_eq!(busy_how, "eof", "kept while it talked");
        assert!(*busy_after >= Duration::from_millis(900), "{busy_after:?}");
    }

    // Real time: loopback sockets, as above.
    #[tokio::test]
    async fn connections_past_the_cap_wait_until_one_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut acceptor = Acceptor::new(listener, limits(2, 60_000), "test");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (io, _) = acceptor.accept().await;
                if tx.send(io).is_err() {
                    return;
                }
            }
        });
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let _c = TcpStream::connect(addr).await.unwrap();
        let first = rx.recv().await.unwrap();
        let _second = rx.recv().await.unwrap();
        // The third waits in the backlog while two are open...
        assert!(
            tokio::time::timeout(Duration::from_millis(300), rx.recv())
                .await
                .is_err()
        );
        // ...and is taken once one closes.
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        drop(third);
    }

    // Real time: loopback sockets.
    #[tokio::test]
    async fn an_address_past_its_limit_has_its_connections_closed_and_gets_room_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut acceptor = Acceptor::new(
            listener,
            ConnectionLimits {
                max_connections_per_address: Some(2),
                ..limits(100, 60_000)
            },
            "test",
        );
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (io, _) = acceptor.accept().await;
                if tx.send(io).is_err() {
                    return;
                }
            }
        });
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let first = rx.recv().await.unwrap();
        let _second = rx.recv().await.unwrap();
        // The third is closed by the server: its read sees the end at once.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
            .await
            .expect("closed at once");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        // One closes: the address has room again.
        drop(first);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _fourth = TcpStream::connect(addr).await.unwrap();
        let fourth = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("accepted")
            .unwrap();
        drop(fourth);
    }

    #[test]
    fn limits_are_checked() {
        assert!(ConnectionLimits::default().validate().is_ok());
        assert!(limits(0, 1000).validate().unwrap_err().setting == "max_connections");
        assert!(limits(1, 1).validate().unwrap_err().setting == "idle_timeout");
    }
}
