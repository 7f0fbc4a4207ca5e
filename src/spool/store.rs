//! The `Spool` handle: opens and recovers the spool directory, owns the
//! preparer and sync threads, hands out per-core writers and answers
//! queries (queued messages, one message by id, offline scans).
//!
//! This module wires the parts together; it must never write records
//! itself (writers do) nor report a message before it is durable.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::{self, JoinHandle};

use super::id::{QueueId, MAX_SEGMENT_SIZE};
use super::index::{Index, LiveMessage, Located};
use super::pool::{publish_gauges, register_counters, run_preparer, Pool};
use super::record::{decode_record, decode_verified, Record};
use super::recovery;
use super::segment::{io_error, Segment};
use super::state::RecipientState;
use super::sync::{self, SyncMsg};
use super::writer::SpoolWriter;
use super::SpoolError;
use crate::envelope::Envelope;

/// Default `[spool] segment_size`: 64 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;
/// Segment sizes are whole pages so zero-writing and syncing stay aligned.
const SEGMENT_SIZE_UNIT: u64 = 4096;
/// Name of the lock file that keeps two servers off one spool.
const LOCK_FILE: &str = "lock";

/// `[spool]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Bytes per segment file; a multiple of 4096, at most 2 GiB.
    pub segment_size: u64,
    /// Total bytes of segment files; 0 = unlimited, else at least two
    /// segments (one is held back for recipient updates).
    pub max_size: u64,
}

impl SpoolConfig {
    /// Default sizes for a spool in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> SpoolConfig {
        SpoolConfig {
            dir: dir.into(),
            segment_size: DEFAULT_SEGMENT_SIZE,
            max_size: 0,
        }
    }

    fn validate(&self) -> Result<(), SpoolError> {
        let size = self.segment_size;
        if size == 0 || size % SEGMENT_SIZE_UNIT != 0 || size > MAX_SEGMENT_SIZE {
            let source = io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("[spool] segment_size = {size}: must be a positive multiple of {SEGMENT_SIZE_UNIT}, at most {MAX_SEGMENT_SIZE}"),
            );
            return Err(SpoolError::Io {
                path: self.dir.clone(),
                source,
            });
        }
        // One segment is held back for recipient updates, so messages need
        // at least one more.
        if self.max_size != 0 && self.max_size < 2 * size {
            let source = io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "[spool] max_size = {}: must be 0 (unlimited) or at least two segments ({})",
                    self.max_size,
                    2 * size
                ),
            );
            return Err(SpoolError::Io {
                path: self.dir.clone(),
                source,
            });
        }
        Ok(())
    }
}

/// State shared by the spool handle, its writers and its threads.
pub(crate) struct Shared {
    pub(crate) config: SpoolConfig,
    /// Every segment in use (not pooled), by seq. A segment only this table
    /// holds is recyclable: holders are live messages, active writers,
    /// pending syncs and message views.
    segments: RwLock<HashMap<u64, Arc<Segment>>>,
    pub(crate) index: Index,
    pub(crate) pool: Pool,
    pub(crate) next_seq: AtomicU64,
    pub(crate) next_update_seq: AtomicU64,
    pub(crate) bytes_used: AtomicU64,
    pub(crate) syncs: AtomicU64,
    pub(crate) closed: AtomicBool,
    /// Finished messages whose dead mark could not be made durable: their
    /// segments stay in use until restart, when recovery finishes them.
    pinned: Mutex<Vec<LiveMessage>>,
    /// Seqs of the segments writers are appending to: never compacted.
    appending: Mutex<HashSet<u64>>,
    /// Messages compaction moved, old id to new id, so that a reader
    /// holding an old id (a POP3 maildrop, an IMAP view) still finds the
    /// bytes; see `spool::compact`.
    pub(crate) moves: Mutex<HashMap<QueueId, QueueId>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every value behind these locks is consistent between statements.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn register(&self, segment: Arc<Segment>) {
        self.segments
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(segment.seq(), segment);
    }

    /// Removes and returns the segments nothing but the table holds.
    pub(crate) fn unregister_unused(&self) -> Vec<Arc<Segment>> {
        let mut table = self
            .segments
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let unused: Vec<u64> = table
            .iter()
            .filter(|(_, segment)| Arc::strong_count(segment) == 1)
            .map(|(seq, _)| *seq)
            .collect();
        unused.iter().filter_map(|seq| table.remove(seq)).collect()
    }

    pub(crate) fn segments_in_use(&self) -> usize {
        self.segments
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub(crate) fn pin(&self, messages: Vec<LiveMessage>) {
        lock(&self.pinned).extend(messages);
    }

    pub(crate) fn start_appending(&self, seq: u64) {
        lock(&self.appending).insert(seq);
    }

    pub(crate) fn stop_appending(&self, seq: u64) {
        lock(&self.appending).remove(&seq);
    }

    /// Segments in use that no writer appends to any more, with their
    /// sizes; only those whose header is of their current life.
    pub(crate) fn sealed_segments(&self) -> Vec<(u64, u64)> {
        let appending = lock(&self.appending).clone();
        self.segments
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|s| s.life().is_some() && !appending.contains(&s.seq()))
            .map(|s| (s.seq(), s.len()))
            .collect()
    }
}

