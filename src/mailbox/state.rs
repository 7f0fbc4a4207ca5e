//! The in-memory state of one user's mailboxes and the one function that
//! changes it: `apply` of a journal operation. Live changes and journal
//! replay go through the same `apply`, so what a restart rebuilds is what
//! the sessions saw.
//!
//! This module must never do I/O, never assign UIDs or ids on its own
//! (operations carry them) and never panic on operations read from disk:
//! an operation that does not fit the state is an `ApplyError`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::flags::{Keyword, KeywordTable, SystemFlags, KEYWORDS_MAX};
use super::record::Op;
use super::Uid;
use crate::spool::QueueId;

/// One message as a folder keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredMessage {
    pub(crate) id: QueueId,
    pub(crate) rcpt: u32,
    /// Prefix and spool data together.
    pub(crate) size: u64,
    pub(crate) internal_date_ms: u64,
    pub(crate) system: SystemFlags,
    /// Bit `i` set: keyword `i` of the user's keyword table.
    pub(crate) keywords: u64,
    /// Header lines served in front of the spool data.
    pub(crate) prefix: Arc<[u8]>,
}

#[derive(Debug)]
pub(crate) struct Folder {
    pub(crate) name: String,
    pub(crate) uidvalidity: u32,
    pub(crate) uidnext: Uid,
    pub(crate) messages: BTreeMap<Uid, StoredMessage>,
}

/// An operation that does not fit the state it is applied to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ApplyError(&'static str);

/// A (message, recipient) whose last reference in this user's folders
/// went away.
pub(crate) type Released = (QueueId, u32);

#[derive(Debug, Default)]
pub(crate) struct MailState {
    pub(crate) folders: BTreeMap<u32, Folder>,
    /// Folder name to id, sorted by name (hierarchies are contiguous).
    pub(crate) names: BTreeMap<String, u32>,
    pub(crate) keywords: KeywordTable,
    pub(crate) subscriptions: BTreeSet<String>,
    /// How many folder entries refer to each (message, recipient).
    refs: HashMap<(QueueId, u32), u32>,
    pub(crate) last_uidvalidity: u32,
    pub(crate) next_folder_id: u32,
}

fn keyword_bits_valid(bits: u64, defined: usize) -> bool {
    defined >= KEYWORDS_MAX || bits >> defined == 0
}

impl MailState {
    pub(crate) fn folder_id(&self, name: &str) -> Option<u32> {
        self.names.get(name).copied()
    }

    pub(crate) fn folder(&self, name: &str) -> Option<(u32, &Folder)> {
        let id = self.folder_id(name)?;
        self.folders.get(&id).map(|folder| (id, folder))
    }

    pub(crate) fn holds(&self, id: QueueId, rcpt: u32) -> bool {
        self.refs.contains_key(&(id, rcpt))
    }

    /// The (message, recipient) pairs held whose message is in `ids`.
    pub(crate) fn held_among(&self, ids: &HashSet<QueueId>) -> Vec<(QueueId, u32)> {
        let mut out: Vec<(QueueId, u32)> = self
            .refs
            .keys()
            .filter(|(id, _)| ids.contains(id))
            .copied()
            .collect();
        out.sort_unstable();
        out
    }

