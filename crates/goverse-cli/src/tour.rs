//! `goverse demo --tour`: one node on the embedded defaults, the counter sample, and a short
//! scripted workload that shows activation, turns, idle deactivation and reactivation with state,
//! then exits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use goverse::persistence::{ObjectStore, SqliteStore};
use goverse::prelude::*;
use goverse_sample_counter::{Counter, CounterRef};

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len()),
    );
    let value: f64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}: expected e.g. 500ms, 2s, 1m, 1h"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" | "" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        _ => {
            return Err(format!(
                "bad duration unit in {text:?}: use ms, s, m, h or d"
            ));
        }
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// The demo's SQLite store: `objects.db` in `data_dir` (created if missing), or in a temporary
/// directory that lives as long as the returned guard.
pub(crate) fn open_store(
    data_dir: Option<PathBuf>,
) -> anyhow::Result<(Option<tempfile::TempDir>, PathBuf, Arc<SqliteStore>)> {
    let (temp, dir) = match data_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            (None, dir)
        }
        None => {
            let temp = tempfile::tempdir().context("cannot create a temporary data directory")?;
            let dir = temp.path().to_path_buf();
            (Some(temp), dir)
        }
    };
    let db = dir.join("objects.db");
    let store = SqliteStore::open(&db)
        .with_context(|| format!("cannot open the store at {}", db.display()))?;
    Ok((temp, db, Arc::new(store)))
}

/// The node's registered type names, comma-separated.
pub(crate) fn type_list(node: &Node) -> String {
    let names: Vec<&str> = node.types().iter().map(|t| t.name).collect();
    names.join(", ")
}

fn step(title: &str) {
    println!("\n== {title}");
}

pub(crate) async fn run(data_dir: Option<PathBuf>, idle_timeout: Duration) -> anyhow::Result<()> {
    let (_temp, db, store) = open_store(data_dir)?;
    let config = NodeConfig::default();
    let node = Node::builder(config)
        .register_with(TypeOptions::<Counter>::default().idle_timeout(idle_timeout))
        .object_store(store.clone())
        .start()
        .await
        .context("cannot start the node")?;
    println!("GoVerse demo: one node on the embedded defaults");
    println!("  node       {}", node.address());
    println!(
        "  shards     {} (all owned by this node; in-memory cluster store)",
        node.config().shard_count
    );
    println!("  store      SQLite at {}", db.display());
    println!("  types      {}", crate::tour::type_list(&node));

    step("Activation on first call");
    let counter = CounterRef::new("my-counter");
    println!(
        "  my-counter lands on shard {}",
        goverse::shard_of(counter.id(), node.config().shard_count)?
    );
    let value = counter.add(&node, Int32Value { value: 5 }).await?;
    println!(
        "  Counter/my-counter Add(5) -> {}   (activated on demand)",
        value.value
    );
    node.create_object("Counter", "created-explicitly").await?;
    node.create_object("Counter", "created-explicitly").await?;
    println!("  create_object twice on created-explicitly -> one activation (idempotent)");
    println!("  activations so far: {}", node.stats().activations);

    step("Turns: 64 concurrent callers, 100 Add(1) each, on one counter");
    let started = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..64 {
        let node = node.clone();
        callers.push(tokio::spawn(async move {
            let shared = CounterRef::new("shared-counter");
            for _ in 0..100 {
                shared.add(&node, Int32Value { value: 1 }).await?;
            }
            Ok::<_, CallError>(())
        }));
    }
    for caller in callers {
        caller.await??;
    }
    let total = CounterRef::new("shared-counter")
        .get(&node, Empty {})
        .await?;
    println!(
        "  shared-counter = {} after 6400 concurrent adds in {:.1} ms: write turns run one at a time, no update lost",
        total.value,
        started.elapsed().as_secs_f64() * 1e3
    );

    step("Many objects: 1000 counters, 10 calls each");
    let started = Instant::now();
    let mut callers = Vec::new();
    for chunk in 0..8 {
        let node = node.clone();
        callers.push(tokio::spawn(async move {
            for i in (chunk..1000).step_by(8) {
                let c = CounterRef::new(format!("counter-{i}"));
                for _ in 0..10 {
                    c.add(&node, Int32Value { value: 1 }).await?;
                }
            }
            Ok::<_, CallError>(())
        }));
    }
    for caller in callers {
        caller.await??;
    }
    let stats = node.stats();
    println!(
        "  {} objects active, {} activations, 10000 calls in {:.1} ms",
        stats.active_objects,
        stats.activations,
        started.elapsed().as_secs_f64() * 1e3
    );

    step("Errors name what was wrong");
    let err = node
        .call(
            "Counter",
            "my-counter",
            "Multiply",
            Payload::typed(Int32Value { value: 2 }),
        )
        .await
        .unwrap_err();
    println!("  unknown method  -> {err}");
    let err = node
        .call(
            "Counter",
            "my-counter",
            "Add",
            Payload::typed(StringValue { value: "5".into() }),
        )
        .await
        .unwrap_err();
    println!("  wrong payload   -> {err}");
    let err = CounterRef::new("shard#99999/x")
        .get(&node, Empty {})
        .await
        .unwrap_err();
    println!("  bad object id   -> {err}");

    step(&format!(
        "Idle deactivation (counters idle for {:?} are saved and deactivated)",
        idle_timeout
    ));
    let started = Instant::now();
    let limit = idle_timeout * 4 + Duration::from_secs(10);
    loop {
        let active = node.stats().active_objects;
        if active == 0 {
            break;
        }
        if started.elapsed() > limit {
            anyhow::bail!("objects still active after {limit:?}: {active}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = node.stats();
    println!(
        "  all objects deactivated after {:.1} s: {} deactivations, {} saves, {} records in SQLite",
        started.elapsed().as_secs_f64(),
        stats.deactivations,
        stats.saves,
        store.count().await?
    );

    step("Reactivation with state intact");
    let value = CounterRef::new("my-counter").get(&node, Empty {}).await?;
    println!(
        "  Counter/my-counter Get -> {}   (reactivated from SQLite)",
        value.value
    );
    let value = CounterRef::new("shared-counter")
        .add(&node, Int32Value { value: 1 })
        .await?;
    println!("  Counter/shared-counter Add(1) -> {}", value.value);
    if value.value != 6401 {
        anyhow::bail!(
            "shared-counter lost state: expected 6401, got {}",
            value.value
        );
    }

    step("Shutdown");
    let report = node.shutdown(Duration::from_secs(10)).await;
    println!("  {report}; shards released, lease revoked");
    if report.unsaved > 0 {
        anyhow::bail!("{} object states could not be saved", report.unsaved);
    }
    println!("\ndemo finished");
    Ok(())
}
