//! [`CacheClient`]: the cache from outside the cluster, through any of its gates.

use goverse::client::Client;
use goverse::prelude::*;
use tokio::sync::Mutex;

use crate::proto::{
    CacheDirectoryListRequest, CacheManagerClusterStatsRequest, CacheManagerClusterStatsResponse,
    CacheManagerDeleteRequest, CacheManagerGetRequest, CacheManagerSetRequest,
};
use crate::{CacheDirectoryRef, CacheManagerRef, DIRECTORY_ID};

/// A client of the cache: each key goes through one node's manager (chosen by the key's hash
/// among the managers the directory lists, so a key's hits and misses are counted in one
/// place), over a [`goverse::client::Client`] connected to any gate.
#[derive(Debug)]
pub struct CacheClient {
    client: Client,
    /// The managers, as last listed.
    managers: Mutex<Vec<String>>,
}

impl CacheClient {
    /// A cache client over `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            managers: Mutex::new(Vec::new()),
        }
    }

    /// The gate client underneath.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The managers the directory lists now.
    pub async fn managers(&self) -> Result<Vec<String>, CallError> {
        let listed = CacheDirectoryRef::new(DIRECTORY_ID)
            .list(&self.client, CacheDirectoryListRequest {})
            .await?;
        if listed.manager_ids.is_empty() {
            return Err(CallError::unavailable(
                "no cache manager has entered the directory yet (is the cluster up?)",
            ));
        }
        *self.managers.lock().await = listed.manager_ids.clone();
        Ok(listed.manager_ids)
    }

    /// The manager for `key`, listing them first if need be.
    async fn manager_for(&self, key: &str) -> Result<String, CallError> {
        let known = self.managers.lock().await.clone();
        let managers = if known.is_empty() {
            self.managers().await?
        } else {
            known
        };
        let i = goverse::fnv1a_32(key.as_bytes()) as usize % managers.len();
        Ok(managers[i].clone())
    }

    /// Runs `op` with `key`'s manager; when that manager's node is gone (`Unavailable`), lists
    /// the managers again, leaves that one out, and tries once more with the key's manager
    /// among the rest.
    async fn with_manager<T, F, Fut>(&self, key: &str, op: F) -> Result<T, CallError>
    where
        F: Fn(CacheManagerRef) -> Fut,
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        let manager = self.manager_for(key).await?;
        match op(CacheManagerRef::new(manager.as_str())).await {
            Err(err) if err.code() == ErrorCode::Unavailable => {
                tracing::info!(%manager, error = %err, "manager unreachable; trying another");
                let mut managers = self.managers().await?;
                managers.retain(|m| *m != manager);
                if managers.is_empty() {
                    return Err(err);
                }
                *self.managers.lock().await = managers;
                let manager = self.manager_for(key).await?;
                op(CacheManagerRef::new(manager.as_str())).await
            }
            other => other,
        }
    }

    /// Stores `value` under `key`, expiring after `ttl_seconds` (0: never).
    pub async fn set(&self, key: &str, value: &str, ttl_seconds: i64) -> Result<(), CallError> {
        self.with_manager(key, |manager| async move {
            manager
                .set(
                    &self.client,
                    CacheManagerSetRequest {
                        key: key.to_owned(),
                        value: value.to_owned(),
                        ttl_seconds,
                    },
                )
                .await
                .map(|_| ())
        })
        .await
    }

    /// The value under `key`, or `None` (never set, deleted or expired).
    pub async fn get(&self, key: &str) -> Result<Option<String>, CallError> {
        self.with_manager(key, |manager| async move {
            let answer = manager
                .get(
                    &self.client,
                    CacheManagerGetRequest {
                        key: key.to_owned(),
                    },
                )
                .await?;
            Ok(answer.found.then_some(answer.value))
        })
        .await
    }

    /// Removes `key`; whether there was a live entry.
    pub async fn delete(&self, key: &str) -> Result<bool, CallError> {
        self.with_manager(key, |manager| async move {
            manager
                .delete(
                    &self.client,
                    CacheManagerDeleteRequest {
                        key: key.to_owned(),
                    },
                )
                .await
                .map(|answer| answer.success)
        })
        .await
    }

    /// Every manager's counts and their sum.
    pub async fn stats(&self) -> Result<CacheManagerClusterStatsResponse, CallError> {
        self.with_manager("", |manager| async move {
            manager
                .cluster_stats(&self.client, CacheManagerClusterStatsRequest {})
                .await
        })
        .await
    }
}
