//! [`Client`] and its builder: calls by name, reliable calls, create and delete, and the typed
//! stubs' entry point.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use goverse_core::{
    CallError, ErrorCode, Message, Payload, ReliableStatus, RemoteAnswer, RemoteCall, RemoteCaller,
};
use goverse_proto::gate::gate_service_client::GateServiceClient;
use goverse_proto::gate::{
    CallObjectRequest, CreateObjectRequest, DeleteObjectRequest, ReliableCallObjectRequest,
};
use goverse_proto::gate_info::gate_info_client::GateInfoClient;
use goverse_proto::node::{DescribeRequest, DescribeResponse};
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

use crate::connection::{self, Failure, Gates, Settings};
use crate::reliable::{self, ReliableError, Retry};

/// Adds metadata (an `authorization` header, a session cookie) to every request, the Register
/// stream's included; see [`ClientBuilder::metadata`].
type MetadataHook = Arc<dyn Fn(&mut MetadataMap) + Send + Sync>;

/// Hears of each retry of a reliable call; see [`ClientBuilder::on_retry`].
type RetryHook = Arc<dyn Fn(&Retry<'_>) + Send + Sync>;

/// How long past its deadline a call waits for the gate's own deadline error before giving up
/// locally.
const DEADLINE_GRACE: Duration = Duration::from_millis(250);

/// Configures a [`Client`]. Made by [`Client::builder`].
#[must_use]
pub struct ClientBuilder {
    gates: Vec<String>,
    settings: Settings,
    metadata: Option<MetadataHook>,
    on_retry: Option<RetryHook>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("gates", &self.gates)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// How long one attempt to connect to a gate may take. Default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// How long a call waits for its answer, connecting included, unless the call says
    /// otherwise ([`Client::with_timeout`], a stub's `with_timeout`). Default 30 s.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.settings.call_timeout = timeout;
        self
    }

    /// The shortest and longest pause between rounds of reconnecting and between retries of a
    /// reliable call (doubling from one to the other, less up to a fifth at random). Default
    /// 50 ms and 2 s.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.settings.backoff_min = min;
        self.settings.backoff_max = max.max(min);
        self
    }

    /// How long a reliable call keeps retrying with its call id before it gives up with
    /// [`ReliableError::Unknown`]. Default 60 s.
    pub fn reliable_retry_for(mut self, period: Duration) -> Self {
        self.settings.reliable_retry_for = period;
        self
    }

    /// How long a call keeps trying to reach a gate (rounds over the list, with back-off)
    /// before it fails with `Unavailable` naming each gate and why; default: as long as the
    /// call's timeout. A command-line tool sets it short.
    pub fn reconnect_for(mut self, period: Duration) -> Self {
        self.settings.reconnect_for = Some(period);
        self
    }

    /// HTTP/2 keep-alive pings every `interval`, the connection given up when one is not
    /// answered within `timeout`, so a gate that vanished without closing (a pulled cable, a
    /// paused process) is noticed. Default 10 s and 5 s.
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.settings.keepalive_interval = interval;
        self.settings.keepalive_timeout = timeout;
        self
    }

    /// Connects to the gates over TLS with `tls`: the gates' certificates are checked against
    /// its CA and the gate's host; with a certificate of its own the client presents it (gates
    /// asking for client certificates). Load one with
    /// `ClientTls::load("gates", ClientFiles { ca: Some("tls/ca.pem".into()), ..Default::default() }, ALPN_H2)`.
    pub fn tls(mut self, tls: Arc<goverse_tls::ClientTls>) -> Self {
        self.settings.tls = Some(tls);
        self
    }

    /// Runs `hook` on the metadata of every request, the Register stream included: how a client
    /// presents what the gate's authorisation hook checks.
    pub fn metadata(mut self, hook: impl Fn(&mut MetadataMap) + Send + Sync + 'static) -> Self {
        self.metadata = Some(Arc::new(hook));
        self
    }

    /// Sends `authorization: Bearer <token>` with every request.
    ///
    /// # Panics
    /// If `token` is not a valid header value (control characters).
    pub fn bearer_token(self, token: &str) -> Self {
        let value: tonic::metadata::MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .expect("a bearer token is a valid header value");
        self.metadata(move |metadata| {
            metadata.insert("authorization", value.clone());
        })
    }

    /// Calls `hook` before each retry of a reliable call, with the call id, the attempt and its
    /// failure: how a program shows that it is retrying. Retries are also logged with
    /// `tracing` at WARN.
    pub fn on_retry(mut self, hook: impl Fn(&Retry<'_>) + Send + Sync + 'static) -> Self {
        self.on_retry = Some(Arc::new(hook));
        self
    }

    /// The client. Nothing is connected yet: the first call connects.
    ///
    /// # Panics
    /// If no gate address was given.
    pub fn build(self) -> Client {
        assert!(!self.gates.is_empty(), "a client needs at least one gate");
        let timeout = self.settings.call_timeout;
        Client {
            shared: Arc::new(Shared {
                gates: Gates::new(self.gates, self.settings),
                metadata: self.metadata,
                on_retry: self.on_retry,
            }),
            timeout,
        }
    }

    /// The client, connected to one of the gates (tried in turn, with back-off, for the call
    /// timeout).
    pub async fn connect(self) -> Result<Client, CallError> {
        let client = self.build();
        client
            .shared
            .gates
            .connection(Instant::now() + client.timeout, false)
            .await?;
        Ok(client)
    }
}

