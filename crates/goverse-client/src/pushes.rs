//! The client's registration at a gate and the messages objects push to it, as a [`Stream`]
//! that outlives the gate it started on.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use goverse_core::{CallError, ErrorCode, Message, Payload, message_name, type_name_of_url};
use goverse_proto::gate::gate_service_client::GateServiceClient;
use goverse_proto::gate::{Empty, RegisterResponse};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Streaming;

use crate::Client;
use crate::connection::{self, Connection, Failure};

/// What a [`Pushes`] stream yields.
#[derive(Debug, Clone)]
pub enum PushEvent {
    /// Registered at `gate` as `client_id`: the first event, and again after each reconnect
    /// (with a new client id; objects that push by client id must be told it again).
    Connected {
        /// The gate's address.
        gate: String,
        /// The id the gate gave this client (`gate-address/unique-id`).
        client_id: String,
    },
    /// A message an object pushed to this client.
    Message(prost_types::Any),
    /// The registration ended (the gate stopped, crashed or became unreachable); the stream
    /// registers again at the next reachable gate and then yields
    /// [`PushEvent::Connected`].
    Disconnected {
        /// The gate that was lost.
        gate: String,
        /// Why.
        error: CallError,
    },
}

impl PushEvent {
    /// A pushed message decoded as `M`: `None` for other events and for messages of another
    /// type, `Some(Err)` when the bytes do not decode.
    pub fn decode<M: Message>(&self) -> Option<Result<M, CallError>> {
        match self {
            Self::Message(any) if type_name_of_url(&any.type_url) == message_name::<M>() => {
                Some(Payload::Encoded(any.clone()).into_message())
            }
            _ => None,
        }
    }
}

/// The pushes to a registered client, as a stream of [`PushEvent`]s; made by
/// [`Client::register`]. It re-registers by itself after losing its gate (with back-off) and
/// ends only when it is dropped, when the client is refused (`Unauthenticated`,
/// `PermissionDenied`: the last event says so), or never otherwise.
#[derive(Debug)]
pub struct Pushes {
    events: mpsc::Receiver<PushEvent>,
    task: tokio::task::AbortHandle,
}

impl Stream for Pushes {
    type Item = PushEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PushEvent>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for Pushes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Events buffered for a slow reader before the stream stops reading from the gate.
const EVENT_BUFFER: usize = 1024;

impl Client {
    /// Registers this client at its gate (connecting first if needed) and returns the pushes to
    /// it. Calls made through this client afterwards act for the registered client: the gate
    /// binds them to the registration on the same connection.
    ///
    /// Fails when no gate is reachable within the call timeout or the gate refuses the client.
    pub async fn register(&self) -> Result<Pushes, CallError> {
        let deadline = Instant::now() + self.call_timeout();
        let (connection, client_id, stream) = self.open(deadline).await?;
        let (events, receiver) = mpsc::channel(EVENT_BUFFER);
        let _ = events.try_send(PushEvent::Connected {
            gate: connection.gate.clone(),
            client_id,
        });
        let task = tokio::spawn(forward(self.clone(), connection, stream, events));
        Ok(Pushes {
            events: receiver,
            task: task.abort_handle(),
        })
    }

