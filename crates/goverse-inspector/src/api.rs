//! The routes: the page, the reads and the operators' actions.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use goverse_cluster::AdminError;
use goverse_core::NodeAddr;
use serde::Deserialize;
use serde_json::json;

use crate::Inspector;
use crate::snapshot::{NodeError, ObjectEntry, ObjectsAnswer};

const PAGE: &str = include_str!("../assets/index.html");

pub(crate) fn router(inspector: Inspector) -> axum::Router {
    axum::Router::new()
        .route("/", get(page))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/api/cluster", get(cluster))
        .route("/api/calls", get(calls))
        .route("/api/objects", get(objects))
        .route("/api/events", get(crate::events::events))
        .route("/api/shards/{shard}/move", post(move_shard))
        .route("/api/shards/{shard}/pin", post(pin))
        .route("/api/shards/{shard}/unpin", post(unpin))
        .route("/api/nodes/{node}/drain", post(drain))
        .route("/api/nodes/{node}/undrain", post(undrain))
        .with_state(inspector)
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

/// Ready while the cluster store answers (a read of one key within the request timeout).
async fn ready(State(inspector): State<Inspector>) -> Response {
    let inner = &inspector.inner;
    let key = inner.keys.shard_count();
    let read = inner.store.get(&key);
    match tokio::time::timeout(inner.config.request_timeout, read).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(err)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the cluster store: {err}\n"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster store did not answer in time\n",
        )
            .into_response(),
    }
}

async fn cluster(State(inspector): State<Inspector>) -> Response {
    Json(inspector.snapshot()).into_response()
}

async fn calls(State(inspector): State<Inspector>) -> Response {
    Json(inspector.calls()).into_response()
}

fn error(code: StatusCode, message: impl std::fmt::Display) -> Response {
    (code, Json(json!({ "error": message.to_string() }))).into_response()
}

/// Why an action was refused.
#[derive(Debug)]
enum ApiError {
    /// No or another admin token.
    Unauthorised,
    /// Anything else: the status and what was wrong.
    Refused(StatusCode, String),
}

impl ApiError {
    fn new(code: StatusCode, message: impl std::fmt::Display) -> Self {
        Self::Refused(code, message.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Unauthorised => goverse_gate::unauthorised(),
            Self::Refused(code, message) => error(code, message),
        }
    }
}

#[derive(Debug, Deserialize)]
struct ObjectsQuery {
    node: Option<String>,
    #[serde(rename = "type")]
    type_name: Option<String>,
    q: Option<String>,
    limit: Option<usize>,
}

/// Asks the nodes (all, or the one named) for their objects and filters them by type and ID
/// substring.
async fn objects(
    State(inspector): State<Inspector>,
    Query(query): Query<ObjectsQuery>,
) -> Response {
    let inner = &inspector.inner;
    let nodes: Vec<NodeAddr> = {
        let map = inner.view.borrow();
        match query.node.as_deref().filter(|n| !n.is_empty()) {
            Some(node) if !map.nodes.contains(&NodeAddr::new(node)) => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no node {node} is registered in the cluster"),
                );
            }
            Some(node) => vec![NodeAddr::new(node)],
            None => map.nodes.iter().cloned().collect(),
        }
    };
    let limit = query
        .limit
        .unwrap_or(inner.config.max_objects)
        .min(inner.config.max_objects);
    let type_name = query.type_name.filter(|t| !t.is_empty());
    let needle = query.q.filter(|q| !q.is_empty());
    let asks = nodes.iter().map(|node| list_objects(&inspector, node));
    let answers = futures::future::join_all(asks).await;
    let mut answer = ObjectsAnswer::default();
    for (node, listed) in nodes.iter().zip(answers) {
        match listed {
            Ok(objects) => answer.objects.extend(
                objects
                    .into_iter()
                    .filter(|o| type_name.as_ref().is_none_or(|t| o.r#type == *t))
                    .filter(|o| needle.as_ref().is_none_or(|q| o.id.contains(q.as_str())))
                    .map(|o| ObjectEntry {
                        node: node.as_str().to_owned(),
                        shard: goverse_core::Route::of(&o.id, inner.shard_count)
                            .ok()
                            .map(|r| r.shard().0),
                        object_type: o.r#type,
                        id: o.id,
                        created_unix: o.creation_time,
                    }),
            ),
            Err(why) => answer.errors.push(NodeError {
                node: node.as_str().to_owned(),
                error: why,
            }),
        }
    }
    answer
        .objects
        .sort_by(|a, b| (&a.object_type, &a.id, &a.node).cmp(&(&b.object_type, &b.id, &b.node)));
    answer.matched = answer.objects.len();
    answer.truncated = answer.matched > limit;
    answer.objects.truncate(limit);
    Json(answer).into_response()
}

/// One node's objects, through upstream's `ListObjects` on its node port.
async fn list_objects(
    inspector: &Inspector,
    node: &NodeAddr,
) -> Result<Vec<goverse_proto::upstream::ObjectInfo>, String> {
    use goverse_proto::upstream::goverse_client::GoverseClient;
    let inner = &inspector.inner;
    let timeout = inner.config.request_timeout;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{node}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let mut request = tonic::Request::new(goverse_proto::upstream::Empty {});
    if let Some(secret) = &inner.config.peer_secret {
        let value = secret
            .parse()
            .map_err(|_| "the cluster secret is not a valid header value".to_owned())?;
        request
            .metadata_mut()
            .insert(goverse_transport::PEER_SECRET_HEADER, value);
    }
    let answer = GoverseClient::new(channel)
        // Nodes with many objects answer with large lists.
        .max_decoding_message_size(256 * 1024 * 1024)
        .list_objects(request)
        .await
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
    Ok(answer.into_inner().objects)
}

/// The admin check: 403 when actions are off, 401 without the token.
fn check_token(inspector: &Inspector, headers: &HeaderMap) -> Result<(), ApiError> {
    match &inspector.inner.config.admin_token {
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "operator actions are off: the cluster's configuration sets no cluster.admin_token",
        )),
        Some(token) if goverse_gate::authorised(token, headers) => Ok(()),
        Some(_) => Err(ApiError::Unauthorised),
    }
}

