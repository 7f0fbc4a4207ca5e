//! One user's journal file: opening and recovering it (the first bad
//! record ends the file: the torn tail is logged, cut off and the cut
//! synced), appending synced batches, and compaction (a snapshot written
//! to a temporary file, synced, renamed over the journal, the directory
//! synced).
//!
//! This module only moves bytes between memory and one file; it must
//! never interpret operations (the state does), never report an append
//! done before `fdatasync` returned success, and never panic on any file
//! content.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::error::io_error;
use super::names::{journal_file, journal_temp_file};
use super::record::{decode_record, Op, FILE_MAGIC};
use super::MailboxError;

/// Journals hold a user's private mail metadata: owner-only.
const JOURNAL_MODE: u32 = 0o600;
/// Compaction runs once the journal is this many times the size of a
/// fresh snapshot of the live state.
const COMPACT_RATIO: u64 = 4;
/// Journals below this size are never compacted: rewriting them would
/// cost more syncs than the bytes they hold.
const COMPACT_MIN_BYTES: u64 = 64 << 10;

pub(crate) struct Journal {
    dir: PathBuf,
    path: PathBuf,
    temp: PathBuf,
    file: File,
    /// Bytes of valid header and records: where the next append goes.
    len: u64,
    /// Size of the last snapshot written or measured.
    base: u64,
}

/// What opening a journal found.
pub(crate) struct Opened {
    pub(crate) journal: Journal,
    /// The operations of each valid record, in file order.
    pub(crate) records: Vec<Vec<Op>>,
}

fn sync_dir(dir: &Path) -> Result<(), MailboxError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

impl Journal {
    /// Opens (creating if needed) the journal of `user` in `dir` and reads
    /// its records, cutting off a torn or corrupt tail.
    pub(crate) fn open(dir: &Path, user: &str) -> Result<Opened, MailboxError> {
        let path = dir.join(journal_file(user));
        let temp = dir.join(journal_temp_file(user));
        // A compaction that did not reach its rename left this behind;
        // the journal itself is still whole.
        match fs::remove_file(&temp) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                return Err(io_error(&temp)(err));
            }
            _ => {}
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(JOURNAL_MODE)
            .open(&path)
            .map_err(io_error(&path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_error(&path))?;
        let mut journal = Journal {
            dir: dir.to_path_buf(),
            path,
            temp,
            file,
            len: bytes.len() as u64,
            base: 0,
        };
        if bytes.len() < FILE_MAGIC.len() && FILE_MAGIC.starts_with(&bytes) {
            // New, or its creation was cut short before the header was
            // synced: nothing was ever acknowledged from it.
            journal.write_header()?;
            return Ok(Opened {
                journal,
                records: Vec::new(),
            });
        }
        if !bytes.starts_with(&FILE_MAGIC) {
            return Err(MailboxError::Corrupt {
                path: journal.path,
                reason: "not a tern mailbox journal (bad magic)".into(),
            });
        }
        let mut records = Vec::new();
        let mut offset = FILE_MAGIC.len();
        loop {
            let rest = bytes.get(offset..).unwrap_or(&[]);
            match decode_record(rest) {
                Ok(Some((ops, len))) => {
                    records.push(ops);
                    offset += len;
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(
                        path = %journal.path.display(),
                        offset,
                        dropped = rest.len(),
                        %error,
                        "mailbox journal has a torn or corrupt tail; cutting it off"
                    );
                    metrics::counter!("tern_mailbox_torn_tails_total").increment(1);
                    journal.cut(offset as u64)?;
                    break;
                }
            }
        }
        Ok(Opened { journal, records })
    }

    fn write_header(&mut self) -> Result<(), MailboxError> {
        self.file.set_len(0).map_err(io_error(&self.path))?;
        self.file
            .write_all_at(&FILE_MAGIC, 0)
            .and_then(|()| self.file.sync_all())
            .map_err(io_error(&self.path))?;
        sync_dir(&self.dir)?;
        self.len = FILE_MAGIC.len() as u64;
        Ok(())
    }

