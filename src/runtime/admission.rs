//! Connection admission, shared by every core and every listener: the
//! global cap on open connections, the cap on concurrent connections from
//! one client, and the per-client connection rate (connections per minute,
//! a sliding window). A connection refused here never reaches a session.
//!
//! Why this shape: the cores share nothing else on the accept path, so the
//! shared part is kept to what a cap needs and nothing more. The global
//! count is one atomic (a `fetch_add`, undone when over the cap). The
//! per-client state is split over [`SHARDS`] mutex-guarded maps chosen by
//! a hash of the client, so two cores contend only when two clients hash
//! to the same shard at the same instant, and a lock is held for one or
//! two hash-map operations: far less than the `accept4` and epoll calls
//! around it. Memory stays bounded under a flood of distinct addresses:
//! an entry of the concurrent map lives only while its client has a
//! connection open (so the global cap bounds the map), and the rate maps
//! hold at most [`RATE_CLIENTS_PER_SHARD_MAX`] clients per one-minute
//! window and are dropped whole as the window slides (a client beyond that
//! bound is admitted untracked by the rate limit, its other caps still
//! apply).
//!
//! This module must never do I/O, read the clock itself (the caller passes
//! the instant) or hold a lock across anything but a map operation.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// Independent locks over the per-client tables.
pub const SHARDS: usize = 64;
/// Clients whose connections one shard counts per rate window (so at
/// most `SHARDS` times this over the server, two windows kept).
pub const RATE_CLIENTS_PER_SHARD_MAX: usize = 4096;
/// The rate limit counts connections over this sliding window.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);
/// IPv6 clients are counted per /64: one subscriber or host usually holds
/// a whole /64, so counting single addresses would cap nothing.
const IPV6_CLIENT_PREFIX: u8 = 64;

/// The admission limits (`[limits]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Open connections over every listener and core.
    pub max_connections: usize,
    /// Open connections from one client.
    pub max_connections_per_ip: usize,
    /// New connections from one client per minute; 0 = no rate limit.
    pub max_connection_rate_per_ip: u32,
    /// Clients exempt from the per-client limits (not from the global cap).
    pub exempt: Vec<IpNet>,
}

impl AdmissionConfig {
    /// The `[limits]` of `config`: the per-client limits exempt `[relay]
    /// mynetworks` when `mynetworks_exempt` is on.
    pub fn of(config: &crate::config::Config) -> AdmissionConfig {
        let limits = &config.limits;
        AdmissionConfig {
            max_connections: limits.max_connections,
            max_connections_per_ip: limits.max_connections_per_ip,
            max_connection_rate_per_ip: limits.max_connection_rate_per_ip,
            exempt: if limits.mynetworks_exempt {
                config.relay.mynetworks.clone()
            } else {
                Vec::new()
            },
        }
    }

    fn exempts(&self, ip: IpAddr) -> bool {
        let ip = unmapped(ip);
        self.exempt.iter().any(|net| net.contains(&ip))
    }
}

/// Why a connection was refused; also the `reason` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server holds `max_connections` already.
    ServerFull,
    /// The client holds `max_connections_per_ip` already.
    ClientConnections,
    /// The client opened `max_connection_rate_per_ip` in the last minute.
    ClientRate,
}

impl Refusal {
    pub const ALL: [Refusal; 3] = [
        Refusal::ServerFull,
        Refusal::ClientConnections,
        Refusal::ClientRate,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::ServerFull => "max_connections",
            Refusal::ClientConnections => "per_ip",
            Refusal::ClientRate => "rate",
        }
    }

    /// The reason as the client reads it in the protocol's refusal.
    pub fn text(self) -> &'static str {
        match self {
            Refusal::ServerFull => "Too many connections, try again later",
            Refusal::ClientConnections => "Too many connections from your address",
            Refusal::ClientRate => "Too many connections per minute from your address",
        }
    }
}

/// The key a client is counted under: its IPv4 address, or its IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ClientKey(IpAddr);

impl ClientKey {
    fn of(ip: IpAddr) -> ClientKey {
        match unmapped(ip) {
            IpAddr::V6(v6) => {
                let mask = u128::MAX << (128 - u32::from(IPV6_CLIENT_PREFIX));
                ClientKey(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)))
            }
            v4 => ClientKey(v4),
        }
    }
}

