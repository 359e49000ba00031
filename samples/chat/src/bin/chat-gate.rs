//! `chat-gate`: a gate for the chat sample that also serves the web client at `/chat/`.
//! It is an ordinary GoVerse gate (same gRPC and HTTP API as `goverse gate`) with the sample's
//! page merged into its HTTP router and access rules that keep `ChatRoomMgr.RegisterRoom` for
//! objects.
//!
//! ```text
//! chat-gate --node 127.0.0.1:47000 --listen 127.0.0.1:49000 --http-listen 127.0.0.1:8080
//! ```

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use goverse::gate::{AllowAnonymous, Gate, GateConfig};
use tokio::net::TcpListener;

/// A GoVerse gate serving the chat sample's web client.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The node service to link to.
    #[arg(long, default_value = "127.0.0.1:47000")]
    node: String,
    /// gRPC address (upstream `gate.GateService`).
    #[arg(long, default_value = "127.0.0.1:49000")]
    listen: String,
    /// HTTP address (JSON API, server-sent events, the web client at /chat/).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_listen: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    goverse_sample_chat::init_logging("warn");
    let args = Args::parse();
    let grpc = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (gRPC)", args.listen))?;
    let http = TcpListener::bind(&args.http_listen)
        .await
        .with_context(|| format!("cannot listen on {} (HTTP)", args.http_listen))?;
    let grpc_addr = grpc.local_addr()?;
    let http_addr = http.local_addr()?;
    let gate = Gate::start(
        GateConfig {
            advertise_address: grpc_addr.to_string(),
            node: args.node.clone(),
            access_rules: goverse_sample_chat::access_rules(),
            lifecycle_rules: goverse_sample_chat::lifecycle_rules(),
            ..GateConfig::default()
        },
        Arc::new(AllowAnonymous),
    )?;
    let router = gate.http_router().merge(goverse_sample_chat::web::router());
    let serving = gate.serve(
        grpc,
        http,
        router,
        goverse::stop_signal(),
        Duration::from_secs(5),
    );
    // Announce once calls can reach the node (serving meanwhile; early calls get Unavailable).
    let announce = async {
        let linked = gate.wait_connected(Duration::from_secs(10)).await;
        println!(
            "chat-gate: gRPC {grpc_addr}, web client http://{http_addr}/chat/, node {}",
            args.node
        );
        if !linked {
            println!(
                "node {} not reachable yet; retrying in the background",
                args.node
            );
        }
    };
    let (served, ()) = tokio::join!(serving, announce);
    served?;
    println!("chat-gate stopped");
    Ok(())
}
