//! `GET /api/events`: the cluster as server-sent events.
//!
//! A new stream gets a `cluster` event (the whole [`crate::ClusterSnapshot`]), then, as things
//! change: `shards` (the records that changed, as [`crate::ShardView`]s), `nodes` (leader, nodes,
//! gates and the moving/unowned counts, whenever any of them or a health changes) and `calls`
//! (after every poll). Comments keep the stream alive through proxies; it lasts until the
//! client leaves or the inspector stops.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use goverse_cluster::ClusterMap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Inspector;
use crate::poll::Status;
use crate::snapshot::{CallsSnapshot, ClusterSnapshot, Members, ShardView, shard_views};

/// What one stream last sent.
struct Stream {
    map: watch::Receiver<ClusterMap>,
    status: watch::Receiver<Arc<Status>>,
    stop: CancellationToken,
    prefix: String,
    /// Nothing sent yet: the first event is the whole cluster.
    started: bool,
    shards: Vec<ShardView>,
    members: Members,
    pass: u64,
    /// Events made and not yet sent.
    queue: std::collections::VecDeque<Event>,
}

/// The `nodes` event: the members, at a revision.
#[derive(serde::Serialize)]
struct MembersAt<'a> {
    revision: i64,
    #[serde(flatten)]
    members: &'a Members,
}

fn event(name: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(data)
        .expect("the API's shapes serialise")
}

impl Stream {
    /// The events for what changed since the last call.
    fn changes(&mut self) {
        let status = self.status.borrow_and_update().clone();
        let map = self.map.borrow_and_update();
        if !self.started {
            self.started = true;
            let snapshot = ClusterSnapshot::new(&map, &self.prefix, &status);
            self.queue.push_back(event("cluster", &snapshot));
            self.shards = snapshot.shards;
            self.members = snapshot.members;
            self.pass = status.pass;
            return;
        }
        let shards = shard_views(&map);
        let changed: Vec<&ShardView> = shards
            .iter()
            .zip(self.shards.iter())
            .filter(|(now, before)| now != before)
            .map(|(now, _)| now)
            .collect();
        if !changed.is_empty() {
            self.queue.push_back(event("shards", &changed));
        }
        let members = Members::new(&map, &status, &shards);
        self.shards = shards;
        if members != self.members {
            let revision = map.revision;
            self.queue.push_back(event(
                "nodes",
                &MembersAt {
                    revision,
                    members: &members,
                },
            ));
            self.members = members;
        }
        drop(map);
        if status.pass != self.pass {
            self.pass = status.pass;
            self.queue
                .push_back(event("calls", &CallsSnapshot::new(&status)));
        }
    }

    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some((Ok(event), self));
            }
            if self.started {
                tokio::select! {
                    _ = self.stop.cancelled() => return None,
                    changed = self.map.changed() => changed.ok()?,
                    changed = self.status.changed() => changed.ok()?,
                }
                // A burst of changes (a rebalance writes many records) goes out as one event.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            self.changes();
        }
    }
}

pub(crate) async fn events(
    State(inspector): State<Inspector>,
) -> impl axum::response::IntoResponse {
    let inner = &inspector.inner;
    let stream = Stream {
        map: inner.view.subscribe(),
        status: inner.status.clone(),
        stop: inner.stop.clone(),
        prefix: inner.keys.prefix().to_owned(),
        started: false,
        shards: Vec::new(),
        members: Members::default(),
        pass: 0,
        queue: Default::default(),
    };
    Sse::new(futures::stream::unfold(stream, Stream::next))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
