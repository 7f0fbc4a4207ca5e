//! The client side of SMTP (RFC 5321 with EHLO/HELO, STARTTLS, PIPELINING,
//! CHUNKING, SIZE, 8BITMIME, SMTPUTF8 and DSN) as a sans-IO state machine:
//! replies in, commands and events out, for relay delivery.
//!
//! Nothing in here may touch a socket, a clock, a thread or an async
//! runtime; the runtime layer drives [`ClientSession`] and runs TLS.

pub mod extensions;
pub mod reply;
pub mod session;
pub mod transaction;
pub mod xtext;

pub use extensions::Extensions;
pub use reply::{ReceivedReply, ReplyError};
pub use session::{ClientConfig, ClientEvent, ClientSession, CloseReason, TlsPolicy};
pub use transaction::{OutboundTransaction, RecipientOutcome, TransactionResult};
