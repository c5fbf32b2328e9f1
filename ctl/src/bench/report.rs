//! What one swarm run measured, and the pure parsing behind it (`/proc`
//! files, Prometheus text).

use serde::Serialize;

/// One run of `gantryctl bench swarm` at one size (`--json`: one object per size).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct SwarmReport {
    pub nodes: usize,
    pub coordinators: u32,
    pub gpus_per_node: u32,
    pub heartbeat_interval_s: f64,
    /// From the first node started until every node registered.
    pub register_all_s: f64,
    /// The leader's CPU over the steady window, in percent of one core.
    pub leader_cpu_pct: f64,
    pub leader_rss_mib: f64,
    /// The largest follower's resident memory.
    pub follower_rss_mib: f64,
    /// Heartbeats the leader counted per second over the steady window.
    pub heartbeats_per_s: f64,
    pub steady_window_s: f64,
    /// 1 % of the nodes go silent at once (deadline `node_down_after_s`):
    /// until all are down and every allocation they held runs elsewhere.
    pub detect_dead_s: f64,
    /// Until the last of them was marked down.
    pub dead_marked_down_s: f64,
    pub dead_nodes: usize,
    pub dead_allocs_replaced: u64,
    pub node_down_after_s: u64,
    pub single_workload_replicas: u64,
    pub placements_per_s_single_workload: f64,
    pub batch_workloads: u64,
    pub placements_per_s_batch: f64,
    pub client_workloads: u64,
    pub clients: usize,
    pub placements_per_s_clients: f64,
    /// The leader's last snapshot.
    pub snapshot_bytes: u64,
    pub snapshot_build_s: f64,
    /// Snapshots the leader built during the run (0: the log stayed short).
    pub snapshots_built: u64,
    /// A follower killed, its data removed, restarted: until it applied
    /// what the leader had committed when it came back.
    pub wiped_follower_catch_up_s: f64,
    /// kill -9 of the leader: until another coordinator leads.
    pub failover_election_s: f64,
    /// kill -9 of the leader: until every node registered with the new one.
    pub failover_reporting_s: f64,
    /// Heartbeat round trips the nodes saw from registration to the
    /// failover (upper bounds of power-of-two ms buckets).
    pub heartbeat_rtt_p50_ms: f64,
    pub heartbeat_rtt_p99_ms: f64,
    /// Heartbeats that failed or timed out over the same span.
    pub heartbeat_failures: u64,
    /// Heartbeats a node sent more than two intervals after its last one
    /// (the swarm process itself was late).
    pub heartbeats_sent_late: u64,
    /// Nodes the leader marked down that the bench had not silenced
    /// (the leader as of the failover phase, over its leadership).
    pub spurious_down_marks: u64,
    /// Raft terms that passed between registration and the failover phase:
    /// elections nobody asked for (0 in a healthy run).
    pub elections_before_failover: u64,
}

