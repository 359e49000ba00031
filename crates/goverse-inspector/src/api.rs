//! The routes: the page, the reads and the operators' actions.

use std::collections::BTreeMap;

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

async fn cluster(State(inspector): State<Inspector>) -> Response {
    Json(inspector.snapshot()).into_response()
}

async fn calls(State(inspector): State<Inspector>) -> Response {
    Json(inspector.calls()).into_response()
}

fn error(code: StatusCode, message: impl std::fmt::Display) -> Response {
    (code, Json(json!({ "error": message.to_string() }))).into_response()
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
fn check_token(inspector: &Inspector, headers: &HeaderMap) -> Result<(), Response> {
    match &inspector.inner.config.admin_token {
        None => Err(error(
            StatusCode::FORBIDDEN,
            "operator actions are off: the cluster's configuration sets no cluster.admin_token",
        )),
        Some(token) if goverse_gate::authorised(token, headers) => Ok(()),
        Some(_) => Err(goverse_gate::unauthorised()),
    }
}

fn admin_error(err: AdminError) -> Response {
    let code = match &err {
        AdminError::NoSuchShard { .. } => StatusCode::BAD_REQUEST,
        AdminError::NoSuchNode(_) => StatusCode::NOT_FOUND,
        AdminError::Drained(_)
        | AdminError::Pinned { .. }
        | AdminError::LastNode(_)
        | AdminError::Contended(_) => StatusCode::CONFLICT,
        AdminError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(code, err)
}

/// `{"node": "host:port"}`, optional for a pin.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeBody {
    node: Option<String>,
}

fn parse_body(body: &[u8]) -> Result<NodeBody, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(NodeBody::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("the body must be {{\"node\": \"host:port\"}}: {e}"),
        )
    })
}

fn parse_shard(shard: &str) -> Result<u32, Response> {
    shard.parse().map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            format!("{shard:?} is not a shard number"),
        )
    })
}

fn logged(action: &str, what: &BTreeMap<&str, String>) {
    tracing::info!(action, ?what, "operator action");
}

async fn move_shard(
    State(inspector): State<Inspector>,
    Path(shard): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        check_token(&inspector, &headers)?;
        let shard = parse_shard(&shard)?;
        let node = parse_body(&body)?.node.ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                "say where to: {\"node\": \"host:port\"}",
            )
        })?;
        let node = NodeAddr::new(node);
        let revision = inspector
            .inner
            .operator
            .move_shard(shard, &node)
            .await
            .map_err(admin_error)?;
        logged(
            "move",
            &BTreeMap::from([("shard", shard.to_string()), ("node", node.to_string())]),
        );
        Ok::<_, Response>(Json(
            json!({"shard": shard, "node": node.as_str(), "revision": revision}),
        ))
    };
    result.await.into_response()
}

async fn pin(
    State(inspector): State<Inspector>,
    Path(shard): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        check_token(&inspector, &headers)?;
        let shard = parse_shard(&shard)?;
        let node = match parse_body(&body)?.node {
            Some(node) => NodeAddr::new(node),
            None => {
                let map = inspector.inner.view.borrow();
                map.owner(goverse_core::ShardId(shard))
                    .cloned()
                    .ok_or_else(|| {
                        error(
                            StatusCode::CONFLICT,
                            format!("shard {shard} has no owner to pin it to: say which node"),
                        )
                    })?
            }
        };
        let revision = inspector
            .inner
            .operator
            .pin(shard, &node)
            .await
            .map_err(admin_error)?;
        logged(
            "pin",
            &BTreeMap::from([("shard", shard.to_string()), ("node", node.to_string())]),
        );
        Ok::<_, Response>(Json(
            json!({"shard": shard, "pinned": node.as_str(), "revision": revision}),
        ))
    };
    result.await.into_response()
}

async fn unpin(
    State(inspector): State<Inspector>,
    Path(shard): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        check_token(&inspector, &headers)?;
        let shard = parse_shard(&shard)?;
        let was = inspector
            .inner
            .operator
            .unpin(shard)
            .await
            .map_err(admin_error)?;
        logged("unpin", &BTreeMap::from([("shard", shard.to_string())]));
        Ok::<_, Response>(Json(json!({"shard": shard, "was_pinned": was})))
    };
    result.await.into_response()
}

async fn drain(
    State(inspector): State<Inspector>,
    Path(node): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        check_token(&inspector, &headers)?;
        let node = NodeAddr::new(node);
        let revision = inspector
            .inner
            .operator
            .drain(&node)
            .await
            .map_err(admin_error)?;
        logged("drain", &BTreeMap::from([("node", node.to_string())]));
        Ok::<_, Response>(Json(
            json!({"node": node.as_str(), "drained": true, "revision": revision}),
        ))
    };
    result.await.into_response()
}

async fn undrain(
    State(inspector): State<Inspector>,
    Path(node): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        check_token(&inspector, &headers)?;
        let node = NodeAddr::new(node);
        let was = inspector
            .inner
            .operator
            .undrain(&node)
            .await
            .map_err(admin_error)?;
        logged("undrain", &BTreeMap::from([("node", node.to_string())]));
        Ok::<_, Response>(Json(
            json!({"node": node.as_str(), "drained": false, "was_drained": was}),
        ))
    };
    result.await.into_response()
}
