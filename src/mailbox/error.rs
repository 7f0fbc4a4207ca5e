//! Typed mailbox errors. Protocol sessions map them to their own replies
//! (IMAP `NO [NONEXISTENT]`, `NO [ALREADYEXISTS]`, POP3 `-ERR`); this
//! module must never format protocol replies itself.

use std::io;
use std::path::PathBuf;

use crate::spool::QueueId;

#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    /// A user name that cannot name a journal (empty or too long).
    #[error("invalid user name {name:?}: {reason}")]
    InvalidUserName { name: String, reason: &'static str },
    /// A folder name that breaks the naming rules.
    #[error("invalid folder name {name:?}: {reason}")]
    InvalidFolderName { name: String, reason: &'static str },
    #[error("no such folder: {0}")]
    NoSuchFolder(String),
    #[error("folder already exists: {0}")]
    FolderExists(String),
    #[error("too many folders: at most {limit} per user")]
    TooManyFolders { limit: usize },
    /// RFC 3501 6.3.4: INBOX cannot be deleted.
    #[error("INBOX cannot be deleted")]
    CannotDeleteInbox,
    /// The folder has inferior hierarchical names (RFC 3501 6.3.4 lets a
    /// server refuse to delete it).
    #[error("folder {0} has child folders; delete them first")]
    HasChildren(String),
    /// A folder cannot be renamed to a name inside itself.
    #[error("cannot rename {from} into its own subtree as {to}")]
    RenameIntoItself { from: String, to: String },
    /// A flag name that is neither a system flag nor a keyword atom.
    #[error("invalid flag {name:?}: {reason}")]
    InvalidFlag { name: String, reason: &'static str },
    #[error("too many keywords: at most {limit} per user")]
    TooManyKeywords { limit: usize },
    /// The folder's UID space (RFC 3501 2.3.1.1, 32 bits) is used up.
    #[error("folder {0} has no UIDs left")]
    UidsExhausted(String),
    /// Per-user counters (UIDVALIDITY, folder ids) are used up.
    #[error("counter {0} exhausted for this user")]
    CounterExhausted(&'static str),
    /// The message's stated size does not cover its prefix.
    #[error("message size {size} is smaller than its {prefix}-byte prefix")]
    SizeBelowPrefix { size: u64, prefix: usize },
    /// The prefix is longer than a mailbox stores.
    #[error("message prefix of {len} bytes exceeds {limit}")]
    PrefixTooLong { len: usize, limit: usize },
    /// The (message, recipient) is already in this user's mailbox.
    #[error("message {id} recipient {rcpt} is already in the mailbox")]
    AlreadyHeld { id: QueueId, rcpt: u32 },
    /// One change would not fit a journal record.
    #[error("change of {len} bytes exceeds the journal record limit of {limit}")]
    ChangeTooLarge { len: usize, limit: usize },
    /// The operating system failed a read, write, sync or rename.
    #[error("mailbox I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A journal whose checksummed records do not replay.
    #[error("mailbox journal {path} is inconsistent: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// An earlier journal write failed; the user's mailbox refuses changes
    /// until it is reopened (after a restart) so memory and disk agree again.
    #[error("mailbox journal of {user:?} failed earlier; changes refused until restart")]
    JournalFailed { user: String },
    /// The store's commit thread is gone (shutting down).
    #[error("mailbox commit thread stopped")]
    Stopped,
}

pub(crate) fn io_error(path: &std::path::Path) -> impl FnOnce(io::Error) -> MailboxError + '_ {
    move |source| MailboxError::Io {
        path: path.to_path_buf(),
        source,
    }
}
