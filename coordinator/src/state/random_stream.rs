//! Random command streams for tests: each next command is drawn from the
//! state as it is, so streams register nodes, submit, place (through the
//! real planner, and with stale plans), report, fail, stop and forget, and
//! also send refused, repeated and conflicting writes.

use std::collections::BTreeMap;

use gantry_common::model::{GpuInfo, GpuSharing, HostInfo, MigMode, NodeInfo, NodeStatus};
use gantry_common::workload::{parse_workload_toml, ActualState, AllocReport, HealthState};
use gantry_placement::EngineConfig;

use super::{Command, Plan, State};
use crate::scheduler::plan::{plan, ClusterTelemetry};

/// splitmix64: small, seeded, the same on every machine.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            return None;
        }
        items.get(self.below(items.len() as u64) as usize)
    }
}

/// Draws commands; keeps the last plan it made, to send it again stale.
pub(crate) struct Stream {
    rng: Rng,
    stale: Option<Plan>,
}

impl Stream {
    pub(crate) fn new(seed: u64) -> Stream {
        Stream { rng: Rng::new(seed), stale: None }
    }

    pub(crate) fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// The next command, drawn from `state`: now and then a group of a few
    /// (with, rarely, a group inside, which is refused).
    pub(crate) fn next(&mut self, state: &State) -> Command {
        if self.rng.chance(8) {
            let mut commands: Vec<Command> = (0..1 + self.rng.below(4)).map(|_| self.one(state)).collect();
            if self.rng.chance(10) {
                let inner = vec![self.one(state)];
                commands.insert(
                    self.rng.below(commands.len() as u64) as usize,
                    Command::Group { commands: inner },
                );
            }
            return Command::Group { commands };
        }
        self.one(state)
    }

    fn one(&mut self, state: &State) -> Command {
        let command = self.operator_or_agent(state);
        // Some operator writes carry an idempotency key from a small pool:
        // repeats, and the same key for another request.
        let operator = matches!(
            command,
            Command::SubmitWorkload { .. }
                | Command::SubmitWorkloads { .. }
                | Command::StopWorkload { .. }
                | Command::DrainNode { .. }
                | Command::SetNodeLabels { .. }
        );
        if operator && self.rng.chance(30) {
            let key = format!("key-{}", self.rng.below(6));
            return Command::Keyed { key, command: Box::new(command) };
        }
        command
    }

    fn operator_or_agent(&mut self, state: &State) -> Command {
        let nodes: Vec<String> = state.nodes.keys().cloned().collect();
        let node = self.rng.pick(&nodes).cloned().unwrap_or_else(|| "n0".into());
        match self.rng.below(100) {
            0..=11 => Command::RegisterNode { info: node_info(&mut self.rng) },
            12..=17 => {
                let status = if self.rng.chance(50) { NodeStatus::Down } else { NodeStatus::Ready };
                let node = if self.rng.chance(10) { "ghost".into() } else { node };
                Command::SetNodeStatus { node, status }
            }
            18..=22 => {
                let key =
                    if self.rng.chance(10) { "bad key".into() } else { format!("k{}", self.rng.below(3)) };
                let set = BTreeMap::from([(key, format!("v{}", self.rng.below(3)))]);
                let remove =
                    if self.rng.chance(30) { vec![format!("k{}", self.rng.below(3))] } else { vec![] };
                Command::SetNodeLabels { node, set, remove }
            }
            23..=26 => Command::DrainNode { node, drain: self.rng.chance(40) },
            27..=37 => Command::SubmitWorkload { spec: self.spec() },
            // A batch, now and then with a name twice (refused whole).
            38..=40 => {
                Command::SubmitWorkloads { specs: (0..1 + self.rng.below(3)).map(|_| self.spec()).collect() }
            }
            41..=45 => {
                let names: Vec<String> = state.workloads.keys().cloned().collect();
                let name = self.rng.pick(&names).cloned().unwrap_or_else(|| "w0".into());
                Command::StopWorkload { name }
            }
            46..=70 => {
                if self.rng.chance(15) {
                    if let Some(stale) = self.stale.take() {
                        return Command::ApplyPlan(stale);
                    }
                }
                let p = plan(state, &ClusterTelemetry::new(), &EngineConfig::default(), self.rng.next()).plan;
                self.stale = Some(p.clone());
                Command::ApplyPlan(p)
            }
            _ => self.report(state, &node),
        }
    }