    /// Names of the folders strictly below `name`.
    pub(crate) fn inferiors<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.names
            .keys()
            .map(String::as_str)
            .filter(move |candidate| super::names::is_inferior(candidate, name))
    }

    fn add_ref(&mut self, message: &StoredMessage) {
        *self.refs.entry((message.id, message.rcpt)).or_insert(0) += 1;
    }

    fn drop_ref(&mut self, message: &StoredMessage, released: &mut Vec<Released>) {
        let key = (message.id, message.rcpt);
        if let Some(count) = self.refs.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.refs.remove(&key);
                released.push(key);
            }
        }
    }

    fn folder_mut(&mut self, id: u32) -> Result<&mut Folder, ApplyError> {
        self.folders
            .get_mut(&id)
            .ok_or(ApplyError("operation names a folder that does not exist"))
    }

    /// Applies one operation; returns the references it released.
    pub(crate) fn apply(&mut self, op: &Op) -> Result<Vec<Released>, ApplyError> {
        let mut released = Vec::new();
        match op {
            Op::UserState { last_uidvalidity } => {
                self.last_uidvalidity = self.last_uidvalidity.max(*last_uidvalidity);
            }
            Op::CreateFolder {
                id,
                uidvalidity,
                uidnext,
                name,
            } => {
                if self.folders.contains_key(id) || self.names.contains_key(name) {
                    return Err(ApplyError("folder created twice"));
                }
                if *uidnext == 0 {
                    return Err(ApplyError("UIDNEXT of zero"));
                }
                self.folders.insert(
                    *id,
                    Folder {
                        name: name.clone(),
                        uidvalidity: *uidvalidity,
                        uidnext: *uidnext,
                        messages: BTreeMap::new(),
                    },
                );
                self.names.insert(name.clone(), *id);
                self.last_uidvalidity = self.last_uidvalidity.max(*uidvalidity);
                self.next_folder_id = self.next_folder_id.max(id.saturating_add(1));
            }
            Op::DeleteFolder { id } => {
                let folder = self
                    .folders
                    .remove(id)
                    .ok_or(ApplyError("deleting a folder that does not exist"))?;
                self.names.remove(&folder.name);
                for message in folder.messages.values() {
                    self.drop_ref(message, &mut released);
                }
            }
            Op::RenameFolder { id, name } => {
                if self.names.contains_key(name) {
                    return Err(ApplyError("renaming onto an existing folder"));
                }
                let folder = self.folder_mut(*id)?;
                let old = std::mem::replace(&mut folder.name, name.clone());
                self.names.remove(&old);
                self.names.insert(name.clone(), *id);
            }
            Op::Subscribe { name, subscribed } => {
                if *subscribed {
                    self.subscriptions.insert(name.clone());
                } else {
                    self.subscriptions.remove(name);
                }
            }
            Op::DefineKeyword { index, name } => {
                let keyword =
                    Keyword::new(name).map_err(|_| ApplyError("keyword is not an atom"))?;
                if usize::from(*index) != self.keywords.len() {
                    return Err(ApplyError("keyword defined out of order"));
                }
                self.keywords
                    .define(keyword)
                    .ok_or(ApplyError("keyword defined twice or beyond the limit"))?;
            }
            Op::Append {
                folder,
                uid,
                message,
            } => {
                if !keyword_bits_valid(message.keywords, self.keywords.len()) {
                    return Err(ApplyError("message names an undefined keyword"));
                }
                insert_message(self.folder_mut(*folder)?, *uid, message.clone())?;
                self.add_ref(message);
            }
            Op::SetFlags { folder, changes } => {
                let defined = self.keywords.len();
                let folder = self.folder_mut(*folder)?;
                for (uid, system, keywords) in changes {
                    if !keyword_bits_valid(*keywords, defined) {
                        return Err(ApplyError("flags name an undefined keyword"));
                    }
                    let message = folder
                        .messages
                        .get_mut(uid)
                        .ok_or(ApplyError("flags for a message that does not exist"))?;
                    message.system = *system;
                    message.keywords = *keywords;
                }
            }
            Op::Expunge { folder, uids } => {
                let folder = self.folder_mut(*folder)?;
                let mut gone = Vec::with_capacity(uids.len());
                for uid in uids {
                    gone.push(
                        folder
                            .messages
                            .remove(uid)
                            .ok_or(ApplyError("expunging a message that does not exist"))?,
                    );
                }
                for message in &gone {
                    self.drop_ref(message, &mut released);
                }
            }
            Op::Copy { from, to, pairs } => {
                let source = self
                    .folders
                    .get(from)
                    .ok_or(ApplyError("copy from a folder that does not exist"))?;
                let mut copies = Vec::with_capacity(pairs.len());
                for (source_uid, copy_uid) in pairs {
                    let message = source
                        .messages
                        .get(source_uid)
                        .ok_or(ApplyError("copy of a message that does not exist"))?;
                    copies.push((*copy_uid, message.clone()));
                }
                let target = self.folder_mut(*to)?;
                for (uid, message) in &copies {
                    insert_message(target, *uid, message.clone())?;
                }
                for (_, message) in &copies {
                    self.add_ref(message);
                }
            }
            Op::Retarget { moves } => self.retarget(moves)?,
        }
        Ok(released)
    }

    /// Points every reference to a moved record at its copy. References
    /// move, none is dropped or added, so nothing is released.
    fn retarget(&mut self, moves: &[(QueueId, QueueId)]) -> Result<(), ApplyError> {
        let mut next: HashMap<QueueId, QueueId> = HashMap::with_capacity(moves.len());
        for (from, to) in moves {
            if from == to || next.insert(*from, *to).is_some() {
                return Err(ApplyError("record moved twice or onto itself"));
            }
        }
        let targets: HashSet<QueueId> = next.values().copied().collect();
        if self.refs.keys().any(|(id, _)| targets.contains(id)) {
            return Err(ApplyError("record moved onto one already referenced"));
        }
        let moved: Vec<((QueueId, u32), u32)> = self
            .refs
            .iter()
            .filter(|((id, _), _)| next.contains_key(id))
            .map(|(key, count)| (*key, *count))
            .collect();
        for ((from, rcpt), count) in moved {
            self.refs.remove(&(from, rcpt));
            if let Some(to) = next.get(&from) {
                self.refs.insert((*to, rcpt), count);
            }
        }
        for folder in self.folders.values_mut() {
            for message in folder.messages.values_mut() {
                if let Some(to) = next.get(&message.id) {
                    message.id = *to;
                }
            }
        }
        Ok(())
    }

    /// Operations that rebuild this state from nothing: what compaction
    /// writes.
    pub(crate) fn snapshot_ops(&self) -> Vec<Op> {
        let mut ops = vec![Op::UserState {
            last_uidvalidity: self.last_uidvalidity,
        }];
        for (index, keyword) in self.keywords.all().iter().enumerate() {
            ops.push(Op::DefineKeyword {
                // The table holds at most KEYWORDS_MAX (64) entries.
                index: u8::try_from(index).unwrap_or(u8::MAX),
                name: keyword.as_str().to_owned(),
            });
        }
        for name in &self.subscriptions {
            ops.push(Op::Subscribe {
                name: name.clone(),
                subscribed: true,
            });
        }
        for (id, folder) in &self.folders {
            ops.push(Op::CreateFolder {
                id: *id,
                uidvalidity: folder.uidvalidity,
                uidnext: folder.uidnext,
                name: folder.name.clone(),
            });
            for (uid, message) in &folder.messages {
                ops.push(Op::Append {
                    folder: *id,
                    uid: *uid,
                    message: message.clone(),
                });
            }
        }
        ops
    }
}

