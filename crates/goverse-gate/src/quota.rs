//! Quotas at the gate: token buckets per client, per source address and per client and method,
//! a cap on each client's calls in flight and on each address's open streams. A call over a
//! limit is refused at once with `ResourceExhausted` and how long to wait (`Retry-After`), so a
//! flooding client costs the gate a refusal per call and slows nobody else.
//!
//! A client is its registered client id when it has one, else the user the authorisation hook
//! named, else its address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use goverse_core::{CallError, ClientIdentity, ErrorCode};
use parking_lot::Mutex;
use tokio::time::Instant;

/// A rate: `rate` per second on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Calls per second, on average.
    pub rate: f64,
    /// Calls at once after a quiet spell (the bucket's size); `rate` when absent, at least 1.
    #[serde(default)]
    pub burst: Option<f64>,
}

impl Rate {
    fn burst(&self) -> f64 {
        self.burst.unwrap_or(self.rate).max(1.0)
    }

    fn check(&self, what: &str) -> Result<(), String> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(format!("{what}.rate must be a positive number"));
        }
        if self.burst.is_some_and(|b| !(b.is_finite() && b >= 1.0)) {
            return Err(format!("{what}.burst must be at least 1"));
        }
        Ok(())
    }
}

/// A rate for the calls of one type's methods, per client.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct MethodQuota {
    /// The object type (`*`: every type).
    #[serde(rename = "type")]
    pub object_type: String,
    /// The method (`*`: every method of the type).
    #[serde(default = "any")]
    pub method: String,
    /// Calls per second and burst, per client.
    #[serde(flatten)]
    pub rate: Rate,
}

fn any() -> String {
    "*".to_owned()
}

impl MethodQuota {
    fn matches(&self, object_type: &str, method: &str) -> bool {
        (self.object_type == "*" || self.object_type == object_type)
            && (self.method == "*" || self.method == method)
    }
}

/// The limits a gate applies to its clients. Every one is off unless set.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Calls (creates and deletes included) per client.
    #[serde(default)]
    pub per_client: Option<Rate>,
    /// Calls per source address, whichever clients make them.
    #[serde(default)]
    pub per_address: Option<Rate>,
    /// Calls of one client waiting for their answers at once.
    #[serde(default)]
    pub max_concurrent_calls_per_client: Option<usize>,
    /// Open connections from one address, on each of the gate's ports; further ones are
    /// closed as soon as they are accepted (counted in `goverse_connections_refused_total`).
    #[serde(default)]
    pub max_connections_per_address: Option<usize>,
    /// Open push streams (gRPC Register, server-sent events) from one address.
    #[serde(default)]
    pub max_streams_per_address: Option<usize>,
    /// Rates for some types' methods, per client, on top of the others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<MethodQuota>,
}

impl QuotaConfig {
    /// Checks the values, naming the first bad one.
    pub fn validate(&self) -> Result<(), goverse_core::InvalidSetting> {
        let bad = |setting: String, why: String| goverse_core::InvalidSetting::new(setting, why);
        for (name, rate) in [
            ("per_client", &self.per_client),
            ("per_address", &self.per_address),
        ] {
            if let Some(rate) = rate {
                rate.check(name).map_err(|why| bad(name.to_owned(), why))?;
            }
        }
        for (name, cap) in [
            (
                "max_concurrent_calls_per_client",
                self.max_concurrent_calls_per_client,
            ),
            (
                "max_connections_per_address",
                self.max_connections_per_address,
            ),
            ("max_streams_per_address", self.max_streams_per_address),
        ] {
            if cap == Some(0) {
                return Err(bad(name.to_owned(), "must be at least 1".to_owned()));
            }
        }
        for (i, method) in self.methods.iter().enumerate() {
            let name = format!("methods[{i}]");
            if method.object_type.is_empty() || method.method.is_empty() {
                return Err(bad(
                    name,
                    "type and method must not be empty (`*` for any)".into(),
                ));
            }
            method
                .rate
                .check(&name)
                .map_err(|why| bad(name.clone(), why))?;
        }
        Ok(())
    }

    /// Whether any limit is set.
    pub fn is_enabled(&self) -> bool {
        *self != Self::default()
    }
}

/// Which limit refused, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    Client,
    Address,
    Method,
    Concurrent,
    Streams,
}

