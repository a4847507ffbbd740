//! kiln: get a VM image from anywhere, check it is exactly what was
//! published, keep it once on disk. This crate is the facade every frontend
//! calls (the `kiln` CLI today; the registry server and the Python SDK
//! later): frontends never touch the store or the registry client directly.
//!
//! ```no_run
//! # async fn example() -> kiln::Result<()> {
//! use std::sync::Arc;
//! use kiln::{Manager, NoProgress, PullOptions};
//!
//! let manager = Manager::open("/var/lib/kiln".as_ref())?;
//! let pulled = manager.pull("alpine:3.20", &PullOptions::default(), Arc::new(NoProgress)).await?;
//! println!("{} {}", pulled.reference, pulled.manifest_digest);
//! for image in manager.images()? {
//!     println!("{:?} {}", image.reference, image.size);
//! }
//! # Ok(()) }
//! ```

mod archive;
mod credentials;
mod disk;
mod error;
mod progress;
mod pull;
mod push;
mod query;
mod remove;
mod root;
mod rootfs;
mod snapshot;
mod sources;

use std::path::Path;

pub use archive::{ArchiveFormat, LoadOptions, LoadedImage, SaveReport};
pub use credentials::{
    AUTH_FILE_VERSION, CredentialError, LoginOptions, LoginOutcome, RegistryCredentials,
    StoreChoice, StoreKind, normalize_host,
};
pub use disk::{Disk, DiskFormat, validate_disk_name};
pub use error::{Error, Result};
pub use kiln_oci::{Credential, CredentialProvider, StaticCredentials};
pub use kiln_sources::imgapi::{
    DEFAULT_FIELDS as IMGAPI_DEFAULT_FIELDS, Filter as ImageFilter, field_text,
};
pub use kiln_sources::{SourceConfig, SourceType};
pub use kiln_store::fsutil::write_atomic_with;
pub use kiln_store::{FsckReport, GcReport, Problem, Store};
pub use kiln_types::SourceReference;
pub use kiln_types::{Digest, ErrorKind, Platform, Reference};
pub use progress::{ConvertStage, Event, NoProgress, Progress};
pub use pull::{DEFAULT_CONCURRENCY, PullOptions, PullPolicy, PulledImage};
pub use push::{
    EMPTY_CONFIG_MEDIA_TYPE, PushOptions, PushedImage, PushedReferrer, rootfs_artifact_type,
    rootfs_media_type,
};
pub use query::{Found, ImageDetails, ImageSummary, LayerDetails, RootfsDetails};
pub use remove::RemoveReport;
pub use root::resolve_root;
pub use rootfs::{
    CONVERTER_VERSION, LayerData, LayeredRootfs, RootfsArtifact, RootfsFormat, copy_layered_out,
    copy_out,
};
pub use snapshot::Snapshot;
pub use sources::{
    AvailableCatalogImage, AvailableRelease, CachedImage, CatalogSource, RECORD_MEDIA_TYPE,
    SourceDetails, SourceFileDetails, SourceInfo, SourceRecord, default_config_path,
};

/// The entry point: one store, every operation.
#[derive(Debug)]
pub struct Manager {
    store: Store,
    config_path: std::path::PathBuf,
}

impl Manager {
    /// Opens (creating) the store at `root`.
    pub fn open(root: &Path) -> Result<Manager> {
        Ok(Manager {
            store: Store::open(root)?,
            config_path: default_config_path(),
        })
    }

    /// Reads sources from `path` instead of the default config file.
    pub fn with_config(mut self, path: std::path::PathBuf) -> Manager {
        self.config_path = path;
        self
    }

    /// The underlying store (for frontends that serve blobs, and tests).
    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// The catalog name of a reference: `registry/repo@digest` when it pins a
/// digest (the tag then only documents), else `registry/repo:tag`.
pub(crate) fn tag_name(reference: &Reference) -> String {
    match reference.digest() {
        Some(digest) => format!("{}@{digest}", reference.name()),
        None => reference.to_string(),
    }
}

/// Releases a lease on every exit path that did not hand it to the catalog.
pub(crate) struct LeaseGuard<'m> {
    pub(crate) manager: &'m Manager,
    pub(crate) lease: Option<kiln_store::Lease>,
}

impl LeaseGuard<'_> {
    /// A new lease, released when the guard goes (unless taken).
    pub(crate) fn new(manager: &Manager) -> Result<LeaseGuard<'_>> {
        Ok(LeaseGuard {
            manager,
            lease: Some(manager.store.catalog().create_lease()?),
        })
    }

    pub(crate) fn lease(&self) -> &kiln_store::Lease {
        self.lease.as_ref().expect("lease is held until taken")
    }

    /// Makes `path`, a file this process wrote and hashed to `digest`, the
    /// store's blob (leased first; a blob already there with that digest
    /// is kept and `path` left for its scratch to remove).
    pub(crate) fn keep(&self, path: &std::path::Path, digest: &Digest, size: u64) -> Result<()> {
        self.manager
            .store
            .catalog()
            .lease_blob(self.lease(), digest)?;
        let content = self.manager.store.content();
        if content.blob_size(digest)? != Some(size) {
            content.adopt_file(path, digest, size)?;
        }
        Ok(())
    }
}

/// A scratch directory in the store, removed on every exit path; its lock
/// (held until then) tells a prune that its process is alive, and a prune
/// removes the scratch of one that was killed.
pub(crate) struct Scratch(
    pub(crate) std::path::PathBuf,
    // Held, not read: released when the scratch is gone.
    #[allow(dead_code)] kiln_store::lock::LockFile,
);

impl Scratch {
    pub(crate) fn new(manager: &Manager) -> Result<Scratch> {
        let (dir, lock) = manager.store.content().scratch_dir()?;
        Ok(Scratch(dir, lock))
    }

    /// A scratch directory in `parent` (made if missing), swept by
    /// `kiln_store::content::remove_stale_temps_in` once its process dies.
    pub(crate) fn in_dir(parent: &std::path::Path, prefix: &str) -> Result<Scratch> {
        let (dir, lock) = kiln_store::content::locked_scratch(parent, prefix)?;
        Ok(Scratch(dir, lock))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for LeaseGuard<'_> {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            let _ = self.manager.store.catalog().release_lease(lease);
        }
    }
}
