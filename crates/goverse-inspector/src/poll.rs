//! Reading each registered process's operations port: `/ready` for health, a node's
//! `/metrics` for its calls and objects. One pass per poll interval, every process at once,
//! each read bounded by the request timeout; the results replace the last pass's as a whole.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use goverse_cluster::MapView;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A process's health, as its `/ready` answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum Health {
    /// `/ready` answered 200.
    Ready,
    /// `/ready` answered 503: the reason it gave.
    NotReady(String),
    /// `/ready` did not answer: why.
    Unreachable(String),
    /// Not read yet, or the process publishes no operations address.
    Unknown(String),
}

/// What the last pass read of one process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessStatus {
    /// Its health.
    pub health: Health,
    /// When it was read (milliseconds since the Unix epoch).
    pub checked_ms: u64,
}

/// One node's calls of one type and method: totals since the node started, and rates and
/// latencies over the last poll interval (`None` with no calls in it, or before a second
/// pass).
#[derive(Debug, Clone, Serialize)]
pub struct CallStats {
    /// The node.
    pub node: String,
    /// The object type.
    pub object_type: String,
    /// The method.
    pub method: String,
    /// Calls since the node started.
    pub calls_total: u64,
    /// Of them, failed.
    pub failures_total: u64,
    /// Calls per second over the last interval.
    pub rate_per_s: Option<f64>,
    /// Failed calls per second over the last interval.
    pub failures_per_s: Option<f64>,
    /// Mean duration over the last interval, in milliseconds.
    pub mean_ms: Option<f64>,
    /// Median duration over the last interval, in milliseconds (from the histogram's buckets).
    pub p50_ms: Option<f64>,
    /// 99th percentile duration over the last interval, in milliseconds.
    pub p99_ms: Option<f64>,
}

/// Everything one pass read.
#[derive(Debug, Default)]
pub(crate) struct Status {
    /// By process address (nodes and gates).
    pub(crate) processes: BTreeMap<String, ProcessStatus>,
    pub(crate) calls: Vec<CallStats>,
    /// (node, type) → live objects.
    pub(crate) objects: BTreeMap<(String, String), u64>,
    /// Bumped by every pass.
    pub(crate) pass: u64,
}

/// A node's cumulative figures of one type and method, as last scraped.
#[derive(Debug, Clone, Default)]
struct Raw {
    ok: f64,
    failed: f64,
    sum: f64,
    /// Cumulative bucket counts by upper bound (seconds), summed over outcomes.
    buckets: BTreeMap<OrderedBound, f64>,
}

/// A histogram bound, ordered (bounds are never NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrderedBound(f64);

impl Eq for OrderedBound {}

impl PartialOrd for OrderedBound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrderedBound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

type CallKey = (String, String, String);

