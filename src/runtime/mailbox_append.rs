//! Files a message a mail client uploads (IMAP APPEND) into a user's
//! folder: the bytes become a spool record like any received message (the
//! mailbox refers to it, nothing is copied twice), then the mailbox files
//! it, then the spool notes that a mailbox holds it.
//!
//! It must never acknowledge before all three steps are durable. A crash
//! in between loses nothing: a record whose recipient is still pending is
//! filed by local delivery at the next start (in INBOX, not the folder
//! asked for), one already filed is only marked as held.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::sync::Arc;

use crate::clock::now_ms;
use crate::envelope::{BodyType, ClientInfo, Envelope, Notify, Recipient};
use crate::mailbox::{Flags, MailboxStore, NewMessage, Uid};
use crate::spool::{RecipientState, SpoolWriter};

/// HELO recorded in the envelope of an uploaded message.
const APPEND_ORIGIN: &str = "imap-append";

/// Spool `bytes` for `user` (whose delivery address is `address`) and file
/// them in `folder`. Returns the folder's UIDVALIDITY and the new UID.
#[allow(clippy::too_many_arguments)]
pub async fn append(
    writer: &Rc<RefCell<SpoolWriter>>,
    mailboxes: &Arc<MailboxStore>,
    user: &str,
    address: &str,
    folder: &str,
    flags: Flags,
    internal_date_ms: Option<u64>,
    bytes: &[u8],
) -> Result<(u32, Uid), String> {
    let mailbox = mailboxes.user(user).map_err(|e| e.to_string())?;
    // Checked first so a bad folder name costs no spool record.
    let uidvalidity = mailbox
        .status(folder)
        .map_err(|e| e.to_string())?
        .uidvalidity;
    let now = now_ms();
    let envelope = Envelope {
        sender: String::new(),
        body: BodyType::EightBitMime,
        smtputf8: false,
        ret: None,
        envid: None,
        declared_size: Some(bytes.len() as u64),
        recipients: vec![Recipient {
            address: address.to_owned(),
            notify: Notify {
                explicit: true,
                ..Notify::default()
            },
            orcpt: None,
        }],
        client: ClientInfo {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            helo: APPEND_ORIGIN.to_owned(),
            esmtp: true,
            tls: false,
            auth: Some(user.to_owned()),
        },
        received_at_ms: now,
    };
    let (id, commit) = writer
        .borrow_mut()
        .append(&envelope, bytes)
        .map_err(|e| e.to_string())?;
    commit.await.map_err(|e| e.to_string())?;
    let message = NewMessage {
        id,
        rcpt: 0,
        size: bytes.len() as u64,
        internal_date_ms: internal_date_ms.unwrap_or(now),
        prefix: Vec::new(),
    };
    let (uid, durable) = mailbox
        .deliver(folder, message, flags)
        .map_err(|e| e.to_string())?;
    durable.await.map_err(|e| e.to_string())?;
    let update = writer
        .borrow_mut()
        .update_recipients(&id, &[(0, RecipientState::InMailbox)])
        .map_err(|e| e.to_string())?;
    update.await.map_err(|e| e.to_string())?;
    Ok((uidvalidity, uid))
}
