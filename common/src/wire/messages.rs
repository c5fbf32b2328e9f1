//! Messages that cross the QUIC endpoint between agents/clients and coordinators.
//!
//! Every connection opens with a [`Hello`] on its first stream; the
//! coordinator answers [`HelloReply`]. After that, each request is one
//! bidirectional stream: one request frame, one response frame.

use serde::{Deserialize, Serialize};

use crate::api::{ApiRequest, ApiResponse};
use crate::model::{GpuTelemetry, HostTelemetry, NodeInfo};
use crate::workload::{AllocReport, Allocation, DesiredAlloc, WorkloadSpec};

/// Highest version of the wire protocol this build speaks. Bumped on any
/// incompatible change.
///
/// 1: postcard messages (c6cdaa7 and before). 2: [`crate::schema`]'s named
/// encoding; the hello frames stay postcard so that either side can read the
/// other's version and refuse it clearly. 3: a hello carries a version
/// range and the answer the version agreed; a batch of workloads is one
/// request (`ApiRequest::SubmitWorkloads`) and one Raft entry. 4:
/// coordinators ask each other a pre-vote before they campaign (the
/// coordinator's `PeerRequest::PreVote`). 5: the leader may commit writes
/// that arrive together as one Raft entry (the coordinator's
/// `Command::Group`).
pub const PROTOCOL_VERSION: u32 = 5;

/// Lowest version this build still speaks: a cluster is upgraded one
/// process at a time, and each connection speaks the highest version both
/// ends know ([`negotiate`]).
pub const MIN_PROTOCOL_VERSION: u32 = 2;

/// First frame on every connection (postcard, in every protocol version).
///
/// Version 2 sent `{protocol_version, software}` and required an exact
/// match. From version 3, `protocol_version` is the lowest version the
/// sender speaks and `max_protocol_version` follows as a trailing field: a
/// version-2 coordinator reads the first two fields (postcard ignores what
/// follows), sees 2 and accepts; [`Hello::decode`] reads both shapes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    /// Software version of the sender, for error messages.
    pub software: String,
    /// Highest version the sender speaks (`protocol_version` itself from a
    /// version-2 sender).
    pub max_protocol_version: u32,
}

/// The hello a version-2 sender writes.
#[derive(Deserialize)]
struct HelloV2 {
    protocol_version: u32,
    software: String,
}

impl Hello {
    /// This build's hello: every version from [`MIN_PROTOCOL_VERSION`] to `max`
    /// (at most [`PROTOCOL_VERSION`]; lower to keep new features off during an upgrade).
    pub fn current(software: &str, max: u32) -> Hello {
        let max = max.clamp(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION);
        Hello {
            protocol_version: MIN_PROTOCOL_VERSION,
            software: software.to_string(),
            max_protocol_version: max,
        }
    }

    /// Reads a hello of either shape (postcard).
    pub fn decode(bytes: &[u8]) -> Result<Hello, postcard::Error> {
        match postcard::from_bytes::<Hello>(bytes) {
            Ok(hello) => Ok(hello),
            Err(_) => {
                let old: HelloV2 = postcard::from_bytes(bytes)?;
                Ok(Hello {
                    protocol_version: old.protocol_version,
                    software: old.software,
                    max_protocol_version: old.protocol_version,
                })
            }
        }
    }

    /// Whether the sender knows version 3's answer ([`HelloReply::Agreed`]).
    pub fn sends_range(&self) -> bool {
        self.max_protocol_version >= 3
    }
}

/// The version two ends agree on: the highest both speak, `None` when their
/// ranges do not meet.
pub fn negotiate(ours: (u32, u32), theirs: (u32, u32)) -> Option<u32> {
    let low = ours.0.max(theirs.0);
    let high = ours.1.min(theirs.1);
    (high >= low).then_some(high)
}

/// The answer to a [`Hello`] (postcard). Variants are only ever appended:
/// postcard reads a variant by its position.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum HelloReply {
    /// Accepted, speaking version 2 (the answer to a version-2 hello).
    Ok {
        coordinator_id: u64,
        software: String,
    },
    VersionMismatch {
        ours: u32,
        theirs: u32,
        software: String,
    },
    /// Accepted, speaking `version` (the answer to a hello with a range).
    Agreed {
        coordinator_id: u64,
        software: String,
        version: u32,
    },
}