struct Shared {
    gates: Gates,
    metadata: Option<MetadataHook>,
    on_retry: Option<RetryHook>,
}

/// A client of a GoVerse cluster through its gates.
///
/// It keeps one connection to one gate of its list; when that gate goes away (a restart, a
/// crash, a shutdown) the calls in flight fail with `Unavailable` naming the gate, and later calls
/// connect to the next gate, with back-off. Calls that had not reached the gate are sent to
/// another one transparently.
///
/// Cheap to clone (clones share the connection). Generated `…Ref` stubs call through it:
/// `CounterRef::new("c1").add(&client, request)`.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    /// This handle's call timeout.
    timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("gates", &self.shared.gates.addresses())
            .field("connected_to", &self.shared.gates.current_gate())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A builder for a client of these gates (`host:port` of their gRPC ports), tried in this
    /// order.
    pub fn builder<I, S>(gates: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientBuilder {
            gates: gates.into_iter().map(Into::into).collect(),
            settings: Settings::default(),
            metadata: None,
            on_retry: None,
        }
    }

    /// A client of these gates with the default settings, connected to one of them.
    pub async fn connect<I, S>(gates: I) -> Result<Client, CallError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::builder(gates).connect().await
    }

    /// A handle whose calls wait at most `timeout` (sharing this client's connection).
    #[must_use]
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            shared: self.shared.clone(),
            timeout,
        }
    }

    /// The address of the gate the client is connected to, if it is.
    pub fn gate(&self) -> Option<String> {
        self.shared.gates.current_gate()
    }

    /// Calls `object_type/id.method` with `request`; the response decoded as `Resp`.
    pub async fn call<Req: Message, Resp: Message>(
        &self,
        object_type: &str,
        id: &str,
        method: &str,
        request: Req,
    ) -> Result<Resp, CallError> {
        let answer = self
            .call_any(object_type, id, method, Payload::typed(request).into_any())
            .await?;
        Payload::Encoded(answer).into_message()
    }

    /// [`Client::call`] with the request and the response as `google.protobuf.Any`.
    pub async fn call_any(
        &self,
        object_type: &str,
        id: &str,
        method: &str,
        request: prost_types::Any,
    ) -> Result<prost_types::Any, CallError> {
        let request = CallObjectRequest {
            client_id: String::new(),
            r#type: object_type.to_owned(),
            id: id.to_owned(),
            method: method.to_owned(),
            request: Some(request),
        };
        let deadline = Instant::now() + self.timeout;
        let answer = self
            .exchange(request, deadline, false, |mut gate, request| async move {
                gate.call_object(request).await
            })
            .await?;
        answer.response.ok_or_else(|| {
            CallError::internal(format!(
                "the gate answered {object_type}/{id}.{method} without a response message"
            ))
        })
    }

    /// Calls `object_type/id.method` as a reliable call with `call_id`: the method runs at most
    /// once for the id, and its outcome is recorded with the object's new state. Attempts that
    /// leave the outcome open (a gate or node down, a deadline) are retried with the same id,
    /// with back-off, for the retry period ([`ClientBuilder::reliable_retry_for`]), each retry
    /// reported to [`ClientBuilder::on_retry`]. The type must be persistent.
    pub async fn call_reliable<Req: Message, Resp: Message>(
        &self,
        object_type: &str,
        id: &str,
        method: &str,
        request: Req,
        call_id: &str,
    ) -> Result<Resp, ReliableError> {
        let answer = self
            .call_reliable_any(
                object_type,
                id,
                method,
                Payload::typed(request).into_any(),
                call_id,
            )
            .await?;
        Payload::Encoded(answer)
            .into_message()
            .map_err(ReliableError::Failed)
    }

    /// [`Client::call_reliable`] with the request and the response as `google.protobuf.Any`.
    pub async fn call_reliable_any(
        &self,
        object_type: &str,
        id: &str,
        method: &str,
        request: prost_types::Any,
        call_id: &str,
    ) -> Result<prost_types::Any, ReliableError> {
        let request = ReliableCallObjectRequest {
            call_id: call_id.to_owned(),
            r#type: object_type.to_owned(),
            id: id.to_owned(),
            method: method.to_owned(),
            request: Some(request),
        };
        let settings = &self.shared.gates.settings;
        let started = Instant::now();
        let give_up = started + settings.reliable_retry_for;
        let mut backoff = settings.backoff_min;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let deadline = Instant::now() + self.timeout;
            let answer = self
                .exchange(
                    request.clone(),
                    deadline,
                    true,
                    |mut gate, request| async move { gate.reliable_call_object(request).await },
                )
                .await;
            let failure = match answer {
                Ok(answer) => match ReliableStatus::from_name(&answer.status) {
                    Some(ReliableStatus::Success) => {
                        return answer.response.ok_or_else(|| {
                            ReliableError::Failed(CallError::internal(
                                "the gate reported SUCCESS without a response message",
                            ))
                        });
                    }
                    Some(ReliableStatus::Failed) => {
                        return Err(ReliableError::Failed(reliable::error_of(&answer.error)));
                    }
                    Some(ReliableStatus::Skipped) => {
                        let err = reliable::error_of(&answer.error);
                        if !reliable::worth_retrying(err.code()) {
                            return Err(ReliableError::Refused(err));
                        }
                        err
                    }
                    None => {
                        return Err(ReliableError::Failed(CallError::internal(format!(
                            "the gate answered with an unknown status {:?}: {}",
                            answer.status, answer.error
                        ))));
                    }
                },
                Err(err) if reliable::worth_retrying(err.code()) => err,
                Err(err) => return Err(ReliableError::Refused(err)),
            };
            let delay = connection::jittered(backoff);
            if Instant::now() + delay >= give_up {
                return Err(ReliableError::Unknown {
                    call_id: call_id.to_owned(),
                    attempts: attempt,
                    waited: started.elapsed(),
                    last: failure,
                });
            }
            let target = format!("{object_type}/{id}.{method}");
            tracing::warn!(
                %target, call_id, attempt, error = %failure, ?delay,
                "reliable call retried with the same call id"
            );
            if let Some(hook) = &self.shared.on_retry {
                hook(&Retry {
                    target: &target,
                    call_id,
                    attempt,
                    error: &failure,
                    delay,
                });
            }
            tokio::time::sleep(delay).await;
            backoff = (backoff * 2).min(settings.backoff_max);
        }
    }

    /// Creates (activates) `object_type/id`; succeeds when it exists already with that type.
    pub async fn create(&self, object_type: &str, id: &str) -> Result<(), CallError> {
        let request = CreateObjectRequest {
            r#type: object_type.to_owned(),
            id: id.to_owned(),
        };
        let deadline = Instant::now() + self.timeout;
        self.exchange(request, deadline, false, |mut gate, request| async move {
            gate.create_object(request).await
        })
        .await
        .map(|_| ())
    }

    /// Deletes `object_type/id`: its activation and its saved state.
    pub async fn delete(&self, object_type: &str, id: &str) -> Result<(), CallError> {
        let request = DeleteObjectRequest {
            id: id.to_owned(),
            r#type: object_type.to_owned(),
        };
        let deadline = Instant::now() + self.timeout;
        self.exchange(request, deadline, false, |mut gate, request| async move {
            gate.delete_object(request).await
        })
        .await
        .map(|_| ())
    }

    /// The object types the cluster serves and the descriptors of their messages, as the gate
    /// has them (what `goverse call` translates JSON with).
    pub async fn describe(&self) -> Result<DescribeResponse, CallError> {
        let deadline = Instant::now() + self.timeout;
        self.exchange_with(
            DescribeRequest {},
            deadline,
            false,
            |channel, request| async move { GateInfoClient::new(channel).describe(request).await },
        )
        .await
    }

    /// Adds the metadata hook's entries and the deadline to `request`.
    pub(crate) fn prepare<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(hook) = &self.shared.metadata {
            hook(request.metadata_mut());
        }
    }

    pub(crate) fn gates(&self) -> &Gates {
        &self.shared.gates
    }

    pub(crate) fn call_timeout(&self) -> Duration {
        self.timeout
    }

    /// One request on the gate service, by way of [`Client::exchange_with`]; with `one_round`,
    /// at most one round of the gates is tried when none is connected (a reliable call's attempt:
    /// its own loop retries and reports).
    async fn exchange<Req, Resp, F, Fut>(
        &self,
        request: Req,
        deadline: Instant,
        one_round: bool,
        send: F,
    ) -> Result<Resp, CallError>
    where
        Req: Clone,
        F: Fn(GateServiceClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.exchange_with(request, deadline, one_round, |channel, request| {
            send(GateServiceClient::new(channel), request)
        })
        .await
    }

    /// Sends `request` through the connection in use (made if needed) until `deadline`. A
    /// request that never reached a gate goes to the next one; one lost in flight fails with
    /// `Unavailable` naming the gate, and the connection is given up so the next call goes
    /// elsewhere.
    async fn exchange_with<Req, Resp, F, Fut>(
        &self,
        request: Req,
        deadline: Instant,
        one_round: bool,
        send: F,
    ) -> Result<Resp, CallError>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let gates = &self.shared.gates;
        let mut turned_away = 0u32;
        loop {
            let connection = gates.connection(deadline, one_round).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(CallError::deadline_exceeded(format!(
                    "the call (gate {})",
                    connection.gate
                )));
            }
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(left);
            self.prepare(&mut call);
            let sent = send(connection.channel.clone(), call);
            let status = match tokio::time::timeout(left + DEADLINE_GRACE, sent).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => status,
                Err(_) => {
                    return Err(CallError::deadline_exceeded(format!(
                        "the call (no answer from gate {} within {left:?})",
                        connection.gate
                    )));
                }
            };
            match connection::classify(&status) {
                Failure::Answered => {
                    let err = connection::answered(&status);
                    // A deadline the gate's server enforced arrives as CANCELLED.
                    return Err(if status.code() == tonic::Code::Cancelled {
                        CallError::deadline_exceeded(format!(
                            "the call (gate {}: {})",
                            connection.gate,
                            err.message()
                        ))
                    } else {
                        err
                    });
                }
                Failure::NotSent => {
                    let why = connection::describe(&status);
                    gates.broken(&connection, &why);
                    turned_away += 1;
                    if turned_away > 1 {
                        // Connected, yet turned away again: do not spin.
                        let pause = connection::jittered(gates.settings.backoff_min);
                        if Instant::now() + pause >= deadline {
                            return Err(CallError::unavailable(format!(
                                "gate {} did not take the call: {why}",
                                connection.gate
                            )));
                        }
                        tokio::time::sleep(pause).await;
                    }
                }
                Failure::TimedOut => {
                    return Err(CallError::deadline_exceeded(format!(
                        "the call (no answer from gate {} within {left:?})",
                        connection.gate
                    )));
                }
                Failure::Lost => {
                    let why = connection::describe(&status);
                    gates.broken(&connection, &why);
                    return Err(CallError::new(
                        ErrorCode::Unavailable,
                        format!(
                            "the connection to gate {} broke during the call, which may or may \
                             not have run ({why})",
                            connection.gate
                        ),
                    ));
                }
            }
        }
    }
}

impl RemoteCaller for Client {
    fn call_remote<'a>(&'a self, call: RemoteCall<'a>) -> RemoteAnswer<'a> {
        Box::pin(async move {
            let shortened;
            let client = match call.timeout {
                Some(timeout) => {
                    shortened = self.with_timeout(timeout);
                    &shortened
                }
                None => self,
            };
            match call.reliable_call_id {
                None => {
                    client
                        .call_any(call.object_type, call.object_id, call.method, call.request)
                        .await
                }
                Some(call_id) => client
                    .call_reliable_any(
                        call.object_type,
                        call.object_id,
                        call.method,
                        call.request,
                        call_id,
                    )
                    .await
                    .map_err(CallError::from),
            }
        })
    }
}
