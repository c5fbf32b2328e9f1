//! How many connection handshakes a coordinator works on at once.
//!
//! A handshake (mutual TLS over QUIC) is the most CPU a connection costs,
//! and a fleet that starts, or moves to a new leader, brings thousands at
//! once. Taken all together they finish late: at 5,000 simulated nodes on
//! two cores most took longer than the agents' 2 s connect timeout, every
//! node retried, and after a minute fewer than 500 were registered while
//! the coordinators did nothing but handshakes that were given up on.
//!
//! So beyond a bound the coordinator refuses at once (a QUIC
//! CONNECTION_REFUSED, which costs no cryptography); an agent refused backs
//! off with jitter and retries, and the handshakes taken finish in time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Handshakes in flight per CPU the process may use.
const HANDSHAKES_PER_CPU: usize = 32;
/// How long a connection beyond the bound may wait for a place before it
/// is refused (a client retransmits its first packet meanwhile).
const WAIT_FOR_A_PLACE: std::time::Duration = std::time::Duration::from_millis(100);

/// Shared by the accept loop and the metrics; cheap to clone.
#[derive(Clone)]
pub struct Admission {
    handshakes: Arc<Semaphore>,
    limit: usize,
    refused: Arc<AtomicU64>,
}

impl Default for Admission {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Admission::with_limit(HANDSHAKES_PER_CPU * cpus)
    }
}

impl Admission {
    pub fn with_limit(limit: usize) -> Admission {
        let limit = limit.max(1);
        Admission { handshakes: Arc::new(Semaphore::new(limit)), limit, refused: Arc::default() }
    }

    /// A place for one handshake (held until its hello is answered), or
    /// `None` when `limit` are in flight: refuse the connection.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.handshakes.clone().try_acquire_owned().ok();
        if permit.is_none() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        permit
    }

    /// A place, waiting up to [`WAIT_FOR_A_PLACE`] for one to free, or
    /// `None` (counted): refuse. The short wait keeps every place busy
    /// while refused clients are away on their backoff.
    pub async fn admit_soon(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.handshakes.clone().try_acquire_owned() {
            return Some(permit);
        }
        match tokio::time::timeout(WAIT_FOR_A_PLACE, self.handshakes.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Some(permit),
            _ => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Half the places or more are taken: connections from addresses not
    /// yet validated are asked to prove theirs first (a QUIC Retry, which
    /// keeps no state), so a flood of first packets from forged sources,
    /// never finishing a handshake, cannot hold the places for
    /// `HANDSHAKE_TIMEOUT` each and lock everyone else out.
    pub fn crowded(&self) -> bool {
        self.handshakes.available_permits() <= self.limit / 2
    }

    /// Connections refused because `limit` handshakes were in flight.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_then_refuses_and_counts() {
        let a = Admission::with_limit(2);
        let first = a.admit().expect("first");
        let _second = a.admit().expect("second");
        assert!(a.admit().is_none());
        assert!(a.admit().is_none());
        assert_eq!(a.refused(), 2);
        drop(first);
        assert!(a.admit().is_some(), "a finished handshake frees its place");
        assert_eq!(a.refused(), 2);
    }

    #[tokio::test]
    async fn a_connection_beyond_the_bound_waits_briefly_for_a_place() {
        let a = Admission::with_limit(1);
        let held = a.admit().expect("first");
        // Nothing frees: refused after the wait, and counted.
        assert!(a.admit_soon().await.is_none());
        assert_eq!(a.refused(), 1);
        // A place that frees during the wait is taken.
        let waiting = tokio::spawn({
            let a = a.clone();
            async move { a.admit_soon().await.is_some() }
        });
        tokio::time::sleep(WAIT_FOR_A_PLACE / 4).await;
        drop(held);
        assert!(waiting.await.unwrap());
        assert_eq!(a.refused(), 1);
    }

    #[test]
    fn crowded_from_half_the_places_taken() {
        let a = Admission::with_limit(4);
        assert!(!a.crowded());
        let one = a.admit().unwrap();
        assert!(!a.crowded());
        let _two = a.admit().unwrap();
        assert!(a.crowded(), "2 of 4 taken");
        drop(one);
        assert!(!a.crowded());
    }

    #[test]
    fn the_default_scales_with_the_cpus() {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        assert_eq!(Admission::default().limit(), HANDSHAKES_PER_CPU * cpus);
        assert_eq!(Admission::with_limit(0).limit(), 1);
    }
}