struct Threads {
    preparer: Option<JoinHandle<()>>,
    syncers: Vec<(Sender<SyncMsg>, JoinHandle<()>)>,
}

/// The durable spool. Shared by all cores as `Arc<Spool>`.
pub struct Spool {
    shared: Arc<Shared>,
    threads: Mutex<Threads>,
    /// Held (flock) while open.
    lock_file: Mutex<Option<File>>,
}

/// A live message as listed by [`Spool::queued`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueuedMessage {
    pub id: QueueId,
    pub envelope: Envelope,
    pub states: Vec<RecipientState>,
    /// Message bytes.
    pub size: u64,
}

/// One message read from the spool (by [`Spool::read`] or
/// [`Spool::scan_readonly`]); its bytes are borrowed from the segment
/// mapping, which the view keeps from being recycled. Serializes without
/// the bytes: everything `tern queue list --json` prints.
#[derive(serde::Serialize)]
pub struct MessageView {
    pub id: QueueId,
    pub envelope: Envelope,
    pub states: Vec<RecipientState>,
    /// Message bytes.
    pub size: u64,
    #[serde(skip)]
    segment: Arc<Segment>,
    #[serde(skip)]
    data: Range<usize>,
}

impl MessageView {
    pub fn data(&self) -> &[u8] {
        self.segment.bytes().get(self.data.clone()).unwrap_or(&[])
    }
}

impl fmt::Debug for MessageView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageView")
            .field("id", &self.id)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// The MESSAGE record of a live message: envelope and the byte range of
/// its data in the segment.
fn message_at(
    segment: &Segment,
    id: &QueueId,
    verify: bool,
) -> Result<(Envelope, Range<usize>), SpoolError> {
    let corrupt = |reason: String| SpoolError::Io {
        path: segment.path().to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, format!("record {id}: {reason}")),
    };
    let start = usize::try_from(id.offset()).map_err(|_| corrupt("offset out of range".into()))?;
    let bytes = segment
        .bytes()
        .get(start..)
        .ok_or_else(|| corrupt("offset past segment end".into()))?;
    let life = segment
        .life()
        .ok_or_else(|| corrupt("segment has no header".into()))?;
    let decoded = if verify {
        decode_record(bytes, life)
    } else {
        decode_verified(bytes, life)
    };
    match decoded.map_err(|e| corrupt(e.to_string()))?.record {
        Record::Message(m) => {
            let data_start = start + m.data_offset as usize;
            Ok((m.envelope, data_start..data_start + m.data.len()))
        }
        Record::RecipientUpdate(_) => Err(corrupt("not a message record".into())),
    }
}

fn lock_dir(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error(&path))?;
    // SAFETY: flock on a valid, owned descriptor; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        let source = if err.kind() == io::ErrorKind::WouldBlock {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                "spool directory is in use by another tern process",
            )
        } else {
            err
        };
        return Err(SpoolError::Io { path, source });
    }
    Ok(file)
}

impl Spool {
    /// Open (create dir if missing), recover, start the preparer thread.
    pub fn open(config: SpoolConfig) -> Result<Arc<Spool>, SpoolError> {
        config.validate()?;
        std::fs::create_dir_all(&config.dir).map_err(io_error(&config.dir))?;
        let lock_file = lock_dir(&config.dir)?;
        let recovered = recovery::recover(&config.dir)?;
        let shared = Arc::new(Shared {
            segments: RwLock::new(
                recovered
                    .segments
                    .into_iter()
                    .map(|s| (s.seq(), s))
                    .collect(),
            ),
            index: Index::new(),
            pool: Pool::new(),
            next_seq: AtomicU64::new(recovered.next_seq),
            next_update_seq: AtomicU64::new(recovered.next_update_seq),
            bytes_used: AtomicU64::new(recovered.bytes_used),
            syncs: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            pinned: Mutex::new(Vec::new()),
            appending: Mutex::new(HashSet::new()),
            moves: Mutex::new(HashMap::new()),
            config,
        });
        for (id, message) in recovered.live {
            shared.index.insert(id, message);
        }
        register_counters();
        publish_gauges(&shared);
        let for_preparer = Arc::clone(&shared);
        let preparer = thread::Builder::new()
            .name("tern-spool-prep".into())
            .spawn(move || run_preparer(for_preparer))
            .map_err(io_error(&shared.config.dir))?;
        Ok(Arc::new(Spool {
            shared,
            threads: Mutex::new(Threads {
                preparer: Some(preparer),
                syncers: Vec::new(),
            }),
            lock_file: Mutex::new(Some(lock_file)),
        }))
    }

