//! The PostgreSQL store: upstream GoVerse's tables (an upstream database opens as is, after
//! `goverse db init` adds this project's columns), one pool of connections, one transaction per
//! commit batch with array parameters (a batch costs a handful of round trips, whatever its size).

use std::collections::{HashMap, HashSet};
use std::error::Error as _;
use std::str::FromStr as _;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut as _, BytesMut};
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use goverse_core::{InvalidSetting, ObjectId};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

use crate::{
    Fence, ObjectStore, Refusal, ReliableCall, ReliableResult, SCHEMA_VERSION, StateChange,
    StoreError, StoreStatus, StoredObject, Write, json_column, result_of_columns, status_name,
};

/// Closes connections idle for `idle_timeout` beyond the first `max_idle` idle ones, until the
/// pool is gone (checked a few times per `idle_timeout`).
async fn trim_idle(pool: deadpool_postgres::WeakPool, max_idle: usize, idle_timeout: Duration) {
    let every = (idle_timeout / 4).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let mut kept = 0;
        let trimmed = pool.retain(|_, metrics| {
            kept += 1;
            kept <= max_idle || metrics.last_used() < idle_timeout
        });
        if !trimmed.removed.is_empty() {
            tracing::debug!(
                closed = trimmed.removed.len(),
                max_idle,
                "closed idle PostgreSQL connections"
            );
        }
    }
}

/// How to reach PostgreSQL. Plain data: [`PostgresConfig::validate`] names what is wrong.
#[derive(Clone)]
pub struct PostgresConfig {
    /// A libpq connection string: a URL (`postgres://user:password@host:port/database`) or
    /// `key=value` pairs (`host=… port=… user=… password=… dbname=…`).
    pub url: String,
    /// Connections in the pool. Default 16.
    pub pool_size: usize,
    /// Idle connections kept open; beyond these, a connection idle for `idle_timeout` is
    /// closed (upstream's `max_idle_conns`). Default: all of them (`None`).
    pub max_idle: Option<usize>,
    /// How long a connection beyond `max_idle` may sit idle before it is closed. Default 30 s.
    pub idle_timeout: Duration,
    /// How long connecting may take. Default 5 s.
    pub connect_timeout: Duration,
    /// Longest a statement may run on the server (`statement_timeout`); operations also give up
    /// on the client side after this plus the connect timeout. Default 10 s.
    pub statement_timeout: Duration,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection string may hold a password.
        f.debug_struct("PostgresConfig")
            .field("target", &self.target().unwrap_or_default())
            .field("pool_size", &self.pool_size)
            .field("max_idle", &self.max_idle)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

impl PostgresConfig {
    /// The defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: 16,
            max_idle: None,
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
        }
    }

    /// A connection string from the fields of upstream's `postgres:` configuration section.
    pub fn from_parts(
        host: &str,
        port: u16,
        user: &str,
        password: &str,
        database: &str,
        sslmode: &str,
    ) -> Self {
        let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        let mut url = format!(
            "host={} port={port} user={} dbname={}",
            quote(host),
            quote(user),
            quote(database)
        );
        if !password.is_empty() {
            url.push_str(&format!(" password={}", quote(password)));
        }
        if !sslmode.is_empty() {
            url.push_str(&format!(" sslmode={}", quote(sslmode)));
        }
        Self::new(url)
    }

    /// Adds libpq's `sslrootcert`, `sslcert` and `sslkey` (files; `None` leaves one out) to a
    /// `key=value` connection string.
    pub fn with_ssl_files(
        mut self,
        root_cert: Option<&std::path::Path>,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> Self {
        for (name, path) in [
            ("sslrootcert", root_cert),
            ("sslcert", cert),
            ("sslkey", key),
        ] {
            if let Some(path) = path {
                let value = path.display().to_string();
                let value = value.replace('\\', "\\\\").replace('\'', "\\'");
                self.url.push_str(&format!(" {name}='{value}'"));
            }
        }
        self
    }

    /// Checks the values, naming the first bad one.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        self.parsed()?;
        crate::pg_tls::split_ssl(&self.url).1.plan()?;
        if self.pool_size == 0 {
            return Err(InvalidSetting::new("pool_size", "must be at least 1"));
        }
        if self.idle_timeout.is_zero() {
            return Err(InvalidSetting::new("idle_timeout", "must be positive"));
        }
        if self.connect_timeout.is_zero() {
            return Err(InvalidSetting::new("connect_timeout", "must be positive"));
        }
        if self.statement_timeout.is_zero() {
            return Err(InvalidSetting::new("statement_timeout", "must be positive"));
        }
        Ok(())
    }

    /// The connection string as tokio-postgres reads it: without the TLS settings, which
    /// [`crate::pg_tls`] applies.
    fn parsed(&self) -> Result<tokio_postgres::Config, InvalidSetting> {
        let (rest, _) = crate::pg_tls::split_ssl(&self.url);
        tokio_postgres::Config::from_str(&rest).map_err(|e| {
            InvalidSetting::new("url", format!("invalid PostgreSQL connection string: {e}"))
        })
    }

    /// Where the configuration points, without the password: `host:port/database (user u)`.
    pub fn target(&self) -> Result<String, InvalidSetting> {
        let parsed = self.parsed()?;
        let ports = parsed.get_ports();
        let hosts: Vec<String> = parsed
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let host = match h {
                    tokio_postgres::config::Host::Tcp(name) => name.clone(),
                    tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                };
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                format!("{host}:{port}")
            })
            .collect();
        let hosts = if hosts.is_empty() {
            "localhost:5432".to_owned()
        } else {
            hosts.join(",")
        };
        Ok(format!(
            "{hosts}/{} (user {})",
            parsed.get_dbname().unwrap_or("postgres"),
            parsed.get_user().unwrap_or("?")
        ))
    }
}

