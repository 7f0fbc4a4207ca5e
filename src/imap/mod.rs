//! IMAP4rev1/rev2 protocol foundations (RFC 3501, RFC 9051 where cheap):
//! the incremental command reader and parser, the typed commands it
//! produces, modified UTF-7 mailbox names, the response encoder, and body
//! section location in raw messages, and the session state machine built
//! on them.
//!
//! Everything here is sans-IO and synchronous: bytes in, values out. It
//! must never panic on client input and never touch sockets, clocks or the
//! mailbox store.

pub mod command;
pub mod mime;
pub mod parser;
pub mod response;
pub mod search;
pub mod session;
pub mod structure;
pub mod utf7;

pub use command::{
    Command, CommandBody, Date, DateTime, FetchAttribute, Flag, ListCommand, MailboxName, Partial,
    SearchCommand, SearchKey, Section, SectionText, SeqBound, SequenceSet, StatusItem, StoreAction,
};
pub use parser::{AuthResponse, CommandReader, Parsed, COMMAND_TEXT_MAX};
pub use session::{
    AppendTicket, ImapBackend, ImapConfig, ImapEvent, ImapSession, AUTOLOGOUT, LOGIN_FAILURES_MAX,
    OUTPUT_HIGH_WATER,
};