/// An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Connections counted over a sliding window: the count of the current
/// window plus the previous window's, weighted by how much of it still
/// lies within the last [`RATE_WINDOW`].
#[derive(Debug)]
struct RateWindows {
    started: Instant,
    current: HashMap<ClientKey, u32>,
    previous: HashMap<ClientKey, u32>,
}

impl RateWindows {
    fn new(now: Instant) -> RateWindows {
        RateWindows {
            started: now,
            current: HashMap::new(),
            previous: HashMap::new(),
        }
    }

    fn slide(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed >= 2 * RATE_WINDOW {
            self.previous = HashMap::new();
            self.current = HashMap::new();
            self.started = now;
        } else if elapsed >= RATE_WINDOW {
            self.previous = std::mem::take(&mut self.current);
            self.started += RATE_WINDOW;
        }
    }

    /// Counts one connection of `key` at `now`; the estimated number of
    /// connections in the last minute, this one included.
    fn record(&mut self, key: ClientKey, now: Instant) -> u64 {
        self.slide(now);
        let full = self.current.len() >= RATE_CLIENTS_PER_SHARD_MAX;
        let current = match self.current.get_mut(&key) {
            Some(count) => {
                *count = count.saturating_add(1);
                *count
            }
            // Table full: this client goes untracked for this window.
            None if full => return 0,
            None => {
                self.current.insert(key, 1);
                1
            }
        };
        let previous = u64::from(self.previous.get(&key).copied().unwrap_or(0));
        let window = RATE_WINDOW.as_millis() as u64;
        let into = (now.saturating_duration_since(self.started).as_millis() as u64).min(window);
        u64::from(current) + previous * (window - into) / window
    }
}

#[derive(Debug)]
struct Shard {
    open: HashMap<ClientKey, usize>,
    rate: RateWindows,
}

/// The shared admission state. One per server, behind an `Arc`.
/// The counters behind the limits. The limits themselves come with each
/// call (`admit`), from the core's live settings, so a reload changes
/// them without touching anything shared.
#[derive(Debug)]
pub struct Admission {
    open: AtomicUsize,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
}