fn admin_error(err: AdminError) -> ApiError {
    let code = match &err {
        AdminError::NoSuchShard { .. } => StatusCode::BAD_REQUEST,
        AdminError::NoSuchNode(_) => StatusCode::NOT_FOUND,
        AdminError::Drained(_)
        | AdminError::Pinned { .. }
        | AdminError::LastNode(_)
        | AdminError::Contended(_) => StatusCode::CONFLICT,
        AdminError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(code, err)
}

/// `{"node": "host:port"}`, optional for a pin.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeBody {
    node: Option<String>,
}

fn parse_body(body: &[u8]) -> Result<NodeBody, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(NodeBody::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body must be {{\"node\": \"host:port\"}}: {e}"),
        )
    })
}

fn parse_shard(shard: &str) -> Result<u32, ApiError> {
    shard.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{shard:?} is not a shard number"),
        )
    })
}

/// Runs an operator's action once the admin token checks out: its answer, logged, or why not.
async fn act(
    inspector: &Inspector,
    headers: &HeaderMap,
    action: &'static str,
    work: impl std::future::Future<Output = Result<serde_json::Value, ApiError>>,
) -> Response {
    if let Err(refused) = check_token(inspector, headers) {
        return refused.into_response();
    }
    match work.await {
        Ok(answer) => {
            tracing::info!(action, %answer, "operator action");
            Json(answer).into_response()
        }
        Err(refused) => refused.into_response(),
    }
}

async fn move_shard(
    State(inspector): State<Inspector>,
    Path(shard): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let work = async {
        let shard = parse_shard(&shard)?;
        let node = parse_body(&body)?.node.ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "say where to: {\"node\": \"host:port\"}",
            )
        })?;
        let node = NodeAddr::new(node);
        let operator = &inspector.inner.operator;
        let revision = operator
            .move_shard(shard, &node)
            .await
            .map_err(admin_error)?;
        Ok(json!({"shard": shard, "node": node.as_str(), "revision": revision}))
    };
    act(&inspector, &headers, "move", work).await
}

async fn pin(
    State(inspector): State<Inspector>,
    Path(shard): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let work = async {
        let shard = parse_shard(&shard)?;
        let node = match parse_body(&body)?.node {
            Some(node) => NodeAddr::new(node),
            None => {
                let owner = inspector
                    .inner
                    .view
                    .borrow()
                    .owner(goverse_core::ShardId(shard))
                    .cloned();
                owner.ok_or_else(|| {
                    ApiError::new(
                        StatusCode::CONFLICT,
                        format!("shard {shard} has no owner to pin it to: say which node"),
                    )
                })?
            }
        };
        let operator = &inspector.inner.operator;
        let revision = operator.pin(shard, &node).await.map_err(admin_error)?;
        Ok(json!({"shard": shard, "pinned": node.as_str(), "revision": revision}))
    };
    act(&inspector, &headers, "pin", work).await
}

async fn unpin(
    State(inspector): State<Inspector>,
    Path(shard): Path<String>,
    headers: HeaderMap,
) -> Response {
    let work = async {
        let shard = parse_shard(&shard)?;
        let was = inspector
            .inner
            .operator
            .unpin(shard)
            .await
            .map_err(admin_error)?;
        Ok(json!({"shard": shard, "was_pinned": was}))
    };
    act(&inspector, &headers, "unpin", work).await
}

async fn drain(
    State(inspector): State<Inspector>,
    Path(node): Path<String>,
    headers: HeaderMap,
) -> Response {
    let work = async {
        let node = NodeAddr::new(node);
        let revision = inspector
            .inner
            .operator
            .drain(&node)
            .await
            .map_err(admin_error)?;
        Ok(json!({"node": node.as_str(), "drained": true, "revision": revision}))
    };
    act(&inspector, &headers, "drain", work).await
}

async fn undrain(
    State(inspector): State<Inspector>,
    Path(node): Path<String>,
    headers: HeaderMap,
) -> Response {
    let work = async {
        let node = NodeAddr::new(node);
        let was = inspector
            .inner
            .operator
            .undrain(&node)
            .await
            .map_err(admin_error)?;
        Ok(json!({"node": node.as_str(), "drained": false, "was_drained": was}))
    };
    act(&inspector, &headers, "undrain", work).await
}
