//! The per-session limits every protocol session (SMTP, POP3, IMAP)
//! applies the same way: how many bad commands a client may send, and the
//! deadline of the input a session awaits (the whole command, not each
//! read, so a client trickling one byte at a time is cut off like an idle
//! one; content gets extra time in proportion to its size at a minimum
//! rate, as Postfix's `smtpd_min_data_rate` does).
//!
//! Sans-IO: this module must never read a clock or touch a socket. A
//! session says how long its current unit of input may take; the runtime
//! measures it.

use std::time::Duration;

/// Bad commands before the session ends, by default (Postfix's
/// `smtpd_hard_error_limit`).
pub const HARD_ERROR_LIMIT_DEFAULT: u32 = 20;
/// Content (DATA, BDAT chunks, IMAP literals) must arrive at least this
/// fast, in bytes per second, by default (Postfix's `smtpd_min_data_rate`).
pub const DATA_MIN_RATE_DEFAULT: u64 = 500;

/// Limits shared by every session of one server (`[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Errors a client may cause before the session ends (SMTP: since its
    /// last accepted message; POP3, IMAP: in a row).
    pub hard_error_limit: u32,
    /// Content bytes per second a client must at least keep up.
    pub data_min_rate: u64,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            hard_error_limit: HARD_ERROR_LIMIT_DEFAULT,
            data_min_rate: DATA_MIN_RATE_DEFAULT,
        }
    }
}

impl SessionLimits {
    /// The time a unit of content of `bytes` so far may take: `base`, plus
    /// what `bytes` take at the minimum rate.
    pub fn paced(&self, base: Duration, bytes: u64) -> Duration {
        let rate = self.data_min_rate.max(1);
        base.saturating_add(Duration::from_millis(bytes.saturating_mul(1000) / rate))
    }
}

/// What a session awaits, for the runtime's clock: `unit` changes every
/// time a unit of input (a command line, a message's content, an IDLE)
/// is complete, which restarts the clock; `within` is how long the current
/// unit may take in all, counted from the first read after it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputDeadline {
    pub unit: u64,
    pub within: Duration,
}

/// Counts the errors of one session against the hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErrorCount(u32);

impl ErrorCount {
    /// One more error: true when the limit is reached.
    pub fn add(&mut self, limits: &SessionLimits) -> bool {
        self.0 = self.0.saturating_add(1);
        self.0 >= limits.hard_error_limit
    }

    pub fn reset(&mut self) {
        self.0 = 0;
    }
}

/// Create the series of the sessions' limits at zero: `limit` is
/// `errors` (the hard error limit), `deadline` (an input deadline or idle
/// timeout) or `messages` (SMTP messages per connection).
pub fn register_metrics() {
    for (protocol, limits) in [
        ("smtp", &["errors", "deadline", "messages"][..]),
        ("pop3", &["errors", "deadline"][..]),
        ("imap", &["errors", "deadline"][..]),
    ] {
        for limit in limits {
            metrics::counter!("tern_sessions_ended_by_limit_total", "protocol" => protocol, "limit" => *limit)
                .increment(0);
        }
    }
}

/// Count one session ended by `limit` (see [`register_metrics`]).
pub fn ended_by(protocol: &'static str, limit: &'static str) {
    metrics::counter!("tern_sessions_ended_by_limit_total", "protocol" => protocol, "limit" => limit)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_deadline_grows_with_content_at_the_minimum_rate() {
        let limits = SessionLimits {
            hard_error_limit: 3,
            data_min_rate: 500,
        };
        let base = Duration::from_secs(180);
        assert_eq!(limits.paced(base, 0), base);
        assert_eq!(limits.paced(base, 1000), base + Duration::from_secs(2));
        assert_eq!(
            limits.paced(base, u64::MAX),
            base + Duration::from_millis(u64::MAX / 500)
        );
        let zero = SessionLimits {
            data_min_rate: 0,
            ..limits
        };
        assert_eq!(zero.paced(base, 10), base + Duration::from_secs(10));
    }

    #[test]
    fn error_count_reaches_the_limit_and_resets() {
        let limits = SessionLimits {
            hard_error_limit: 3,
            data_min_rate: 500,
        };
        let mut count = ErrorCount::default();
        assert!(!count.add(&limits));
        assert!(!count.add(&limits));
        assert!(count.add(&limits));
        count.reset();
        assert!(!count.add(&limits));
    }
}
