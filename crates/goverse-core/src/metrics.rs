//! Metrics: counted where things happen, in atomics the hot paths touch without locks or
//! lookups, and read when a scraper asks.
//!
//! A process has one [`Registry`]; each component (node, gate, link, cluster) is handed it and
//! adds a [`Source`]: an object that, at scrape time, writes its current values into a
//! [`Scrape`]. Values computed at scrape time (objects per type and shard, shards per node,
//! connected clients) are therefore always the present, and go down when things go away; a
//! component that is dropped simply stops being scraped. Several nodes or gates of one process
//! (a test cluster, `goverse demo --nodes 3`) share the families and differ by their labels.
//!
//! The output is Prometheus' text format (0.0.4), written by `prometheus-client`; code of an
//! application can register its own `prometheus-client` metrics into the same registry with
//! [`Registry::with_prometheus`] and they are served beside the runtime's.
//!
//! Per-call recording uses [`PerThread`] cells ([`LatencyCells`]): each thread adds to its own
//! with plain loads and stores, a scrape sums them. [`LatencyHistogram`] spreads its atomics
//! over a few cache lines picked by the recording thread, for figures recorded from several
//! threads less often.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// The `Content-Type` of what [`Registry::encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Something whose values are read at every scrape.
pub trait Source: Send + Sync + 'static {
    /// Writes the current values into `out`.
    fn collect(&self, out: &mut Scrape);
}

/// One process's metrics: the sources components added, and any `prometheus-client` metrics of
/// the application. Cloning shares it.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<RegistryInner>,
}

#[derive(Default)]
struct RegistryInner {
    sources: Arc<Mutex<Vec<Weak<dyn Source>>>>,
    prometheus: Mutex<Option<prometheus_client::registry::Registry>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sources = self
            .inner
            .sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Registry")
            .field("sources", &sources.len())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Scrapes `source` from now on, for as long as something else holds it: the registry keeps
    /// only a weak reference.
    pub fn add_source(&self, source: &Arc<dyn Source>) {
        let mut sources = self
            .inner
            .sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        sources.retain(|s| s.strong_count() > 0);
        let source = Arc::downgrade(source);
        // One source added twice (a process-wide one, by each of its components) is scraped
        // once.
        if !sources.iter().any(|s| s.ptr_eq(&source)) {
            sources.push(source);
        }
    }

    /// Runs `f` on the `prometheus-client` registry served beside the runtime's metrics, to
    /// register an application's own metrics.
    pub fn with_prometheus<R>(
        &self,
        f: impl FnOnce(&mut prometheus_client::registry::Registry) -> R,
    ) -> R {
        let mut slot = self
            .inner
            .prometheus
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(slot.get_or_insert_with(|| self.new_prometheus()))
    }

    fn new_prometheus(&self) -> prometheus_client::registry::Registry {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(SourcesCollector {
            sources: self.inner.sources.clone(),
        }));
        registry
    }

    /// Everything, in Prometheus' text format (0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        self.with_prometheus(|registry| {
            prometheus_client::encoding::prometheus_text::encode(&mut out, registry)
        })
        .expect("writing to a String does not fail");
        out
    }

    /// The values of every source now, without encoding them (for stats and tests).
    pub fn scrape(&self) -> Scrape {
        let mut scrape = Scrape::default();
        collect_all(&self.inner.sources, &mut scrape);
        scrape
    }
}

fn collect_all(sources: &Mutex<Vec<Weak<dyn Source>>>, out: &mut Scrape) {
    let live: Vec<Arc<dyn Source>> = sources
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for source in live {
        source.collect(out);
    }
}

struct SourcesCollector {
    sources: Arc<Mutex<Vec<Weak<dyn Source>>>>,
}

impl fmt::Debug for SourcesCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SourcesCollector")
    }
}

impl Collector for SourcesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let mut scrape = Scrape::default();
        collect_all(&self.sources, &mut scrape);
        for (name, family) in &scrape.families {
            // The text encoder adds `_total` to a counter's name.
            let name = match family.kind {
                Kind::Counter => name.strip_suffix("_total").unwrap_or(name),
                _ => name,
            };
            let kind = match family.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
                Kind::Histogram => MetricType::Histogram,
            };
            let mut metric = encoder.encode_descriptor(name, family.help, None, kind)?;
            for sample in &family.samples {
                let labels: Vec<(&str, &str)> = sample
                    .labels
                    .iter()
                    .map(|(k, v)| (*k, v.as_str()))
                    .collect();
                let mut metric = metric.encode_family(&labels)?;
                match &sample.value {
                    Value::Counter(v) => ConstCounter::new(*v).encode(metric)?,
                    Value::Gauge(v) => ConstGauge::new(*v).encode(metric)?,
                    Value::Histogram(h) => metric
                        .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                            h.sum, h.count, &h.buckets, None,
                        )?,
                }
            }
        }
        Ok(())
    }
}

