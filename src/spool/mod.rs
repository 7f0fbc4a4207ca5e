//! The durable spool: per-core append-only segment files holding MESSAGE
//! and RECIPIENT_UPDATE records, group-committed with fdatasync, read
//! through memory mappings, recovered at start, recycled once every
//! message in a segment is final, and compacted when a few long-lived
//! mailbox records are all that keeps a segment.
//!
//! The spool must never report a message durable (resolve a `Commit`)
//! before an fdatasync covering its record succeeded, and never panic on
//! disk errors or on any file content.

mod codec;
mod compact;
pub mod error;
mod id;
mod index;
mod pool;
pub mod record;
mod recovery;
mod segment;
mod state;
mod store;
mod sync;
mod writer;

pub use compact::{CompactionLimits, CompactionPlan};
pub use error::SpoolError;
pub use id::{QueueId, QueueIdParseError};
pub use record::{decode_record, RecordError, SegmentLife};
pub use state::RecipientState;
pub use store::{MessageView, QueuedMessage, Spool, SpoolConfig, DEFAULT_SEGMENT_SIZE};
pub use sync::Commit;
pub use writer::SpoolWriter;

#[cfg(test)]
mod tests;
