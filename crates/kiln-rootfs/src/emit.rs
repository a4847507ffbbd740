//! Writes a filesystem image front to back, hashing every byte on the way:
//! the writers lay the whole image out first, then hand its pieces over in
//! ascending offset order. Gaps are holes in the output file (so free space
//! costs no disk) but are hashed as the zeros they read as, so the image's
//! digest comes out of the same pass that writes it.

use std::io::{Read, Seek, SeekFrom, Write};

use fs_err as fs;
use kiln_types::{Algorithm, Digest, Hasher};

const BUFFER: usize = 1 << 20;
/// Writeback is started every this many bytes.
const WRITEBACK: u64 = 16 << 20;
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Work for the hashing thread, in file order.
enum Hash {
    Bytes(Vec<u8>),
    Zeros(u64),
}

/// An image being written in offset order. Hashing runs on its own thread,
/// a few buffers behind the writes, so it overlaps reading and writing.
pub(crate) struct Emitter {
    file: fs::File,
    hash: std::sync::mpsc::SyncSender<Hash>,
    recycled: std::sync::mpsc::Receiver<Vec<u8>>,
    hasher: std::thread::JoinHandle<Digest>,
    /// Offset of the next byte (buffered or not).
    position: u64,
    /// Bytes from `position - buffer.len()` not yet written.
    buffer: Vec<u8>,
    /// Offset the file's cursor is at.
    cursor: u64,
    /// Everything before this offset has been handed to writeback.
    synced: u64,
}

impl Emitter {
    pub(crate) fn new(file: fs::File) -> Emitter {
        let (hash, work) = std::sync::mpsc::sync_channel::<Hash>(4);
        let (recycle, recycled) = std::sync::mpsc::channel();
        let hasher = std::thread::spawn(move || {
            let mut hasher = Hasher::new(Algorithm::Sha256);
            for item in work {
                match item {
                    Hash::Bytes(bytes) => {
                        hasher.update(&bytes);
                        let _ = recycle.send(bytes);
                    }
                    Hash::Zeros(mut count) => {
                        while count > 0 {
                            let n = count.min(ZEROS.len() as u64) as usize;
                            hasher.update(&ZEROS[..n]);
                            count -= n as u64;
                        }
                    }
                }
            }
            hasher.finish()
        });
        Emitter {
            file,
            hash,
            recycled,
            hasher,
            position: 0,
            buffer: Vec::with_capacity(BUFFER),
            cursor: 0,
            synced: 0,
        }
    }

    fn send(&mut self, work: Hash) -> std::io::Result<()> {
        self.hash
            .send(work)
            .map_err(|_| std::io::Error::other("the hashing thread stopped"))
    }

    /// Skips to `offset` (a hole that reads as zeros).
    fn seek_to(&mut self, offset: u64) -> std::io::Result<()> {
        assert!(offset >= self.position, "pieces out of order");
        let gap = offset - self.position;
        if gap == 0 {
            return Ok(());
        }
        // Short gaps are cheaper to write than to leave as holes.
        if gap <= 4096 {
            self.buffer.extend(std::iter::repeat_n(0u8, gap as usize));
            self.position = offset;
            return self.flush_if_full();
        }
        // What is buffered comes before the hole, in the file and in the digest.
        self.flush()?;
        self.send(Hash::Zeros(gap))?;
        self.position = offset;
        Ok(())
    }

    fn flush_if_full(&mut self) -> std::io::Result<()> {
        if self.buffer.len() >= BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let start = self.position - self.buffer.len() as u64;
        if start != self.cursor {
            self.file.seek(SeekFrom::Start(start))?;
        }
        self.file.write_all(&self.buffer)?;
        self.cursor = self.position;
        let next = self
            .recycled
            .try_recv()
            .map(|mut buffer| {
                buffer.clear();
                buffer
            })
            .unwrap_or_else(|_| Vec::with_capacity(BUFFER));
        let full = std::mem::replace(&mut self.buffer, next);
        self.send(Hash::Bytes(full))?;
        // Start writeback as we go, so the commit's fsync has little left.
        if self.cursor - self.synced >= WRITEBACK {
            use std::os::fd::AsRawFd;
            // SAFETY: a plain syscall on an open descriptor; failure only costs speed.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.synced as i64,
                    (self.cursor - self.synced) as i64,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            self.synced = self.cursor;
        }
        Ok(())
    }

    /// Writes `bytes` at `offset` (at or after everything written so far).
    pub(crate) fn bytes(&mut self, offset: u64, mut bytes: &[u8]) -> std::io::Result<()> {
        self.seek_to(offset)?;
        while !bytes.is_empty() {
            let n = bytes
                .len()
                .min(BUFFER - self.buffer.len().min(BUFFER))
                .max(1);
            self.buffer.extend_from_slice(&bytes[..n]);
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
            if self.buffer.len() >= BUFFER {
                self.flush()?;
            }
            let room = (BUFFER - self.buffer.len()).min(left.min(usize::MAX as u64) as usize);
            let start = self.buffer.len();
            self.buffer.resize(start + room, 0);
            let n = match reader.read(&mut self.buffer[start..]) {
                Ok(n) => n,
                Err(error) => {
                    self.buffer.truncate(start);
                    return Err(error);
                }
            };
            self.buffer.truncate(start + n);
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
        }
        Ok(())
    }

    /// Pads the image to `size` bytes, flushes it and returns its digest and size.
    pub(crate) fn finish(mut self, size: u64) -> std::io::Result<(Digest, u64)> {
        self.seek_to(size)?;
        self.flush()?;
        self.file.set_len(size)?;
        self.file.flush()?;
        drop(self.hash);
        let digest = self
            .hasher
            .join()
            .map_err(|_| std::io::Error::other("the hashing thread panicked"))?;
        Ok((digest, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_holes_and_digest_match_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let mut emitter = Emitter::new(fs::File::create(&path).unwrap());
        emitter.bytes(10, b"head").unwrap();
        emitter.bytes(5000, b"after a short gap").unwrap();
        let big = vec![7u8; 3 << 20];
        emitter
            .copy(1 << 20, &mut &big[..], big.len() as u64)
            .unwrap();
        emitter.bytes(64 << 20, &big).unwrap();
        let (digest, size) = emitter.finish(80 << 20).unwrap();
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
    fn a_short_reader_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut emitter = Emitter::new(fs::File::create(dir.path().join("i")).unwrap());
        let error = emitter.copy(0, &mut &b"abc"[..], 10).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
