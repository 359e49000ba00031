use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use goverse_core::{ObjectId, ShardId};
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::{
    Fence, ObjectStore, Refusal, ReliableCall, ReliableResult, SCHEMA_VERSION, StateChange,
    StoreError, StoreStatus, StoredObject, Write, next_epoch, result_of_columns, status_name,
};

/// When SQLite forces a commit to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Every commit is fsynced before it is acknowledged: committed state survives a power loss
    /// as well as a crash of the process. The default.
    #[default]
    Full,
    /// Commits reach the operating system but are fsynced only at checkpoints: committed state
    /// survives a crash of the process (kill -9), not necessarily a power loss.
    Normal,
}

/// How a [`SqliteStore`] opens its file.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// The database file (created, with its directory, if missing).
    pub path: PathBuf,
    /// When commits are forced to disk. Default [`Synchronous::Full`].
    pub synchronous: Synchronous,
    /// How long an operation waits for another process holding the file's lock. Default 5 s.
    pub busy_timeout: Duration,
}

impl SqliteConfig {
    /// The defaults for a file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// The embedded default store: one SQLite file.
///
/// The tables mirror upstream's PostgreSQL schema (`goverse_objects`, `goverse_reliable_calls`)
/// plus the shard epochs used for fencing, created and upgraded by versioned migrations when the
/// file is opened. The file runs in WAL mode with two connections, one writing and one reading,
/// so loads are not held up by commits; every operation runs on tokio's blocking pool so callers
/// never block a runtime thread.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
    path: Arc<Path>,
}

const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// Versioned migrations: `(version, description, SQL)`. Version 1 is the table files made before
/// migrations were recorded already have; `IF NOT EXISTS` lets it pass over them.
const MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "object table",
        "CREATE TABLE IF NOT EXISTS goverse_objects (
            object_id   TEXT PRIMARY KEY NOT NULL,
            object_type TEXT NOT NULL,
            data        BLOB NOT NULL,
            epoch       INTEGER NOT NULL DEFAULT 0,
            created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
            updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        );
        CREATE INDEX IF NOT EXISTS goverse_objects_type ON goverse_objects (object_type);",
    ),
    (
        2,
        "shard epochs, reliable calls, next_rcseq; objects keyed without a rowid",
        "CREATE TABLE goverse_objects_v2 (
            object_id   TEXT PRIMARY KEY NOT NULL,
            object_type TEXT NOT NULL,
            data        BLOB NOT NULL,
            next_rcseq  INTEGER NOT NULL DEFAULT 0,
            epoch       INTEGER NOT NULL DEFAULT 0,
            created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
            updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        ) WITHOUT ROWID;
        INSERT INTO goverse_objects_v2 (object_id, object_type, data, epoch, created_at, updated_at)
            SELECT object_id, object_type, data, epoch, created_at, updated_at FROM goverse_objects;
        DROP TABLE goverse_objects;
        ALTER TABLE goverse_objects_v2 RENAME TO goverse_objects;
        CREATE INDEX goverse_objects_type ON goverse_objects (object_type);
        CREATE TABLE goverse_shard_epochs (
            shard      INTEGER PRIMARY KEY NOT NULL,
            epoch      INTEGER NOT NULL,
            updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        );
        CREATE TABLE goverse_reliable_calls (
            call_id       TEXT PRIMARY KEY NOT NULL,
            object_id     TEXT NOT NULL,
            object_type   TEXT NOT NULL,
            method_name   TEXT NOT NULL,
            request_data  BLOB NOT NULL,
            result_data   BLOB,
            error_message TEXT,
            error_code    TEXT,
            status        TEXT NOT NULL DEFAULT 'pending'
                          CHECK (status IN ('pending', 'success', 'failed', 'skipped')),
            created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
            updated_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        ) WITHOUT ROWID;
        CREATE INDEX goverse_reliable_calls_created ON goverse_reliable_calls (created_at);",
    ),
];

