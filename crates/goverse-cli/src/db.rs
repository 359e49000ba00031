//! `goverse db init|status|verify|reset`: the object store's schema, on PostgreSQL (`--postgres
//! URL`, or `--config FILE` with upstream's `postgres:` section) or on a SQLite file (`--sqlite`).

use std::path::PathBuf;

use anyhow::Context as _;
use goverse::persistence::{ObjectStore, PostgresStore, SCHEMA_VERSION, SqliteStore};

use crate::stores::PostgresArgs;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum DbCommand {
    /// Creates the tables, or upgrades them to this build's schema. Idempotent; an upstream
    /// GoVerse database keeps its tables and rows.
    Init(Target),
    /// Shows the schema version and what the store holds.
    Status(Target),
    /// Checks the schema and the rows a node relies on; exits 1 when something is wrong.
    Verify(Target),
    /// Deletes every GoVerse table and its rows.
    Reset {
        #[command(flatten)]
        target: Target,
        /// Confirms that every object, reliable-call record and shard epoch is to be deleted.
        #[arg(long)]
        yes: bool,
    },
}

/// Which store a `db` command works on.
#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    #[command(flatten)]
    postgres: PostgresArgs,
    /// An upstream-format YAML file whose `postgres:` section names the database.
    #[arg(long, conflicts_with = "postgres")]
    config: Option<PathBuf>,
    /// A SQLite store file (as `goverse demo --data-dir DIR` keeps in DIR/objects.db).
    #[arg(long, conflicts_with_all = ["postgres", "config"])]
    sqlite: Option<PathBuf>,
}

enum Store {
    Postgres(PostgresStore),
    Sqlite(SqliteStore),
}

impl Target {
    /// Opens the store; a SQLite file is created only for `init`.
    async fn open(&self, create: bool) -> anyhow::Result<Store> {
        if let Some(path) = &self.sqlite {
            anyhow::ensure!(
                create || path.exists(),
                "{} does not exist (`goverse db init --sqlite FILE` creates one)",
                path.display()
            );
            // Opening a SQLite file creates or upgrades its schema, as `init` does.
            let store = SqliteStore::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            return Ok(Store::Sqlite(store));
        }
        let config = self.postgres.resolve(self.config.as_ref())?.context(
            "say which store: --postgres URL, --config FILE (its postgres: section) or --sqlite FILE",
        )?;
        Ok(Store::Postgres(PostgresStore::connect(&config).await?))
    }
}

pub(crate) async fn run(command: DbCommand) -> anyhow::Result<()> {
    match command {
        DbCommand::Init(target) => match target.open(true).await? {
            Store::Postgres(store) => {
                let applied = store.migrate().await?;
                if applied.is_empty() {
                    println!(
                        "{}: schema is up to date (version {SCHEMA_VERSION})",
                        store.target()
                    );
                }
                for (version, description) in applied {
                    println!(
                        "{}: applied migration {version}: {description}",
                        store.target()
                    );
                }
                Ok(())
            }
            Store::Sqlite(store) => {
                println!(
                    "{}: schema is up to date (version {SCHEMA_VERSION})",
                    store.path().display()
                );
                Ok(())
            }
        },
        DbCommand::Status(target) => {
            let store = target.open(false).await?;
            let (name, dynamic): (String, &dyn ObjectStore) = match &store {
                Store::Postgres(s) => {
                    let version = s.schema_version().await?;
                    if version == 0 {
                        println!("store           {}", s.describe());
                        println!("schema          not initialised (run `goverse db init`)");
                        return Ok(());
                    }
                    (s.describe(), s)
                }
                Store::Sqlite(s) => (s.describe(), s),
            };
            let status = dynamic.status().await?;
            println!("store           {name}");
            println!(
                "schema          version {} (this build: {SCHEMA_VERSION})",
                status.schema_version
            );
            println!("objects         {}", status.objects);
            println!("reliable calls  {}", status.reliable_calls);
            println!("claimed shards  {}", status.claimed_shards);
            Ok(())
        }
        DbCommand::Verify(target) => {
            let problems = match target.open(false).await? {
                Store::Postgres(store) => {
                    let mut problems = store.verify().await?;
                    if problems.is_empty()
                        && let Err(err) = store.check().await
                    {
                        problems.push(err.to_string());
                    }
                    problems
                }
                Store::Sqlite(store) => match store.check().await {
                    Ok(()) => Vec::new(),
                    Err(err) => vec![err.to_string()],
                },
            };
            if problems.is_empty() {
                println!("ok: schema version {SCHEMA_VERSION}, tables and rows as expected");
                return Ok(());
            }
            for problem in &problems {
                println!("problem: {problem}");
            }
            anyhow::bail!("{} problem(s) found", problems.len())
        }
        DbCommand::Reset { target, yes } => {
            let what = match (&target.sqlite, &target.postgres.postgres) {
                (Some(path), _) => format!("the SQLite file {}", path.display()),
                _ => "the PostgreSQL database".to_owned(),
            };
            if !yes {
                anyhow::bail!(
                    "reset deletes every object, reliable-call record and shard epoch in {what}; \
                     run it again with --yes to go ahead"
                );
            }
            match target.open(false).await? {
                Store::Postgres(store) => {
                    store.reset().await?;
                    println!("{}: every GoVerse table dropped", store.target());
                }
                Store::Sqlite(store) => {
                    let path = store.path().to_path_buf();
                    drop(store);
                    for suffix in ["", "-wal", "-shm"] {
                        let file = PathBuf::from(format!("{}{suffix}", path.display()));
                        if file.exists() {
                            std::fs::remove_file(&file)
                                .with_context(|| format!("cannot remove {}", file.display()))?;
                        }
                    }
                    println!("{}: deleted", path.display());
                }
            }
            Ok(())
        }
    }
}