    fn spec(&mut self) -> gantry_common::workload::WorkloadSpec {
        let name = format!("w{}", self.rng.below(7));
        let replicas = 1 + self.rng.below(4);
        let gpu = match self.rng.below(4) {
            0 => "mode = \"exclusive\"",
            1 => "mode = \"mps\"\ncompute_pct = 25\nmemory_mib = 10000",
            2 => "mode = \"mig\"\nprofile = \"1g.10gb\"",
            _ => "mode = \"none\"",
        };
        let restart = ["always", "on-failure", "never"][self.rng.below(3) as usize];
        let toml = format!(
            "name = \"{name}\"\ncommand = \"/bin/x\"\nreplicas = {replicas}\nenv = {{ V = \"{}\" }}\n\
             [restart]\npolicy = \"{restart}\"\n[gpu]\n{gpu}\n",
            self.rng.below(2)
        );
        match parse_workload_toml(&toml) {
            Ok(spec) => spec,
            // A spec the parser refuses is a bug in this generator.
            Err(e) => panic!("generated spec does not parse: {e}\n{toml}"),
        }
    }

    fn report(&mut self, state: &State, node: &str) -> Command {
        let mut reports = Vec::new();
        for a in state.allocs_on(node) {
            if !self.rng.chance(60) {
                continue;
            }
            let actual = *self
                .rng
                .pick(&[
                    ActualState::Starting,
                    ActualState::Running,
                    ActualState::Running,
                    ActualState::Restarting,
                    ActualState::Failed,
                    ActualState::Stopped,
                    ActualState::Completed,
                ])
                .unwrap_or(&ActualState::Running);
            let health =
                if actual == ActualState::Running { HealthState::Healthy } else { HealthState::Unknown };
            let exit_code =
                matches!(actual, ActualState::Failed | ActualState::Completed | ActualState::Restarting)
                    .then(|| if actual == ActualState::Completed { 0 } else { 1 });
            reports.push(AllocReport {
                id: a.id.clone(),
                actual,
                health,
                restarts: self.rng.below(3) as u32,
                message: String::new(),
                ports: BTreeMap::new(),
                devices: vec![],
                exit_code,
                failures: u32::from(actual == ActualState::Failed),
                start_failed: false,
            });
        }
        // Now and then a node reports another node's allocation: ignored.
        if self.rng.chance(10) {
            if let Some(a) = state.allocs.values().find(|a| a.node != node) {
                reports.push(AllocReport {
                    id: a.id.clone(),
                    actual: ActualState::Running,
                    health: HealthState::Healthy,
                    restarts: 0,
                    message: "forged".into(),
                    ports: BTreeMap::new(),
                    devices: vec![],
                    exit_code: None,
                    failures: 0,
                    start_failed: false,
                });
            }
        }
        Command::ReportAllocs { node: node.to_string(), reports }
    }
}

fn node_info(rng: &mut Rng) -> NodeInfo {
    let name = format!("n{}", rng.below(8));
    let gpus = rng.below(4) as u32;
    NodeInfo {
        name: name.clone(),
        labels: BTreeMap::new(),
        host: HostInfo {
            hostname: name.clone(),
            cpu_count: 64,
            memory_total_mib: 512 * 1024,
            os: "linux".into(),
            kernel: "6".into(),
        },
        gpus: (0..gpus)
            .map(|i| {
                let sharing = [GpuSharing::Exclusive, GpuSharing::Mps, GpuSharing::Mig][(i % 3) as usize];
                GpuInfo {
                    index: i,
                    uuid: format!("GPU-{name}-{i}"),
                    model: "H100-80GB".into(),
                    memory_total_mib: 81_559,
                    mig_mode: if sharing == GpuSharing::Mig { MigMode::Enabled } else { MigMode::Disabled },
                    nvlink_domain: Some(0),
                    sharing,
                }
            })
            .collect(),
        agent_version: "t".into(),
        gpu_backend: "sim".into(),
        address: "127.0.0.1".into(),
        http_addr: String::new(),
    }
}
