//! What a delivery attempt means for one recipient: its next persisted
//! state (delivered, deferred until a retry time, bounced) and, when it
//! bounces, what the DSN must say about it.
//!
//! Pure: it must never read the clock, touch the spool or send anything;
//! the delivery worker passes the times in and carries the results out.

use crate::smtp::client::ReceivedReply;
use crate::spool::RecipientState;

use super::retry::{RetryDecision, RetryPolicy};

/// Longest reply text kept per recipient (a peer may send 100 lines):
/// enough for any real diagnostic, small enough for every spool update.
const REPLY_TEXT_MAX: usize = 900;

/// RFC 3463 3.5: X.4.7 delivery time expired.
const STATUS_EXPIRED: &str = "4.4.7";

/// How one attempt for one recipient ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered {
        /// The host that took it, for logs.
        host: String,
    },
    /// Filed in a local user's mailbox, which now holds the spool record.
    Stored { user: String },
    /// Try again later (4xx, no connection, DNS trouble).
    Temporary {
        reply: ReceivedReply,
        /// The host that answered, when one did.
        host: Option<String>,
    },
    /// Never deliverable as addressed (5xx, NXDOMAIN, null MX).
    Permanent {
        reply: ReceivedReply,
        host: Option<String>,
    },
}

/// What the DSN says about a recipient that bounced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BounceReport {
    /// RFC 3463 status, e.g. `5.1.1`.
    pub status: String,
    /// RFC 3464 2.3.6, e.g. `smtp; 550 5.1.1 user unknown`.
    pub diagnostic: String,
    /// RFC 3464 2.3.5, e.g. `dns; mx.example.net`.
    pub remote_mta: Option<String>,
}

/// The next state of a recipient that was in `previous` before the attempt.
pub fn settle(
    previous: &RecipientState,
    outcome: &AttemptOutcome,
    policy: &RetryPolicy,
    arrived_ms: u64,
    now_ms: u64,
) -> (RecipientState, Option<BounceReport>) {
    match outcome {
        AttemptOutcome::Delivered { .. } => (RecipientState::Delivered, None),
        AttemptOutcome::Stored { .. } => (RecipientState::InMailbox, None),
        AttemptOutcome::Permanent { reply, host } => {
            let report = report(reply, host, default_status(reply));
            (
                RecipientState::Bounced {
                    reason: describe(reply, host),
                },
                Some(report),
            )
        }
        AttemptOutcome::Temporary { reply, host } => {
            let attempts = match previous {
                RecipientState::Deferred { attempts, .. } => attempts.saturating_add(1),
                _ => 1,
            };
            let last_error = describe(reply, host);
            match policy.after_temporary_failure(attempts, arrived_ms, now_ms) {
                RetryDecision::RetryAt(until_ms) => (
                    RecipientState::Deferred {
                        until_ms,
                        attempts,
                        last_error,
                    },
                    None,
                ),
                RetryDecision::Expired => {
                    let report = report(reply, host, STATUS_EXPIRED.to_string());
                    (
                        RecipientState::Bounced {
                            reason: format!(
                                "gave up after {attempts} attempts (queue lifetime over); \
                                 last error: {last_error}"
                            ),
                        },
                        Some(report),
                    )
                }
            }
        }
    }
}

/// `host said: 550 5.1.1 text`, on one line.
pub fn describe(reply: &ReceivedReply, host: &Option<String>) -> String {
    let reply_text = reply_line(reply);
    match host {
        Some(host) => format!("{host} said: {reply_text}"),
        None => reply_text,
    }
}

fn reply_line(reply: &ReceivedReply) -> String {
    let mut line = reply.code.to_string();
    if let Some((class, subject, detail)) = reply.enhanced {
        line.push_str(&format!(" {class}.{subject}.{detail}"));
    }
    for part in reply.lines() {
        line.push(' ');
        line.push_str(part);
    }
    if line.len() > REPLY_TEXT_MAX {
        let mut end = REPLY_TEXT_MAX;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push_str(" ...");
    }
    line
}

/// The reply's own enhanced status, or a generic one of its class.
fn default_status(reply: &ReceivedReply) -> String {
    match reply.enhanced {
        Some((class, subject, detail)) => format!("{class}.{subject}.{detail}"),
        None if reply.class() == 4 => "4.0.0".to_string(),
        None => "5.0.0".to_string(),
    }
}

