//! Loading TOML configuration files.

use std::path::Path;

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

/// Reads and parses a TOML file. Unknown keys are refused by the target type
/// (`#[serde(deny_unknown_fields)]`); the error names the key and the line.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
    parse_toml(&text).map_err(|message| ConfigError::Parse { path: path.display().to_string(), message })
}

/// Loads a daemon's config: the file given on the command line, else
/// `default_path` when it exists (a packaged install), else built-in defaults.
pub fn load_or_default<T: DeserializeOwned + Default>(
    explicit: Option<&Path>,
    default_path: &Path,
) -> Result<T, ConfigError> {
    match explicit {
        Some(path) => load_toml(path),
        None if default_path.exists() => load_toml(default_path),
        None => Ok(T::default()),
    }
}

/// Parses TOML text; the error is the parser's message (field, line, reason).
pub fn parse_toml<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
}

/// The settings that differ between two versions of a config, as dotted key
/// paths (`log_level`, `tls.cert`, `labels.zone`), sorted. A key present in
/// only one of them counts as changed.
/// Used on SIGHUP to tell which changes apply now and which need a restart.
pub fn changed_keys<T: serde::Serialize>(old: &T, new: &T) -> Result<Vec<String>, String> {
    // JSON rather than TOML values: TOML refuses maps with integer keys (initial_members).
    let old = serde_json::to_value(old).map_err(|e| e.to_string())?;
    let new = serde_json::to_value(new).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    diff_values("", &old, &new, &mut out);
    out.sort();
    Ok(out)
}

/// What a reload does with the changed settings: `apply` are applied in
/// place, `restart` only take effect after a restart.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    pub apply: Vec<String>,
    pub restart: Vec<String>,
}

/// Sorts the settings changed between `running` and `new` into those the
/// daemon reloads (`reloadable`: top-level keys or sections) and the rest.
pub fn plan_reload<T: serde::Serialize>(
    running: &T,
    new: &T,
    reloadable: &[&str],
) -> Result<ReloadPlan, String> {
    let mut plan = ReloadPlan::default();
    for key in changed_keys(running, new)? {
        let top = key.split('.').next().unwrap_or_default();
        if reloadable.contains(&top) {
            plan.apply.push(key);
        } else {
            plan.restart.push(key);
        }
    }
    Ok(plan)
}

fn diff_values(prefix: &str, old: &serde_json::Value, new: &serde_json::Value, out: &mut Vec<String>) {
    match (old, new) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for key in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => diff_values(&path, x, y, out),
                    _ => out.push(path),
                }
            }
        }
        (a, b) if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Small {
        level: String,
    }

    #[test]
    fn load_or_default_prefers_explicit_then_default_path_then_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let explicit = dir.path().join("explicit.toml");
        let default = dir.path().join("default.toml");
        std::fs::write(&explicit, "level = \"debug\"\n").unwrap();
        // No default file yet: built-in defaults.
        assert_eq!(load_or_default::<Small>(None, &default).unwrap(), Small::default());
        std::fs::write(&default, "level = \"warn\"\n").unwrap();
        assert_eq!(load_or_default::<Small>(None, &default).unwrap().level, "warn");
        assert_eq!(load_or_default::<Small>(Some(&explicit), &default).unwrap().level, "debug");
        // An explicit file that does not exist is an error naming it, not a silent default.
        let missing = dir.path().join("missing.toml");
        let err = load_or_default::<Small>(Some(&missing), &default).unwrap_err().to_string();
        assert!(err.contains("missing.toml"), "{err}");
    }

    #[derive(serde::Serialize)]
    struct Cfg {
        log_level: String,
        members: std::collections::BTreeMap<u64, String>,
        tls: Tls,
        labels: std::collections::BTreeMap<String, String>,
    }
    #[derive(serde::Serialize)]
    struct Tls {
        cert: String,
        port: u16,
    }

    fn cfg(level: &str, cert: &str, zone: &str) -> Cfg {
        Cfg {
            log_level: level.into(),
            members: [(1, "127.0.0.1:1".to_string())].into(),
            tls: Tls { cert: cert.into(), port: 1 },
            labels: [("zone".to_string(), zone.to_string())].into(),
        }
    }

    #[test]
    fn names_changed_settings_with_dotted_paths() {
        assert!(changed_keys(&cfg("info", "a", "z"), &cfg("info", "a", "z")).unwrap().is_empty());
        assert_eq!(
            changed_keys(&cfg("info", "a", "z"), &cfg("debug", "b", "y")).unwrap(),
            vec!["labels.zone".to_string(), "log_level".to_string(), "tls.cert".to_string()]
        );
    }

    #[test]
    fn reload_plan_splits_reloadable_from_restart() {
        let plan = plan_reload(&cfg("info", "a", "z"), &cfg("debug", "b", "z"), &["log_level"]).unwrap();
        assert_eq!(plan.apply, vec!["log_level".to_string()]);
        assert_eq!(plan.restart, vec!["tls.cert".to_string()]);
    }
}
