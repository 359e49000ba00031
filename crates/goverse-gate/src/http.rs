//! The HTTP front end: upstream's routes and JSON shapes, plain protobuf-JSON bodies, and the
//! server-sent events stream for pushes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::{Stream, StreamExt};
use goverse_core::ReliableStatus;
use goverse_core::{CallError, ClientIdentity, ErrorCode};
use prost::Message as _;
use serde_json::json;
use tokio_stream::wrappers::{IntervalStream, ReceiverStream};

use crate::Gate;
use crate::auth::Transport;
use crate::clients::Binding;
use crate::gate::{Caller, GateInner};

/// Header naming the registered client an HTTP call acts for (as upstream).
pub const CLIENT_ID_HEADER: &str = "x-client-id";
/// Header carrying the client's token, proving the caller owns the client id.
pub const CLIENT_TOKEN_HEADER: &str = "x-client-token";
/// Prefix of the cookie the events stream sets with the client's token (`gv_<unique id>`).
const TOKEN_COOKIE_PREFIX: &str = "gv_";
/// Header that makes a call a reliable call with this call id (the envelope's `call_id` field
/// does the same).
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Header of a reliable call's response: `SUCCESS`, `FAILED` or `SKIPPED`.
pub const RELIABLE_STATUS_HEADER: &str = "x-reliable-call-status";

/// An error response: `{"error": "...", "code": "..."}` with a fitting status (and, for a reliable
/// call, `"status": "FAILED" | "SKIPPED"` and the status header).
#[derive(Debug)]
pub(crate) struct HttpError {
    status: StatusCode,
    code: &'static str,
    message: String,
    reliable: Option<ReliableStatus>,
    /// Sent as `Retry-After` (whole seconds, at least 1).
    retry_after: Option<std::time::Duration>,
}

impl HttpError {
    /// An error of `code`'s HTTP status, named `name` in the body: a refinement of the code's
    /// own name that upstream's HTTP front end uses for malformed requests (`INVALID_BASE64`,
    /// `INVALID_PATH`, ...).
    fn of(code: ErrorCode, name: &'static str, message: impl Into<String>) -> Self {
        Self::with_status(
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            name,
            message,
        )
    }

    /// An error of an HTTP status no [`ErrorCode`] has (405, 413): the request never became a
    /// call.
    fn with_status(status: StatusCode, name: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: name,
            message: message.into(),
            reliable: None,
            retry_after: None,
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    fn reliable(err: CallError, status: ReliableStatus) -> Self {
        Self {
            reliable: Some(status),
            ..Self::from(err)
        }
    }
}

impl From<CallError> for HttpError {
    fn from(err: CallError) -> Self {
        let mut http = Self::of(err.code(), err.code().http_name(), err.message());
        http.retry_after = err.retry_after();
        http
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message, "code": self.code });
        if let Some(status) = self.reliable {
            body["status"] = status.as_str().into();
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(wait) = self.retry_after {
            let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(status) = self.reliable {
            response.headers_mut().insert(
                RELIABLE_STATUS_HEADER,
                HeaderValue::from_static(status.as_str()),
            );
        }
        response
    }
}

impl From<PathRejection> for HttpError {
    fn from(rejection: PathRejection) -> Self {
        Self::of(
            ErrorCode::InvalidArgument,
            "INVALID_PATH",
            format!("invalid path: {}", rejection.body_text()),
        )
    }
}

type HttpResult = Result<Response, HttpError>;

impl Gate {
    /// The HTTP API as an axum router: `POST /api/v1/objects/{call,create,delete}/…`,
    /// `GET /api/v1/events/stream`, `/healthz`, `/ready`, `/metrics`. Merge your own routes (a web client,
    /// say) before serving it with [`Gate::serve_http`].
    pub fn http_router(&self) -> Router {
        Router::new()
            .route(
                "/api/v1/objects/call/{type}/{id}/{method}",
                post(call_handler).options(preflight),
            )
            .route(
                "/api/v1/objects/create/{type}/{id}",
                post(create_handler).options(preflight),
            )
            .route(
                "/api/v1/objects/delete/{type}/{id}",
                post(delete_handler).options(preflight),
            )
            .route(
                "/api/v1/events/stream",
                get(events_handler).options(preflight),
            )
            .route(
                "/healthz",
                get(|| async { axum::Json(json!({"status": "ok"})) }),
            )
            .route("/ready", get(ready_handler))
            .route(
                "/metrics",
                get(|State(gate): State<Arc<GateInner>>| async move {
                    crate::ops::encoded(&gate.config.metrics)
                }),
            )
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(axum::middleware::from_fn(cors))
            .with_state(self.inner.clone())
    }

