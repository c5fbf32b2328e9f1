//! Host ports for workloads' named ports: picked once per allocation from
//! the configured range, kept for the allocation's life (the state file
//! holds them), reported in `AllocReport.ports`.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use gantry_common::workload::PortSpec;

/// `FIRST-LAST`, both included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<PortRange, String> {
        let bad = || format!("{s:?} is not FIRST-LAST, e.g. 20000-32000");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let first: u16 = a.trim().parse().map_err(|_| bad())?;
        let last: u16 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last {
            return Err(format!("{s:?}: ports go from low to high, 1-65535"));
        }
        Ok(PortRange { first, last })
    }
}

impl PortRange {
    pub fn len(&self) -> u32 {
        u32::from(self.last - self.first) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no free host port left in {first}-{last} for port {name:?}")]
pub struct PortsExhausted {
    pub name: String,
    pub first: u16,
    pub last: u16,
}

/// Picks a host port for each of `ports`. The scan starts at an offset
/// derived from the allocation id (so replicas do not all race for the
/// first port) and skips ports in `taken` (held by other allocations) and
/// those `is_free` says another program holds.
pub fn pick(
    alloc_id: &str,
    ports: &[PortSpec],
    range: PortRange,
    taken: &BTreeSet<u16>,
    mut is_free: impl FnMut(u16) -> bool,
) -> Result<BTreeMap<String, u16>, PortsExhausted> {
    let len = range.len();
    let offset = fnv1a(alloc_id.as_bytes()) % len;
    let mut chosen = BTreeMap::new();
    let mut used: BTreeSet<u16> = taken.clone();
    let mut next = 0u32;
    for p in ports {
        let mut found = None;
        while next < len {
            let port = range.first + ((offset + next) % len) as u16;
            next += 1;
            if !used.contains(&port) && is_free(port) {
                found = Some(port);
                break;
            }
        }
        let port = found.ok_or_else(|| PortsExhausted {
            name: p.name.clone(),
            first: range.first,
            last: range.last,
        })?;
        used.insert(port);
        chosen.insert(p.name.clone(), port);
    }
    Ok(chosen)
}

/// Whether nothing listens on `port` on any address: a bind to 0.0.0.0 succeeds.
pub fn is_free_on_host(port: u16) -> bool {
    std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ports(names: &[&str]) -> Vec<PortSpec> {
        names.iter().map(|n| PortSpec { name: n.to_string(), port: 8080 }).collect()
    }

    #[test]
    fn range_parses() {
        assert_eq!("20000-32000".parse::<PortRange>().unwrap(), PortRange { first: 20_000, last: 32_000 });
        assert_eq!("5-5".parse::<PortRange>().unwrap().len(), 1);
        assert!("32000-20000".parse::<PortRange>().is_err());
        assert!("0-10".parse::<PortRange>().is_err());
        assert!("20000".parse::<PortRange>().is_err());
        assert!("a-b".parse::<PortRange>().is_err());
    }

    #[test]
    fn picks_distinct_free_ports_deterministically() {
        let range = PortRange { first: 100, last: 109 };
        let a = pick("w.0.1", &ports(&["http", "grpc"]), range, &BTreeSet::new(), |_| true).unwrap();
        assert_eq!(a, pick("w.0.1", &ports(&["http", "grpc"]), range, &BTreeSet::new(), |_| true).unwrap());
        assert_ne!(a["http"], a["grpc"]);
        assert!(a.values().all(|p| (100..=109).contains(p)));
        // Taken and busy ports are skipped.
        let taken: BTreeSet<u16> = a.values().copied().collect();
        let busy = (100..=109).find(|p| !taken.contains(p)).unwrap();
        let b = pick("w.0.1", &ports(&["http"]), range, &taken, |p| p != busy).unwrap();
        assert!(!taken.contains(&b["http"]) && b["http"] != busy);
    }

    #[test]
    fn exhaustion_names_the_port() {
        let range = PortRange { first: 100, last: 101 };
        let err = pick("x", &ports(&["a", "b", "c"]), range, &BTreeSet::new(), |_| true).unwrap_err();
        assert_eq!(err.name, "c");
        let err = pick("x", &ports(&["a"]), range, &BTreeSet::from([100]), |p| p != 101).unwrap_err();
        assert_eq!(err.to_string(), "no free host port left in 100-101 for port \"a\"");
    }
}
