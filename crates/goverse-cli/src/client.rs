//! `goverse call`, `goverse create`, `goverse delete`: a command-line client of a gate's gRPC API.
//!
//! Requests and responses are JSON, translated with the message descriptors the gate reports
//! (`goverse.gate.v1.GateInfo/Describe`); the call itself is upstream's `gate.GateService`.

use std::time::Duration;

use goverse::CallError;
use goverse::client::Client;
use goverse::gate::codec::Catalog;

#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    /// The gate's gRPC address; several, comma-separated, are tried in turn.
    #[arg(
        long,
        default_value = "127.0.0.1:49000",
        env = "GOVERSE_GATE",
        value_delimiter = ','
    )]
    gate: Vec<String>,
    /// Sent as `authorization: Bearer <token>`, for a gate whose hook asks for one.
    #[arg(long, env = "GOVERSE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// How long to wait for the answer, e.g. 500ms, 10s.
    #[arg(long, default_value = "30s", value_parser = crate::tour::parse_duration)]
    timeout: Duration,
    /// The object type, e.g. Counter.
    object_type: String,
    /// The object ID.
    object_id: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct CallArgs {
    #[command(flatten)]
    target: Target,
    /// The method, e.g. Add.
    method: String,
    /// The request as JSON (protobuf's JSON mapping; wrappers as {"value": …}). Default {}.
    #[arg(default_value = "{}")]
    request: String,
}

impl Target {
    fn client(&self) -> Client {
        let builder = Client::builder(self.gate.iter().cloned())
            .call_timeout(self.timeout)
            .connect_timeout(self.timeout.min(Duration::from_secs(3)))
            .reconnect_for(self.timeout.min(Duration::from_secs(3)));
        match &self.token {
            Some(token) => builder.bearer_token(token),
            None => builder,
        }
        .build()
    }
}

/// A failure the user should see as `error: …` with exit code 1.
fn call_error(err: CallError) -> anyhow::Error {
    anyhow::anyhow!("{err}")
}

pub(crate) async fn call(args: CallArgs) -> anyhow::Result<()> {
    let client = args.target.client();
    let described = client
        .describe()
        .await
        .map_err(|err| call_error(err).context("cannot fetch the gate's object types"))?;
    let catalog = Catalog::from_describe(&described);
    let method = catalog
        .method(&args.target.object_type, &args.method)
        .map_err(call_error)?;
    let request = catalog
        .json_to_any(&method.request_type, args.request.as_bytes())
        .map_err(call_error)?;
    let response = client
        .call_any(
            &args.target.object_type,
            &args.target.object_id,
            &args.method,
            request,
        )
        .await
        .map_err(call_error)?;
    let json = catalog.any_to_json(&response).map_err(call_error)?;
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}

pub(crate) async fn create(target: Target) -> anyhow::Result<()> {
    target
        .client()
        .create(&target.object_type, &target.object_id)
        .await
        .map_err(call_error)?;
    println!("{}", serde_json::json!({ "id": target.object_id }));
    Ok(())
}

pub(crate) async fn delete(target: Target) -> anyhow::Result<()> {
    target
        .client()
        .delete(&target.object_type, &target.object_id)
        .await
        .map_err(call_error)?;
    println!("{}", serde_json::json!({ "success": true }));
    Ok(())
}
