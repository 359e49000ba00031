//! The operations endpoints every process of a cluster serves: `GET /metrics` (Prometheus text),
//! `GET /healthz` (the process answers) and `GET /ready` (it serves now; 503 with the reason
//! otherwise), and the hardened HTTP serving loop the gate's and these ports share.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use goverse_core::metrics::{CONTENT_TYPE, Registry};
use goverse_transport::ConnectionLimits;
use serde_json::json;

/// Whether the process serves now, or why not (what `/ready` reports).
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
struct Ops {
    metrics: Registry,
    ready: ReadyCheck,
}

/// `GET /metrics`, `GET /healthz` and `GET /ready` for a process whose metrics are in
/// `metrics` and whose readiness `ready` tells.
pub fn ops_router(metrics: Registry, ready: ReadyCheck) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz_handler))
        .route("/ready", get(ready_handler))
        .with_state(Ops { metrics, ready })
}

pub(crate) fn encoded(metrics: &Registry) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode()).into_response()
}

async fn metrics_handler(State(ops): State<Ops>) -> Response {
    encoded(&ops.metrics)
}

async fn healthz_handler() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn ready_handler(State(ops): State<Ops>) -> Response {
    match (ops.ready)() {
        Ok(()) => axum::Json(json!({"status": "ready"})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "not ready", "reason": reason})),
        )
            .into_response(),
    }
}

/// `GET /debug/pprof/profile?seconds=N` (a CPU profile of the whole process over N seconds,
/// 1 to 300, default 30, in pprof's protobuf format that `go tool pprof` and flamegraph tools
/// read) and `GET /debug/pprof/heap` (the process's memory as the kernel counts it, JSON), each
/// only for a caller sending `Authorization: Bearer <admin_token>` (401 otherwise). One profile
/// runs at a time (409 while one does).
pub fn profiling_router(admin_token: Arc<str>) -> Router {
    Router::new()
        .route("/debug/pprof/profile", get(profile_handler))
        .route("/debug/pprof/heap", get(heap_handler))
        .with_state(admin_token)
}

/// Whether `headers` carry `Authorization: Bearer <token>` (compared in constant time).
pub fn authorised(token: &str, headers: &axum::http::HeaderMap) -> bool {
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    goverse_transport::constant_time_eq(sent.as_bytes(), token.as_bytes())
}

/// 401 with `WWW-Authenticate: Bearer` and a JSON error saying what to send.
pub fn unauthorised() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(
            json!({"error": "send the cluster's admin token: Authorization: Bearer <token>"}),
        ),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct ProfileQuery {
    seconds: Option<u64>,
}

async fn profile_handler(
    State(token): State<Arc<str>>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(query): axum::extract::Query<ProfileQuery>,
) -> Response {
    static RUNNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !authorised(&token, &headers) {
        return unauthorised();
    }
    let seconds = query.seconds.unwrap_or(30);
    if !(1..=300).contains(&seconds) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": format!("seconds={seconds}: give 1 to 300")})),
        )
            .into_response();
    }
    if RUNNING.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return (
            StatusCode::CONFLICT,
            axum::Json(json!({"error": "a profile is being taken already; try again after it"})),
        )
            .into_response();
    }
    let profiled = async {
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(99)
            .blocklist(&["libc", "libgcc", "pthread", "vdso"])
            .build()
            .map_err(|e| e.to_string())?;
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        // Resolving symbols takes a while: off the runtime's threads.
        tokio::task::spawn_blocking(move || {
            use pprof::protos::Message as _;
            let report = guard.report().build().map_err(|e| e.to_string())?;
            let profile = report.pprof().map_err(|e| e.to_string())?;
            profile.write_to_bytes().map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }
    .await;
    RUNNING.store(false, std::sync::atomic::Ordering::Release);
    match profiled {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"profile.pb\"",
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(why) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": format!("cannot take a profile: {why}")})),
        )
            .into_response(),
    }
}

