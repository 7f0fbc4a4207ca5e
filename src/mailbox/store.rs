//! The mailbox store and each user's handle: opening (journal replay,
//! default folders, compaction), and every read and change the POP3 and
//! IMAP sessions make. Reads answer from memory at once; a change is
//! validated, turned into journal operations, applied to memory through
//! `MailState::apply`, queued for the commit thread, and answered with a
//! `Durable` the caller awaits before acknowledging.
//!
//! This module must never write or sync journal files on a session's
//! call (the commit thread does, except while opening a user), never let
//! a change reach memory that the journal could not record, and never
//! panic on any input.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::commit::{self, CommitHandle, Durable, Flushed, Pending, ReleaseFn, Users, Waiter};
use super::error::io_error;
use super::flags::{FlagOp, Flags, Keyword, SystemFlags};
use super::journal::Journal;
use super::names::{
    canonical_folder, check_user, is_inferior, reparent, superiors, SpecialUse, DEFAULT_FOLDERS,
    HIERARCHY_DELIMITER, INBOX,
};
use super::record::{encode_record, encode_snapshot, Op, RECORD_PAYLOAD_MAX};
use super::state::{Folder, MailState, StoredMessage};
use super::{MailboxError, Uid};
use crate::spool::QueueId;

/// Folders one user may have. RFC 3501 sets no limit; this bounds LIST
/// responses and the per-user memory a client can claim.
pub const FOLDERS_MAX: usize = 1000;
/// Longest per-message prefix (Return-Path and Received lines) stored.
/// RFC 5321 4.5.3.1.6 bounds a text line at 1000 octets; a handful of
/// folded trace lines stays far below this.
pub const PREFIX_MAX: usize = 16 << 10;
/// Largest UID a message can get: UIDNEXT must stay representable in
/// the 32 bits RFC 3501 2.3.1.1 gives UIDs.
const UID_MAX: Uid = u32::MAX - 1;

/// A message to put into a folder.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The spool record holding the message bytes.
    pub id: QueueId,
    /// The recipient index inside that record this delivery is for.
    pub rcpt: u32,
    /// Bytes served: `prefix` plus the spool data.
    pub size: u64,
    pub internal_date_ms: u64,
    /// Served in front of the spool data (Return-Path, Received).
    pub prefix: Vec<u8>,
}

/// One message as sessions see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    pub uid: Uid,
    pub id: QueueId,
    pub rcpt: u32,
    /// Bytes served: prefix plus spool data.
    pub size: u64,
    pub internal_date_ms: u64,
    pub flags: Flags,
    pub prefix: Arc<[u8]>,
}

/// One folder as LIST shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderInfo {
    pub name: String,
    pub special_use: Option<SpecialUse>,
    pub subscribed: bool,
    /// RFC 3348 \HasChildren (else \HasNoChildren).
    pub has_children: bool,
}

/// What STATUS reports (RFC 9051 6.3.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FolderStatus {
    pub messages: u32,
    pub uidnext: Uid,
    pub uidvalidity: u32,
    pub unseen: u32,
    pub deleted: u32,
    /// Sum of message sizes.
    pub size: u64,
}

/// A folder's content at one moment, in UID order.
#[derive(Debug, Clone)]
pub struct FolderSnapshot {
    pub uidvalidity: u32,
    pub uidnext: Uid,
    pub messages: Vec<MessageMeta>,
    /// Every keyword the user's mailbox has defined (IMAP FLAGS).
    pub keywords: Vec<Keyword>,
    /// The mailbox version this snapshot shows (see `changes`).
    pub version: u64,
}

/// The store of every user's mailboxes under one directory.
pub struct MailboxStore {
    dir: PathBuf,
    users: Users,
    commit: CommitHandle,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    state: MailState,
    pending: Pending,
    /// A batch of this user is being written right now.
    in_flight: bool,
    /// A journal write failed: memory may be ahead of disk.
    failed: bool,
}