    /// One Register stream: the connection, the client id the gate gave, and the rest of the
    /// stream. A request the gate never saw is sent to the next gate.
    async fn open(
        &self,
        deadline: Instant,
    ) -> Result<(Arc<Connection>, String, Streaming<prost_types::Any>), CallError> {
        let gates = self.gates();
        loop {
            let connection = gates.connection(deadline, false).await?;
            let mut request = tonic::Request::new(Empty {});
            self.prepare(&mut request);
            let mut gate = GateServiceClient::new(connection.channel.clone());
            let left = deadline.saturating_duration_since(Instant::now());
            let opened = tokio::time::timeout(left, async {
                let mut stream = gate.register(request).await?.into_inner();
                let first = stream.message().await?;
                Ok::<_, tonic::Status>((stream, first))
            })
            .await;
            let (stream, first) = match opened {
                Err(_) => {
                    return Err(CallError::deadline_exceeded(format!(
                        "registering at gate {}",
                        connection.gate
                    )));
                }
                Ok(Ok(opened)) => opened,
                Ok(Err(status)) => match connection::classify(&status) {
                    Failure::Answered => return Err(connection::answered(&status)),
                    Failure::NotSent | Failure::Lost | Failure::TimedOut => {
                        gates.broken(&connection, &connection::describe(&status));
                        // Connected, yet the stream failed: do not spin on it.
                        let pause = connection::jittered(gates.settings.backoff_min);
                        if Instant::now() + pause >= deadline {
                            return Err(CallError::unavailable(format!(
                                "registering at gate {}: {}",
                                connection.gate,
                                connection::describe(&status)
                            )));
                        }
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                },
            };
            let Some(first) = first else {
                return Err(CallError::unavailable(format!(
                    "gate {} ended the Register stream before answering",
                    connection.gate
                )));
            };
            let registered = Payload::Encoded(first)
                .into_message::<RegisterResponse>()
                .map_err(|err| {
                    CallError::internal(format!(
                        "gate {} opened the Register stream with something else: {err}",
                        connection.gate
                    ))
                })?;
            tracing::info!(gate = %connection.gate, client_id = %registered.client_id, "registered");
            return Ok((connection, registered.client_id, stream));
        }
    }
}

/// Forwards pushes to `events` until the registration ends, then registers again (with
/// back-off) and goes on; returns when the [`Pushes`] is dropped or the client is refused.
async fn forward(
    client: Client,
    mut connection: Arc<Connection>,
    mut stream: Streaming<prost_types::Any>,
    events: mpsc::Sender<PushEvent>,
) {
    loop {
        let error = loop {
            let message = tokio::select! {
                () = events.closed() => return,
                message = stream.message() => message,
            };
            match message {
                Ok(Some(any)) => {
                    if events.send(PushEvent::Message(any)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    break CallError::unavailable(format!(
                        "gate {} ended the registration",
                        connection.gate
                    ));
                }
                Err(status) => {
                    break match connection::classify(&status) {
                        Failure::Answered => connection::answered(&status),
                        Failure::NotSent | Failure::Lost | Failure::TimedOut => {
                            CallError::unavailable(format!(
                                "the connection to gate {} broke ({})",
                                connection.gate,
                                connection::describe(&status)
                            ))
                        }
                    };
                }
            }
        };
        // Whatever ended the stream, the gate is no longer the client's: calls move on too.
        client.gates().broken(&connection, &error.to_string());
        let lost = PushEvent::Disconnected {
            gate: connection.gate.clone(),
            error,
        };
        if events.send(lost).await.is_err() {
            return;
        }
        let settings = &client.gates().settings;
        let mut backoff = settings.backoff_min;
        (connection, stream) = loop {
            let deadline = Instant::now() + client.call_timeout();
            match client.open(deadline).await {
                Ok((connection, client_id, stream)) => {
                    let connected = PushEvent::Connected {
                        gate: connection.gate.clone(),
                        client_id,
                    };
                    if events.send(connected).await.is_err() {
                        return;
                    }
                    break (connection, stream);
                }
                Err(err)
                    if matches!(
                        err.code(),
                        ErrorCode::Unauthenticated | ErrorCode::PermissionDenied
                    ) =>
                {
                    tracing::warn!(error = %err, "registration refused; push stream ends");
                    let gate = client.gate().unwrap_or_default();
                    let _ = events
                        .send(PushEvent::Disconnected { gate, error: err })
                        .await;
                    return;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot register again yet");
                    tokio::select! {
                        () = events.closed() => return,
                        () = tokio::time::sleep(connection::jittered(backoff)) => {}
                    }
                    backoff = (backoff * 2).min(settings.backoff_max);
                }
            }
        };
    }
}
