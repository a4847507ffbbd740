//! The content-addressed blob store: resumable ingests, verified commits,
//! immutable read-only blobs.

use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use fs_err as fs;
use kiln_types::{Algorithm, Digest, Hasher};

use crate::error::{Result, StoreError};
use crate::fsutil::{self, set_read_only, sync_dir, write_atomic};
use crate::lock::{LockFile, LockMode};

const WRITE_BUFFER: usize = 1 << 20;
/// Start writeback every this many bytes, so the fsync at commit is short.
const WRITEBACK_STEP: u64 = 16 << 20;
const READ_BUFFER: usize = 1 << 20;
/// The lock file a live scratch directory holds.
const SCRATCH_LOCK: &str = ".lock";
/// A scratch directory whose lock is free is removed once it is this old
/// (seconds): its process died.
const DEAD_SCRATCH_AGE: i64 = 5;

/// The blob directory tree under `content-v1/`.
#[derive(Debug, Clone)]
pub struct ContentStore {
    dir: PathBuf,
}

/// What [`ContentStore::ingest`] found.
#[derive(Debug)]
pub enum IngestStart {
    /// The blob is committed already (possibly by a concurrent pull that held
    /// the ingest lock first); nothing to download.
    Committed {
        /// Size of the committed blob.
        size: u64,
    },
    /// The caller must write the blob (from [`Ingest::offset`] on).
    Writing(Ingest),
}

/// A blob being written. Holds the ingest's exclusive lock; dropping it keeps
/// the partial data for a later resume and releases the lock.
#[derive(Debug)]
pub struct Ingest {
    digest: Digest,
    expected_size: Option<u64>,
    partial_path: PathBuf,
    blob_path: PathBuf,
    writer: BufWriter<fs::File>,
    written: u64,
    hasher: Hasher,
    hashed: u64,
    written_back: u64,
    lock: Option<LockFile>,
}

/// One committed blob on disk.
#[derive(Debug, Clone)]
pub struct BlobFile {
    /// Its digest (from its path).
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// What it takes on disk (allocated blocks: less than `size` for a
    /// sparse root filesystem image), which removing it frees.
    pub allocated: u64,
}

/// One ingest directory entry (for garbage collection).
#[derive(Debug, Clone)]
pub struct IngestEntry {
    /// The blob the ingest is for.
    pub digest: Digest,
    /// Bytes written so far.
    pub size: u64,
    /// Last modification, seconds since the epoch.
    pub modified: i64,
}

impl ContentStore {
    /// Opens (creating) the content tree at `dir` (`ROOT/content-v1`).
    pub fn open(dir: PathBuf) -> Result<ContentStore> {
        for sub in ["blobs/sha256", "blobs/sha512", "ingest", "quarantine"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        Ok(ContentStore { dir })
    }

    /// The path of a committed blob (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    fn ingest_base(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join("ingest")
            .join(format!("{}-{}", digest.algorithm().as_str(), digest.hex()))
    }