/// One user's mailboxes: folders, messages, flags, subscriptions.
pub struct UserMailboxes {
    name: String,
    me: Weak<UserMailboxes>,
    inner: Mutex<Inner>,
    /// Only the commit thread (and opening) touch the file.
    journal: Mutex<Journal>,
    version: AtomicU64,
    changes: watch::Sender<u64>,
    commit: CommitHandle,
}

fn now_secs() -> u32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; should a panic ever
    // happen, the state is still the last consistent one.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MailboxStore {
    /// Opens the store in `dir` (created if missing) and starts its
    /// commit thread. `on_release` hears of every message whose last
    /// reference was expunged, once that is durable.
    pub fn open(dir: &Path, on_release: Box<ReleaseFn>) -> Result<Arc<MailboxStore>, MailboxError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let (sender, requests) = mpsc::channel();
        let commit = CommitHandle::new(sender);
        let users: Users = Arc::default();
        let thread = {
            let commit = commit.clone();
            let users = Arc::clone(&users);
            let on_release: Arc<ReleaseFn> = Arc::from(on_release);
            std::thread::Builder::new()
                .name("tern-mailbox-commit".into())
                .spawn(move || commit::run(requests, commit, users, on_release))
                .map_err(io_error(dir))?
        };
        Ok(Arc::new(MailboxStore {
            dir: dir.to_path_buf(),
            users,
            commit,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// The mailboxes of `name`, loaded from its journal on first use or
    /// created with the default folders.
    pub fn user(&self, name: &str) -> Result<Arc<UserMailboxes>, MailboxError> {
        check_user(name)?;
        if self.commit.is_closed() {
            return Err(MailboxError::Stopped);
        }
        let mut users = lock(&self.users);
        if let Some(user) = users.get(name) {
            return Ok(Arc::clone(user));
        }
        let user = UserMailboxes::load(&self.dir, name, self.commit.clone())?;
        users.insert(name.to_owned(), Arc::clone(&user));
        metrics::gauge!("tern_mailbox_users_open").set(users.len() as f64);
        Ok(user)
    }
}

impl Drop for MailboxStore {
    fn drop(&mut self) {
        self.commit.stop();
        if let Some(thread) = lock(&self.thread).take() {
            if thread.join().is_err() {
                tracing::error!("mailbox commit thread panicked");
            }
        }
    }
}

/// UIDVALIDITY for a new folder: the time in seconds, but always above
/// every value this user ever had (RFC 3501 2.3.1.1: never reused).
fn next_uidvalidity(last: u32, now: u32) -> Result<u32, MailboxError> {
    let after = last
        .checked_add(1)
        .ok_or(MailboxError::CounterExhausted("UIDVALIDITY"))?;
    Ok(after.max(now))
}

/// Operations creating `names` (in order) as empty folders, the last one
/// with `last_uidnext`; and the id the last one gets.
fn create_ops(
    state: &MailState,
    names: &[String],
    last_uidnext: Uid,
) -> Result<(Vec<Op>, u32), MailboxError> {
    if state.folders.len() + names.len() > FOLDERS_MAX {
        return Err(MailboxError::TooManyFolders { limit: FOLDERS_MAX });
    }
    let now = now_secs();
    let mut uidvalidity = state.last_uidvalidity;
    let mut id = state.next_folder_id;
    let mut ops = Vec::with_capacity(names.len());
    let mut last_id = id;
    for (index, name) in names.iter().enumerate() {
        uidvalidity = next_uidvalidity(uidvalidity, now)?;
        last_id = id;
        let uidnext = if index + 1 == names.len() {
            last_uidnext
        } else {
            1
        };
        ops.push(Op::CreateFolder {
            id,
            uidvalidity,
            uidnext,
            name: name.clone(),
        });
        id = id
            .checked_add(1)
            .ok_or(MailboxError::CounterExhausted("folder id"))?;
    }
    Ok((ops, last_id))
}

/// `name` and those of its superiors that do not exist, outermost first.
fn with_missing_superiors(state: &MailState, name: &str) -> Vec<String> {
    superiors(name)
        .filter(|superior| state.folder_id(superior).is_none())
        .map(str::to_owned)
        .chain(std::iter::once(name.to_owned()))
        .collect()
}

fn define_ops(state: &MailState, planned: Vec<Keyword>) -> Vec<Op> {
    let first = state.keywords.len();
    planned
        .into_iter()
        .enumerate()
        .map(|(offset, keyword)| Op::DefineKeyword {
            // plan_bits keeps the table within KEYWORDS_MAX (64) entries.
            index: u8::try_from(first + offset).unwrap_or(u8::MAX),
            name: keyword.as_str().to_owned(),
        })
        .collect()
}

fn existing_folder<'a>(
    state: &'a MailState,
    name: &str,
) -> Result<(u32, &'a Folder), MailboxError> {
    state
        .folder(name)
        .ok_or_else(|| MailboxError::NoSuchFolder(name.to_owned()))
}

fn meta(state: &MailState, uid: Uid, message: &StoredMessage) -> MessageMeta {
    MessageMeta {
        uid,
        id: message.id,
        rcpt: message.rcpt,
        size: message.size,
        internal_date_ms: message.internal_date_ms,
        flags: Flags {
            system: message.system,
            keywords: state.keywords.resolve(message.keywords),
        },
        prefix: Arc::clone(&message.prefix),
    }
}

/// The UIDs to copy: those of `uids` present in `folder`, ascending, and
/// the new UIDs they get in `target`.
fn copy_pairs(
    folder: &Folder,
    uids: &[Uid],
    target: &Folder,
) -> Result<Vec<(Uid, Uid)>, MailboxError> {
    let sources: BTreeSet<Uid> = uids
        .iter()
        .copied()
        .filter(|uid| folder.messages.contains_key(uid))
        .collect();
    let last = (u64::from(target.uidnext) + sources.len() as u64).saturating_sub(1);
    if !sources.is_empty() && last > u64::from(UID_MAX) {
        return Err(MailboxError::UidsExhausted(target.name.clone()));
    }
    // Sources drive the zip, so the range yields only UIDs checked above.
    let pairs: Vec<(Uid, Uid)> = sources.into_iter().zip(target.uidnext..).collect();
    Ok(pairs)
}

impl UserMailboxes {
    fn load(
        dir: &Path,
        name: &str,
        commit: CommitHandle,
    ) -> Result<Arc<UserMailboxes>, MailboxError> {
        let opened = Journal::open(dir, name)?;
        let mut journal = opened.journal;
        let mut state = MailState::default();
        for (index, ops) in opened.records.iter().enumerate() {
            for op in ops {
                state.apply(op).map_err(|error| MailboxError::Corrupt {
                    path: journal.path().to_path_buf(),
                    reason: format!("record {index}: {error}"),
                })?;
            }
        }
        if state.folder_id(INBOX).is_none() {
            // INBOX cannot be deleted, so its absence means a new user.
            let names: Vec<String> = DEFAULT_FOLDERS.iter().map(|n| (*n).to_owned()).collect();
            let mut ops = Vec::new();
            for name in &names {
                ops.extend(create_ops(&state, std::slice::from_ref(name), 1)?.0);
                if let Some(op) = ops.last() {
                    state.apply(op).map_err(|error| MailboxError::Corrupt {
                        path: journal.path().to_path_buf(),
                        reason: format!("default folders: {error}"),
                    })?;
                }
            }
            for name in names {
                let op = Op::Subscribe {
                    name,
                    subscribed: true,
                };
                // Subscribing fits any state.
                let _ = state.apply(&op);
                ops.push(op);
            }
            let mut bytes = Vec::new();
            encode_record(&ops, &mut bytes).map_err(|len| MailboxError::ChangeTooLarge {
                len,
                limit: RECORD_PAYLOAD_MAX,
            })?;
            journal.append(&bytes)?;
        }
        if journal.may_compact(0) {
            let mut snapshot = Vec::new();
            encode_snapshot(&state.snapshot_ops(), &mut snapshot);
            if journal.compaction_pays(journal.len(), snapshot.len()) {
                journal.replace(&snapshot)?;
            }
        }
        let (changes, _) = watch::channel(0);
        Ok(Arc::new_cyclic(|me| UserMailboxes {
            name: name.to_owned(),
            me: me.clone(),
            inner: Mutex::new(Inner {
                state,
                pending: Pending::default(),
                in_flight: false,
                failed: false,
            }),
            journal: Mutex::new(journal),
            version: AtomicU64::new(0),
            changes,
            commit,
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    fn writable(&self, inner: &Inner) -> Result<(), MailboxError> {
        if inner.failed {
            return Err(MailboxError::JournalFailed {
                user: self.name.clone(),
            });
        }
        if self.commit.is_closed() {
            return Err(MailboxError::Stopped);
        }
        Ok(())
    }

    /// Hands `inner`'s pending work to the commit thread; if it is gone,
    /// fails every waiter rather than leave it hanging.
    fn notify(&self, inner: &mut Inner) {
        let delivered = self.me.upgrade().is_some_and(|me| self.commit.notify(me));
        if !delivered {
            inner.failed = true;
            for waiter in std::mem::take(&mut inner.pending).waiters {
                waiter.resolve(Err(MailboxError::Stopped));
            }
        }
    }

    /// Records `ops` as one journal record: encoded first (so a change
    /// too large for the journal never reaches memory), then applied,
    /// then queued.
    fn commit(&self, inner: &mut Inner, ops: Vec<Op>) -> Result<Durable, MailboxError> {
        let mut bytes = Vec::new();
        encode_record(&ops, &mut bytes).map_err(|len| MailboxError::ChangeTooLarge {
            len,
            limit: RECORD_PAYLOAD_MAX,
        })?;
        for op in &ops {
            match inner.state.apply(op) {
                Ok(released) => inner.pending.releases.extend(released),
                Err(error) => {
                    // Validation let through an operation the state
                    // refuses; memory may now hold part of the change,
                    // so refuse everything until a restart replays disk.
                    inner.failed = true;
                    tracing::error!(user = %self.name, %error, "mailbox change did not apply");
                    return Err(MailboxError::JournalFailed {
                        user: self.name.clone(),
                    });
                }
            }
        }
        inner.pending.bytes.extend_from_slice(&bytes);
        let (waiter, durable) = Waiter::new();
        inner.pending.waiters.push(waiter);
        self.notify(inner);
        let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        self.changes.send_replace(version);
        Ok(durable)
    }

    /// A `Durable` for a request that changed nothing: resolves once the
    /// changes before it are durable (the caller may have seen them).
    fn barrier(&self, inner: &mut Inner) -> Durable {
        if inner.pending.is_empty() && !inner.in_flight {
            return Durable::ready();
        }
        let (waiter, durable) = Waiter::new();
        inner.pending.waiters.push(waiter);
        self.notify(inner);
        durable
    }

    /// Writes this user's pending changes (commit thread only): appends
    /// and syncs them, or writes a snapshot instead when the journal has
    /// grown past the compaction ratio.
    pub(crate) fn flush(&self) -> Option<Flushed> {
        let mut journal = lock(&self.journal);
        let (pending, snapshot) = {
            let mut inner = self.lock();
            if inner.pending.is_empty() {
                return None;
            }
            let pending = std::mem::take(&mut inner.pending);
            let mut snapshot = None;
            if journal.may_compact(pending.bytes.len()) {
                // Memory holds every pending change, so a snapshot taken
                // now replaces the journal and those bytes alike.
                let mut bytes = Vec::new();
                encode_snapshot(&inner.state.snapshot_ops(), &mut bytes);
                let total = journal.len() + pending.bytes.len() as u64;
                if journal.compaction_pays(total, bytes.len()) {
                    snapshot = Some(bytes);
                }
            }
            inner.in_flight = snapshot.is_some() || !pending.bytes.is_empty();
            (pending, snapshot)
        };
        let written = match snapshot {
            Some(snapshot) => journal.replace(&snapshot),
            None if pending.bytes.is_empty() => Ok(()),
            None => journal.append(&pending.bytes),
        };
        let mut inner = self.lock();
        inner.in_flight = false;
        if written.is_err() {
            inner.failed = true;
        }
        Some(Flushed {
            waiters: pending.waiters,
            releases: pending.releases,
            written,
            user: self.name.clone(),
        })
    }

    /// Puts a message into `folder` with `flags`; returns its UID.
    pub fn deliver(
        &self,
        folder: &str,
        message: NewMessage,
        flags: Flags,
    ) -> Result<(Uid, Durable), MailboxError> {
        let name = canonical_folder(folder)?;
        if message.prefix.len() > PREFIX_MAX {
            return Err(MailboxError::PrefixTooLong {
                len: message.prefix.len(),
                limit: PREFIX_MAX,
            });
        }
        if message.size < message.prefix.len() as u64 {
            return Err(MailboxError::SizeBelowPrefix {
                size: message.size,
                prefix: message.prefix.len(),
            });
        }
        let mut inner = self.lock();
        self.writable(&inner)?;
        let state = &inner.state;
        let (id, target) = existing_folder(state, &name)?;
        if state.holds(message.id, message.rcpt) {
            return Err(MailboxError::AlreadyHeld {
                id: message.id,
                rcpt: message.rcpt,
            });
        }
        let uid = target.uidnext;
        if uid > UID_MAX {
            return Err(MailboxError::UidsExhausted(name));
        }
        let mut planned = Vec::new();
        let keywords = state.keywords.plan_bits(&flags.keywords, &mut planned)?;
        let mut ops = define_ops(state, planned);
        ops.push(Op::Append {
            folder: id,
            uid,
            message: StoredMessage {
                id: message.id,
                rcpt: message.rcpt,
                size: message.size,
                internal_date_ms: message.internal_date_ms,
                system: flags.system,
                keywords,
                prefix: Arc::from(message.prefix),
            },
        });
        let durable = self.commit(&mut inner, ops)?;
        metrics::counter!("tern_mailbox_deliveries_total").increment(1);
        Ok((uid, durable))
    }

    /// Whether (message, recipient) is in any folder: the check that
    /// keeps a crash-redelivery from delivering twice.
    pub fn holds(&self, id: QueueId, rcpt: u32) -> bool {
        self.lock().state.holds(id, rcpt)
    }

    /// Every folder, sorted by name.
    pub fn folders(&self) -> Vec<FolderInfo> {
        let inner = self.lock();
        let state = &inner.state;
        state
            .names
            .keys()
            .map(|name| FolderInfo {
                name: name.clone(),
                special_use: SpecialUse::of(name),
                subscribed: state.subscriptions.contains(name),
                has_children: state.inferiors(name).next().is_some(),
            })
            .collect()
    }

    /// Every subscribed name, existing or not (RFC 3501 6.3.6 keeps
    /// subscriptions to folders that are gone).
    pub fn subscriptions(&self) -> Vec<String> {
        self.lock().state.subscriptions.iter().cloned().collect()
    }

    /// Creates `name` and any missing superiors (RFC 3501 6.3.3); one
    /// trailing hierarchy delimiter is ignored.
    pub fn create(&self, name: &str) -> Result<Durable, MailboxError> {
        let name = canonical_folder(name.strip_suffix(HIERARCHY_DELIMITER).unwrap_or(name))?;
        let mut inner = self.lock();
        self.writable(&inner)?;
        if inner.state.folder_id(&name).is_some() {
            return Err(MailboxError::FolderExists(name));
        }
        let names = with_missing_superiors(&inner.state, &name);
        let (ops, _) = create_ops(&inner.state, &names, 1)?;
        self.commit(&mut inner, ops)
    }

    /// Deletes `name` and its messages (RFC 3501 6.3.4). INBOX and
    /// folders with children are refused.
    pub fn delete(&self, name: &str) -> Result<Durable, MailboxError> {
        let name = canonical_folder(name)?;
        if name == INBOX {
            return Err(MailboxError::CannotDeleteInbox);
        }
        let mut inner = self.lock();
        self.writable(&inner)?;
        let (id, _) = existing_folder(&inner.state, &name)?;
        if inner.state.inferiors(&name).next().is_some() {
            return Err(MailboxError::HasChildren(name));
        }
        self.commit(&mut inner, vec![Op::DeleteFolder { id }])
    }

    /// Renames `from` and its inferiors to `to` (RFC 3501 6.3.5),
    /// creating missing superiors of `to`. Renaming INBOX moves its
    /// messages (same UIDs) into a new folder `to` and leaves INBOX
    /// empty, with its UIDVALIDITY and UIDNEXT, and its children in place.
    pub fn rename(&self, from: &str, to: &str) -> Result<Durable, MailboxError> {
        let from = canonical_folder(from)?;
        let to = canonical_folder(to)?;
        let mut inner = self.lock();
        self.writable(&inner)?;
        let state = &inner.state;
        let (from_id, source) = existing_folder(state, &from)?;
        if state.folder_id(&to).is_some() {
            return Err(MailboxError::FolderExists(to));
        }
        let ops = if from == INBOX {
            let names = with_missing_superiors(state, &to);
            let (mut ops, new_id) = create_ops(state, &names, source.uidnext)?;
            let uids: Vec<Uid> = source.messages.keys().copied().collect();
            if !uids.is_empty() {
                ops.push(Op::Copy {
                    from: from_id,
                    to: new_id,
                    pairs: uids.iter().map(|uid| (*uid, *uid)).collect(),
                });
                ops.push(Op::Expunge {
                    folder: from_id,
                    uids,
                });
            }
            ops
        } else {
            if is_inferior(&to, &from) {
                return Err(MailboxError::RenameIntoItself { from, to });
            }
            let superiors: Vec<String> = with_missing_superiors(state, &to)
                .into_iter()
                .filter(|name| *name != to)
                .collect();
            let mut ops = if superiors.is_empty() {
                Vec::new()
            } else {
                create_ops(state, &superiors, 1)?.0
            };
            let moved = std::iter::once(from.as_str()).chain(state.inferiors(&from));
            for name in moved {
                if let Some(id) = state.folder_id(name) {
                    ops.push(Op::RenameFolder {
                        id,
                        name: reparent(name, &from, &to),
                    });
                }
            }
            ops
        };
        self.commit(&mut inner, ops)
    }

    /// Adds `name` to the subscriptions (RFC 3501 6.3.6); the folder need
    /// not exist.
    pub fn subscribe(&self, name: &str) -> Result<Durable, MailboxError> {
        self.set_subscribed(name, true)
    }

    /// Removes `name` from the subscriptions (RFC 3501 6.3.7).
    pub fn unsubscribe(&self, name: &str) -> Result<Durable, MailboxError> {
        self.set_subscribed(name, false)
    }

    fn set_subscribed(&self, name: &str, subscribed: bool) -> Result<Durable, MailboxError> {
        let name = canonical_folder(name)?;
        let mut inner = self.lock();
        self.writable(&inner)?;
        if inner.state.subscriptions.contains(&name) == subscribed {
            return Ok(self.barrier(&mut inner));
        }
        self.commit(&mut inner, vec![Op::Subscribe { name, subscribed }])
    }

    /// Counts for STATUS and POP3 STAT.
    pub fn status(&self, folder: &str) -> Result<FolderStatus, MailboxError> {
        let name = canonical_folder(folder)?;
        let inner = self.lock();
        let (_, folder) = existing_folder(&inner.state, &name)?;
        let count = |pred: fn(&StoredMessage) -> bool| {
            u32::try_from(folder.messages.values().filter(|m| pred(m)).count()).unwrap_or(u32::MAX)
        };
        Ok(FolderStatus {
            messages: u32::try_from(folder.messages.len()).unwrap_or(u32::MAX),
            uidnext: folder.uidnext,
            uidvalidity: folder.uidvalidity,
            unseen: count(|m| !m.system.contains(SystemFlags::SEEN)),
            deleted: count(|m| m.system.contains(SystemFlags::DELETED)),
            size: folder.messages.values().map(|m| m.size).sum(),
        })
    }

    /// Every message of `folder` in UID order, with the version it shows.
    pub fn snapshot(&self, folder: &str) -> Result<FolderSnapshot, MailboxError> {
        let name = canonical_folder(folder)?;
        let inner = self.lock();
        let state = &inner.state;
        let (_, folder) = existing_folder(state, &name)?;
        Ok(FolderSnapshot {
            uidvalidity: folder.uidvalidity,
            uidnext: folder.uidnext,
            messages: folder
                .messages
                .iter()
                .map(|(uid, message)| meta(state, *uid, message))
                .collect(),
            keywords: state.keywords.all().to_vec(),
            version: self.version.load(Ordering::SeqCst),
        })
    }

    /// One message, if `folder` holds `uid`.
    pub fn message(&self, folder: &str, uid: Uid) -> Option<MessageMeta> {
        let name = canonical_folder(folder).ok()?;
        let inner = self.lock();
        let (_, folder) = inner.state.folder(&name)?;
        folder
            .messages
            .get(&uid)
            .map(|message| meta(&inner.state, uid, message))
    }

    /// Changes the flags of those `uids` that exist (RFC 3501 6.4.6);
    /// returns each one's flags afterwards, in UID order.
    pub fn store_flags(
        &self,
        folder: &str,
        uids: &[Uid],
        op: FlagOp,
        flags: &Flags,
    ) -> Result<(Vec<(Uid, Flags)>, Durable), MailboxError> {
        let name = canonical_folder(folder)?;
        let mut inner = self.lock();
        self.writable(&inner)?;
        let state = &inner.state;
        let (id, target) = existing_folder(state, &name)?;
        let mut planned = Vec::new();
        let keyword_bits = match op {
            FlagOp::Add | FlagOp::Replace => {
                state.keywords.plan_bits(&flags.keywords, &mut planned)?
            }
            FlagOp::Remove => state.keywords.known_bits(&flags.keywords),
        };
        let targets: BTreeSet<Uid> = uids
            .iter()
            .copied()
            .filter(|uid| target.messages.contains_key(uid))
            .collect();
        let mut changes = Vec::new();
        for uid in &targets {
            if let Some(message) = target.messages.get(uid) {
                let (mut system, keywords) = (message.system, message.keywords);
                let keywords = match op {
                    FlagOp::Add => {
                        system.insert(flags.system);
                        keywords | keyword_bits
                    }
                    FlagOp::Remove => {
                        system.remove(flags.system);
                        keywords & !keyword_bits
                    }
                    FlagOp::Replace => {
                        system = flags.system;
                        keyword_bits
                    }
                };
                if (system, keywords) != (message.system, message.keywords) {
                    changes.push((*uid, system, keywords));
                }
            }
        }
        let durable = if changes.is_empty() {
            self.barrier(&mut inner)
        } else {
            let mut ops = define_ops(state, planned);
            ops.push(Op::SetFlags {
                folder: id,
                changes,
            });
            self.commit(&mut inner, ops)?
        };
        let state = &inner.state;
        let after = state
            .folder(&name)
            .map(|(_, folder)| {
                targets
                    .iter()
                    .filter_map(|uid| {
                        let message = folder.messages.get(uid)?;
                        Some((*uid, meta(state, *uid, message).flags))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok((after, durable))
    }

    /// Removes the messages flagged \Deleted (RFC 3501 6.4.3), only those
    /// among `only` when given (UID EXPUNGE, RFC 4315 2.1); returns their
    /// UIDs ascending.
    pub fn expunge(
        &self,
        folder: &str,
        only: Option<&[Uid]>,
    ) -> Result<(Vec<Uid>, Durable), MailboxError> {
        let name = canonical_folder(folder)?;
        let mut inner = self.lock();
        self.writable(&inner)?;
        let (id, target) = existing_folder(&inner.state, &name)?;
        let allowed: Option<BTreeSet<Uid>> = only.map(|uids| uids.iter().copied().collect());
        let uids: Vec<Uid> = target
            .messages
            .iter()
            .filter(|(uid, message)| {
                message.system.contains(SystemFlags::DELETED)
                    && allowed.as_ref().is_none_or(|allowed| allowed.contains(uid))
            })
            .map(|(uid, _)| *uid)
            .collect();
        if uids.is_empty() {
            return Ok((uids, self.barrier(&mut inner)));
        }
        let durable = self.commit(
            &mut inner,
            vec![Op::Expunge {
                folder: id,
                uids: uids.clone(),
            }],
        )?;
        Ok((uids, durable))
    }

    /// Copies those `uids` that exist from `from` to `to` (RFC 3501
    /// 6.4.7): same message reference and flags, new UIDs. Returns
    /// (source UID, new UID) pairs in source order.
    pub fn copy(
        &self,
        from: &str,
        uids: &[Uid],
        to: &str,
    ) -> Result<(Vec<(Uid, Uid)>, Durable), MailboxError> {
        self.transfer(from, uids, to, false)
    }

    /// COPY then expunging the sources, as one journal record (RFC 6851).
    pub fn move_(
        &self,
        from: &str,
        uids: &[Uid],
        to: &str,
    ) -> Result<(Vec<(Uid, Uid)>, Durable), MailboxError> {
        self.transfer(from, uids, to, true)
    }

    fn transfer(
        &self,
        from: &str,
        uids: &[Uid],
        to: &str,
        expunge: bool,
    ) -> Result<(Vec<(Uid, Uid)>, Durable), MailboxError> {
        let from = canonical_folder(from)?;
        let to = canonical_folder(to)?;
        let mut inner = self.lock();
        self.writable(&inner)?;
        let state = &inner.state;
        let (from_id, source) = existing_folder(state, &from)?;
        let (to_id, target) = existing_folder(state, &to)?;
        let pairs = copy_pairs(source, uids, target)?;
        if pairs.is_empty() {
            return Ok((pairs, self.barrier(&mut inner)));
        }
        let mut ops = vec![Op::Copy {
            from: from_id,
            to: to_id,
            pairs: pairs.clone(),
        }];
        if expunge {
            ops.push(Op::Expunge {
                folder: from_id,
                uids: pairs.iter().map(|(source, _)| *source).collect(),
            });
        }
        let durable = self.commit(&mut inner, ops)?;
        Ok((pairs, durable))
    }

    /// Points this user's references to moved spool records at their
    /// copies (spool compaction). `moves` pairs an old queue id with the
    /// id of its copy; UIDs, flags, sizes, internal dates and prefixes
    /// stay as they are, so clients see no change. All of the user's
    /// references move in one journal record. Returns the (old id,
    /// recipient) pairs that were held and now name the copy: once the
    /// `Durable` resolves, the old record's recipients in that list are
    /// no longer referenced here, and only those.
    pub fn retarget(
        &self,
        moves: &[(QueueId, QueueId)],
    ) -> Result<(Vec<(QueueId, u32)>, Durable), MailboxError> {
        let mut inner = self.lock();
        self.writable(&inner)?;
        let from: HashSet<QueueId> = moves.iter().map(|(from, _)| *from).collect();
        let held = inner.state.held_among(&from);
        if held.is_empty() {
            return Ok((held, self.barrier(&mut inner)));
        }
        let held_ids: HashSet<QueueId> = held.iter().map(|(id, _)| *id).collect();
        let moves: Vec<(QueueId, QueueId)> = moves
            .iter()
            .filter(|(from, _)| held_ids.contains(from))
            .copied()
            .collect();
        let durable = self.commit(&mut inner, vec![Op::Retarget { moves }])?;
        Ok((held, durable))
    }

    /// A receiver whose value bumps on every change of this user's
    /// mailboxes (IDLE, other sessions re-reading their snapshot).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

impl std::fmt::Debug for UserMailboxes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserMailboxes")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