/// Object state in PostgreSQL (upstream's `goverse_objects`, `data` as JSONB), reliable-call
/// records (`goverse_reliable_calls`) and shard epochs, through a pool of connections.
///
/// [`PostgresStore::connect`] does not change the schema: a node on a database without this
/// build's schema refuses to start and says to run `goverse db init`, which calls
/// [`PostgresStore::migrate`].
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    target: String,
    op_timeout: Duration,
    /// The TLS its new connections use, when the connection string asks for TLS.
    tls: Option<std::sync::Arc<goverse_tls::ClientTls>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// Versioned migrations: `(version, description, SQL)`. Version 1 is upstream's schema, so on an
/// upstream database it changes nothing; version 2 adds what this project needs.
const MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "upstream GoVerse tables",
        "CREATE TABLE IF NOT EXISTS goverse_objects (
            object_id   VARCHAR(255) PRIMARY KEY,
            object_type VARCHAR(255) NOT NULL,
            data        JSONB NOT NULL,
            next_rcseq  BIGINT NOT NULL DEFAULT 0,
            created_at  TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
            updated_at  TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        );
        CREATE INDEX IF NOT EXISTS idx_goverse_objects_type ON goverse_objects (object_type);
        CREATE INDEX IF NOT EXISTS idx_goverse_objects_updated_at ON goverse_objects (updated_at);
        CREATE TABLE IF NOT EXISTS goverse_reliable_calls (
            seq           BIGSERIAL UNIQUE,
            call_id       VARCHAR(255) PRIMARY KEY,
            object_id     VARCHAR(255) NOT NULL,
            object_type   VARCHAR(255) NOT NULL,
            method_name   VARCHAR(255) NOT NULL,
            request_data  BYTEA NOT NULL,
            result_data   BYTEA,
            error_message TEXT,
            status        VARCHAR(50) NOT NULL DEFAULT 'pending'
                          CHECK (status IN ('pending', 'success', 'failed', 'skipped')),
            created_at    TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
            updated_at    TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        );
        CREATE INDEX IF NOT EXISTS idx_goverse_reliable_calls_object_status
            ON goverse_reliable_calls (object_id, status);",
    ),
    (
        2,
        "fencing epochs, error codes, record retention",
        "ALTER TABLE goverse_objects ADD COLUMN IF NOT EXISTS epoch BIGINT NOT NULL DEFAULT 0;
        CREATE TABLE IF NOT EXISTS goverse_shard_epochs (
            shard      INTEGER PRIMARY KEY,
            epoch      BIGINT NOT NULL,
            updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        );
        ALTER TABLE goverse_reliable_calls ADD COLUMN IF NOT EXISTS error_code VARCHAR(64);
        -- Older upstream databases used other status names; keep their meaning.
        ALTER TABLE goverse_reliable_calls DROP CONSTRAINT IF EXISTS goverse_reliable_calls_status_check;
        UPDATE goverse_reliable_calls SET status = 'success' WHERE status = 'completed';
        UPDATE goverse_reliable_calls SET status = 'pending' WHERE status = 'processing';
        ALTER TABLE goverse_reliable_calls ADD CONSTRAINT goverse_reliable_calls_status_check
            CHECK (status IN ('pending', 'success', 'failed', 'skipped'));
        CREATE INDEX IF NOT EXISTS idx_goverse_reliable_calls_created_at
            ON goverse_reliable_calls (created_at);",
    ),
];

/// The schema version recorded in the migrations table.
const SCHEMA_VERSION_SQL: &str = "SELECT COALESCE(MAX(version), 0) FROM goverse_schema_migrations";

/// Every table this project writes, for `reset`.
const TABLES: &[&str] = &[
    "goverse_reliable_calls",
    "goverse_objects",
    "goverse_shard_epochs",
    "goverse_schema_migrations",
];

/// Sorts a PostgreSQL failure into transient, read-only, corrupt, schema or other.
fn classify(target: &str, err: &tokio_postgres::Error) -> StoreError {
    let Some(db) = err.as_db_error() else {
        // No answer from the server: the connection failed, closed or timed out.
        let cause = err
            .source()
            .map_or_else(|| err.to_string(), |s| format!("{err}: {s}"));
        return StoreError::Unavailable(format!("PostgreSQL at {target}: {cause}"));
    };
    let code = db.code();
    let text = format!(
        "PostgreSQL at {target}: {} (SQLSTATE {})",
        db.message(),
        code.code()
    );
    let class = &code.code()[..2];
    if class == "08"
        || class == "53"
        || *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || *code == SqlState::QUERY_CANCELED
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::LOCK_NOT_AVAILABLE
    {
        StoreError::Unavailable(text)
    } else if *code == SqlState::READ_ONLY_SQL_TRANSACTION
        || *code == SqlState::INSUFFICIENT_PRIVILEGE
    {
        StoreError::ReadOnly(text)
    } else if *code == SqlState::DATA_CORRUPTED || *code == SqlState::INDEX_CORRUPTED {
        StoreError::Corrupt(text)
    } else if *code == SqlState::UNDEFINED_TABLE || *code == SqlState::UNDEFINED_COLUMN {
        StoreError::Schema(format!(
            "{text}; the database lacks this build's schema: run `goverse db init`"
        ))
    } else {
        StoreError::Backend(text)
    }
}

