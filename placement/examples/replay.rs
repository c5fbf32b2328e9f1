//! Replays one openb trace with every policy (a development aid; the operator
//! command is `gantryctl sim replay`).
//!
//! `cargo run --release -p gantry-placement --example replay -- NODES.csv PODS.csv [POLICY] [SEEDS]`

use gantry_placement::replay::{ReplayConfig, Trace, LEVELS};
use gantry_placement::Policy;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(nodes), Some(pods)) = (args.get(1), args.get(2)) else {
        return Err("usage: replay NODES.csv PODS.csv [POLICY|all] [SEEDS]".into());
    };
    let policies = match args.get(3).map(String::as_str) {
        None | Some("all") => Policy::ALL.to_vec(),
        Some(p) => vec![p.parse::<Policy>()?],
    };
    let seeds: u64 = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let trace = Trace::load(nodes.as_ref(), pods.as_ref())?;
    let config = ReplayConfig { seeds: (42..42 + seeds).collect(), inflate: 1.3 };
    for p in policies {
        let r = trace.run(p, &config, &mut || {})?;
        println!(
            "{:<13} {:?} frag {:.2}% failed@100 {:.1}",
            p.name(),
            LEVELS
                .iter()
                .map(|l| format!("{l}%: {:.2}", r.unallocated_gpu_pct[&l.to_string()]))
                .collect::<Vec<_>>(),
            r.fragmentation_pct,
            r.failed_tasks_at_100
        );
    }
    Ok(())
}
