//! `goverse call`, `goverse create`, `goverse delete`: a command-line client of a gate's gRPC API.
//!
//! Requests and responses are JSON, translated with the message descriptors the gate reports
//! (`goverse.gate.v1.GateInfo/Describe`); the call itself is upstream's `gate.GateService`.

use anyhow::Context as _;
use goverse::CallError;
use goverse::gate::codec::Catalog;
use goverse_proto::gate::gate_service_client::GateServiceClient;
use goverse_proto::gate::{CallObjectRequest, CreateObjectRequest, DeleteObjectRequest};
use goverse_proto::gate_info::gate_info_client::GateInfoClient;
use goverse_proto::node::DescribeRequest;
use tonic::transport::Channel;

#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    /// The gate's gRPC address.
    #[arg(long, default_value = "127.0.0.1:49000", env = "GOVERSE_GATE")]
    gate: String,
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

/// A failure the user should see as `error: …` with exit code 1.
fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

async fn channel(gate: &str) -> anyhow::Result<Channel> {
    tonic::transport::Endpoint::from_shared(format!("http://{gate}"))
        .with_context(|| format!("bad gate address {gate:?}"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot connect to the gate at {gate}"))
}

fn call_error(err: CallError) -> anyhow::Error {
    anyhow::anyhow!("{err}")
}

pub(crate) async fn call(args: CallArgs) -> anyhow::Result<()> {
    let channel = channel(&args.target.gate).await?;
    let described = GateInfoClient::new(channel.clone())
        .describe(DescribeRequest {})
        .await
        .map_err(status_error)
        .context("cannot fetch the gate's object types")?
        .into_inner();
    let catalog = Catalog::from_describe(&described);
    let method = catalog
        .method(&args.target.object_type, &args.method)
        .map_err(call_error)?;
    let request = catalog
        .json_to_any(&method.request_type, args.request.as_bytes())
        .map_err(call_error)?;
    let response = GateServiceClient::new(channel)
        .call_object(CallObjectRequest {
            client_id: String::new(),
            r#type: args.target.object_type,
            id: args.target.object_id,
            method: args.method,
            request: Some(request),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .response
        .context("the gate returned no response message")?;
    let json = catalog.any_to_json(&response).map_err(call_error)?;
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}

pub(crate) async fn create(target: Target) -> anyhow::Result<()> {
    let response = GateServiceClient::new(channel(&target.gate).await?)
        .create_object(CreateObjectRequest {
            r#type: target.object_type,
            id: target.object_id,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!("{}", serde_json::json!({ "id": response.id }));
    Ok(())
}

pub(crate) async fn delete(target: Target) -> anyhow::Result<()> {
    GateServiceClient::new(channel(&target.gate).await?)
        .delete_object(DeleteObjectRequest {
            id: target.object_id,
            r#type: target.object_type,
        })
        .await
        .map_err(status_error)?;
    println!("{}", serde_json::json!({ "success": true }));
    Ok(())
}