/// Sorts a SQLite failure into transient, read-only, corrupt or other, naming the file.
fn classify(path: &Path, err: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    let at = format!("sqlite file {}: {err}", path.display());
    match &err {
        rusqlite::Error::SqliteFailure(e, _) => match e.code {
            C::DatabaseCorrupt | C::NotADatabase => StoreError::Corrupt(at),
            C::ReadOnly => StoreError::ReadOnly(at),
            C::DatabaseBusy
            | C::DatabaseLocked
            | C::SystemIoFailure
            | C::DiskFull
            | C::CannotOpen
            | C::OutOfMemory
            | C::FileLockingProtocolFailed => StoreError::Unavailable(at),
            _ => StoreError::Backend(at),
        },
        _ => StoreError::Backend(at),
    }
}

/// `f`, again while SQLite reports the file busy or locked, until the busy timeout.
fn busy_retry<T>(
    config: &SqliteConfig,
    mut f: impl FnMut() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + config.busy_timeout;
    loop {
        match f() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            done => return done,
        }
    }
}

fn open_connection(config: &SqliteConfig) -> Result<Connection, StoreError> {
    let path = &config.path;
    let conn = Connection::open(path).map_err(|err| {
        StoreError::Unavailable(format!("cannot open sqlite file {}: {err}", path.display()))
    })?;
    let at = |err| classify(path, err);
    conn.busy_timeout(config.busy_timeout).map_err(at)?;
    // Reading the journal mode touches the file header: a file that is not a database fails
    // here, before anything is written to it.
    // Switching a new file to WAL needs it to itself, and SQLite answers "locked" at once
    // (without its busy handler) while another process does the same: retried within the
    // busy timeout.
    busy_retry(config, || conn.pragma_update(None, "journal_mode", "WAL")).map_err(at)?;
    let sync = match config.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync).map_err(at)?;
    // Reads through a memory map and a larger page cache: loads of many objects then cost no
    // system call each.
    conn.pragma_update(None, "mmap_size", 1i64 << 30)
        .map_err(at)?;
    conn.pragma_update(None, "cache_size", -65_536)
        .map_err(at)?;
    Ok(conn)
}

fn migrate(conn: &Connection, config: &SqliteConfig) -> Result<(), StoreError> {
    let path = &config.path;
    let at = |err| classify(path, err);
    // One write transaction for the check and every step: processes opening a new shared file
    // at once take turns, and each later one finds the schema already current.
    busy_retry(config, || conn.execute_batch("BEGIN IMMEDIATE")).map_err(at)?;
    match migrate_in_transaction(conn, path) {
        Ok(applied) => {
            conn.execute_batch("COMMIT").map_err(at)?;
            for (version, description) in applied {
                tracing::info!(file = %path.display(), version, description, "schema migrated");
            }
            Ok(())
        }
        Err(err) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(err)
        }
    }
}

/// The migrations still to apply, applied; the caller holds the write transaction.
fn migrate_in_transaction(
    conn: &Connection,
    path: &Path,
) -> Result<Vec<(u32, &'static str)>, StoreError> {
    let at = |err| classify(path, err);
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS goverse_schema_migrations (
            version     INTEGER PRIMARY KEY NOT NULL,
            description TEXT NOT NULL,
            applied_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        )",
    )
    .map_err(at)?;
    let current = schema_version(conn, path)?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::Schema(format!(
            "sqlite file {} has schema version {current}, newer than this build knows \
             ({SCHEMA_VERSION}); run a newer goverse",
            path.display()
        )));
    }
    let mut applied = Vec::new();
    for (version, description, sql) in MIGRATIONS {
        if *version <= current {
            continue;
        }
        conn.execute_batch(sql).map_err(at)?;
        conn.execute(
            "INSERT INTO goverse_schema_migrations (version, description) VALUES (?1, ?2)",
            params![version, description],
        )
        .map_err(at)?;
        applied.push((*version, *description));
    }
    Ok(applied)
}

