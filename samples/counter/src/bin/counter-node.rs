//! A node of a configured cluster serving the counter sample's types: the whole node program a
//! user writes. Run one per `nodes` entry of the file:
//!
//! ```text
//! goverse config gen --nodes 3 --gates 1 -o cluster.yml
//! counter-node --config cluster.yml --node-id node-1
//! ```

use goverse_sample_counter::{Counter, DurableCounter};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    goverse::run::node_main(|node| node.register::<Counter>().register::<DurableCounter>()).await
}