impl SwarmReport {
    pub fn lines(&self) -> Vec<String> {
        let r = self;
        vec![
            format!(
                "{} nodes ({} GPUs each, heartbeat every {:.1} s) on {} coordinators",
                r.nodes, r.gpus_per_node, r.heartbeat_interval_s, r.coordinators
            ),
            format!("  registered all:        {:.1} s", r.register_all_s),
            format!(
                "  leader:                {:.0} % CPU, {:.0} MiB RSS; largest follower {:.0} MiB ({:.0} s window)",
                r.leader_cpu_pct, r.leader_rss_mib, r.follower_rss_mib, r.steady_window_s
            ),
            format!(
                "  heartbeats:            {:.0}/s at the leader; round trip p50 <{:.0} ms, p99 <{:.0} ms; {} failed, {} sent late; {} nodes marked down that were alive",
                r.heartbeats_per_s,
                r.heartbeat_rtt_p50_ms,
                r.heartbeat_rtt_p99_ms,
                r.heartbeat_failures,
                r.heartbeats_sent_late,
                r.spurious_down_marks
            ),
            format!("  unplanned elections:   {}", r.elections_before_failover),
            format!(
                "  placements:            {:.0}/s one workload of {} replicas; {:.0}/s {} workloads by batch; {:.0}/s {} workloads from {} clients",
                r.placements_per_s_single_workload,
                r.single_workload_replicas,
                r.placements_per_s_batch,
                r.batch_workloads,
                r.placements_per_s_clients,
                r.client_workloads,
                r.clients
            ),
            format!(
                "  dead nodes:            {} silent (deadline {} s): all down in {:.1} s, {} allocations placed again by {:.1} s",
                r.dead_nodes, r.node_down_after_s, r.dead_marked_down_s, r.dead_allocs_replaced, r.detect_dead_s
            ),
            if r.snapshots_built == 0 {
                "  snapshot:              none built (the log stayed under snapshot_after_entries)".to_string()
            } else {
                format!(
                    "  snapshot:              {:.1} MiB built in {:.2} s (last of {})",
                    r.snapshot_bytes as f64 / 1_048_576.0,
                    r.snapshot_build_s,
                    r.snapshots_built
                )
            },
            format!("  wiped follower:        caught up in {:.1} s", r.wiped_follower_catch_up_s),
            format!(
                "  leader kill -9:        new leader in {:.1} s, every node on it in {:.1} s",
                r.failover_election_s, r.failover_reporting_s
            ),
        ]
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The
/// command name (field 2) may hold spaces and parentheses: fields are
/// counted after its last `)`.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, index 11 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` of a `/proc/PID/status` file, in KiB.
pub fn status_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The value of the sample `name` (with exactly `labels`, e.g.
/// `{status="down"}`, or none) in Prometheus text.
pub fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = format!("{name}{labels}");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(&key).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// How many placements a phase asks for: `share` of the swarm's GPUs,
/// at most `cap`, at least 1.
pub fn phase_size(gpus: u64, share: f64, cap: u64) -> u64 {
    ((gpus as f64 * share) as u64).clamp(1, cap)
}

/// 1 % of `nodes`, at least one.
/// Whether every node named in `names` is in `views` and down.
pub fn all_down(views: &[gantry_common::api::NodeView], names: &std::collections::BTreeSet<String>) -> bool {
    let down = views
        .iter()
        .filter(|v| names.contains(&v.name) && v.status == gantry_common::model::NodeStatus::Down)
        .count();
    down == names.len()
}

pub fn one_percent(nodes: usize) -> usize {
    (nodes / 100).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, status: gantry_common::model::NodeStatus) -> gantry_common::api::NodeView {
        gantry_common::api::NodeView {
            name: name.into(),
            status,
            heartbeat_age_s: None,
            labels: Default::default(),
            cpu_count: 1,
            memory_total_mib: 1,
            cpu_usage_pct: None,
            memory_used_mib: None,
            gpu_count: 0,
            gpu_backend: "sim".into(),
            agent_version: "0".into(),
            drained: false,
            allocs: 0,
            problem: None,
        }
    }

    #[test]
    fn dead_nodes_are_judged_by_name_not_by_the_count() {
        use gantry_common::model::NodeStatus::{Down, Ready};
        let names: std::collections::BTreeSet<String> = ["a", "b"].map(String::from).into();
        // Two nodes down, but not the two silenced: not done.
        let other = [view("a", Down), view("b", Ready), view("c", Down)];
        assert!(!all_down(&other, &names));
        assert!(all_down(&[view("a", Down), view("b", Down), view("c", Ready)], &names));
        // A silenced node missing from the view is not down.
        assert!(!all_down(&[view("a", Down)], &names));
    }

    #[test]
    fn cpu_ticks_survive_odd_command_names() {
        let stat =
            "4242 (gantry (co) rd) S 1 4242 4242 0 -1 4194560 8000 0 0 0 1234 567 0 0 20 0 9 0 100 0 0";
        assert_eq!(stat_cpu_ticks(stat), Some(1234 + 567));
        assert_eq!(stat_cpu_ticks("garbage"), None);
        assert_eq!(stat_cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn rss_is_read_in_kib() {
        let status = "Name:\tgantry-coordina\nVmPeak:\t  999 kB\nVmRSS:\t   52344 kB\nThreads:\t9\n";
        assert_eq!(status_rss_kib(status), Some(52_344));
        assert_eq!(status_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn metrics_are_found_by_name_and_labels() {
        let text = "# HELP gantry_nodes Registered nodes by status.\n# TYPE gantry_nodes gauge\n\
                    gantry_nodes{status=\"ready\"} 990\ngantry_nodes{status=\"down\"} 10\n\
                    gantry_heartbeats_received_total 123456\ngantry_heartbeats_received_total_x 1\n";
        assert_eq!(metric(text, "gantry_nodes", "{status=\"down\"}"), Some(10.0));
        assert_eq!(metric(text, "gantry_nodes", "{status=\"ready\"}"), Some(990.0));
        assert_eq!(metric(text, "gantry_heartbeats_received_total", ""), Some(123_456.0));
        assert_eq!(metric(text, "gantry_nodes", ""), None);
        assert_eq!(metric(text, "gantry_missing", ""), None);
    }

    #[test]
    fn phases_are_sized_by_gpus() {
        assert_eq!(phase_size(8_000, 0.4, 10_000), 3_200);
        assert_eq!(phase_size(80_000, 0.4, 10_000), 10_000);
        assert_eq!(phase_size(1, 0.1, 10_000), 1);
        assert_eq!([one_percent(50), one_percent(1_000), one_percent(10_000)], [1, 10, 100]);
    }

    #[test]
    fn the_text_names_every_measure() {
        let text = SwarmReport { nodes: 1_000, ..SwarmReport::default() }.lines().join("\n");
        for word in
            ["1000 nodes", "CPU", "heartbeats", "placements", "dead nodes", "snapshot", "wiped", "kill -9"]
        {
            assert!(text.contains(word), "{word} missing from:\n{text}");
        }
    }
}
