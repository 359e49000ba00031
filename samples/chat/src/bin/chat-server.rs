//! `chat-server`: a node hosting the chat objects, serving them to gates over the node service.
//!
//! ```text
//! chat-server --listen 127.0.0.1:47000 [--data-dir DIR]
//! goverse gate --node 127.0.0.1:47000        # or chat-gate, which also serves the web client
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use goverse::persistence::SqliteStore;
use goverse::prelude::*;
use tokio::net::TcpListener;

/// A GoVerse node with the chat sample's objects (ChatRoomMgr, ChatRoom).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The node service address gates connect to.
    #[arg(long, default_value = "127.0.0.1:47000")]
    listen: String,
    /// Keep rooms (messages, members) in a SQLite file in this directory; without it they live
    /// in memory and end with the process.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    goverse_sample_chat::init_logging("warn");
    let args = Args::parse();
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?.to_string();
    let mut builder = goverse_sample_chat::register(Node::builder(NodeConfig {
        address: address.clone(),
        // What gates send for their clients is checked against the chat's rules here too.
        access_rules: goverse_sample_chat::access_rules(),
        lifecycle_rules: goverse_sample_chat::lifecycle_rules(),
        ..NodeConfig::default()
    }));
    if let Some(dir) = &args.data_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join("chat.db");
        let store = SqliteStore::open(&path)
            .with_context(|| format!("cannot open the store at {}", path.display()))?;
        builder = builder.object_store(Arc::new(store));
    }
    let node = builder.start().await.context("cannot start the node")?;
    println!("chat-server: node service on {address}; Ctrl-C or SIGTERM stops it");
    goverse::serve(node.clone(), listener, goverse::stop_signal())
        .await
        .context("the node service failed")?;
    let report = node.shutdown(Duration::from_secs(10)).await;
    println!(
        "chat-server stopped: {} objects closed, {} saved, {} unsaved",
        report.deactivated, report.saved, report.unsaved
    );
    Ok(())
}
