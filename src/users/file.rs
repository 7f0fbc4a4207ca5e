//! Reading and writing the users file: TOML in, checked `Users` out; `Users`
//! in, an atomically replaced mode-0600 file out. Must never leave a half
//! written users file behind, nor accept a file with one bad entry.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{User, Users, UsersError};

/// Largest users file read: a million users is far beyond what one file
/// should carry, and a bound keeps a wrong path (a disk image, /dev/zero)
/// from eating memory.
const FILE_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Users file permissions: the hashes are secrets worth brute-forcing.
const FILE_MODE: u32 = 0o600;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileImage {
    #[serde(default, rename = "user")]
    users: Vec<FileEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    name: String,
    password: String,
    #[serde(default)]
    addresses: Vec<String>,
}

/// What identifies one version of the file: a rename gives a new inode, an
/// edit in place a new size or modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileStamp {
    fn of(metadata: &fs::Metadata) -> FileStamp {
        FileStamp {
            dev: metadata.dev(),
            ino: metadata.ino(),
            size: metadata.size(),
            mtime: metadata.mtime(),
            mtime_nsec: metadata.mtime_nsec(),
        }
    }

    /// The stamp of the file at `path` now; `None` when there is no file.
    pub(super) fn current(path: &Path) -> Result<Option<FileStamp>, UsersError> {
        match fs::metadata(path) {
            Ok(metadata) => Ok(Some(FileStamp::of(&metadata))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(path, e)),
        }
    }
}

impl Users {
    /// Reads and checks the users file. A missing file means no users; a
    /// file that does not parse, or any entry with a bad name, address or
    /// hash, or a login used twice, is an error naming the file and entry.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        load_stamped(path).map(|(users, _)| users)
    }

    /// Writes the users to `path` atomically: a temporary file in the same
    /// folder (mode 0600), fsync, rename over `path`, fsync of the folder.
    /// Creates the folder when it does not exist.
    pub fn save(&self, path: &Path) -> Result<(), UsersError> {
        let image = FileImage {
            users: self
                .users
                .iter()
                .map(|user| FileEntry {
                    name: user.name.clone(),
                    password: user.password_hash.clone(),
                    addresses: user.addresses.clone(),
                })
                .collect(),
        };
        let body = toml::to_string(&image).map_err(|e| UsersError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let text = format!(
            "# tern users file: edit with `tern user`, which rewrites it whole\n\
             # (comments are not kept). Passwords are argon2id PHC strings.\n\n{body}"
        );
        let dir = parent_dir(path);
        fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        let temp = temp_path(path);
        let written = write_synced(&temp, text.as_bytes())
            .and_then(|()| fs::rename(&temp, path))
            .map_err(|e| io_error(path, e));
        if written.is_err() {
            // Best effort: the temp file is ours and useless now; the error
            // that matters is the one returned.
            let _ = fs::remove_file(&temp);
        }
        written?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error(&dir, e))
    }

    /// Loads the file at `path`, applies `change`, and saves the result,
    /// holding an exclusive lock (`<file>.lock`) throughout so that two
    /// `tern user` commands run at once cannot lose either's edit. Nothing
    /// is written when `change` fails.
    pub fn edit<T>(
        path: &Path,
        change: impl FnOnce(&mut Users) -> Result<T, UsersError>,
    ) -> Result<T, UsersError> {
        let dir = parent_dir(path);
        fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        let lock_path = sibling(path, ".lock", "");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(FILE_MODE)
            .open(&lock_path)
            .map_err(|e| io_error(&lock_path, e))?;
        lock_exclusive(&lock).map_err(|e| io_error(&lock_path, e))?;
        let mut users = Users::load(path)?;
        let result = change(&mut users)?;
        users.save(path)?;
        // The lock is released when `lock` is dropped here.
        Ok(result)
    }
}

/// Reads the file and returns the users with the stamp of the very file
/// read (taken from the open descriptor, so a rename racing the read at
/// worst causes one more reload later).
pub(super) fn load_stamped(path: &Path) -> Result<(Users, Option<FileStamp>), UsersError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Users::new(), None)),
        Err(e) => return Err(io_error(path, e)),
    };
    let metadata = file.metadata().map_err(|e| io_error(path, e))?;
    if metadata.len() > FILE_MAX_BYTES {
        return Err(UsersError::Syntax {
            path: path.to_owned(),
            message: format!("larger than {FILE_MAX_BYTES} bytes"),
        });
    }
    let mut text = String::new();
    file.take(FILE_MAX_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| io_error(path, e))?;
    Ok((parse(path, &text)?, Some(FileStamp::of(&metadata))))
}

