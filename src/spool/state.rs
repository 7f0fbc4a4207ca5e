//! Per-recipient delivery state of a spooled message, as persisted in
//! RECIPIENT_UPDATE records.
//!
//! This module only describes states; it must never decide retry timing or
//! write anything (the queue decides, the spool persists).

/// Where delivery to one recipient stands. `Pending` is implicit when a
/// message is appended; `Delivered` and `Bounced` are final. `InMailbox`
/// is done as far as delivery goes, but not final: a local mailbox reads
/// the message from the spool, so the record stays alive until the
/// mailbox lets go of it (then the recipient becomes `Delivered`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RecipientState {
    Pending,
    Deferred {
        /// Do not retry before this time, milliseconds since the Unix epoch.
        until_ms: u64,
        attempts: u32,
        last_error: String,
    },
    Delivered,
    Bounced {
        reason: String,
    },
    InMailbox,
}

impl RecipientState {
    /// Final states never change again; a message whose recipients are all
    /// final is done and its spool space can be reused.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            RecipientState::Delivered | RecipientState::Bounced { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_delivered_and_bounced_are_final() {
        assert!(!RecipientState::Pending.is_final());
        let deferred = RecipientState::Deferred {
            until_ms: 1,
            attempts: 2,
            last_error: "451".into(),
        };
        assert!(!deferred.is_final());
        assert!(RecipientState::Delivered.is_final());
        assert!(!RecipientState::InMailbox.is_final());
        assert!(RecipientState::Bounced {
            reason: "550".into()
        }
        .is_final());
    }

    #[test]
    fn serializes_with_a_state_tag() {
        let json = serde_json::to_string(&RecipientState::Bounced {
            reason: "no".into(),
        })
        .unwrap();
        assert_eq!(json, r#"{"state":"bounced","reason":"no"}"#);
        assert_eq!(
            serde_json::to_string(&RecipientState::Pending).unwrap(),
            r#"{"state":"pending"}"#
        );
    }
}
