//! kiln's store: the content-addressed blob store, the catalog that says what
//! the blobs are, garbage collection and the file locks that keep concurrent
//! kiln processes correct.
//!
//! # On-disk layout (version 1)
//!
//! ```text
//! ROOT/
//!   catalog-v1.db             the catalog (SQLite, WAL); schema in `schema`
//!   content-v1/
//!     blobs/sha256/<hex>      committed blobs: verified, mode 0444, never modified
//!     blobs/sha512/<hex>
//!     ingest/<alg>-<hex>.partial   bytes of a blob being written (resumable)
//!     ingest/<alg>-<hex>.lock      held (flock, exclusive) by that blob's writer
//!     ingest/.work-*.tmp/          scratch of a running conversion or load (removed when it
//!                                  ends); its `.lock` is held (flock) while it runs, so a
//!                                  prune removes the scratch of a killed process at once
//!     ingest/.work-*.making/       a scratch being made (locked, then renamed to .tmp)
//!     quarantine/<alg>-<hex>-<t>   blobs `fsck --repair` found corrupt
//!   sources-v1/<source>/images.json   cached image list of an imgapi source (`kiln update`)
//!   disks-v1/<name>/disk.raw|disk.qcow2   sandbox disks (writable; a qcow2 overlay
//!                             reads its backing blob under content-v1/blobs)
//!   locks/gc.lock             exclusive while garbage is collected or fsck repairs
//!   locks/open.lock           exclusive while a process opens (creates, migrates) the catalog
//! ```
//!
//! The version is in the names (`content-v1`, `catalog-v1.db`): an
//! incompatible future layout gets new names and never misreads this one.
//!
//! # Guarantees
//!
//! - A file under `blobs/` hashes to its name: it got there only by
//!   [`content::Ingest::commit`] (size and digest checked, fsync, read-only,
//!   rename, fsync of the directory) or [`content::ContentStore::put_blob`].
//! - Two processes writing one blob serialize on its ingest lock; the second
//!   re-checks after taking the lock and finds the blob committed.
//! - A blob leased by a running operation is never collected (see [`gc`]).
//! - An interrupted write leaves only its `.partial` file, which the next
//!   write of the same blob resumes and `prune` removes after a day.
//!
//! ```no_run
//! use kiln_store::Store;
//! use kiln_types::Digest;
//!
//! let store = Store::open("/var/lib/kiln".as_ref()).unwrap();
//! let digest = Digest::sha256_of(b"{}");
//! store.content().put_blob(&digest, b"{}").unwrap();
//! store.catalog().record_blob(&digest, 2).unwrap();
//! ```

pub mod catalog;
pub mod content;
mod error;
pub mod fsck;
pub mod fsutil;
pub mod gc;
pub mod lock;
mod process;
pub mod schema;

use std::path::{Path, PathBuf};

pub use catalog::{
    ArtifactRecord, BlobStamp, Catalog, DiskRecord, HolderRecord, ImageBlob, ImageRecord,
    IndexRecord, LayerRecord, Lease, NewImage, NewTag, SourceImageRecord, TagRecord,
};
pub use content::{ContentStore, Ingest, IngestStart};
pub use error::{Result, StoreError};
pub use fsck::{FsckReport, Problem};
pub use gc::{GcOptions, GcReport};

/// The store rooted at one directory: content plus catalog.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    content: ContentStore,
    catalog: Catalog,
}

impl Store {
    /// Opens (creating) the store at `root`, migrating the catalog.
    pub fn open(root: &Path) -> Result<Store> {
        fs_err::create_dir_all(root.join("locks"))?;
        let content = ContentStore::open(root.join("content-v1"))?;
        // Creating the database, switching it to WAL and migrating it are not
        // safe for two processes at once (SQLite answers "database is locked"
        // without waiting): one opener at a time.
        let opening = lock::LockFile::acquire(
            &root.join("locks").join("open.lock"),
            lock::LockMode::Exclusive,
        )?;
        let catalog = Catalog::open(&root.join("catalog-v1.db"))?;
        drop(opening);
        Ok(Store {
            root: root.to_path_buf(),
            content,
            catalog,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The blob files.
    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn gc_lock_path(&self) -> PathBuf {
        self.root.join("locks").join("gc.lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: two `kiln` processes starting on a new store at once got
    /// "database is locked" while one of them switched the catalog to WAL.
    #[test]
    fn concurrent_opens_of_a_new_store_all_succeed() {
        for _ in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("root");
            let threads: Vec<_> = (0..6)
                .map(|_| {
                    let root = root.clone();
                    std::thread::spawn(move || Store::open(&root).map(|_| ()))
                })
                .collect();
            for thread in threads {
                thread.join().unwrap().unwrap();
            }
        }
    }
}
