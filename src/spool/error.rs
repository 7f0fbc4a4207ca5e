//! Typed spool errors. Callers map them to protocol replies (the SMTP
//! session turns every variant into `452 4.3.1`); this module must never
//! format protocol replies itself.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// No segment can be had without going over `[spool] max_size`.
    #[error("spool full: {used} of {limit} bytes in use")]
    Full { used: u64, limit: u64 },
    /// A single record does not fit in one segment (`[spool] segment_size`).
    #[error("record of {len} bytes does not fit in a segment of {segment_size} bytes")]
    TooLarge { len: u64, segment_size: u64 },
    /// The operating system failed a read, write, sync or mapping.
    #[error("spool I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The sync thread is gone (shutting down or crashed); nothing was acknowledged.
    #[error("spool sync thread stopped")]
    SyncStopped,
    /// A message that still has recipients to deliver cannot be moved by
    /// compaction (its copy would be delivered again).
    #[error("message {0} still has recipients to deliver")]
    StillQueued(String),
    /// A queue ID that does not name a live message.
    #[error("no message with queue id {0}")]
    NotFound(String),
}
