//! Writes a filesystem image front to back, hashing every byte on the way:
//! the writers lay the whole image out first, then hand its pieces over in
//! ascending offset order. Gaps are holes in the output file (so free space
//! costs no disk) but are hashed as the zeros they read as, so the image's
//! digest comes out of the same pass that writes it.
//!
//! Copying into buffers, writing them and hashing them run on three
//! threads, a few buffers apart.
//!
//! The image is written with `O_DIRECT` where the filesystem allows it: it
//! is committed with an fsync anyway, so going through the page cache would
//! only add a copy and the cost of fresh page-cache pages. Writes are then
//! whole 4 KiB-aligned blocks from aligned buffers; where `O_DIRECT` is
//! refused, ordinary writes with early writeback are used.

use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use fs_err as fs;
use kiln_types::{Algorithm, Digest, Hasher};

const ALIGN: usize = 4096;
const BUFFER: usize = 1 << 20;
/// Without `O_DIRECT`, writeback is started every this many bytes.
const WRITEBACK: u64 = 16 << 20;
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
/// Progress is told at most once per this many bytes hashed.
const TELL_EVERY: u64 = 8 << 20;

/// Told how far the writing of an image is: `(done, total)` in bytes, once
/// before it starts, then from the hashing thread (the last stage a byte
/// goes through) every few MiB and once at the end. The image's holes
/// count as they are hashed.
pub type OnWritten = std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>;

