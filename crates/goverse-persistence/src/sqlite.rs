use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use goverse_core::ObjectId;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};

use crate::{ObjectStore, SaveRequest, StoreError, StoredObject};

/// The embedded default store: one SQLite file.
///
/// The table mirrors upstream's PostgreSQL `goverse_objects` (object id, type, data, timestamps)
/// plus the epoch column used for fencing. The connection runs in WAL mode; every operation runs on
/// tokio's blocking pool so callers never block a runtime thread.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS goverse_objects (
    object_id   TEXT PRIMARY KEY NOT NULL,
    object_type TEXT NOT NULL,
    data        BLOB NOT NULL,
    epoch       INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS goverse_objects_type ON goverse_objects (object_type);
";

// Insert, or replace when the stored epoch is not newer. `changes() == 0` afterwards means the
// fence refused the write.
const UPSERT: &str = "
INSERT INTO goverse_objects (object_id, object_type, data, epoch)
VALUES (?1, ?2, ?3, ?4)
ON CONFLICT (object_id) DO UPDATE SET
    object_type = excluded.object_type,
    data = excluded.data,
    epoch = excluded.epoch,
    updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
WHERE goverse_objects.epoch <= excluded.epoch
";

fn backend(err: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("sqlite: {err}"))
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`, creating its parent directory.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|err| {
                StoreError::Unavailable(format!(
                    "cannot create data directory {}: {err}",
                    parent.display()
                ))
            })?;
        }
        let conn = Connection::open(&path).map_err(|err| {
            StoreError::Unavailable(format!("cannot open sqlite file {}: {err}", path.display()))
        })?;
        let at = |err: rusqlite::Error| {
            StoreError::Backend(format!(
                "sqlite file {}: {err} (is it a GoVerse database?)",
                path.display()
            ))
        };
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(at)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(at)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(at)?;
        conn.execute_batch(SCHEMA).map_err(at)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn with_conn<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock()))
            .await
            .map_err(|err| StoreError::Backend(format!("sqlite worker failed: {err}")))?
    }
}

fn stored_epoch(conn: &Connection, id: &str) -> Result<u64, StoreError> {
    let epoch: Option<i64> = conn
        .query_row(
            "SELECT epoch FROM goverse_objects WHERE object_id = ?1",
            [id],
            |row| row.get(0),
        )
        .optional()
        .map_err(backend)?;
    Ok(epoch.unwrap_or(0) as u64)
}

fn upsert(
    conn: &Connection,
    id: &str,
    ty: &str,
    data: &[u8],
    epoch: u64,
) -> Result<(), StoreError> {
    let changed = conn
        .prepare_cached(UPSERT)
        .and_then(|mut stmt| stmt.execute(params![id, ty, data, epoch as i64]))
        .map_err(backend)?;
    if changed == 0 {
        return Err(StoreError::StaleEpoch {
            id: id.to_owned(),
            stored: stored_epoch(conn, id)?,
            given: epoch,
        });
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for SqliteStore {
    async fn load(&self, id: &ObjectId) -> Result<Option<StoredObject>, StoreError> {
        let id = id.clone();
        self.with_conn(move |conn| {
            conn.prepare_cached(
                "SELECT object_type, data, epoch FROM goverse_objects WHERE object_id = ?1",
            )
            .and_then(|mut stmt| {
                stmt.query_row([id.as_str()], |row| {
                    Ok(StoredObject {
                        object_type: row.get(0)?,
                        data: row.get(1)?,
                        epoch: row.get::<_, i64>(2)? as u64,
                    })
                })
                .optional()
            })
            .map_err(backend)
        })
        .await
    }

    async fn save(&self, request: SaveRequest<'_>) -> Result<(), StoreError> {
        let (id, ty, data, epoch) = (
            request.id.clone(),
            request.object_type.to_owned(),
            request.data.to_vec(),
            request.epoch,
        );
        self.with_conn(move |conn| upsert(conn, id.as_str(), &ty, &data, epoch))
            .await
    }

    async fn save_batch(&self, requests: &[SaveRequest<'_>]) -> Vec<Result<(), StoreError>> {
        let owned: Vec<(ObjectId, String, Vec<u8>, u64)> = requests
            .iter()
            .map(|r| {
                (
                    r.id.clone(),
                    r.object_type.to_owned(),
                    r.data.to_vec(),
                    r.epoch,
                )
            })
            .collect();
        let n = owned.len();
        let outcome = self
            .with_conn(move |conn| {
                // One transaction for the batch: a shutdown saving many objects pays one fsync.
                let tx = conn.transaction().map_err(backend)?;
                let results: Vec<Result<(), StoreError>> = owned
                    .iter()
                    .map(|(id, ty, data, epoch)| upsert(&tx, id.as_str(), ty, data, *epoch))
                    .collect();
                tx.commit().map_err(backend)?;
                Ok(results)
            })
            .await;
        match outcome {
            Ok(results) => results,
            Err(err) => vec![Err(err); n],
        }
    }

    async fn delete(&self, id: &ObjectId, epoch: u64) -> Result<bool, StoreError> {
        let id = id.clone();
        self.with_conn(move |conn| {
            let stored: Option<i64> = conn
                .query_row(
                    "SELECT epoch FROM goverse_objects WHERE object_id = ?1",
                    [id.as_str()],
                    |row| row.get(0),
                )
                .optional()
                .map_err(backend)?;
            match stored {
                None => Ok(false),
                Some(stored) if stored as u64 > epoch => Err(StoreError::StaleEpoch {
                    id: id.to_string(),
                    stored: stored as u64,
                    given: epoch,
                }),
                Some(_) => {
                    conn.execute(
                        "DELETE FROM goverse_objects WHERE object_id = ?1",
                        [id.as_str()],
                    )
                    .map_err(backend)?;
                    Ok(true)
                }
            }
        })
        .await
    }

    async fn count(&self) -> Result<u64, StoreError> {
        self.with_conn(|conn| {
            conn.query_row("SELECT COUNT(*) FROM goverse_objects", [], |row| {
                row.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(backend)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("objects.db")).unwrap();
        crate::conformance::run_all(&store).await;
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/objects.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            let id = ObjectId::from("c1");
            store
                .save(SaveRequest {
                    id: &id,
                    object_type: "Counter",
                    data: b"{\"value\":3}",
                    epoch: 1,
                })
                .await
                .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let got = store.load(&ObjectId::from("c1")).await.unwrap().unwrap();
        assert_eq!(got.data, b"{\"value\":3}");
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.db");
        std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(err.to_string().contains("garbage.db"), "{err}");
    }
}
