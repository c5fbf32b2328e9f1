//! A batch of workloads in one request (`gantryctl run FILE... | DIR`).
//!
//! ```text
//!   every member speaks protocol 3 ──► one Raft entry (SubmitWorkloads): all or none
//!   a member speaks only 2         ──► one SubmitWorkload entry per spec, in order
//! ```
//!
//! A coordinator of the previous version cannot read a `SubmitWorkloads`
//! entry, so the leader proposes one only when every member's connection
//! agreed version 3 ([`Service::cluster_speaks`]); a follower forwards the
//! batch only to a leader that speaks 3. Otherwise the batch goes as one
//! write per spec, each with a key derived from the batch's, so a retried
//! batch repeats none of them. Either way every spec is checked first, and
//! one invalid spec submits nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use gantry_common::api::{ApiFailure, ApiRequest, ApiResponse, FailureKind, SubmitResult, MAX_BATCH};
use gantry_common::workload::WorkloadSpec;

use super::Service;
use crate::state::{Command, CommandResponse};

/// The protocol version that carries batches.
pub const BATCH_PROTOCOL: u32 = 3;
/// How long the leader waits to learn a member's version before it splits.
const VERSION_WAIT: Duration = Duration::from_millis(500);

/// Checks a batch before anything is written: its size, every spec (the
/// error names `specs[i].field`), and that no name appears twice.
pub fn check(specs: &[WorkloadSpec]) -> Result<(), ApiFailure> {
    let invalid = |message: String, field: String| ApiFailure {
        kind: FailureKind::Invalid,
        message,
        field: Some(field),
    };
    if specs.is_empty() {
        return Err(invalid("specs: a batch holds at least one workload".into(), "specs".into()));
    }
    if specs.len() > MAX_BATCH {
        return Err(invalid(
            format!("specs: a batch holds at most {MAX_BATCH} workloads, this one {}", specs.len()),
            "specs".into(),
        ));
    }
    let bytes = gantry_common::schema::encode(specs).map_or(usize::MAX, |b| b.len());
    if bytes > crate::state::MAX_BATCH_BYTES {
        return Err(invalid(
            format!(
                "specs: a batch is at most {} MiB encoded, this one {bytes} bytes; send it in parts",
                crate::state::MAX_BATCH_BYTES >> 20
            ),
            "specs".into(),
        ));
    }
    let mut names = BTreeSet::new();
    for (i, spec) in specs.iter().enumerate() {
        if let Err(e) = spec.validate() {
            return Err(invalid(
                format!("specs[{i}] ({:?}): {e}", spec.name),
                format!("specs[{i}].{}", e.field),
            ));
        }
        if !names.insert(spec.name.as_str()) {
            return Err(invalid(
                format!("specs[{i}]: workload {:?} appears twice in the batch", spec.name),
                format!("specs[{i}].name"),
            ));
        }
    }
    Ok(())
}

/// The idempotency key of spec `i` of a batch sent one write per spec.
pub fn spec_key(batch_key: &str, i: usize) -> String {
    let hash = batch_key
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("batch-{hash:016x}-{i}")
}

/// The results of a one-entry batch from its answer (`Unchanged`: every
/// spec was already current, so the versions are read from the state).
pub fn results(
    specs: &[WorkloadSpec],
    response: CommandResponse,
    log_index: u64,
    current_version: impl Fn(&str) -> Option<u64>,
) -> Result<Vec<SubmitResult>, ApiFailure> {
    let unexpected = |r: &CommandResponse| {
        ApiFailure::new(FailureKind::Internal, format!("unexpected answer to a batch: {r:?}"))
    };
    match response {
        CommandResponse::Batch(answers) if answers.len() == specs.len() => specs
            .iter()
            .zip(answers)
            .map(|(spec, answer)| match answer {
                CommandResponse::Workload { version, changed } => {
                    Ok(SubmitResult { workload: spec.name.clone(), version, changed, log_index })
                }
                other => Err(unexpected(&other)),
            })
            .collect(),
        CommandResponse::Unchanged => specs
            .iter()
            .map(|spec| {
                let version =
                    current_version(&spec.name).ok_or_else(|| unexpected(&CommandResponse::Unchanged))?;
                Ok(SubmitResult { workload: spec.name.clone(), version, changed: false, log_index })
            })
            .collect(),
        other => Err(unexpected(&other)),
    }
}

impl Service {
    /// Whether every other member's connection agreed at least `version`
    /// (the leader asks before proposing an entry of that version).
    pub async fn cluster_speaks(&self, version: u32) -> bool {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        for (id, node) in membership.membership().nodes() {
            if *id == self.id {
                continue;
            }
            match self.peers.version_with(&node.addr, VERSION_WAIT).await {
                Some(v) if v >= version => {}
                _ => return false,
            }
        }
        self.peers.max_protocol() >= version
    }

    /// Whether the leader at `addr` takes batches.
    pub async fn leader_speaks(&self, addr: &str, version: u32) -> bool {
        self.peers.max_protocol() >= version
            && self.peers.version_with(addr, VERSION_WAIT).await.is_some_and(|v| v >= version)
    }

