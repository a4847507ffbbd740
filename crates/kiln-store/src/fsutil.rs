//! Atomic file writes and directory syncs: the only way kiln puts files on disk.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use fs_err as fs;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name for a temporary file that no other process or thread will pick.
pub fn temp_name(prefix: &str) -> String {
    let count = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(".{prefix}-{}-{count}-{nanos}.tmp", std::process::id())
}

/// Flushes a directory's entries to disk (after a rename or unlink in it).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically: temp file in the same directory,
/// fsync, optional read-only mode, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], read_only: bool) -> std::io::Result<()> {
    write_atomic_with(path, 0o644, |file| {
        file.write_all(bytes)?;
        if read_only {
            // The fsync write_atomic_with makes next also covers the mode.
            set_read_only_file(file)?;
        }
        Ok::<_, std::io::Error>(())
    })
}

/// What [`write_atomic_with`] names its temporary files for `path` after
/// (its file name), so a cleanup can tell whose they are.
fn temp_prefix(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "write".into())
}

/// Removes the temporary files a killed [`write_atomic_with`] of `path`
/// left beside it. Only safe while holding whatever lock serialises the
/// writers of `path`.
pub fn remove_stale_temps(path: &Path) {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let prefix = format!(".{}-", temp_prefix(path));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Writes `path` atomically through `write`: a new temporary file in the
/// same directory, created with `mode` (so a secret is never readable by
/// others, not even for a moment), then fsync, rename over `path`, fsync
/// of the directory. On any failure `path` is untouched and the temporary
/// file (`.NAME-….tmp`, NAME being `path`'s file name) is gone.
pub fn write_atomic_with<T, E: From<std::io::Error>>(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut std::fs::File) -> Result<T, E>,
) -> Result<T, E> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temp = dir.join(temp_name(&temp_prefix(path)));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot create {}: {e}", temp.display()))
            })?;
        let value = write(&mut file)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        sync_dir(dir)?;
        Ok(value)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Makes a file read-only, as committed blobs are: 0444, or 0555 for a
/// file that was executable (a VMM binary).
pub fn set_read_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path)?.permissions().mode();
    fs::set_permissions(path, std::fs::Permissions::from_mode(read_only_mode(mode)))
}

fn set_read_only_file(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file.metadata()?.permissions().mode();
    file.set_permissions(std::fs::Permissions::from_mode(read_only_mode(mode)))
}

fn read_only_mode(mode: u32) -> u32 {
    if mode & 0o100 != 0 { 0o555 } else { 0o444 }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Makes `target` a copy-on-write clone of `source` (Linux `FICLONE`:
/// XFS, btrfs, bcachefs). False when the filesystem cannot; then `target`
/// is untouched and the caller copies.
pub fn reflink(source: &std::fs::File, target: &std::fs::File) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: both descriptors are open for the duration of the call.
        unsafe { libc::ioctl(target.as_raw_fd(), libc::FICLONE, source.as_raw_fd()) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (source, target);
        false
    }
}

/// How [`copy_file`] copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    /// A copy-on-write clone.
    Reflink,
    /// The data, holes kept as holes.
    Sparse,
}

/// Copies the file `from` to a new file `to` (mode 0644, synced): a
/// reflink where the filesystem can, else (unless `reflink_only`, when
/// `to` is not left behind and the answer is `None`) a sparse copy.
pub fn copy_file(from: &Path, to: &Path, reflink_only: bool) -> std::io::Result<Option<Copied>> {
    let source = fs::File::open(from)?;
    let target = fs::File::create(to)?;
    let copied = if reflink(source.file(), target.file()) {
        Copied::Reflink
    } else if reflink_only {
        drop(target);
        let _ = std::fs::remove_file(to);
        return Ok(None);
    } else {
        copy_sparse(source.file(), target.file())?;
        Copied::Sparse
    };
    use std::os::unix::fs::PermissionsExt;
    target.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    target.sync_all()?;
    Ok(Some(copied))
}

/// Copies `source` into `target` (both open, `target` empty) leaving holes
/// as holes, as `cp --sparse=auto` does: SEEK_DATA/SEEK_HOLE walk the
/// source's data, which is all that is read and written. A filesystem that
/// cannot tell its holes gets a plain copy of everything.
pub fn copy_sparse(source: &std::fs::File, target: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let length = source.metadata()?.len();
    target.set_len(length)?;
    let fd = source.as_raw_fd();
    let mut buffer = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    while offset < length {
        // SAFETY: lseek on a descriptor open for the duration of the call.
        let data = unsafe { libc::lseek(fd, offset as i64, libc::SEEK_DATA) };
        let (start, end) = if data < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::ENXIO) => break, // only holes remain
                _ => (offset, length),      // holes unknown: copy it all
            }
        } else {
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
            (
                data as u64,
                if hole < 0 {
                    length
                } else {
                    (hole as u64).min(length)
                },
            )
        };
        let mut at = start;
        while at < end {
            let want = (end - at).min(buffer.len() as u64) as usize;
            let n = source.read_at(&mut buffer[..want], at)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file got shorter while being copied",
                ));
            }
            target.write_all_at(&buffer[..n], at)?;
            at += n as u64;
        }
        offset = end;
    }
    Ok(())
}

/// Bytes the file `path`, or the files under the directory `path`, take on
/// disk (allocated blocks: what removing it frees). 0 for what is gone.
pub fn tree_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::read_dir(path)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|entry| tree_bytes(&entry.path()))
                    .sum()
            })
            .unwrap_or(0),
        Ok(meta) => meta.blocks() * 512,
        Err(_) => 0,
    }
}
