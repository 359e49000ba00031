use std::time::Duration;

use goverse_core::{DEFAULT_SHARD_COUNT, InvalidSetting};

/// How a node runs. Plain data with defaults; [`NodeConfig::validate`] names what is wrong.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The address this node advertises (`host:port`); also its identity in the cluster and the
    /// prefix of node-pinned object IDs (`host:port/name`).
    pub address: String,
    /// Shards in the cluster (8192 as upstream; every node of a cluster must agree).
    pub shard_count: u32,
    /// Default call timeout; per-call options override it.
    pub call_timeout: Duration,
    /// Idle activations are deactivated after this long without a call. Zero: never. Types may
    /// override it at registration.
    pub idle_timeout: Duration,
    /// How often idle activations are looked for. `None`: a quarter of the shortest idle timeout,
    /// clamped to 10 ms ..= 30 s.
    pub idle_check_interval: Option<Duration>,
    /// Persistent objects changed since their last save are saved this often. Zero: only on
    /// deactivation and shutdown.
    pub save_interval: Duration,
    /// TTL of this node's lease in the cluster store (default 10 s); the node stops serving
    /// when it cannot renew it, and a node that dies is replaced within it.
    pub lease_ttl: Duration,
    /// Nodes the cluster needs before shards are first given out and placement runs; below
    /// it a node reports not ready (a running cluster still fails over). Default 1.
    pub min_quorum: usize,
    /// How long the set of nodes must hold still before the leader rebalances (upstream's
    /// `cluster_state_stability_duration`, default 10 s).
    pub stability_window: Duration,
    /// How often this node checks that it reaches each peer node (a new connection and the
    /// node service's `Describe`, bounded by twice this). A peer is down after three failed
    /// checks in a row; placement gives shards only to nodes that reach each other both ways.
    /// Default 1 s.
    pub peer_check_interval: Duration,
    /// A shard whose target node has not taken it for this long is given to another node
    /// (upstream's `stuck_shard_reallocation_timeout`, default 60 s).
    pub stuck_shard_timeout: Duration,
    /// Reliable-call records older than this are removed from the store (checked every
    /// twenty-fourth of it, at most hourly). A retry arriving later than this runs the call
    /// again. Default 7 days.
    pub reliable_call_retention: Duration,
    /// The cluster's shared secret: the node service admits only peers (gates, other nodes)
    /// that present it, and this node presents it to the others. `None` admits every peer:
    /// only for clusters whose every address is loopback.
    pub peer_secret: Option<String>,
    /// The prefix of every key this node writes in the cluster store (`/goverse`, as upstream);
    /// every node and gate of one cluster uses the same one.
    pub cluster_prefix: String,
    /// Objects this node keeps alive without anybody calling them (upstream's
    /// `auto_load_objects`): created once the cluster has been stable for its window, on the
    /// node serving each one, recreated when missing.
    pub auto_load: Vec<crate::AutoLoad>,
    /// Limits on the node service port's connections (a cap, an idle timeout).
    pub connection_limits: goverse_transport::ConnectionLimits,
    /// The cluster's `object_access_rules`: requests a gate sends for its clients are checked
    /// against them again here (the gate checked them first). With no access and no lifecycle
    /// rules, the node checks nothing and leaves the judging to its gates.
    pub access_rules: Vec<goverse_core::rules::AccessRule>,
    /// The cluster's `object_lifecycle_rules`, checked again for clients' creates and deletes.
    pub lifecycle_rules: Vec<goverse_core::rules::LifecycleRule>,
    /// Where this node's operations HTTP port (`/metrics`, `/ready`) is reached (`host:port`),
    /// published in its registration so the inspector finds it. `None`: it has none.
    pub ops_address: Option<String>,
    /// TLS: the node service's certificate (peers must present one of the cluster's CA that
    /// names a cluster member) and what this node's links to its peers present and trust.
    /// `None`: plaintext (loopback-only clusters).
    pub tls: Option<goverse_tls::Tls>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:47000".to_owned(),
            shard_count: DEFAULT_SHARD_COUNT,
            call_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(15 * 60),
            idle_check_interval: None,
            save_interval: Duration::from_secs(60),
            lease_ttl: Duration::from_secs(10),
            min_quorum: 1,
            stability_window: Duration::from_secs(10),
            stuck_shard_timeout: Duration::from_secs(60),
            peer_check_interval: Duration::from_secs(1),
            reliable_call_retention: Duration::from_secs(7 * 24 * 3600),
            cluster_prefix: goverse_cluster::DEFAULT_PREFIX.to_owned(),
            peer_secret: None,
            auto_load: Vec::new(),
            connection_limits: goverse_transport::ConnectionLimits::default(),
            access_rules: Vec::new(),
            lifecycle_rules: Vec::new(),
            ops_address: None,
            tls: None,
        }
    }
}

impl NodeConfig {
    /// Checks the values, naming the first bad one.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.address.is_empty() || self.address.contains('/') {
            return Err(InvalidSetting::new(
                "address",
                format!(
                    "{:?} must be a non-empty host:port without '/'",
                    self.address
                ),
            ));
        }
        goverse_core::check_shard_count(self.shard_count)
            .map_err(|why| InvalidSetting::new("shard_count", why))?;
        if self.call_timeout.is_zero() {
            return Err(InvalidSetting::new("call_timeout", "must be positive"));
        }
        if self.lease_ttl < Duration::from_millis(300) {
            return Err(InvalidSetting::new(
                "lease_ttl",
                format!("{:?} is too short (minimum 300ms)", self.lease_ttl),
            ));
        }
        if self.reliable_call_retention < Duration::from_secs(1) {
            return Err(InvalidSetting::new(
                "reliable_call_retention",
                format!(
                    "{:?} is too short (minimum 1s)",
                    self.reliable_call_retention
                ),
            ));
        }
        if self.peer_secret.as_deref().is_some_and(|s| s.len() < 16) {
            return Err(InvalidSetting::new(
                "peer_secret",
                "must be at least 16 characters",
            ));
        }
        if self.min_quorum == 0 {
            return Err(InvalidSetting::new("min_quorum", "must be at least 1"));
        }
        if self.stuck_shard_timeout.is_zero() {
            return Err(InvalidSetting::new(
                "stuck_shard_timeout",
                "must be positive",
            ));
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(60))
            .contains(&self.peer_check_interval)
        {
            return Err(InvalidSetting::new(
                "peer_check_interval",
                format!(
                    "{:?} must be between 10ms and 60s",
                    self.peer_check_interval
                ),
            ));
        }
        goverse_cluster::Keys::new(&self.cluster_prefix)
            .map_err(|why| InvalidSetting::new("cluster_prefix", why))?;
        self.connection_limits
            .validate()
            .map_err(|why| why.within("connection_limits"))?;
        for entry in &self.auto_load {
            entry.validate()?;
        }
        if let Some(interval) = self.idle_check_interval
            && interval.is_zero()
        {
            return Err(InvalidSetting::new(
                "idle_check_interval",
                "must be positive",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert_eq!(NodeConfig::default().validate(), Ok(()));
        let bad = NodeConfig {
            shard_count: 0,
            ..NodeConfig::default()
        };
        assert!(bad.validate().unwrap_err().setting == "shard_count");
        let bad = NodeConfig {
            address: "a/b".into(),
            ..NodeConfig::default()
        };
        assert!(bad.validate().unwrap_err().setting == "address");
    }
}