/// Polls until `stop`: every `interval`, each process the map names.
pub(crate) async fn run(
    view: MapView,
    http: reqwest::Client,
    interval: Duration,
    status: watch::Sender<Arc<Status>>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<(Instant, HashMap<CallKey, Raw>)> = None;
    let mut pass = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let targets: Vec<(String, Option<String>, bool)> = {
            let map = view.borrow();
            let info = |addr: &str| map.info.get(addr).and_then(|i| i.ops.clone());
            map.nodes
                .iter()
                .map(|n| (n.as_str().to_owned(), info(n.as_str()), true))
                .chain(map.gates.iter().map(|g| (g.clone(), info(g), false)))
                .collect()
        };
        let reads = targets.into_iter().map(|(address, ops, is_node)| {
            let http = http.clone();
            async move {
                let Some(ops) = ops else {
                    let health = Health::Unknown("publishes no operations address".to_owned());
                    return (address, health, None);
                };
                let health = read_health(&http, &ops).await;
                let metrics = if is_node && !matches!(health, Health::Unreachable(_)) {
                    read_text(&http, &format!("http://{ops}/metrics"))
                        .await
                        .ok()
                } else {
                    None
                };
                (address, health, metrics)
            }
        });
        let results = tokio::select! {
            _ = stop.cancelled() => return,
            results = futures::future::join_all(reads) => results,
        };
        let now = Instant::now();
        let checked_ms = unix_ms();
        let mut next = Status {
            pass,
            ..Status::default()
        };
        pass += 1;
        let mut raw: HashMap<CallKey, Raw> = HashMap::new();
        for (address, health, metrics) in results {
            next.processes
                .insert(address, ProcessStatus { health, checked_ms });
            if let Some(text) = metrics {
                read_metrics(&text, &mut raw, &mut next.objects);
            }
        }
        next.calls = call_stats(&raw, last.as_ref().map(|(at, raw)| (now - *at, raw)));
        last = Some((now, raw));
        status.send_replace(Arc::new(next));
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn read_text(http: &reqwest::Client, url: &str) -> Result<String, String> {
    let response = http.get(url).send().await.map_err(|e| e.to_string())?;
    response.text().await.map_err(|e| e.to_string())
}

async fn read_health(http: &reqwest::Client, ops: &str) -> Health {
    match http.get(format!("http://{ops}/ready")).send().await {
        Ok(response) if response.status().is_success() => Health::Ready,
        Ok(response) => {
            let code = response.status();
            let text = response.text().await.unwrap_or_default();
            let text = text.trim();
            Health::NotReady(if text.is_empty() {
                code.to_string()
            } else {
                text.chars().take(500).collect()
            })
        }
        Err(err) => Health::Unreachable(format!("{ops}: {}", without_url(&err))),
    }
}

/// reqwest's error without the URL it repeats.
fn without_url(err: &reqwest::Error) -> String {
    let mut text = if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_connect() {
        "connection refused or unreachable".to_owned()
    } else {
        err.to_string()
    };
    if let Some(source) = std::error::Error::source(err).and_then(std::error::Error::source) {
        text = format!("{text} ({source})");
    }
    text
}

/// Adds one node's `/metrics` text to the figures of this pass.
fn read_metrics(
    text: &str,
    raw: &mut HashMap<CallKey, Raw>,
    objects: &mut BTreeMap<(String, String), u64>,
) {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let Ok(scrape) = prometheus_parse::Scrape::parse(lines) else {
        return;
    };
    for sample in scrape.samples {
        let labels = &sample.labels;
        let label = |name: &str| labels.get(name).unwrap_or_default().to_owned();
        let number = match &sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(*v),
            _ => None,
        };
        match sample.metric.as_str() {
            "goverse_objects_total" => {
                if let Some(v) = number {
                    *objects.entry((label("node"), label("type"))).or_default() += v as u64;
                }
            }
            "goverse_method_calls_total" => {
                let entry = raw
                    .entry((label("node"), label("object_type"), label("method_name")))
                    .or_default();
                let v = number.unwrap_or_default();
                if labels.get("status") == Some("success") {
                    entry.ok += v;
                } else {
                    entry.failed += v;
                }
            }
            "goverse_method_call_duration_sum" => {
                raw.entry((label("node"), label("object_type"), label("method_name")))
                    .or_default()
                    .sum += number.unwrap_or_default();
            }
            "goverse_method_call_duration" => {
                if let prometheus_parse::Value::Histogram(counts) = &sample.value {
                    let entry = raw
                        .entry((label("node"), label("object_type"), label("method_name")))
                        .or_default();
                    for bucket in counts {
                        *entry
                            .buckets
                            .entry(OrderedBound(bucket.less_than))
                            .or_default() += bucket.count;
                    }
                }
            }
            _ => {}
        }
    }
}

/// The calls of this pass, with rates and latencies over `since` (the previous pass's
/// figures and how long ago they were read).
fn call_stats(
    now: &HashMap<CallKey, Raw>,
    since: Option<(Duration, &HashMap<CallKey, Raw>)>,
) -> Vec<CallStats> {
    let mut out: Vec<CallStats> = now
        .iter()
        .map(|((node, object_type, method), raw)| {
            let mut stats = CallStats {
                node: node.clone(),
                object_type: object_type.clone(),
                method: method.clone(),
                calls_total: (raw.ok + raw.failed) as u64,
                failures_total: raw.failed as u64,
                rate_per_s: None,
                failures_per_s: None,
                mean_ms: None,
                p50_ms: None,
                p99_ms: None,
            };
            let Some((elapsed, before)) = since else {
                return stats;
            };
            let before = before
                .get(&(node.clone(), object_type.clone(), method.clone()))
                .cloned()
                .unwrap_or_default();
            let seconds = elapsed.as_secs_f64().max(1e-3);
            // A node that restarted counts from zero: its figures start over.
            let restarted = raw.ok + raw.failed < before.ok + before.failed;
            let before = if restarted { Raw::default() } else { before };
            let calls = (raw.ok + raw.failed) - (before.ok + before.failed);
            stats.rate_per_s = Some(calls / seconds);
            stats.failures_per_s = Some((raw.failed - before.failed).max(0.0) / seconds);
            if calls > 0.0 {
                stats.mean_ms = Some((raw.sum - before.sum).max(0.0) / calls * 1e3);
                let window: Vec<(f64, f64)> = raw
                    .buckets
                    .iter()
                    .map(|(bound, count)| {
                        let earlier = before.buckets.get(bound).copied().unwrap_or_default();
                        (bound.0, (count - earlier).max(0.0))
                    })
                    .collect();
                stats.p50_ms = quantile(&window, 0.5).map(|s| s * 1e3);
                stats.p99_ms = quantile(&window, 0.99).map(|s| s * 1e3);
            }
            stats
        })
        .collect();
    out.sort_by(|a, b| {
        (&a.object_type, &a.method, &a.node).cmp(&(&b.object_type, &b.method, &b.node))
    });
    out
}