impl Limit {
    pub(crate) const ALL: [Limit; 5] = [
        Self::Client,
        Self::Address,
        Self::Method,
        Self::Concurrent,
        Self::Streams,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Client => "client_rate",
            Self::Address => "address_rate",
            Self::Method => "method_rate",
            Self::Concurrent => "concurrent_calls",
            Self::Streams => "streams",
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What is kept per key: a bucket, and what is open (calls in flight, streams).
#[derive(Debug, Default)]
struct Entry {
    bucket: Option<Bucket>,
    open: usize,
}

impl Entry {
    /// Takes a token of `rate`'s bucket, or says how long until one is there.
    fn take(&mut self, rate: &Rate, now: Instant) -> Result<(), Duration> {
        let burst = rate.burst();
        let bucket = self.bucket.get_or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate.rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate.rate))
        }
    }

    /// Nothing open and the bucket full again: the entry can go.
    fn idle(&self, now: Instant, rate_of: impl Fn() -> Option<Rate>) -> bool {
        self.open == 0
            && self.bucket.as_ref().is_none_or(|b| {
                rate_of().is_none_or(|rate| {
                    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
                    b.tokens + elapsed * rate.rate >= rate.burst()
                })
            })
    }
}

const SHARDS: usize = 16;
/// A shard is swept of idle entries when it grows past this many.
const SWEEP_AT: usize = 4096;

/// The gate's quotas and what they hold.
#[derive(Debug)]
pub(crate) struct Quotas {
    config: QuotaConfig,
    /// Whether any limit applies to calls (with none, a call costs no clock read, key or lock).
    limits_calls: bool,
    shards: [Mutex<HashMap<Key, Entry>>; SHARDS],
    refused: [AtomicU64; 5],
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Client(Arc<str>),
    Address(IpAddr),
    Method(usize, Arc<str>),
    Streams(IpAddr),
}

impl Key {
    fn rate<'a>(&self, config: &'a QuotaConfig) -> Option<&'a Rate> {
        match self {
            Key::Client(_) => config.per_client.as_ref(),
            Key::Address(_) => config.per_address.as_ref(),
            Key::Method(i, _) => config.methods.get(*i).map(|m| &m.rate),
            Key::Streams(_) => None,
        }
    }
}

/// Holds a client's call in flight; released on drop.
#[derive(Debug)]
pub(crate) struct InFlight {
    quotas: Arc<Quotas>,
    key: Key,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.quotas.release(&self.key);
    }
}

impl Quotas {
    pub(crate) fn new(config: QuotaConfig) -> Self {
        Self {
            limits_calls: config.per_client.is_some()
                || config.per_address.is_some()
                || config.max_concurrent_calls_per_client.is_some()
                || !config.methods.is_empty(),
            config,
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            refused: Default::default(),
        }
    }

