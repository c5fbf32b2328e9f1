//! Operator settings of a coordinator: a TOML file, overridden by flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use gantry_common::tls::TlsFiles;
use serde::{Deserialize, Serialize};

/// Everything a coordinator needs to start. Built by [`CoordinatorConfig::load`]
/// from the file and the flags; [`CoordinatorConfig::validate`] checks it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    /// Raft member id, unique in the cluster and never reused (1, 2, 3, …).
    pub id: u64,
    /// UDP address of the QUIC endpoint.
    pub listen: SocketAddr,
    /// Address peers and agents use to reach this coordinator; defaults to `listen`.
    pub advertise: Option<String>,
    /// Where the Raft log and state live (`raft.redb`).
    pub data_dir: PathBuf,
    /// Unix socket of the admin API (mode 0660, group `gantry` when it exists).
    pub admin_socket: PathBuf,
    /// TCP address serving `/metrics` and `/healthz` (nothing else) for a
    /// Prometheus scraper; "" (the default) serves them on the admin socket only.
    pub metrics_listen: String,
    /// Members that form a new cluster: id → address. Leave empty on a
    /// coordinator that will be added later with `gantryctl cluster add`.
    pub initial_members: BTreeMap<u64, String>,
    /// A node whose heartbeats stop for this long is marked down.
    pub node_down_after_secs: u64,
    /// A coordinator that has just become leader knows no heartbeats (they
    /// are not replicated): it waits this long (or `node_down_after_secs`,
    /// whichever is longer) for each node's first one before marking it
    /// down, so that a fleet reconnecting after a failover is not marked
    /// down wholesale. Nomad waits 300 s (`failover_heartbeat_ttl`).
    pub node_failover_grace_secs: u64,
    pub tls: TlsFiles,
    pub raft: RaftTuning,
    /// `tracing` filter, e.g. `info` or `gantry_coordinator=debug,info`.
    pub log_level: String,
    /// Highest wire protocol version to speak. During a rolling upgrade the
    /// cluster uses what every member speaks by itself; set this lower only
    /// to keep a newer version's features off until you decide.
    pub max_protocol_version: u32,
}

/// Raft timing. Defaults suit a LAN: failover in under a second.
///
/// A follower that knew a leader campaigns only after `election_timeout_max`
/// (the leader's lease) plus a random timeout in `[min, max)` without
/// hearing from it (`raft::election`, openraft's rule with a fresh draw per
/// campaign): 0.75–1.0 s with these defaults, that is at least three missed
/// heartbeats, so a busy host does not start needless elections. openraft
/// 0.9 gives up on each AppendEntries after one `heartbeat_interval`: at
/// 100 ms, a follower on a loaded host (3,000 simulated nodes on 2 cores)
/// missed hundreds of them and saw elections; 200 ms halves the heartbeat
/// traffic. On a slow or loaded network raise all three together.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and purge the log) after this many applied entries.
    pub snapshot_after_entries: u64,
    /// Memory redb may keep as its page cache, MiB. redb's own default is
    /// 1 GiB, which a busy store fills and never gives back.
    pub store_cache_mib: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_interval_ms: 200,
            election_timeout_min_ms: 250,
            election_timeout_max_ms: 500,
            snapshot_after_entries: 5000,
            store_cache_mib: 64,
        }
    }
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            id: 0,
            listen: SocketAddr::from(([0, 0, 0, 0], 7400)),
            advertise: None,
            data_dir: PathBuf::from("/var/lib/gantry/coordinator"),
            admin_socket: PathBuf::from("/run/gantry/coordinator.sock"),
            metrics_listen: String::new(),
            initial_members: BTreeMap::new(),
            node_down_after_secs: 10,
            node_failover_grace_secs: 30,
            tls: TlsFiles {
                ca: PathBuf::from("/etc/gantry/pki/ca.pem"),
                cert: PathBuf::from("/etc/gantry/pki/coordinator.pem"),
                key: PathBuf::from("/etc/gantry/pki/coordinator.key"),
            },
            raft: RaftTuning::default(),
            log_level: "info".to_string(),
            max_protocol_version: gantry_common::wire::PROTOCOL_VERSION,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] gantry_common::config::ConfigError),
    #[error("config: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Longest failover grace accepted (Nomad's default is 300 s).
const MAX_FAILOVER_GRACE_SECS: u64 = 86_400;

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, reason: reason.into() }
}

impl CoordinatorConfig {
    /// The address others use to reach us.
    pub fn advertise_addr(&self) -> String {
        self.advertise.clone().unwrap_or_else(|| self.listen.to_string())
    }