    /// Serves `router` (usually [`Gate::http_router`], perhaps with more routes merged) on
    /// `listener` until `shutdown` completes; then ends the gate's client streams, lets open
    /// requests finish within the drain deadline (`connection_limits.drain_timeout`), closes
    /// what is left and returns.
    ///
    /// Every connection is held to the gate's [`goverse_transport::ConnectionLimits`]: a cap
    /// on open connections, an idle timeout, and a deadline for an HTTP/1 request's headers
    /// (slow-header clients are cut off); HTTP/2 connections get a bounded number of streams
    /// and a bounded header list.
    pub async fn serve_http(
        &self,
        listener: tokio::net::TcpListener,
        router: Router,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let limits = self.inner.config.connection_limits;
        // SSE streams would hold the drain open until its deadline.
        let streams = self.inner.streams_stop.clone();
        let tls = self.inner.config.tls.as_ref().map(|t| t.server.clone());
        crate::ops::serve_router_tls(
            listener,
            router,
            limits,
            "gate HTTP",
            tls,
            shutdown,
            move || streams.cancel(),
        )
        .await
    }

    /// `GET /metrics`, `/healthz` and `/ready` alone, for the gate's operations port
    /// (`gates[].ops_addr`); serve it with [`crate::serve_router`].
    pub fn ops_router(&self) -> Router {
        let gate = self.clone();
        crate::ops::ops_router(
            self.inner.config.metrics.clone(),
            Arc::new(move || gate.readiness().map_err(|why| why.to_string())),
        )
    }
}

async fn cors(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "Content-Type, Authorization, X-Client-ID, X-Client-Token, Idempotency-Key",
        ),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("X-Reliable-Call-Status"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    response
}

async fn preflight() -> StatusCode {
    StatusCode::NO_CONTENT
}

async fn not_found(method: Method, uri: axum::http::Uri) -> HttpError {
    HttpError::of(
        ErrorCode::NotFound,
        "INVALID_PATH",
        format!(
            "no route for {method} {}; object routes are /api/v1/objects/call/{{type}}/{{id}}/{{method}}, \
             /api/v1/objects/create/{{type}}/{{id}} and /api/v1/objects/delete/{{type}}/{{id}}",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method) -> HttpError {
    HttpError::with_status(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        format!("method {method} is not allowed here"),
    )
}

async fn ready_handler(State(gate): State<Arc<GateInner>>) -> HttpResult {
    let gate = Gate { inner: gate };
    if let Err(why) = gate.readiness() {
        return Err(HttpError::of(
            ErrorCode::Unavailable,
            "NOT_READY",
            why.to_string(),
        ));
    }
    Ok(axum::Json(json!({"status": "ready"})).into_response())
}

fn remote_of(request: &Request) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

async fn read_body(gate: &GateInner, body: Body) -> Result<axum::body::Bytes, HttpError> {
    let limit = gate.config.max_body_bytes;
    axum::body::to_bytes(body, limit).await.map_err(|err| {
        // axum reports the limit as an error whose text names it; nothing else is exposed.
        let too_large = err.to_string().contains("length limit");
        if too_large {
            HttpError::with_status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                format!("request body is larger than the limit of {limit} bytes"),
            )
        } else {
            HttpError::of(
                ErrorCode::InvalidArgument,
                "INVALID_BODY",
                format!("cannot read the request body: {err}"),
            )
        }
    })
}

/// Who an HTTP call acts for: the client named by `X-Client-ID` if the caller proves it owns it
/// (its token, from `X-Client-Token` or the events stream's cookie), else an anonymous identity
/// from the hook. A registered client named without its token is refused (`Unauthenticated`); an
/// id nobody registered is ignored when no token comes with it (upstream's HTTP clients send ids
/// they made up) and `NotFound` when one does (a client whose registration is gone).
async fn http_identity(
    gate: &GateInner,
    headers: &HeaderMap,
    remote: Option<SocketAddr>,
) -> Result<Caller, HttpError> {
    let identity = http_identity_of(gate, headers, remote).await?;
    Ok(Caller { identity, remote })
}

async fn http_identity_of(
    gate: &GateInner,
    headers: &HeaderMap,
    remote: Option<SocketAddr>,
) -> Result<Arc<ClientIdentity>, HttpError> {
    let Some(client_id) = headers.get(CLIENT_ID_HEADER) else {
        return Ok(gate.anonymous(headers, remote).await?);
    };
    let client_id = client_id.to_str().map_err(|_| {
        HttpError::of(
            ErrorCode::InvalidArgument,
            "INVALID_PARAMETERS",
            "X-Client-ID is not text",
        )
    })?;
    let presented = headers
        .get(CLIENT_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            let unique = client_id.rsplit_once('/').map_or("", |(_, u)| u);
            cookie(headers, &format!("{TOKEN_COOKIE_PREFIX}{unique}"))
        });
    let Some(entry) = gate.clients.get(client_id) else {
        if presented.is_some() {
            // A client that registered once and is gone (its stream ended, the gate restarted):
            // it should register again.
            return Err(HttpError::of(
                ErrorCode::NotFound,
                "CLIENT_NOT_FOUND",
                format!(
                    "client {:?} is not registered at this gate",
                    goverse_core::Clipped(client_id)
                ),
            ));
        }
        // An id nobody registered here and nothing to prove it (upstream's HTTP clients make
        // their ids up): it names nobody, and the call acts for nobody in particular.
        return Ok(gate.anonymous(headers, remote).await?);
    };
    match presented {
        Some(token) if entry.binding == Binding::Sse && constant_time_eq(&token, &entry.token) => {
            Ok(entry.identity.clone())
        }
        _ => Err(HttpError::of(
            ErrorCode::Unauthenticated,
            "UNAUTHENTICATED",
            format!(
                "acting as client {:?} needs its token (the X-Client-Token header or the \
                 cookie set by the events stream that registered it)",
                goverse_core::Clipped(client_id)
            ),
        )),
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A call body: upstream's envelope (with the call id of a reliable call, if it names one) or
/// plain JSON.
enum CallBody {
    Envelope(prost_types::Any, Option<String>),
    Plain,
}

/// Upstream's call body: the field `request`, a string, and for a reliable call the call id.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    #[serde(borrow)]
    request: std::borrow::Cow<'a, str>,
    #[serde(default, alias = "callId")]
    call_id: Option<String>,
}

fn parse_envelope(body: &[u8]) -> Option<Result<(prost_types::Any, Option<String>), HttpError>> {
    // Typed, so a plain-JSON body is turned away at its first key without building a value.
    let envelope: Envelope<'_> = serde_json::from_slice(body).ok()?;
    let call_id = envelope.call_id;
    let encoded = envelope.request;
    Some(
        BASE64
            .decode(encoded.as_bytes())
            .map_err(|e| {
                HttpError::of(
                    ErrorCode::InvalidArgument,
                    "INVALID_BASE64",
                    format!("request is not valid base64: {e}"),
                )
            })
            .and_then(|bytes| {
                prost_types::Any::decode(bytes.as_slice()).map_err(|e| {
                    HttpError::of(
                        ErrorCode::InvalidArgument,
                        "INVALID_PROTOBUF",
                        format!("request is not an encoded google.protobuf.Any: {e}"),
                    )
                })
            })
            .map(|any| (any, call_id)),
    )
}

/// The call id of a reliable HTTP call: the `Idempotency-Key` header, or the envelope's field.
fn reliable_call_id(
    headers: &HeaderMap,
    from_body: Option<String>,
) -> Result<Option<String>, HttpError> {
    match headers.get(IDEMPOTENCY_KEY_HEADER) {
        Some(value) => value.to_str().map(|v| Some(v.to_owned())).map_err(|_| {
            HttpError::of(
                ErrorCode::InvalidArgument,
                "INVALID_PARAMETERS",
                "Idempotency-Key is not text",
            )
        }),
        None => Ok(from_body),
    }
}

/// A call's body as the request message: upstream's envelope (base64 of an encoded Any, with
/// the call id of a reliable call if it names one) or plain JSON for the method's request
/// type. Also says whether it was an envelope, as the answer is written the same way.
pub(crate) fn request_of_body(
    catalog: &crate::codec::Catalog,
    object_type: &str,
    method: &str,
    body: &[u8],
) -> Result<(prost_types::Any, Option<String>, bool), HttpError> {
    let mode = match parse_envelope(body) {
        Some(Ok((any, call_id))) => CallBody::Envelope(any, call_id),
        Some(Err(err)) => {
            // A message with a single string field named "request" is plain JSON.
            let plain = catalog
                .method(object_type, method)
                .is_ok_and(|m| catalog.has_field(&m.request_type, "request"));
            if !plain {
                return Err(err);
            }
            CallBody::Plain
        }
        None => CallBody::Plain,
    };
    Ok(match mode {
        CallBody::Envelope(any, call_id) => (any, call_id, true),
        CallBody::Plain => {
            let info = catalog.method(object_type, method)?;
            (catalog.json_to_any(&info.request_type, body)?, None, false)
        }
    })
}

async fn call_handler(
    State(gate): State<Arc<GateInner>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    request: Request,
) -> HttpResult {
    let Path((object_type, id, method)) = path?;
    let remote = remote_of(&request);
    let (parts, body) = request.into_parts();
    let body = read_body(&gate, body).await?;
    let caller = http_identity(&gate, &parts.headers, remote).await?;
    let catalog = gate.catalog()?;
    let (request, envelope_call_id, envelope) =
        request_of_body(&catalog, &object_type, &method, &body)?;
    let target = (object_type.as_str(), id.as_str(), method.as_str());
    let (response, reliable) = match reliable_call_id(&parts.headers, envelope_call_id)? {
        None => {
            let response = gate
                .call(&caller, target.0, target.1, target.2, Some(request), None)
                .await?;
            (response, false)
        }
        Some(call_id) => {
            let response = call_reliable(&gate, &caller, target, Some(request), &call_id).await?;
            (response, true)
        }
    };
    // Answered as it was asked: upstream's envelope, or plain JSON.
    let body = if envelope {
        let mut body = json!({ "response": BASE64.encode(response.encode_to_vec()) });
        if reliable {
            body["status"] = ReliableStatus::Success.as_str().into();
        }
        body
    } else {
        catalog.any_to_json(&response)?
    };
    let mut answer = axum::Json(body).into_response();
    if reliable {
        answer.headers_mut().insert(
            RELIABLE_STATUS_HEADER,
            HeaderValue::from_static(ReliableStatus::Success.as_str()),
        );
    }
    Ok(answer)
}

/// A reliable call: its response, or its FAILED / SKIPPED error as an error response that says
/// so. An unknown outcome is a plain error (503, 504): retrying with the same call id is safe.
async fn call_reliable(
    gate: &GateInner,
    caller: &Caller,
    (object_type, id, method): (&str, &str, &str),
    request: Option<prost_types::Any>,
    call_id: &str,
) -> Result<prost_types::Any, HttpError> {
    let answer = gate
        .call_reliable(caller, (object_type, id, method), request, call_id, None)
        .await?;
    answer
        .result
        .map_err(|err| HttpError::reliable(err, answer.status))
}

async fn create_handler(
    State(gate): State<Arc<GateInner>>,
    path: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> HttpResult {
    let Path((object_type, id)) = path?;
    let remote = remote_of(&request);
    let caller = http_identity(&gate, request.headers(), remote).await?;
    gate.create(&caller, &object_type, &id, None).await?;
    Ok(axum::Json(json!({ "id": id })).into_response())
}

async fn delete_handler(
    State(gate): State<Arc<GateInner>>,
    path: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> HttpResult {
    let Path((object_type, id)) = path?;
    let remote = remote_of(&request);
    let caller = http_identity(&gate, request.headers(), remote).await?;
    gate.delete(&caller, &object_type, &id, None).await?;
    Ok(axum::Json(json!({ "success": true })).into_response())
}

async fn events_handler(State(gate): State<Arc<GateInner>>, request: Request) -> HttpResult {
    let remote = remote_of(&request);
    let stream_slot = gate.quotas.admit_stream(remote.map(|r| r.ip()))?;
    let principal = gate
        .authorize(request.headers(), remote, Transport::Sse)
        .await?;
    let registration = gate.register(principal, Binding::Sse);
    let client_id = registration.entry.identity.client_id().to_owned();
    let token = registration.entry.token.clone();
    let unique = client_id.rsplit_once('/').map_or("", |(_, u)| u).to_owned();
    let (guard, rx) = registration.split();

    let register = Event::default()
        .event("register")
        .json_data(json!({ "clientId": client_id, "token": &token }))
        .expect("JSON renders");
    let catalog = gate.catalog.clone();
    let messages = ReceiverStream::new(rx).map(move |any: prost_types::Any| {
        let _ = (&guard, &stream_slot);
        let mut data = json!({
            "type": any.type_url,
            "payload": BASE64.encode(any.encode_to_vec()),
        });
        // Beyond upstream: the message as JSON too, when its descriptor is known.
        if let Ok(rendered) = catalog.read().clone().any_to_json(&any) {
            data["json"] = rendered;
        }
        Event::default()
            .event("message")
            .json_data(data)
            .expect("JSON renders")
    });
    let period = gate.config.heartbeat_interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let heartbeats =
        IntervalStream::new(ticker).map(|_| Event::default().event("heartbeat").data("{}"));
    let events: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> = Box::pin(
        futures::stream::once(async move { register })
            .chain(futures::stream::select(messages, heartbeats))
            .take_until(gate.streams_stop.clone().cancelled_owned())
            .map(Ok),
    );
    let mut response = Sse::new(events).into_response();
    let cookie =
        format!("{TOKEN_COOKIE_PREFIX}{unique}={token}; Path=/api/; HttpOnly; SameSite=Strict");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}
