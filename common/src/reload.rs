//! Reloading a daemon's configuration on SIGHUP (`systemctl reload`).

use std::future::Future;

use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::config::plan_reload;
use crate::systemd;

/// Installs the SIGHUP handler now and returns the loop that serves it.
///
/// On each SIGHUP the loop calls `load` (re-read the file, flags still win,
/// validate), then `apply(new, running)`, which copies the settings listed
/// in `reloadable` from `new` into `running` and acts on them. Every other
/// changed key is logged as needing a restart. A file that does not load or
/// validate changes nothing. systemd sees RELOADING=1, then READY=1.
///
/// The handler is installed before the loop is first polled: SIGHUP's default
/// action ends the process, so a lazily installed handler would let an early
/// `systemctl reload` kill the daemon.
pub fn on_sighup<C, L, A>(
    reloadable: &'static [&'static str],
    mut running: C,
    load: L,
    mut apply: A,
) -> impl Future<Output = ()>
where
    C: Serialize,
    L: Fn() -> Result<C, String>,
    A: FnMut(&C, &mut C),
{
    let hup = signal(SignalKind::hangup());
    async move {
        let mut hup = match hup {
            Ok(hup) => hup,
            Err(e) => {
                warn!("cannot listen for SIGHUP ({e}); configuration reload is unavailable");
                return;
            }
        };
        while hup.recv().await.is_some() {
            systemd::reloading();
            let new = match load() {
                Ok(new) => new,
                Err(e) => {
                    warn!("reload refused, configuration unchanged: {e}");
                    systemd::ready("running; last reload failed, see the journal");
                    continue;
                }
            };
            match plan_reload(&running, &new, reloadable) {
                Ok(plan) => {
                    apply(&new, &mut running);
                    info!(applied = ?plan.apply, needs_restart = ?plan.restart, "configuration reloaded");
                }
                Err(e) => warn!("reload: comparing configurations: {e}"),
            }
            systemd::ready("running; configuration reloaded");
        }
    }
}
