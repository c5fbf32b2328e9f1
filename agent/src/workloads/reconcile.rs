//! The reconciler: what to do about each allocation, decided from the
//! desired set, what the agent holds, and the time. Pure: no I/O, no clock.
//!
//! ```text
//!   desired allocations ─┐
//!   authoritative?       ├─▶ reconcile(..., now_ms) ─▶ [Start | Stop | Retire | Forget]
//!   AllocRecords ────────┘
//!   runtime events ─▶ AllocRecord::{begin_start, started, start_failed, exited,
//!                                   stopped, probed}        (state transitions)
//!   AllocRecord ─▶ report(...) ─▶ AllocReport
//! ```
//!
//! Rules, level-triggered (the same inputs give the same actions, and an
//! action already under way is not asked for again):
//!
//! 1. A desired `run` allocation the agent has not started is started.
//! 2. One that exited (or could not start) is restarted by its policy
//!    (`always`; `on-failure` only after a failure; never with `never`) once
//!    its backoff has passed: the first restart waits `backoff_ms`, each
//!    further one twice as long, up to `max_backoff_ms`; no restart skips it.
//!    A run of [`STABLE_RUN_MS`] or more resets the doubling. An exit that
//!    will not be restarted retires it for good: `completed` after exit code
//!    0, `failed` otherwise. A retired replica is never started again: the
//!    coordinator keeps its slot filled and its GPU free.
//! 3. A running allocation whose health check failed `failure_threshold`
//!    times in a row is stopped and then restarted as after a failure
//!    (`always` and `on-failure`; `never` only reports it unhealthy).
//! 4. Desired `stop`, or (with an authoritative set) absent from the set:
//!    stopped; once stopped and absent, forgotten.
//! 5. Without an authoritative set (no coordinator has answered since the
//!    agent started) the persisted set stands in: nothing is stopped or
//!    newly started, but allocations that were running are restarted by
//!    their policy.

use std::collections::BTreeMap;

use gantry_common::workload::{
    ActualState, AllocGpu, AllocReport, DesiredAlloc, DesiredState, HealthCheck, HealthState, RestartMode,
    RestartPolicy,
};
use serde::{Deserialize, Serialize};

use crate::runtime::Handle;

/// A run at least this long counts as stable: the next failure starts the
/// backoff from `backoff_ms` again.
pub const STABLE_RUN_MS: u64 = 10_000;
/// Prefix of a running allocation's message that tells why it last ended.
pub const RESTARTED_AFTER: &str = "restarted after: ";

/// What the agent holds of one allocation (kept in the state file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocRecord {
    pub workload: String,
    /// `process` or `docker`.
    pub runtime: String,
    pub phase: Phase,
    pub restarts: u32,
    /// Failures since the last stable run; sets the backoff.
    pub crash_streak: u32,
    pub message: String,
    pub health: HealthState,
    /// Exit code of the last run, when it exited with one.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The last start failed before the workload ran.
    #[serde(default)]
    pub start_failed: bool,
    /// Consecutive failed probes (not persisted: a new agent probes afresh).
    #[serde(skip)]
    pub probe_failures: u32,
    /// When the next probe is due (0: not scheduled; not persisted).
    #[serde(skip)]
    pub next_probe_ms: u64,
    /// Host port by port name, kept for the allocation's life.
    pub ports: BTreeMap<String, u16>,
    /// Device ids handed to the workload.
    pub devices: Vec<String>,
    /// The GPU shares it holds (to give MIG instances and MPS back).
    pub gpus: Vec<AllocGpu>,
    pub handle: Option<Handle>,
    pub stop_grace_ms: u64,
}

/// Where an allocation is in its life on this agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// A start is under way.
    Starting,
    Running {
        since_ms: u64,
    },
    /// It ended (or could not start); `failed` unless it exited with 0.
    Exited {
        at_ms: u64,
        failed: bool,
    },
    /// A stop is under way; `restart`: it is being restarted (unhealthy).
    Stopping {
        restart: bool,
    },
    /// Stopped on purpose (the coordinator asked, or it is no longer assigned).
    Stopped,
    /// Ended with a failure and not to be restarted (restart policy).
    Failed,
    /// Exited with code 0 and not to be restarted (restart policy).
    Completed,
}

