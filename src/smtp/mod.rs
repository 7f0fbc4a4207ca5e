//! The server side of SMTP (RFC 5321 with PIPELINING, SIZE, 8BITMIME,
//! SMTPUTF8, ENHANCEDSTATUSCODES, CHUNKING, DSN, STARTTLS and, on
//! submission listeners, AUTH) as a sans-IO state machine: bytes in,
//! replies and events out.
//!
//! Nothing in here may touch a socket, a clock, a thread or an async
//! runtime; the runtime layer drives [`ServerSession`].

pub mod auth;
pub mod client;
pub mod command;
pub mod data;
pub mod relay_access;
pub mod reply;
pub mod session;
pub mod submission;
pub mod trace;

pub use command::{parse_command, Command, CommandError};
pub use data::{ContentError, DataDecoder, Framing};
pub use relay_access::RelayAccess;
pub use reply::{EnhancedStatus, Reply};
pub use session::{IncomingMessage, RecipientHook, ServerSession, SessionConfig, SessionEvent};
pub use submission::{AuthenticatedUser, SubmissionPolicy};
pub use trace::received_header;