fn pool_error(target: &str, err: PoolError) -> StoreError {
    match err {
        PoolError::Backend(e) => classify(target, &e),
        PoolError::Timeout(_) => StoreError::Unavailable(format!(
            "PostgreSQL at {target}: no connection within the timeout (is the server up?)"
        )),
        other => StoreError::Unavailable(format!("PostgreSQL at {target}: {other}")),
    }
}

/// JSONB in PostgreSQL's binary format: a version byte, then the JSON text.
struct Jsonb<'a>(&'a [u8]);

impl std::fmt::Debug for Jsonb<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Jsonb({} bytes)", self.0.len())
    }
}

impl ToSql for Jsonb<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_u8(1);
        out.put_slice(self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

/// A JSONB (or JSON) column read as its JSON text.
struct JsonText(Vec<u8>);

impl<'a> FromSql<'a> for JsonText {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::JSONB {
            match raw.split_first() {
                Some((1, text)) => Ok(Self(text.to_vec())),
                _ => Err("unsupported JSONB format version".into()),
            }
        } else {
            Ok(Self(raw.to_vec()))
        }
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }
}

impl PostgresStore {
    /// Builds the pool and opens one connection, so an unreachable server or a refused login
    /// is reported now, naming host and port. Does not check or change the schema (a node's
    /// start calls [`ObjectStore::check`]).
    pub async fn connect(config: &PostgresConfig) -> Result<Self, StoreError> {
        config.validate().map_err(StoreError::Config)?;
        let target = config.target().map_err(StoreError::Config)?;
        let mut pg = config.parsed().map_err(StoreError::Config)?;
        pg.connect_timeout(config.connect_timeout);
        pg.application_name("goverse");
        // Custom plans always: a statement prepared while a table was empty would otherwise keep
        // a generic plan (a sequential scan) for the life of the connection. A session left
        // inside a transaction (its process paused or hung mid-write) is ended by the server
        // after the statement timeout, so the locks it holds do not stall the node that took
        // its shards over.
        pg.options(format!(
            "-c statement_timeout={ms} -c idle_in_transaction_session_timeout={ms} \
             -c plan_cache_mode=force_custom_plan",
            ms = config.statement_timeout.as_millis()
        ));
        let ssl = crate::pg_tls::split_ssl(&config.url).1;
        let (mode, verify) = ssl.plan().map_err(StoreError::Config)?;
        pg.ssl_mode(mode);
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let (manager, tls) = match verify {
            None => (Manager::from_config(pg, NoTls, manager_config), None),
            Some(verify) => {
                let connector = ssl.connector(verify).map_err(StoreError::Config)?;
                let tls = connector.tls.clone();
                (
                    Manager::from_config(pg, connector, manager_config),
                    Some(tls),
                )
            }
        };
        let op_timeout = config.statement_timeout + config.connect_timeout;
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(op_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot build the connection pool: {e}")))?;
        if let Some(max_idle) = config.max_idle.filter(|m| *m < config.pool_size) {
            tokio::spawn(trim_idle(pool.weak(), max_idle, config.idle_timeout));
        }
        let store = Self {
            pool,
            target,
            op_timeout,
            tls,
        };
        let client = store.client().await.map_err(|err| match err {
            StoreError::Unavailable(why) => {
                StoreError::Unavailable(format!("cannot reach PostgreSQL: {why}"))
            }
            other => other,
        })?;
        drop(client);
        Ok(store)
    }

    /// Connections open now, and how many of them are idle.
    pub fn connections(&self) -> (usize, usize) {
        let status = self.pool.status();
        (status.size, status.available)
    }

    /// Where the store is: `host:port/database (user u)`.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The TLS client its new connections handshake with, when the connection string asks for
    /// TLS (`sslmode` other than `disable`). Reload it ([`goverse_tls::watch`]) to pick up
    /// renewed certificate files: new connections use them, open ones keep theirs.
    pub fn tls(&self) -> Option<std::sync::Arc<goverse_tls::ClientTls>> {
        self.tls.clone()
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| pool_error(&self.target, e))
    }