    fn cut(&mut self, len: u64) -> Result<(), MailboxError> {
        self.file
            .set_len(len)
            .and_then(|()| self.file.sync_all())
            .map_err(io_error(&self.path))?;
        self.len = len;
        Ok(())
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `bytes` (whole records) and makes them durable.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> Result<(), MailboxError> {
        self.file
            .write_all_at(bytes, self.len)
            .and_then(|()| self.file.sync_data())
            .map_err(io_error(&self.path))?;
        metrics::counter!("tern_mailbox_journal_syncs_total").increment(1);
        metrics::counter!("tern_mailbox_journal_written_bytes_total").increment(bytes.len() as u64);
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Whether the journal, once `pending` more bytes are in, is worth
    /// measuring against a fresh snapshot.
    pub(crate) fn may_compact(&self, pending: usize) -> bool {
        let total = self.len + pending as u64;
        total >= COMPACT_MIN_BYTES && total > self.base.saturating_mul(COMPACT_RATIO)
    }

    /// Whether a snapshot of `snapshot` bytes should replace a journal of
    /// `total` bytes; remembers the size so the next check waits for the
    /// journal to grow again.
    pub(crate) fn compaction_pays(&mut self, total: u64, snapshot: usize) -> bool {
        self.base = snapshot as u64 + FILE_MAGIC.len() as u64;
        total > self.base.saturating_mul(COMPACT_RATIO)
    }

    /// Replaces the journal by `snapshot` (records rebuilding the whole
    /// state): temp file, sync, rename, directory sync.
    pub(crate) fn replace(&mut self, snapshot: &[u8]) -> Result<(), MailboxError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(JOURNAL_MODE)
            .open(&self.temp)
            .map_err(io_error(&self.temp))?;
        file.write_all_at(&FILE_MAGIC, 0)
            .and_then(|()| file.write_all_at(snapshot, FILE_MAGIC.len() as u64))
            .and_then(|()| file.sync_all())
            .map_err(io_error(&self.temp))?;
        fs::rename(&self.temp, &self.path).map_err(io_error(&self.path))?;
        sync_dir(&self.dir)?;
        metrics::counter!("tern_mailbox_compactions_total").increment(1);
        metrics::counter!("tern_mailbox_journal_written_bytes_total")
            .increment(snapshot.len() as u64);
        self.file = file;
        self.len = (FILE_MAGIC.len() + snapshot.len()) as u64;
        self.base = self.len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::encode_record;
    use super::*;

    fn record(id: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        encode_record(&[Op::DeleteFolder { id }], &mut bytes).unwrap();
        bytes
    }

    #[test]
    fn appended_records_come_back_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut opened = Journal::open(dir.path(), "u").unwrap();
        assert!(opened.records.is_empty());
        opened.journal.append(&record(1)).unwrap();
        opened.journal.append(&record(2)).unwrap();
        let whole = opened.journal.len();
        let path = opened.journal.path().to_path_buf();
        let third = record(3);
        opened
            .journal
            .file
            .write_all_at(&third[..third.len() - 1], whole)
            .unwrap();
        drop(opened);

        let opened = Journal::open(dir.path(), "u").unwrap();
        assert_eq!(
            opened.records,
            vec![
                vec![Op::DeleteFolder { id: 1 }],
                vec![Op::DeleteFolder { id: 2 }]
            ]
        );
        assert_eq!(fs::metadata(&path).unwrap().len(), whole);
        assert_eq!(opened.journal.len(), whole);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "journal readable by others: {mode:o}");
    }

    #[test]
    fn a_flipped_byte_ends_the_file_there() {
        let dir = tempfile::tempdir().unwrap();
        let mut opened = Journal::open(dir.path(), "u").unwrap();
        opened.journal.append(&record(1)).unwrap();
        let first_end = opened.journal.len();
        opened.journal.append(&record(2)).unwrap();
        opened.journal.append(&record(3)).unwrap();
        opened
            .journal
            .file
            .write_all_at(&[0xEE], first_end + 9)
            .unwrap();
        drop(opened);
        let opened = Journal::open(dir.path(), "u").unwrap();
        assert_eq!(opened.records.len(), 1);
        assert_eq!(opened.journal.len(), first_end);
    }

    #[test]
    fn a_foreign_file_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(journal_file("u"));
        fs::write(&path, b"hello world, not a journal").unwrap();
        assert!(matches!(
            Journal::open(dir.path(), "u"),
            Err(MailboxError::Corrupt { .. })
        ));
        assert_eq!(fs::read(&path).unwrap(), b"hello world, not a journal");
    }

    #[test]
    fn replace_swaps_in_the_snapshot_and_drops_a_stale_temp() {
        let dir = tempfile::tempdir().unwrap();
        let mut opened = Journal::open(dir.path(), "u").unwrap();
        for id in 0..10 {
            opened.journal.append(&record(id)).unwrap();
        }
        opened.journal.replace(&record(42)).unwrap();
        opened.journal.append(&record(43)).unwrap();
        drop(opened);
        fs::write(dir.path().join(journal_temp_file("u")), b"junk").unwrap();
        let opened = Journal::open(dir.path(), "u").unwrap();
        assert_eq!(
            opened.records,
            vec![
                vec![Op::DeleteFolder { id: 42 }],
                vec![Op::DeleteFolder { id: 43 }]
            ]
        );
        assert!(!dir.path().join(journal_temp_file("u")).exists());
    }

    #[test]
    fn compaction_waits_for_size_and_ratio() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path(), "u").unwrap().journal;
        assert!(!journal.may_compact(1000));
        assert!(journal.may_compact(COMPACT_MIN_BYTES as usize));
        assert!(!journal.compaction_pays(COMPACT_MIN_BYTES, COMPACT_MIN_BYTES as usize / 2));
        assert!(!journal.may_compact(COMPACT_MIN_BYTES as usize));
        assert!(journal.compaction_pays(COMPACT_MIN_BYTES * 4, 1000));
    }
}
