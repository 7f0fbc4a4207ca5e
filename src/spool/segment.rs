//! One segment file: naming, zero-written creation, the segment header
//! (seq and salt of the current life), positioned writes, syncs and the
//! read-only mapping that readers borrow message bytes from.
//!
//! Segment header, 32 bytes at offset 0 (little-endian): magic `TRNS`,
//! version (1), 3 zero bytes, seq (u64), salt (u64), CRC32C of bytes 0..24
//! (u32), 4 zero bytes. Records follow from offset 32.
//!
//! This module only performs file operations on one segment; it must never
//! decide which segment to use, recycle or delete (the pool and the spool
//! do), and never truncates a file (a mapped file that shrinks would fault
//! readers).

use std::collections::hash_map::RandomState;
use std::fs::{self, File, OpenOptions};
use std::hash::BuildHasher;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use memmap2::Mmap;

use super::record::{SegmentLife, STATUS_DEAD, STATUS_OFFSET};
use super::SpoolError;

const PREFIX: &str = "seg-";
const SUFFIX: &str = ".tsg";
const TEMP_SUFFIX: &str = ".tmp";
const BAD_SUFFIX: &str = ".bad";
/// Zeros are written in chunks of this size when preallocating and when
/// wiping a discarded tail.
const ZERO_CHUNK: usize = 1 << 20;
static ZEROS: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];

const HEADER_MAGIC: [u8; 4] = *b"TRNS";
const HEADER_VERSION: u8 = 1;
/// Bytes of the segment header; the first record starts here.
pub(crate) const FIRST_RECORD: u64 = 32;

/// What a file name in the spool directory says about the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpoolFile {
    /// `seg-<seq>.tsg`: a segment.
    Segment(u64),
    /// `seg-<seq>.tmp`: a segment being preallocated when the process died.
    Temp(u64),
    /// `seg-<seq>.tsg.bad`: a file set aside by recovery.
    Quarantined(u64),
}

impl SpoolFile {
    pub(crate) fn classify(name: &str) -> Option<SpoolFile> {
        let rest = name.strip_prefix(PREFIX)?;
        let hex = rest.get(..16)?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let seq = u64::from_str_radix(hex, 16).ok()?;
        match rest.get(16..)? {
            SUFFIX => Some(SpoolFile::Segment(seq)),
            TEMP_SUFFIX => Some(SpoolFile::Temp(seq)),
            s if s == format!("{SUFFIX}{BAD_SUFFIX}") => Some(SpoolFile::Quarantined(seq)),
            _ => None,
        }
    }

    pub(crate) fn seq(&self) -> u64 {
        match *self {
            SpoolFile::Segment(seq) | SpoolFile::Temp(seq) | SpoolFile::Quarantined(seq) => seq,
        }
    }
}

/// What the first bytes of a segment file say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    /// A header of this segment's current life.
    Valid(SegmentLife),
    /// All zeros: never given a life, holds no records.
    Blank,
    /// A sound header naming another seq: the file was being recycled
    /// (header rewritten, rename lost), so it holds nothing live.
    Stale,
    /// Not a tern segment header (or a damaged one): recovery sets the
    /// file aside rather than guess.
    Foreign,
}

fn header_bytes(life: SegmentLife) -> [u8; FIRST_RECORD as usize] {
    let mut out = [0u8; FIRST_RECORD as usize];
    out[..4].copy_from_slice(&HEADER_MAGIC);
    out[4] = HEADER_VERSION;
    out[8..16].copy_from_slice(&life.seq.to_le_bytes());
    out[16..24].copy_from_slice(&life.salt.to_le_bytes());
    let crc = crc32c::crc32c(&out[..24]);
    out[24..28].copy_from_slice(&crc.to_le_bytes());
    out
}

fn read_header(bytes: &[u8], seq: u64) -> Header {
    let Some(head) = bytes.get(..FIRST_RECORD as usize) else {
        return Header::Foreign;
    };
    if head.iter().all(|&b| b == 0) {
        return Header::Blank;
    }
    let field = |range: std::ops::Range<usize>| head.get(range).unwrap_or(&[]);
    let u64_at = |at: usize| {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(field(at..at + 8));
        u64::from_le_bytes(raw)
    };
    let mut stored = [0u8; 4];
    stored.copy_from_slice(field(24..28));
    let sound = field(0..4) == HEADER_MAGIC
        && field(4..5) == [HEADER_VERSION]
        && field(5..8) == [0, 0, 0]
        && field(28..32) == [0, 0, 0, 0]
        && crc32c::crc32c(field(0..24)) == u32::from_le_bytes(stored);
    if !sound {
        return Header::Foreign;
    }
    let found = u64_at(8);
    if found != seq {
        return Header::Stale;
    }
    Header::Valid(SegmentLife {
        seq,
        salt: u64_at(16),
    })
}