impl HelloReply {
    /// The version the connection speaks, when it was accepted.
    pub fn version(&self) -> Option<u32> {
        match self {
            HelloReply::Ok { .. } => Some(2),
            HelloReply::Agreed { version, .. } => Some(*version),
            HelloReply::VersionMismatch { .. } => None,
        }
    }
}

/// Where the current leader can be reached, as far as the answering coordinator knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderHint {
    pub id: u64,
    pub addr: String,
}

/// Requests an agent sends to the leader.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AgentRequest {
    /// Registers (or re-registers) the node with its static facts.
    Register(NodeInfo),
    /// Liveness plus the latest telemetry sample.
    Heartbeat(Heartbeat),
    /// The node's desired allocations, once they differ from `index` (a long
    /// poll: the leader answers at once when they changed, else after up to
    /// `wait_ms` with [`AgentResponse::DesiredUnchanged`]). A changed set is
    /// answered as [`AgentResponse::Desired`] followed by [`DesiredChunk`]
    /// frames on the same stream, so no size of a node's set can exceed a
    /// frame: each workload's spec travels once, each allocation once.
    WatchDesired { node: String, index: u64, wait_ms: u64 },
    /// What the agent observed of its allocations (only those that changed).
    ReportAllocs { node: String, reports: Vec<AllocReport> },
}

/// What a coordinator asks of an agent, on a stream it opens on the
/// connection the agent made (agents accept no connections of their own).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CoordinatorRequest {
    /// An allocation's output. The answer is one [`LogsHeader`] frame and,
    /// when it is `Ok`, the output as raw bytes until the stream ends (with
    /// `follow`, until the reader stops it).
    Logs(LogsRequest),
}

/// Which output of which allocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsRequest {
    pub alloc: String,
    /// Keep the stream open and send output as it is written.
    pub follow: bool,
    /// Only the last `tail` bytes of what is there now (per stream).
    pub tail: Option<u64>,
}

/// First frame of a logs answer: `Ok` when output follows.
pub type LogsHeader = Result<(), LogsError>;

/// Why no output follows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum LogsError {
    /// No such allocation (or nothing of it on its node).
    #[error("{0}")]
    NotFound(String),
    /// The allocation's node cannot be reached now.
    #[error("{0}")]
    Unavailable(String),
    /// The agent could not read the output.
    #[error("{0}")]
    Failed(String),
}

