//! The etcd cluster store: etcd 3.4+ over its v3 gRPC API.
//!
//! Every configured endpoint gets a connection; requests go to the one that answered last and
//! move to the next when it cannot be reached, so one dead member of an etcd cluster costs a
//! retry, not an outage. Watches reconnect by themselves and resume from the last revision they
//! delivered; a watch whose missed history was compacted meanwhile ends, so its owner re-lists.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

use goverse_core::InvalidSetting;

use crate::{
    CasOutcome, ClusterError, ClusterStore, Expect, KeyValue, LeaseId, Revision, TxnOp, TxnOutcome,
    TxnWrite, WatchEvent, WatchStream,
};

#[allow(unreachable_pub, missing_debug_implementations, clippy::all)]
mod pb {
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

use pb::etcdserverpb as rpc;
use pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::etcdserverpb::kv_client::KvClient;
use pb::etcdserverpb::lease_client::LeaseClient;
use pb::etcdserverpb::maintenance_client::MaintenanceClient;
use pb::etcdserverpb::request_op::Request;
use pb::etcdserverpb::response_op::Response;
use pb::etcdserverpb::watch_client::WatchClient;
use pb::mvccpb;

/// Largest response accepted from etcd (a full shard map of 8192 records is well under 1 MiB).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// How to reach etcd. Plain data with defaults; [`EtcdConfig::validate`] names what is wrong.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members (`host:port` or `http://host:port`); every one is used.
    pub endpoints: Vec<String>,
    /// How long connecting to one endpoint may take.
    pub connect_timeout: Duration,
    /// How long one request may take on one endpoint before the next endpoint is tried.
    pub request_timeout: Duration,
    /// TLS to etcd: its CA (and, for `--client-cert-auth`, the certificate presented). With
    /// it endpoints are `https://host:port` or `host:port`; without it `http://` or
    /// `host:port`.
    pub tls: Option<Arc<goverse_tls::ClientTls>>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["127.0.0.1:2379".to_owned()],
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            tls: None,
        }
    }
}

impl EtcdConfig {
    /// Checks the values, naming the first bad one.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.endpoints.is_empty() {
            return Err(InvalidSetting::new(
                "endpoints",
                "at least one endpoint is needed",
            ));
        }
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            endpoint_url(i, endpoint, self.tls.is_some())?;
        }
        if self.connect_timeout.is_zero() {
            return Err(InvalidSetting::new("connect_timeout", "must be positive"));
        }
        if self.request_timeout.is_zero() {
            return Err(InvalidSetting::new("request_timeout", "must be positive"));
        }
        Ok(())
    }
}

/// `host:port`, `http://host:port` or (with `tls`) `https://host:port` as a URL; a scheme that
/// does not match the TLS setting is refused rather than silently spoken to otherwise. The
/// error says what is wrong.
fn endpoint_url(index: usize, endpoint: &str, tls: bool) -> Result<String, InvalidSetting> {
    let endpoint = endpoint.trim();
    let bad = |why: &str| {
        InvalidSetting::new(format!("endpoints[{index}]"), format!("{endpoint:?} {why}"))
    };
    let scheme = if tls { "https://" } else { "http://" };
    let url = if let Some(rest) = endpoint.strip_prefix("https://") {
        if !tls {
            return Err(bad(
                "is https: give etcd's CA (cluster.etcd.ca_file) to reach it over TLS",
            ));
        }
        format!("https://{rest}")
    } else if let Some(rest) = endpoint.strip_prefix("http://") {
        if tls {
            return Err(bad(
                "is http://, but etcd's CA is given: TLS endpoints are https:// or host:port",
            ));
        }
        format!("http://{rest}")
    } else if endpoint.contains("://") {
        return Err(bad(
            "is not understood: only http://, https:// URLs or host:port are",
        ));
    } else {
        format!("{scheme}{endpoint}")
    };
    let authority = &url[scheme.len()..].trim_end_matches('/');
    let valid = authority
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !valid {
        return Err(bad("is not host:port (e.g. 127.0.0.1:2379)"));
    }
    Ok(url)
}

