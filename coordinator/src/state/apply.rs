//! `apply`: the deterministic state transition.

use gantry_common::model::{validate_label_value, validate_name, NodeStatus};

use super::apply_workloads as workloads;
use super::{Command, CommandResponse, KeyedWrite, NodeRecord, State, MAX_WRITE_KEYS};

/// Most labels a node may carry.
pub const MAX_LABELS: usize = 64;

/// Applies one command to the state. A rejected or idempotent command
/// leaves the state exactly as it was.
pub fn apply(state: &mut State, command: &Command) -> CommandResponse {
    if let Command::Group { commands } = command {
        // Each command on its own: its own revision, its own refusal.
        return CommandResponse::Group(
            commands
                .iter()
                .map(|c| match c {
                    Command::Group { .. } => CommandResponse::invalid("a group cannot hold another group"),
                    c => apply(state, c),
                })
                .collect(),
        );
    }
    let mark = state.change_mark();
    state.revision += 1;
    let response = apply_command(state, command);
    if matches!(
        response,
        CommandResponse::Rejected { .. } | CommandResponse::Unchanged | CommandResponse::Repeat(_)
    ) {
        state.revision -= 1;
        // A keyed write that changed nothing else still remembered its key.
        let remembered = matches!(command, Command::Keyed { .. }) && response == CommandResponse::Unchanged;
        if !remembered {
            state.forget_changes_since(mark);
        }
    }
    response
}

fn apply_command(state: &mut State, command: &Command) -> CommandResponse {
    match command {
        Command::Keyed { key, command } => {
            let fingerprint = fingerprint(command);
            if let Some(done) = state.write_keys.get(key) {
                // 0: remembered before writes carried a fingerprint.
                if done.fingerprint != 0 && done.fingerprint != fingerprint {
                    return CommandResponse::conflict(format!(
                        "idempotency key {key:?} was already used for a different request; a retry must \
                         send the same request, a new request a new key"
                    ));
                }
                return CommandResponse::Repeat(Box::new(done.response.clone()));
            }
            if matches!(**command, Command::Keyed { .. }) {
                return CommandResponse::invalid("a keyed write cannot hold another");
            }
            let response = apply_command(state, command);
            // A refusal changed nothing and would be refused again: nothing to remember.
            if !matches!(response, CommandResponse::Rejected { .. }) {
                remember_key(state, key, &response, fingerprint);
            }
            response
        }
        Command::SubmitWorkload { spec } => workloads::submit(state, spec),
        Command::SubmitWorkloads { specs } => workloads::submit_batch(state, specs),
        Command::StopWorkload { name } => workloads::stop_workload(state, name),
        Command::DrainNode { node, drain } => workloads::drain(state, node, *drain),
        Command::ApplyPlan(plan) => workloads::apply_plan(state, plan),
        Command::ReportAllocs { node, reports } => workloads::report(state, node, reports),
        // Only reached inside a keyed write: `apply` takes groups apart.
        Command::Group { .. } => CommandResponse::invalid("a keyed write cannot hold a group"),
        Command::RegisterNode { info } => {
            if let Err(reason) = info.validate() {
                return CommandResponse::invalid(reason);
            }
            if let Some(record) = state.nodes.get(&info.name) {
                if record.info == *info && record.status == NodeStatus::Ready {
                    return CommandResponse::Unchanged;
                }
            }
            match state.nodes.get_mut(&info.name) {
                Some(record) => {
                    record.info = info.clone();
                    record.status = NodeStatus::Ready;
                    record.registrations += 1;
                }
                None => {
                    state.nodes.insert(
                        info.name.clone(),
                        NodeRecord {
                            info: info.clone(),
                            status: NodeStatus::Ready,
                            operator_labels: Default::default(),
                            registrations: 1,
                            drained: false,
                            alloc_revision: 0,
                        },
                    );
                }
            }
            CommandResponse::Applied
        }
        Command::SetNodeStatus { node, status } => match state.nodes.get(node).map(|r| r.status) {
            None => CommandResponse::not_found(format!("node {node:?} is not registered")),
            Some(now) if now == *status => CommandResponse::Unchanged,
            Some(_) => {
                let Some(record) = state.nodes.get_mut(node) else { return CommandResponse::Applied };
                record.status = *status;
                if *status == NodeStatus::Down {
                    workloads::node_down(state, node);
                }
                CommandResponse::Applied
            }
        },
        Command::SetNodeLabels { node, set, remove } => {
            let Some(record) = state.nodes.get(node) else {
                return CommandResponse::not_found(format!("node {node:?} is not registered"));
            };
            for (key, value) in set {
                if let Err(reason) = validate_name("labels key", key) {
                    return CommandResponse::invalid(reason);
                }
                if let Err(reason) = validate_label_value(&format!("labels.{key}"), value) {
                    return CommandResponse::invalid(reason);
                }
            }
            let mut labels = record.operator_labels.clone();
            for key in remove {
                labels.remove(key);
            }
            labels.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
            if labels.len() > MAX_LABELS {
                return CommandResponse::invalid(format!(
                    "labels: a node may carry at most {MAX_LABELS} operator labels"
                ));
            }
            if labels == record.operator_labels {
                return CommandResponse::Unchanged;
            }
            if let Some(record) = state.nodes.get_mut(node) {
                record.operator_labels = labels;
            }
            CommandResponse::Applied
        }
    }
}

