//! [`InvalidSetting`]: the one error every configuration check returns.

use std::fmt;

/// A setting that cannot be used: which one, as its configuration names it, and why.
///
/// Every `validate` of the workspace returns it, so a caller can name the setting in its own
/// terms ([`InvalidSetting::within`] prefixes the section it came from).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct InvalidSetting {
    /// The setting at fault (`lease_ttl`, `cluster.etcd.endpoints[0]`).
    pub setting: String,
    /// What is wrong with its value.
    pub reason: String,
}

impl InvalidSetting {
    /// `setting` cannot be used because of `reason`.
    pub fn new(setting: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self {
            setting: setting.into(),
            reason: reason.to_string(),
        }
    }

    /// The same error, its setting named inside `section` (`cluster` + `shards` →
    /// `cluster.shards`).
    #[must_use]
    pub fn within(mut self, section: &str) -> Self {
        self.setting = if self.setting.is_empty() {
            section.to_owned()
        } else {
            format!("{section}.{}", self.setting)
        };
        self
    }
}

/// Why a shard count cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShardCountError {
    /// No shards.
    #[error("must be at least 1")]
    Zero,
    /// More than [`crate::MAX_SHARD_COUNT`].
    #[error(
        "{0} is more than the {max} a cluster can hold (the shard map is one etcd key per \
         shard, held whole by every process)",
        max = crate::MAX_SHARD_COUNT
    )]
    TooMany(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_setting_within_its_section() {
        let err = InvalidSetting::new("shards", ShardCountError::Zero).within("cluster");
        assert_eq!(err.to_string(), "cluster.shards: must be at least 1");
        assert_eq!(err.setting, "cluster.shards");
    }
}