/// A byte buffer whose start is 4 KiB aligned (what `O_DIRECT` needs).
struct Aligned {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new() -> Aligned {
        let storage = vec![0u8; BUFFER + ALIGN];
        let start = storage.as_ptr().align_offset(ALIGN);
        Aligned {
            storage,
            start,
            len: 0,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    fn room(&self) -> usize {
        BUFFER - self.len
    }

    fn push(&mut self, bytes: &[u8]) {
        let at = self.start + self.len;
        self.storage[at..at + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn push_zeros(&mut self, count: usize) {
        let at = self.start + self.len;
        self.storage[at..at + count].fill(0);
        self.len += count;
    }

    /// Reads from `reader` into the free room (at most `limit` bytes).
    fn read_from(&mut self, reader: &mut dyn Read, limit: usize) -> std::io::Result<usize> {
        let at = self.start + self.len;
        let end = at + limit.min(self.room());
        let n = reader.read(&mut self.storage[at..end])?;
        self.len += n;
        Ok(n)
    }
}

/// Work for the hashing thread, in file order: a buffer's first `.1` bytes,
/// or a run of zeros.
enum Hash {
    Bytes(Aligned, usize),
    Zeros(u64),
}

/// Work for the writing thread, in file order: a buffer to write at `start`
/// (its first `length` bytes are the image's; the rest pads a direct
/// write), or a hole of this many bytes (for the digest).
enum Write {
    Buffer {
        buffer: Aligned,
        start: u64,
        length: usize,
    },
    Hole(u64),
}

/// The hashing thread's progress reports.
struct Tell {
    tell: OnWritten,
    total: u64,
    done: u64,
    told: u64,
}

impl Tell {
    fn add(&mut self, bytes: u64) {
        self.done += bytes;
        if self.done - self.told >= TELL_EVERY {
            self.told = self.done;
            (self.tell)(self.done, self.total.max(self.done));
        }
    }
}

/// An image being written in offset order. The caller fills buffers; a
/// writing thread writes them while the next one fills, then hands them to
/// a hashing thread, so copying, writing and hashing overlap.
pub(crate) struct Emitter {
    write: Option<std::sync::mpsc::SyncSender<Write>>,
    writer: Option<std::thread::JoinHandle<std::io::Result<fs::File>>>,
    recycled: std::sync::mpsc::Receiver<Aligned>,
    hasher: Option<std::thread::JoinHandle<Digest>>,
    /// Offset of the next byte (buffered or not).
    position: u64,
    /// Bytes from `position - buffer.len` not yet written.
    buffer: Aligned,
}

impl Emitter {
    /// Creates (truncating) the image file at `path`, of `total` bytes,
    /// telling `on_written` how far it is.
    pub(crate) fn create(
        path: &Path,
        total: u64,
        on_written: Option<OnWritten>,
    ) -> std::io::Result<Emitter> {
        let direct = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(path);
        let tell = on_written.map(|tell| {
            tell(0, total);
            Tell {
                tell,
                total,
                done: 0,
                told: 0,
            }
        });
        Ok(match direct {
            Ok(file) => Emitter::new(fs::File::from_parts(file, path), true, tell),
            Err(_) => Emitter::new(fs::File::create(path)?, false, tell),
        })
    }

    fn new(file: fs::File, direct: bool, mut tell: Option<Tell>) -> Emitter {
        let (hash, work) = std::sync::mpsc::sync_channel::<Hash>(4);
        let (recycle, recycled) = std::sync::mpsc::channel();
        let hasher = std::thread::spawn(move || {
            let mut hasher = Hasher::new(Algorithm::Sha256);
            let mut hashed = |hasher: &mut Hasher, bytes: &[u8]| {
                hasher.update(bytes);
                if let Some(tell) = &mut tell {
                    tell.add(bytes.len() as u64);
                }
            };
            for item in work {
                match item {
                    Hash::Bytes(buffer, length) => {
                        hashed(&mut hasher, &buffer.bytes()[..length]);
                        let _ = recycle.send(buffer);
                    }
                    Hash::Zeros(mut count) => {
                        while count > 0 {
                            let n = count.min(ZEROS.len() as u64) as usize;
                            hashed(&mut hasher, &ZEROS[..n]);
                            count -= n as u64;
                        }
                    }
                }
            }
            if let Some(tell) = &tell {
                (tell.tell)(tell.done, tell.total.max(tell.done));
            }
            hasher.finish()
        });
        let (write, writes) = std::sync::mpsc::sync_channel::<Write>(2);
        let writer = std::thread::spawn(move || write_out(file, direct, writes, hash));
        Emitter {
            write: Some(write),
            writer: Some(writer),
            recycled,
            hasher: Some(hasher),
            position: 0,
            buffer: Aligned::new(),
        }
    }

    /// Hands work to the writing thread; when it stopped, its error.
    fn send(&mut self, work: Write) -> std::io::Result<()> {
        let sent = match &self.write {
            Some(write) => write.send(work).is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        self.write = None;
        match self.writer.take().map(|writer| writer.join()) {
            Some(Ok(Err(error))) => Err(error),
            Some(Err(_)) => Err(std::io::Error::other("the writing thread panicked")),
            _ => Err(std::io::Error::other("the writing thread stopped")),
        }
    }

    /// Skips to `offset` (a hole that reads as zeros).
    fn seek_to(&mut self, offset: u64) -> std::io::Result<()> {
        assert!(offset >= self.position, "pieces out of order");
        // Holes run from block boundary to block boundary (direct writes
        // stay aligned); the zeros around them, and gaps too short to be
        // worth a hole, are written.
        let hole_start = self.position.next_multiple_of(ALIGN as u64);
        let hole_end = offset - offset % ALIGN as u64;
        if hole_end > hole_start && offset - self.position > ALIGN as u64 {
            self.write_zeros(hole_start - self.position)?;
            // What is buffered comes before the hole, in the file and in the digest.
            self.flush(false)?;
            self.send(Write::Hole(hole_end - hole_start))?;
            self.position = hole_end;
        }
        self.write_zeros(offset - self.position)
    }

    fn write_zeros(&mut self, mut count: u64) -> std::io::Result<()> {
        while count > 0 {
            let n = (count.min(usize::MAX as u64) as usize).min(self.buffer.room());
            self.buffer.push_zeros(n);
            self.position += n as u64;
            count -= n as u64;
            self.flush_if_full()?;
        }
        Ok(())
    }

    fn flush_if_full(&mut self) -> std::io::Result<()> {
        if self.buffer.room() == 0 {
            self.flush(false)?;
        }
        Ok(())
    }

    /// Hands the buffer to the writing thread. Only the last flush may end
    /// off a block boundary: it is padded with zeros, and `finish` cuts the
    /// file back.
    fn flush(&mut self, last: bool) -> std::io::Result<()> {
        let length = self.buffer.len;
        if length == 0 {
            return Ok(());
        }
        let start = self.position - length as u64;
        if !length.is_multiple_of(ALIGN) {
            assert!(last, "an unaligned write before the end");
            let pad = length.next_multiple_of(ALIGN) - length;
            self.buffer.push_zeros(pad);
        }
        let next = self.recycled.try_recv().unwrap_or_else(|_| Aligned::new());
        let buffer = std::mem::replace(&mut self.buffer, next);
        self.buffer.len = 0;
        self.send(Write::Buffer {
            buffer,
            start,
            length,
        })
    }

    /// Writes `bytes` at `offset` (at or after everything written so far).
    pub(crate) fn bytes(&mut self, offset: u64, mut bytes: &[u8]) -> std::io::Result<()> {
        self.seek_to(offset)?;
        while !bytes.is_empty() {
            let n = bytes.len().min(self.buffer.room());
            self.buffer.push(&bytes[..n]);
            self.position += n as u64;
            bytes = &bytes[n..];
            self.flush_if_full()?;
        }
        Ok(())
    }

    /// Copies exactly `size` bytes of `reader` to `offset`.
    pub(crate) fn copy(
        &mut self,
        offset: u64,
        reader: &mut dyn Read,
        size: u64,
    ) -> std::io::Result<()> {
        self.seek_to(offset)?;
        let mut left = size;
        while left > 0 {
            let limit = left.min(BUFFER as u64) as usize;
            let n = self.buffer.read_from(reader, limit)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "a file of the tree ended after {} of {size} bytes",
                        size - left
                    ),
                ));
            }
            self.position += n as u64;
            left -= n as u64;
            self.flush_if_full()?;
        }
        Ok(())
    }