impl AgentRequest {
    /// The node the request speaks for (must match the certificate).
    pub fn node(&self) -> &str {
        match self {
            AgentRequest::Register(info) => &info.name,
            AgentRequest::Heartbeat(hb) => &hb.node,
            AgentRequest::WatchDesired { node, .. } | AgentRequest::ReportAllocs { node, .. } => node,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: String,
    /// Monotonic per agent process; lets the leader drop reordered samples.
    pub seq: u64,
    pub host: HostTelemetry,
    pub gpus: Vec<GpuTelemetry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AgentResponse {
    Registered,
    HeartbeatAck,
    /// The node's desired set as of `index` changed: `specs` workload specs
    /// and `allocs` allocations follow in [`DesiredChunk`] frames.
    Desired {
        index: u64,
        specs: u32,
        allocs: u32,
    },
    /// The set is still the one of `index`.
    DesiredUnchanged {
        index: u64,
    },
    ReportsAck,
    /// The node is not registered (for example after the state was reset): register again.
    UnknownNode,
    /// This coordinator is not the leader; try the hinted one.
    NotLeader {
        leader: Option<LeaderHint>,
    },
    /// The request was refused; the message says why.
    Refused {
        reason: String,
    },
}

/// One part of a desired set (after [`AgentResponse::Desired`]): every
/// allocation of the node the agent should know (to run, or to stop and not
/// yet confirmed), and the current spec of each of their workloads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DesiredChunk {
    pub specs: Vec<WorkloadSpec>,
    pub allocs: Vec<Allocation>,
}

/// What a chunk should stay under; one spec or allocation more may pass it
/// (a spec is at most [`crate::workload::spec::MAX_SPEC_BYTES`]).
pub const DESIRED_CHUNK_BYTES: usize = 1 << 20;

/// Splits a desired set into chunks of about [`DESIRED_CHUNK_BYTES`] each
/// (at least one, even for an empty set).
pub fn desired_chunks(specs: Vec<WorkloadSpec>, allocs: Vec<Allocation>, target: usize) -> Vec<DesiredChunk> {
    let mut out = vec![DesiredChunk::default()];
    let mut used = 0usize;
    for spec in specs {
        let size = crate::schema::encode(&spec).map_or(target, |b| b.len());
        if used > 0 && used + size > target {
            out.push(DesiredChunk::default());
            used = 0;
        }
        used += size;
        if let Some(last) = out.last_mut() {
            last.specs.push(spec);
        }
    }
    for alloc in allocs {
        let size = crate::schema::encode(&alloc).map_or(target, |b| b.len());
        if used > 0 && used + size > target {
            out.push(DesiredChunk::default());
            used = 0;
        }
        used += size;
        if let Some(last) = out.last_mut() {
            last.allocs.push(alloc);
        }
    }
    out
}

/// Puts a desired set back together: each allocation with its workload's
/// spec. An allocation whose spec is missing is left out (and named).
pub fn assemble_desired(specs: &[WorkloadSpec], allocs: Vec<Allocation>) -> (Vec<DesiredAlloc>, Vec<String>) {
    let by_name: std::collections::BTreeMap<&str, std::sync::Arc<WorkloadSpec>> =
        specs.iter().map(|s| (s.name.as_str(), std::sync::Arc::new(s.clone()))).collect();
    let mut set = Vec::with_capacity(allocs.len());
    let mut orphans = Vec::new();
    for alloc in allocs {
        match by_name.get(alloc.workload.as_str()) {
            Some(spec) => set.push(DesiredAlloc { spec: spec.clone(), alloc }),
            None => orphans.push(alloc.id),
        }
    }
    (set, orphans)
}

/// Requests a remote operator client sends over `gantry-api/1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiCall(pub ApiRequest);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiReply(pub Result<ApiResponse, crate::api::ApiFailure>);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! Every message must survive postcard, which rejects serde shapes that
    //! need a self-describing format (tagged enums, `skip_serializing_if`).
    use std::collections::BTreeMap;

    use super::*;
    use crate::api::{ClusterStatus, GpuView, MemberRole, MemberView, NodeView};
    use crate::model::*;
    use crate::wire::frame::{decode, encode};

    fn round_trip<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(msg: T) {
        let bytes = encode(&msg, 1 << 20).unwrap();
        let (back, used) = decode::<T>(&bytes, 1 << 20).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(back, msg);
    }

    fn node() -> NodeInfo {
        NodeInfo {
            name: "n1".into(),
            labels: BTreeMap::from([("zone".into(), "a".into())]),
            host: HostInfo {
                hostname: "h".into(),
                cpu_count: 8,
                memory_total_mib: 1024,
                os: "l".into(),
                kernel: "6".into(),
            },
            gpus: vec![GpuInfo {
                index: 0,
                uuid: "GPU-1".into(),
                model: "H100-80GB".into(),
                memory_total_mib: 81_559,
                mig_mode: MigMode::Enabled,
                nvlink_domain: None,
                sharing: GpuSharing::Mig,
            }],
            agent_version: "0.1.0".into(),
            gpu_backend: "sim".into(),
            address: "127.0.0.1".into(),
            http_addr: "127.0.0.1:9410".into(),
        }
    }

    #[test]
    fn versions_agree_on_the_highest_both_speak() {
        assert_eq!(negotiate((2, 3), (2, 3)), Some(3));
        assert_eq!(negotiate((2, 3), (2, 2)), Some(2), "a version-2 peer");
        assert_eq!(negotiate((2, 2), (2, 3)), Some(2), "capped during an upgrade");
        assert_eq!(negotiate((2, 3), (1, 1)), None, "a postcard peer");
        assert_eq!(negotiate((3, 4), (2, 2)), None, "a future build that dropped 2");
        assert_eq!(Hello::current("x", 9).max_protocol_version, PROTOCOL_VERSION);
        assert_eq!(Hello::current("x", 0).max_protocol_version, MIN_PROTOCOL_VERSION);
    }

    /// A version-2 coordinator reads a version-3 hello as version 2, and a
    /// version-3 one reads a version-2 hello.
    #[test]
    fn hellos_of_both_shapes_are_read() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct OldHello {
            protocol_version: u32,
            software: String,
        }
        let new = postcard::to_allocvec(&Hello::current("gantry 0.2", 3)).unwrap();
        let as_old: OldHello = postcard::from_bytes(&new).unwrap();
        assert_eq!(as_old, OldHello { protocol_version: 2, software: "gantry 0.2".into() });
        let old = postcard::to_allocvec(&as_old).unwrap();
        let read = Hello::decode(&old).unwrap();
        assert_eq!((read.protocol_version, read.max_protocol_version), (2, 2));
        assert!(!read.sends_range());
        assert_eq!(Hello::decode(&new).unwrap(), Hello::current("gantry 0.2", 3));
        assert!(Hello::decode(&[0xff]).is_err());
    }