    /// Runs `op`, giving up after the operation timeout (a server that stopped answering).
    async fn timed<T>(
        &self,
        what: &str,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.op_timeout, op)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "PostgreSQL at {}: {what} did not finish within {:?}",
                    self.target, self.op_timeout
                )))
            })
    }

    fn err(&self) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
        |e| classify(&self.target, &e)
    }

    /// The schema version recorded in the database (0: none), and whether upstream's tables are
    /// there without it.
    async fn schema_state(&self) -> Result<(u32, bool), StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT to_regclass('goverse_schema_migrations') IS NOT NULL,
                        to_regclass('goverse_objects') IS NOT NULL",
                &[],
            )
            .await
            .map_err(self.err())?;
        let (has_migrations, has_objects): (bool, bool) = (row.get(0), row.get(1));
        if !has_migrations {
            return Ok((0, has_objects));
        }
        let version: i32 = client
            .query_one(SCHEMA_VERSION_SQL, &[])
            .await
            .map_err(self.err())?
            .get(0);
        Ok((version as u32, has_objects))
    }

    /// The schema version the database holds (0: not initialised).
    pub async fn schema_version(&self) -> Result<u32, StoreError> {
        self.timed("reading the schema version", async {
            Ok(self.schema_state().await?.0)
        })
        .await
    }

    /// Creates or upgrades the schema to this build's version; idempotent. Upstream GoVerse's
    /// tables and rows are kept. Returns the migrations applied now (empty when up to date).
    pub async fn migrate(&self) -> Result<Vec<(u32, &'static str)>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(self.err())?;
        // One migrator at a time across processes.
        tx.execute("SELECT pg_advisory_xact_lock(8192001)", &[])
            .await
            .map_err(self.err())?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS goverse_schema_migrations (
                version     INTEGER PRIMARY KEY,
                description TEXT NOT NULL,
                applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(self.err())?;
        let current: i32 = tx
            .query_one(SCHEMA_VERSION_SQL, &[])
            .await
            .map_err(self.err())?
            .get(0);
        let current = current as u32;
        if current > SCHEMA_VERSION {
            return Err(StoreError::Schema(format!(
                "database at {} has schema version {current}, newer than this build knows \
                 ({SCHEMA_VERSION}); use a newer goverse",
                self.target
            )));
        }
        let mut applied = Vec::new();
        for (version, description, sql) in MIGRATIONS {
            if *version <= current {
                continue;
            }
            tx.batch_execute(sql).await.map_err(self.err())?;
            tx.execute(
                "INSERT INTO goverse_schema_migrations (version, description) VALUES ($1, $2)",
                &[&(*version as i32), description],
            )
            .await
            .map_err(self.err())?;
            applied.push((*version, *description));
        }
        tx.commit().await.map_err(self.err())?;
        for (version, description) in &applied {
            tracing::info!(target = %self.target, version, description, "schema migrated");
        }
        Ok(applied)
    }

    /// Drops every GoVerse table and the rows in them. Irreversible.
    pub async fn reset(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {} CASCADE;
                 DROP FUNCTION IF EXISTS update_goverse_reliable_calls_timestamp() CASCADE;",
                TABLES.join(", ")
            ))
            .await
            .map_err(self.err())
    }

    /// Looks for problems a node would trip over: the schema version, the columns and
    /// constraint this build relies on, and rows it cannot read. Returns one line per problem
    /// (empty: all good).
    pub async fn verify(&self) -> Result<Vec<String>, StoreError> {
        let mut problems = Vec::new();
        let (version, _) = self.schema_state().await?;
        if version != SCHEMA_VERSION {
            problems.push(format!(
                "schema version is {version}, this build expects {SCHEMA_VERSION} \
                 (run `goverse db init`)"
            ));
            return Ok(problems);
        }
        let client = self.client().await?;
        let expected: &[(&str, &[&str])] = &[
            (
                "goverse_objects",
                &[
                    "object_id",
                    "object_type",
                    "data",
                    "next_rcseq",
                    "epoch",
                    "created_at",
                    "updated_at",
                ],
            ),
            (
                "goverse_reliable_calls",
                &[
                    "seq",
                    "call_id",
                    "object_id",
                    "object_type",
                    "method_name",
                    "request_data",
                    "result_data",
                    "error_message",
                    "error_code",
                    "status",
                    "created_at",
                    "updated_at",
                ],
            ),
            ("goverse_shard_epochs", &["shard", "epoch", "updated_at"]),
        ];
        for (table, columns) in expected {
            let rows = client
                .query(
                    "SELECT column_name::text FROM information_schema.columns
                     WHERE table_schema = current_schema() AND table_name = $1",
                    &[table],
                )
                .await
                .map_err(self.err())?;
            let found: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
            for column in *columns {
                if !found.contains(*column) {
                    problems.push(format!("table {table} has no column {column}"));
                }
            }
        }
        let bad: i64 = client
            .query_one(
                "SELECT count(*) FROM goverse_reliable_calls
                 WHERE status NOT IN ('pending', 'success', 'failed', 'skipped')",
                &[],
            )
            .await
            .map_err(self.err())?
            .get(0);
        if bad > 0 {
            problems.push(format!(
                "{bad} reliable-call records have an unknown status"
            ));
        }
        let bad: i64 = client
            .query_one(
                "SELECT count(*) FROM goverse_shard_epochs WHERE epoch < 1 AND shard >= 0",
                &[],
            )
            .await
            .map_err(self.err())?
            .get(0);
        if bad > 0 {
            problems.push(format!("{bad} shard epochs are below 1"));
        }
        Ok(problems)
    }

    async fn commit_inner(
        &self,
        writes: &[Write<'_>],
    ) -> Result<Vec<Result<(), Refusal>>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(self.err())?;

        // Lock the shards' epoch rows (shared): a claim cannot commit between this check and our
        // commit, so a write accepted here cannot land after the shard changed hands.
        let mut shards: Vec<i32> = writes.iter().map(|w| w.fence.shard.0 as i32).collect();
        shards.sort_unstable();
        shards.dedup();
        let lock = tx
            .prepare_cached(
                "SELECT shard, epoch FROM goverse_shard_epochs
                 WHERE shard = ANY($1::int[]) ORDER BY shard FOR SHARE",
            )
            .await
            .map_err(self.err())?;
        let epochs: HashMap<u32, u64> = tx
            .query(&lock, &[&shards])
            .await
            .map_err(self.err())?
            .iter()
            .map(|row| (row.get::<_, i32>(0) as u32, row.get::<_, i64>(1) as u64))
            .collect();

        let mut results: Vec<Result<(), Refusal>> = writes
            .iter()
            .map(|w| {
                let current = epochs.get(&w.fence.shard.0).copied().unwrap_or(0);
                if current == 0 || current != w.fence.epoch {
                    Err(Refusal::StaleFence {
                        shard: w.fence.shard,
                        current,
                        given: w.fence.epoch,
                    })
                } else {
                    Ok(())
                }
            })
            .collect();

        // Reliable-call records of the writes still standing; the first of a duplicated call id
        // goes in, later ones are refused like any taken id.
        let mut seen: HashSet<&str> = HashSet::new();
        let mut record_of: Vec<(usize, &ReliableCall)> = Vec::new();
        for (i, w) in writes.iter().enumerate() {
            if let (Ok(()), Some(call)) = (&results[i], w.reliable) {
                if seen.insert(call.call_id.as_str()) {
                    record_of.push((i, call));
                } else {
                    results[i] = Err(Refusal::CallIdTaken {
                        call_id: call.call_id.clone(),
                    });
                }
            }
        }
        if !record_of.is_empty() {
            let insert = tx
                .prepare_cached(
                    "INSERT INTO goverse_reliable_calls
                        (call_id, object_id, object_type, method_name, request_data, result_data,
                         error_message, error_code, status)
                     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                          $5::bytea[], $6::bytea[], $7::text[], $8::text[],
                                          $9::text[])
                     ON CONFLICT (call_id) DO UPDATE SET
                        object_id = EXCLUDED.object_id,
                        object_type = EXCLUDED.object_type,
                        method_name = EXCLUDED.method_name,
                        request_data = EXCLUDED.request_data,
                        result_data = EXCLUDED.result_data,
                        error_message = EXCLUDED.error_message,
                        error_code = EXCLUDED.error_code,
                        status = EXCLUDED.status,
                        created_at = CURRENT_TIMESTAMP,
                        updated_at = CURRENT_TIMESTAMP
                     WHERE goverse_reliable_calls.status IN ('pending', 'skipped')
                     RETURNING call_id::text",
                )
                .await
                .map_err(self.err())?;
            let calls: Vec<&ReliableCall> = record_of.iter().map(|(_, c)| *c).collect();
            let ids: Vec<&str> = calls.iter().map(|c| c.call_id.as_str()).collect();
            let objects: Vec<&str> = calls.iter().map(|c| c.object_id.as_str()).collect();
            let types: Vec<&str> = calls.iter().map(|c| c.object_type.as_str()).collect();
            let methods: Vec<&str> = calls.iter().map(|c| c.method.as_str()).collect();
            let requests: Vec<&[u8]> = calls.iter().map(|c| c.request.as_slice()).collect();
            let mut outputs: Vec<Option<&[u8]>> = Vec::with_capacity(calls.len());
            let mut messages: Vec<Option<&str>> = Vec::with_capacity(calls.len());
            let mut codes: Vec<Option<&str>> = Vec::with_capacity(calls.len());
            for c in &calls {
                match &c.result {
                    ReliableResult::Success(bytes) => {
                        outputs.push(Some(bytes));
                        messages.push(None);
                        codes.push(None);
                    }
                    ReliableResult::Failed { code, message } => {
                        outputs.push(None);
                        messages.push(Some(message));
                        codes.push(Some(code));
                    }
                }
            }
            let statuses: Vec<&str> = calls.iter().map(|c| status_name(&c.result)).collect();
            let inserted: HashSet<String> = tx
                .query(
                    &insert,
                    &[
                        &ids, &objects, &types, &methods, &requests, &outputs, &messages, &codes,
                        &statuses,
                    ],
                )
                .await
                .map_err(self.err())?
                .iter()
                .map(|row| row.get(0))
                .collect();
            for (i, call) in record_of {
                if !inserted.contains(&call.call_id) {
                    results[i] = Err(Refusal::CallIdTaken {
                        call_id: call.call_id.clone(),
                    });
                }
            }
        }

        // The last accepted change of each object is what ends up stored.
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (i, w) in writes.iter().enumerate() {
            if results[i].is_ok() && !matches!(w.change, StateChange::Unchanged) {
                last.insert(w.id.as_str(), i);
            }
        }
        let mut last: Vec<usize> = last.into_values().collect();
        last.sort_unstable();
        let mut saved = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut deleted: Vec<&str> = Vec::new();
        let mut encoded: Vec<std::borrow::Cow<'_, [u8]>> = Vec::new();
        for &i in &last {
            match writes[i].change {
                StateChange::Save(data) => encoded.push(json_column::encode(data)),
                StateChange::Delete => deleted.push(writes[i].id.as_str()),
                StateChange::Unchanged => {}
            }
        }
        let mut next = encoded.iter();
        for &i in &last {
            if let StateChange::Save(_) = writes[i].change {
                let w = &writes[i];
                saved.0.push(w.id.as_str());
                saved.1.push(w.object_type);
                saved
                    .2
                    .push(Jsonb(next.next().expect("one encoding per save")));
                saved.3.push(w.fence.epoch as i64);
            }
        }
        if !saved.0.is_empty() {
            let upsert = tx
                .prepare_cached(
                    "INSERT INTO goverse_objects (object_id, object_type, data, epoch)
                     SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::bigint[])
                     ON CONFLICT (object_id) DO UPDATE SET
                        object_type = EXCLUDED.object_type,
                        data = EXCLUDED.data,
                        epoch = EXCLUDED.epoch,
                        updated_at = CURRENT_TIMESTAMP",
                )
                .await
                .map_err(self.err())?;
            tx.execute(&upsert, &[&saved.0, &saved.1, &saved.2, &saved.3])
                .await
                .map_err(self.err())?;
        }
        if !deleted.is_empty() {
            let delete = tx
                .prepare_cached("DELETE FROM goverse_objects WHERE object_id = ANY($1::text[])")
                .await
                .map_err(self.err())?;
            tx.execute(&delete, &[&deleted]).await.map_err(self.err())?;
        }
        tx.commit().await.map_err(self.err())?;
        Ok(results)
    }
}

