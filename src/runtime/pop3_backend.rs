//! Binds the POP3 session to tern's stores: logins checked against the
//! users file, the maildrop is the user's INBOX in the mailbox index, and
//! message bytes come from the spool record behind each message, or the
//! copy compaction moved it to after the maildrop was opened (the
//! mailbox's prefix, then the data as received).
//!
//! It must never let two POP3 sessions hold one maildrop (RFC 1939 8,
//! RFC 2449 `[IN-USE]`) and never delete anything except through the
//! commit at QUIT that the session hands out.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tracing::warn;

use crate::mailbox::{
    Durable, FlagOp, Flags, MailboxStore, MessageMeta, SystemFlags, UserMailboxes, INBOX,
};
use crate::pop3::{DropMessage, Maildrop, MaildropError, Pop3Backend};
use crate::spool::Spool;
use crate::users::UsersHandle;

/// Users whose maildrop a POP3 session holds, across all cores.
#[derive(Default)]
pub struct MaildropLocks(Mutex<HashSet<String>>);

impl MaildropLocks {
    fn take(self: &Arc<Self>, user: &str) -> Option<MaildropLock> {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        held.insert(user.to_owned()).then(|| MaildropLock {
            locks: Arc::clone(self),
            user: user.to_owned(),
        })
    }
}

/// Held while a session has the maildrop open; released on drop.
struct MaildropLock {
    locks: Arc<MaildropLocks>,
    user: String,
}

impl Drop for MaildropLock {
    fn drop(&mut self) {
        let mut held = self.locks.0.lock().unwrap_or_else(|e| e.into_inner());
        held.remove(&self.user);
    }
}

pub struct Pop3Stores {
    pub users: UsersHandle,
    pub mailboxes: Arc<MailboxStore>,
    pub spool: Arc<Spool>,
    pub locks: Arc<MaildropLocks>,
}

impl Pop3Backend for Pop3Stores {
    type Commit = Durable;

    fn open_maildrop(
        &self,
        user: &str,
    ) -> Result<Box<dyn Maildrop<Commit = Durable>>, MaildropError> {
        let lock = self.locks.take(user).ok_or(MaildropError::InUse)?;
        let mailbox = self
            .mailboxes
            .user(user)
            .map_err(|e| MaildropError::Unavailable(e.to_string()))?;
        let snapshot = mailbox
            .snapshot(INBOX)
            .map_err(|e| MaildropError::Unavailable(e.to_string()))?;
        let listing = snapshot
            .messages
            .iter()
            .map(|m| DropMessage {
                // UIDVALIDITY.UID is unique and never reused (RFC 1939 7).
                uidl: format!("{}.{}", snapshot.uidvalidity, m.uid),
                size: m.size,
            })
            .collect();
        Ok(Box::new(InboxDrop {
            mailbox,
            spool: Arc::clone(&self.spool),
            messages: snapshot.messages,
            listing,
            _lock: lock,
        }))
    }
}

/// A user's INBOX as it was when the session opened it (RFC 1939: the
/// maildrop does not change under a session).
struct InboxDrop {
    mailbox: Arc<UserMailboxes>,
    spool: Arc<Spool>,
    messages: Vec<MessageMeta>,
    listing: Vec<DropMessage>,
    _lock: MaildropLock,
}

impl Maildrop for InboxDrop {
    type Commit = Durable;

    fn messages(&self) -> &[DropMessage] {
        &self.listing
    }

    fn content(&self, index: usize) -> Option<Vec<u8>> {
        let meta = self.messages.get(index)?;
        match self.spool.read_moved(&meta.id) {
            Ok(view) => {
                let mut bytes = Vec::with_capacity(meta.prefix.len() + view.data().len());
                bytes.extend_from_slice(&meta.prefix);
                bytes.extend_from_slice(view.data());
                Some(bytes)
            }
            Err(e) => {
                warn!(queue_id = %meta.id, error = %e, "mailbox message unreadable in the spool");
                None
            }
        }
    }

    /// Marks the messages \Deleted and expunges exactly those; the
    /// returned `Durable` resolves once both are on disk.
    fn delete(&mut self, indexes: &[usize]) -> Durable {
        let uids: Vec<u32> = indexes
            .iter()
            .filter_map(|&i| self.messages.get(i).map(|m| m.uid))
            .collect();
        let mut deleted = Flags::default();
        deleted.system.insert(SystemFlags::DELETED);
        let marked = self
            .mailbox
            .store_flags(INBOX, &uids, FlagOp::Add, &deleted)
            .map(|(_, durable)| durable);
        let expunged = marked.and_then(|_| self.mailbox.expunge(INBOX, Some(&uids)));
        match expunged {
            // The expunge's Durable resolves after everything before it.
            Ok((_, durable)) => durable,
            Err(e) => Durable::failed(e),
        }
    }
}