    #[test]
    fn agent_messages_round_trip() {
        round_trip(Hello::current("x", PROTOCOL_VERSION));
        round_trip(HelloReply::VersionMismatch { ours: 1, theirs: 2, software: "y".into() });
        round_trip(AgentRequest::Register(node()));
        for health in
            [GpuHealth::Healthy, GpuHealth::Degraded("d".into()), GpuHealth::Unhealthy("Xid 79".into())]
        {
            round_trip(AgentRequest::Heartbeat(Heartbeat {
                node: "n1".into(),
                seq: 7,
                host: HostTelemetry { cpu_usage_pct: 12.5, memory_used_mib: 100 },
                gpus: vec![GpuTelemetry {
                    index: 0,
                    memory_used_mib: 10,
                    utilization_pct: 50,
                    temperature_c: 40,
                    power_w: 123.4,
                    health,
                    mps_clients: Some(2),
                    mig_instances: 0,
                }],
            }));
        }
        round_trip(AgentResponse::NotLeader {
            leader: Some(LeaderHint { id: 2, addr: "127.0.0.1:1".into() }),
        });
        round_trip(AgentResponse::Refused { reason: "no".into() });
        let spec = crate::workload::parse_workload_toml(
            "name = \"w\"\nimage = \"i\"\n[gpu]\nmode = \"mig\"\nprofile = \"1g.10gb\"\n[constraints]\nlabels_in = { z = [\"a\"] }\n",
        )
        .unwrap();
        let alloc = crate::workload::Allocation {
            id: "w.0.1".into(),
            workload: "w".into(),
            version: 1,
            replica: 0,
            node: "n1".into(),
            gpus: vec![crate::workload::AllocGpu {
                index: 0,
                uuid: "GPU-1".into(),
                share: gantry_placement::GpuShare::Mig { profile: "1g.10gb".into(), start: 2 },
            }],
            cpu_milli: 0,
            memory_mib: 0,
            desired: crate::workload::DesiredState::Run,
            desired_reason: String::new(),
            actual: crate::workload::ActualState::Running,
            health: crate::workload::HealthState::Healthy,
            restarts: 1,
            message: String::new(),
            ports: BTreeMap::from([("http".into(), 20001)]),
            devices: vec!["MIG-1".into()],
            exit_code: None,
            failures: 0,
            start_failed: false,
        };
        round_trip(AgentResponse::Desired { index: 9, specs: 1, allocs: 1 });
        round_trip(DesiredChunk { specs: vec![spec.clone()], allocs: vec![alloc] });
        round_trip(AgentRequest::ReportAllocs {
            node: "n1".into(),
            reports: vec![crate::workload::AllocReport {
                id: "w.0.1".into(),
                actual: crate::workload::ActualState::Failed,
                health: crate::workload::HealthState::Unknown,
                restarts: 3,
                message: "exit 1".into(),
                ports: BTreeMap::new(),
                devices: vec![],
                exit_code: Some(1),
                failures: 2,
                start_failed: false,
            }],
        });
        round_trip(ApiCall(ApiRequest::SubmitWorkload { spec: Box::new(spec) }));
    }