    /// How many times each limit refused.
    pub(crate) fn refusals(&self) -> impl Iterator<Item = (Limit, u64)> + '_ {
        Limit::ALL
            .into_iter()
            .zip(self.refused.iter().map(|c| c.load(Ordering::Relaxed)))
    }

    fn shard(&self, key: &Key) -> &Mutex<HashMap<Key, Entry>> {
        use std::hash::BuildHasher as _;
        let hash = foldhash::fast::FixedState::with_seed(0x9e37).hash_one(key);
        &self.shards[(hash as usize) % SHARDS]
    }

    fn refuse(&self, limit: Limit, message: String, wait: Option<Duration>) -> CallError {
        self.refused[limit as usize].fetch_add(1, Ordering::Relaxed);
        let err = CallError::new(ErrorCode::ResourceExhausted, message);
        match wait {
            Some(wait) => err.with_retry_after(wait),
            None => err,
        }
    }

    /// Runs `f` on `key`'s entry, sweeping idle entries from a shard grown large.
    fn with_entry<T>(&self, key: &Key, now: Instant, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut shard = self.shard(key).lock();
        if shard.len() >= SWEEP_AT && !shard.contains_key(key) {
            shard.retain(|k, e| !e.idle(now, || k.rate(&self.config).copied()));
        }
        f(shard.entry(key.clone()).or_default())
    }

    /// Counts one more open under `key` unless `cap` are open already.
    fn open(&self, key: &Key, cap: usize, now: Instant) -> bool {
        self.with_entry(key, now, |entry| {
            let room = entry.open < cap;
            if room {
                entry.open += 1;
            }
            room
        })
    }

    fn take(&self, key: &Key, rate: &Rate, now: Instant) -> Result<(), Duration> {
        self.with_entry(key, now, |entry| entry.take(rate, now))
    }

    /// The buckets a call of `client` from `remote` to `object_type.method` (`method` empty for
    /// a create or delete) takes a token from, in the order they are checked: the methods'
    /// quotas it matches, the client's, the address's.
    fn buckets<'a>(
        &'a self,
        client: &'a Arc<str>,
        remote: Option<IpAddr>,
        object_type: &'a str,
        method: &'a str,
    ) -> impl Iterator<Item = Key> + 'a {
        let methods = self
            .config
            .methods
            .iter()
            .enumerate()
            .filter(move |(_, quota)| !method.is_empty() && quota.matches(object_type, method))
            .map(move |(i, _)| Key::Method(i, client.clone()));
        let per_client = self
            .config
            .per_client
            .as_ref()
            .map(|_| Key::Client(client.clone()));
        let per_address = self
            .config
            .per_address
            .as_ref()
            .zip(remote)
            .map(|(_, ip)| Key::Address(ip));
        methods.chain(per_client).chain(per_address)
    }

    /// Returns a token taken from `key`'s bucket (for a call another bucket then refused).
    fn give_back(&self, key: &Key, now: Instant) {
        let Some(burst) = key.rate(&self.config).map(Rate::burst) else {
            return;
        };
        self.with_entry(key, now, |entry| {
            if let Some(bucket) = entry.bucket.as_mut() {
                bucket.tokens = (bucket.tokens + 1.0).min(burst);
            }
        });
    }

    /// Admits a call of `caller` from `remote` to `object_type.method` (`method` empty for a
    /// create or delete), or refuses it naming the limit and when to try again. The call holds
    /// the returned guard while it is in flight.
    pub(crate) fn admit(
        self: &Arc<Self>,
        caller: &ClientIdentity,
        remote: Option<IpAddr>,
        object_type: &str,
        method: &str,
    ) -> Result<Option<InFlight>, CallError> {
        if !self.limits_calls {
            return Ok(None);
        }
        let now = Instant::now();
        let client: Arc<str> = match (caller.client_id(), caller.user_id(), remote) {
            (id, _, _) if !id.is_empty() => id.into(),
            (_, user, _) if !user.is_empty() => format!("user {user}").into(),
            (_, _, Some(ip)) => format!("address {ip}").into(),
            _ => "an unknown client".into(),
        };
        // Calls in flight first: a call refused for them takes no token from the buckets.
        let in_flight = match self.config.max_concurrent_calls_per_client {
            None => None,
            Some(cap) => {
                let key = Key::Client(client.clone());
                if !self.open(&key, cap, now) {
                    return Err(self.refuse(
                        Limit::Concurrent,
                        format!(
                            "{client} has {cap} calls in flight, its limit: wait for answers \
                             before sending more"
                        ),
                        Some(Duration::from_millis(100)),
                    ));
                }
                Some(InFlight {
                    quotas: self.clone(),
                    key,
                })
            }
        };
        for (taken, key) in self
            .buckets(&client, remote, object_type, method)
            .enumerate()
        {
            let Some(rate) = key.rate(&self.config) else {
                continue;
            };
            if let Err(wait) = self.take(&key, rate, now) {
                // A refused call costs the client nothing but the wait: the tokens it took from
                // the buckets before this one go back.
                for earlier in self
                    .buckets(&client, remote, object_type, method)
                    .take(taken)
                {
                    self.give_back(&earlier, now);
                }
                let what = match &key {
                    Key::Method(..) => {
                        format!("{client} is over its quota for {object_type}.{method}")
                    }
                    Key::Address(ip) => format!("address {ip} is over its quota"),
                    _ => format!("{client} is over its quota"),
                };
                let limit = match key {
                    Key::Method(..) => Limit::Method,
                    Key::Address(_) => Limit::Address,
                    _ => Limit::Client,
                };
                return Err(self.refuse(
                    limit,
                    format!(
                        "{what} ({} calls/s, burst {}); retry in {}",
                        rate.rate,
                        rate.burst(),
                        millis(wait)
                    ),
                    Some(wait),
                ));
            }
        }
        Ok(in_flight)
    }

    /// Admits a push stream from `remote`, or refuses it when the address has its limit open.
    pub(crate) fn admit_stream(
        self: &Arc<Self>,
        remote: Option<IpAddr>,
    ) -> Result<Option<InFlight>, CallError> {
        let (Some(cap), Some(ip)) = (self.config.max_streams_per_address, remote) else {
            return Ok(None);
        };
        let key = Key::Streams(ip);
        if !self.open(&key, cap, Instant::now()) {
            return Err(self.refuse(
                Limit::Streams,
                format!("address {ip} has {cap} push streams open, its limit"),
                Some(Duration::from_secs(1)),
            ));
        }
        Ok(Some(InFlight {
            quotas: self.clone(),
            key,
        }))
    }

    fn release(&self, key: &Key) {
        let mut shard = self.shard(key).lock();
        if let Some(entry) = shard.get_mut(key) {
            entry.open = entry.open.saturating_sub(1);
        }
    }
}

