//! `goverse inspector --config FILE`: the web UI and API over a running cluster.

use std::path::PathBuf;

use anyhow::Context;
use goverse::inspector::{Inspector, InspectorConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug)]
pub(crate) struct InspectorArgs {
    /// The cluster's configuration file (its `inspector.http_addr` is where it serves).
    #[arg(long)]
    config: PathBuf,
    /// Listen here instead of the file's `inspector.http_addr`.
    #[arg(long)]
    listen: Option<String>,
}

pub(crate) async fn run(args: InspectorArgs) -> anyhow::Result<()> {
    let file = crate::cluster::load(&args.config)?;
    let listen = args
        .listen
        .or_else(|| file.inspector.as_ref().and_then(|i| i.http_addr.clone()))
        .context(
            "where should the inspector listen? Set inspector.http_addr in the configuration \
             file (e.g. 127.0.0.1:8090), or pass --listen",
        )?;
    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (inspector HTTP)"))?;
    let store = goverse::run::connect_cluster(&file).await?;
    let inspector = Inspector::start(
        store,
        &file.cluster.etcd.prefix,
        file.cluster.shards,
        InspectorConfig {
            admin_token: file.cluster.admin_token.clone(),
            peer_secret: file.cluster.secret.clone(),
            ..InspectorConfig::default()
        },
    )
    .await
    .context("cannot read the cluster")?;
    let stopping = goverse::stop_signal();
    println!(
        "inspector of cluster {} ({} shards): http://{}/{}",
        file.cluster.etcd.prefix,
        file.cluster.shards,
        listener.local_addr()?,
        if file.cluster.admin_token.is_some() {
            ""
        } else {
            "  (operator actions off: no cluster.admin_token)"
        }
    );
    serve(inspector, listener, file.connection_limits(), stopping).await?;
    println!("inspector stopped");
    Ok(())
}

/// Serves `inspector` on `listener` until `stopping`, then ends its event streams and drains.
pub(crate) async fn serve(
    inspector: Inspector,
    listener: TcpListener,
    limits: goverse::ConnectionLimits,
    stopping: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let router = inspector.router();
    let on_stop = move || inspector.stop();
    let served = tokio::spawn(goverse::gate::serve_router(
        listener,
        router,
        limits,
        "inspector HTTP",
        stop.clone().cancelled_owned(),
        on_stop,
    ));
    stopping.await;
    stop.cancel();
    served.await??;
    Ok(())
}