/// What the sources wrote at one scrape: metric families by name.
#[derive(Debug, Default, Clone)]
pub struct Scrape {
    families: BTreeMap<&'static str, Family>,
}

#[derive(Debug, Clone)]
struct Family {
    help: &'static str,
    kind: Kind,
    samples: Vec<Sample>,
}

/// A metric's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (named `..._total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

/// One labelled value of a family.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Label names and values.
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: Value,
}

/// A sample's value.
#[derive(Debug, Clone)]
pub enum Value {
    /// A counter's count.
    Counter(u64),
    /// A gauge's level.
    Gauge(i64),
    /// A histogram's buckets (upper bound, observations in that bucket alone), sum and count.
    Histogram(HistogramSnapshot),
}

/// A histogram read at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound, observations in this bucket and not in a lower one); the last bound is
    /// `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// The sum of the observations.
    pub sum: f64,
    /// How many observations.
    pub count: u64,
}

/// Labels as sources pass them.
pub type Labels<'a> = &'a [(&'static str, &'a str)];

impl Scrape {
    fn family(&mut self, name: &'static str, help: &'static str, kind: Kind) -> &mut Family {
        let family = self.families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            samples: Vec::new(),
        });
        debug_assert_eq!(family.kind, kind, "metric {name} written as two kinds");
        family
    }

    fn push(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: Labels<'_>,
        value: Value,
    ) {
        let labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        self.family(name, help, kind)
            .samples
            .push(Sample { labels, value });
    }

    /// Declares family `name` even if no sample follows (so a dashboard finds it at zero).
    pub fn declare(&mut self, name: &'static str, help: &'static str, kind: Kind) {
        self.family(name, help, kind);
    }

    /// A counter's value (`name` ends in `_total`).
    pub fn counter(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: Labels<'_>,
        value: u64,
    ) {
        self.push(name, help, Kind::Counter, labels, Value::Counter(value));
    }

    /// A gauge's value.
    pub fn gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: Labels<'_>,
        value: i64,
    ) {
        self.push(name, help, Kind::Gauge, labels, Value::Gauge(value));
    }

    /// A histogram's value.
    pub fn histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: Labels<'_>,
        value: HistogramSnapshot,
    ) {
        self.push(name, help, Kind::Histogram, labels, Value::Histogram(value));
    }

    /// The names of the families written.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.families.keys().copied()
    }

    /// The samples of family `name` (empty when none was written).
    pub fn samples(&self, name: &str) -> &[Sample] {
        self.families.get(name).map_or(&[], |f| &f.samples)
    }

    /// The sum of the counter or gauge samples of `name` whose labels include every pair of
    /// `matching`; the count of observations for a histogram.
    pub fn sum(&self, name: &str, matching: Labels<'_>) -> i128 {
        self.samples(name)
            .iter()
            .filter(|s| {
                matching
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|s| match &s.value {
                Value::Counter(v) => i128::from(*v),
                Value::Gauge(v) => i128::from(*v),
                Value::Histogram(h) => i128::from(h.count),
            })
            .sum()
    }
}

/// A point in time for measuring durations on hot paths: the raw count of the CPU's invariant
/// time-stamp counter (one instruction; `std::time::Instant` costs ~20 ns), scaled to
/// nanoseconds only when two are subtracted. Where the counter is unusable, the monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(u64);

/// The process's one calibrated clock (quanta: invariant TSC, or the monotonic clock).
fn clock() -> &'static quanta::Clock {
    static CLOCK: std::sync::OnceLock<quanta::Clock> = std::sync::OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
}

/// Now, as a [`Stamp`].
#[inline]
pub fn stamp() -> Stamp {
    Stamp(clock().raw())
}

impl Stamp {
    /// Nanoseconds from `earlier` to this stamp (0 when `earlier` is later).
    #[inline]
    pub fn nanos_since(self, earlier: Stamp) -> u64 {
        if self.0 <= earlier.0 {
            return 0;
        }
        clock().delta_as_nanos(earlier.0, self.0)
    }
}

/// How many stripes a striped metric spreads over.
const STRIPES: usize = 8;

/// The stripe of the calling thread: threads are dealt stripes in turn as they first record.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|s| {
        let mut index = s.get();
        if index == usize::MAX {
            index = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(index);
        }
        index
    })
}

/// A value on cache lines of its own.
#[derive(Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// Upper bounds of [`LatencyHistogram`]'s buckets, in seconds: 10 µs to 10 s, a superset of
/// upstream's method-duration buckets (1 ms, 10 ms, 100 ms, 1 s, 10 s).
pub const LATENCY_BOUNDS: [f64; 19] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const LATENCY_BOUNDS_NS: [u64; 19] = {
    let mut ns = [0u64; 19];
    let mut i = 0;
    while i < 19 {
        ns[i] = (LATENCY_BOUNDS[i] * 1e9) as u64;
        i += 1;
    }
    ns
};

