//! Serving both front ends from one call.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Gate;

/// Why [`Gate::serve`] stopped early.
#[derive(Debug, thiserror::Error)]
pub enum GateServeError {
    /// The gRPC server failed.
    #[error("gate gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The HTTP server failed.
    #[error("gate HTTP server failed: {0}")]
    Http(#[from] std::io::Error),
}

impl Gate {
    /// Serves gRPC on `grpc` and `router` (usually [`Gate::http_router`], perhaps with routes of
    /// your own merged in) on `http` until `shutdown` completes or either server fails; then ends
    /// client streams, lets open requests finish and shuts the gate down (allowing `grace` for
    /// its background work). The usual `main` of a gate process:
    ///
    /// ```no_run
    /// # async fn run(gate: goverse_gate::Gate) -> Result<(), Box<dyn std::error::Error>> {
    /// let grpc = tokio::net::TcpListener::bind("127.0.0.1:49000").await?;
    /// let http = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    /// let stop = async { let _ = tokio::signal::ctrl_c().await; };
    /// gate.serve(grpc, http, gate.http_router(), stop, std::time::Duration::from_secs(5)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn serve(
        &self,
        grpc: TcpListener,
        http: TcpListener,
        router: axum::Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
        grace: Duration,
    ) -> Result<(), GateServeError> {
        let stop = CancellationToken::new();
        let grpc = async {
            let result = self.serve_grpc(grpc, stop.clone().cancelled_owned()).await;
            stop.cancel();
            result
        };
        let http = async {
            let result = self
                .serve_http(http, router, stop.clone().cancelled_owned())
                .await;
            stop.cancel();
            result
        };
        let watch = async {
            tokio::select! {
                () = shutdown => stop.cancel(),
                () = stop.cancelled() => {}
            }
        };
        let ((), grpc, http) = tokio::join!(watch, grpc, http);
        self.shutdown(grace).await;
        grpc?;
        http?;
        Ok(())
    }
}