/// A [`ClusterStore`] on etcd. Cheap to clone: clones share the connections.
#[derive(Debug, Clone)]
pub struct EtcdClusterStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    peers: Vec<Peer>,
    /// The endpoint requests go to first: the last one that answered.
    preferred: AtomicUsize,
    request_timeout: Duration,
    /// Watches resumed after their stream broke, and attempts that failed (and were retried).
    watch_resumed: std::sync::atomic::AtomicU64,
    watch_resume_failed: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct Peer {
    url: String,
    channel: Channel,
}

impl Inner {
    fn urls(&self) -> String {
        self.peers
            .iter()
            .map(|p| p.url.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Runs a request on the preferred endpoint, moving on to the others while the ones tried
    /// cannot be reached. Errors etcd itself returns are not retried.
    async fn request<T, F, Fut>(&self, what: &str, call: F) -> Result<T, ClusterError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for i in 0..self.peers.len() {
            let index = (first + i) % self.peers.len();
            let peer = &self.peers[index];
            match tokio::time::timeout(self.request_timeout, call(peer.channel.clone())).await {
                Ok(Ok(value)) => {
                    if index != first {
                        self.preferred.store(index, Ordering::Relaxed);
                    }
                    return Ok(value);
                }
                Ok(Err(status)) if unreachable(&status) => {
                    failures.push(format!("{}: {}", peer.url, status_text(&status)));
                }
                Ok(Err(status)) => return Err(refusal(what, &status)),
                Err(_) => failures.push(format!(
                    "{}: no answer within {:?}",
                    peer.url, self.request_timeout
                )),
            }
        }
        Err(ClusterError::Unavailable(format!(
            "etcd ({}) cannot {what}: {}",
            self.urls(),
            failures.join("; ")
        )))
    }
}

/// Whether a failure means the endpoint (or its member) cannot serve now, so another may.
fn unreachable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    ) || status.message().contains("no leader")
}

fn status_text(status: &Status) -> String {
    use std::error::Error as _;
    let mut text = status.message().to_owned();
    let mut source = status.source();
    while let Some(err) = source {
        // Layers often repeat their cause's words: keep each new piece once.
        let piece = err.to_string();
        if !text.contains(&piece) {
            text.push_str(": ");
            text.push_str(&piece);
        }
        source = err.source();
    }
    if text.is_empty() {
        text = format!("{:?}", status.code());
    }
    text
}

/// An error etcd returned for the request itself.
fn refusal(what: &str, status: &Status) -> ClusterError {
    ClusterError::Rejected(format!("etcd cannot {what}: {}", status_text(status)))
}

/// etcd's answer for a lease it does not know (expired or revoked).
fn lease_not_found(status: &Status) -> bool {
    status.message().contains("requested lease not found")
}

/// Maps a lease-not-found refusal to [`ClusterError::LeaseExpired`].
fn lease_error(lease: Option<LeaseId>, err: ClusterError) -> ClusterError {
    match (lease, &err) {
        (Some(LeaseId(id)), ClusterError::Rejected(text))
            if text.contains("requested lease not found") =>
        {
            ClusterError::LeaseExpired(id)
        }
        _ => err,
    }
}

/// The end of the key range that holds every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every key: etcd reads a range end of "\0" as "to the end of the keyspace".
    vec![0]
}

fn key_value(kv: mvccpb::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        lease: (kv.lease != 0).then_some(LeaseId(kv.lease)),
    }
}

fn header_revision(header: Option<rpc::ResponseHeader>) -> Revision {
    header.map_or(0, |h| h.revision)
}

fn compare(key: &str, expect: Expect) -> rpc::Compare {
    let (target, union) = match expect {
        // A key that does not exist has create revision 0.
        Expect::Absent => (CompareTarget::Create, TargetUnion::CreateRevision(0)),
        Expect::ModRevision(rev) => (CompareTarget::Mod, TargetUnion::ModRevision(rev)),
    };
    rpc::Compare {
        result: CompareResult::Equal as i32,
        target: target as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(union),
    }
}

