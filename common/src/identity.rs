//! Who a peer is: the role and name that its certificate carries.
//!
//! Certificates issued by `gantryctl certs issue` carry the identity twice: a
//! subject `CN=<name>, OU=<role>` for people reading them, and a URI SAN
//! `urn:gantry:<role>:<name>` that the code trusts (see [`crate::tls`]).

use serde::{Deserialize, Serialize};

/// What a certificate allows its holder to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A control-plane member: speaks Raft, serves agents and clients.
    Coordinator,
    /// A GPU host's agent: may only report for the node named in its certificate.
    Agent,
    /// A person or script administering the cluster remotely.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Agent => "agent",
            Role::Operator => "operator",
        }
    }

    /// The role allowed on a connection with this ALPN protocol.
    pub fn for_alpn(alpn: &[u8]) -> Option<Role> {
        match alpn {
            ALPN_RAFT => Some(Role::Coordinator),
            ALPN_AGENT => Some(Role::Agent),
            ALPN_API => Some(Role::Operator),
            _ => None,
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "coordinator" => Ok(Role::Coordinator),
            "agent" => Ok(Role::Agent),
            "operator" => Ok(Role::Operator),
            other => Err(format!("role: {other:?} is not one of coordinator, agent, operator")),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// ALPN of coordinator-to-coordinator connections (Raft and forwarding).
pub const ALPN_RAFT: &[u8] = b"gantry-raft/1";
/// ALPN of agent connections.
pub const ALPN_AGENT: &[u8] = b"gantry-agent/1";
/// ALPN of remote operator clients.
pub const ALPN_API: &[u8] = b"gantry-api/1";

/// The identity proven by a peer's certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerIdentity {
    pub role: Role,
    pub name: String,
}

impl PeerIdentity {
    /// The URI SAN that carries this identity in a certificate.
    pub fn to_uri(&self) -> String {
        format!("urn:gantry:{}:{}", self.role, self.name)
    }

    /// Parses `urn:gantry:<role>:<name>`; `None` for any other URI.
    pub fn from_uri(uri: &str) -> Option<PeerIdentity> {
        let rest = uri.strip_prefix("urn:gantry:")?;
        let (role, name) = rest.split_once(':')?;
        let role = role.parse().ok()?;
        crate::model::validate_name("name", name).ok()?;
        Some(PeerIdentity { role, name: name.to_string() })
    }
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}", self.role, self.name)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trip() {
        let id = PeerIdentity { role: Role::Agent, name: "gpu-01".into() };
        assert_eq!(id.to_uri(), "urn:gantry:agent:gpu-01");
        assert_eq!(PeerIdentity::from_uri(&id.to_uri()), Some(id));
        assert_eq!(PeerIdentity::from_uri("urn:gantry:root:x"), None);
        assert_eq!(PeerIdentity::from_uri("urn:gantry:agent:a b"), None);
        assert_eq!(PeerIdentity::from_uri("https://x"), None);
    }

    #[test]
    fn alpn_maps_to_role() {
        assert_eq!(Role::for_alpn(ALPN_RAFT), Some(Role::Coordinator));
        assert_eq!(Role::for_alpn(ALPN_AGENT), Some(Role::Agent));
        assert_eq!(Role::for_alpn(ALPN_API), Some(Role::Operator));
        assert_eq!(Role::for_alpn(b"h3"), None);
    }
}