/// One admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    /// None for an exempt client (counted by the global cap only).
    client: Option<ClientKey>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(key) = self.client {
            let mut shard = self.admission.shard(key);
            if let Some(count) = shard.open.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    shard.open.remove(&key);
                }
            }
        }
        self.admission.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admission {
    pub fn new(now: Instant) -> Arc<Admission> {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    open: HashMap::new(),
                    rate: RateWindows::new(now),
                })
            })
            .collect();
        Arc::new(Admission {
            open: AtomicUsize::new(0),
            hasher: RandomState::new(),
            shards,
        })
    }

    /// Open connections admitted and not yet dropped.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn shard(&self, key: ClientKey) -> MutexGuard<'_, Shard> {
        let index = (self.hasher.hash_one(key) as usize) % self.shards.len();
        // A panic while holding a shard cannot leave a map half-updated
        // (every critical section is one map operation), so a poisoned
        // lock is still consistent.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admit a connection from `ip` at `now` under `limits`, or say why
    /// not. Lowered limits refuse new connections until enough of the
    /// open ones end; none is cut.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        now: Instant,
        limits: &AdmissionConfig,
    ) -> Result<Permit, Refusal> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= limits.max_connections {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::ServerFull);
        }
        if limits.exempts(ip) {
            return Ok(Permit {
                admission: Arc::clone(self),
                client: None,
            });
        }
        let key = ClientKey::of(ip);
        let refusal = {
            let mut shard = self.shard(key);
            let rate_limit = u64::from(limits.max_connection_rate_per_ip);
            let open = shard.open.get(&key).copied().unwrap_or(0);
            if rate_limit > 0 && shard.rate.record(key, now) > rate_limit {
                Some(Refusal::ClientRate)
            } else if open >= limits.max_connections_per_ip {
                Some(Refusal::ClientConnections)
            } else {
                shard.open.insert(key, open + 1);
                None
            }
        };
        match refusal {
            Some(refusal) => {
                self.open.fetch_sub(1, Ordering::Relaxed);
                Err(refusal)
            }
            None => Ok(Permit {
                admission: Arc::clone(self),
                client: Some(key),
            }),
        }
    }

    /// Clients the rate limit tracks now (both windows), for tests.
    #[cfg(test)]
    fn rate_entries(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let shard = s.lock().unwrap();
                shard.rate.current.len() + shard.rate.previous.len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AdmissionConfig {
        AdmissionConfig {
            max_connections: 10,
            max_connections_per_ip: 2,
            max_connection_rate_per_ip: 0,
            exempt: vec!["127.0.0.1/32".parse().unwrap()],
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// The shared counters with the limits one core holds between reloads.
    struct Limited {
        admission: Arc<Admission>,
        limits: AdmissionConfig,
    }

    impl Limited {
        fn new(limits: AdmissionConfig, now: Instant) -> Limited {
            Limited {
                admission: Admission::new(now),
                limits,
            }
        }

        fn admit(&self, ip: IpAddr, now: Instant) -> Result<Permit, Refusal> {
            self.admission.admit(ip, now, &self.limits)
        }
    }

    impl std::ops::Deref for Limited {
        type Target = Admission;

        fn deref(&self) -> &Admission {
            &self.admission
        }
    }

    #[test]
    fn changed_limits_apply_to_the_next_connection_and_cut_none() {
        let now = Instant::now();
        let admission = Admission::new(now);
        let loose = config();
        let held: Vec<Permit> = (0..2)
            .map(|_| admission.admit(ip("192.0.2.1"), now, &loose).unwrap())
            .collect();
        let exempt: Vec<Permit> = (0..3)
            .map(|_| admission.admit(ip("127.0.0.1"), now, &loose).unwrap())
            .collect();
        // A reload lowers the caps and ends the exemption.
        let tight = AdmissionConfig {
            max_connections: 7,
            max_connections_per_ip: 1,
            exempt: Vec::new(),
            ..config()
        };
        assert_eq!(
            admission.admit(ip("192.0.2.1"), now, &tight).unwrap_err(),
            Refusal::ClientConnections
        );
        let first = admission.admit(ip("127.0.0.1"), now, &tight).unwrap();
        assert_eq!(
            admission.admit(ip("127.0.0.1"), now, &tight).unwrap_err(),
            Refusal::ClientConnections
        );
        let last = admission.admit(ip("192.0.2.7"), now, &tight).unwrap();
        assert_eq!(
            admission.admit(ip("192.0.2.8"), now, &tight).unwrap_err(),
            Refusal::ServerFull
        );
        assert_eq!(admission.open(), 7, "nothing open was cut");
        // Connections admitted under the old limits give their places back.
        drop(held);
        drop(exempt);
        drop((first, last));
        assert_eq!(admission.open(), 0);
        let _again = admission.admit(ip("192.0.2.1"), now, &tight).unwrap();
    }

    #[test]
    fn per_client_cap_leaves_other_clients_alone() {
        let now = Instant::now();
        let a = Limited::new(config(), now);
        let first = a.admit(ip("192.0.2.1"), now).unwrap();
        let _second = a.admit(ip("192.0.2.1"), now).unwrap();
        assert_eq!(
            a.admit(ip("192.0.2.1"), now).unwrap_err(),
            Refusal::ClientConnections
        );
        let _other = a.admit(ip("192.0.2.2"), now).unwrap();
        assert_eq!(a.open(), 3);
        drop(first);
        assert_eq!(a.open(), 2);
        let _again = a.admit(ip("192.0.2.1"), now).unwrap();
    }

    #[test]
    fn global_cap_counts_exempt_clients_too() {
        let now = Instant::now();
        let a = Limited::new(config(), now);
        let permits: Vec<Permit> = (0..10)
            .map(|_| a.admit(ip("127.0.0.1"), now).unwrap())
            .collect();
        assert_eq!(
            a.admit(ip("127.0.0.1"), now).unwrap_err(),
            Refusal::ServerFull
        );
        assert_eq!(
            a.admit(ip("192.0.2.9"), now).unwrap_err(),
            Refusal::ServerFull
        );
        drop(permits);
        assert_eq!(a.open(), 0);
        a.admit(ip("192.0.2.9"), now).unwrap();
    }

    #[test]
    fn refused_connections_give_back_their_place() {
        let now = Instant::now();
        let a = Limited::new(config(), now);
        let _p: Vec<Permit> = (0..2)
            .map(|_| a.admit(ip("192.0.2.1"), now).unwrap())
            .collect();
        for _ in 0..20 {
            assert!(a.admit(ip("192.0.2.1"), now).is_err());
        }
        assert_eq!(a.open(), 2);
    }

    #[test]
    fn ipv6_clients_count_per_slash_64_and_mapped_ipv4_as_ipv4() {
        let now = Instant::now();
        let a = Limited::new(config(), now);
        let _p1 = a.admit(ip("2001:db8:1:2::1"), now).unwrap();
        let _p2 = a.admit(ip("2001:db8:1:2:ffff::9"), now).unwrap();
        assert_eq!(
            a.admit(ip("2001:db8:1:2::3"), now).unwrap_err(),
            Refusal::ClientConnections
        );
        let _other = a.admit(ip("2001:db8:1:3::1"), now).unwrap();
        let _v4 = a.admit(ip("192.0.2.5"), now).unwrap();
        let _v4b = a.admit(ip("::ffff:192.0.2.5"), now).unwrap();
        assert_eq!(
            a.admit(ip("192.0.2.5"), now).unwrap_err(),
            Refusal::ClientConnections
        );
        // The exemption sees through the mapping as well.
        let exempt: Vec<Permit> = (0..3)
            .map(|_| a.admit(ip("::ffff:127.0.0.1"), now).unwrap())
            .collect();
        assert_eq!(exempt.len(), 3);
    }

    #[test]
    fn rate_limit_slides_over_a_minute() {
        let start = Instant::now();
        let a = Limited::new(
            AdmissionConfig {
                max_connection_rate_per_ip: 3,
                ..config()
            },
            start,
        );
        let client = ip("198.51.100.1");
        for _ in 0..3 {
            drop(a.admit(client, start).unwrap());
        }
        assert_eq!(a.admit(client, start).unwrap_err(), Refusal::ClientRate);
        // Refused attempts count: a client hammering stays refused.
        let later = start + Duration::from_secs(30);
        assert_eq!(a.admit(client, later).unwrap_err(), Refusal::ClientRate);
        // Another client is not affected.
        drop(a.admit(ip("198.51.100.2"), later).unwrap());
        // A window and a half later, the old attempts weigh half: 5 * 0.5.
        let next = start + Duration::from_secs(90);
        drop(a.admit(client, next).unwrap());
        // Two quiet windows later everything is forgotten.
        let quiet = start + Duration::from_secs(300);
        for _ in 0..3 {
            drop(a.admit(client, quiet).unwrap());
        }
        assert_eq!(a.admit(client, quiet).unwrap_err(), Refusal::ClientRate);
    }

    #[test]
    fn rate_tables_stay_bounded_under_a_flood_of_addresses() {
        let start = Instant::now();
        let a = Limited::new(
            AdmissionConfig {
                max_connections: usize::MAX,
                max_connection_rate_per_ip: 1,
                ..config()
            },
            start,
        );
        let bound = SHARDS * RATE_CLIENTS_PER_SHARD_MAX;
        for n in 0..(bound as u32 + 50_000) {
            let client = IpAddr::V4((0x0a00_0000 + n).into());
            drop(a.admit(client, start).unwrap());
        }
        assert!(a.rate_entries() <= bound, "{}", a.rate_entries());
        // Each shard slides its window when next used: the flood is
        // forgotten and only the new clients are tracked.
        let later = start + 3 * RATE_WINDOW;
        for n in 0..10_000u32 {
            let client = IpAddr::V4((0xc000_0000 + n).into());
            drop(a.admit(client, later).unwrap());
        }
        assert_eq!(a.rate_entries(), 10_000);
    }

    #[test]
    fn exempt_clients_skip_the_per_client_limits() {
        let now = Instant::now();
        let a = Limited::new(
            AdmissionConfig {
                max_connection_rate_per_ip: 1,
                ..config()
            },
            now,
        );
        let permits: Vec<Permit> = (0..5)
            .map(|_| a.admit(ip("127.0.0.1"), now).unwrap())
            .collect();
        assert_eq!(permits.len(), 5);
    }
}