    /// The size of a committed blob, or `None` when it is absent.
    pub fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.blob_metadata(digest)?.map(|metadata| metadata.len()))
    }

    /// What a committed blob takes on disk (allocated blocks), or `None`
    /// when it is not in the store.
    pub fn blob_allocated(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self
            .blob_metadata(digest)?
            .map(|metadata| metadata.blocks() * 512))
    }

    fn blob_metadata(&self, digest: &Digest) -> Result<Option<std::fs::Metadata>> {
        match std::fs::metadata(self.blob_path(digest)) {
            Ok(metadata) => Ok(Some(metadata)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!("failed to stat blob {digest}: {e}"),
            )
            .into()),
        }
    }

    /// Reads a whole (small) blob: manifests, configs.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        match std::fs::read(self.blob_path(digest)) {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::BlobNotFound(digest.clone()))
            }
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!("failed to read blob {digest}: {e}"),
            )
            .into()),
        }
    }

    /// Opens a committed blob for streaming.
    pub fn open_blob(&self, digest: &Digest) -> Result<fs::File> {
        match fs::File::open(self.blob_path(digest)) {
            Ok(file) => Ok(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::BlobNotFound(digest.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Stores small in-memory content after checking it hashes to `digest`.
    /// Returns whether the blob was newly written.
    pub fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<bool> {
        let actual = Digest::of(digest.algorithm(), bytes);
        if actual != *digest {
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        if self.blob_size(digest)? == Some(bytes.len() as u64) {
            return Ok(false);
        }
        write_atomic(&self.blob_path(digest), bytes, true)?;
        Ok(true)
    }

    /// Starts (or resumes) writing the blob `digest`.
    ///
    /// Waits for the ingest lock when another process is writing the same
    /// blob, then re-checks: if that process committed it, returns
    /// [`IngestStart::Committed`]. With `force`, a committed blob is written
    /// again (and atomically replaced on commit).
    pub fn ingest(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
        force: bool,
    ) -> Result<IngestStart> {
        if !force && let Some(size) = self.blob_size(digest)? {
            return Ok(IngestStart::Committed { size });
        }
        let base = self.ingest_base(digest);
        let lock = LockFile::acquire(&base.with_extension("lock"), LockMode::Exclusive)?;
        if !force && let Some(size) = self.blob_size(digest)? {
            lock.remove()?;
            return Ok(IngestStart::Committed { size });
        }
        let partial_path = base.with_extension("partial");
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&partial_path)?;
        let mut written = file.metadata()?.len();
        if force || expected_size.is_some_and(|size| written > size) {
            file.set_len(0)?;
            written = 0;
        }
        file.seek(SeekFrom::Start(written))?;
        Ok(IngestStart::Writing(Ingest {
            digest: digest.clone(),
            expected_size,
            partial_path,
            blob_path: self.blob_path(digest),
            writer: BufWriter::with_capacity(WRITE_BUFFER, file),
            written,
            hasher: Hasher::new(digest.algorithm()),
            hashed: 0,
            written_back: written,
            lock: Some(lock),
        }))
    }

    /// A scratch directory inside the store (same filesystem as the blobs,
    /// so a finished file can be renamed in).
    ///
    /// The returned lock (`.lock` inside it) is held for as long as the
    /// directory is used: a prune removes the scratch of a process that
    /// died (its lock is free) without waiting for it to age. The directory
    /// is made and locked under another name, then renamed, so no prune
    /// ever sees it unlocked.
    pub fn scratch_dir(&self) -> Result<(PathBuf, LockFile)> {
        locked_scratch(&self.dir.join("ingest"), "work")
    }

    /// Makes `path`, a file kiln wrote inside the store (a conversion's
    /// output) while hashing it to `digest`, a committed blob: size check,
    /// fsync, read-only, rename into `blobs/`, fsync of the directory.
    pub fn adopt_file(&self, path: &Path, digest: &Digest, size: u64) -> Result<()> {
        let file = fs::File::open(path)?;
        let actual = file.metadata()?.len();
        if actual != size {
            return Err(StoreError::SizeMismatch {
                digest: digest.clone(),
                expected: size,
                actual,
            });
        }
        file.sync_all()?;
        set_read_only(path)?;
        let target = self.blob_path(digest);
        fs::rename(path, &target)?;
        if let Some(parent) = target.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }

    /// Every committed blob file, with its size.
    pub fn list_blobs(&self) -> Result<Vec<BlobFile>> {
        let mut blobs = Vec::new();
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let dir = self.dir.join("blobs").join(algorithm.as_str());
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let Ok(digest) = format!("{}:{name}", algorithm.as_str()).parse::<Digest>() else {
                    continue;
                };
                let metadata = entry.metadata()?;
                blobs.push(BlobFile {
                    digest,
                    size: metadata.len(),
                    allocated: metadata.blocks() * 512,
                });
            }
        }
        blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(blobs)
    }

    /// Removes a committed blob (garbage collection). Missing is fine.
    pub fn remove_blob(&self, digest: &Digest) -> Result<()> {
        let path = self.blob_path(digest);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!("failed to remove {}: {e}", path.display()),
            )
            .into()),
        }
    }

    /// Moves a bad blob out of the store into `quarantine/`, returning where.
    pub fn quarantine_blob(&self, digest: &Digest) -> Result<PathBuf> {
        let target = self.dir.join("quarantine").join(format!(
            "{}-{}-{}",
            digest.algorithm().as_str(),
            digest.hex(),
            fsutil::now()
        ));
        fs::rename(self.blob_path(digest), &target)?;
        if let Some(parent) = self.blob_path(digest).parent() {
            sync_dir(parent)?;
        }
        Ok(target)
    }

    /// Re-hashes a committed blob; returns its actual digest and size.
    pub fn hash_blob(&self, digest: &Digest) -> Result<(Digest, u64)> {
        let file = self.open_blob(digest)?;
        hash_reader(file, digest.algorithm())
    }

    /// Ingests in progress or abandoned.
    pub fn list_ingests(&self) -> Result<Vec<IngestEntry>> {
        let mut entries = Vec::new();
        for entry in fs::read_dir(self.dir.join("ingest"))? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(stem) = name.strip_suffix(".partial") else {
                continue;
            };
            let Some((algorithm, hex)) = stem.split_once('-') else {
                continue;
            };
            let Ok(digest) = format!("{algorithm}:{hex}").parse::<Digest>() else {
                continue;
            };
            let metadata = entry.metadata()?;
            entries.push(IngestEntry {
                digest,
                size: metadata.len(),
                modified: metadata.mtime(),
            });
        }
        Ok(entries)
    }

    /// Removes an ingest unless a writer holds it. Returns the bytes freed,
    /// or `None` when it is in use.
    pub fn remove_ingest_if_idle(&self, digest: &Digest) -> Result<Option<u64>> {
        let base = self.ingest_base(digest);
        let Some(lock) = LockFile::try_acquire(&base.with_extension("lock"), LockMode::Exclusive)?
        else {
            return Ok(None);
        };
        let partial = base.with_extension("partial");
        let size = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        match std::fs::remove_file(&partial) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        lock.remove()?;
        Ok(Some(size))
    }

    /// Removes leftover temporary files of writers that died: those older
    /// than `older_than`, and at once the scratch directories whose lock no
    /// live process holds. Returns the bytes freed.
    pub fn remove_stale_temp_files(&self, older_than: i64) -> Result<u64> {
        let mut freed = 0;
        for dir in [
            self.dir.join("ingest"),
            self.dir.join("blobs/sha256"),
            self.dir.join("blobs/sha512"),
        ] {
            freed += remove_stale_temps_in(&dir, older_than)?;
        }
        Ok(freed)
    }
}