/// Puts a message at `uid`, which must be free, and moves UIDNEXT past it.
fn insert_message(folder: &mut Folder, uid: Uid, message: StoredMessage) -> Result<(), ApplyError> {
    if uid == 0 || folder.messages.contains_key(&uid) {
        return Err(ApplyError("message UID zero or already taken"));
    }
    let after = uid
        .checked_add(1)
        .ok_or(ApplyError("message UID leaves no UIDNEXT"))?;
    folder.uidnext = folder.uidnext.max(after);
    folder.messages.insert(uid, message);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(offset: u64) -> StoredMessage {
        StoredMessage {
            id: QueueId::new(1, offset).unwrap(),
            rcpt: 0,
            size: 10,
            internal_date_ms: 5,
            system: SystemFlags::empty(),
            keywords: 0,
            prefix: Arc::from(&b""[..]),
        }
    }

    fn create(id: u32, name: &str) -> Op {
        Op::CreateFolder {
            id,
            uidvalidity: 100 + id,
            uidnext: 1,
            name: name.into(),
        }
    }

    #[test]
    fn references_are_counted_across_folders() {
        let mut state = MailState::default();
        state.apply(&create(0, "INBOX")).unwrap();
        state.apply(&create(1, "Keep")).unwrap();
        let m = message(8);
        state
            .apply(&Op::Append {
                folder: 0,
                uid: 1,
                message: m.clone(),
            })
            .unwrap();
        state
            .apply(&Op::Copy {
                from: 0,
                to: 1,
                pairs: vec![(1, 1)],
            })
            .unwrap();
        let released = state
            .apply(&Op::Expunge {
                folder: 0,
                uids: vec![1],
            })
            .unwrap();
        assert!(released.is_empty());
        assert!(state.holds(m.id, 0));
        let released = state.apply(&Op::DeleteFolder { id: 1 }).unwrap();
        assert_eq!(released, vec![(m.id, 0)]);
        assert!(!state.holds(m.id, 0));
    }

    #[test]
    fn retarget_moves_references_and_refuses_ambiguous_moves() {
        let mut state = MailState::default();
        state.apply(&create(0, "INBOX")).unwrap();
        state.apply(&create(1, "Keep")).unwrap();
        let (a, b) = (message(8), message(16));
        for (uid, m) in [(1, &a), (2, &b)] {
            let op = Op::Append {
                folder: 0,
                uid,
                message: m.clone(),
            };
            state.apply(&op).unwrap();
        }
        let copy = Op::Copy {
            from: 0,
            to: 1,
            pairs: vec![(1, 1)],
        };
        state.apply(&copy).unwrap();
        let c = QueueId::new(2, 8).unwrap();
        for moves in [
            vec![(a.id, b.id)],
            vec![(a.id, a.id)],
            vec![(a.id, c), (a.id, c)],
        ] {
            assert!(state.apply(&Op::Retarget { moves }).is_err());
        }
        let released = state
            .apply(&Op::Retarget {
                moves: vec![(a.id, c)],
            })
            .unwrap();
        assert!(released.is_empty());
        assert!(!state.holds(a.id, 0));
        assert!(state.holds(c, 0) && state.holds(b.id, 0));
        for folder in [0, 1] {
            let moved = &state.folders[&folder].messages[&1];
            assert_eq!(moved, &StoredMessage { id: c, ..a.clone() });
        }
        let released = state
            .apply(&Op::Expunge {
                folder: 0,
                uids: vec![1],
            })
            .unwrap();
        assert!(released.is_empty());
        let released = state.apply(&Op::DeleteFolder { id: 1 }).unwrap();
        assert_eq!(released, vec![(c, 0)]);
    }

    #[test]
    fn operations_that_do_not_fit_are_errors() {
        let mut state = MailState::default();
        state.apply(&create(0, "INBOX")).unwrap();
        let bad = [
            create(0, "Other"),
            create(1, "INBOX"),
            Op::DeleteFolder { id: 9 },
            Op::Expunge {
                folder: 0,
                uids: vec![1],
            },
            Op::Append {
                folder: 0,
                uid: 0,
                message: message(8),
            },
            Op::Append {
                folder: 0,
                uid: u32::MAX,
                message: message(8),
            },
            Op::Append {
                folder: 0,
                uid: 1,
                message: StoredMessage {
                    keywords: 1,
                    ..message(8)
                },
            },
            Op::DefineKeyword {
                index: 1,
                name: "k".into(),
            },
            Op::SetFlags {
                folder: 0,
                changes: vec![(4, SystemFlags::SEEN, 0)],
            },
        ];
        for op in bad {
            assert!(state.apply(&op).is_err(), "{op:?}");
        }
    }

    #[test]
    fn snapshot_rebuilds_the_same_state() {
        let mut state = MailState::default();
        state.apply(&create(0, "INBOX")).unwrap();
        state.apply(&create(5, "a/b")).unwrap();
        state.apply(&create(9, "gone")).unwrap();
        state
            .apply(&Op::DefineKeyword {
                index: 0,
                name: "$Work".into(),
            })
            .unwrap();
        state
            .apply(&Op::Append {
                folder: 5,
                uid: 7,
                message: StoredMessage {
                    keywords: 1,
                    ..message(16)
                },
            })
            .unwrap();
        state.apply(&Op::DeleteFolder { id: 9 }).unwrap();
        let mut rebuilt = MailState::default();
        for op in state.snapshot_ops() {
            rebuilt.apply(&op).unwrap();
        }
        assert_eq!(rebuilt.snapshot_ops(), state.snapshot_ops());
        // The deleted folder's UIDVALIDITY is still never handed out again.
        assert_eq!(rebuilt.last_uidvalidity, 109);
        assert_eq!(rebuilt.next_folder_id, 6);
        assert_eq!(rebuilt.folder("a/b").unwrap().1.uidnext, 8);
    }
}