fn parse(path: &Path, text: &str) -> Result<Users, UsersError> {
    let image: FileImage = toml::from_str(text).map_err(|e| UsersError::Syntax {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut users = Users::new();
    for (index, entry) in image.users.into_iter().enumerate() {
        let name = entry.name.clone();
        users
            .push_stored(User {
                name: entry.name,
                password_hash: entry.password,
                addresses: entry.addresses,
            })
            .map_err(|problem| UsersError::Entry {
                path: path.to_owned(),
                entry: index + 1,
                name,
                problem: Box::new(problem),
            })?;
    }
    Ok(users)
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn lock_exclusive(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock on a descriptor this function borrows; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// The folder holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// A temporary name next to `path`, unique per process.
fn temp_path(path: &Path) -> PathBuf {
    sibling(path, &format!(".tmp-{}", std::process::id()), ".")
}

/// `<dir>/<prefix><file name><suffix>`.
fn sibling(path: &Path, suffix: &str, prefix: &str) -> PathBuf {
    let mut name = std::ffi::OsString::from(prefix);
    name.push(path.file_name().unwrap_or(path.as_os_str()));
    name.push(suffix);
    parent_dir(path).join(name)
}

fn io_error(path: &Path, error: io::Error) -> UsersError {
    UsersError::Io {
        path: path.to_owned(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A valid stored hash (of a password nobody has).
    const HASH: &str = "$argon2id$v=19$m=8,t=1,p=1$dGVybi1kdW1teS1zYWx0IQ$XfpIIOzcwiFA0qozKKgGk2Swk3YYBWYIBwfaDZ7dq54";

    fn two_users() -> Users {
        let mut users = Users::new();
        users
            .add("alice", b"alice pw", &["alice@localhost".to_owned()])
            .unwrap();
        users.add("bob@localhost", b"bob pw", &[]).unwrap();
        users
    }

    #[test]
    fn a_missing_file_is_no_users() {
        let dir = tempfile::tempdir().unwrap();
        let users = Users::load(&dir.path().join("users.toml")).unwrap();
        assert!(users.is_empty());
    }

    #[test]
    fn save_then_load_gives_the_same_users() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("var").join("users.toml");
        two_users().save(&path).unwrap();
        let loaded = Users::load(&path).unwrap();
        assert_eq!(loaded.len(), 2);
        assert!(loaded.verify("alice@localhost", b"alice pw").is_some());
        assert!(loaded.verify("bob@localhost", b"bob pw").is_some());
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("alice pw"), "{text}");
        assert!(text.contains("[[user]]"), "{text}");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["users.toml"], "no temporary file is left behind");
    }

    #[test]
    fn a_file_that_does_not_parse_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        fs::write(&path, "[[user]\nname = 1\n").unwrap();
        let e = Users::load(&path).unwrap_err();
        assert!(matches!(e, UsersError::Syntax { .. }), "{e}");
        assert!(e.to_string().contains("users.toml"), "{e}");
        fs::write(
            &path,
            "[[user]]\nname = \"a\"\npassword = \"x\"\nalias = []\n",
        )
        .unwrap();
        let e = Users::load(&path).unwrap_err().to_string();
        assert!(e.contains("alias"), "unknown keys are refused: {e}");
    }

    #[test]
    fn a_bad_entry_is_named_by_file_position_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        two_users().save(&path).unwrap();
        let good = fs::read_to_string(&path).unwrap();
        let cases = [
            ("name = \"carol\"\npassword = \"secret\"\n", "PHC"),
            (
                "name = \"ca rol\"\npassword = \"{HASH}\"\n",
                "visible ASCII",
            ),
            (
                "name = \"ALICE\"\npassword = \"{HASH}\"\n",
                "taken by user alice",
            ),
            (
                "name = \"carol\"\npassword = \"{HASH}\"\naddresses = [\"Alice@localhost\"]\n",
                "belongs to user alice",
            ),
            (
                "name = \"carol\"\npassword = \"{HASH}\"\naddresses = [\"carol\"]\n",
                "local-part@domain",
            ),
        ];
        for (entry, reason) in cases {
            let entry = entry.replace("{HASH}", HASH);
            fs::write(&path, format!("{good}\n[[user]]\n{entry}")).unwrap();
            let e = Users::load(&path).unwrap_err();
            let text = e.to_string();
            assert!(matches!(e, UsersError::Entry { entry: 3, .. }), "{text}");
            assert!(
                text.contains("users.toml") && text.contains(reason),
                "{text}"
            );
        }
    }

    #[test]
    fn edit_saves_only_when_the_change_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        Users::edit(&path, |users| users.add("alice", b"pw", &[]).map(|_| ())).unwrap();
        let before = fs::read(&path).unwrap();
        let e = Users::edit(&path, |users| users.add("alice", b"pw", &[]).map(|_| ()));
        assert!(matches!(e, Err(UsersError::DuplicateName { .. })));
        assert_eq!(fs::read(&path).unwrap(), before);
        let removed = Users::edit(&path, |users| users.remove("alice")).unwrap();
        assert_eq!(removed.name(), "alice");
        assert!(Users::load(&path).unwrap().is_empty());
    }

    #[test]
    fn an_unwritable_folder_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        fs::write(&blocker, "").unwrap();
        let e = two_users().save(&blocker.join("users.toml")).unwrap_err();
        assert!(matches!(e, UsersError::Io { .. }), "{e}");
        assert!(e.to_string().contains("not-a-dir"), "{e}");
    }
}