/// The `q` quantile of a histogram given as cumulative counts by upper bound (ascending),
/// interpolated linearly inside the bucket it falls in; the last finite bound when it falls
/// in the `+Inf` bucket.
pub(crate) fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let inside = count - lower.1;
            let fraction = if inside > 0.0 {
                (rank - lower.1) / inside
            } else {
                1.0
            };
            return Some(lower.0 + (bound - lower.0) * fraction);
        }
        lower = (bound, count);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        let buckets = [
            (0.001, 10.0),
            (0.01, 90.0),
            (0.1, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(quantile(&buckets, 0.05), Some(0.0005));
        let p50 = quantile(&buckets, 0.5).unwrap();
        assert!((p50 - 0.005_5).abs() < 1e-9, "{p50}");
        let p99 = quantile(&buckets, 0.99).unwrap();
        assert!((p99 - 0.091).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(&[(0.1, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
        assert_eq!(
            quantile(&[(0.1, 1.0), (f64::INFINITY, 4.0)], 0.99),
            Some(0.1)
        );
    }

    #[test]
    fn node_metrics_become_rates_latencies_and_object_counts() {
        let scrape = |calls: u64, failed: u64, sum: f64, fast: u64| {
            format!(
                "# TYPE goverse_method_calls_total counter\n\
                 goverse_method_calls_total{{node=\"n1\",object_type=\"Counter\",method_name=\"Add\",status=\"success\"}} {calls}\n\
                 goverse_method_calls_total{{node=\"n1\",object_type=\"Counter\",method_name=\"Add\",status=\"failure\"}} {failed}\n\
                 # TYPE goverse_method_call_duration histogram\n\
                 goverse_method_call_duration_bucket{{node=\"n1\",object_type=\"Counter\",method_name=\"Add\",status=\"success\",le=\"0.001\"}} {fast}\n\
                 goverse_method_call_duration_bucket{{node=\"n1\",object_type=\"Counter\",method_name=\"Add\",status=\"success\",le=\"0.01\"}} {calls}\n\
                 goverse_method_call_duration_bucket{{node=\"n1\",object_type=\"Counter\",method_name=\"Add\",status=\"success\",le=\"+Inf\"}} {calls}\n\
                 goverse_method_call_duration_sum{{node=\"n1\",object_type=\"Counter\",method_name=\"Add\",status=\"success\"}} {sum}\n\
                 goverse_method_call_duration_count{{node=\"n1\",object_type=\"Counter\",method_name=\"Add\",status=\"success\"}} {calls}\n\
                 # TYPE goverse_objects_total gauge\n\
                 goverse_objects_total{{node=\"n1\",type=\"Counter\",shard=\"3\"}} 2\n\
                 goverse_objects_total{{node=\"n1\",type=\"Counter\",shard=\"9\"}} 5\n"
            )
        };
        let mut before = HashMap::new();
        let mut objects = BTreeMap::new();
        read_metrics(&scrape(100, 2, 0.1, 100), &mut before, &mut objects);
        assert_eq!(objects[&("n1".to_owned(), "Counter".to_owned())], 7);
        let first = call_stats(&before, None);
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].calls_total, first[0].failures_total), (102, 2));
        assert_eq!(first[0].rate_per_s, None);

        let mut after = HashMap::new();
        read_metrics(&scrape(300, 2, 1.1, 100), &mut after, &mut BTreeMap::new());
        let stats = call_stats(&after, Some((Duration::from_secs(2), &before)));
        let add = &stats[0];
        assert_eq!(add.rate_per_s, Some(100.0));
        assert_eq!(add.failures_per_s, Some(0.0));
        // 200 calls took 1 s in all: 5 ms each; all of them in the 1-10 ms bucket.
        assert!((add.mean_ms.unwrap() - 5.0).abs() < 1e-9);
        assert!((add.p50_ms.unwrap() - 5.5).abs() < 1e-9, "{:?}", add.p50_ms);
        assert!(add.p99_ms.unwrap() > 9.0 && add.p99_ms.unwrap() <= 10.0);
    }
}
