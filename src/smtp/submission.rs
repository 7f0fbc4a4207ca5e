//! Message submission rules (RFC 6409) for the listeners that offer AUTH:
//! when AUTH may be offered, who must authenticate before MAIL, and which
//! reverse-paths an authenticated user may give.
//!
//! Pure decisions from settings, the session's TLS state and the user's
//! addresses: this module must never do I/O or look at the users file (the
//! runtime hands the user's addresses over when AUTH succeeds).

use crate::users::fold;

/// The submission rules of one listener (`[submission]` settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmissionPolicy {
    /// Offer AUTH before TLS (`[submission] allow_plaintext_auth`): for
    /// tests and loopback set-ups only; the start-up log warns.
    pub allow_plaintext_auth: bool,
    /// Let an authenticated user give any MAIL FROM
    /// (`[submission] any_sender`); off, it must be one of the user's
    /// addresses or the null reverse-path.
    pub any_sender: bool,
}

impl SubmissionPolicy {
    /// AUTH is offered now: under TLS, or in clear when the setting allows.
    pub fn auth_offered(&self, tls_active: bool) -> bool {
        tls_active || self.allow_plaintext_auth
    }

    /// May `user` give `sender` (a reverse-path without brackets, empty for
    /// `<>`) as MAIL FROM? RFC 6409 8.1 lets the MSA enforce this. The
    /// null reverse-path stays allowed: a mail client sends disposition
    /// notifications with it (RFC 8098 2.1).
    pub fn sender_allowed(&self, user: &AuthenticatedUser, sender: &str) -> bool {
        if self.any_sender || sender.is_empty() {
            return true;
        }
        let sender = fold(sender);
        user.addresses.iter().any(|owned| fold(owned) == sender)
    }
}

/// Who authenticated on a session, as the runtime found them in the users
/// file when the password matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedUser {
    /// The canonical user name (recorded in the envelope and the log).
    pub name: String,
    /// The addresses of that user, as written in the users file.
    pub addresses: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> AuthenticatedUser {
        AuthenticatedUser {
            name: "alice".into(),
            addresses: vec!["alice@example.org".into(), "Sales@Example.org".into()],
        }
    }

    fn policy(any_sender: bool) -> SubmissionPolicy {
        SubmissionPolicy {
            allow_plaintext_auth: false,
            any_sender,
        }
    }

    #[test]
    fn auth_is_offered_under_tls_or_when_allowed_in_clear() {
        assert!(policy(false).auth_offered(true));
        assert!(!policy(false).auth_offered(false));
        let clear = SubmissionPolicy {
            allow_plaintext_auth: true,
            any_sender: false,
        };
        assert!(clear.auth_offered(false));
    }

    #[test]
    fn sender_must_be_one_of_the_users_addresses() {
        let strict = policy(false);
        assert!(strict.sender_allowed(&alice(), "alice@example.org"));
        assert!(strict.sender_allowed(&alice(), "ALICE@example.ORG"));
        assert!(strict.sender_allowed(&alice(), "sales@example.org"));
        assert!(strict.sender_allowed(&alice(), ""));
        assert!(!strict.sender_allowed(&alice(), "bob@example.org"));
        assert!(!strict.sender_allowed(&alice(), "alice@example.org.evil.example"));
        assert!(!strict.sender_allowed(&alice(), "alice"));
        assert!(policy(true).sender_allowed(&alice(), "bob@example.org"));
    }
}