    /// A batch sent one write per spec, in order, through the ordinary
    /// write path (forwarded, retried). Stops at the first failure, saying
    /// which spec and how many before it were submitted.
    pub(super) async fn submit_one_by_one(
        &self,
        specs: Vec<WorkloadSpec>,
        batch_key: &str,
    ) -> Result<ApiResponse, ApiFailure> {
        let total = specs.len();
        let mut done = Vec::with_capacity(total);
        for (i, spec) in specs.into_iter().enumerate() {
            let name = spec.name.clone();
            let req = ApiRequest::SubmitWorkload { spec: Box::new(spec) };
            match Box::pin(self.write_api(req, spec_key(batch_key, i))).await {
                Ok(ApiResponse::Submitted(r)) => done.push(r),
                Ok(other) => {
                    return Err(ApiFailure::new(
                        FailureKind::Internal,
                        format!("unexpected answer to a submission: {other:?}"),
                    ))
                }
                Err(mut f) => {
                    f.message = format!(
                        "specs[{i}] ({name:?}): {}; the {} before it were submitted, the {} after it were not \
                         (retrying the batch with the same idempotency key repeats none of them)",
                        f.message,
                        done.len(),
                        total - i - 1
                    );
                    return Err(f);
                }
            }
        }
        Ok(ApiResponse::SubmittedBatch(done))
    }

    /// A batch on the leader: one entry when every member reads it.
    pub(super) async fn submit_batch_here(
        &self,
        specs: Vec<WorkloadSpec>,
        key: Option<&str>,
    ) -> Result<Result<ApiResponse, ApiFailure>, super::WriteError> {
        let Some(key) = key else {
            return Ok(Err(ApiFailure::new(FailureKind::Internal, "a batch without an idempotency key")));
        };
        if !self.cluster_speaks(BATCH_PROTOCOL).await {
            tracing::info!(
                workloads = specs.len(),
                "a member speaks protocol 2: the batch goes as one entry per workload"
            );
            return Ok(self.submit_one_by_one(specs, key).await);
        }
        let command = Command::Keyed {
            key: key.to_string(),
            command: Box::new(Command::SubmitWorkloads { specs: specs.clone() }),
        };
        let (log_index, response) = self.write(command).await?;
        let response = match response {
            CommandResponse::Repeat(first) => *first,
            other => other,
        };
        let state = self.state.clone();
        Ok(results(&specs, response, log_index, |name| {
            state.read(|s| s.workloads.get(name).map(|w| w.version))
        })
        .map(ApiResponse::SubmittedBatch))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use gantry_common::workload::parse_workload_toml;

    use super::*;

    fn spec(name: &str) -> WorkloadSpec {
        parse_workload_toml(&format!("name = \"{name}\"\ncommand = \"/bin/x\"\n")).unwrap()
    }

    #[test]
    fn a_batch_is_checked_whole_and_errors_name_the_spec() {
        assert!(check(&[spec("a"), spec("b")]).is_ok());
        let e = check(&[]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("specs"));
        let e = check(&[spec("a"), spec("b"), spec("a")]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("specs[2].name"));
        assert!(e.message.contains("appears twice"), "{}", e.message);
        let mut bad = spec("c");
        bad.replicas = 0;
        let e = check(&[spec("a"), bad]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("specs[1].replicas"), "{}", e.message);
        assert!(e.message.starts_with("specs[1] (\"c\")"), "{}", e.message);
        let many: Vec<_> = (0..=MAX_BATCH).map(|i| spec(&format!("w{i}"))).collect();
        assert!(check(&many).unwrap_err().message.contains("at most"));
        // 100 specs of 120 KB each: valid one by one, too large together.
        let big: Vec<_> = (0..100)
            .map(|i| {
                let mut s = spec(&format!("big{i}"));
                for v in 0..30 {
                    s.env.insert(format!("V{v}"), "x".repeat(4000));
                }
                s
            })
            .collect();
        assert!(big.iter().all(|s| s.validate().is_ok()));
        let e = check(&big).unwrap_err();
        assert!(e.message.contains("MiB encoded"), "{}", e.message);
    }

    #[test]
    fn spec_keys_are_valid_stable_and_distinct() {
        let a = spec_key("0123456789abcdef0123456789abcdef", 9_999);
        gantry_common::api::validate_idempotency_key(&a).unwrap();
        assert_eq!(a, spec_key("0123456789abcdef0123456789abcdef", 9_999));
        assert_ne!(a, spec_key("0123456789abcdef0123456789abcdef", 9_998));
        assert_ne!(a, spec_key("0123456789abcdef0123456789abcdee", 9_999));
    }

    #[test]
    fn results_follow_the_answer() {
        let specs = [spec("a"), spec("b")];
        let answer = CommandResponse::Batch(vec![
            CommandResponse::Workload { version: 1, changed: true },
            CommandResponse::Workload { version: 4, changed: false },
        ]);
        let r = results(&specs, answer, 7, |_| None).unwrap();
        assert_eq!((r[1].workload.as_str(), r[1].version, r[1].changed, r[1].log_index), ("b", 4, false, 7));
        let r =
            results(&specs, CommandResponse::Unchanged, 8, |n| Some(if n == "a" { 2 } else { 3 })).unwrap();
        assert_eq!((r[0].version, r[1].version, r[0].changed), (2, 3, false));
        assert!(results(&specs, CommandResponse::Applied, 9, |_| None).is_err());
        assert!(results(&specs, CommandResponse::Batch(vec![]), 9, |_| None).is_err());
    }
}
