//! The connection to one gate at a time: made on demand, given up when it breaks, remade to the
//! next gate in the list with back-off.

use std::error::Error as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use goverse_core::{CallError, ErrorCode};
use tokio::time::Instant;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

/// How the client behaves towards its gates; see [`crate::ClientBuilder`].
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) connect_timeout: Duration,
    pub(crate) call_timeout: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) reliable_retry_for: Duration,
    pub(crate) reconnect_for: Option<Duration>,
    pub(crate) keepalive_interval: Duration,
    pub(crate) keepalive_timeout: Duration,
    pub(crate) tls: Option<Arc<goverse_tls::ClientTls>>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(30),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            reliable_retry_for: Duration::from_secs(60),
            reconnect_for: None,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
            tls: None,
        }
    }
}

/// One HTTP/2 connection to one gate. Calls and the Register stream of a client share it, so the
/// gate binds the client's calls to its registration.
#[derive(Debug)]
pub(crate) struct Connection {
    /// Distinguishes this connection from a later one to the same gate.
    id: u64,
    /// The gate's address, as configured.
    pub(crate) gate: String,
    pub(crate) channel: Channel,
}

/// The gates and the connection in use.
#[derive(Debug)]
pub(crate) struct Gates {
    addresses: Vec<String>,
    pub(crate) settings: Settings,
    current: parking_lot::Mutex<Option<Arc<Connection>>>,
    /// Held while connecting (one attempt at a time); the index of the gate to try first.
    connecting: tokio::sync::Mutex<usize>,
    next_id: AtomicU64,
}

/// What became of a request that failed with a gRPC status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The gate answered with this status: the connection is fine.
    Answered,
    /// The request never reached a gate (the connection was refused or the gate turned it away
    /// unprocessed): sending it elsewhere is safe for any call.
    NotSent,
    /// The connection broke with the request in flight: it may or may not have run.
    Lost,
    /// The call's own deadline passed on the client's side of the connection.
    TimedOut,
}

impl Gates {
    pub(crate) fn new(addresses: Vec<String>, settings: Settings) -> Self {
        Self {
            addresses,
            settings,
            current: parking_lot::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(0),
            next_id: AtomicU64::new(1),
        }
    }

    pub(crate) fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// The gate in use, if connected.
    pub(crate) fn current_gate(&self) -> Option<String> {
        self.current.lock().as_ref().map(|c| c.gate.clone())
    }

    /// The connection in use, or a new one: each gate is tried in turn (starting after the one
    /// that failed last), with back-off between rounds, until `deadline`; with `one_round`, one
    /// round only (the caller retries and reports).
    pub(crate) async fn connection(
        &self,
        deadline: Instant,
        one_round: bool,
    ) -> Result<Arc<Connection>, CallError> {
        if let Some(connection) = self.current.lock().clone() {
            return Ok(connection);
        }
        let deadline = match self.settings.reconnect_for {
            Some(period) => deadline.min(Instant::now() + period),
            None => deadline,
        };
        // One caller connects at a time; the others wait for it, but never past their deadline.
        let Ok(mut next) = tokio::time::timeout_at(deadline, self.connecting.lock()).await else {
            return Err(CallError::unavailable(
                "no gate reachable yet (still trying to connect)",
            ));
        };
        // Another caller may have connected while this one waited.
        if let Some(connection) = self.current.lock().clone() {
            return Ok(connection);
        }
        let count = self.addresses.len();
        let mut backoff = self.settings.backoff_min;
        loop {
            let mut failures = Vec::with_capacity(count);
            for _ in 0..count {
                let index = *next;
                *next = (index + 1) % count;
                let gate = &self.addresses[index];
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match self
                    .connect(gate, left.min(self.settings.connect_timeout))
                    .await
                {
                    Ok(channel) => {
                        let connection = Arc::new(Connection {
                            id: self.next_id.fetch_add(1, Ordering::Relaxed),
                            gate: gate.clone(),
                            channel,
                        });
                        tracing::info!(gate = %gate, "connected to gate");
                        *self.current.lock() = Some(connection.clone());
                        return Ok(connection);
                    }
                    Err(cause) => {
                        tracing::warn!(gate = %gate, %cause, "cannot connect to gate");
                        failures.push(format!("{gate}: {cause}"));
                    }
                }
            }
            let pause = jittered(backoff);
            if one_round || Instant::now() + pause >= deadline {
                let why = if failures.is_empty() {
                    "no time left to try".to_owned()
                } else {
                    failures.join("; ")
                };
                return Err(CallError::unavailable(format!("no gate reachable ({why})")));
            }
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(self.settings.backoff_max);
        }
    }

    async fn connect(&self, gate: &str, timeout: Duration) -> Result<Channel, String> {
        let endpoint = Endpoint::from_shared(format!("http://{gate}"))
            .map_err(|e| format!("bad gate address: {}", chain(&e)))?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(self.settings.keepalive_interval)
            .keep_alive_timeout(self.settings.keepalive_timeout)
            .keep_alive_while_idle(true);
        let connected = match &self.settings.tls {
            None => tokio::time::timeout(timeout, endpoint.connect()).await,
            Some(tls) => {
                let connector = goverse_tls::connector(tls.clone(), gate.to_owned());
                tokio::time::timeout(timeout, endpoint.connect_with_connector(connector)).await
            }
        };
        match connected {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(err)) => Err(chain(&err)),
            Err(_) => Err(format!("no connection within {timeout:?}")),
        }
    }

    /// Gives `connection` up (when it is still the one in use): the next call connects anew, to
    /// the next gate in the list.
    pub(crate) fn broken(&self, connection: &Connection, why: &str) {
        let mut current = self.current.lock();
        if current.as_ref().is_some_and(|c| c.id == connection.id) {
            tracing::warn!(gate = %connection.gate, cause = %why, "gate connection lost");
            *current = None;
        }
    }
}

/// `duration` less up to a fifth at random, so clients that lost one gate together do not
/// reconnect in lockstep.
pub(crate) fn jittered(duration: Duration) -> Duration {
    duration.mul_f64(1.0 - fastrand::f64() / 5.0)
}

/// An error and its sources, `: `-separated (a transport error's own text says little).
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// Whether the gate answered `status` or the transport failed, and then whether the request had
/// left. A status the gate sent carries no source error; one made by the client's transport
/// does.
pub(crate) fn classify(status: &Status) -> Failure {
    let mut source = status.source();
    if source.is_none() {
        return Failure::Answered;
    }
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return Failure::TimedOut;
        }
        if err.is::<tonic::ConnectError>() {
            return Failure::NotSent;
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            // A GOAWAY turns away the streams the gate did not take; REFUSED_STREAM says the
            // stream was not processed.
            if h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return Failure::NotSent;
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::NotConnected
                    | std::io::ErrorKind::AddrNotAvailable
            )
        {
            return Failure::NotSent;
        }
        if let Some(hyper) = err.downcast_ref::<hyper::Error>()
            && hyper.is_canceled()
        {
            return Failure::NotSent;
        }
        source = err.source();
    }
    Failure::Lost
}

/// A transport failure's text: the status message and its sources.
pub(crate) fn describe(status: &Status) -> String {
    match status.source() {
        Some(source) => format!("{}: {}", status.message(), chain(source)),
        None => status.message().to_owned(),
    }
}

/// The error for a status the gate answered with. A deadline the gate's gRPC server enforced
/// arrives as CANCELLED.
pub(crate) fn answered(status: &Status) -> CallError {
    let code = ErrorCode::from_grpc_code(status.code() as i32);
    CallError::new(code, status.message().to_owned())
}
