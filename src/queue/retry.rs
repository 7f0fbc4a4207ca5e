//! The retry schedule: when a temporarily failed recipient is tried again
//! and when it has waited long enough to bounce. Defaults follow Postfix
//! (`minimal_backoff_time` 300 s, `maximal_backoff_time` 4000 s,
//! `maximal_queue_lifetime` 5 d), all configurable down to seconds.
//!
//! Pure arithmetic over times the caller passes in: this module must never
//! read a clock or touch the spool.

use std::time::Duration;

/// Backoff and lifetime of deferred recipients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait after the first temporary failure.
    pub first_retry: Duration,
    /// Upper bound of one wait, however many attempts failed.
    pub max_retry: Duration,
    /// Age (since arrival) after which a still-deferred recipient bounces.
    pub lifetime: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first_retry: Duration::from_secs(300),
            max_retry: Duration::from_secs(4000),
            lifetime: Duration::from_secs(5 * 24 * 3600),
        }
    }
}

/// What to do with a recipient after a temporary failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again not before this time (ms since the Unix epoch).
    RetryAt(u64),
    /// Its lifetime is over: bounce it (RFC 3464 action "failed", 4.4.7).
    Expired,
}

impl RetryPolicy {
    /// The wait after `attempts` failed attempts (1 = the first failure):
    /// first_retry doubled per further attempt, capped at max_retry.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(63);
        let factor = 1u64.checked_shl(doublings).unwrap_or(u64::MAX);
        let millis = (self.first_retry.as_millis() as u64).saturating_mul(factor);
        Duration::from_millis(millis).min(self.max_retry)
    }

    /// Decide after the `attempts`-th temporary failure, at `now_ms`, of a
    /// message that arrived at `arrived_ms`. A retry that would fall after
    /// the lifetime is moved to the lifetime's end, so the last attempt
    /// happens before the bounce.
    pub fn after_temporary_failure(
        &self,
        attempts: u32,
        arrived_ms: u64,
        now_ms: u64,
    ) -> RetryDecision {
        let expires_ms = arrived_ms.saturating_add(self.lifetime.as_millis() as u64);
        if now_ms >= expires_ms {
            return RetryDecision::Expired;
        }
        let next = now_ms.saturating_add(self.backoff(attempts).as_millis() as u64);
        RetryDecision::RetryAt(next.min(expires_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(0), Duration::from_secs(300));
        assert_eq!(p.backoff(1), Duration::from_secs(300));
        assert_eq!(p.backoff(2), Duration::from_secs(600));
        assert_eq!(p.backoff(3), Duration::from_secs(1200));
        assert_eq!(p.backoff(4), Duration::from_secs(2400));
        assert_eq!(p.backoff(5), Duration::from_secs(4000));
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(4000));
    }

    #[test]
    fn retries_until_lifetime_then_expires() {
        let p = RetryPolicy {
            first_retry: Duration::from_secs(1),
            max_retry: Duration::from_secs(4),
            lifetime: Duration::from_secs(10),
        };
        assert_eq!(
            p.after_temporary_failure(1, 0, 0),
            RetryDecision::RetryAt(1_000)
        );
        assert_eq!(
            p.after_temporary_failure(3, 0, 5_000),
            RetryDecision::RetryAt(9_000)
        );
        // The last retry is pulled in to the end of the lifetime.
        assert_eq!(
            p.after_temporary_failure(5, 0, 8_000),
            RetryDecision::RetryAt(10_000)
        );
        assert_eq!(
            p.after_temporary_failure(6, 0, 10_000),
            RetryDecision::Expired
        );
        assert_eq!(
            p.after_temporary_failure(1, u64::MAX, u64::MAX - 1),
            RetryDecision::RetryAt(u64::MAX)
        );
    }
}
