//! The gateway running: both listeners, the background tasks (JWKS refresh, store sweep, secret
//! reload) and the shutdown sequence (readiness off, drain, stop).

use std::{future::Future, sync::Arc};

use tokio::net::TcpListener;

use crate::{
    admin,
    observability::audit,
    router, server,
    state::{App, AppState},
};

/// Runs the gateway on `listener` until `shutdown` resolves: fetches the JWKS (if any), starts
/// the background sweeper, serves, then drains.
pub async fn run(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    run_with_admin(listener, None, app, shutdown).await
}

/// Like [`run`], with the admin listener (health, readiness, metrics) on `admin`. When
/// `shutdown` resolves, readiness turns false first, then the public listener closes and
/// in-flight requests get `server.shutdown_grace` to finish; the admin listener stays up until
/// the drain is over.
pub async fn run_with_admin(
    listener: TcpListener,
    admin: Option<TcpListener>,
    app: App,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let state = AppState(Arc::new(app));
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_task = admin.map(|listener| {
        let router = admin::router(state.clone());
        tokio::spawn(async move {
            let stopped = async {
                let _ = admin_stopped.await;
            };
            axum::serve(listener, router)
                .with_graceful_shutdown(stopped)
                .await
        })
    });
    let jwks_refresh = state
        .verifier
        .start(state.config.auth.jwks.refresh_interval)
        .await;
    let sweeper = spawn_sweeper(state.clone());
    let reloader = spawn_reloader(state.clone());
    let draining = {
        let state = state.clone();
        async move {
            shutdown.await;
            state
                .draining
                .store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::info!("draining: readiness is now false");
        }
    };
    let result = server::serve(
        listener,
        router::app(state.clone()),
        &state.config.server,
        draining,
    )
    .await;
    sweeper.abort();
    reloader.abort();
    if let Some(task) = jwks_refresh {
        task.abort();
    }
    let _ = admin_stop.send(());
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    result
}

/// Forgets uploads past their memory (auditing those never confirmed) and whole rate budgets,
/// every `store.sweep_interval`.
fn spawn_sweeper(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let period = state.config.store.sweep_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            ticker.tick().await;
            match state.store.purge(state.clock.now()).await {
                Ok(expired) => {
                    for upload in &expired {
                        audit::expired(&state.metrics, upload);
                    }
                }
                Err(error) => tracing::warn!(%error, "store sweep failed"),
            }
        }
    })
}

/// Re-reads secret and key files every `reload.interval` (when their content changed) and on
/// SIGHUP (always).
fn spawn_reloader(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let period = state.config.reload.interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let forced = tokio::select! {
                _ = ticker.tick() => false,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            #[cfg(not(unix))]
            let forced = {
                ticker.tick().await;
                false
            };
            if forced || state.reloader.watches_files() {
                state.reload(if forced { "sighup" } else { "file" }, forced);
            }
        }
    })
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutdown requested");
}