/// What the manager is to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start (or restart) the allocation.
    Start { id: String },
    /// Stop it; with `restart` it is restarted afterwards as after a failure.
    Stop { id: String, restart: bool, reason: String },
    /// It exited and will not be restarted: `failed`, or `completed` after a clean exit.
    Retire { id: String, failed: bool },
    /// It is stopped and no longer desired: drop the record.
    Forget { id: String },
}

/// The actions that bring `records` towards `desired` at `now_ms`.
pub fn reconcile(
    desired: &[DesiredAlloc],
    authoritative: bool,
    records: &BTreeMap<String, AllocRecord>,
    now_ms: u64,
) -> Vec<Action> {
    let mut actions = Vec::new();
    for d in desired {
        let id = &d.alloc.id;
        let record = records.get(id);
        match d.alloc.desired {
            DesiredState::Stop => {
                if let Some(r) = record {
                    if matches!(r.phase, Phase::Running { .. } | Phase::Exited { .. }) {
                        let reason = if d.alloc.desired_reason.is_empty() {
                            "stopped by the coordinator".to_string()
                        } else {
                            format!("stopped: {}", d.alloc.desired_reason)
                        };
                        actions.push(Action::Stop { id: id.clone(), restart: false, reason });
                    }
                }
            }
            DesiredState::Run => match record {
                None if authoritative => actions.push(Action::Start { id: id.clone() }),
                None => {}
                Some(r) => match r.phase {
                    // A retired or stopped replica stays so: a start here
                    // would skip both the restart policy and the backoff.
                    Phase::Starting
                    | Phase::Stopping { .. }
                    | Phase::Failed
                    | Phase::Completed
                    | Phase::Stopped => {}
                    Phase::Running { .. } => {
                        if let Some(check) = &d.spec.health {
                            if d.spec.restart.mode != RestartMode::Never
                                && r.probe_failures >= check.failure_threshold.max(1)
                            {
                                actions.push(Action::Stop {
                                    id: id.clone(),
                                    restart: true,
                                    reason: format!(
                                        "unhealthy: {} health checks failed in a row",
                                        r.probe_failures
                                    ),
                                });
                            }
                        }
                    }
                    Phase::Exited { at_ms, failed } => {
                        if !wants_restart(d.spec.restart.mode, failed) {
                            actions.push(Action::Retire { id: id.clone(), failed });
                        } else if now_ms >= at_ms.saturating_add(backoff_ms(&d.spec.restart, r.crash_streak))
                        {
                            actions.push(Action::Start { id: id.clone() });
                        }
                    }
                },
            },
        }
    }
    if authoritative {
        let wanted: std::collections::HashSet<&str> = desired.iter().map(|d| d.alloc.id.as_str()).collect();
        for (id, r) in records {
            if wanted.contains(id.as_str()) {
                continue;
            }
            match r.phase {
                Phase::Running { .. } | Phase::Exited { .. } => actions.push(Action::Stop {
                    id: id.clone(),
                    restart: false,
                    reason: "stopped: no longer assigned to this node".into(),
                }),
                Phase::Stopped | Phase::Failed | Phase::Completed => {
                    actions.push(Action::Forget { id: id.clone() })
                }
                Phase::Starting | Phase::Stopping { .. } => {}
            }
        }
    }
    actions
}

/// Delay before restart number `streak` (1 = the first after a stable run).
pub fn backoff_ms(policy: &RestartPolicy, streak: u32) -> u64 {
    let doublings = streak.saturating_sub(1).min(62);
    policy.backoff_ms.saturating_mul(1u64 << doublings).min(policy.max_backoff_ms)
}

fn wants_restart(mode: RestartMode, failed: bool) -> bool {
    match mode {
        RestartMode::Always => true,
        RestartMode::OnFailure => failed,
        RestartMode::Never => false,
    }
}