fn millis(wait: Duration) -> String {
    format!("{} ms", wait.as_millis().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(client: &str) -> ClientIdentity {
        ClientIdentity::new(client, "", Vec::<String>::new())
    }

    #[tokio::test(start_paused = true)]
    async fn buckets_refill_at_their_rate_and_refusals_say_when_to_retry() {
        let quotas = Arc::new(Quotas::new(QuotaConfig {
            per_client: Some(Rate {
                rate: 10.0,
                burst: Some(5.0),
            }),
            ..QuotaConfig::default()
        }));
        let a = identity("gate/a");
        for _ in 0..5 {
            quotas.admit(&a, None, "Counter", "Add").unwrap();
        }
        let err = quotas.admit(&a, None, "Counter", "Add").unwrap_err();
        assert_eq!(err.code(), ErrorCode::ResourceExhausted);
        assert!(
            err.message()
                .contains("gate/a is over its quota (10 calls/s, burst 5)"),
            "{err}"
        );
        let wait = err.retry_after().unwrap();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // Another client is untouched.
        quotas
            .admit(&identity("gate/b"), None, "Counter", "Add")
            .unwrap();
        // After the wait, one more; a second later, the burst again (not more).
        tokio::time::advance(wait).await;
        quotas.admit(&a, None, "Counter", "Add").unwrap();
        assert!(quotas.admit(&a, None, "Counter", "Add").is_err());
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..5 {
            quotas.admit(&a, None, "Counter", "Add").unwrap();
        }
        assert!(quotas.admit(&a, None, "Counter", "Add").is_err());
        let refused: u64 = quotas.refusals().map(|(_, n)| n).sum();
        assert_eq!(refused, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn addresses_methods_and_calls_in_flight_have_limits_of_their_own() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let quotas = Arc::new(Quotas::new(QuotaConfig {
            per_address: Some(Rate {
                rate: 1.0,
                burst: Some(3.0),
            }),
            max_concurrent_calls_per_client: Some(2),
            methods: vec![MethodQuota {
                object_type: "Wallet".into(),
                method: "Deposit".into(),
                rate: Rate {
                    rate: 1.0,
                    burst: None,
                },
            }],
            ..QuotaConfig::default()
        }));
        // Two anonymous callers from one address share its quota.
        let anon = identity("");
        let first = quotas.admit(&anon, Some(ip), "Counter", "Add").unwrap();
        let second = quotas.admit(&anon, Some(ip), "Counter", "Get").unwrap();
        // Two in flight: a third waits for an answer.
        let err = quotas.admit(&anon, Some(ip), "Counter", "Add").unwrap_err();
        assert!(err.message().contains("calls in flight"), "{err}");
        drop(first);
        let third = quotas.admit(&anon, Some(ip), "Counter", "Add").unwrap();
        drop((second, third));
        let err = quotas.admit(&anon, Some(ip), "Counter", "Add").unwrap_err();
        assert!(
            err.message().contains("address 10.1.2.3 is over its quota"),
            "{err}"
        );
        // The method's own rate, per client, from another address.
        let c = identity("gate/c");
        quotas.admit(&c, None, "Wallet", "Deposit").unwrap();
        let err = quotas.admit(&c, None, "Wallet", "Deposit").unwrap_err();
        assert!(
            err.message()
                .contains("Wallet.Deposit (1 calls/s, burst 1)"),
            "{err}"
        );
        quotas.admit(&c, None, "Wallet", "Balance").unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_call_takes_no_tokens() {
        let (x, y): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let quotas = Arc::new(Quotas::new(QuotaConfig {
            per_client: Some(Rate {
                rate: 1.0,
                burst: Some(5.0),
            }),
            per_address: Some(Rate {
                rate: 1.0,
                burst: Some(3.0),
            }),
            methods: vec![MethodQuota {
                object_type: "*".into(),
                method: "*".into(),
                rate: Rate {
                    rate: 1.0,
                    burst: Some(5.0),
                },
            }],
            ..QuotaConfig::default()
        }));
        let a = identity("gate/a");
        for _ in 0..3 {
            quotas.admit(&a, Some(x), "Counter", "Add").unwrap();
        }
        // Address x is spent: its refusals leave a's method and client buckets as they were...
        for _ in 0..10 {
            let err = quotas.admit(&a, Some(x), "Counter", "Add").unwrap_err();
            assert!(err.message().contains("address 10.0.0.1"), "{err}");
        }
        // ...so from another address a still has the 2 calls of its burst of 5.
        for _ in 0..2 {
            quotas.admit(&a, Some(y), "Counter", "Add").unwrap();
        }
        let err = quotas.admit(&a, Some(y), "Counter", "Add").unwrap_err();
        assert!(
            err.message().contains("gate/a is over its quota for"),
            "{err}"
        );
    }

    #[test]
    fn bad_limits_are_named() {
        let bad = QuotaConfig {
            per_client: Some(Rate {
                rate: 0.0,
                burst: None,
            }),
            ..QuotaConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().setting, "per_client");
        let bad = QuotaConfig {
            max_streams_per_address: Some(0),
            ..QuotaConfig::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().setting,
            "max_streams_per_address"
        );
        assert!(!QuotaConfig::default().is_enabled());
    }
}
