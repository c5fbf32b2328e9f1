//! How an agent treats a busy coordinator: whether it keeps its link after
//! a heartbeat that timed out, and how long it waits after a connection
//! refused as busy ([`busy_pause`]).
//!
//! A coordinator that thousands of agents reach at once answers late, but
//! it answers. Dropping the link at the first late answer (as agents did)
//! made every agent connect and register again, and those handshakes and
//! registrations are the load that made the answers late: at 5,000
//! simulated nodes the fleet never settled.
//!
//! A timed-out call is taken as "slow" rather than "gone" when the
//! coordinator sent this connection anything meanwhile (QUIC acknowledges
//! packets and pings every second while it lives): a process that was
//! killed, or a host that is cut off, sends nothing. After
//! [`MAX_UNANSWERED`] in a row the link goes anyway, in case the process
//! is alive but stuck.

/// Unanswered calls in a row after which a link is dropped however alive
/// the connection looks.
pub const MAX_UNANSWERED: u32 = 5;

/// The pause after the `busy`-th connection in a row refused as busy
/// (`RpcError::Busy`), with `jitter` in [0, 1]: 250 ms doubling to at most
/// 2 s, then ±50 %. Shorter than the failure backoff (which reaches 5 s):
/// a refusal costs the coordinator almost nothing and says it is alive,
/// and a fleet that waited 5 s per refusal took 33 s to reach a new
/// leader at 3,000 nodes. The wide jitter spreads a refused fleet out.
pub fn busy_pause(busy: u32, jitter: f64) -> std::time::Duration {
    let base = 250.0 * 2f64.powi(busy.saturating_sub(1).min(8) as i32);
    std::time::Duration::from_millis((base.min(2_000.0) * (0.5 + jitter.clamp(0.0, 1.0))) as u64)
}

/// Follows one link's timed-out calls.
#[derive(Debug, Default)]
pub struct SlowCalls {
    unanswered: u32,
}

impl SlowCalls {
    /// A call timed out. `received_before` and `received_after` are the
    /// datagrams the connection had received when it was sent and now
    /// (`quinn::Connection::stats().udp_rx.datagrams`). True: keep the
    /// link and call again at the next tick.
    pub fn keep_after_timeout(&mut self, received_before: u64, received_after: u64) -> bool {
        self.unanswered += 1;
        received_after > received_before && self.unanswered < MAX_UNANSWERED
    }

    /// A call was answered.
    pub fn answered(&mut self) {
        self.unanswered = 0;
    }

    pub fn unanswered(&self) -> u32 {
        self.unanswered
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_coordinator_loses_the_link_at_once() {
        let mut s = SlowCalls::default();
        assert!(!s.keep_after_timeout(100, 100));
    }

    #[test]
    fn a_coordinator_that_still_sends_keeps_it_until_too_many_in_a_row() {
        let mut s = SlowCalls::default();
        for i in 1..MAX_UNANSWERED {
            assert!(s.keep_after_timeout(10 * u64::from(i), 10 * u64::from(i) + 3), "timeout {i}");
        }
        assert!(!s.keep_after_timeout(1_000, 1_010), "the fifth in a row drops it");
    }

    #[test]
    fn a_busy_pause_doubles_to_two_seconds_with_wide_jitter() {
        let mid = |n| busy_pause(n, 0.5).as_millis();
        assert_eq!([1, 2, 3, 4, 5, 40].map(mid), [250, 500, 1_000, 2_000, 2_000, 2_000]);
        assert_eq!(busy_pause(1, 0.0).as_millis(), 125);
        assert_eq!(busy_pause(9, 1.0).as_millis(), 3_000);
        assert_eq!(busy_pause(0, 0.5).as_millis(), 250, "no refusal yet reads as the first");
    }

    #[test]
    fn an_answer_starts_the_count_again() {
        let mut s = SlowCalls::default();
        for _ in 1..MAX_UNANSWERED {
            assert!(s.keep_after_timeout(0, 1));
        }
        s.answered();
        assert_eq!(s.unanswered(), 0);
        assert!(s.keep_after_timeout(0, 1));
    }
}