impl AllocRecord {
    /// A record for an allocation about to start for the first time.
    pub fn new(d: &DesiredAlloc, ports: BTreeMap<String, u16>) -> AllocRecord {
        AllocRecord {
            workload: d.alloc.workload.clone(),
            runtime: d.spec.runtime.kind().to_string(),
            phase: Phase::Starting,
            restarts: 0,
            crash_streak: 0,
            message: String::new(),
            health: HealthState::Unknown,
            exit_code: None,
            start_failed: false,
            probe_failures: 0,
            next_probe_ms: 0,
            ports,
            devices: Vec::new(),
            gpus: d.alloc.gpus.clone(),
            handle: None,
            stop_grace_ms: d.spec.stop_grace_ms,
        }
    }

    /// A (re)start begins; a start after an exit counts as a restart.
    pub fn begin_start(&mut self) {
        if matches!(self.phase, Phase::Exited { .. }) {
            self.restarts += 1;
        }
        self.phase = Phase::Starting;
    }

    /// The runtime started it.
    pub fn started(
        &mut self,
        now_ms: u64,
        handle: Handle,
        devices: Vec<String>,
        check: Option<&HealthCheck>,
    ) {
        self.phase = Phase::Running { since_ms: now_ms };
        // What ended the previous run stays visible, marked as the past.
        if !self.message.is_empty() && !self.message.starts_with(RESTARTED_AFTER) {
            self.message = format!("{RESTARTED_AFTER}{}", self.message);
        }
        self.handle = Some(handle);
        self.devices = devices;
        self.start_failed = false;
        self.health = HealthState::Unknown;
        self.probe_failures = 0;
        self.next_probe_ms = check.map_or(0, |c| now_ms.saturating_add(c.initial_delay_ms));
    }

    /// The start failed: like a failed exit, so the restart policy applies.
    pub fn start_failed(&mut self, now_ms: u64, message: String) {
        self.crash_streak = self.crash_streak.saturating_add(1);
        self.phase = Phase::Exited { at_ms: now_ms, failed: true };
        self.message = message;
        self.exit_code = None;
        self.start_failed = true;
        self.health = HealthState::Unknown;
    }

    /// It ended on its own. `code` is `None` when it was killed by a signal
    /// or the code is unknown (counted as a failure); only 0 is a success.
    pub fn exited(&mut self, now_ms: u64, code: Option<i32>, message: String) {
        let ran = match self.phase {
            Phase::Running { since_ms } => now_ms.saturating_sub(since_ms),
            _ => 0,
        };
        self.crash_streak = if ran >= STABLE_RUN_MS { 1 } else { self.crash_streak.saturating_add(1) };
        self.phase = Phase::Exited { at_ms: now_ms, failed: code != Some(0) };
        self.exit_code = code;
        self.start_failed = false;
        self.message = message;
        self.health = HealthState::Unknown;
        self.probe_failures = 0;
    }

    /// A stop finished. With `restart` (unhealthy) it counts as a failure.
    pub fn stopped(&mut self, now_ms: u64, restart: bool, reason: String) {
        if restart {
            let since = match self.phase {
                Phase::Running { since_ms } => since_ms,
                _ => now_ms,
            };
            self.phase = Phase::Running { since_ms: since };
            self.exited(now_ms, None, reason);
        } else {
            self.phase = Phase::Stopped;
            self.message = reason;
            self.health = HealthState::Unknown;
            self.probe_failures = 0;
        }
    }

    /// Whether a probe is due now.
    pub fn probe_due(&self, now_ms: u64) -> bool {
        matches!(self.phase, Phase::Running { .. }) && self.next_probe_ms != 0 && now_ms >= self.next_probe_ms
    }

    /// A probe finished: a pass makes it healthy, `failure_threshold`
    /// failures in a row unhealthy; in between the health stays as it was.
    pub fn probed(&mut self, now_ms: u64, pass: bool, check: &HealthCheck) {
        if !matches!(self.phase, Phase::Running { .. }) {
            return;
        }
        self.next_probe_ms = now_ms.saturating_add(check.interval_ms.max(1));
        if pass {
            self.probe_failures = 0;
            self.health = HealthState::Healthy;
        } else {
            self.probe_failures = self.probe_failures.saturating_add(1);
            if self.probe_failures >= check.failure_threshold.max(1) {
                self.health = HealthState::Unhealthy;
            }
        }
    }
}

