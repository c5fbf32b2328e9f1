//! What each dev agent gets: its GPUs, how they are shared and its workload
//! port range. They go into each agent's `agent.toml`, so an agent restarted
//! from its config (as tests and operators do) keeps them.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use gantry_common::gpu_spec::parse_gpu_spec;
use gantry_common::model::GpuSharing;

/// First host port of agent 1's range; each agent gets its own block below
/// Linux's ephemeral range (32768+), so agents on one host never collide.
const PORT_BASE: u32 = 20_000;
const PORTS_PER_AGENT: u32 = 200;

/// The settings of one dev agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentSetup {
    /// `--sim-gpus` spec, e.g. `4xH100-80GB`; `None`: the host's own GPUs
    /// through NVML.
    pub gpus: Option<String>,
    /// `0=mig,1=mps`, or `None` for all exclusive.
    pub sharing: Option<String>,
    /// Host ports for workloads, inclusive.
    pub ports: (u32, u32),
}

/// The agents of `gantryctl dev --demo`: H100s and A100s, on each GPU 0 in
/// MIG mode, GPU 1 shared through MPS, the others whole.
pub fn demo_setups() -> Vec<AgentSetup> {
    ["4xH100-80GB", "4xA100-40GB"]
        .iter()
        .enumerate()
        .map(|(i, gpus)| AgentSetup {
            gpus: Some(gpus.to_string()),
            sharing: Some("0=mig,1=mps".into()),
            ports: port_range(i as u32 + 1),
        })
        .collect()
}

/// Resolves `--agents`, `--gpus`, `--agent-gpus` (the Nth for agent N) and
/// `--gpu-sharing` (once for every agent, or once per agent), and checks
/// each: GPU specs parse, sharing names existing GPUs, MIG only where the
/// model supports it.
pub fn setups(
    agents: u32,
    gpus: &str,
    agent_gpus: &[String],
    gpu_sharing: &[String],
) -> anyhow::Result<Vec<AgentSetup>> {
    if agent_gpus.len() > agents as usize {
        bail!("--agent-gpus given {} times for {agents} agents; raise --agents", agent_gpus.len());
    }
    let sharing_for = |i: usize| -> anyhow::Result<Option<String>> {
        match gpu_sharing.len() {
            0 => Ok(None),
            1 => Ok(gpu_sharing.first().cloned()),
            n if n == agents as usize => Ok(gpu_sharing.get(i).cloned()),
            n => bail!(
                "--gpu-sharing given {n} times: give it once (every agent) or once per agent ({agents})"
            ),
        }
    };
    let mut out = Vec::new();
    for i in 0..agents as usize {
        let gpus = agent_gpus.get(i).map(String::as_str).unwrap_or(gpus).to_string();
        let sharing = sharing_for(i)?;
        check(&gpus, sharing.as_deref()).with_context(|| format!("agent node-{}", i + 1))?;
        out.push(AgentSetup { gpus: Some(gpus), sharing, ports: port_range(i as u32 + 1) })
    }
    Ok(out)
}

/// The one agent of `--gpu-backend nvml`: it reports and uses this host's
/// GPUs, so a second agent would hand the same GPUs out twice, and simulated
/// GPU specs do not apply. The sharing spec is checked for its form here and
/// against the real GPUs by the agent when it starts.
pub fn host_setup(
    agents: u32,
    gpus_given: bool,
    agent_gpus: &[String],
    gpu_sharing: &[String],
) -> anyhow::Result<AgentSetup> {
    if agents != 1 {
        bail!("--agents {agents}: with --gpu-backend nvml the host's GPUs back exactly one agent; use --agents 1");
    }
    if gpus_given || !agent_gpus.is_empty() {
        bail!("--gpus/--agent-gpus describe simulated GPUs; with --gpu-backend nvml the agent uses the host's own");
    }
    if gpu_sharing.len() > 1 {
        bail!("--gpu-sharing given {} times for 1 agent", gpu_sharing.len());
    }
    let sharing = gpu_sharing.first().cloned();
    if let Some(spec) = &sharing {
        parse_sharing(spec)?;
    }
    Ok(AgentSetup { gpus: None, sharing, ports: port_range(1) })
}

/// Checks a GPU spec and a sharing spec (`IDX=MODE,...`) against it.
pub fn check(gpus: &str, sharing: Option<&str>) -> anyhow::Result<()> {
    let groups = parse_gpu_spec(gpus).map_err(|e| anyhow::anyhow!("--{e}"))?;
    let models: Vec<(&str, bool)> = groups
        .iter()
        .flat_map(|g| std::iter::repeat_n((g.model.name.as_str(), g.model.mig_capable), g.count as usize))
        .collect();
    let Some(sharing) = sharing else { return Ok(()) };
    for (part, index, mode) in parse_sharing(sharing)? {
        let Some(&(model, mig_capable)) = models.get(index) else {
            bail!("--gpu-sharing: {part:?}: there is no GPU {index} in {gpus} ({} GPUs)", models.len());
        };
        if mode == GpuSharing::Mig && !mig_capable {
            bail!("--gpu-sharing: {part:?}: {model} does not support MIG");
        }
    }
    Ok(())
}