    #[test]
    fn a_desired_set_is_cut_into_bounded_chunks_and_put_back_together() {
        let spec = |name: &str| {
            crate::workload::parse_workload_toml(&format!(
                "name = \"{name}\"\ncommand = \"/bin/x\"\n[env]\nBIG = \"{}\"\n",
                "x".repeat(4000)
            ))
            .unwrap()
        };
        let alloc = |w: &str, i: u32| {
            crate::workload::Allocation::pending(
                format!("{w}.{i}.{i}"),
                crate::workload::NewAlloc {
                    workload: w.into(),
                    version: 1,
                    replica: i,
                    node: "n1".into(),
                    gpus: vec![],
                    cpu_milli: 0,
                    memory_mib: 0,
                },
            )
        };
        let specs = vec![spec("a"), spec("b")];
        let allocs: Vec<_> = (0..5_000).map(|i| alloc(if i % 2 == 0 { "a" } else { "b" }, i)).collect();
        let chunks = desired_chunks(specs.clone(), allocs.clone(), 64 * 1024);
        assert!(chunks.len() > 10, "{} chunks", chunks.len());
        for c in &chunks {
            let bytes = crate::schema::encode(c).unwrap();
            assert!(bytes.len() < 64 * 1024 + 8 * 1024, "chunk of {} bytes", bytes.len());
        }
        let all_specs: Vec<_> = chunks.iter().flat_map(|c| c.specs.clone()).collect();
        let all_allocs: Vec<_> = chunks.iter().flat_map(|c| c.allocs.clone()).collect();
        assert_eq!(all_specs, specs, "each spec once");
        assert_eq!(all_allocs, allocs);
        let (set, orphans) = assemble_desired(&all_specs, all_allocs);
        assert_eq!(set.len(), 5_000);
        assert!(orphans.is_empty());
        assert!(set.iter().all(|d| d.spec.name == d.alloc.workload));
        let (set, orphans) = assemble_desired(&all_specs[..1], allocs[..2].to_vec());
        assert_eq!((set.len(), orphans), (1, vec!["b.1.1".to_string()]));
        assert_eq!(desired_chunks(vec![], vec![], 1024), vec![DesiredChunk::default()]);
    }

    #[test]
    fn api_messages_round_trip() {
        round_trip(ApiCall(ApiRequest::SetNodeLabels {
            node: "n1".into(),
            set: BTreeMap::from([("a".into(), "b".into())]),
            remove: vec!["c".into()],
        }));
        round_trip(ApiReply(Ok(ApiResponse::Status(ClusterStatus {
            answered_by: 1,
            leader: Some(1),
            term: 3,
            commit_index: Some(9),
            last_applied: None,
            members: vec![MemberView {
                id: 1,
                address: "a".into(),
                role: MemberRole::Leader,
                term: 3,
                commit_index: None,
                reachable: false,
                protocol: Some(3),
            }],
            stale: None,
        }))));
        round_trip(ApiReply(Ok(ApiResponse::Nodes(vec![NodeView {
            name: "n1".into(),
            status: NodeStatus::Down,
            heartbeat_age_s: Some(1.5),
            labels: BTreeMap::new(),
            cpu_count: 1,
            memory_total_mib: 1,
            cpu_usage_pct: None,
            memory_used_mib: Some(3),
            gpu_count: 1,
            gpu_backend: "sim".into(),
            agent_version: "v".into(),
            drained: true,
            allocs: 2,
            problem: Some("p".into()),
        }]))));
        round_trip(ApiReply(Ok(ApiResponse::Gpus(vec![GpuView {
            node: "n1".into(),
            index: 0,
            uuid: "u".into(),
            model: "m".into(),
            memory_total_mib: 1,
            memory_used_mib: None,
            utilization_pct: Some(1),
            temperature_c: None,
            power_w: Some(1.0),
            mig_mode: MigMode::Unsupported,
            sharing: GpuSharing::Mps,
            allocs: 1,
            mps_clients: Some(1),
            mig_instances: None,
            health: "healthy".into(),
            health_reason: None,
        }]))));
        round_trip(ApiReply(Err(crate::api::ApiFailure::invalid("bad"))));
    }
}
