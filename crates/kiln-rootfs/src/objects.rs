//! Where file contents go while a tree is built: a directory of
//! content-addressed files (`<sha256 hex>`), each written once, atomically.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use fs_err as fs;
use kiln_types::{Algorithm, Digest, Hasher};

/// The content of one regular file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContentRef {
    /// SHA-256 of the content.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
}

/// A directory of file contents, named by digest.
#[derive(Debug)]
pub struct ObjectDir {
    dir: PathBuf,
    counter: u64,
}

impl ObjectDir {
    /// Opens (creating) `dir`.
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
        let temp = self
            .dir
            .join(format!(".in-{}-{}", std::process::id(), self.counter));
        let mut file = fs::File::create(&temp)?;
        let mut hasher = Hasher::new(Algorithm::Sha256);
        let mut buffer = vec![0u8; 256 << 10];
        let mut copied = 0u64;
        let result = (|| {
            while copied < size {
                let want = (size - copied).min(buffer.len() as u64) as usize;
                let n = reader.read(&mut buffer[..want])?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("file ends after {copied} of {size} bytes"),
                    ));
                }
                hasher.update(&buffer[..n]);
                file.write_all(&buffer[..n])?;
                copied += n as u64;
            }
            Ok(())
        })();
        if let Err(error) = result {
            let _ = fs::remove_file(&temp);
            return Err(error);
        }
        let digest = hasher.finish();
        let path = self.path(&digest);
        if path.exists() {
            fs::remove_file(&temp)?;
        } else {
            fs::rename(&temp, &path)?;
        }
        Ok(ContentRef { digest, size })
    }

    /// Where an object lives.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// Opens an object for reading.
    pub fn open_object(&self, content: &ContentRef) -> std::io::Result<fs::File> {
        fs::File::open(self.path(&content.digest))
    }
}
