//! The accept loop: hyper's HTTP/1.1 server with the head limits and header read timeout that
//! `axum::serve` does not expose, and a graceful drain on shutdown.

use std::{future::Future, time::Duration};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::net::TcpListener;

use crate::{config::ServerConfig, http_guard};

/// The HTTP/1.1 connection settings of every client connection: the head limits and the header
/// read timeout from `server`, keep-alive on.
pub fn connection_builder(config: &ServerConfig) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_header_size(http_guard::hyper_max_header_bytes(config))
        .max_buf_size(http_guard::hyper_max_header_bytes(config).max(8192) * 2)
        .max_headers(http_guard::hyper_max_headers(config))
        .keep_alive(true);
    builder
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting (new connections
/// are refused) and gives in-flight requests up to `shutdown_grace` to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let builder = connection_builder(config);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(router.clone());
                let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(connections = graceful.count(), "draining");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("drained"),
        () = tokio::time::sleep(config.shutdown_grace) => tracing::warn!("shutdown grace elapsed; closing what is left"),
    }
    Ok(())
}