/// The report of one allocation. Without a record it was never started
/// here: `stopped` when it is to stop, else `pending`. Health is `unknown`
/// unless it runs and has a check that has answered.
pub fn report(id: &str, record: Option<&AllocRecord>, desired: Option<DesiredState>) -> AllocReport {
    let Some(r) = record else {
        let actual =
            if desired == Some(DesiredState::Stop) { ActualState::Stopped } else { ActualState::Pending };
        return AllocReport {
            id: id.to_string(),
            actual,
            health: HealthState::Unknown,
            restarts: 0,
            message: String::new(),
            ports: BTreeMap::new(),
            devices: Vec::new(),
            exit_code: None,
            failures: 0,
            start_failed: false,
        };
    };
    let actual = match r.phase {
        Phase::Starting => ActualState::Starting,
        Phase::Running { .. } | Phase::Stopping { restart: false } => ActualState::Running,
        Phase::Exited { .. } | Phase::Stopping { restart: true } => ActualState::Restarting,
        Phase::Stopped => ActualState::Stopped,
        Phase::Failed => ActualState::Failed,
        Phase::Completed => ActualState::Completed,
    };
    AllocReport {
        id: id.to_string(),
        actual,
        health: if actual == ActualState::Running { r.health } else { HealthState::Unknown },
        restarts: r.restarts,
        message: r.message.clone(),
        ports: r.ports.clone(),
        devices: r.devices.clone(),
        exit_code: r.exit_code,
        failures: r.crash_streak,
        start_failed: r.start_failed,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use gantry_common::workload::{parse_workload_toml, Allocation, NewAlloc};

    use super::*;

    const NOW: u64 = 1_000_000;

    fn desired(id: &str, state: DesiredState, extra: &str) -> DesiredAlloc {
        let spec = parse_workload_toml(&format!("name = \"w\"\ncommand = \"/bin/true\"\n{extra}")).unwrap();
        DesiredAlloc {
            alloc: Allocation {
                desired: state,
                ..Allocation::pending(
                    id.into(),
                    NewAlloc {
                        workload: "w".into(),
                        version: 1,
                        replica: 0,
                        node: "n".into(),
                        gpus: Vec::new(),
                        cpu_milli: 0,
                        memory_mib: 0,
                    },
                )
            },
            spec: spec.into(),
        }
    }

    fn record(d: &DesiredAlloc, phase: Phase) -> AllocRecord {
        let mut r = AllocRecord::new(d, BTreeMap::new());
        r.phase = phase;
        r.handle = Some(Handle::Process { pid: 1, start_ticks: 1 });
        r
    }

    fn run(id: &str) -> DesiredAlloc {
        desired(id, DesiredState::Run, "")
    }

    const HEALTH: &str =
        "[[ports]]\nname = \"http\"\nport = 80\n[health]\npath = \"/h\"\nport = \"http\"\nfailures = 3\n";

    #[test]
    fn starts_missing_only_with_an_authoritative_set() {
        let set = [run("a"), run("b")];
        let records = BTreeMap::from([("b".to_string(), record(&set[1], Phase::Running { since_ms: 0 }))]);
        assert_eq!(reconcile(&set, true, &records, NOW), [Action::Start { id: "a".into() }]);
        assert_eq!(reconcile(&set, false, &records, NOW), []);
        // Idempotent: a start under way is not asked for again.
        let mut records = records;
        records.insert("a".into(), record(&set[0], Phase::Starting));
        assert_eq!(reconcile(&set, true, &records, NOW), []);
    }

    #[test]
    fn stops_desired_stop_and_unassigned_then_forgets() {
        let mut stop = desired("a", DesiredState::Stop, "");
        stop.alloc.desired_reason = "workload stopped".into();
        let gone = run("b");
        let records = BTreeMap::from([
            ("a".to_string(), record(&stop, Phase::Running { since_ms: 0 })),
            ("b".to_string(), record(&gone, Phase::Running { since_ms: 0 })),
            ("c".to_string(), record(&gone, Phase::Stopped)),
        ]);
        let actions = reconcile(std::slice::from_ref(&stop), true, &records, NOW);
        assert_eq!(
            actions,
            [
                Action::Stop { id: "a".into(), restart: false, reason: "stopped: workload stopped".into() },
                Action::Stop {
                    id: "b".into(),
                    restart: false,
                    reason: "stopped: no longer assigned to this node".into()
                },
                Action::Forget { id: "c".into() },
            ]
        );
        // Without an authoritative set nothing is stopped that is not marked stop.
        let actions = reconcile(&[], false, &records, NOW);
        assert_eq!(actions, []);
        // Desired stop of something never started: nothing to do, reported stopped.
        assert_eq!(reconcile(std::slice::from_ref(&stop), true, &BTreeMap::new(), NOW), []);
        assert_eq!(report("a", None, Some(DesiredState::Stop)).actual, ActualState::Stopped);
    }

    /// How a run can end, as the runtime tells the record.
    #[derive(Clone, Copy, Debug)]
    enum End {
        Exit(i32),
        Signal,
        StartFailure,
    }

    fn ended(d: &DesiredAlloc, end: End) -> AllocRecord {
        let mut r = AllocRecord::new(d, BTreeMap::new());
        r.begin_start();
        match end {
            End::StartFailure => r.start_failed(NOW, "cannot start \"/no/such\": not found".into()),
            End::Exit(code) => {
                r.started(NOW - 5, Handle::Process { pid: 1, start_ticks: 1 }, Vec::new(), None);
                r.exited(NOW, Some(code), format!("exit code {code}"));
            }
            End::Signal => {
                r.started(NOW - 5, Handle::Process { pid: 1, start_ticks: 1 }, Vec::new(), None);
                r.exited(NOW, None, "killed by signal 9 (SIGKILL)".into());
            }
        }
        r
    }

    /// Every restart policy against every way a run ends: restarted only
    /// after the backoff, or retired for good (never restarted afterwards).
    #[test]
    fn every_policy_and_every_end() {
        use End::*;
        enum Then {
            Restart,
            Retire(ActualState),
        }
        use Then::*;
        let table = [
            ("always", Exit(0), Restart),
            ("always", Exit(3), Restart),
            ("always", Signal, Restart),
            ("always", StartFailure, Restart),
            ("on-failure", Exit(0), Retire(ActualState::Completed)),
            ("on-failure", Exit(3), Restart),
            ("on-failure", Signal, Restart),
            ("on-failure", StartFailure, Restart),
            ("never", Exit(0), Retire(ActualState::Completed)),
            ("never", Exit(3), Retire(ActualState::Failed)),
            ("never", Signal, Retire(ActualState::Failed)),
            ("never", StartFailure, Retire(ActualState::Failed)),
        ];
        for (policy, end, then) in table {
            let case = format!("{policy} x {end:?}");
            let d = desired(
                "a",
                DesiredState::Run,
                &format!("[restart]\npolicy = \"{policy}\"\nbackoff_s = 2\n"),
            );
            let r = ended(&d, end);
            let rep = report("a", Some(&r), Some(DesiredState::Run));
            assert_eq!(rep.actual, ActualState::Restarting, "{case}: waits for the decision");
            assert_eq!(rep.start_failed, matches!(end, StartFailure), "{case}");
            assert_eq!(rep.exit_code, if let Exit(c) = end { Some(c) } else { None }, "{case}");
            assert_eq!(rep.failures, 1, "{case}");
            let records = BTreeMap::from([("a".to_string(), r.clone())]);
            let set = std::slice::from_ref(&d);
            for authoritative in [true, false] {
                let early = reconcile(set, authoritative, &records, NOW + 1_999);
                let due = reconcile(set, authoritative, &records, NOW + 2_000);
                match &then {
                    Restart => {
                        assert_eq!(early, [], "{case}: no restart before the backoff");
                        assert_eq!(due, [Action::Start { id: "a".into() }], "{case}");
                    }
                    Retire(_) => {
                        let failed = !matches!(end, Exit(0));
                        assert_eq!(early, [Action::Retire { id: "a".into(), failed }], "{case}");
                    }
                }
            }
            if let Retire(state) = then {
                // What the manager does on Retire; afterwards nothing starts it again.
                let mut r = r;
                r.phase = if state == ActualState::Failed { Phase::Failed } else { Phase::Completed };
                let rep = report("a", Some(&r), Some(DesiredState::Run));
                assert_eq!(rep.actual, state, "{case}");
                let records = BTreeMap::from([("a".to_string(), r)]);
                for later in [NOW, NOW + 10_000, NOW + 10_000_000] {
                    assert_eq!(reconcile(std::slice::from_ref(&d), true, &records, later), [], "{case}");
                }
            }
        }
    }

    #[test]
    fn a_stopped_replica_is_not_started_again_even_if_still_desired() {
        let d = run("a");
        let mut r = record(&d, Phase::Running { since_ms: 0 });
        r.stopped(NOW, false, "stopped: x".into());
        let records = BTreeMap::from([("a".to_string(), r)]);
        assert_eq!(reconcile(std::slice::from_ref(&d), true, &records, NOW + 60_000), []);
    }

    #[test]
    fn the_backoff_grows_across_a_crash_loop_and_failures_are_reported() {
        let d = run("a");
        let mut r = AllocRecord::new(&d, BTreeMap::new());
        let mut now = NOW;
        let mut waits = Vec::new();
        for _ in 0..4 {
            r.begin_start();
            r.started(now, Handle::Process { pid: 1, start_ticks: 1 }, Vec::new(), None);
            r.exited(now + 10, Some(1), "exit code 1".into());
            let records = BTreeMap::from([("a".to_string(), r.clone())]);
            let set = std::slice::from_ref(&d);
            let mut t = now + 10;
            while reconcile(set, true, &records, t).is_empty() {
                t += 100;
            }
            waits.push(t - (now + 10));
            now = t;
        }
        assert_eq!(waits, [1_000, 2_000, 4_000, 8_000]);
        let rep = report("a", Some(&r), Some(DesiredState::Run));
        assert_eq!(rep.failures, 4);
        assert_eq!(rep.restarts, 3);
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_after_a_stable_run() {
        let p = RestartPolicy { mode: RestartMode::Always, backoff_ms: 1_000, max_backoff_ms: 5_000 };
        assert_eq!([1, 2, 3, 4, 100].map(|s| backoff_ms(&p, s)), [1_000, 2_000, 4_000, 5_000, 5_000]);
        assert_eq!(backoff_ms(&p, 0), 1_000);
        let d = run("a");
        let mut r = AllocRecord::new(&d, BTreeMap::new());
        r.started(0, Handle::Process { pid: 1, start_ticks: 1 }, Vec::new(), None);
        r.exited(100, Some(1), "exit code 1".into());
        assert_eq!(r.crash_streak, 1);
        r.begin_start();
        assert_eq!(r.restarts, 1);
        r.started(200, Handle::Process { pid: 2, start_ticks: 2 }, Vec::new(), None);
        r.exited(300, Some(1), "exit code 1".into());
        assert_eq!(r.crash_streak, 2);
        r.begin_start();
        r.started(400, Handle::Process { pid: 3, start_ticks: 3 }, Vec::new(), None);
        r.exited(400 + STABLE_RUN_MS, None, "unknown".into());
        assert_eq!(r.crash_streak, 1, "a stable run resets the doubling");
        assert_eq!(r.phase, Phase::Exited { at_ms: 400 + STABLE_RUN_MS, failed: true });
        assert_eq!(r.restarts, 2);
        let rep = report("a", Some(&r), Some(DesiredState::Run));
        assert_eq!((rep.actual, rep.restarts, rep.message.as_str()), (ActualState::Restarting, 2, "unknown"));
    }

    #[test]
    fn a_running_replica_shows_why_it_last_ended_as_the_past() {
        let d = run("a");
        let mut r = AllocRecord::new(&d, BTreeMap::new());
        r.begin_start();
        r.start_failed(10, "GPU 0: the MPS control daemon did not start".into());
        r.begin_start();
        r.started(20, Handle::Process { pid: 1, start_ticks: 1 }, Vec::new(), None);
        assert_eq!(r.restarts, 1);
        assert_eq!(r.message, "restarted after: GPU 0: the MPS control daemon did not start");
        r.exited(30, Some(2), "exit code 2".into());
        assert_eq!(r.message, "exit code 2");
        r.begin_start();
        r.started(40, Handle::Process { pid: 2, start_ticks: 2 }, Vec::new(), None);
        assert_eq!(r.message, "restarted after: exit code 2");
        let mut fresh = AllocRecord::new(&d, BTreeMap::new());
        fresh.started(0, Handle::Process { pid: 3, start_ticks: 3 }, Vec::new(), None);
        assert_eq!(fresh.message, "");
    }

    #[test]
    fn unhealthy_restarts_after_the_threshold_except_with_never() {
        let d = desired("a", DesiredState::Run, HEALTH);
        let check = d.spec.health.clone().unwrap();
        let mut r = AllocRecord::new(&d, BTreeMap::new());
        r.started(NOW, Handle::Process { pid: 1, start_ticks: 1 }, Vec::new(), Some(&check));
        assert!(!r.probe_due(NOW - 1));
        assert!(r.probe_due(NOW + check.initial_delay_ms));
        r.probed(NOW, true, &check);
        assert_eq!(r.health, HealthState::Healthy);
        assert_eq!(r.next_probe_ms, NOW + check.interval_ms);
        for _ in 0..2 {
            r.probed(NOW, false, &check);
        }
        assert_eq!(r.health, HealthState::Healthy, "below the threshold the health stands");
        let records = BTreeMap::from([("a".to_string(), r.clone())]);
        assert_eq!(reconcile(std::slice::from_ref(&d), true, &records, NOW), []);
        r.probed(NOW, false, &check);
        assert_eq!(r.health, HealthState::Unhealthy);
        assert_eq!(report("a", Some(&r), None).health, HealthState::Unhealthy);
        let records = BTreeMap::from([("a".to_string(), r.clone())]);
        let actions = reconcile(std::slice::from_ref(&d), true, &records, NOW);
        assert!(
            matches!(&actions[..], [Action::Stop { restart: true, reason, .. }] if reason.contains("unhealthy"))
        );
        let never = desired("a", DesiredState::Run, &format!("{HEALTH}[restart]\npolicy = \"never\"\n"));
        assert_eq!(reconcile(std::slice::from_ref(&never), true, &records, NOW), []);
        // The stop for health counts as a failure and leads to a restart after the backoff.
        r.phase = Phase::Stopping { restart: true };
        assert_eq!(report("a", Some(&r), None).actual, ActualState::Restarting);
        r.stopped(NOW + 5, true, "unhealthy".into());
        assert_eq!(r.phase, Phase::Exited { at_ms: NOW + 5, failed: true });
        let records = BTreeMap::from([("a".to_string(), r)]);
        let later = NOW + 5 + d.spec.restart.backoff_ms;
        assert_eq!(
            reconcile(std::slice::from_ref(&d), true, &records, later),
            [Action::Start { id: "a".into() }]
        );
    }

    #[test]
    fn reports_follow_the_phase() {
        let d = run("a");
        let mut r = AllocRecord::new(&d, BTreeMap::from([("http".to_string(), 20_001)]));
        assert_eq!(report("a", Some(&r), None).actual, ActualState::Starting);
        r.started(NOW, Handle::Process { pid: 1, start_ticks: 1 }, vec!["GPU-a".into()], None);
        let rep = report("a", Some(&r), None);
        assert_eq!(rep.actual, ActualState::Running);
        assert_eq!(rep.health, HealthState::Unknown, "no check: health stays unknown");
        assert_eq!(rep.ports["http"], 20_001);
        assert_eq!(rep.devices, ["GPU-a"]);
        r.start_failed(NOW, "image missing".into());
        assert_eq!(report("a", Some(&r), None).actual, ActualState::Restarting);
        r.phase = Phase::Failed;
        assert_eq!(report("a", Some(&r), None).actual, ActualState::Failed);
        r.stopped(NOW, false, "stopped: x".into());
        assert_eq!(report("a", Some(&r), None).actual, ActualState::Stopped);
        assert_eq!(report("b", None, Some(DesiredState::Run)).actual, ActualState::Pending);
    }
}
