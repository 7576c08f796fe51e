//! Process signals: SIGTERM and SIGINT start a graceful shutdown; SIGHUP reloads the
//! configuration (like `POST /admin/reload`).

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

/// Reloads the configuration on every SIGHUP.
pub async fn reload_on_sighup(
    live: Arc<sluice_pg::LiveContext>,
    mongo: crate::admin::MongoCtx,
    loader: crate::admin::Loader,
) {
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install a SIGHUP handler; use POST /admin/reload");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP received: reloading configuration");
        let _ = crate::admin::reload(&live, mongo.as_deref(), &loader);
    }
}

/// Completes on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; use SIGKILL to stop");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
