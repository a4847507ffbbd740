//! Where file contents go while a tree is built: a private scratch
//! directory of numbered files, one per regular file a layer carries. They
//! are not hashed: the writers copy them into an image, whose own digest
//! covers them, and `kiln snapshot` compares them byte for byte.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use fs_err as fs;

/// The content of one regular file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContentRef {
    /// The object's number in its [`ObjectDir`].
    pub id: u64,
    /// Its size.
    pub size: u64,
}

/// A directory of file contents, by number.
#[derive(Debug)]
pub struct ObjectDir {
    dir: PathBuf,
    counter: u64,
}

impl ObjectDir {
    /// Opens (creating) `dir`, which must be private to this process.
    pub fn open(dir: &Path) -> std::io::Result<ObjectDir> {
        fs::create_dir_all(dir)?;
        Ok(ObjectDir {
            dir: dir.to_path_buf(),
            counter: 0,
        })
    }

    /// Stores exactly `size` bytes from `reader`.
    pub fn put(&mut self, reader: &mut dyn Read, size: u64) -> std::io::Result<ContentRef> {
        self.counter += 1;
        let content = ContentRef {
            id: self.counter,
            size,
        };
        let path = self.path(&content);
        let mut file = fs::File::create(&path)?;
        let copied = std::io::copy(&mut reader.take(size), &mut file);
        match copied {
            Ok(copied) if copied == size => {
                file.flush()?;
                Ok(content)
            }
            Ok(copied) => {
                let _ = fs::remove_file(&path);
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("file ends after {copied} of {size} bytes"),
                ))
            }
            Err(error) => {
                let _ = fs::remove_file(&path);
                Err(error)
            }
        }
    }

    /// Where an object lives.
    pub fn path(&self, content: &ContentRef) -> PathBuf {
        self.dir.join(content.id.to_string())
    }

    /// Opens an object for reading.
    pub fn open_object(&self, content: &ContentRef) -> std::io::Result<fs::File> {
        fs::File::open(self.path(content))
    }

    /// Whether the file at `path` holds exactly the object's bytes.
    pub fn same_content(&self, content: &ContentRef, path: &Path) -> std::io::Result<bool> {
        let mut ours = std::io::BufReader::with_capacity(1 << 20, self.open_object(content)?);
        let mut theirs = std::io::BufReader::with_capacity(1 << 20, fs::File::open(path)?);
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