    /// Pads the image to `size` bytes, writes it out and returns its digest and size.
    pub(crate) fn finish(mut self, size: u64) -> std::io::Result<(Digest, u64)> {
        let aligned = size - size % ALIGN as u64;
        if aligned > self.position {
            self.seek_to(aligned)?;
        }
        let tail = size - self.position;
        self.bytes(self.position, &vec![0u8; tail as usize])?;
        self.flush(true)?;
        drop(self.write.take());
        let file = match self.writer.take().map(|writer| writer.join()) {
            Some(Ok(result)) => result?,
            _ => return Err(std::io::Error::other("the writing thread panicked")),
        };
        file.set_len(size)?;
        let digest = match self.hasher.take().map(|hasher| hasher.join()) {
            Some(Ok(digest)) => digest,
            _ => return Err(std::io::Error::other("the hashing thread panicked")),
        };
        Ok((digest, size))
    }
}

impl Drop for Emitter {
    /// Given up before `finish` (a writer's error): the threads are stopped
    /// and waited for, so nothing writes the file after its writer returned.
    fn drop(&mut self) {
        drop(self.write.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        if let Some(hasher) = self.hasher.take() {
            let _ = hasher.join();
        }
    }
}

/// The writing thread: writes buffers (direct when it can), starts
/// writeback as it goes when it cannot, and hands everything on to the
/// hashing thread in order. Returns the file.
fn write_out(
    file: fs::File,
    mut direct: bool,
    writes: std::sync::mpsc::Receiver<Write>,
    hash: std::sync::mpsc::SyncSender<Hash>,
) -> std::io::Result<fs::File> {
    use std::os::fd::AsRawFd;
    let stopped = || std::io::Error::other("the hashing thread stopped");
    // Name the image in what fails (a full disk, most likely).
    let named = |error: std::io::Error| {
        std::io::Error::new(
            error.kind(),
            format!(
                "failed to write to file `{}`: {error}",
                file.path().display()
            ),
        )
    };
    // Without O_DIRECT: everything before this offset went to writeback.
    let mut synced = 0u64;
    for work in writes {
        let (buffer, start, length) = match work {
            Write::Hole(count) => {
                hash.send(Hash::Zeros(count)).map_err(|_| stopped())?;
                continue;
            }
            Write::Buffer {
                buffer,
                start,
                length,
            } => (buffer, start, length),
        };
        let written = file.file().write_all_at(buffer.bytes(), start);
        match written {
            Err(error) if direct && error.raw_os_error() == Some(libc::EINVAL) => {
                // The filesystem took the open but not the write: go buffered.
                direct = false;
                let fd = file.as_raw_fd();
                // SAFETY: fcntl on an open descriptor.
                unsafe {
                    libc::fcntl(
                        fd,
                        libc::F_SETFL,
                        libc::fcntl(fd, libc::F_GETFL) & !libc::O_DIRECT,
                    )
                };
                file.file()
                    .write_all_at(&buffer.bytes()[..length], start)
                    .map_err(named)?;
            }
            other => other.map_err(named)?,
        }
        hash.send(Hash::Bytes(buffer, length))
            .map_err(|_| stopped())?;
        let end = start + length as u64;
        if !direct && end - synced >= WRITEBACK {
            // SAFETY: a plain syscall on an open descriptor; failure only costs speed.
            unsafe {
                libc::sync_file_range(
                    file.as_raw_fd(),
                    synced as i64,
                    (end - synced) as i64,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            synced = end;
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_holes_and_digest_match_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let mut emitter = Emitter::create(&path, 0, None).unwrap();
        emitter.bytes(10, b"head").unwrap();
        emitter.bytes(5000, b"after a short gap").unwrap();
        let big = vec![7u8; 3 << 20];
        emitter
            .copy(1 << 20, &mut &big[..], big.len() as u64)
            .unwrap();
        emitter.bytes(64 << 20, &big).unwrap();
        let (digest, size) = emitter.finish((80 << 20) + 123).unwrap();
        let written = std::fs::read(&path).unwrap();
        assert_eq!(written.len() as u64, size);
        assert_eq!(digest, Digest::sha256_of(&written));
        assert_eq!(&written[10..14], b"head");
        assert_eq!(&written[(1 << 20)..(4 << 20)], &big[..]);
        assert!(written[(4 << 20)..(64 << 20)].iter().all(|b| *b == 0));
        // The long gaps are holes.
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(&path).unwrap().blocks() * 512 < (20 << 20));
    }

    #[test]
    fn a_failed_write_is_an_error() {
        // /dev/full takes no O_DIRECT and fails every write with ENOSPC.
        let mut emitter = Emitter::create(Path::new("/dev/full"), 0, None).unwrap();
        let big = vec![1u8; 5 << 20];
        let error = emitter
            .bytes(0, &big)
            .and_then(|_| emitter.finish(big.len() as u64).map(|_| ()))
            .unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::StorageFull, "{error}");
        assert!(
            error
                .to_string()
                .starts_with("failed to write to file `/dev/full`: No space left on device"),
            "{error}"
        );
    }

    #[test]
    fn a_short_reader_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut emitter = Emitter::create(&dir.path().join("i"), 0, None).unwrap();
        let error = emitter.copy(0, &mut &b"abc"[..], 10).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
