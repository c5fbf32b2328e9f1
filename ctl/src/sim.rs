//! `gantryctl sim`: offline runs of the placement engine. A thin CLI over
//! `gantry_placement::replay`, which holds the protocol itself.

use std::path::PathBuf;

use crate::out::outln;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use gantry_placement::replay::{PolicyResult, ReplayConfig, Trace, LEVELS};
use gantry_placement::Policy;
use indicatif::{ProgressBar, ProgressStyle};

/// Arguments of `gantryctl sim`.
#[derive(Args, Debug)]
pub struct SimArgs {
    #[command(subcommand)]
    cmd: SimCommand,
}

#[derive(Subcommand, Debug)]
enum SimCommand {
    /// Replay an openb GPU trace and report unallocated GPU % per arrival level.
    Replay(ReplayArgs),
}

#[derive(Args, Debug)]
struct ReplayArgs {
    /// Node list CSV (sn,cpu_milli,memory_mib,gpu,model).
    #[arg(long)]
    nodes: PathBuf,
    /// Pod list CSV (name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,...]).
    #[arg(long)]
    pods: PathBuf,
    /// A policy (fgd-pack, fgd, binpack, spread, least-loaded) or `all`; default: the default policy.
    #[arg(long)]
    policy: Option<String>,
    /// Seeds: an inclusive range `42..51` or a list `1,2,3`.
    #[arg(long, default_value = "42..51")]
    seeds: String,
    /// Requested GPU as a multiple of capacity.
    #[arg(long, default_value_t = 1.3)]
    inflate: f64,
}

/// Runs `gantryctl sim`; `json` is gantryctl's global `--json`.
pub fn run(args: SimArgs, json: bool) -> Result<()> {
    match args.cmd {
        SimCommand::Replay(a) => replay(a, json),
    }
}

fn replay(a: ReplayArgs, json: bool) -> Result<()> {
    let (policies, all) = match a.policy.as_deref() {
        None => (vec![Policy::default()], false),
        Some("all") => (Policy::ALL.to_vec(), true),
        Some(name) => (vec![name.parse::<Policy>()?], false),
    };
    let config = ReplayConfig { seeds: parse_seeds(&a.seeds)?, inflate: a.inflate };
    let trace = Trace::load(&a.nodes, &a.pods)
        .with_context(|| format!("loading {} and {}", a.nodes.display(), a.pods.display()))?;

    let bar = ProgressBar::new((policies.len() * config.seeds.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} seeds, {elapsed}")
            .context("progress bar template")?
            .progress_chars("=> "),
    );
    let mut results = Vec::with_capacity(policies.len());
    for policy in policies {
        bar.set_message(policy.name());
        results.push(trace.run(policy, &config, &mut || bar.inc(1))?);
    }
    bar.finish_and_clear();

    if json {
        let value = if all {
            serde_json::Value::Object(
                results
                    .iter()
                    .map(|r| Ok((r.policy.name().to_string(), serde_json::to_value(r)?)))
                    .collect::<Result<_>>()?,
            )
        } else {
            match results.first() {
                Some(r) => serde_json::to_value(r)?,
                None => bail!("no policy ran"),
            }
        };
        outln!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_table(&trace, &config, &results);
    }
    Ok(())
}

fn print_table(trace: &Trace, config: &ReplayConfig, results: &[PolicyResult]) {
    outln!(
        "{} nodes, {} GPUs, {} tasks; {} seeds, inflation {}",
        trace.nodes.len(),
        trace.gpu_count(),
        trace.tasks.len(),
        config.seeds.len(),
        config.inflate
    );
    outln!("unallocated GPU % at arrival level (mean over seeds):");
    let mut header = format!("{:<14}", "policy");
    for l in LEVELS {
        header.push_str(&format!("{:>8}", format!("{l}%")));
    }
    header.push_str(&format!("{:>10}", "frag %"));
    outln!("{header}");
    for r in results {
        let mut line = format!("{:<14}", r.policy.name());
        for l in LEVELS {
            let v = r.unallocated_gpu_pct.get(&l.to_string()).copied().unwrap_or(f64::NAN);
            line.push_str(&format!("{v:>8.2}"));
        }
        line.push_str(&format!("{:>10.2}", r.fragmentation_pct));
        outln!("{line}");
    }
}

/// `42..51` (inclusive), `42..=51`, `7`, or `1,2,3`.
fn parse_seeds(s: &str) -> Result<Vec<u64>> {
    let seeds: Vec<u64> = if let Some((a, b)) = s.split_once("..") {
        let a: u64 = a.trim().parse().with_context(|| format!("--seeds: bad start in {s:?}"))?;
        let b: u64 =
            b.trim_start_matches('=').trim().parse().with_context(|| format!("--seeds: bad end in {s:?}"))?;
        if b < a || b - a >= 10_000 {
            bail!("--seeds: {s:?} must be a range of 1 to 10000 seeds");
        }
        (a..=b).collect()
    } else {
        s.split(',')
            .map(|x| x.trim().parse().with_context(|| format!("--seeds: {x:?} is not a number")))
            .collect::<Result<_>>()?
    };
    if seeds.is_empty() {
        bail!("--seeds: no seeds");
    }
    Ok(seeds)
}
