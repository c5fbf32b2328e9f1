//! The leader's single plan applier: waits for the state to change (a
//! submission, a report, a node going down, a plan applied) or for a slow
//! tick (to retry pending workloads), plans a round and commits it. One
//! round at a time: the next plan is computed on the state that already
//! holds the previous one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gantry_common::model::GpuTelemetry;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::live_engine::{Followed, LiveEngine};
use super::plan::{all_settled, cluster_telemetry, plan_on, Round, Todo};
use crate::metrics::instruments::observe;
use crate::service::Service;
use crate::state::{Command, CommandResponse};

/// Pending workloads are retried at least this often.
const RETRY: Duration = Duration::from_secs(1);

pub async fn run(service: Service, mut shutdown: watch::Receiver<bool>) {
    let mut changes = service.state.subscribe();
    let config = gantry_placement::EngineConfig::default();
    let mut round: u64 = 0;
    // The engine, kept across rounds while this coordinator leads.
    let mut live: Option<LiveEngine> = None;
    loop {
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(RETRY) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        changes.borrow_and_update();
        if !service.is_leader() {
            live = None;
            continue;
        }
        round += 1;
        let started = Instant::now();
        // On the blocking pool: a round over thousands of nodes must not hold
        // up an async worker. The telemetry is copied out first (only when
        // there is something to plan), so heartbeats never wait for a round.
        let (svc, cfg, kept) = (service.clone(), config.clone(), live.take());
        let planned = tokio::task::spawn_blocking(move || {
            // The snapshot of the last applied batch: the round holds no lock.
            let state = svc.state.snapshot();
            // What to evaluate: with a kept engine, the workloads that
            // changed or wait (O(changes)); without one, all of them.
            let delta = kept.as_ref().map(|engine| engine.delta(&state));
            let todo = match &delta {
                Some(d) => d.todo.clone(),
                None if all_settled(&state) => Todo::These(Default::default()),
                None => Todo::All,
            };
            if todo.is_empty() {
                return (Round::default(), kept, None);
            }
            let copied: Vec<(String, Vec<GpuTelemetry>)> = {
                let telemetry = svc.telemetry.lock();
                telemetry.samples.iter().map(|(n, s)| (n.clone(), s.gpus.clone())).collect()
            };
            let samples = cluster_telemetry(copied.iter().map(|(n, g)| (n.as_str(), g.as_slice())));
            let follow_started = Instant::now();
            let (mut engine, followed) = match (kept, delta) {
                (Some(mut engine), Some(delta)) => {
                    let followed = engine.follow(state, &samples, delta);
                    (engine, followed)
                }
                _ => (LiveEngine::build(state, &samples, &cfg), Followed { set: 0, rebuilt: true }),
            };
            let follow_time = follow_started.elapsed();
            let round = plan_on(&mut engine, round, &todo);
            (round, Some(engine), Some((followed, follow_time)))
        })
        .await;
        let planned = match planned {
            Ok((planned, engine, followed)) => {
                live = engine;
                if followed.is_some() {
                    observe(&service.instruments.plan_round, started.elapsed());
                }
                if let Some((f, took)) = followed {
                    debug!(
                        nodes_set = f.set,
                        rebuilt = f.rebuilt,
                        follow_ms = took.as_secs_f64() * 1e3,
                        "planner engine brought to the state"
                    );
                }
                planned
            }
            Err(e) => {
                warn!("planning round {round} did not finish: {e}");
                continue;
            }
        };
        if let Some(excluded) = planned.excluded {
            let now: BTreeMap<String, String> = excluded.into_iter().map(|e| (e.name, e.reason)).collect();
            let before = service.scheduler_stats.excluded();
            for (node, reason) in now.iter().filter(|(n, r)| before.get(*n) != Some(*r)) {
                warn!(%node, "left out of scheduling: {reason}");
            }
            service.scheduler_stats.set_excluded(now);
        }
        let plan = planned.plan;
        if plan.is_empty() {
            continue;
        }
        let (places, stops) = (plan.place.len(), plan.stop.len());
        let plan_time = started.elapsed();
        match service.write(Command::ApplyPlan(plan)).await {
            Ok((index, CommandResponse::Plan { placed, refused })) => {
                service.scheduler_stats.record(placed.len() as u64, refused.len() as u64);
                service.instruments.plan_placements.observe(placed.len() as f64);
                service.instruments.plan_refused.observe(refused.len() as f64);
                info!(
                    index,
                    planned = places,
                    placed = placed.len(),
                    stopped = stops,
                    refused = refused.len(),
                    plan_ms = plan_time.as_secs_f64() * 1e3,
                    commit_ms = (started.elapsed() - plan_time).as_secs_f64() * 1e3,
                    "plan committed"
                );
                for r in refused.iter().take(5) {
                    debug!("re-check refused {r}");
                }
            }
            Ok((index, other)) => debug!(index, ?other, "plan applied"),
            Err(e) => warn!("plan not committed: {e}"),
        }
    }
}
