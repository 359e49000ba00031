//! The floor `bench cluster --baseline` measures node links against: one long-lived
//! bidirectional tonic stream over loopback TCP, carrying the node protocol's own messages
//! (id-tagged `Call` requests in batches, `Response`s in batches), with a server that answers
//! every call at once with its request payload. No router, no directory, no turns, no
//! deadlines: what is left is the encoding, HTTP/2 and the hand-off between tasks, which every
//! forwarded call pays too.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use foldhash::HashMap;
use futures::Stream;
use goverse::prost::Message as _;
use goverse_proto::node::node_service_client::NodeServiceClient;
use goverse_proto::node::node_service_server::{NodeService, NodeServiceServer};
use goverse_proto::node::{
    Call, DescribeRequest, DescribeResponse, Request, RequestBatch, Response, ResponseBatch,
    request, response,
};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tonic::{Status, Streaming};

/// One caller's next call; returns whether it succeeded.
pub(crate) type CallFn = Arc<
    dyn Fn(usize, usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
        + Send
        + Sync,
>;

/// Most items one batch takes from a queue (as the node link does).
const MAX_BATCH: usize = 1024;

/// Starts the echo server on a free loopback port and links one stream to it; the calls go
/// over that stream until `stop` is cancelled.
pub(crate) async fn stream_calls(
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<CallFn> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NodeServiceServer::new(EchoNode))
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut inbound = NodeServiceClient::new(channel)
        .open(Batches {
            rx,
            buf: Vec::new(),
        })
        .await?
        .into_inner();
    let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Response>>>> = Arc::default();
    {
        let pending = pending.clone();
        tokio::spawn(async move {
            while let Ok(Some(batch)) = inbound.message().await {
                let mut waiting = pending.lock();
                for r in batch.responses {
                    if let Some(tx) = waiting.remove(&r.id) {
                        let _ = tx.send(r);
                    }
                }
            }
        });
    }
    let one = goverse::prelude::Int32Value { value: 1 }.encode_to_vec();
    let type_url = format!("{}google.protobuf.Int32Value", goverse::TYPE_URL_PREFIX);
    let next = Arc::new(AtomicU64::new(1));
    Ok(Arc::new(move |_caller, object| {
        let id = next.fetch_add(1, Ordering::Relaxed);
        let call = Call {
            r#type: "Counter".to_owned(),
            object_id: format!("counter-{object}"),
            method: "Add".to_owned(),
            request: Some(prost_types::Any {
                type_url: type_url.clone(),
                value: one.clone(),
            }),
            ..Call::default()
        };
        let (done, answered) = oneshot::channel();
        pending.lock().insert(id, done);
        let sent = tx
            .send(Request {
                id,
                op: Some(request::Op::Call(call)),
            })
            .is_ok();
        Box::pin(async move {
            sent && matches!(
                answered.await,
                Ok(Response {
                    result: Some(response::Result::Value(_)),
                    ..
                })
            )
        })
    }))
}

/// Everything queued when polled, as one batch.
struct Batches {
    rx: mpsc::UnboundedReceiver<Request>,
    buf: Vec<Request>,
}

impl Stream for Batches {
    type Item = RequestBatch;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RequestBatch>> {
        let this = self.get_mut();
        match this.rx.poll_recv_many(cx, &mut this.buf, MAX_BATCH) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(0) => Poll::Ready(None),
            Poll::Ready(_) => Poll::Ready(Some(RequestBatch {
                requests: std::mem::take(&mut this.buf),
            })),
        }
    }
}

/// Answers every call with its own request payload, in batches.
struct EchoNode;

#[tonic::async_trait]
impl NodeService for EchoNode {
    type OpenStream = Pin<Box<dyn Stream<Item = Result<ResponseBatch, Status>> + Send + 'static>>;

    async fn open(
        &self,
        request: tonic::Request<Streaming<RequestBatch>>,
    ) -> Result<tonic::Response<Self::OpenStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel::<Response>();
        tokio::spawn(async move {
            while let Ok(Some(batch)) = inbound.message().await {
                for r in batch.requests {
                    let value = match r.op {
                        Some(request::Op::Call(call)) => call.request.unwrap_or_default(),
                        _ => prost_types::Any::default(),
                    };
                    let _ = tx.send(Response {
                        id: r.id,
                        result: Some(response::Result::Value(value)),
                    });
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(Responses { rx })))
    }

    async fn describe(
        &self,
        _request: tonic::Request<DescribeRequest>,
    ) -> Result<tonic::Response<DescribeResponse>, Status> {
        Ok(tonic::Response::new(DescribeResponse::default()))
    }
}

/// Everything queued when polled, as one response batch.
struct Responses {
    rx: mpsc::UnboundedReceiver<Response>,
}

impl Stream for Responses {
    type Item = Result<ResponseBatch, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut responses = Vec::new();
        match self
            .get_mut()
            .rx
            .poll_recv_many(cx, &mut responses, MAX_BATCH)
        {
            Poll::Pending => Poll::Pending,
            Poll::Ready(0) => Poll::Ready(None),
            Poll::Ready(_) => Poll::Ready(Some(Ok(ResponseBatch {
                responses,
                pushes: Vec::new(),
            }))),
        }
    }
}
