//! Where the commands find their object store: `--postgres URL`, the `postgres:` section of an
//! upstream YAML file (`--config FILE`), or a SQLite file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use goverse::persistence::PostgresConfig;

use crate::tour::parse_duration;

/// PostgreSQL connection options shared by `db`, `demo` and `bench`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PostgresArgs {
    /// PostgreSQL to use: a URL (postgres://user:password@host:port/database) or libpq
    /// key=value pairs.
    #[arg(long, env = "GOVERSE_POSTGRES")]
    pub(crate) postgres: Option<String>,
    /// Connections in the PostgreSQL pool (default 16, or the config file's pool_size).
    #[arg(long)]
    pub(crate) pg_pool_size: Option<usize>,
    /// Longest a PostgreSQL statement may run (default 10s, or the config file's
    /// statement_timeout).
    #[arg(long, value_parser = parse_duration)]
    pub(crate) pg_statement_timeout: Option<Duration>,
}

/// The parts of an upstream configuration file the store commands read. Other sections are
/// read by the commands that use them.
#[derive(Debug, serde::Deserialize)]
struct ConfigFile {
    #[serde(default)]
    postgres: Option<goverse::config::PostgresSection>,
}

/// Reads the `postgres:` section of `path`, naming the file (and the line, for YAML errors).
pub(crate) fn postgres_from_file(path: &Path) -> anyhow::Result<PostgresConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    // The file as the nodes read it: with the GOVERSE_* variables of this environment applied
    // (the database password is usually one).
    let env: Vec<(String, String)> = std::env::vars().collect();
    let doc = goverse::config::with_env_overrides(&text, &path.display().to_string(), &env)?;
    let file: ConfigFile = serde_yaml_ng::from_value(doc)
        .with_context(|| format!("invalid configuration in {}", path.display()))?;
    let section = file
        .postgres
        .with_context(|| format!("{} has no postgres: section", path.display()))?;
    let config = section.store_config();
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("{}: postgres: {e}", path.display()))?;
    Ok(config)
}

impl PostgresArgs {
    /// The PostgreSQL configuration these options (or `config`) give, if any.
    pub(crate) fn resolve(
        &self,
        config: Option<&PathBuf>,
    ) -> anyhow::Result<Option<PostgresConfig>> {
        let mut resolved = match (&self.postgres, config) {
            (Some(url), _) => PostgresConfig::new(url.clone()),
            (None, Some(path)) => postgres_from_file(path)?,
            (None, None) => return Ok(None),
        };
        if let Some(size) = self.pg_pool_size {
            resolved.pool_size = size;
        }
        if let Some(timeout) = self.pg_statement_timeout {
            resolved.statement_timeout = timeout;
        }
        resolved.validate().map_err(|e| anyhow::anyhow!(e))?;
        Ok(Some(resolved))
    }
}