/// An unpredictable salt for a new segment life: SipHash under the
/// process's random keys.
fn fresh_salt(seq: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    RandomState::new().hash_one((seq, now))
}

pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{seq:016X}{SUFFIX}"))
}

fn temp_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{seq:016X}{TEMP_SUFFIX}"))
}

/// Makes renames and creations in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Renames a file recovery cannot use to `<name>.bad`, keeping it for a
/// human to look at.
pub(crate) fn quarantine(path: &Path) -> io::Result<PathBuf> {
    let mut name = path.as_os_str().to_owned();
    name.push(BAD_SUFFIX);
    let bad = PathBuf::from(name);
    fs::rename(path, &bad)?;
    Ok(bad)
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An open, mapped segment file.
pub(crate) struct Segment {
    seq: u64,
    /// Seq and salt of the current life; `None` when the header is not
    /// one of this seq (the segment then holds no records).
    life: Option<SegmentLife>,
    path: PathBuf,
    file: File,
    map: Mmap,
    /// A write or sync failed: after a failed fdatasync the kernel may have
    /// dropped dirty pages, so nothing more is appended here.
    failed: AtomicBool,
}

impl Segment {
    /// Opens an existing segment file, writable or not.
    pub(crate) fn open(path: PathBuf, seq: u64, writable: bool) -> io::Result<Segment> {
        let file = OpenOptions::new().read(true).write(writable).open(&path)?;
        Segment::from_file(file, path, seq)
    }

    /// Creates segment `seq` of `size` bytes in `dir` by writing zeros (so
    /// later fdatasyncs only flush data) and its header, then makes it
    /// durable under its final name.
    pub(crate) fn create(dir: &Path, seq: u64, size: u64) -> io::Result<Segment> {
        let temp = temp_path(dir, seq);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)?;
        let life = SegmentLife {
            seq,
            salt: fresh_salt(seq),
        };
        let filled = zero_fill(&file, 0, size)
            .and_then(|()| file.write_all_at(&header_bytes(life), 0))
            .and_then(|()| file.sync_all());
        if let Err(err) = filled {
            // Best effort: a leftover temp file is removed at next start.
            let _ = fs::remove_file(&temp);
            return Err(err);
        }
        let path = segment_path(dir, seq);
        fs::rename(&temp, &path)?;
        sync_dir(dir)?;
        Segment::from_file(file, path, seq)
    }

    fn from_file(file: File, path: PathBuf, seq: u64) -> io::Result<Segment> {
        // SAFETY: tern never truncates or shrinks a segment file, so the
        // mapping stays backed for its whole life; bytes that change under
        // it (appends at other offsets) are only read after they were
        // written and synced. A foreign process truncating the file is
        // outside what a mapping can defend against.
        let map = unsafe { Mmap::map(&file)? };
        let life = match read_header(&map, seq) {
            Header::Valid(life) => Some(life),
            Header::Blank | Header::Stale | Header::Foreign => None,
        };
        Ok(Segment {
            seq,
            life,
            path,
            file,
            map,
            failed: AtomicBool::new(false),
        })
    }

    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    pub(crate) fn life(&self) -> Option<SegmentLife> {
        self.life
    }

    pub(crate) fn header(&self) -> Header {
        read_header(&self.map, self.seq)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// The whole file through the shared mapping.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }

    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), SpoolError> {
        self.file.write_all_at(buf, offset).map_err(|e| {
            self.failed.store(true, Ordering::Relaxed);
            io_error(&self.path)(e)
        })
    }

    /// fdatasync: the file's size never changes, so data is all there is.
    pub(crate) fn sync(&self) -> Result<(), SpoolError> {
        self.file.sync_data().map_err(|e| {
            self.failed.store(true, Ordering::Relaxed);
            io_error(&self.path)(e)
        })
    }

    pub(crate) fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Marks the segment as failed, as a failed write or sync would.
    #[cfg(test)]
    pub(crate) fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }

    /// Rewrites the status byte of the MESSAGE record at `record_offset`
    /// to dead (not synced here).
    pub(crate) fn mark_dead(&self, record_offset: u64) -> Result<(), SpoolError> {
        self.write_at(&[STATUS_DEAD], record_offset + STATUS_OFFSET)
    }

    /// Writes zeros over every non-zero chunk of `from..len` so discarded
    /// bytes can never be read as records again. Returns the bytes written.
    pub(crate) fn wipe_from(&self, from: u64) -> Result<u64, SpoolError> {
        let mut written = 0;
        let mut at = from;
        while at < self.len() {
            let end = (at + ZERO_CHUNK as u64).min(self.len());
            let chunk = self.map.get(at as usize..end as usize).unwrap_or(&[]);
            if chunk.iter().any(|&b| b != 0) {
                zero_fill(&self.file, at, end - at).map_err(io_error(&self.path))?;
                written += end - at;
            }
            at = end;
        }
        Ok(written)
    }

    /// Starts the file's next life as segment `seq`: a new header (new seq,
    /// new salt) replaces the old one, then the file is renamed. The caller
    /// syncs file and directory. Old records stay on disk but carry the old
    /// seq and salt, so they never validate in the new life.
    pub(crate) fn renumber(self, dir: &Path, seq: u64) -> Result<Segment, (Segment, SpoolError)> {
        let life = SegmentLife {
            seq,
            salt: fresh_salt(seq),
        };
        if let Err(err) = self.write_at(&header_bytes(life), 0) {
            return Err((self, err));
        }
        let path = segment_path(dir, seq);
        if let Err(err) = fs::rename(&self.path, &path) {
            let err = io_error(&self.path)(err);
            return Err((self, err));
        }
        Ok(Segment {
            seq,
            life: Some(life),
            path,
            file: self.file,
            map: self.map,
            failed: AtomicBool::new(false),
        })
    }
}

