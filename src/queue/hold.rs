//! The hold list: the queue IDs `tern queue hold` put on hold, one per
//! line in `<spool dir>/hold`, so that a hold survives a restart. The
//! spool records stay as they are; at start the server pins the listed
//! messages before it schedules them, and drops IDs no longer queued.
//!
//! It must never report a change before the new list is durable: the file
//! is replaced whole (write, fsync, rename, fsync of the directory), so a
//! crash leaves either the old list or the new one. It never reads or
//! writes the spool's segments.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::spool::QueueId;

/// File name of the hold list inside the spool directory.
pub const HOLD_FILE: &str = "hold";
/// Where the next list is written before it replaces the current one.
const HOLD_FILE_NEXT: &str = "hold.next";

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} line {line}: {message}")]
    Parse {
        path: String,
        line: usize,
        message: String,
    },
}

/// The operator's held messages, as last made durable.
#[derive(Debug)]
pub struct HoldList {
    dir: PathBuf,
    ids: BTreeSet<QueueId>,
}

impl HoldList {
    /// Read the list in `spool_dir` (none there: an empty list).
    pub fn load(spool_dir: &Path) -> Result<HoldList, HoldError> {
        let path = spool_dir.join(HOLD_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(HoldError::Io {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        let mut ids = BTreeSet::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let id = line.parse::<QueueId>().map_err(|e| HoldError::Parse {
                path: path.display().to_string(),
                line: n + 1,
                message: e.to_string(),
            })?;
            ids.insert(id);
        }
        Ok(HoldList {
            dir: spool_dir.to_path_buf(),
            ids,
        })
    }

    pub fn ids(&self) -> &BTreeSet<QueueId> {
        &self.ids
    }

    pub fn contains(&self, id: &QueueId) -> bool {
        self.ids.contains(id)
    }

    /// Make `ids` the list, durably; the list in memory changes only once
    /// the file does.
    pub fn replace(&mut self, ids: BTreeSet<QueueId>) -> Result<(), HoldError> {
        if ids == self.ids {
            return Ok(());
        }
        let next = self.dir.join(HOLD_FILE_NEXT);
        let path = self.dir.join(HOLD_FILE);
        let io_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| HoldError::Io { path, source }
        };
        let mut text = String::with_capacity(ids.len() * 17);
        for id in &ids {
            text.push_str(&id.to_string());
            text.push('\n');
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&next)
            .map_err(io_err(&next))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_err(&next))?;
        std::fs::rename(&next, &path).map_err(io_err(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        self.ids = ids;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> QueueId {
        QueueId::new(1, 64 * n).unwrap()
    }

    #[test]
    fn a_missing_file_is_an_empty_list() {
        let dir = tempfile::tempdir().unwrap();
        assert!(HoldList::load(dir.path()).unwrap().ids().is_empty());
    }

    #[test]
    fn replaced_lists_are_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut list = HoldList::load(dir.path()).unwrap();
        list.replace([id(1), id(2)].into()).unwrap();
        assert!(list.contains(&id(2)));
        let again = HoldList::load(dir.path()).unwrap();
        assert_eq!(again.ids(), &BTreeSet::from([id(1), id(2)]));
        list.replace(BTreeSet::new()).unwrap();
        assert!(HoldList::load(dir.path()).unwrap().ids().is_empty());
        assert!(!dir.path().join(HOLD_FILE_NEXT).exists());
    }

    #[test]
    fn a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(HOLD_FILE),
            format!("{}\n\nnot-an-id\n", id(1)),
        )
        .unwrap();
        let err = HoldList::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("not-an-id"), "{err}");
    }

    #[test]
    fn a_failed_write_keeps_the_old_list() {
        let dir = tempfile::tempdir().unwrap();
        let mut list = HoldList::load(dir.path()).unwrap();
        list.replace([id(1)].into()).unwrap();
        // A directory where the next file should go: the write fails.
        std::fs::create_dir(dir.path().join(HOLD_FILE_NEXT)).unwrap();
        assert!(list.replace([id(1), id(2)].into()).is_err());
        assert_eq!(list.ids(), &BTreeSet::from([id(1)]));
        assert_eq!(
            HoldList::load(dir.path()).unwrap().ids(),
            &BTreeSet::from([id(1)])
        );
    }
}
