//! The daemons' logging: `tracing` to stderr, with a filter that can be
//! replaced while running (SIGHUP reload of `log_level`).

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Changes the running log filter.
#[derive(Clone)]
pub struct LogFilter {
    handle: reload::Handle<EnvFilter, Registry>,
}

impl LogFilter {
    /// Replaces the filter; an invalid one is refused and the old one kept.
    pub fn set(&self, filter: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(filter).map_err(|e| format!("log_level {filter:?}: {e}"))?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }
}

/// Installs the global subscriber: stderr, coloured only on a terminal; under
/// systemd (`JOURNAL_STREAM` set) without timestamps, since journald adds its own. An
/// invalid `filter` falls back to `info` with a warning.
pub fn init(filter: &str) -> LogFilter {
    let (parsed, bad) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    let (layer, handle) = reload::Layer::new(parsed);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let colour = std::io::stderr().is_terminal();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(colour);
    let registry = tracing_subscriber::registry().with(layer);
    if journald {
        registry.with(fmt.without_time().with_ansi(false)).init();
    } else {
        registry.with(fmt).init();
    }
    if let Some(e) = bad {
        tracing::warn!("log_level {filter:?} is not a valid filter ({e}); using info");
    }
    LogFilter { handle }
}
