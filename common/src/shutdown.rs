//! The stop signal of a daemon: SIGTERM (systemd, `docker stop`, `gantryctl
//! dev`) or SIGINT (Ctrl-C).

use std::future::Future;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Installs the SIGTERM and SIGINT handlers now and returns a future that
/// completes when either arrives.
///
/// Installing them eagerly matters: a handler installed lazily (when the
/// future is first polled, typically after start-up) leaves a window in which
/// the signal's default action kills the process mid-start instead of
/// stopping it cleanly. Must be called inside a tokio runtime. A handler that
/// cannot be installed is logged and its signal is never awaited.
pub fn on_terminate() -> impl Future<Output = ()> {
    let install = |kind: SignalKind, name: &'static str| match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot handle {name}: {e}");
            None
        }
    };
    let term = install(SignalKind::terminate(), "SIGTERM");
    let int = install(SignalKind::interrupt(), "SIGINT");
    async move {
        tokio::select! {
            () = recv(term, "SIGTERM") => {}
            () = recv(int, "SIGINT") => {}
        }
    }
}

async fn recv(signal: Option<Signal>, name: &'static str) {
    match signal {
        Some(mut s) => {
            s.recv().await;
            tracing::info!("{name} received; stopping");
        }
        None => std::future::pending::<()>().await,
    }
}
