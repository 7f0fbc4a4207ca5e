//! The selected mailbox as one IMAP session sees it (RFC 3501 2.3.1.2):
//! the sequence-number-to-UID list, each message's flags as last reported,
//! and the reconciliation with a fresh snapshot that produces untagged
//! EXPUNGE, EXISTS and FETCH (FLAGS) responses at the points RFC 3501
//! 5.2, 5.5 and 7.4.1 allow.
//!
//! It must never renumber messages without reporting the change to the
//! client, and never report an expunge while sequence numbers may not
//! change (the caller says when).

use crate::imap::response;
use crate::mailbox::{FolderSnapshot, Keyword, MessageMeta, Uid};

/// The session's view of its selected folder.
#[derive(Debug)]
pub(super) struct SelectedView {
    /// Canonical folder name.
    pub(super) name: String,
    /// EXAMINE, or SELECT of a folder this session may not change.
    pub(super) read_only: bool,
    pub(super) uidvalidity: u32,
    /// Message sequence number n is `messages[n - 1]`; UIDs ascend.
    pub(super) messages: Vec<MessageMeta>,
    /// Keywords announced in the last FLAGS response.
    pub(super) keywords: Vec<Keyword>,
    /// A sync left expunged messages in the view (RFC 3501 7.4.1): the
    /// next sync that may report them must look even if nothing changed.
    pub(super) expunges_deferred: bool,
}

/// What a sync found that the session must act on.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SyncOutcome {
    Current,
    /// The folder is gone or has a new UIDVALIDITY: the view cannot go on.
    Vanished,
}

impl SelectedView {
    pub(super) fn new(name: String, read_only: bool, snapshot: FolderSnapshot) -> Self {
        SelectedView {
            name,
            read_only,
            uidvalidity: snapshot.uidvalidity,
            messages: snapshot.messages,
            keywords: snapshot.keywords,
            expunges_deferred: false,
        }
    }

    /// Number of messages in the view (EXISTS).
    pub(super) fn exists(&self) -> u32 {
        u32::try_from(self.messages.len()).unwrap_or(u32::MAX)
    }

    pub(super) fn largest_uid(&self) -> Uid {
        self.messages.last().map_or(0, |m| m.uid)
    }

    /// The sequence number of `uid`, if the view holds it.
    pub(super) fn seq_of(&self, uid: Uid) -> Option<u32> {
        let index = self.messages.binary_search_by_key(&uid, |m| m.uid).ok()?;
        u32::try_from(index + 1).ok()
    }

    /// Removes the messages with these UIDs (ascending), writing `* n EXPUNGE` for each
    /// from the highest sequence number down, so that every number sent is
    /// valid when the client reads it.
    pub(super) fn expunge_uids(&mut self, uids: &[Uid], out: &mut Vec<u8>) {
        for index in (0..self.messages.len()).rev() {
            let Some(message) = self.messages.get(index) else {
                continue;
            };
            if uids.binary_search(&message.uid).is_ok() {
                self.messages.remove(index);
                response::expunge(out, u32::try_from(index + 1).unwrap_or(u32::MAX));
            }
        }
    }

    /// Reconciles the view with `fresh`, writing the untagged responses.
    /// With `expunges` false (during FETCH, STORE and SEARCH by sequence
    /// number, RFC 3501 7.4.1), messages gone from the folder stay in the
    /// view until a later sync may report them.
    pub(super) fn sync(
        &mut self,
        fresh: Option<FolderSnapshot>,
        expunges: bool,
        out: &mut Vec<u8>,
    ) -> SyncOutcome {
        let Some(fresh) = fresh.filter(|f| f.uidvalidity == self.uidvalidity) else {
            return SyncOutcome::Vanished;
        };
        if fresh.keywords.len() != self.keywords.len() {
            self.keywords = fresh.keywords.clone();
            write_flags_announcement(out, &self.keywords, self.read_only);
        }
        let gone: Vec<Uid> = self
            .messages
            .iter()
            .map(|m| m.uid)
            .filter(|uid| fresh.messages.binary_search_by_key(uid, |m| m.uid).is_err())
            .collect();
        if expunges {
            self.expunge_uids(&gone, out);
        }
        self.expunges_deferred = !expunges && !gone.is_empty();
        let largest = self.largest_uid();
        let mut changed = Vec::new();
        for (index, message) in self.messages.iter_mut().enumerate() {
            if let Ok(at) = fresh.messages.binary_search_by_key(&message.uid, |m| m.uid) {
                if let Some(current) = fresh.messages.get(at) {
                    if current.flags != message.flags {
                        message.flags = current.flags.clone();
                        changed.push(index);
                    }
                }
            }
        }
        let before = self.messages.len();
        self.messages
            .extend(fresh.messages.into_iter().filter(|m| m.uid > largest));
        if self.messages.len() != before {
            response::exists(out, self.exists());
        }
        for index in changed {
            if let Some(message) = self.messages.get(index) {
                write_flags_fetch(out, index + 1, message, true);
            }
        }
        SyncOutcome::Current
    }
}

/// `* FLAGS (...)` and `* OK [PERMANENTFLAGS (...)]` for the keywords
/// the user's mailbox knows (RFC 3501 7.2.6, 7.1).
pub(super) fn write_flags_announcement(out: &mut Vec<u8>, keywords: &[Keyword], read_only: bool) {
    out.extend_from_slice(b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft");
    for keyword in keywords {
        out.push(b' ');
        out.extend_from_slice(keyword.as_str().as_bytes());
    }
    out.extend_from_slice(b")\r\n");
    if read_only {
        out.extend_from_slice(b"* OK [PERMANENTFLAGS ()] No permanent flags permitted\r\n");
        return;
    }
    out.extend_from_slice(b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft");
    for keyword in keywords {
        out.push(b' ');
        out.extend_from_slice(keyword.as_str().as_bytes());
    }
    if keywords.len() < crate::mailbox::KEYWORDS_MAX {
        out.extend_from_slice(b" \\*");
    }
    out.extend_from_slice(b")] Limited\r\n");
}

/// `(\Seen $Keyword ...)`: keywords are atoms by construction.
pub(super) fn write_flag_names(out: &mut Vec<u8>, message: &MessageMeta) {
    out.push(b'(');
    for (index, name) in message.flags.names().enumerate() {
        if index > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(name.as_bytes());
    }
    out.push(b')');
}

/// `* seq FETCH ([UID n ]FLAGS (...))`.
pub(super) fn write_flags_fetch(out: &mut Vec<u8>, seq: usize, message: &MessageMeta, uid: bool) {
    out.extend_from_slice(format!("* {seq} FETCH (").as_bytes());
    if uid {
        out.extend_from_slice(format!("UID {} ", message.uid).as_bytes());
    }
    out.extend_from_slice(b"FLAGS ");
    write_flag_names(out, message);
    out.extend_from_slice(b")\r\n");
}