/// `0=mig,1-3=mps` as (the part it came from, GPU index, mode), each GPU once.
fn parse_sharing(sharing: &str) -> anyhow::Result<Vec<(&str, usize, GpuSharing)>> {
    let mut out: Vec<(&str, usize, GpuSharing)> = Vec::new();
    for part in sharing.split(',').map(str::trim) {
        let (index, mode) = part
            .split_once('=')
            .with_context(|| format!("--gpu-sharing: {part:?} is not INDEX=MODE, e.g. 0=mig"))?;
        let bad = || format!("--gpu-sharing: {index:?} in {part:?} is not a GPU index or range (0, 1-3)");
        let (first, last) = match index.trim().split_once('-') {
            Some((a, b)) => (a.trim().parse::<usize>(), b.trim().parse::<usize>()),
            None => (index.trim().parse::<usize>(), index.trim().parse::<usize>()),
        };
        let (first, last) = (first.with_context(bad)?, last.with_context(bad)?);
        if first > last {
            bail!("{}", bad());
        }
        let mode: GpuSharing =
            mode.trim().parse().map_err(|e| anyhow::anyhow!("--gpu-sharing: {part:?}: {e}"))?;
        for index in first..=last {
            if out.iter().any(|(_, seen, _)| *seen == index) {
                bail!("--gpu-sharing: GPU {index} is given twice");
            }
            out.push((part, index, mode));
        }
    }
    Ok(out)
}

/// Host ports of agent `n` (1-based).
pub fn port_range(n: u32) -> (u32, u32) {
    let first = PORT_BASE + (n - 1) * PORTS_PER_AGENT;
    (first, first + PORTS_PER_AGENT - 1)
}

/// The `gpu_sharing` table of an agent's config from `0=mig,1-2=mps`
/// (already checked by [`setups`]).
pub fn sharing_table(sharing: Option<&str>) -> BTreeMap<String, String> {
    sharing
        .unwrap_or("")
        .split(',')
        .filter_map(|part| part.split_once('='))
        .map(|(i, m)| (i.trim().to_string(), m.trim().to_string()))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn setups_give_each_agent_its_gpus_sharing_and_ports() {
        let s = setups(3, "2xL4-24GB", &["4xH100-80GB".into()], &["0=mps".into()]).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(
            s[0],
            AgentSetup {
                gpus: Some("4xH100-80GB".into()),
                sharing: Some("0=mps".into()),
                ports: (20000, 20199)
            }
        );
        assert_eq!(s[1].gpus.as_deref(), Some("2xL4-24GB"));
        assert_eq!(s[2].sharing.as_deref(), Some("0=mps"));
        assert_eq!(s[2].ports, (20400, 20599));
        let per_agent = setups(2, "4xH100-80GB", &[], &["0=mig".into(), "1=mps".into()]).unwrap();
        assert_eq!(per_agent[1].sharing.as_deref(), Some("1=mps"));
        assert!(setups(2, "4xH100-80GB", &[], &[]).unwrap().iter().all(|s| s.sharing.is_none()));
    }

    #[test]
    fn setups_refuse_what_does_not_fit() {
        let e = |r: anyhow::Result<Vec<AgentSetup>>| format!("{:#}", r.unwrap_err());
        assert!(
            e(setups(1, "1xL4-24GB", &["a".into(), "b".into()], &[])).contains("--agent-gpus given 2 times")
        );
        assert!(
            e(setups(3, "1xL4-24GB", &[], &["0=mps".into(), "0=mps".into()])).contains("once per agent (3)")
        );
        assert_eq!(
            e(setups(1, "2xL4-24GB", &[], &["0=mig".into()])),
            "agent node-1: --gpu-sharing: \"0=mig\": L4-24GB does not support MIG"
        );
        assert!(
            e(setups(1, "2xH100-80GB", &[], &["2=mps".into()])).contains("there is no GPU 2 in 2xH100-80GB")
        );
        assert!(e(setups(1, "2xH100-80GB", &[], &["0=fast".into()])).contains("not one of exclusive, mig"));
        assert!(e(setups(1, "2xH100-80GB", &[], &["0=mps,0=mig".into()])).contains("GPU 0 is given twice"));
        assert!(e(setups(1, "2xH100-80GB", &[], &["mps".into()])).contains("not INDEX=MODE"));
        assert!(setups(1, "4xH100-80GB", &[], &["0-3=shared".into()]).is_ok());
        assert!(e(setups(1, "4xH100-80GB", &[], &["0-4=shared".into()])).contains("no GPU 4"));
        assert!(e(setups(1, "4xH100-80GB", &[], &["0=mig,0-1=mps".into()])).contains("GPU 0 is given twice"));
        assert!(e(setups(1, "4xH100-80GB", &[], &["2-1=mps".into()])).contains("not a GPU index or range"));
        assert!(e(setups(1, "2xNope", &[], &[])).contains("--gpus"));
    }

    #[test]
    fn demo_agents_are_valid() {
        for s in demo_setups() {
            check(s.gpus.as_deref().unwrap(), s.sharing.as_deref()).unwrap();
        }
    }

    #[test]
    fn the_host_backs_one_agent_with_its_own_gpus() {
        let e = |r: anyhow::Result<AgentSetup>| format!("{:#}", r.unwrap_err());
        let s = host_setup(1, false, &[], &["0=mps".into()]).unwrap();
        assert_eq!(s, AgentSetup { gpus: None, sharing: Some("0=mps".into()), ports: (20000, 20199) });
        assert!(e(host_setup(2, false, &[], &[])).contains("exactly one agent"));
        assert!(e(host_setup(1, true, &[], &[])).contains("the host's own"));
        assert!(e(host_setup(1, false, &["1xL4-24GB".into()], &[])).contains("the host's own"));
        assert!(e(host_setup(1, false, &[], &["0=mps,0=mig".into()])).contains("GPU 0 is given twice"));
        assert!(e(host_setup(1, false, &[], &["0=fast".into()])).contains("not one of exclusive, mig"));
    }

    #[test]
    fn sharing_becomes_the_agents_config_table() {
        let t = sharing_table(Some("0=mig, 1=mps"));
        assert_eq!(t.get("0").map(String::as_str), Some("mig"));
        assert_eq!(t.get("1").map(String::as_str), Some("mps"));
        assert!(sharing_table(None).is_empty());
    }
}
