//! A bounded map from a key to a value that expires at a deadline: the memory
//! behind the per-core DNS route cache and mail authentication's lookups.
//!
//! It takes the current time as a parameter and must never read the clock,
//! do I/O, or hold more than its capacity.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

struct Entry<V> {
    value: V,
    expires_at: Instant,
}

/// Values keyed by string (or another key), each alive until its own
/// deadline.
pub(crate) struct ExpiringCache<V, K = String> {
    entries: HashMap<K, Entry<V>>,
    capacity: usize,
}

impl<V, K: Hash + Eq + Clone> ExpiringCache<V, K> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity,
        }
    }

    /// The value for `key` if it has not expired at `now`.
    pub(crate) fn get<Q>(&self, key: &Q, now: Instant) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries
            .get(key)
            .filter(|entry| entry.expires_at > now)
            .map(|entry| &entry.value)
    }

    /// Store `value` for `ttl` from `now`, replacing any older value. When the
    /// cache is full, expired entries go first, then the one closest to
    /// expiry, so the entries with the most life left survive.
    pub(crate) fn insert(&mut self, key: K, value: V, ttl: Duration, now: Instant) {
        let Some(expires_at) = now.checked_add(ttl) else {
            return;
        };
        if ttl.is_zero() || self.capacity == 0 {
            self.entries.remove(&key);
            return;
        }
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            self.entries.retain(|_, entry| entry.expires_at > now);
            if self.entries.len() >= self.capacity {
                let soonest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, entry)| entry.expires_at)
                    .map(|(key, _)| key.clone());
                if let Some(soonest) = soonest {
                    self.entries.remove(&soonest);
                }
            }
        }
        self.entries.insert(key, Entry { value, expires_at });
    }

    /// Forget `key`; its value, expired or not, if it had one.
    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.remove(key).map(|entry| entry.value)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn value_lives_until_its_ttl_and_not_after() {
        let start = Instant::now();
        let mut cache = ExpiringCache::new(4);
        cache.insert("example.org".to_owned(), 1, MINUTE, start);
        assert_eq!(cache.get("example.org", start), Some(&1));
        assert_eq!(cache.get("example.org", start + MINUTE / 2), Some(&1));
        assert_eq!(cache.get("example.org", start + MINUTE), None);
        assert_eq!(cache.get("other.example", start), None);
    }

    #[test]
    fn insert_replaces_value_and_deadline() {
        let start = Instant::now();
        let mut cache = ExpiringCache::new(4);
        cache.insert("a".to_owned(), 1, MINUTE, start);
        cache.insert("a".to_owned(), 2, 2 * MINUTE, start);
        assert_eq!(cache.get("a", start + MINUTE), Some(&2));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn zero_ttl_is_not_cached_and_drops_the_old_value() {
        let start = Instant::now();
        let mut cache = ExpiringCache::new(4);
        cache.insert("a".to_owned(), 1, MINUTE, start);
        cache.insert("a".to_owned(), 2, Duration::ZERO, start);
        assert_eq!(cache.get("a", start), None);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn full_cache_drops_expired_entries_first() {
        let start = Instant::now();
        let mut cache = ExpiringCache::new(2);
        cache.insert("short".to_owned(), 1, MINUTE, start);
        cache.insert("long".to_owned(), 2, 10 * MINUTE, start);
        let later = start + 2 * MINUTE;
        cache.insert("new".to_owned(), 3, MINUTE, later);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get("long", later), Some(&2));
        assert_eq!(cache.get("new", later), Some(&3));
    }

    #[test]
    fn full_cache_without_expired_entries_drops_the_soonest_to_expire() {
        let start = Instant::now();
        let mut cache = ExpiringCache::new(2);
        cache.insert("soon".to_owned(), 1, MINUTE, start);
        cache.insert("late".to_owned(), 2, 10 * MINUTE, start);
        cache.insert("new".to_owned(), 3, 5 * MINUTE, start);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get("soon", start), None);
        assert_eq!(cache.get("late", start), Some(&2));
        assert_eq!(cache.get("new", start), Some(&3));
    }

    #[test]
    fn remove_forgets_the_key() {
        let start = Instant::now();
        let mut cache: ExpiringCache<u8, Box<str>> = ExpiringCache::new(2);
        cache.insert("a".into(), 1, MINUTE, start);
        assert_eq!(cache.remove("a"), Some(1));
        assert_eq!(cache.get("a", start), None);
        assert_eq!(cache.remove("a"), None);
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let start = Instant::now();
        let mut cache = ExpiringCache::new(0);
        cache.insert("a".to_owned(), 1, MINUTE, start);
        assert_eq!(cache.get("a", start), None);
    }
}
