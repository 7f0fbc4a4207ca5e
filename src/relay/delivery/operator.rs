//! What an operator's `tern queue delete|bounce|flush|hold|release` does
//! on one core: the scheduler moves, and the recipients finished by hand,
//! written through the core's own spool writer.
//!
//! It must never touch a message whose delivery attempt is under way (the
//! attempt would write its own outcome over the operator's), never answer
//! before its RECIPIENT_UPDATE is durable, and never mark a recipient
//! bounced before its DSN is durable (the path an expiry takes).

use tracing::{info, warn};

use super::{now_ms, Relay};
use crate::queue::scheduler::Taken;
use crate::queue::settle::BounceReport;
use crate::queue_report::recipient_in_domain;
use crate::relay::connection::Connector;
use crate::spool::{QueueId, RecipientState, SpoolError};

/// RFC 3463 3.1: X.0.0 other undefined status: no delivery was tried.
const STATUS_OPERATOR: &str = "5.0.0";
/// RFC 3464 2.3.6 with a diagnostic type of our own (not an SMTP reply).
const DIAGNOSTIC_BOUNCED: &str = "X-Tern; returned to the sender by the mail system administrator";
/// The persisted reason of a recipient the operator bounced.
const REASON_BOUNCED: &str = "returned to the sender by the operator (tern queue bounce)";
/// The persisted reason of a recipient the operator deleted: final like a
/// bounce, so the record can be recycled, but no DSN was sent.
const REASON_DELETED: &str = "deleted by the operator without notice (tern queue delete)";

/// How the operator finishes a message's waiting recipients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Final without delivery and without a DSN.
    Delete,
    /// Final with a DSN to the sender, as an expiry would send.
    Bounce,
}

/// What one core did with an operator's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperatorOutcome {
    /// Messages the order applied to.
    pub done: usize,
    /// Messages left alone because an attempt was under way.
    pub busy: usize,
    /// One line per message the order could not be applied to.
    pub failed: Vec<String>,
}

impl OperatorOutcome {
    pub fn add(&mut self, other: OperatorOutcome) {
        self.done += other.done;
        self.busy += other.busy;
        self.failed.extend(other.failed);
    }
}

impl<C: Connector + 'static> Relay<C> {
    /// Finish the waiting recipients (those in `domain`, when given) of
    /// every message in `ids` this core schedules.
    pub async fn finish_by_operator(
        &self,
        ids: &[QueueId],
        domain: Option<&str>,
        how: Finish,
    ) -> OperatorOutcome {
        let mut outcome = OperatorOutcome::default();
        for id in ids {
            match self.scheduler.take(id) {
                Taken::Unknown => {}
                Taken::Busy => outcome.busy += 1,
                Taken::Taken => match self.finish_one(*id, domain, how).await {
                    Ok(true) => outcome.done += 1,
                    Ok(false) => {}
                    Err(e) => {
                        warn!(queue_id = %id, error = %e, "operator's change not persisted");
                        outcome.failed.push(format!("{id}: {e}"));
                    }
                },
            }
        }
        outcome
    }

    /// One message taken out of the scheduler: finish it, then put back
    /// whatever still waits. Ok(false) when no recipient matched.
    async fn finish_one(
        &self,
        id: QueueId,
        domain: Option<&str>,
        how: Finish,
    ) -> Result<bool, SpoolError> {
        let view = match self.spool.read(&id) {
            Ok(view) => view,
            Err(SpoolError::NotFound(_)) => {
                self.scheduler.forget(&id);
                return Ok(false);
            }
            Err(e) => {
                self.scheduler.resume(id, &[RecipientState::Pending]);
                return Err(e);
            }
        };
        let chosen: Vec<usize> = view
            .envelope
            .recipients
            .iter()
            .enumerate()
            .filter(|(i, r)| {
                matches!(
                    view.states.get(*i),
                    Some(RecipientState::Pending | RecipientState::Deferred { .. })
                ) && domain.is_none_or(|d| recipient_in_domain(&r.address, d))
            })
            .map(|(i, _)| i)
            .collect();
        let put_back = |states: &[RecipientState]| {
            if !self.scheduler.resume(id, states) {
                self.scheduler.forget(&id);
            }
        };
        if chosen.is_empty() {
            put_back(&view.states);
            return Ok(false);
        }
        let now = now_ms();
        let reason = match how {
            Finish::Delete => REASON_DELETED,
            Finish::Bounce => {
                let bounces: Vec<(usize, BounceReport)> = chosen
                    .iter()
                    .map(|&i| {
                        let report = BounceReport {
                            status: STATUS_OPERATOR.into(),
                            diagnostic: DIAGNOSTIC_BOUNCED.into(),
                            remote_mta: None,
                        };
                        (i, report)
                    })
                    .collect();
                if let Err(e) = self.queue_dsn(&view, &bounces, now).await {
                    put_back(&view.states);
                    return Err(e);
                }
                REASON_BOUNCED
            }
        };
        let updates: Vec<(usize, RecipientState)> = chosen
            .iter()
            .map(|&i| {
                let state = RecipientState::Bounced {
                    reason: reason.into(),
                };
                (i, state)
            })
            .collect();
        let commit = self.writer.borrow_mut().update_recipients(&id, &updates);
        let persisted = match commit {
            Ok(commit) => commit.await,
            Err(e) => Err(e),
        };
        if let Err(e) = persisted {
            put_back(&view.states);
            return Err(e);
        }
        let mut states = view.states.clone();
        for (i, state) in &updates {
            if let Some(slot) = states.get_mut(*i) {
                *slot = state.clone();
            }
        }
        put_back(&states);
        let word = match how {
            Finish::Delete => "deleted by the operator",
            Finish::Bounce => "bounced by the operator",
        };
        let age_s = now.saturating_sub(view.envelope.received_at_ms) / 1000;
        for &i in &chosen {
            let to = view
                .envelope
                .recipients
                .get(i)
                .map_or("", |r| r.address.as_str());
            info!(queue_id = %id, to = %to, age_s, "{word}");
        }
        Ok(true)
    }
}
