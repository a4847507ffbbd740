//! Advisory file locks (`flock` through `std::fs::File::lock`).
//!
//! A lock file may be deleted by whoever holds it (an ingest that committed,
//! a prune that removed an abandoned ingest). To stay correct, acquiring a
//! lock re-checks after locking that the path still names the locked inode,
//! and starts over when it does not.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A held lock; released on drop.
#[derive(Debug)]
pub struct LockFile {
    file: File,
    path: PathBuf,
}

/// Shared (many holders) or exclusive (one holder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Many holders at once.
    Shared,
    /// One holder.
    Exclusive,
}

impl LockFile {
    /// Blocks until the lock is held.
    pub fn acquire(path: &Path, mode: LockMode) -> std::io::Result<LockFile> {
        loop {
            let file = open(path)?;
            match mode {
                LockMode::Shared => file.lock_shared(),
                LockMode::Exclusive => file.lock(),
            }
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("failed to lock {}: {e}", path.display()))
            })?;
            if still_linked(&file, path)? {
                return Ok(LockFile {
                    file,
                    path: path.to_path_buf(),
                });
            }
        }
    }

    /// Takes the lock if nobody holds it; `None` when somebody does.
    pub fn try_acquire(path: &Path, mode: LockMode) -> std::io::Result<Option<LockFile>> {
        loop {
            let file = open(path)?;
            let result = match mode {
                LockMode::Shared => file.try_lock_shared(),
                LockMode::Exclusive => file.try_lock(),
            };
            match result {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => return Ok(None),
                Err(TryLockError::Error(e)) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("failed to lock {}: {e}", path.display()),
                    ));
                }
            }
            if still_linked(&file, path)? {
                return Ok(Some(LockFile {
                    file,
                    path: path.to_path_buf(),
                }));
            }
        }
    }

    /// Deletes the lock file, then releases the lock.
    pub fn remove(self) -> std::io::Result<()> {
        let result = std::fs::remove_file(&self.path);
        drop(self.file);
        match result {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("failed to open lock file {}: {e}", path.display()),
            )
        })
}

fn still_linked(file: &File, path: &Path) -> std::io::Result<bool> {
    let held = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(now) => Ok(now.ino() == held.ino() && now.dev() == held.dev()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_and_removal_is_safe() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = LockFile::acquire(&path, LockMode::Exclusive).unwrap();
        assert!(
            LockFile::try_acquire(&path, LockMode::Exclusive)
                .unwrap()
                .is_none()
        );
        assert!(
            LockFile::try_acquire(&path, LockMode::Shared)
                .unwrap()
                .is_none()
        );
        held.remove().unwrap();
        assert!(!path.exists());
        let again = LockFile::try_acquire(&path, LockMode::Shared)
            .unwrap()
            .unwrap();
        let also = LockFile::try_acquire(&path, LockMode::Shared).unwrap();
        assert!(also.is_some(), "shared locks coexist");
        drop(again);
    }
}