async fn heap_handler(State(token): State<Arc<str>>, headers: axum::http::HeaderMap) -> Response {
    if !authorised(&token, &headers) {
        return unauthorised();
    }
    // The kernel's counts of this process's memory, in bytes.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mut memory = serde_json::Map::new();
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if !matches!(
            key,
            "VmRSS" | "VmHWM" | "VmSize" | "VmData" | "RssAnon" | "RssFile" | "RssShmem"
        ) {
            continue;
        }
        if let Some(kb) = value
            .trim()
            .strip_suffix(" kB")
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            memory.insert(key.to_owned(), json!(kb * 1024));
        }
    }
    axum::Json(json!({"bytes": memory})).into_response()
}

/// Serves `router` on `listener` until `shutdown` completes, holding every connection to
/// `limits` (a cap on open connections, an idle timeout, a deadline for an HTTP/1 request's
/// headers; HTTP/2 with bounded streams and header lists). At shutdown `on_stop` runs (to end
/// long-lived streams), open requests finish within `limits.drain_timeout`, and what is left
/// is closed. `what` names the port in logs.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ConnectionLimits,
    what: &'static str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_stop: impl FnOnce(),
) -> std::io::Result<()> {
    serve_router_tls(listener, router, limits, what, None, shutdown, on_stop).await
}

/// [`serve_router`], over TLS when `tls` is given: each connection's handshake runs in its own
/// task within the header timeout; a plaintext client gets a 400 saying the port needs TLS;
/// failed handshakes are logged (once per 10 s) with the client's address and why.
pub async fn serve_router_tls(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ConnectionLimits,
    what: &'static str,
    tls: Option<Arc<goverse_tls::ServerTls>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_stop: impl FnOnce(),
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt as _;
    let mut acceptor = goverse_transport::Acceptor::new(listener, limits, what);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(crate::grpc::MAX_STREAMS_PER_CONNECTION)
        .max_header_list_size(crate::grpc::MAX_HEADER_LIST_BYTES)
        .max_pending_accept_reset_streams(64)
        .keep_alive_interval(Some(Duration::from_secs(15)))
        .keep_alive_timeout(Duration::from_secs(20));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let failures = Arc::new(goverse_transport::HandshakeLog::default());
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (io, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = acceptor.accept() => accepted,
        };
        // Finished connections are reaped as new ones come.
        while connections.try_join_next().is_some() {}
        let service =
            router
                .clone()
                .map_request(move |request: hyper::Request<hyper::body::Incoming>| {
                    let mut request = request.map(Body::new);
                    request.extensions_mut().insert(ConnectInfo(remote));
                    request
                });
        let service = hyper_util::service::TowerToHyperService::new(service);
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        match &tls {
            None => {
                connections.spawn(async move {
                    let connection = builder
                        .serve_connection_with_upgrades(TokioIo::new(io), service)
                        .into_owned();
                    if let Err(err) = watcher.watch(connection).await {
                        tracing::debug!(peer = %remote, cause = %err, "HTTP connection ended");
                    }
                });
            }
            Some(tls) => {
                let (tls, failures) = (tls.clone(), failures.clone());
                let handshake = limits.header_timeout;
                connections.spawn(async move {
                    let accepted =
                        goverse_transport::accept_tls(&tls, io, remote, handshake, &failures);
                    let Some(io) = accepted.await else {
                        return;
                    };
                    let connection = builder
                        .serve_connection_with_upgrades(TokioIo::new(io), service)
                        .into_owned();
                    if let Err(err) = watcher.watch(connection).await {
                        tracing::debug!(peer = %remote, cause = %err, "HTTPS connection ended");
                    }
                });
            }
        }
    }
    on_stop();
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            port = what,
            "HTTP connections still open after the drain deadline; closing them"
        );
    }
    connections.shutdown().await;
    Ok(())
}
