//! The mailbox index: per-user folders (INBOX, Sent, Drafts, Trash, Junk
//! by default, with SPECIAL-USE), UIDVALIDITY and UIDNEXT, messages that
//! refer to spool records by (QueueId, recipient index), flags and
//! keywords, subscriptions; kept in memory and made durable through one
//! append-only, checksummed journal per user, group-committed by one
//! background thread for the whole store.
//!
//! Releases: when the last folder entry of a (QueueId, recipient) is
//! expunged or its folder deleted, the store's `on_release` callback runs
//! once, on the commit thread, after the journal record is synced and
//! before the change's `Durable` resolves. A crash between that sync and
//! the owner acting on the callback loses the release, so the owner
//! reconciles at start: a recipient the spool keeps for a mailbox that
//! no longer `holds` it is released then.
//!
//! Spool compaction moves records: `UserMailboxes::retarget` points a
//! user's references at the copies in one journal record, moving them
//! without releasing anything.
//!
//! The index must never copy message bytes (they stay in the spool),
//! never acknowledge a change (resolve a `Durable`) or release a message
//! before the journal record is synced, and never block a protocol
//! session on disk: reads answer from memory.

mod commit;
mod error;
mod flags;
mod journal;
mod names;
mod record;
mod state;
mod store;

/// An IMAP UID (RFC 3501 2.3.1.1), also the POP3 UIDL source.
pub type Uid = u32;

pub use commit::{Durable, ReleaseFn};
pub use error::MailboxError;
pub use flags::{FlagOp, Flags, Keyword, SystemFlags, KEYWORDS_MAX, KEYWORD_MAX_LEN};
pub use names::{
    canonical_folder, SpecialUse, FOLDER_NAME_MAX, HIERARCHY_DELIMITER, INBOX, USER_NAME_MAX,
};
pub use store::{
    FolderInfo, FolderSnapshot, FolderStatus, MailboxStore, MessageMeta, NewMessage, UserMailboxes,
    FOLDERS_MAX, PREFIX_MAX,
};

#[cfg(test)]
mod tests;

/// Create the mailbox counters at zero, so `rate()` sees the first events
/// (the histograms appear with their first observation).
pub fn register_metrics() {
    for name in [
        "tern_mailbox_deliveries_total",
        "tern_mailbox_releases_total",
        "tern_mailbox_journal_syncs_total",
        "tern_mailbox_journal_written_bytes_total",
        "tern_mailbox_commit_errors_total",
        "tern_mailbox_compactions_total",
        "tern_mailbox_torn_tails_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    metrics::gauge!("tern_mailbox_users_open").increment(0.0);
}