#[async_trait]
impl ObjectStore for PostgresStore {
    fn describe(&self) -> String {
        format!("PostgreSQL at {}", self.target)
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.timed("the start check", async {
            let (version, upstream) = self.schema_state().await?;
            if version == 0 {
                let found = if upstream {
                    "has upstream GoVerse's tables but not this build's schema"
                } else {
                    "has no GoVerse schema"
                };
                return Err(StoreError::Schema(format!(
                    "database at {} {found}: run `goverse db init --postgres URL` first",
                    self.target
                )));
            }
            if version < SCHEMA_VERSION {
                return Err(StoreError::Schema(format!(
                    "database at {} has schema version {version}, older than this build's \
                     {SCHEMA_VERSION}: run `goverse db init --postgres URL` to upgrade it",
                    self.target
                )));
            }
            if version > SCHEMA_VERSION {
                return Err(StoreError::Schema(format!(
                    "database at {} has schema version {version}, newer than this build's \
                     {SCHEMA_VERSION}: run a newer goverse",
                    self.target
                )));
            }
            let mut client = self.client().await?;
            let read_only: String = client
                .query_one("SHOW transaction_read_only", &[])
                .await
                .map_err(self.err())?
                .get(0);
            if read_only == "on" {
                return Err(StoreError::ReadOnly(format!(
                    "database at {} accepts no writes (a standby, or default_transaction_read_only)",
                    self.target
                )));
            }
            // A write that is rolled back: refused without the privileges a node needs.
            let tx = client.transaction().await.map_err(self.err())?;
            tx.execute(
                "INSERT INTO goverse_shard_epochs (shard, epoch) VALUES (-1, 0)
                 ON CONFLICT (shard) DO NOTHING",
                &[],
            )
            .await
            .map_err(self.err())?;
            tx.rollback().await.map_err(self.err())?;
            Ok(())
        })
        .await
    }