    /// Checks values that serde cannot: ids, timings, member list.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(invalid("id", "must be set to a positive number (each coordinator its own)"));
        }
        if self.node_down_after_secs == 0 {
            return Err(invalid("node_down_after_secs", "must be at least 1"));
        }
        if self.node_failover_grace_secs > MAX_FAILOVER_GRACE_SECS {
            return Err(invalid(
                "node_failover_grace_secs",
                format!(
                    "{} s is more than a day ({MAX_FAILOVER_GRACE_SECS}): nodes that died with the old leader would never be marked down",
                    self.node_failover_grace_secs
                ),
            ));
        }
        let (min, max) = (gantry_common::wire::MIN_PROTOCOL_VERSION, gantry_common::wire::PROTOCOL_VERSION);
        if !(min..=max).contains(&self.max_protocol_version) {
            return Err(invalid(
                "max_protocol_version",
                format!("must be {min}-{max} (the versions this build speaks)"),
            ));
        }
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 {
            return Err(invalid("raft.heartbeat_interval_ms", "must be at least 1"));
        }
        if r.election_timeout_min_ms <= r.heartbeat_interval_ms {
            return Err(invalid(
                "raft.election_timeout_min_ms",
                "must be larger than raft.heartbeat_interval_ms",
            ));
        }
        if !(1..=65_536).contains(&r.store_cache_mib) {
            return Err(invalid("raft.store_cache_mib", "must be 1-65536"));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err(invalid(
                "raft.election_timeout_max_ms",
                "must be larger than raft.election_timeout_min_ms",
            ));
        }
        if !self.initial_members.is_empty() && !self.initial_members.contains_key(&self.id) {
            return Err(invalid(
                "initial_members",
                format!("does not contain this coordinator's own id {}", self.id),
            ));
        }
        for (id, addr) in &self.initial_members {
            if *id == 0 {
                return Err(invalid("initial_members", "member ids must be positive"));
            }
            if addr.parse::<SocketAddr>().is_err() {
                return Err(invalid(
                    "initial_members",
                    format!("address {addr:?} of member {id} is not IP:PORT"),
                ));
            }
        }
        if !self.metrics_listen.is_empty() && self.metrics_listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "metrics_listen",
                format!(
                    "{:?} is not IP:PORT (or \"\" to serve metrics on the admin socket only)",
                    self.metrics_listen
                ),
            ));
        }
        if self.advertise_addr().parse::<SocketAddr>().is_err() {
            return Err(invalid("advertise", format!("{:?} is not IP:PORT", self.advertise_addr())));
        }
        Ok(())
    }
}

/// Parses `ID=ADDR` as given to `--initial-member`.
pub fn parse_member(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s.split_once('=').ok_or_else(|| format!("{s:?} is not ID=IP:PORT"))?;
    let id = id.trim().parse::<u64>().map_err(|_| format!("member id {id:?} is not a number"))?;
    let addr = addr.trim();
    addr.parse::<SocketAddr>().map_err(|_| format!("member address {addr:?} is not IP:PORT"))?;
    Ok((id, addr.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn file_with_unknown_key_is_refused() {
        let err =
            gantry_common::config::parse_toml::<CoordinatorConfig>("id = 1\nlisten_port = 3\n").unwrap_err();
        assert!(err.contains("listen_port"), "{err}");
    }

    #[test]
    fn file_parses_members_and_defaults() {
        let cfg: CoordinatorConfig = gantry_common::config::parse_toml(
            "id = 2\nlisten = \"127.0.0.1:7402\"\n[initial_members]\n1 = \"127.0.0.1:7401\"\n2 = \"127.0.0.1:7402\"\n",
        )
        .unwrap();
        assert_eq!(cfg.id, 2);
        assert_eq!(cfg.initial_members.len(), 2);
        assert_eq!(cfg.node_down_after_secs, 10);
        assert_eq!(cfg.node_failover_grace_secs, 30);
        cfg.validate().unwrap();
    }

    #[test]
    fn validation_names_the_field() {
        let mut cfg = CoordinatorConfig::default();
        assert!(cfg.validate().unwrap_err().to_string().contains("id"));
        cfg.id = 3;
        cfg.initial_members.insert(1, "127.0.0.1:1".into());
        assert!(cfg.validate().unwrap_err().to_string().contains("own id 3"));
        cfg.initial_members.insert(3, "nowhere".into());
        assert!(cfg.validate().unwrap_err().to_string().contains("nowhere"));
        cfg.initial_members.insert(3, "127.0.0.1:3".into());
        cfg.raft.election_timeout_max_ms = 10;
        assert!(cfg.validate().unwrap_err().to_string().contains("raft.election_timeout_max_ms"));
        cfg.raft = RaftTuning::default();
        cfg.validate().unwrap();
        cfg.node_failover_grace_secs = 86_401;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("node_failover_grace_secs") && err.contains("more than a day"), "{err}");
        cfg.node_failover_grace_secs = 0;
        cfg.validate().unwrap();
        cfg.metrics_listen = "localhost:9411".into();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("metrics_listen") && err.contains("not IP:PORT"), "{err}");
        cfg.metrics_listen = "127.0.0.1:9411".into();
        cfg.validate().unwrap();
    }

    #[test]
    fn member_flag_parses() {
        assert_eq!(parse_member("3=127.0.0.1:7403").unwrap(), (3, "127.0.0.1:7403".to_string()));
        assert!(parse_member("x=127.0.0.1:1").is_err());
        assert!(parse_member("3").is_err());
        assert!(parse_member("3=host").is_err());
    }
}
