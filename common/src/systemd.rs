//! systemd service notifications (`sd_notify(3)`) for `Type=notify` units.
//!
//! Every function here is a no-op when the process was not started by
//! systemd (no `NOTIFY_SOCKET`), so the daemons call them unconditionally.
//! Failures to notify are logged at debug level and otherwise ignored: a
//! daemon must not stop serving because journald or PID 1 is busy.
//!
//! Child processes inherit `NOTIFY_SOCKET` and `WATCHDOG_USEC`; the workspace
//! forbids the `unsafe` needed to unset them, so whatever spawns workloads as
//! children must remove them from the child's environment (`env_remove`).

use std::future::Future;
use std::time::Duration;

use sd_notify::NotifyState;

/// READY=1: the daemon can serve. Sending it again (e.g. after a reload) is harmless.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// STATUS=…: one line shown by `systemctl status`.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// RELOADING=1 while a SIGHUP reload runs; follow with [`ready`].
pub fn reloading() {
    send(&[NotifyState::Reloading, NotifyState::Status("reloading configuration")]);
}

/// STOPPING=1: shutdown has begun.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// The watchdog interval systemd expects pings within (`WatchdogSec=`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Pings the watchdog at half of `WatchdogSec=` for as long as `healthy()` holds,
/// until `stop` completes. Returns at once when no watchdog is configured.
///
/// Pinging from a task on the daemon's own runtime means a wedged runtime
/// stops the pings, and systemd restarts the daemon; `healthy` lets a daemon
/// add what it knows (e.g. the Raft core has not failed).
pub async fn watchdog(healthy: impl Fn() -> bool, stop: impl Future<Output = ()>) {
    let Some(interval) = watchdog_interval() else { return };
    let mut tick = tokio::time::interval(interval / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return,
        }
        if healthy() {
            send(&[NotifyState::Watchdog]);
        } else {
            tracing::warn!("unhealthy: not pinging the systemd watchdog");
        }
    }
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify: {e}");
    }
}