/// A scratch directory in `parent` (named `.PREFIX-….tmp`), for a process
/// to work in, with its lock (`.lock` inside it) held for as long as the
/// directory is used: [`remove_stale_temps_in`] removes the scratch of a
/// process that died (its lock is free) without waiting for it to age. The
/// directory is made and locked under another name (`….making`), then
/// renamed, so no sweep ever sees it unlocked.
pub fn locked_scratch(parent: &Path, prefix: &str) -> Result<(PathBuf, LockFile)> {
    let name = fsutil::temp_name(prefix);
    let making = parent.join(format!("{}.making", name.trim_end_matches(".tmp")));
    fs::create_dir_all(&making)?;
    let dir = parent.join(name);
    let locked = LockFile::acquire(&making.join(SCRATCH_LOCK), LockMode::Exclusive)
        .and_then(|lock| fs::rename(&making, &dir).map(|()| lock));
    match locked {
        Ok(lock) => Ok((dir, lock)),
        Err(error) => {
            let _ = std::fs::remove_dir_all(&making);
            Err(error.into())
        }
    }
}

/// Removes from `dir` the leftover temporary files and directories
/// (`.….tmp`, `.….making`) of writers that died: those older than
/// `older_than`, and at once the scratch directories (see
/// [`locked_scratch`]) whose lock no live process holds. Returns the bytes
/// freed.
pub fn remove_stale_temps_in(dir: &Path, older_than: i64) -> Result<u64> {
    let mut freed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // A scratch directory being made (see `scratch_dir`) goes
        // only once it is old.
        let is_temp =
            name.starts_with('.') && (name.ends_with(".tmp") || name.ends_with(".making"));
        if !is_temp {
            continue;
        }
        let metadata = match entry.metadata() {
            Ok(metadata) => metadata,
            // Its process was done with it and removed it meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        let path = entry.path();
        let lock = path.join(SCRATCH_LOCK);
        // A scratch with its lock goes when nobody holds the lock and it
        // is a few seconds old (a live one is never taken, however old);
        // anything else once it is older than `older_than`.
        let held = if name.ends_with(".tmp") && metadata.is_dir() && lock.exists() {
            if metadata.mtime() >= fsutil::now() - DEAD_SCRATCH_AGE {
                continue;
            }
            match LockFile::try_acquire(&lock, LockMode::Exclusive) {
                Ok(Some(held)) => Some(held),
                Ok(None) => continue,
                // Its process was done with it and removed it meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            }
        } else if metadata.mtime() < older_than {
            None
        } else {
            continue;
        };
        let size = fsutil::tree_bytes(&path);
        let removed = if metadata.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        drop(held);
        match removed {
            Ok(()) => freed += size,
            // Another prune was first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(freed)
}

/// Hashes everything `reader` yields.
pub fn hash_reader(mut reader: impl Read, algorithm: Algorithm) -> Result<(Digest, u64)> {
    let mut hasher = Hasher::new(algorithm);
    let mut buffer = vec![0u8; READ_BUFFER];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    Ok((hasher.finish(), size))
}

impl Ingest {
    /// The digest being written.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Bytes already on disk: where the download resumes.
    pub fn offset(&self) -> u64 {
        self.written
    }

    /// Reads back the bytes already on disk (a resumed ingest), hashing them
    /// and handing each chunk to `observe` (e.g. a decompressor computing the
    /// diff_id). After this, [`Ingest::write`] keeps the hash incremental.
    pub fn replay(&mut self, mut observe: impl FnMut(&[u8]) -> std::io::Result<()>) -> Result<()> {
        self.writer.flush()?;
        let mut file = fs::File::open(&self.partial_path)?;
        let mut hasher = Hasher::new(self.digest.algorithm());
        let mut remaining = self.written;
        let mut buffer = vec![0u8; READ_BUFFER];
        while remaining > 0 {
            let want = remaining.min(buffer.len() as u64) as usize;
            let n = file.read(&mut buffer[..want])?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            observe(&buffer[..n])?;
            remaining -= n as u64;
        }
        self.hasher = hasher;
        self.hashed = self.written - remaining;
        Ok(())
    }

    /// Appends bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if let Some(expected) = self.expected_size
            && self.written + bytes.len() as u64 > expected
        {
            return Err(StoreError::SizeMismatch {
                digest: self.digest.clone(),
                expected,
                actual: self.written + bytes.len() as u64,
            });
        }
        self.writer.write_all(bytes)?;
        if self.hashed == self.written {
            self.hasher.update(bytes);
            self.hashed += bytes.len() as u64;
        }
        self.written += bytes.len() as u64;
        if self.written - self.written_back >= WRITEBACK_STEP {
            self.start_writeback()?;
        }
        Ok(())
    }

    /// Asks the kernel to start writing what is buffered (Linux
    /// `sync_file_range`), overlapping disk I/O with the download so that
    /// the fsync at commit has little left to do.
    fn start_writeback(&mut self) -> Result<()> {
        self.writer.flush()?;
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let fd = self.writer.get_ref().as_raw_fd();
            let (start, length) = (
                self.written_back as i64,
                (self.written - self.written_back) as i64,
            );
            // SAFETY: fd is a valid open file descriptor owned by self.writer.
            // Failure only means no early writeback; fsync at commit still runs.
            unsafe { libc::sync_file_range(fd, start, length, libc::SYNC_FILE_RANGE_WRITE) };
        }
        self.written_back = self.written;
        Ok(())
    }

    /// Throws away what was written (e.g. after a digest mismatch) and starts from zero.
    pub fn reset(&mut self) -> Result<()> {
        self.writer.flush()?;
        let file = self.writer.get_mut();
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        self.written = 0;
        self.written_back = 0;
        self.hashed = 0;
        self.hasher = Hasher::new(self.digest.algorithm());
        Ok(())
    }

    /// Verifies size and digest, then makes the blob visible: fsync, read-only,
    /// rename into `blobs/`, fsync of the directory. On a mismatch the partial
    /// data is discarded (it can never become right) and the error says why.
    pub fn commit(mut self) -> Result<u64> {
        self.writer.flush()?;
        let result = self.verify();
        if let Err(error) = result {
            let _ = std::fs::remove_file(&self.partial_path);
            if let Some(lock) = self.lock.take() {
                let _ = lock.remove();
            }
            return Err(error);
        }
        let file = self.writer.get_ref();
        file.sync_all()?;
        set_read_only(&self.partial_path)?;
        if let Err(error) = fs::rename(&self.partial_path, &self.blob_path) {
            // Keep the partial data resumable: writable again.
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(
                &self.partial_path,
                std::fs::Permissions::from_mode(0o644),
            );
            return Err(error.into());
        }
        if let Some(parent) = self.blob_path.parent() {
            sync_dir(parent)?;
        }
        if let Some(lock) = self.lock.take() {
            lock.remove()?;
        }
        Ok(self.written)
    }

    fn verify(&mut self) -> Result<()> {
        if let Some(expected) = self.expected_size
            && expected != self.written
        {
            return Err(StoreError::SizeMismatch {
                digest: self.digest.clone(),
                expected,
                actual: self.written,
            });
        }
        let actual = if self.hashed == self.written {
            std::mem::replace(&mut self.hasher, Hasher::new(self.digest.algorithm())).finish()
        } else {
            hash_reader(fs::File::open(&self.partial_path)?, self.digest.algorithm())?.0
        };
        if actual != self.digest {
            return Err(StoreError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Deletes the partial data (nothing will resume it).
    pub fn abort(mut self) -> Result<()> {
        let _ = std::fs::remove_file(&self.partial_path);
        if let Some(lock) = self.lock.take() {
            lock.remove()?;
        }
        Ok(())
    }

    /// Where the partial data lives.
    pub fn partial_path(&self) -> &Path {
        &self.partial_path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ContentStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path().join("content-v1")).unwrap();
        (dir, store)
    }

    fn writing(start: IngestStart) -> Ingest {
        match start {
            IngestStart::Writing(ingest) => ingest,
            IngestStart::Committed { .. } => panic!("expected a fresh ingest"),
        }
    }

    #[test]
    fn commit_verifies_and_makes_read_only() {
        let (_dir, store) = store();
        let data = b"hello world".repeat(1000);
        let digest = Digest::sha256_of(&data);
        let mut ingest = writing(
            store
                .ingest(&digest, Some(data.len() as u64), false)
                .unwrap(),
        );
        ingest.write(&data[..5000]).unwrap();
        ingest.write(&data[5000..]).unwrap();
        assert_eq!(ingest.commit().unwrap(), data.len() as u64);
        let path = store.blob_path(&digest);
        assert_eq!(std::fs::read(&path).unwrap(), data);
        assert!(std::fs::metadata(&path).unwrap().permissions().readonly());
        assert!(matches!(
            store.ingest(&digest, None, false).unwrap(),
            IngestStart::Committed { .. }
        ));
        assert!(store.list_ingests().unwrap().is_empty());
    }

    #[test]
    fn resume_continues_from_partial_data() {
        let (_dir, store) = store();
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let digest = Digest::sha256_of(&data);
        let mut first = writing(
            store
                .ingest(&digest, Some(data.len() as u64), false)
                .unwrap(),
        );
        first.write(&data[..150_000]).unwrap();
        drop(first); // interrupted
        let mut second = writing(
            store
                .ingest(&digest, Some(data.len() as u64), false)
                .unwrap(),
        );
        assert_eq!(second.offset(), 150_000);
        let mut seen = 0;
        second
            .replay(|chunk| {
                seen += chunk.len();
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, 150_000);
        second.write(&data[150_000..]).unwrap();
        second.commit().unwrap();
        assert_eq!(store.hash_blob(&digest).unwrap().0, digest);
    }

    #[test]
    fn bad_bytes_are_never_committed() {
        let (_dir, store) = store();
        let digest = Digest::sha256_of(b"good");
        let mut ingest = writing(store.ingest(&digest, Some(4), false).unwrap());
        ingest.write(b"evil").unwrap();
        let error = ingest.commit().unwrap_err();
        assert!(
            matches!(error, StoreError::DigestMismatch { .. }),
            "{error}"
        );
        assert_eq!(store.blob_size(&digest).unwrap(), None);
        assert!(
            store.list_ingests().unwrap().is_empty(),
            "bad partial data is discarded"
        );

        let mut ingest = writing(store.ingest(&digest, Some(4), false).unwrap());
        assert!(matches!(
            ingest.write(b"goodbye").unwrap_err(),
            StoreError::SizeMismatch { .. }
        ));
        ingest.write(b"goo").unwrap();
        assert!(matches!(
            ingest.commit().unwrap_err(),
            StoreError::SizeMismatch { .. }
        ));
    }

    #[test]
    fn put_blob_checks_digest() {
        let (_dir, store) = store();
        let digest = Digest::sha256_of(b"{}");
        assert!(store.put_blob(&digest, b"{}").unwrap());
        assert!(!store.put_blob(&digest, b"{}").unwrap());
        assert!(store.put_blob(&digest, b"[]").is_err());
        assert_eq!(store.read_blob(&digest).unwrap(), b"{}");
    }

    #[test]
    fn concurrent_ingest_waits_and_sees_the_commit() {
        let (_dir, store) = store();
        let data = vec![7u8; 1 << 20];
        let digest = Digest::sha256_of(&data);
        let mut first = writing(
            store
                .ingest(&digest, Some(data.len() as u64), false)
                .unwrap(),
        );
        let other = store.clone();
        let waiter_digest = digest.clone();
        let waiter = std::thread::spawn(move || other.ingest(&waiter_digest, None, false).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(100));
        first.write(&data).unwrap();
        first.commit().unwrap();
        assert!(
            matches!(waiter.join().unwrap(), IngestStart::Committed { size } if size == data.len() as u64)
        );
    }
}