fn range_op(key: &str) -> rpc::RequestOp {
    rpc::RequestOp {
        request: Some(Request::RequestRange(rpc::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

fn put_op(key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> rpc::RequestOp {
    rpc::RequestOp {
        request: Some(Request::RequestPut(rpc::PutRequest {
            key: key.as_bytes().to_vec(),
            value,
            lease: lease.map_or(0, |l| l.0),
        })),
    }
}

/// The single key each range response of a failed transaction read, in order.
fn ranged_values(responses: Vec<rpc::ResponseOp>) -> Vec<Option<KeyValue>> {
    responses
        .into_iter()
        .map(|op| match op.response {
            Some(Response::ResponseRange(range)) => range.kvs.into_iter().next().map(key_value),
            _ => None,
        })
        .collect()
}

impl EtcdClusterStore {
    /// Connects to every endpoint and checks that at least one answers; otherwise the error
    /// names every endpoint and why each failed.
    pub async fn connect(config: &EtcdConfig) -> Result<Self, ClusterError> {
        config
            .validate()
            .map_err(|why| ClusterError::Config(why.within("etcd")))?;
        let mut peers = Vec::with_capacity(config.endpoints.len());
        for (i, endpoint) in config.endpoints.iter().enumerate() {
            let url = endpoint_url(i, endpoint, config.tls.is_some())
                .map_err(|why| ClusterError::Config(why.within("etcd")))?;
            let authority = url
                .split_once("://")
                .map_or(url.as_str(), |(_, rest)| rest)
                .trim_end_matches('/')
                .to_owned();
            // The channel's own URI is plain: TLS, when asked for, is this connector's.
            let endpoint = Endpoint::from_shared(format!("http://{authority}"))
                .map_err(|err| ClusterError::Rejected(format!("etcd endpoint {url}: {err}")))?
                .connect_timeout(config.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true);
            let channel = match &config.tls {
                None => endpoint.connect_lazy(),
                Some(tls) => endpoint
                    .connect_with_connector_lazy(goverse_tls::connector(tls.clone(), authority)),
            };
            peers.push(Peer { url, channel });
        }
        let store = Self {
            inner: Arc::new(Inner {
                peers,
                preferred: AtomicUsize::new(0),
                request_timeout: config.request_timeout,
                watch_resumed: Default::default(),
                watch_resume_failed: Default::default(),
            }),
        };
        let version = store
            .inner
            .request("report its status", |channel| async move {
                MaintenanceClient::new(channel)
                    .status(rpc::StatusRequest {})
                    .await
                    .map(|r| r.into_inner().version)
            })
            .await?;
        tracing::info!(endpoints = %store.inner.urls(), %version, "connected to etcd");
        Ok(store)
    }

    /// The endpoints' URLs, comma-separated.
    pub fn endpoints(&self) -> String {
        self.inner.urls()
    }

    fn kv(channel: Channel) -> KvClient<Channel> {
        KvClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    async fn range(
        &self,
        what: &str,
        key: Vec<u8>,
        range_end: Vec<u8>,
    ) -> Result<(Vec<KeyValue>, Revision), ClusterError> {
        let response = self
            .inner
            .request(what, |channel| {
                let request = rpc::RangeRequest {
                    key: key.clone(),
                    range_end: range_end.clone(),
                    ..Default::default()
                };
                async move { Self::kv(channel).range(request).await }
            })
            .await?
            .into_inner();
        let revision = header_revision(response.header);
        Ok((response.kvs.into_iter().map(key_value).collect(), revision))
    }

    async fn txn(
        &self,
        what: &str,
        request: rpc::TxnRequest,
    ) -> Result<rpc::TxnResponse, ClusterError> {
        self.inner
            .request(what, |channel| {
                let request = request.clone();
                async move { Self::kv(channel).txn(request).await }
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Opens a watch from `start` (inclusive) and waits for etcd to confirm it.
    async fn open_watch(&self, prefix: &str, start: Revision) -> Result<WatchConn, ClusterError> {
        let key = prefix.as_bytes().to_vec();
        let (requests, mut streaming) = self
            .inner
            .request("watch", |channel| {
                let create = rpc::WatchRequest {
                    request_union: Some(rpc::watch_request::RequestUnion::CreateRequest(
                        rpc::WatchCreateRequest {
                            key: key.clone(),
                            range_end: prefix_end(&key),
                            start_revision: start,
                            progress_notify: false,
                        },
                    )),
                };
                async move {
                    let (tx, rx) = mpsc::channel(1);
                    tx.send(create).await.ok();
                    let mut client =
                        WatchClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
                    let streaming = client.watch(ReceiverStream::new(rx)).await?.into_inner();
                    Ok((tx, streaming))
                }
            })
            .await?;
        let first = tokio::time::timeout(self.inner.request_timeout, streaming.message())
            .await
            .map_err(|_| {
                ClusterError::Unavailable(format!(
                    "etcd ({}) did not confirm a watch within {:?}",
                    self.inner.urls(),
                    self.inner.request_timeout
                ))
            })?
            .map_err(|status| {
                ClusterError::Unavailable(format!("etcd watch: {}", status_text(&status)))
            })?
            .ok_or_else(|| ClusterError::Unavailable("etcd closed the watch at once".to_owned()))?;
        if first.compact_revision > 0 {
            return Err(ClusterError::Compacted {
                requested: start - 1,
                oldest: first.compact_revision,
            });
        }
        if first.canceled || !first.created {
            return Err(ClusterError::Rejected(format!(
                "etcd refused the watch on {prefix:?}: {}",
                first.cancel_reason
            )));
        }
        Ok(WatchConn {
            _requests: requests,
            streaming,
        })
    }
}

/// One open watch stream.
struct WatchConn {
    /// Held for the stream's lifetime: dropping it would half-close the stream.
    _requests: mpsc::Sender<rpc::WatchRequest>,
    streaming: Streaming<rpc::WatchResponse>,
}

/// Forwards one watch's events, reconnecting (and resuming after the last revision delivered)
/// when the stream breaks, until the receiver is dropped or the history is compacted.
async fn run_watch(
    store: EtcdClusterStore,
    prefix: String,
    mut last: Revision,
    mut conn: WatchConn,
    events: mpsc::UnboundedSender<WatchEvent>,
) {
    loop {
        let message = tokio::select! {
            () = events.closed() => return,
            message = conn.streaming.message() => message,
        };
        match message {
            Ok(Some(response)) => {
                if response.compact_revision > 0 || response.canceled {
                    tracing::warn!(
                        prefix,
                        compact_revision = response.compact_revision,
                        reason = response.cancel_reason,
                        "etcd ended a watch; its owner lists the keys again"
                    );
                    return;
                }
                for event in response.events {
                    let Some(kv) = event.kv else { continue };
                    let revision = kv.mod_revision;
                    let event = if event.r#type == mvccpb::event::EventType::Delete as i32 {
                        WatchEvent::Delete {
                            key: String::from_utf8_lossy(&kv.key).into_owned(),
                            mod_revision: revision,
                        }
                    } else {
                        WatchEvent::Put(key_value(kv))
                    };
                    if events.send(event).is_err() {
                        return;
                    }
                    last = last.max(revision);
                }
                continue;
            }
            Ok(None) => tracing::warn!(prefix, "etcd closed a watch stream; reconnecting"),
            Err(status) => {
                tracing::warn!(prefix, cause = %status_text(&status), "etcd watch broke; reconnecting");
            }
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::select! {
                () = events.closed() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            match store.open_watch(&prefix, last + 1).await {
                Ok(resumed) => {
                    store
                        .inner
                        .watch_resumed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(prefix, after = last, "etcd watch resumed");
                    conn = resumed;
                    break;
                }
                Err(ClusterError::Compacted { oldest, .. }) => {
                    tracing::warn!(
                        prefix,
                        after = last,
                        oldest,
                        "etcd compacted what a watch missed; its owner lists the keys again"
                    );
                    return;
                }
                Err(err) => {
                    store
                        .inner
                        .watch_resume_failed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(prefix, cause = %err, "etcd watch cannot resume yet");
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

#[async_trait]
impl ClusterStore for EtcdClusterStore {
    fn watch_reconnections(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.inner.watch_resumed.load(Relaxed),
            self.inner.watch_resume_failed.load(Relaxed),
        )
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, ClusterError> {
        // etcd leases count whole seconds; round up so a lease never lives shorter than asked.
        let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let response = self
            .inner
            .request("grant a lease", |channel| async move {
                LeaseClient::new(channel)
                    .lease_grant(rpc::LeaseGrantRequest {
                        ttl: seconds.max(1) as i64,
                        id: 0,
                    })
                    .await
            })
            .await?
            .into_inner();
        if !response.error.is_empty() {
            return Err(ClusterError::Rejected(format!(
                "etcd cannot grant a lease: {}",
                response.error
            )));
        }
        Ok(LeaseId(response.id))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), ClusterError> {
        let ttl = self
            .inner
            .request("renew a lease", |channel| async move {
                let (tx, rx) = mpsc::channel(1);
                tx.send(rpc::LeaseKeepAliveRequest { id: lease.0 })
                    .await
                    .ok();
                let mut responses = LeaseClient::new(channel)
                    .lease_keep_alive(ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                let response = responses.message().await?;
                drop(tx);
                response.map(|r| r.ttl).ok_or_else(|| {
                    Status::unavailable("keep-alive stream closed without an answer")
                })
            })
            .await?;
        // etcd answers a keep-alive for an unknown lease with TTL 0.
        if ttl <= 0 {
            return Err(ClusterError::LeaseExpired(lease.0));
        }
        Ok(())
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), ClusterError> {
        let result = self
            .inner
            .request("revoke a lease", |channel| async move {
                match LeaseClient::new(channel)
                    .lease_revoke(rpc::LeaseRevokeRequest { id: lease.0 })
                    .await
                {
                    Err(status) if lease_not_found(&status) => Ok(false),
                    Err(status) => Err(status),
                    Ok(_) => Ok(true),
                }
            })
            .await?;
        if result {
            Ok(())
        } else {
            Err(ClusterError::LeaseExpired(lease.0))
        }
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, ClusterError> {
        let (kvs, _) = self
            .range("read a key", key.as_bytes().to_vec(), Vec::new())
            .await?;
        Ok(kvs.into_iter().next())
    }

    async fn get_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), ClusterError> {
        let key = prefix.as_bytes().to_vec();
        let end = prefix_end(&key);
        self.range("list keys", key, end).await
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, ClusterError> {
        let response = self
            .inner
            .request("write a key", |channel| {
                let request = rpc::PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.clone(),
                    lease: lease.map_or(0, |l| l.0),
                };
                async move { Self::kv(channel).put(request).await }
            })
            .await
            .map_err(|err| lease_error(lease, err))?
            .into_inner();
        Ok(header_revision(response.header))
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expect: Expect,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<CasOutcome, ClusterError> {
        let request = rpc::TxnRequest {
            compare: vec![compare(key, expect)],
            success: vec![put_op(key, value, lease)],
            failure: vec![range_op(key)],
        };
        let response = self
            .txn("compare-and-set a key", request)
            .await
            .map_err(|err| lease_error(lease, err))?;
        if response.succeeded {
            return Ok(CasOutcome::Applied(header_revision(response.header)));
        }
        let current = ranged_values(response.responses)
            .into_iter()
            .next()
            .flatten();
        Ok(CasOutcome::Conflict(current))
    }

    async fn transact(&self, writes: &[TxnWrite]) -> Result<TxnOutcome, ClusterError> {
        crate::check_batch(writes)?;
        let mut request = rpc::TxnRequest::default();
        let mut lease = None;
        for write in writes {
            if let Some(expect) = write.expect {
                request.compare.push(compare(&write.key, expect));
            }
            request.success.push(match &write.op {
                TxnOp::Put { value, lease: l } => {
                    lease = lease.or(*l);
                    put_op(&write.key, value.clone(), *l)
                }
                TxnOp::Delete => rpc::RequestOp {
                    request: Some(Request::RequestDeleteRange(rpc::DeleteRangeRequest {
                        key: write.key.as_bytes().to_vec(),
                        range_end: Vec::new(),
                    })),
                },
            });
            request.failure.push(range_op(&write.key));
        }
        let response = self
            .txn("apply a transaction", request)
            .await
            .map_err(|err| lease_error(lease, err))?;
        if response.succeeded {
            Ok(TxnOutcome::Applied(header_revision(response.header)))
        } else {
            Ok(TxnOutcome::Conflict(ranged_values(response.responses)))
        }
    }

    async fn delete(&self, key: &str) -> Result<bool, ClusterError> {
        let response = self
            .inner
            .request("delete a key", |channel| {
                let request = rpc::DeleteRangeRequest {
                    key: key.as_bytes().to_vec(),
                    range_end: Vec::new(),
                };
                async move { Self::kv(channel).delete_range(request).await }
            })
            .await?
            .into_inner();
        Ok(response.deleted > 0)
    }

    async fn watch_prefix(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<WatchStream, ClusterError> {
        let conn = self.open_watch(prefix, after + 1).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        // Ends by itself once the receiver is dropped.
        tokio::spawn(run_watch(self.clone(), prefix.to_owned(), after, conn, tx));
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked_and_prefixes_end_where_they_should() {
        assert_eq!(
            endpoint_url(0, "127.0.0.1:2379", false).unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            endpoint_url(0, "http://etcd-1:2379", false).unwrap(),
            "http://etcd-1:2379"
        );
        for bad in ["", "etcd", "127.0.0.1:http", "https://a:1", "unix://x:1"] {
            assert!(endpoint_url(0, bad, false).is_err(), "{bad:?}");
        }
        // With TLS: https:// or host:port, never a plain http:// endpoint.
        assert_eq!(
            endpoint_url(0, "etcd-1:2379", true).unwrap(),
            "https://etcd-1:2379"
        );
        assert_eq!(
            endpoint_url(0, "https://etcd-1:2379", true).unwrap(),
            "https://etcd-1:2379"
        );
        let err = endpoint_url(0, "http://etcd-1:2379", true).unwrap_err();
        assert!(err.reason.contains("etcd's CA is given"), "{err}");
        assert!(
            EtcdConfig {
                endpoints: vec![],
                ..EtcdConfig::default()
            }
            .validate()
            .is_err()
        );
        assert_eq!(prefix_end(b"/goverse/"), b"/goverse0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b""), b"\0");
    }

    fn config(endpoints: Vec<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(2),
            tls: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_on_a_real_etcd() {
        let etcd = goverse_testkit::EtcdServer::start();
        let store = EtcdClusterStore::connect(&config(vec![etcd.endpoint()]))
            .await
            .unwrap();
        crate::conformance::run_all(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_over_tls_admits_a_client_certificate_of_its_ca_and_names_what_is_refused() {
        use goverse_tls::dev::{DevCa, Subject};
        use goverse_tls::{ALPN_H2, ClientFiles, ClientTls, Verify};
        let pki = tempfile::tempdir().unwrap();
        let dir = pki.path();
        let year = Duration::from_secs(365 * 24 * 3600);
        let hosts = vec!["127.0.0.1".to_owned()];
        let ca = DevCa::generate("etcd CA").unwrap();
        ca.write(dir).unwrap();
        for name in ["etcd", "node"] {
            ca.issue(&Subject::new(name, hosts.clone(), year))
                .unwrap()
                .write(dir, name)
                .unwrap();
        }
        let other = DevCa::generate("another CA").unwrap();
        other
            .issue(&Subject::new("stranger", hosts, year))
            .unwrap()
            .write(dir, "stranger")
            .unwrap();
        let etcd = goverse_testkit::EtcdServer::start_tls(goverse_testkit::EtcdTls {
            cert: dir.join("etcd.pem"),
            key: dir.join("etcd-key.pem"),
            client_ca: dir.join("ca.pem"),
        });
        let with = |cert: Option<&str>| EtcdConfig {
            tls: Some(
                ClientTls::load(
                    "etcd",
                    ClientFiles {
                        ca: Some(dir.join("ca.pem")),
                        cert: cert.map(|c| dir.join(format!("{c}.pem"))),
                        key: cert.map(|c| dir.join(format!("{c}-key.pem"))),
                        verify: Verify::Full,
                    },
                    ALPN_H2,
                )
                .unwrap(),
            ),
            ..config(vec![etcd.endpoint()])
        };
        // etcd takes a moment to serve after its port opens.
        let mut store = None;
        for _ in 0..100 {
            if let Ok(s) = EtcdClusterStore::connect(&with(Some("node"))).await {
                store = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let store = store.expect("etcd over TLS answers");
        assert!(
            store.endpoints().starts_with("https://"),
            "{}",
            store.endpoints()
        );
        store.put("/t/k", b"v".to_vec(), None).await.unwrap();
        assert_eq!(store.get("/t/k").await.unwrap().unwrap().value, b"v");

        // etcd refuses these after the handshake (TLS 1.3), so the client sees its connection
        // closed (the reason is in its log); etcd logs the refusal.
        for cert in [None, Some("stranger")] {
            let err = EtcdClusterStore::connect(&with(cert)).await.unwrap_err();
            assert!(
                matches!(err, ClusterError::Unavailable(_)),
                "{cert:?}: {err}"
            );
        }
        let log = etcd.log();
        assert!(log.contains("rejected connection"), "{log}");
        // A plaintext client of etcd's TLS port.
        let err = EtcdClusterStore::connect(&config(vec![etcd.endpoint()]))
            .await
            .unwrap_err();
        assert!(matches!(err, ClusterError::Unavailable(_)), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_endpoint_is_used_and_a_dead_etcd_is_named() {
        let etcd = goverse_testkit::EtcdServer::start();
        let dead = format!("127.0.0.1:{}", goverse_testkit::free_port());
        // The first endpoint is dead: the store still works through the second.
        let store = EtcdClusterStore::connect(&config(vec![dead.clone(), etcd.endpoint()]))
            .await
            .unwrap();
        store.put("/e/k", b"v".to_vec(), None).await.unwrap();
        assert_eq!(store.get("/e/k").await.unwrap().unwrap().value, b"v");

        // Nothing answers: the error names every endpoint.
        let other_dead = format!("127.0.0.1:{}", goverse_testkit::free_port());
        let err = EtcdClusterStore::connect(&config(vec![dead.clone(), other_dead.clone()]))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ClusterError::Unavailable(_)), "{text}");
        assert!(text.contains(&dead) && text.contains(&other_dead), "{text}");
        let err = EtcdClusterStore::connect(&config(vec!["https://x:1".into()]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("over TLS"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_etcd_is_used_again_and_watches_resume() {
        let mut etcd = goverse_testkit::EtcdServer::start();
        let store = EtcdClusterStore::connect(&config(vec![etcd.endpoint()]))
            .await
            .unwrap();
        let rev = store.put("/r/before", b"1".to_vec(), None).await.unwrap();
        let mut watch = store.watch_prefix("/r/", rev).await.unwrap();

        etcd.stop();
        let err = store.put("/r/down", b"x".to_vec(), None).await.unwrap_err();
        assert!(
            matches!(err, ClusterError::Unavailable(ref text) if text.contains(&etcd.endpoint())),
            "{err}"
        );
        etcd.start_again();

        // The store reconnects on its own: the next request works.
        let mut written: Option<Revision>;
        goverse_testkit::assert_eventually!(
            {
                written = store.put("/r/after", b"2".to_vec(), None).await.ok();
                written.is_some()
            },
            Duration::from_secs(10)
        );
        let written = written.expect("etcd is back");
        // The watch reconnected too, and delivers what was written after the restart.
        let event = tokio::time::timeout(Duration::from_secs(15), watch.recv())
            .await
            .expect("the watch resumes")
            .expect("the watch is still open");
        assert!(
            matches!(event, WatchEvent::Put(ref kv) if kv.key == "/r/after" && kv.mod_revision == written),
            "{event:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_shard_map_is_written_in_batches() {
        use crate::{Keys, MAX_TXN_OPS, ShardRecord};
        use goverse_core::{NodeAddr, ShardId};

        let etcd = goverse_testkit::EtcdServer::start();
        let store = EtcdClusterStore::connect(&config(vec![etcd.endpoint()]))
            .await
            .unwrap();
        let keys = Keys::default();
        let writes: Vec<TxnWrite> = (0..8192)
            .map(|n| {
                let record = ShardRecord {
                    shard: ShardId(n),
                    target: Some(NodeAddr::new(format!("127.0.0.1:{}", 47000 + n % 10))),
                    current: None,
                    epoch: 1,
                };
                TxnWrite {
                    key: keys.shard(record.shard),
                    expect: Some(Expect::Absent),
                    op: TxnOp::Put {
                        value: record.encode(),
                        lease: None,
                    },
                }
            })
            .collect();
        for batch in writes.chunks(MAX_TXN_OPS) {
            assert!(matches!(
                store.transact(batch).await.unwrap(),
                TxnOutcome::Applied(_)
            ));
        }
        let (kvs, _) = store.get_prefix(&keys.shards()).await.unwrap();
        assert_eq!(kvs.len(), 8192);
        let last = ShardRecord::decode(ShardId(8191), &kvs[8191].value).unwrap();
        assert_eq!(last.target.unwrap().as_str(), "127.0.0.1:47001");
    }
}