/// A histogram of durations, cheap to record into from many threads (two relaxed atomic adds
/// on a cache line of the recording thread's own, no lock).
#[derive(Default)]
pub struct LatencyHistogram {
    stripes: [Padded<LatencyCells>; STRIPES],
}

impl fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LatencyHistogram({} observations)",
            self.snapshot().count
        )
    }
}

impl LatencyHistogram {
    /// Records one duration.
    #[inline]
    pub fn observe(&self, elapsed: Duration) {
        let (bucket, ns) = bucket_of(elapsed);
        let stripe = &self.stripes[stripe()].0;
        stripe.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        stripe.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The observations so far.
    pub fn snapshot(&self) -> HistogramSnapshot {
        LatencyCells::sum(self.stripes.iter().map(|s| &s.0))
    }
}

/// The bucket of [`LATENCY_BOUNDS`] a duration falls in, and the duration in nanoseconds.
#[inline]
fn bucket_of(elapsed: Duration) -> (usize, u64) {
    let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    (bucket_of_ns(ns), ns)
}

#[inline]
fn bucket_of_ns(ns: u64) -> usize {
    LATENCY_BOUNDS_NS
        .iter()
        .position(|bound| ns <= *bound)
        .unwrap_or(LATENCY_BOUNDS_NS.len())
}

/// Durations bucketed as [`LatencyHistogram`]'s, written by one thread only (see
/// [`PerThread`]): adding is a plain load and store, no locked instruction.
#[derive(Default)]
pub struct LatencyCells {
    /// One per bound, then `+Inf`.
    buckets: [AtomicU64; 20],
    sum_ns: AtomicU64,
}

impl fmt::Debug for LatencyCells {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LatencyCells")
    }
}

impl LatencyCells {
    /// Records one duration. Only the owning thread may call this.
    pub fn add(&self, elapsed: Duration) {
        self.add_nanos(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Records one duration given in nanoseconds. Only the owning thread may call this.
    #[inline]
    pub fn add_nanos(&self, ns: u64) {
        let cell = &self.buckets[bucket_of_ns(ns)];
        cell.store(cell.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        self.sum_ns.store(
            self.sum_ns.load(Ordering::Relaxed).wrapping_add(ns),
            Ordering::Relaxed,
        );
    }

    /// The observations of every thread's cells.
    pub fn sum<'a>(cells: impl IntoIterator<Item = &'a LatencyCells>) -> HistogramSnapshot {
        let mut counts = [0u64; 20];
        let mut sum_ns = 0u64;
        for c in cells {
            for (total, bucket) in counts.iter_mut().zip(&c.buckets) {
                *total += bucket.load(Ordering::Relaxed);
            }
            sum_ns = sum_ns.wrapping_add(c.sum_ns.load(Ordering::Relaxed));
        }
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(counts)
            .collect();
        HistogramSnapshot {
            count: counts.iter().sum(),
            sum: sum_ns as f64 / 1e9,
            buckets,
        }
    }
}

/// One `T` per thread that records, made on the thread's first use: each thread writes only its
/// own (so single-writer cells such as [`LatencyCells`] need no locked instructions), a scrape
/// reads them all.
pub struct PerThread<T: Send> {
    cells: thread_local::ThreadLocal<T>,
    make: Box<dyn Fn() -> T + Send + Sync>,
}

impl<T: Send> fmt::Debug for PerThread<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PerThread")
    }
}

impl<T: Send + Default + 'static> Default for PerThread<T> {
    fn default() -> Self {
        Self::new(T::default)
    }
}

impl<T: Send> PerThread<T> {
    /// Cells made with `make`.
    pub fn new(make: impl Fn() -> T + Send + Sync + 'static) -> Self {
        Self {
            cells: thread_local::ThreadLocal::new(),
            make: Box::new(make),
        }
    }

    /// The calling thread's cell.
    #[inline]
    pub fn local(&self) -> &T {
        self.cells.get_or(&self.make)
    }

    /// Every thread's cell.
    pub fn all(&self) -> impl Iterator<Item = &T>
    where
        T: Sync,
    {
        self.cells.iter()
    }
}

/// A histogram of small counts (batch sizes): buckets 1, 2, 4, … 1024, `+Inf`. Meant for paths
/// that record once per batch, not per call: one shared cache line.
#[derive(Default)]
pub struct SizeHistogram {
    buckets: [AtomicU64; 12],
    sum: AtomicU64,
}

impl fmt::Debug for SizeHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SizeHistogram({} observations)", self.snapshot().count)
    }
}