fn report(reply: &ReceivedReply, host: &Option<String>, status: String) -> BounceReport {
    BounceReport {
        status,
        diagnostic: format!("smtp; {}", reply_line(reply)),
        remote_mta: host.as_ref().map(|h| format!("dns; {h}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const POLICY: RetryPolicy = RetryPolicy {
        first_retry: Duration::from_secs(10),
        max_retry: Duration::from_secs(40),
        lifetime: Duration::from_secs(100),
    };

    fn temp(code: u16) -> AttemptOutcome {
        AttemptOutcome::Temporary {
            reply: ReceivedReply::local(code, (4, 2, 1), "busy"),
            host: Some("mx.example".into()),
        }
    }

    #[test]
    fn delivered_is_final_without_report() {
        let outcome = AttemptOutcome::Delivered {
            host: "mx.example".into(),
        };
        assert_eq!(
            settle(&RecipientState::Pending, &outcome, &POLICY, 0, 5),
            (RecipientState::Delivered, None)
        );
    }

    #[test]
    fn stored_in_a_mailbox_keeps_the_record() {
        let outcome = AttemptOutcome::Stored {
            user: "alice".into(),
        };
        assert_eq!(
            settle(&RecipientState::Pending, &outcome, &POLICY, 0, 5),
            (RecipientState::InMailbox, None)
        );
    }

    #[test]
    fn permanent_failure_bounces_with_the_reply_status() {
        let outcome = AttemptOutcome::Permanent {
            reply: ReceivedReply::local(550, (5, 1, 1), "no such user"),
            host: Some("mx.example".into()),
        };
        let (state, report) = settle(&RecipientState::Pending, &outcome, &POLICY, 0, 5);
        let RecipientState::Bounced { reason } = state else {
            panic!("{state:?}");
        };
        assert!(reason.contains("mx.example said: 550 5.1.1"), "{reason}");
        let report = report.unwrap();
        assert_eq!(report.status, "5.1.1");
        assert!(report.diagnostic.starts_with("smtp; 550 5.1.1"));
        assert_eq!(report.remote_mta.as_deref(), Some("dns; mx.example"));
    }

    #[test]
    fn permanent_failure_without_enhanced_code_gets_a_generic_status() {
        let mut reply = ReceivedReply::local(554, (5, 0, 0), "no");
        reply.enhanced = None;
        let outcome = AttemptOutcome::Permanent { reply, host: None };
        let (_, report) = settle(&RecipientState::Pending, &outcome, &POLICY, 0, 5);
        let report = report.unwrap();
        assert_eq!(report.status, "5.0.0");
        assert_eq!(report.remote_mta, None);
    }

    #[test]
    fn long_replies_are_cut() {
        let reply = ReceivedReply {
            code: 550,
            enhanced: None,
            text: "é".repeat(2000),
        };
        let text = describe(&reply, &None);
        assert!(text.len() < REPLY_TEXT_MAX + 10, "{}", text.len());
        assert!(text.ends_with(" ..."));
    }

    #[test]
    fn temporary_failures_count_attempts_and_back_off() {
        let (first, report) = settle(&RecipientState::Pending, &temp(451), &POLICY, 0, 1_000);
        assert_eq!(report, None);
        assert_eq!(
            first,
            RecipientState::Deferred {
                until_ms: 11_000,
                attempts: 1,
                last_error: "mx.example said: 451 4.2.1 local: busy".into()
            }
        );
        let (second, _) = settle(&first, &temp(451), &POLICY, 0, 11_000);
        assert!(matches!(
            second,
            RecipientState::Deferred {
                until_ms: 31_000,
                attempts: 2,
                ..
            }
        ));
    }

    #[test]
    fn temporary_failure_after_the_lifetime_bounces_as_expired() {
        let previous = RecipientState::Deferred {
            until_ms: 100_000,
            attempts: 4,
            last_error: String::new(),
        };
        let (state, report) = settle(&previous, &temp(450), &POLICY, 0, 100_000);
        let RecipientState::Bounced { reason } = state else {
            panic!("{state:?}");
        };
        assert!(reason.contains("after 5 attempts"), "{reason}");
        assert!(reason.contains("450 4.2.1 local: busy"), "{reason}");
        assert_eq!(report.unwrap().status, "4.4.7");
    }
}
