//! The per-core memory of the DNS answers mail authentication looks up:
//! SPF, DKIM key and DMARC records (already parsed), MX, A and AAAA, each
//! kept for its TTL (capped), so a busy sender domain costs one lookup per
//! TTL rather than several per message. The relay resolver under it keeps
//! no cache of its own (its route cache is above it).
//!
//! It must never keep an answer past its TTL, never grow past its
//! capacity, and never be shared between cores (not Sync).

use std::borrow::Borrow;
use std::cell::RefCell;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use mail_auth::common::cache::NoCache;
use mail_auth::{Parameters, RecordSet, ResolverCache, Txt, MX};

use crate::relay::expiring_cache::ExpiringCache;

/// Names remembered per record type and core.
const CACHED_NAMES_MAX: usize = 10_000;
/// Longest time an answer is kept, whatever its TTL (as for MX routes).
const TTL_MAX: Duration = Duration::from_secs(3600);

/// One record type's answers by name.
pub struct Answers<V>(RefCell<ExpiringCache<V, Box<str>>>);

impl<V> Answers<V> {
    fn new(capacity: usize) -> Self {
        Answers(RefCell::new(ExpiringCache::new(capacity)))
    }
}

impl<V: Clone> ResolverCache<Box<str>, V> for Answers<V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.borrow().get(name, Instant::now()).cloned()
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.borrow_mut().remove(name)
    }

    fn insert(&self, name: Box<str>, value: V, valid_until: Instant) {
        self.insert_at(name, value, valid_until, Instant::now());
    }
}

impl<V> Answers<V> {
    /// Keep `value` from `now` until `valid_until`, or for `TTL_MAX`.
    fn insert_at(&self, name: Box<str>, value: V, valid_until: Instant, now: Instant) {
        let ttl = valid_until.saturating_duration_since(now).min(TTL_MAX);
        self.0.borrow_mut().insert(name, value, ttl, now);
    }
}

/// mail-auth's parameters with this core's caches (PTR answers, used only
/// by the rare SPF `ptr` mechanism, are not kept).
pub type Cached<'x, P> = Parameters<
    'x,
    P,
    Answers<Txt>,
    Answers<RecordSet<MX>>,
    Answers<RecordSet<Ipv4Addr>>,
    Answers<RecordSet<Ipv6Addr>>,
    NoCache<IpAddr, RecordSet<Box<str>>>,
>;

/// The caches of one core.
pub struct LookupCache {
    txt: Answers<Txt>,
    mx: Answers<RecordSet<MX>>,
    ipv4: Answers<RecordSet<Ipv4Addr>>,
    ipv6: Answers<RecordSet<Ipv6Addr>>,
}

impl LookupCache {
    pub fn new() -> Self {
        LookupCache {
            txt: Answers::new(CACHED_NAMES_MAX),
            mx: Answers::new(CACHED_NAMES_MAX),
            ipv4: Answers::new(CACHED_NAMES_MAX),
            ipv6: Answers::new(CACHED_NAMES_MAX),
        }
    }

    /// `params` for a mail-auth check that reads and fills these caches.
    pub fn params<P>(&self, params: P) -> Cached<'_, P> {
        Parameters::new(params)
            .with_txt_cache(&self.txt)
            .with_mx_cache(&self.mx)
            .with_ipv4_cache(&self.ipv4)
            .with_ipv6_cache(&self.ipv6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_live_for_their_ttl_capped() {
        let answers: Answers<u32> = Answers::new(4);
        let now = Instant::now();
        answers.insert_at(
            "short.example.".into(),
            1,
            now + Duration::from_secs(300),
            now,
        );
        answers.insert_at(
            "long.example.".into(),
            2,
            now + Duration::from_secs(86_400),
            now,
        );
        answers.insert_at("stale.example.".into(), 3, now, now);
        assert_eq!(answers.get("short.example."), Some(1));
        assert_eq!(answers.get("long.example."), Some(2));
        assert_eq!(answers.get("stale.example."), None);
        let long = answers.0.borrow();
        assert_eq!(long.get("long.example.", now + TTL_MAX / 2), Some(&2));
        assert_eq!(long.get("long.example.", now + TTL_MAX), None);
        assert_eq!(
            long.get("short.example.", now + Duration::from_secs(300)),
            None
        );
    }

    #[test]
    fn removed_answers_are_gone_and_capacity_holds() {
        let answers: Answers<u32> = Answers::new(2);
        let later = Instant::now() + Duration::from_secs(60);
        answers.insert("a.".into(), 1, later);
        assert_eq!(answers.remove("a."), Some(1));
        assert_eq!(answers.get("a."), None);
        for (i, name) in ["b.", "c.", "d."].into_iter().enumerate() {
            answers.insert(name.into(), i as u32, later);
        }
        let kept = ["b.", "c.", "d."]
            .into_iter()
            .filter(|name| answers.get(*name).is_some())
            .count();
        assert_eq!(kept, 2);
    }
}