    async fn load_many(&self, ids: &[ObjectId]) -> Result<Vec<Option<StoredObject>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.timed("a load", async {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached(
                    "SELECT object_id::text, object_type::text, data, epoch
                     FROM goverse_objects WHERE object_id = ANY($1::text[])",
                )
                .await
                .map_err(self.err())?;
            let keys: Vec<&str> = ids.iter().map(ObjectId::as_str).collect();
            let rows = client.query(&stmt, &[&keys]).await.map_err(self.err())?;
            let mut found: HashMap<String, StoredObject> = HashMap::with_capacity(rows.len());
            for row in rows {
                let id: String = row.get(0);
                let data = json_column::decode(row.get::<_, JsonText>(2).0).map_err(|why| {
                    StoreError::Corrupt(format!(
                        "PostgreSQL at {}: state of {id:?}: wrapped state is not base64: {why}",
                        self.target
                    ))
                })?;
                found.insert(
                    id,
                    StoredObject {
                        object_type: row.get(1),
                        data,
                        epoch: row.get::<_, i64>(3) as u64,
                    },
                );
            }
            Ok(ids
                .iter()
                .map(|id| found.get(id.as_str()).cloned())
                .collect())
        })
        .await
    }

    async fn commit(&self, writes: &[Write<'_>]) -> Result<Vec<Result<(), Refusal>>, StoreError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        self.timed("a commit", self.commit_inner(writes)).await
    }

    async fn claim_shards(&self, claims: &[Fence]) -> Result<Vec<u64>, StoreError> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        self.timed("a shard claim", async {
            // One row per shard (the largest epoch asked for it), in shard order so concurrent
            // claims and commits lock rows in the same order.
            let mut wanted: HashMap<u32, u64> = HashMap::new();
            for c in claims {
                let e = wanted.entry(c.shard.0).or_insert(0);
                *e = (*e).max(c.epoch);
            }
            let mut shards: Vec<(i32, i64)> = wanted
                .into_iter()
                .map(|(s, e)| (s as i32, e as i64))
                .collect();
            shards.sort_unstable();
            let (ids, epochs): (Vec<i32>, Vec<i64>) = shards.into_iter().unzip();
            let client = self.client().await?;
            let rows = client
                .query(
                    "INSERT INTO goverse_shard_epochs (shard, epoch)
                     SELECT s, GREATEST(e, 1) FROM unnest($1::int[], $2::bigint[]) AS t(s, e)
                     ORDER BY s
                     ON CONFLICT (shard) DO UPDATE SET
                        epoch = GREATEST(goverse_shard_epochs.epoch + 1, EXCLUDED.epoch),
                        updated_at = CURRENT_TIMESTAMP
                     RETURNING shard, epoch",
                    &[&ids, &epochs],
                )
                .await
                .map_err(self.err())?;
            let got: HashMap<u32, u64> = rows
                .iter()
                .map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i64>(1) as u64))
                .collect();
            claims
                .iter()
                .map(|c| {
                    got.get(&c.shard.0).copied().ok_or_else(|| {
                        StoreError::Backend(format!("shard {} was not claimed", c.shard))
                    })
                })
                .collect()
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
        self.timed("a reliable-call lookup", async {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached(
                    "SELECT call_id::text, object_id::text, object_type::text, method_name::text,
                            request_data, result_data, error_code::text, error_message,
                            status::text
                     FROM goverse_reliable_calls WHERE call_id = ANY($1::text[])",
                )
                .await
                .map_err(self.err())?;
            let rows = client
                .query(&stmt, &[&call_ids])
                .await
                .map_err(self.err())?;
            let mut found: HashMap<String, ReliableCall> = HashMap::with_capacity(rows.len());
            for row in rows {
                let call_id: String = row.get(0);
                let result = result_of_columns(
                    &call_id,
                    row.get::<_, &str>(8),
                    row.get(5),
                    row.get(6),
                    row.get(7),
                )?;
                if let Some(result) = result {
                    found.insert(
                        call_id.clone(),
                        ReliableCall {
                            call_id,
                            object_id: row.get(1),
                            object_type: row.get(2),
                            method: row.get(3),
                            request: row.get(4),
                            result,
                        },
                    );
                }
            }
            Ok(call_ids.iter().map(|id| found.remove(*id)).collect())
        })
        .await
    }

    async fn prune_reliable_calls(&self, age: Duration) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "DELETE FROM goverse_reliable_calls WHERE call_id IN (
                    SELECT call_id FROM goverse_reliable_calls
                    WHERE created_at < LOCALTIMESTAMP - make_interval(secs => $1)
                    LIMIT 10000)",
            )
            .await
            .map_err(self.err())?;
        let mut total = 0;
        // Small batches: a large backlog does not hold one long transaction.
        loop {
            let removed = self
                .timed("pruning reliable-call records", async {
                    client
                        .execute(&stmt, &[&age.as_secs_f64()])
                        .await
                        .map_err(self.err())
                })
                .await?;
            total += removed;
            if removed < 10_000 {
                return Ok(total);
            }
        }
    }

    async fn status(&self) -> Result<StoreStatus, StoreError> {
        self.timed("reading the status", async {
            let (version, _) = self.schema_state().await?;
            let client = self.client().await?;
            let count = |sql: &'static str| {
                let client = &client;
                async move {
                    client
                        .query_one(sql, &[])
                        .await
                        .map(|r| r.get::<_, i64>(0) as u64)
                        .map_err(self.err())
                }
            };
            Ok(StoreStatus {
                schema_version: version,
                objects: count("SELECT count(*) FROM goverse_objects").await?,
                reliable_calls: count("SELECT count(*) FROM goverse_reliable_calls").await?,
                claimed_shards: count("SELECT count(*) FROM goverse_shard_epochs WHERE shard >= 0")
                    .await?,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use goverse_testkit::PostgresServer;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sslmode_is_honoured_against_a_server_that_takes_only_tls() {
        use goverse_tls::dev::{DevCa, Subject};
        let pki = tempfile::tempdir().unwrap();
        let year = Duration::from_secs(365 * 24 * 3600);
        let ca = DevCa::generate("PostgreSQL CA").unwrap();
        ca.write(pki.path()).unwrap();
        let other = DevCa::generate("another CA").unwrap();
        std::fs::write(pki.path().join("other.pem"), other.cert_pem()).unwrap();
        // The certificate names a host other than the one dialed: verify-ca accepts it,
        // verify-full does not.
        let issued = ca
            .issue(&Subject::new("db", vec!["db.example".into()], year))
            .unwrap();
        let mut server = PostgresServer::start();
        server.create_database("tls");
        server.enable_tls(&issued.cert_pem, &issued.key_pem, true);
        let (ca_pem, other_pem) = (pki.path().join("ca.pem"), pki.path().join("other.pem"));
        let connect = |mode: &str, root: Option<&std::path::Path>| {
            let config = PostgresConfig::from_parts(
                "127.0.0.1",
                server.port(),
                goverse_testkit::POSTGRES_USER,
                goverse_testkit::POSTGRES_PASSWORD,
                "tls",
                mode,
            )
            .with_ssl_files(root, None, None);
            async move { PostgresStore::connect(&config).await }
        };
        // Plaintext is refused by the server's rules.
        let err = connect("disable", None).await.unwrap_err().to_string();
        assert!(err.contains("no encryption"), "{err}");
        // Encrypted, unchecked; then checked against the CA, whatever the name.
        for (mode, root) in [("require", None), ("verify-ca", Some(ca_pem.as_path()))] {
            let store = connect(mode, root)
                .await
                .unwrap_or_else(|e| panic!("{mode}: {e}"));
            store.migrate().await.unwrap();
        }
        let err = connect("verify-full", Some(&ca_pem))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not name the address"), "{err}");
        let err = connect("verify-ca", Some(&other_pem))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not signed by a trusted CA"), "{err}");
        let err = connect("verify-full", None).await.unwrap_err().to_string();
        assert!(err.contains("sslrootcert"), "{err}");

        // Renewed files reach new connections without a restart once the store's TLS reloads
        // (as `goverse node` does on SIGHUP or a change of file); open connections keep theirs.
        use goverse_tls::Reloadable as _;
        let roots = pki.path().join("roots.pem");
        std::fs::copy(&ca_pem, &roots).unwrap();
        let store = connect("verify-ca", Some(&roots)).await.unwrap();
        let tls = store.tls().expect("a TLS store names its client TLS");
        let held = store.client().await.unwrap();
        std::fs::copy(&other_pem, &roots).unwrap();
        assert!(tls.reload(true).unwrap());
        // With `held` out, the pool dials a new connection: it trusts only the other CA now.
        let err = store.client().await.unwrap_err().to_string();
        assert!(err.contains("not signed by a trusted CA"), "{err}");
        held.simple_query("SELECT 1").await.unwrap();
        std::fs::copy(&ca_pem, &roots).unwrap();
        assert!(tls.reload(true).unwrap());
        let second = store.client().await.unwrap();
        second.simple_query("SELECT 1").await.unwrap();
        drop((held, second));
    }

    async fn fresh_store(server: &PostgresServer, database: &str) -> PostgresStore {
        server.create_database(database);
        let store = PostgresStore::connect(&PostgresConfig::new(server.url(database)))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        store
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_against_a_real_server() {
        let server = PostgresServer::start();
        let store = fresh_store(&server, "conformance").await;
        crate::conformance::run_all(&store).await;
        // State is JSON in `data`, readable with psql.
        let text = server.psql(
            "conformance",
            "SELECT data->>'value' FROM goverse_objects WHERE object_id = 'conf-a'",
        );
        assert_eq!(text.trim(), "2");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upstream_database_opens_after_init_with_its_rows() {
        let server = PostgresServer::start();
        server.create_database("upstream");
        // Upstream's schema and rows, as an upstream GoVerse deployment leaves them.
        server.psql(
            "upstream",
            "CREATE TABLE goverse_objects (
                object_id VARCHAR(255) PRIMARY KEY, object_type VARCHAR(255) NOT NULL,
                data JSONB NOT NULL, next_rcseq BIGINT NOT NULL DEFAULT 0,
                created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
                updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP);
             CREATE TABLE goverse_reliable_calls (
                seq BIGSERIAL UNIQUE, call_id VARCHAR(255) PRIMARY KEY,
                object_id VARCHAR(255) NOT NULL, object_type VARCHAR(255) NOT NULL,
                method_name VARCHAR(255) NOT NULL, request_data BYTEA NOT NULL,
                result_data BYTEA, error_message TEXT,
                status VARCHAR(50) NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'success', 'failed', 'skipped')),
                created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
                updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP);
             INSERT INTO goverse_objects (object_id, object_type, data)
                VALUES ('Counter-1', 'Counter', '{\"value\": 41}');
             INSERT INTO goverse_reliable_calls (call_id, object_id, object_type, method_name,
                request_data, result_data, status)
                VALUES ('old-call', 'Counter-1', 'Counter', 'Add', '\\x0a', '\\x0b', 'success');",
        );
        let config = PostgresConfig::new(server.url("upstream"));
        let store = PostgresStore::connect(&config).await.unwrap();
        let err = store.check().await.unwrap_err();
        assert!(
            err.to_string().contains("upstream GoVerse's tables")
                && err.to_string().contains("goverse db init"),
            "{err}"
        );
        assert_eq!(store.migrate().await.unwrap().len(), 2);
        assert!(store.migrate().await.unwrap().is_empty(), "idempotent");
        store.check().await.unwrap();
        assert!(store.verify().await.unwrap().is_empty());
        let got = store
            .load(&ObjectId::from("Counter-1"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&got.data).unwrap(),
            serde_json::json!({"value": 41})
        );
        let call = store.reliable_call("old-call").await.unwrap().unwrap();
        assert_eq!(call.result, ReliableResult::Success(vec![0x0b]));
        let status = store.status().await.unwrap();
        assert_eq!((status.objects, status.reliable_calls), (1, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_servers_and_bad_schemas_are_named() {
        let port = goverse_testkit::free_port();
        let config = PostgresConfig::new(format!(
            "postgres://goverse:secret@127.0.0.1:{port}/goverse"
        ));
        let err = PostgresStore::connect(&config).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
        assert!(!format!("{config:?}").contains("secret"));

        let server = PostgresServer::start();
        server.create_database("empty");
        let store = PostgresStore::connect(&PostgresConfig::new(server.url("empty")))
            .await
            .unwrap();
        let err = store.check().await.unwrap_err();
        assert!(
            matches!(err, StoreError::Schema(_)) && err.to_string().contains("goverse db init"),
            "{err}"
        );
        store.migrate().await.unwrap();
        server.psql(
            "empty",
            "INSERT INTO goverse_schema_migrations (version, description) VALUES (42, 'future')",
        );
        let err = store.check().await.unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
        store.reset().await.unwrap();
        assert_eq!(store.schema_version().await.unwrap(), 0);

        let wrong = PostgresConfig::new(format!(
            "postgres://goverse:wrong-password@127.0.0.1:{}/empty",
            server.port()
        ));
        let err = PostgresStore::connect(&wrong).await.unwrap_err();
        assert!(err.to_string().contains("password"), "{err}");
    }
}
