//! Delta apply against whole-state apply: random command streams are
//! applied to a state; after each command its changes are carried into a
//! model of the per-entity tables, which must then hold exactly what an
//! export of the whole state holds. A mutation that changes a record
//! without noting it, or a refused command that notes a change, fails here.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use gantry_common::schema::encode;
use serde::Serialize;

use super::random_stream::Stream;
use super::{apply, Changes, Command, CommandResponse, State};

/// The four tables as rows of encoded records.
#[derive(Debug, Default, PartialEq)]
struct Tables {
    nodes: BTreeMap<String, Vec<u8>>,
    workloads: BTreeMap<String, Vec<u8>>,
    allocs: BTreeMap<String, Vec<u8>>,
    write_keys: BTreeMap<String, Vec<u8>>,
}

/// The keys whose rows differ between two tables (a readable failure).
fn differ(a: &Tables, b: &Tables) -> Vec<String> {
    let mut out = Vec::new();
    for (name, x, y) in [
        ("nodes", &a.nodes, &b.nodes),
        ("workloads", &a.workloads, &b.workloads),
        ("allocs", &a.allocs, &b.allocs),
        ("write_keys", &a.write_keys, &b.write_keys),
    ] {
        for key in x.keys().chain(y.keys()) {
            if x.get(key) != y.get(key) {
                out.push(format!("{name}/{key}"));
            }
        }
    }
    out.dedup();
    out
}

fn rows<V: Serialize>(records: &crate::state::Records<String, V>) -> BTreeMap<String, Vec<u8>> {
    records.iter().map(|(k, v)| (k.clone(), encode(v).unwrap())).collect()
}

fn export(state: &State) -> Tables {
    Tables {
        nodes: rows(&state.nodes),
        workloads: rows(&state.workloads),
        allocs: rows(&state.allocs),
        write_keys: rows(&state.write_keys),
    }
}

fn carry<V: Serialize>(
    table: &mut BTreeMap<String, Vec<u8>>,
    keys: &std::collections::BTreeSet<String>,
    records: &crate::state::Records<String, V>,
) {
    for key in keys {
        match records.get(key) {
            Some(v) => table.insert(key.clone(), encode(v).unwrap()),
            None => table.remove(key),
        };
    }
}

fn write(tables: &mut Tables, changes: &Changes, state: &State) {
    carry(&mut tables.nodes, &changes.nodes, &state.nodes);
    carry(&mut tables.workloads, &changes.workloads, &state.workloads);
    carry(&mut tables.allocs, &changes.allocs, &state.allocs);
    carry(&mut tables.write_keys, &changes.write_keys, &state.write_keys);
}

#[test]
fn deltas_rebuild_the_whole_state_on_random_streams() {
    let mut placed = 0;
    let mut refused = 0;
    for seed in 0..40 {
        let mut state = State::default();
        let mut tables = Tables::default();
        let mut stream = Stream::new(seed);
        // Changes are taken every few commands, as the state machine
        // takes them once per checkpoint of several batches.
        let mut since_take = 0;
        for step in 0..400 {
            let command = stream.next(&state);
            let before = state.clone();
            let response = apply(&mut state, &command);
            match &response {
                CommandResponse::Plan { placed: p, .. } => placed += p.len(),
                CommandResponse::Rejected { .. } => {
                    refused += 1;
                    assert_eq!(state, before, "seed {seed} step {step}: a refusal changed the state");
                }
                _ => {}
            }
            since_take += 1;
            if since_take > stream.rng().below(8) {
                let changes = state.take_changes();
                write(&mut tables, &changes, &state);
                since_take = 0;
                let whole = export(&state);
                assert!(
                    tables == whole,
                    "seed {seed} step {step}: rows {:?} differ after {command:?} -> {response:?}",
                    differ(&tables, &whole)
                );
            }
        }
        let changes = state.take_changes();
        write(&mut tables, &changes, &state);
        let whole = export(&state);
        assert!(tables == whole, "seed {seed}: rows {:?} differ at the end", differ(&tables, &whole));
        // The node index agrees with a scan.
        for node in state.nodes.keys() {
            let indexed: Vec<&String> = state.allocs_on(node).map(|a| &a.id).collect();
            let scanned: Vec<&String> =
                state.allocs.values().filter(|a| &a.node == node).map(|a| &a.id).collect();
            assert_eq!(indexed, scanned, "seed {seed}: the index of {node}");
        }
    }
    // The streams did exercise placements and refusals.
    assert!(placed > 500, "{placed} placements");
    assert!(refused > 100, "{refused} refusals");
}

/// A command that is refused, repeated or changes nothing notes nothing to
/// write.
#[test]
fn a_refused_or_idle_command_notes_no_change() {
    let mut stream = Stream::new(99);
    let mut state = State::default();
    let mut idle = 0;
    for _ in 0..2_000 {
        let command = stream.next(&state);
        state.take_changes();
        let response = apply(&mut state, &command);
        if matches!(
            response,
            CommandResponse::Rejected { .. } | CommandResponse::Unchanged | CommandResponse::Repeat(_)
        ) {
            idle += 1;
            let changes = state.take_changes();
            match &command {
                // It changed nothing but remembered its key (the key's answer).
                Command::Keyed { key, .. } if response == CommandResponse::Unchanged => {
                    let only_key = Changes { write_keys: [key.clone()].into(), ..Changes::default() };
                    assert_eq!(changes, only_key, "{command:?}");
                }
                _ => assert!(changes.is_empty(), "{command:?} -> {response:?} noted a change"),
            }
        }
    }
    assert!(idle > 200, "{idle} idle commands");
}