    /// A writer for one core (own active segment + own sync thread). `core`
    /// is used in thread names and logs only.
    pub fn writer(self: &Arc<Self>, core: usize) -> Result<SpoolWriter, SpoolError> {
        self.spawn_writer(format!("tern-sync-{core}"), format!("core {core}"))
    }

    /// The compactor's writer: its copies of long-lived mailbox records
    /// fill segments of their own, apart from the cores' fresh mail.
    pub fn compaction_writer(self: &Arc<Self>) -> Result<SpoolWriter, SpoolError> {
        self.spawn_writer("tern-sync-compact".into(), "compactor".into())
    }

    fn spawn_writer(
        self: &Arc<Self>,
        thread: String,
        owner: String,
    ) -> Result<SpoolWriter, SpoolError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(SpoolError::SyncStopped);
        }
        let (tx, rx) = mpsc::channel();
        let shared = Arc::clone(&self.shared);
        let handle = thread::Builder::new()
            .name(thread)
            .spawn(move || sync::run(shared, rx))
            .map_err(io_error(&self.shared.config.dir))?;
        lock(&self.threads).syncers.push((tx.clone(), handle));
        Ok(SpoolWriter::new(Arc::clone(&self.shared), owner, tx))
    }

    /// All live (non-final) messages at this moment, in arrival order.
    pub fn queued(&self) -> Vec<QueuedMessage> {
        let mut out: Vec<QueuedMessage> = self
            .shared
            .index
            .snapshot()
            .into_iter()
            .filter_map(
                |(
                    id,
                    Located {
                        segment, states, ..
                    },
                )| match message_at(&segment, &id, false) {
                    Ok((envelope, data)) => Some(QueuedMessage {
                        id,
                        envelope,
                        states,
                        size: data.len() as u64,
                    }),
                    Err(err) => {
                        tracing::warn!(%id, error = %err, "unreadable queued message");
                        None
                    }
                },
            )
            .collect();
        out.sort_by_key(|m| (m.envelope.received_at_ms, m.id));
        out
    }

    /// Arrival time (ms since the epoch) of the oldest message that still
    /// has a recipient to deliver; `None` when nothing is queued.
    pub fn oldest_queued_ms(&self) -> Option<u64> {
        self.shared.index.oldest_queued_ms()
    }

    /// Read one message by id: envelope, per-recipient states, data
    /// (borrowed from the map, checksum verified).
    pub fn read(&self, id: &QueueId) -> Result<MessageView, SpoolError> {
        let located = self
            .shared
            .index
            .locate(id)
            .ok_or_else(|| SpoolError::NotFound(id.to_string()))?;
        self.view(*id, located)
    }

    /// The view of a located message (its record verified).
    pub(crate) fn view(&self, id: QueueId, located: Located) -> Result<MessageView, SpoolError> {
        let Located { segment, states } = located;
        let (envelope, data) = message_at(&segment, &id, true)?;
        Ok(MessageView {
            id,
            envelope,
            states,
            size: data.len() as u64,
            segment,
            data,
        })
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Read-only scan for offline tools; never writes. Arrival order.
    pub fn scan_readonly(dir: &Path) -> Result<Vec<MessageView>, SpoolError> {
        let mut out: Vec<MessageView> = recovery::scan_readonly(dir)?
            .into_iter()
            .filter_map(|found| {
                let segment = found.message.segment;
                let states = found
                    .message
                    .states
                    .into_iter()
                    .map(|(state, _)| state)
                    .collect();
                match message_at(&segment, &found.id, true) {
                    Ok((envelope, data)) => Some(MessageView {
                        id: found.id,
                        envelope,
                        states,
                        size: data.len() as u64,
                        segment,
                        data,
                    }),
                    Err(err) => {
                        tracing::warn!(id = %found.id, error = %err, "unreadable message skipped");
                        None
                    }
                }
            })
            .collect();
        out.sort_by_key(|m| (m.envelope.received_at_ms, m.id));
        Ok(out)
    }

    /// `[spool] segment_size`.
    pub fn segment_size(&self) -> u64 {
        self.shared.config.segment_size
    }

    /// fdatasyncs issued so far (group commit makes this far smaller than
    /// the number of records).
    pub fn sync_count(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    /// Shut down: finish pending syncs, stop threads, release the
    /// directory lock. Writers fail with `SyncStopped` afterwards.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let mut threads = lock(&self.threads);
        for (tx, handle) in threads.syncers.drain(..) {
            // Already gone when its writer was dropped; either way join.
            let _ = tx.send(SyncMsg::Stop);
            let _ = handle.join();
        }
        self.shared.pool.stop();
        if let Some(preparer) = threads.preparer.take() {
            let _ = preparer.join();
        }
        lock(&self.lock_file).take();
    }
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.shared.config.dir)
            .finish_non_exhaustive()
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.close();
    }
}
