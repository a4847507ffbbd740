//! Progress reporting: the library never prints; frontends implement
//! [`Progress`] (the CLI draws bars, a server could log, Python could call back).

use std::time::Duration;

use kiln_types::Digest;

/// Something that happened during an operation.
#[derive(Debug, Clone)]
pub enum Event {
    /// Looking up a reference.
    Resolving {
        /// The canonical reference.
        reference: String,
    },
    /// The image was found in the store; nothing to download.
    Cached {
        /// Its manifest digest.
        manifest: Digest,
    },
    /// The manifest to pull is known.
    Resolved {
        /// Its digest.
        manifest: Digest,
        /// Its platform.
        platform: String,
        /// Number of layers.
        layers: usize,
    },
    /// A blob starts downloading (at `offset` when resuming).
    BlobStarted {
        /// The blob.
        digest: Digest,
        /// Its published size.
        size: u64,
        /// Bytes already in the store from an interrupted pull.
        offset: u64,
    },
    /// Bytes of a blob so far (offset included).
    BlobProgress {
        /// The blob.
        digest: Digest,
        /// Bytes so far.
        position: u64,
    },
    /// A blob was already in the store.
    BlobExists {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// A blob is downloaded and committed.
    BlobDone {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// A request failed and is retried.
    Retrying {
        /// What is retried.
        what: String,
        /// The attempt that follows.
        attempt: u32,
        /// Delay before it.
        delay: Duration,
        /// Why.
        reason: String,
    },
    /// A file of a non-OCI source starts downloading.
    FileStarted {
        /// Its name.
        name: String,
        /// Its published size.
        size: Option<u64>,
    },
    /// Bytes of a file so far.
    FileProgress {
        /// Its name.
        name: String,
        /// Bytes so far.
        position: u64,
    },
    /// A file was already in the store (verified).
    FileExists {
        /// Its name.
        name: String,
        /// Its size.
        size: u64,
    },
    /// A file is downloaded and verified.
    FileDone {
        /// Its name.
        name: String,
        /// Its size.
        size: u64,
    },
    /// A blob starts uploading.
    UploadStarted {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// Bytes of a blob sent so far.
    UploadProgress {
        /// The blob.
        digest: Digest,
        /// Bytes so far.
        position: u64,
    },
    /// A blob is uploaded (the registry verified its digest).
    UploadDone {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// A blob needed no upload: the repository has it, or the registry
    /// mounted it from another repository.
    BlobOnRegistry {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
        /// The repository it was mounted from.
        mounted_from: Option<String>,
    },
    /// A manifest was stored on the registry.
    ManifestPushed {
        /// Where.
        reference: String,
        /// Its digest.
        digest: Digest,
    },
    /// Something the user should know that does not stop the operation.
    Warning {
        /// One line.
        message: String,
    },
    /// The image is recorded in the catalog.
    Stored {
        /// Its manifest digest.
        manifest: Digest,
    },
    /// A stage of building a root filesystem starts: `total` bytes to go
    /// through (0 when not known ahead: an initramfs is compressed as it is
    /// written).
    ConvertStarted {
        /// Which stage.
        stage: ConvertStage,
        /// Its bytes.
        total: u64,
    },
    /// Bytes of that stage so far.
    ConvertProgress {
        /// Which stage.
        stage: ConvertStage,
        /// Bytes so far.
        done: u64,
    },
    /// The stage is done.
    ConvertDone {
        /// Which stage.
        stage: ConvertStage,
        /// Its bytes.
        total: u64,
    },
    /// An archive entry is read (`load`) or written (`save`).
    ArchiveEntry {
        /// Its path in the archive.
        name: String,
        /// Its size.
        size: u64,
    },
}

/// A stage of building a root filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConvertStage {
    /// Reading the image's stored layers into the tree (their compressed
    /// bytes). A `pull --rootfs` has no such stage: its download is it.
    Layers,
    /// Writing the image (its bytes, holes included: they are hashed).
    Image(crate::RootfsFormat),
    /// Writing the data file of the image's layer at this index (a
    /// layered EROFS).
    LayerFile(usize),
}

/// Receives [`Event`]s. Must be cheap: it is called for every chunk.
pub trait Progress: Send + Sync {
    /// Handles one event.
    fn event(&self, event: Event);
}

/// Ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _event: Event) {}
}
