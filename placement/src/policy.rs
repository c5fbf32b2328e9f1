//! Placement policies: how the engine chooses among nodes (and GPUs) that fit.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown policy {0:?} (valid: least-loaded, binpack, spread, fgd, fgd-pack)")]
pub struct PolicyError(pub String);

/// How to choose among feasible nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Lowest live load (utilisation and used memory as reported), then reservations.
    LeastLoaded,
    /// Fullest node and GPU that still fit.
    Binpack,
    /// Emptiest node and GPU.
    Spread,
    /// Fragmentation gradient descent (Weng et al., ATC'23): least growth of
    /// expected fragmentation for the target workload.
    Fgd,
    /// FGD plus what it does not see: host CPU (capacity-aware and stranded
    /// GPU terms), capacity that model-constrained shapes need (model
    /// pressure), best-fit and empty-node tie-breakers; the project's default.
    #[default]
    FgdPack,
}

impl Policy {
    /// Every policy, in report order.
    pub const ALL: [Policy; 5] =
        [Policy::FgdPack, Policy::Fgd, Policy::Binpack, Policy::Spread, Policy::LeastLoaded];

    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Policy::LeastLoaded => "least-loaded",
            Policy::Binpack => "binpack",
            Policy::Spread => "spread",
            Policy::Fgd => "fgd",
            Policy::FgdPack => "fgd-pack",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Policy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| PolicyError(s.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Policy::ALL {
            assert_eq!(p.name().parse::<Policy>().unwrap(), p);
        }
        assert!("best".parse::<Policy>().is_err());
    }
}
