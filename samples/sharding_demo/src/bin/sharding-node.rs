//! A node of the sharding demo's cluster: `sharding-node --config FILE --node-id ID`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    goverse::run::node_main(goverse_sample_sharding::register).await
}
