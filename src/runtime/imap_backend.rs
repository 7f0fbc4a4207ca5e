//! Binds the IMAP session to tern's stores: logins checked against the
//! users file, folders and flags in the mailbox index, message bytes read
//! from the spool record behind each message (or the copy compaction
//! moved it to, which a view selected earlier may not know yet), and
//! APPEND filed through `mailbox_append` (a new spool record, then the
//! mailbox).
//!
//! It must never hand out message bytes of another user and never answer
//! from anything but the stores (no cache that could go stale).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use tracing::warn;

use super::mailbox_append;
use crate::imap::{AppendTicket, ImapBackend};
use crate::mailbox::{Flags, MailboxError, MailboxStore, MessageMeta, UserMailboxes};
use crate::spool::{Spool, SpoolWriter};
use crate::users::UsersHandle;

/// One core's view of the stores for its IMAP sessions.
pub struct ImapStores {
    pub users: UsersHandle,
    pub mailboxes: Arc<MailboxStore>,
    pub spool: Arc<Spool>,
    /// This core's spool writer (APPEND creates records).
    pub writer: Rc<RefCell<SpoolWriter>>,
}

impl ImapBackend for ImapStores {
    fn mailboxes(&self, user: &str) -> Result<Arc<UserMailboxes>, MailboxError> {
        self.mailboxes.user(user)
    }

    fn message_bytes(&self, meta: &MessageMeta) -> Option<Vec<u8>> {
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

    fn append(
        &self,
        user: &str,
        folder: &str,
        flags: Flags,
        date_ms: Option<u64>,
        bytes: Vec<u8>,
    ) -> Result<AppendTicket, MailboxError> {
        // The record is addressed to the user's first address (or name),
        // so that local delivery finds the user if a crash interrupts.
        let address = self
            .users
            .find(user)
            .and_then(|u| u.addresses().first().cloned())
            .unwrap_or_else(|| user.to_owned());
        let writer = Rc::clone(&self.writer);
        let mailboxes = Arc::clone(&self.mailboxes);
        let user = user.to_owned();
        let folder = folder.to_owned();
        Ok(Box::pin(async move {
            mailbox_append::append(
                &writer, &mailboxes, &user, &address, &folder, flags, date_ms, &bytes,
            )
            .await
        }))
    }
}