/// Records a keyed write's answer; forgets the oldest beyond [`MAX_WRITE_KEYS`].
fn remember_key(state: &mut State, key: &str, response: &CommandResponse, fingerprint: u64) {
    let seq = state.next_write_key;
    state.next_write_key += 1;
    state.write_keys.insert(key.to_string(), KeyedWrite { seq, response: response.clone(), fingerprint });
    state.write_key_order.insert(seq, key.to_string());
    while state.write_keys.len() > MAX_WRITE_KEYS {
        let Some((seq, _)) = state.write_key_order.get_min().cloned() else { break };
        let Some(oldest) = state.write_key_order.remove(&seq) else { break };
        state.write_keys.remove(&oldest);
    }
}

/// A stable 64-bit FNV-1a of a command's encoding (the same on every
/// replica and every version that encodes it the same).
fn fingerprint(command: &Command) -> u64 {
    let bytes = gantry_common::schema::encode(command).unwrap_or_default();
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use gantry_common::model::{GpuInfo, HostInfo, MigMode, NodeInfo};

    use super::*;
    use crate::state::RejectKind;

    fn info(name: &str, gpus: u32) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
            host: HostInfo {
                hostname: name.into(),
                cpu_count: 32,
                memory_total_mib: 256 * 1024,
                os: "linux".into(),
                kernel: "6.1".into(),
            },
            gpus: (0..gpus)
                .map(|i| GpuInfo {
                    index: i,
                    uuid: format!("GPU-{name}-{i}"),
                    model: "H100-80GB".into(),
                    memory_total_mib: 81_559,
                    mig_mode: MigMode::Disabled,
                    nvlink_domain: Some(0),
                    sharing: gantry_common::model::GpuSharing::Exclusive,
                })
                .collect(),
            agent_version: "0.1.0".into(),
            gpu_backend: "sim".into(),
            address: "127.0.0.1".into(),
            http_addr: String::new(),
        }
    }

    #[test]
    fn register_then_reregister_keeps_operator_labels() {
        let mut s = State::default();
        assert_eq!(apply(&mut s, &Command::RegisterNode { info: info("n1", 8) }), CommandResponse::Applied);
        let set = BTreeMap::from([("zone".to_string(), "b".to_string())]);
        apply(&mut s, &Command::SetNodeLabels { node: "n1".into(), set, remove: vec![] });
        apply(&mut s, &Command::SetNodeStatus { node: "n1".into(), status: NodeStatus::Down });
        apply(&mut s, &Command::RegisterNode { info: info("n1", 4) });
        let n = &s.nodes["n1"];
        assert_eq!(n.status, NodeStatus::Ready, "re-registration makes the node ready");
        assert_eq!(n.info.gpus.len(), 4, "re-registration replaces the facts");
        assert_eq!(n.registrations, 2);
        assert_eq!(n.labels()["zone"], "b", "operator label wins over agent label");
    }

    #[test]
    fn registering_an_unchanged_ready_node_changes_nothing() {
        let mut s = State::default();
        apply(&mut s, &Command::RegisterNode { info: info("n1", 8) });
        let before = s.clone();
        assert_eq!(apply(&mut s, &Command::RegisterNode { info: info("n1", 8) }), CommandResponse::Unchanged);
        assert_eq!(s, before, "not even the revision moves");
        apply(&mut s, &Command::SetNodeStatus { node: "n1".into(), status: NodeStatus::Down });
        assert_eq!(apply(&mut s, &Command::RegisterNode { info: info("n1", 8) }), CommandResponse::Applied);
        assert_eq!(s.nodes["n1"].status, NodeStatus::Ready, "a down node that registers is ready again");
    }

    #[test]
    fn a_keyed_write_applies_once_and_answers_its_repeats_the_same() {
        let mut s = State::default();
        apply(&mut s, &Command::RegisterNode { info: info("n1", 1) });
        let set = BTreeMap::from([("rack".to_string(), "r1".to_string())]);
        let label = |set: &BTreeMap<String, String>| Command::Keyed {
            key: "k1".into(),
            command: Box::new(Command::SetNodeLabels { node: "n1".into(), set: set.clone(), remove: vec![] }),
        };
        assert_eq!(apply(&mut s, &label(&set)), CommandResponse::Applied);
        let after = s.clone();
        assert_eq!(apply(&mut s, &label(&set)), CommandResponse::Repeat(Box::new(CommandResponse::Applied)));
        assert_eq!(s, after, "a repeat changes nothing");
        // The same key for another request is refused, and changes nothing.
        let other = BTreeMap::from([("rack".to_string(), "r9".to_string())]);
        let r = apply(&mut s, &label(&other));
        assert!(
            matches!(&r, CommandResponse::Rejected { reason, kind: RejectKind::Conflict } if reason.contains("different request")),
            "{r:?}"
        );
        assert_eq!(s.nodes["n1"].operator_labels["rack"], "r1");
        assert_eq!(s, after);
        // A refused keyed write is not remembered.
        let bad = Command::Keyed {
            key: "k2".into(),
            command: Box::new(Command::SetNodeLabels { node: "ghost".into(), set, remove: vec![] }),
        };
        assert!(matches!(apply(&mut s, &bad), CommandResponse::Rejected { kind: RejectKind::NotFound, .. }));
        assert!(!s.write_keys.contains_key("k2"));
    }

    /// Each refusal says what kind it is; the API's status follows the kind,
    /// never the wording.
    #[test]
    fn refusals_carry_their_kind() {
        let mut s = State::default();
        let kind = |r: CommandResponse| match r {
            CommandResponse::Rejected { kind, .. } => Some(kind),
            _ => None,
        };
        let ghost = Command::SetNodeStatus { node: "ghost".into(), status: NodeStatus::Down };
        assert_eq!(kind(apply(&mut s, &ghost)), Some(RejectKind::NotFound));
        let stop = Command::StopWorkload { name: "ghost".into() };
        assert_eq!(kind(apply(&mut s, &stop)), Some(RejectKind::NotFound));
        let nested = Command::Keyed {
            key: "a".into(),
            command: Box::new(Command::Keyed { key: "b".into(), command: Box::new(stop.clone()) }),
        };
        assert_eq!(kind(apply(&mut s, &nested)), Some(RejectKind::Invalid));
        apply(&mut s, &Command::RegisterNode { info: info("n1", 1) });
        let bad_label = Command::SetNodeLabels {
            node: "n1".into(),
            set: BTreeMap::from([("bad key".to_string(), "v".to_string())]),
            remove: vec![],
        };
        assert_eq!(kind(apply(&mut s, &bad_label)), Some(RejectKind::Invalid));
    }

    /// A group leaves the state as its commands one by one would, answers
    /// each, and a refused one leaves the others applied.
    #[test]
    fn a_group_applies_as_its_commands_one_by_one() {
        let commands = vec![
            Command::RegisterNode { info: info("n1", 2) },
            Command::SetNodeStatus { node: "ghost".into(), status: NodeStatus::Down },
            Command::SetNodeLabels {
                node: "n1".into(),
                set: BTreeMap::from([("rack".to_string(), "r1".to_string())]),
                remove: vec![],
            },
            Command::RegisterNode { info: info("n1", 2) },
            Command::Group { commands: vec![Command::RegisterNode { info: info("n2", 1) }] },
            Command::Keyed {
                key: "k".into(),
                command: Box::new(Command::Group {
                    commands: vec![Command::RegisterNode { info: info("n3", 1) }],
                }),
            },
        ];
        let mut one_by_one = State::default();
        let answers: Vec<CommandResponse> = commands
            .iter()
            .map(|c| match c {
                Command::Group { .. } => CommandResponse::invalid("a group cannot hold another group"),
                c => apply(&mut one_by_one, c),
            })
            .collect();
        let mut grouped = State::default();
        let r = apply(&mut grouped, &Command::Group { commands });
        assert_eq!(r, CommandResponse::Group(answers.clone()));
        assert_eq!(grouped, one_by_one, "the same state, revisions included");
        assert_eq!(answers[0], CommandResponse::Applied);
        assert!(matches!(answers[1], CommandResponse::Rejected { kind: RejectKind::NotFound, .. }));
        assert_eq!(answers[2], CommandResponse::Applied, "applied after a refusal");
        assert_eq!(answers[3], CommandResponse::Unchanged);
        assert!(matches!(answers[4], CommandResponse::Rejected { kind: RejectKind::Invalid, .. }));
        assert!(matches!(answers[5], CommandResponse::Rejected { kind: RejectKind::Invalid, .. }));
        assert!(!grouped.nodes.contains_key("n2") && !grouped.nodes.contains_key("n3"));
        assert_eq!(grouped.revision, 2, "two commands changed the state");
        assert_eq!(apply(&mut grouped, &Command::Group { commands: vec![] }), CommandResponse::Group(vec![]));
    }

    #[test]
    fn only_the_newest_keys_are_kept() {
        let mut s = State::default();
        apply(&mut s, &Command::RegisterNode { info: info("n1", 1) });
        for i in 0..MAX_WRITE_KEYS + 5 {
            let set = BTreeMap::from([("i".to_string(), i.to_string())]);
            let c = Command::Keyed {
                key: format!("k{i}"),
                command: Box::new(Command::SetNodeLabels { node: "n1".into(), set, remove: vec![] }),
            };
            apply(&mut s, &c);
        }
        assert_eq!(s.write_keys.len(), MAX_WRITE_KEYS);
        assert_eq!(s.write_key_order.len(), MAX_WRITE_KEYS);
        assert!(!s.write_keys.contains_key("k4") && s.write_keys.contains_key("k5"));
    }

    #[test]
    fn bad_node_name_is_rejected_without_change() {
        let mut s = State::default();
        let r = apply(&mut s, &Command::RegisterNode { info: info("bad name", 1) });
        assert!(matches!(r, CommandResponse::Rejected { reason, .. } if reason.contains("node.name")));
        assert!(s.nodes.is_empty());
    }

    #[test]
    fn status_of_unknown_node_is_rejected() {
        let mut s = State::default();
        let r = apply(&mut s, &Command::SetNodeStatus { node: "ghost".into(), status: NodeStatus::Down });
        assert!(matches!(r, CommandResponse::Rejected { .. }));
    }

    #[test]
    fn status_change_is_idempotent() {
        let mut s = State::default();
        apply(&mut s, &Command::RegisterNode { info: info("n1", 1) });
        let down = Command::SetNodeStatus { node: "n1".into(), status: NodeStatus::Down };
        assert_eq!(apply(&mut s, &down), CommandResponse::Applied);
        assert_eq!(apply(&mut s, &down), CommandResponse::Unchanged);
        assert_eq!(s.nodes["n1"].status, NodeStatus::Down);
    }

    #[test]
    fn labels_set_and_remove() {
        let mut s = State::default();
        apply(&mut s, &Command::RegisterNode { info: info("n1", 1) });
        let set = BTreeMap::from([
            ("rack".to_string(), "r7".to_string()),
            ("tier".to_string(), "gold".to_string()),
        ]);
        assert_eq!(
            apply(&mut s, &Command::SetNodeLabels { node: "n1".into(), set: set.clone(), remove: vec![] }),
            CommandResponse::Applied
        );
        assert_eq!(
            apply(&mut s, &Command::SetNodeLabels { node: "n1".into(), set, remove: vec![] }),
            CommandResponse::Unchanged
        );
        apply(
            &mut s,
            &Command::SetNodeLabels { node: "n1".into(), set: BTreeMap::new(), remove: vec!["tier".into()] },
        );
        assert_eq!(s.nodes["n1"].operator_labels.len(), 1);
        assert_eq!(s.nodes["n1"].operator_labels["rack"], "r7");
    }

    #[test]
    fn bad_label_key_is_rejected_without_change() {
        let mut s = State::default();
        apply(&mut s, &Command::RegisterNode { info: info("n1", 1) });
        let before = s.clone();
        let set = BTreeMap::from([("bad key".to_string(), "v".to_string())]);
        let r = apply(&mut s, &Command::SetNodeLabels { node: "n1".into(), set, remove: vec![] });
        assert!(matches!(r, CommandResponse::Rejected { reason, .. } if reason.contains("labels key")));
        assert_eq!(s, before);
    }

    #[test]
    fn label_values_with_control_characters_are_rejected() {
        let mut s = State::default();
        apply(&mut s, &Command::RegisterNode { info: info("n1", 1) });
        for bad in ["a\0b", "x\r\nnode-9  ready", "\u{1b}[2J"] {
            let set = BTreeMap::from([("k".to_string(), bad.to_string())]);
            let r = apply(&mut s, &Command::SetNodeLabels { node: "n1".into(), set, remove: vec![] });
            assert!(
                matches!(&r, CommandResponse::Rejected { reason, .. } if reason.contains("control character")),
                "{r:?}"
            );
        }
        let mut forged = info("n2", 1);
        forged.labels.insert("zone".into(), "a\r\nnode-9  ready".into());
        assert!(matches!(
            apply(&mut s, &Command::RegisterNode { info: forged }),
            CommandResponse::Rejected { .. }
        ));
        assert!(!s.nodes.contains_key("n2"));
    }

    #[test]
    fn too_many_labels_rejected() {
        let mut s = State::default();
        apply(&mut s, &Command::RegisterNode { info: info("n1", 1) });
        let set: BTreeMap<_, _> = (0..=MAX_LABELS).map(|i| (format!("k{i}"), "v".to_string())).collect();
        let r = apply(&mut s, &Command::SetNodeLabels { node: "n1".into(), set, remove: vec![] });
        assert!(matches!(r, CommandResponse::Rejected { .. }));
        assert!(s.nodes["n1"].operator_labels.is_empty());
    }
}