impl SizeHistogram {
    /// Records one size.
    #[inline]
    pub fn observe(&self, size: u64) {
        // 0 and 1 go to the first bucket; then one bucket per power of two.
        let bucket = (64 - size.saturating_sub(1).leading_zeros() as usize).min(11);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(size, Ordering::Relaxed);
    }

    /// The observations so far.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = (0..12)
            .map(|i| {
                let bound = if i == 11 {
                    f64::INFINITY
                } else {
                    f64::from(1u32 << i)
                };
                (bound, self.buckets[i].load(Ordering::Relaxed))
            })
            .collect();
        HistogramSnapshot {
            count: buckets.iter().map(|(_, n)| n).sum(),
            sum: self.sum.load(Ordering::Relaxed) as f64,
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(u64);

    impl Source for Fixed {
        fn collect(&self, out: &mut Scrape) {
            out.counter(
                "goverse_method_calls_total",
                "Method calls.",
                &[("node", "n1"), ("status", "success")],
                self.0,
            );
            out.gauge("goverse_objects_total", "Objects.", &[("node", "n1")], -2);
            let histogram = LatencyHistogram::default();
            histogram.observe(Duration::from_micros(20));
            histogram.observe(Duration::from_secs(20));
            out.histogram(
                "goverse_method_call_duration",
                "Durations.",
                &[("node", "n1")],
                histogram.snapshot(),
            );
        }
    }

    #[test]
    fn sources_are_encoded_in_prometheus_text_until_dropped() {
        let registry = Registry::new();
        let source: Arc<dyn Source> = Arc::new(Fixed(7));
        registry.add_source(&source);
        let text = registry.encode();
        assert!(
            text.contains("# TYPE goverse_method_calls_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("goverse_method_calls_total{node=\"n1\",status=\"success\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains("goverse_objects_total{node=\"n1\"} -2\n"),
            "{text}"
        );
        assert!(
            text.contains("goverse_method_call_duration_bucket{node=\"n1\",le=\"2.5e-05\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("goverse_method_call_duration_count{node=\"n1\"} 2\n"),
            "{text}"
        );
        drop(source);
        assert!(
            !registry.encode().contains("goverse_"),
            "a dropped source is not scraped"
        );
    }

    #[test]
    fn two_sources_share_a_family() {
        let registry = Registry::new();
        let a: Arc<dyn Source> = Arc::new(Fixed(1));
        let b: Arc<dyn Source> = Arc::new(Fixed(2));
        registry.add_source(&a);
        registry.add_source(&b);
        let text = registry.encode();
        assert_eq!(
            text.matches("# TYPE goverse_method_calls_total").count(),
            1,
            "{text}"
        );
        assert_eq!(registry.scrape().sum("goverse_method_calls_total", &[]), 3);
    }

    #[test]
    fn latency_buckets_hold_each_observation_once() {
        let histogram = LatencyHistogram::default();
        for micros in [5, 10, 11, 900, 1_000, 1_001, 20_000_000] {
            histogram.observe(Duration::from_micros(micros));
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 7);
        let at = |bound: f64| {
            snapshot
                .buckets
                .iter()
                .find(|(b, _)| *b == bound)
                .unwrap()
                .1
        };
        assert_eq!(at(0.000_01), 2, "5 µs and 10 µs (bounds are inclusive)");
        assert_eq!(at(0.000_025), 1);
        assert_eq!(at(0.001), 2, "900 µs and 1 ms");
        assert_eq!(at(0.002_5), 1);
        assert_eq!(at(f64::INFINITY), 1);
        assert!((snapshot.sum - 20.002_927).abs() < 1e-9, "{}", snapshot.sum);
    }

    #[test]
    fn per_thread_cells_sum_every_thread_exactly() {
        let cells: Arc<PerThread<LatencyCells>> = Arc::new(PerThread::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let cells = cells.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        cells.local().add(Duration::from_micros(30));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let snapshot = LatencyCells::sum(cells.all());
        assert_eq!(snapshot.count, 4000);
        assert_eq!(snapshot.buckets[2], (0.000_05, 4000));
    }

    #[test]
    fn size_buckets_are_powers_of_two() {
        let histogram = SizeHistogram::default();
        for size in [0, 1, 2, 3, 4, 5, 1024, 1025, 100_000] {
            histogram.observe(size);
        }
        let snapshot = histogram.snapshot();
        let counts: Vec<u64> = snapshot.buckets.iter().map(|(_, n)| *n).collect();
        assert_eq!(counts, [2, 1, 2, 1, 0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(snapshot.sum, 102_064.0);
    }

    #[test]
    fn application_metrics_are_served_beside_the_runtime() {
        let registry = Registry::new();
        let mine = prometheus_client::metrics::counter::Counter::<u64>::default();
        registry.with_prometheus(|r| r.register("app_orders", "Orders taken", mine.clone()));
        mine.inc_by(3);
        assert!(registry.encode().contains("app_orders_total 3\n"));
    }
}