fn zero_fill(file: &File, from: u64, len: u64) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZERO_CHUNK as u64);
        // n <= ZERO_CHUNK, so the slice is in bounds.
        file.write_all_at(&ZEROS[..n as usize], from + done)?;
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_spool_file_names() {
        assert_eq!(
            SpoolFile::classify("seg-00000000000000FF.tsg"),
            Some(SpoolFile::Segment(255))
        );
        assert_eq!(
            SpoolFile::classify("seg-00000000000000ff.tmp"),
            Some(SpoolFile::Temp(255))
        );
        assert_eq!(
            SpoolFile::classify("seg-0000000000000001.tsg.bad"),
            Some(SpoolFile::Quarantined(1))
        );
        for other in [
            "lock",
            "seg-1.tsg",
            "seg-000000000000000G.tsg",
            "seg-0000000000000001.tsgx",
            "ségment",
        ] {
            assert_eq!(SpoolFile::classify(other), None, "{other}");
        }
        let path = segment_path(Path::new("/x"), 10);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(SpoolFile::classify(name), Some(SpoolFile::Segment(10)));
    }

    #[test]
    fn header_states() {
        let life = SegmentLife { seq: 5, salt: 99 };
        let bytes = header_bytes(life);
        assert_eq!(read_header(&bytes, 5), Header::Valid(life));
        assert_eq!(read_header(&bytes, 6), Header::Stale);
        assert_eq!(read_header(&[0; 64], 5), Header::Blank);
        assert_eq!(read_header(&bytes[..31], 5), Header::Foreign);
        for at in 0..bytes.len() {
            let mut damaged = bytes;
            damaged[at] ^= 0x10;
            assert_eq!(read_header(&damaged, 5), Header::Foreign, "byte {at}");
        }
    }

    #[test]
    fn create_writes_zeros_and_a_header_and_renumber_starts_a_new_life() {
        let dir = tempfile::tempdir().unwrap();
        let segment = Segment::create(dir.path(), 3, 8192).unwrap();
        assert_eq!(segment.len(), 8192);
        let first = segment.life().unwrap();
        assert_eq!(first.seq, 3);
        assert_eq!(segment.header(), Header::Valid(first));
        assert!(segment.bytes()[FIRST_RECORD as usize..]
            .iter()
            .all(|&b| b == 0));
        segment.write_at(b"abcdefgh", 4096).unwrap();
        segment.sync().unwrap();
        assert_eq!(&segment.bytes()[4096..4104], b"abcdefgh");
        let renumbered = segment.renumber(dir.path(), 4).map_err(|(_, e)| e).unwrap();
        let second = renumbered.life().unwrap();
        assert_eq!(second.seq, 4);
        assert_ne!(second.salt, first.salt);
        assert!(renumbered.path().exists());
        assert!(!segment_path(dir.path(), 3).exists());
        let reopened = Segment::open(segment_path(dir.path(), 4), 4, false).unwrap();
        assert_eq!(reopened.life(), Some(second));
        assert_eq!(
            renumbered.wipe_from(FIRST_RECORD).unwrap(),
            8192 - FIRST_RECORD
        );
        assert!(renumbered.bytes()[FIRST_RECORD as usize..]
            .iter()
            .all(|&b| b == 0));
        assert_eq!(renumbered.wipe_from(FIRST_RECORD).unwrap(), 0);
    }

    #[test]
    fn create_refuses_an_existing_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(temp_path(dir.path(), 1), b"x").unwrap();
        assert!(Segment::create(dir.path(), 1, 4096).is_err());
    }
}
