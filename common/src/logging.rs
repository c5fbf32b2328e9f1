//! The daemons' logging: `tracing` to stderr, with a filter that can be
//! replaced while running (SIGHUP reload of `log_level`).
//!
//! The filter is `tracing_subscriber`'s `Targets`: a default level and
//! per-target levels (`info`, `gantry_coordinator=debug,info`). Its
//! `EnvFilter` also matches spans and field values, but needs the regex
//! crates (about 250 KiB of every binary) for what no documented setting
//! uses; such a directive is refused with the reason.

use std::io::IsTerminal;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, Registry};

/// Changes the running log filter.
#[derive(Clone)]
pub struct LogFilter {
    handle: reload::Handle<Targets, Registry>,
}

impl LogFilter {
    /// Replaces the filter; an invalid one is refused and the old one kept.
    pub fn set(&self, filter: &str) -> Result<(), String> {
        let filter = parse(filter).map_err(|e| format!("log_level {filter:?}: {e}"))?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }
}

/// Installs the global subscriber: stderr, coloured only on a terminal; under
/// systemd (`JOURNAL_STREAM` set) without timestamps, since journald adds its own. An
/// invalid `filter` falls back to `info` with a warning.
pub fn init(filter: &str) -> LogFilter {
    let (parsed, bad) = match parse(filter) {
        Ok(f) => (f, None),
        Err(e) => (Targets::new().with_default(tracing::Level::INFO), Some(e)),
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

/// Parses a log filter: `LEVEL`, `TARGET=LEVEL`, or several, comma-separated.
pub fn parse(filter: &str) -> Result<Targets, String> {
    if filter.contains(['[', '{']) {
        return Err("span and field filters ([span{field=value}]) are not supported: use LEVEL or TARGET=LEVEL, comma-separated".into());
    }
    filter.parse::<Targets>().map_err(|e| e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tracing::Level;

    use super::*;

    #[test]
    fn levels_and_targets_parse_and_span_filters_are_refused() {
        let f = parse("gantry_coordinator=debug,info").unwrap();
        assert!(f.would_enable("gantry_coordinator::raft", &Level::DEBUG));
        assert!(!f.would_enable("openraft::core", &Level::DEBUG));
        assert!(f.would_enable("openraft::core", &Level::INFO));
        let f = parse("warn").unwrap();
        assert!(!f.would_enable("gantry_agent", &Level::INFO));
        assert!(parse("off").is_ok());
        let err = parse("[raft{id=1}]=debug").unwrap_err();
        assert!(err.contains("not supported"), "{err}");
        assert!(parse("gantry=loud").is_err());
    }
}