fn schema_version(conn: &Connection, path: &Path) -> Result<u32, StoreError> {
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM goverse_schema_migrations",
        [],
        |row| row.get::<_, i64>(0),
    )
    .map(|v| v as u32)
    .map_err(|err| classify(path, err))
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` with the default settings.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(SqliteConfig::new(path.as_ref()))
    }

    /// Opens (creating if needed) the database file `config.path`, creating its directory and
    /// bringing its schema up to date.
    pub fn open_with(config: SqliteConfig) -> Result<Self, StoreError> {
        let path = config.path.clone();
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
        // An existing file of 0 bytes is not a store yet: it is set up like a new one, and said
        // so, since objects expected in it (a truncated file, a wrong path) would be missing.
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == 0) {
            tracing::warn!(
                file = %path.display(),
                "the store file is empty (0 bytes): setting a new store up in it; if objects \
                 were expected here, the path is wrong or the file was truncated"
            );
        }
        let writer = open_connection(&config)?;
        migrate(&writer, &config)?;
        let reader = open_connection(&config)?;
        Ok(Self {
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
            path: path.into(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn blocking<R, F>(&self, conn: &Arc<Mutex<Connection>>, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Connection, &Path) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let (conn, path) = (conn.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || f(&mut conn.lock(), &path))
            .await
            .map_err(|err| StoreError::Backend(format!("sqlite worker failed: {err}")))?
    }
}

/// A write with its borrowed parts copied, to move onto the blocking pool.
struct OwnedWrite {
    id: String,
    object_type: String,
    change: OwnedChange,
    fence: Fence,
    reliable: Option<ReliableCall>,
}

enum OwnedChange {
    Save(Vec<u8>),
    Delete,
    Unchanged,
}

impl From<&Write<'_>> for OwnedWrite {
    fn from(w: &Write<'_>) -> Self {
        Self {
            id: w.id.as_str().to_owned(),
            object_type: w.object_type.to_owned(),
            change: match w.change {
                StateChange::Save(data) => OwnedChange::Save(data.to_vec()),
                StateChange::Delete => OwnedChange::Delete,
                StateChange::Unchanged => OwnedChange::Unchanged,
            },
            fence: w.fence,
            reliable: w.reliable.cloned(),
        }
    }
}

// `?5` is the commit's timestamp, computed once per transaction.
const UPSERT: &str = "
INSERT INTO goverse_objects (object_id, object_type, data, epoch, created_at, updated_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?5)
ON CONFLICT (object_id) DO UPDATE SET
    object_type = excluded.object_type,
    data = excluded.data,
    epoch = excluded.epoch,
    updated_at = excluded.updated_at";

// A record for a call id is written unless one with an outcome exists; upstream's `pending` and
// `skipped` rows (no outcome) are replaced. `?10` is the commit's timestamp.
const RECORD: &str = "
INSERT INTO goverse_reliable_calls
    (call_id, object_id, object_type, method_name, request_data, result_data, error_message,
     error_code, status, created_at, updated_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)
ON CONFLICT (call_id) DO UPDATE SET
    object_id = excluded.object_id,
    object_type = excluded.object_type,
    method_name = excluded.method_name,
    request_data = excluded.request_data,
    result_data = excluded.result_data,
    error_message = excluded.error_message,
    error_code = excluded.error_code,
    status = excluded.status,
    created_at = excluded.created_at,
    updated_at = excluded.updated_at
WHERE goverse_reliable_calls.status IN ('pending', 'skipped')";

fn record_params(call: &ReliableCall) -> (Option<&[u8]>, Option<&str>, Option<&str>) {
    match &call.result {
        ReliableResult::Success(bytes) => (Some(bytes), None, None),
        ReliableResult::Failed { code, message } => (None, Some(message), Some(code)),
    }
}

fn commit_blocking(
    conn: &mut Connection,
    path: &Path,
    writes: Vec<OwnedWrite>,
) -> Result<Vec<Result<(), Refusal>>, StoreError> {
    let at = |err| classify(path, err);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(at)?;
    let mut epochs: HashMap<ShardId, u64> = HashMap::new();
    let mut results = Vec::with_capacity(writes.len());
    let now: String = tx
        .query_row(&format!("SELECT {NOW}"), [], |row| row.get(0))
        .map_err(at)?;
    {
        let mut epoch_of = tx
            .prepare_cached("SELECT epoch FROM goverse_shard_epochs WHERE shard = ?1")
            .map_err(at)?;
        let mut upsert = tx.prepare_cached(UPSERT).map_err(at)?;
        let mut delete = tx
            .prepare_cached("DELETE FROM goverse_objects WHERE object_id = ?1")
            .map_err(at)?;
        let mut record = tx.prepare_cached(RECORD).map_err(at)?;
        for w in &writes {
            let current = match epochs.get(&w.fence.shard) {
                Some(e) => *e,
                None => {
                    let e: Option<i64> = epoch_of
                        .query_row([w.fence.shard.0], |row| row.get(0))
                        .optional()
                        .map_err(at)?;
                    let e = e.unwrap_or(0) as u64;
                    epochs.insert(w.fence.shard, e);
                    e
                }
            };
            if current == 0 || current != w.fence.epoch {
                results.push(Err(Refusal::StaleFence {
                    shard: w.fence.shard,
                    current,
                    given: w.fence.epoch,
                }));
                continue;
            }
            if let Some(call) = &w.reliable {
                let (result, message, code) = record_params(call);
                let written = record
                    .execute(params![
                        call.call_id,
                        call.object_id,
                        call.object_type,
                        call.method,
                        call.request,
                        result,
                        message,
                        code,
                        status_name(&call.result),
                        now,
                    ])
                    .map_err(at)?;
                if written == 0 {
                    results.push(Err(Refusal::CallIdTaken {
                        call_id: call.call_id.clone(),
                    }));
                    continue;
                }
            }
            match &w.change {
                OwnedChange::Save(data) => {
                    upsert
                        .execute(params![
                            w.id,
                            w.object_type,
                            data,
                            w.fence.epoch as i64,
                            now
                        ])
                        .map_err(at)?;
                }
                OwnedChange::Delete => {
                    delete.execute([&w.id]).map_err(at)?;
                }
                OwnedChange::Unchanged => {}
            }
            results.push(Ok(()));
        }
    }
    tx.commit().map_err(at)?;
    Ok(results)
}

#[async_trait]
impl ObjectStore for SqliteStore {
    fn describe(&self) -> String {
        format!("SQLite file {}", self.path.display())
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.blocking(&self.writer, |conn, path| {
            let version = schema_version(conn, path)?;
            if version != SCHEMA_VERSION {
                return Err(StoreError::Schema(format!(
                    "sqlite file {} has schema version {version}, this build expects \
                     {SCHEMA_VERSION}",
                    path.display()
                )));
            }
            if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
                return Err(StoreError::ReadOnly(format!(
                    "sqlite file {} is opened read-only (check its permissions and its \
                     directory's)",
                    path.display()
                )));
            }
            // A write that is rolled back: refused on a read-only file, directory or mount.
            let at = |err| classify(path, err);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(at)?;
            tx.execute(
                "INSERT INTO goverse_shard_epochs (shard, epoch) VALUES (-1, 0)
                 ON CONFLICT (shard) DO NOTHING",
                [],
            )
            .map_err(at)?;
            tx.rollback().map_err(at)?;
            // Reading every page finds a damaged file now rather than mid-run.
            let verdict: String = conn
                .query_row("PRAGMA quick_check", [], |row| row.get(0))
                .map_err(at)?;
            if verdict != "ok" {
                return Err(StoreError::Corrupt(format!(
                    "sqlite file {} failed its integrity check: {verdict}",
                    path.display()
                )));
            }
            Ok(())
        })
        .await
    }

    async fn load_many(&self, ids: &[ObjectId]) -> Result<Vec<Option<StoredObject>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<ObjectId> = ids.to_vec();
        self.blocking(&self.reader, move |conn, path| {
            let at = |err| classify(path, err);
            let mut stmt = conn
                .prepare_cached(
                    "SELECT object_type, data, epoch FROM goverse_objects WHERE object_id = ?1",
                )
                .map_err(at)?;
            // In key order: neighbouring lookups share the B-tree pages they walk.
            let mut order: Vec<usize> = (0..ids.len()).collect();
            order.sort_unstable_by(|a, b| ids[*a].cmp(&ids[*b]));
            let mut found = vec![None; ids.len()];
            for i in order {
                let record = stmt
                    .query_row([ids[i].as_str()], |row| {
                        // State written as text (by hand, or by other tools) reads as its bytes.
                        let data = match row.get_ref(1)? {
                            rusqlite::types::ValueRef::Blob(b)
                            | rusqlite::types::ValueRef::Text(b) => b.to_vec(),
                            _ => Vec::new(),
                        };
                        Ok(StoredObject {
                            object_type: row.get(0)?,
                            data,
                            epoch: row.get::<_, i64>(2)? as u64,
                        })
                    })
                    .optional()
                    .map_err(at)?;
                found[i] = record;
            }
            Ok(found)
        })
        .await
    }

    async fn commit(&self, writes: &[Write<'_>]) -> Result<Vec<Result<(), Refusal>>, StoreError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let owned: Vec<OwnedWrite> = writes.iter().map(OwnedWrite::from).collect();
        self.blocking(&self.writer, move |conn, path| {
            commit_blocking(conn, path, owned)
        })
        .await
    }

    async fn claim_shards(&self, claims: &[Fence]) -> Result<Vec<u64>, StoreError> {
        let claims = claims.to_vec();
        self.blocking(&self.writer, move |conn, path| {
            let at = |err| classify(path, err);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(at)?;
            let mut epochs = Vec::with_capacity(claims.len());
            {
                let mut read = tx
                    .prepare_cached("SELECT epoch FROM goverse_shard_epochs WHERE shard = ?1")
                    .map_err(at)?;
                let mut write = tx
                    .prepare_cached(&format!(
                        "INSERT INTO goverse_shard_epochs (shard, epoch) VALUES (?1, ?2)
                         ON CONFLICT (shard) DO UPDATE SET epoch = excluded.epoch,
                             updated_at = {NOW}"
                    ))
                    .map_err(at)?;
                for claim in &claims {
                    let stored: Option<i64> = read
                        .query_row([claim.shard.0], |row| row.get(0))
                        .optional()
                        .map_err(at)?;
                    let epoch = next_epoch(stored.map(|e| e as u64), claim.epoch);
                    write
                        .execute(params![claim.shard.0, epoch as i64])
                        .map_err(at)?;
                    epochs.push(epoch);
                }
            }
            tx.commit().map_err(at)?;
            Ok(epochs)
        })
        .await
    }

    async fn reliable_calls(
        &self,
        call_ids: &[&str],
    ) -> Result<Vec<Option<ReliableCall>>, StoreError> {
        if call_ids.is_empty() {
            return Ok(Vec::new());
        }
        let call_ids: Vec<String> = call_ids.iter().map(|c| (*c).to_owned()).collect();
        self.blocking(&self.reader, move |conn, path| {
            let at = |err| classify(path, err);
            let mut stmt = conn
                .prepare_cached(
                    "SELECT object_id, object_type, method_name, request_data, result_data,
                            error_code, error_message, status
                     FROM goverse_reliable_calls WHERE call_id = ?1",
                )
                .map_err(at)?;
            let mut found = Vec::with_capacity(call_ids.len());
            for call_id in &call_ids {
                let row = stmt
                    .query_row([call_id], |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, String>(2)?,
                            row.get::<_, Vec<u8>>(3)?,
                            row.get::<_, Option<Vec<u8>>>(4)?,
                            row.get::<_, Option<String>>(5)?,
                            row.get::<_, Option<String>>(6)?,
                            row.get::<_, String>(7)?,
                        ))
                    })
                    .optional()
                    .map_err(at)?;
                let Some((object_id, object_type, method, request, result, code, message, status)) =
                    row
                else {
                    found.push(None);
                    continue;
                };
                let result = result_of_columns(call_id, &status, result, code, message)?;
                found.push(result.map(|result| ReliableCall {
                    call_id: call_id.clone(),
                    object_id,
                    object_type,
                    method,
                    request,
                    result,
                }));
            }
            Ok(found)
        })
        .await
    }

    async fn prune_reliable_calls(&self, age: Duration) -> Result<u64, StoreError> {
        let seconds = age.as_secs_f64();
        self.blocking(&self.writer, move |conn, path| {
            conn.execute(
                "DELETE FROM goverse_reliable_calls
                 WHERE created_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', printf('-%.3f seconds', ?1))",
                [seconds],
            )
            .map(|n| n as u64)
            .map_err(|err| classify(path, err))
        })
        .await
    }

    async fn status(&self) -> Result<StoreStatus, StoreError> {
        self.blocking(&self.reader, |conn, path| {
            let at = |err| classify(path, err);
            let count = |table: &str| -> Result<u64, StoreError> {
                conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                    row.get::<_, i64>(0)
                })
                .map(|n| n as u64)
                .map_err(at)
            };
            Ok(StoreStatus {
                schema_version: schema_version(conn, path)?,
                objects: count("goverse_objects")?,
                reliable_calls: count("goverse_reliable_calls")?,
                claimed_shards: count("goverse_shard_epochs WHERE shard >= 0")?,
            })
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
    async fn survives_reopen_with_epochs_and_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/objects.db");
        let fence = {
            let store = SqliteStore::open(&path).unwrap();
            let fence = Fence {
                shard: ShardId(3),
                epoch: store
                    .claim_shards(&[Fence {
                        shard: ShardId(3),
                        epoch: 5,
                    }])
                    .await
                    .unwrap()[0],
            };
            store
                .save(&ObjectId::from("c1"), "Counter", b"{\"value\":3}", fence)
                .await
                .unwrap()
                .unwrap();
            fence
        };
        let store = SqliteStore::open(&path).unwrap();
        store.check().await.unwrap();
        let got = store.load(&ObjectId::from("c1")).await.unwrap().unwrap();
        assert_eq!(got.data, b"{\"value\":3}");
        let again = store.claim_shards(&[fence]).await.unwrap()[0];
        assert_eq!(again, fence.epoch + 1, "the epoch survives a restart");
    }

    #[test]
    fn processes_opening_a_new_file_at_once_all_find_the_schema_current() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.db");
        let start = std::sync::Arc::new(std::sync::Barrier::new(8));
        let openers: Vec<_> = (0..8)
            .map(|_| {
                let (path, start) = (path.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    SqliteStore::open(&path).map(drop)
                })
            })
            .collect();
        for opener in openers {
            opener.join().unwrap().expect("every opener succeeds");
        }
        let conn = Connection::open(&path).unwrap();
        assert_eq!(schema_version(&conn, &path).unwrap(), SCHEMA_VERSION);
    }

    #[tokio::test]
    async fn a_file_from_before_migrations_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0].2).unwrap();
            conn.execute(
                "INSERT INTO goverse_objects (object_id, object_type, data, epoch)
                 VALUES ('kept', 'Counter', '{\"value\":9}', 12)",
                [],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        store.check().await.unwrap();
        assert_eq!(store.status().await.unwrap().schema_version, SCHEMA_VERSION);
        let got = store.load(&ObjectId::from("kept")).await.unwrap().unwrap();
        assert_eq!(got.data, b"{\"value\":9}");
        // Rows written with high epochs before shard epochs existed do not block new writes.
        let shard = ShardId(1);
        let epoch = store
            .claim_shards(&[Fence { shard, epoch: 1 }])
            .await
            .unwrap()[0];
        store
            .save(
                &ObjectId::from("kept"),
                "Counter",
                b"{\"value\":10}",
                Fence { shard, epoch },
            )
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("future.db");
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .execute(
                "INSERT INTO goverse_schema_migrations (version, description) VALUES (99, 'x')",
                [],
            )
            .unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::Schema(_)), "{err}");
        assert!(err.to_string().contains("99"), "{err}");
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_database_is_corrupt_not_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.db");
        std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        assert!(err.to_string().contains("garbage.db"), "{err}");
    }
}
