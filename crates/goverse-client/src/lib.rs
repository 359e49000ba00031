//! A client of a GoVerse cluster, through its gates' gRPC API (upstream's `gate.GateService`,
//! so it also talks to upstream gates).
//!
//! The program that calls a counter:
//!
//! ```no_run
//! use goverse_client::{Client, wkt::Int32Value};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), goverse_client::CallError> {
//!     let client = Client::connect(["127.0.0.1:49000", "127.0.0.1:49001"]).await?;
//!     let total: Int32Value = client.call("Counter", "visits", "Add", Int32Value { value: 1 }).await?;
//!     println!("visits: {}", total.value);
//!     Ok(())
//! }
//! ```
//!
//! What it does for you:
//!
//! - **Failover**: one connection to one gate of the list at a time. When the gate goes away (a
//!   restart, a kill, a shutdown, a keep-alive that goes unanswered), calls in flight fail with
//!   `Unavailable` naming the gate and saying the call may or may not have run; later calls
//!   connect to the next gate, with back-off. Calls that never reached a gate go to another one
//!   by themselves.
//! - **Typed stubs**: the `…Ref` stubs `#[goverse::object]` generates call through a client as
//!   they do through a node: `CounterRef::new("visits").add(&client, Int32Value { value: 1 })`.
//! - **Calls by name** ([`Client::call`], [`Client::call_any`]), [`Client::create`],
//!   [`Client::delete`], and [`Client::describe`] for the cluster's types and message
//!   descriptors.
//! - **Reliable calls** ([`Client::call_reliable`], or a stub's `call_reliable(id)`): retried
//!   with the same call id until the outcome is known; [`new_call_id`] makes ids the way
//!   upstream's clients do; [`ClientBuilder::on_retry`] shows each retry.
//! - **Pushes** as a [`Stream`](futures::Stream) ([`Client::register`]), re-registered at another
//!   gate when the gate is lost.
//! - **Metadata** on every request ([`ClientBuilder::metadata`], [`ClientBuilder::bearer_token`])
//!   for the gate's authorisation hook, and **deadlines** per client handle
//!   ([`Client::with_timeout`]) or per stub (`with_timeout`), sent to the gate as `grpc-timeout`
//!   and honoured by the node.
//! - **TLS** ([`ClientBuilder::tls`]): gates checked against a CA, and a client certificate
//!   presented when the gates ask for one.

mod client;
mod connection;
mod pushes;
mod reliable;

pub use client::{Client, ClientBuilder};
pub use goverse_core::{CallError, ErrorCode, Message, wkt};
pub use goverse_proto::node::DescribeResponse;
pub use goverse_tls::{ALPN_H2, ClientFiles, ClientTls};
pub use pushes::{PushEvent, Pushes};
pub use reliable::{ReliableError, Retry, new_call_id};
