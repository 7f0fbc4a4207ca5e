//! Slows password guessing over SMTP AUTH: one core's memory of recent
//! failed attempts by client network, and the delay the driver waits
//! before answering the next failure from there (535 comes late, so each
//! guess costs the guesser time while the server's core stays free).
//!
//! Per core and shared-nothing, like everything on the accept path: a
//! guesser spread over cores by SO_REUSEPORT is slowed on each. It must
//! never grow without bound (entries expire, the table is capped) and
//! never delay a success.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Delay before the 535 for a first failure; doubles with each further
/// failure from the same network while remembered.
pub const FAILURE_DELAY_FIRST: Duration = Duration::from_secs(1);
/// The longest delay, so that a legitimate user behind a guessed-at NAT
/// still gets an answer in reasonable time.
pub const FAILURE_DELAY_MAX: Duration = Duration::from_secs(16);
/// A network's failures are forgotten this long after its last one.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);
/// Networks remembered per core; beyond, the stalest entry goes.
pub const FAILURE_NETWORKS_MAX: usize = 4096;
/// IPv6 clients are counted by /64: one host usually holds a whole /64.
const IPV6_PREFIX_BITS: u32 = 64;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Recent failed AUTH attempts by client network, on one core.
#[derive(Debug, Default)]
pub struct AuthThrottle {
    failures: HashMap<IpAddr, Failures>,
}

impl AuthThrottle {
    /// Record a failure from `client` at `now`; returns how long to wait
    /// before answering it.
    pub fn failed(&mut self, client: IpAddr, now: Instant) -> Duration {
        let key = network_of(client);
        if !self.failures.contains_key(&key) && self.failures.len() >= FAILURE_NETWORKS_MAX {
            self.make_room(now);
        }
        let entry = self.failures.entry(key).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.saturating_duration_since(entry.last) >= FAILURE_MEMORY {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        delay_for(entry.count)
    }

    /// Drop expired entries; if none were, the one idle the longest.
    fn make_room(&mut self, now: Instant) {
        self.failures
            .retain(|_, f| now.saturating_duration_since(f.last) < FAILURE_MEMORY);
        if self.failures.len() < FAILURE_NETWORKS_MAX {
            return;
        }
        if let Some(stalest) = self
            .failures
            .iter()
            .min_by_key(|(_, f)| f.last)
            .map(|(ip, _)| *ip)
        {
            self.failures.remove(&stalest);
        }
    }
}

/// `FAILURE_DELAY_FIRST * 2^(count-1)`, capped.
fn delay_for(count: u32) -> Duration {
    let doublings = count.saturating_sub(1).min(16);
    FAILURE_DELAY_FIRST
        .saturating_mul(1 << doublings)
        .min(FAILURE_DELAY_MAX)
}

/// The key a client is counted under: its IPv4 address (also when mapped
/// into IPv6), or its IPv6 /64.
fn network_of(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & (u128::MAX << (128 - IPV6_PREFIX_BITS));
                IpAddr::V6(bits.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn delay_doubles_per_failure_up_to_the_cap() {
        let mut throttle = AuthThrottle::default();
        let now = Instant::now();
        let delays: Vec<u64> = (0..8)
            .map(|_| throttle.failed(ip("192.0.2.1"), now).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 16, 16, 16]);
        // Another client starts afresh.
        assert_eq!(throttle.failed(ip("192.0.2.2"), now), FAILURE_DELAY_FIRST);
        assert_eq!(delay_for(u32::MAX), FAILURE_DELAY_MAX);
    }

    #[test]
    fn failures_are_forgotten_after_the_memory_window() {
        let mut throttle = AuthThrottle::default();
        let start = Instant::now();
        throttle.failed(ip("192.0.2.1"), start);
        throttle.failed(ip("192.0.2.1"), start);
        let later = start + FAILURE_MEMORY;
        assert_eq!(throttle.failed(ip("192.0.2.1"), later), FAILURE_DELAY_FIRST);
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_ipv4_as_ipv4() {
        let mut throttle = AuthThrottle::default();
        let now = Instant::now();
        throttle.failed(ip("2001:db8:1:2::1"), now);
        assert_eq!(
            throttle.failed(ip("2001:db8:1:2:ffff::9"), now),
            Duration::from_secs(2)
        );
        assert_eq!(
            throttle.failed(ip("2001:db8:1:3::1"), now),
            FAILURE_DELAY_FIRST
        );
        throttle.failed(ip("192.0.2.7"), now);
        assert_eq!(
            throttle.failed(ip("::ffff:192.0.2.7"), now),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut throttle = AuthThrottle::default();
        let start = Instant::now();
        for n in 0..(FAILURE_NETWORKS_MAX as u32 + 100) {
            let client = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            throttle.failed(client, start + Duration::from_millis(u64::from(n)));
        }
        assert_eq!(throttle.failures.len(), FAILURE_NETWORKS_MAX);
        // The newest entries stayed, the stalest went.
        let newest = IpAddr::V4(std::net::Ipv4Addr::from(
            0x0a00_0000 + FAILURE_NETWORKS_MAX as u32 + 99,
        ));
        let oldest = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000));
        assert!(throttle.failures.contains_key(&newest));
        assert!(!throttle.failures.contains_key(&oldest));
        // Expired entries make room in one sweep.
        let much_later = start + FAILURE_MEMORY + Duration::from_secs(3600);
        throttle.failed(ip("192.0.2.1"), much_later);
        assert_eq!(throttle.failures.len(), 1);
    }
}
