//! The server side of POP3 (RFC 1939 with RFC 2449 CAPA, PIPELINING and
//! RESP-CODES, RFC 2595 STLS, RFC 5034 AUTH PLAIN) as a sans-IO state
//! machine, and the small backend traits it reads maildrops through.
//!
//! Nothing in here may touch a socket, a clock, a thread, an async runtime
//! or the mailbox store directly; the runtime drives [`Pop3Session`] and the
//! lead's adapter implements [`Pop3Backend`] and [`Maildrop`].

pub mod command;
pub mod response;
pub mod session;

pub use command::{parse_command, Command, CommandError, COMMAND_LINE_MAX, VERB_LABELS};
pub use response::RespCode;
pub use session::{Pop3Config, Pop3Event, Pop3Session, AUTOLOGOUT_MIN, LOGIN_FAILURES_MAX};

/// One message of an open maildrop, as the session lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropMessage {
    /// Unique-id listing (RFC 1939 7 UIDL): unique within the maildrop and
    /// stable across sessions and restarts; 1 to 70 octets of 0x21-0x7E.
    pub uidl: String,
    /// Octets as served by RETR (prefix headers included, before
    /// dot-stuffing).
    pub size: u64,
}

/// Why a maildrop could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaildropError {
    /// Another POP3 session holds the maildrop's lock (RFC 2449 8.1.2).
    #[error("maildrop in use by another session")]
    InUse,
    /// The store failed; the text is logged, never shown to the client.
    #[error("maildrop unavailable: {0}")]
    Unavailable(String),
}

/// The session's view of users and their maildrops. Calls must answer at
/// once from memory (the session never waits); persistence is behind the
/// [`Maildrop::delete`] commit.
pub trait Pop3Backend {
    /// What [`Maildrop::delete`] hands back for the runtime to await: the
    /// durable application of the deletions. Opaque to the session, which
    /// passes it out in [`Pop3Event::Commit`].
    type Commit;

    /// Lock and open the user's INBOX; `Err(InUse)` while another POP3
    /// session holds it. Dropping the returned maildrop releases the lock
    /// and deletes nothing.
    fn open_maildrop(
        &self,
        user: &str,
    ) -> Result<Box<dyn Maildrop<Commit = Self::Commit>>, MaildropError>;
}

/// One locked, open maildrop: a snapshot of the messages present at login
/// (RFC 1939 5: numbering is fixed for the session).
pub trait Maildrop {
    /// See [`Pop3Backend::Commit`].
    type Commit;

    /// The messages in maildrop order; message number n is index n - 1.
    fn messages(&self) -> &[DropMessage];

    /// Full message bytes (prefix headers included), CRLF lines, not
    /// dot-stuffed; `None` when the bytes cannot be read.
    fn content(&self, index: usize) -> Option<Vec<u8>>;

    /// Start removing the messages at `indexes` (0-based, ascending, each
    /// once, never empty). Called only from the UPDATE state after QUIT
    /// (RFC 1939 6); the session waits for
    /// [`Pop3Session::commit_done`] before answering `+OK`, and drops the
    /// maildrop (releasing the lock) after that.
    fn delete(&mut self, indexes: &[usize]) -> Self::Commit;
}
