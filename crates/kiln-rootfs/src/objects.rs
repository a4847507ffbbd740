//! Where file contents go while a tree is built: one private scratch pack
//! file, every regular file a layer carries appended to it (no file per
//! object: images of tens of thousands of small files cost one file, not
//! tens of thousands). Contents are not hashed: the writers copy them into
//! an image, whose own digest covers them, and `kiln snapshot` compares
//! them byte for byte. A file a later layer replaces stays in the pack,
//! unused.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use fs_err as fs;

/// The content of one regular file: a range of the pack.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContentRef {
    /// Where it starts in the pack.
    pub offset: u64,
    /// Its size.
    pub size: u64,
}

/// The pack of file contents.
#[derive(Debug)]
pub struct ObjectDir {
    pack: fs::File,
    /// Where the next object goes: a range is reserved before it is
    /// written, so several threads can store objects at once.
    end: AtomicU64,
}

impl ObjectDir {
    /// Opens a new pack in `dir` (created; private to this process).
    pub fn open(dir: &Path) -> std::io::Result<ObjectDir> {
        fs::create_dir_all(dir)?;
        let pack = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("pack"))?;
        Ok(ObjectDir {
            pack,
            end: AtomicU64::new(0),
        })
    }

    /// Stores exactly `size` bytes from `reader` (from any thread).
    pub fn put(&self, reader: &mut dyn Read, size: u64) -> std::io::Result<ContentRef> {
        let offset = self
            .end
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |end| {
                end.checked_add(size)
                    .filter(|next| *next <= i64::MAX as u64)
            })
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a file of {size} bytes does not fit the scratch pack"),
                )
            })?;
        let content = ContentRef { offset, size };
        let mut buffer = vec![0u8; size.min(1 << 20) as usize];
        let mut copied = 0u64;
        while copied < size {
            let want = (size - copied).min(buffer.len() as u64) as usize;
            // Fill the buffer as far as the reader goes, so writes stay large.
            let mut filled = 0;
            while filled < want {
                match reader.read(&mut buffer[filled..want]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(error),
                }
            }
            if filled == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("file ends after {copied} of {size} bytes"),
                ));
            }
            // fs-err's write names the pack in an error (a full disk).
            fs_err::os::unix::fs::FileExt::write_all_at(
                &self.pack,
                &buffer[..filled],
                offset + copied,
            )?;
            copied += filled as u64;
        }
        Ok(content)
    }

    /// A reader of an object's bytes from byte `from` on.
    pub fn reader(&self, content: &ContentRef, from: u64) -> ObjectReader<'_> {
        ObjectReader {
            pack: &self.pack,
            at: content.offset + from.min(content.size),
            end: content.offset + content.size,
        }
    }

    /// The whole of an object.
    pub fn read(&self, content: &ContentRef) -> std::io::Result<Vec<u8>> {
        let mut bytes = Vec::with_capacity(content.size as usize);
        self.reader(content, 0).read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// Whether `other` yields exactly the object's bytes.
    pub fn same_content(
        &self,
        content: &ContentRef,
        other: &mut dyn Read,
    ) -> std::io::Result<bool> {
        let mut ours = std::io::BufReader::with_capacity(1 << 20, self.reader(content, 0));
        let mut theirs = std::io::BufReader::with_capacity(1 << 20, other);
        loop {
            let (a, b) = (
                std::io::BufRead::fill_buf(&mut ours)?,
                std::io::BufRead::fill_buf(&mut theirs)?,
            );
            if a.is_empty() || b.is_empty() {
                return Ok(a.is_empty() && b.is_empty());
            }
            let n = a.len().min(b.len());
            if a[..n] != b[..n] {
                return Ok(false);
            }
            std::io::BufRead::consume(&mut ours, n);
            std::io::BufRead::consume(&mut theirs, n);
        }
    }
}

/// Reads one object out of the pack.
pub struct ObjectReader<'a> {
    pack: &'a fs::File,
    at: u64,
    end: u64,
}

impl Read for ObjectReader<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let want = buffer.len().min((self.end - self.at) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.pack.file().read_at(&mut buffer[..want], self.at)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the object pack is shorter than recorded",
            ));
        }
        self.at += n as u64;
        Ok(n)
    }
}
