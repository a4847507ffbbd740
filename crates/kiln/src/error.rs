use kiln_oci::OciError;
use kiln_store::StoreError;
use kiln_types::{
    Digest, ErrorKind, ManifestError, PlatformError, ReferenceError, SourceReferenceError,
};

/// A failure of a kiln operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed image reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A malformed platform.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] OciError),
    /// A manifest or config kiln cannot read.
    #[error("{reference}: {source}")]
    Manifest {
        reference: String,
        #[source]
        source: ManifestError,
    },
    /// `--policy never` and the image is not cached.
    #[error("{reference} is not in the store and the pull policy is `never`")]
    NotCached { reference: String },
    /// No image matches what the user named.
    #[error("no image {query:?} in the store")]
    ImageNotFound { query: String },
    /// A short digest matches several images.
    #[error("{query:?} matches {} images: {}", candidates.len(), candidates.join(", "))]
    Ambiguous {
        query: String,
        candidates: Vec<String>,
    },
    /// The index has no manifest for the platform.
    #[error("{reference} has no image for platform {platform} (available: {})", if available.is_empty() { "none".to_string() } else { available.join(", ") })]
    PlatformNotFound {
        reference: String,
        platform: String,
        available: Vec<String>,
    },
    /// The image is for another platform than the one asked for.
    #[error("{reference} is an image for {actual}, not {requested}")]
    PlatformMismatch {
        reference: String,
        requested: String,
        actual: String,
    },
    /// A media type kiln cannot handle.
    #[error("{reference}: unsupported media type {media_type:?} for {what}")]
    UnsupportedMediaType {
        reference: String,
        what: String,
        media_type: String,
    },
    /// The manifest and config disagree on the number of layers.
    #[error("{reference}: manifest lists {layers} layers but the config has {diff_ids} diff_ids")]
    LayerCount {
        reference: String,
        layers: usize,
        diff_ids: usize,
    },
    /// A layer decompressed to something other than the config promised.
    #[error("layer {layer} decompresses to diff_id {actual}, but the image config says {expected}")]
    DiffIdMismatch {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
    /// A layer could not be decompressed.
    #[error("layer {layer} ({compression}) cannot be decompressed: {source}")]
    Decompress {
        layer: Digest,
        compression: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The image is used by a holder (a sandbox disk).
    #[error("image {image} is in use by {}", holders.join(", "))]
    InUse { image: String, holders: Vec<String> },
    /// Removing by digest would remove several names.
    #[error("image {image} has {} names: {}", names.len(), names.join(", "))]
    MultipleNames { image: String, names: Vec<String> },
    /// A layer could not be turned into a filesystem tree.
    #[error(transparent)]
    Rootfs(#[from] kiln_rootfs::RootfsError),
    /// One layer of an image (by position, base first, and digest) could
    /// not be turned into a filesystem tree.
    #[error("cannot unpack layer {index} ({digest}) of {image}")]
    Layer {
        image: String,
        index: usize,
        digest: Digest,
        #[source]
        source: kiln_rootfs::RootfsError,
    },
    /// A disk name kiln refuses.
    #[error(
        "invalid disk name {name:?}: use letters, digits, '_', '.', '-' (at most 128, starting with a letter or digit, no '..')"
    )]
    InvalidDiskName { name: String },
    /// A disk of that name exists.
    #[error("disk {name:?} exists already")]
    DiskExists { name: String },
    /// No disk of that name.
    #[error("no disk {name:?}")]
    DiskNotFound { name: String },
    /// A disk tool failed.
    #[error("{tool} failed: {detail}")]
    DiskTool { tool: String, detail: String },
    /// A disk's filesystem cannot be read (in use, damaged, or with
    /// features kiln does not read).
    #[error("cannot read disk {disk:?}: {detail}")]
    DiskUnreadable { disk: String, detail: String },
    /// A background task died.
    #[error("internal task failed: {0}")]
    Task(String),
    /// A non-OCI source failed.
    #[error(transparent)]
    Source(#[from] kiln_sources::SourceError),
    /// A malformed `SOURCE://NAME[@VERSION]`.
    #[error(transparent)]
    SourceReference(#[from] SourceReferenceError),
    /// No configured source of that name.
    #[error("no source {name:?} is configured (configured: {})", if available.is_empty() { "none".to_string() } else { available.join(", ") })]
    UnknownSource {
        name: String,
        available: Vec<String>,
    },
    /// A source of that name exists.
    #[error("source {name:?} exists already")]
    SourceExists { name: String },
    /// A source definition kiln refuses.
    #[error("invalid source: {detail}")]
    InvalidSource { name: String, detail: String },
    /// The operation needs another type of source.
    #[error("source {name} is a {actual} source, not {expected}")]
    WrongSourceType {
        name: String,
        actual: String,
        expected: &'static str,
    },
    /// The source has no image of that name.
    #[error("{reference}: no such image (available: {})", if available.is_empty() { "none".to_string() } else { available.join(", ") })]
    UnknownSourceImage {
        reference: String,
        available: Vec<String>,
    },
    /// A source image name kiln cannot use.
    #[error("{reference}: {detail}")]
    InvalidSourceImageName { reference: String, detail: String },
    /// Installed images have this one as their origin.
    #[error("image {image} is the origin of installed images: {}", dependents.join(", "))]
    HasDependents {
        image: String,
        dependents: Vec<String>,
    },
    /// An image's origin is not installed.
    #[error("image {image} needs its origin {origin}, which is not installed")]
    OriginMissing { image: String, origin: String },
    /// A source's token variable is not set.
    #[error("the source's token variable {variable} is not set")]
    MissingToken { variable: String },
    /// Registry credentials (login, logout, kiln's store, the config's `[registries]`).
    #[error(transparent)]
    Credentials(#[from] crate::credentials::CredentialError),
    /// The image cannot become what was asked.
    #[error("{image}: {detail}")]
    NotConvertible { image: String, detail: String },
    /// `push` without a destination for an image that has no registry name.
    #[error("{source_name} has no registry name to push to")]
    PushDestination { source_name: String },
    /// `push` to a reference that pins another digest.
    #[error("cannot push image {image} to {destination}: the destination pins another digest")]
    PushDigest { destination: String, image: Digest },
    /// A name for a new image that pins a digest the image does not have.
    #[error("{name}: {detail}")]
    NameDigest { name: String, detail: String },
    /// An OCI artifact kiln cannot use.
    #[error("{reference}: {detail}")]
    Artifact { reference: String, detail: String },
    /// An image archive kiln refuses (`load`).
    #[error("{archive}: {source}")]
    Archive {
        archive: String,
        #[source]
        source: kiln_sources::archive::ArchiveError,
    },
    /// A tar archive would be read from or written to a terminal.
    #[error("{stream} is a terminal: kiln does not {action} a tar archive there")]
    TerminalArchive {
        stream: &'static str,
        action: &'static str,
    },
    /// A failure about the content of an archive being loaded.
    #[error("{archive}: {source}")]
    InArchive {
        archive: String,
        #[source]
        source: Box<Error>,
    },
    /// An image `save` cannot write.
    #[error("{image}: {detail}")]
    NotSaveable { image: String, detail: String },
    /// The archive `kiln save` writes could not be written (its
    /// destination, not the store: a full disk, a closed pipe).
    #[error("cannot write the archive: {0}")]
    ArchiveOutput(#[source] std::io::Error),
    /// A committed blob whose bytes no longer hash to its digest (damaged
    /// on disk since it was stored).
    #[error("blob {digest} in the store is corrupt: its bytes hash to {actual}")]
    CorruptBlob { digest: Digest, actual: Digest },
}

impl Error {
    /// The category of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Reference(_) | Error::Platform(_) => ErrorKind::InvalidArgument,
            Error::Store(error) => error.kind(),
            Error::Registry(error) => error.kind(),
            Error::Manifest { .. }
            | Error::UnsupportedMediaType { .. }
            | Error::Ambiguous { .. } => ErrorKind::InvalidArgument,
            Error::NotCached { .. }
            | Error::ImageNotFound { .. }
            | Error::PlatformNotFound { .. } => ErrorKind::NotFound,
            Error::PlatformMismatch { .. } => ErrorKind::InvalidArgument,
            Error::LayerCount { .. } | Error::DiffIdMismatch { .. } | Error::Decompress { .. } => {
                ErrorKind::DataLoss
            }
            Error::InUse { .. } | Error::MultipleNames { .. } => ErrorKind::FailedPrecondition,
            Error::Rootfs(error) | Error::Layer { source: error, .. } => error.kind(),
            Error::InvalidDiskName { .. } => ErrorKind::InvalidArgument,
            Error::DiskExists { .. } => ErrorKind::AlreadyExists,
            Error::DiskNotFound { .. } => ErrorKind::NotFound,
            Error::DiskTool { .. } => ErrorKind::FailedPrecondition,
            Error::DiskUnreadable { .. } => ErrorKind::FailedPrecondition,
            Error::Task(_) => ErrorKind::Internal,
            Error::Source(error) => error.kind(),
            Error::Credentials(error) => error.kind(),
            Error::SourceReference(_)
            | Error::InvalidSource { .. }
            | Error::WrongSourceType { .. }
            | Error::InvalidSourceImageName { .. } => ErrorKind::InvalidArgument,
            Error::UnknownSource { .. } | Error::UnknownSourceImage { .. } => ErrorKind::NotFound,
            Error::MissingToken { .. } => ErrorKind::InvalidArgument,
            Error::SourceExists { .. } => ErrorKind::AlreadyExists,
            Error::HasDependents { .. }
            | Error::OriginMissing { .. }
            | Error::NotConvertible { .. } => ErrorKind::FailedPrecondition,
            Error::PushDestination { .. } | Error::PushDigest { .. } => ErrorKind::InvalidArgument,
            Error::NameDigest { .. } => ErrorKind::InvalidArgument,
            Error::Artifact { .. } => ErrorKind::DataLoss,
            Error::Archive { source, .. } => source.kind(),
            Error::TerminalArchive { .. } => ErrorKind::InvalidArgument,
            Error::InArchive { source, .. } => source.kind(),
            Error::NotSaveable { .. } => ErrorKind::FailedPrecondition,
            Error::CorruptBlob { .. } => ErrorKind::DataLoss,
            Error::ArchiveOutput(error) => ErrorKind::of_io(error),
        }
    }

    /// A suggestion for the user.
    pub fn hint(&self) -> Option<String> {
        self.own_hint().or_else(|| {
            // Whatever was being written when the disk filled up.
            (self.kind() == ErrorKind::ResourceExhausted)
                .then(|| "free disk space (try `kiln prune`) and run the command again".to_string())
        })
    }

    fn own_hint(&self) -> Option<String> {
        match self {
            Error::Store(error) => error.hint(),
            Error::Rootfs(error) => error.hint(),
            Error::Layer { .. } => Some(
                "the layer is malformed or was made to escape the root filesystem: tell the image's publisher".into(),
            ),
            Error::Registry(error) => error.hint(),
            Error::Source(error) => error.hint(),
            Error::Credentials(error) => error.hint(),
            Error::UnknownSource { .. } => Some("`kiln sources ls` lists the sources; `kiln sources add NAME URL --type TYPE` adds one".into()),
            Error::SourceExists { name } => Some(format!("choose another name, or `kiln sources rm {name}` first")),
            Error::UnknownSourceImage { reference, .. } => Some(format!("`kiln avail {}` lists what the source offers", reference.split("://").next().unwrap_or_default())),
            Error::MissingToken { variable } => Some(format!("export {variable}=TOKEN, or remove token_env from the source (`kiln sources rm` and add it again)")),
            Error::HasDependents { .. } => Some("remove the dependent images first, or pass --force".into()),
            Error::OriginMissing { origin, .. } => Some(format!("install the origin first (`kiln pull SOURCE://{origin}` or `kiln install -m -f`)")),
            Error::InArchive { source, .. } => match source.as_ref() {
                Error::DiffIdMismatch { .. } | Error::LayerCount { .. } | Error::Decompress { .. } => {
                    Some("the archive is inconsistent; nothing was recorded from it".into())
                }
                other => other.hint(),
            },
            Error::PushDestination { .. } => Some("name the destination: `kiln push IMAGE REGISTRY/REPOSITORY:TAG`".into()),
            Error::PushDigest { .. } => Some("name the destination by tag, or by the image's own digest".into()),
            Error::NameDigest { .. } => Some("name it by a tag (REPOSITORY:TAG): a digest in a name must be the image's own".into()),
            Error::NotCached { reference } => Some(format!("run `kiln pull {reference}` while the registry is reachable")),
            Error::ImageNotFound { .. } => Some(
                "`kiln images` lists what the store holds; `kiln pull REF` fetches an image (`--rootfs FORMAT` also builds its root filesystem as it downloads)"
                    .into(),
            ),
            Error::DiskExists { .. } => Some("choose another name, or `kiln disk rm` the old disk first".into()),
            Error::DiskNotFound { .. } => Some("`kiln disk ls` lists the disks".into()),
            // QEMU's image locking: `Failed to get "write" lock`, or `shared "write" lock`.
            Error::DiskTool { detail, .. } if detail.contains("\"write\" lock") => Some(
                "a VM still has the disk open: stop it first".into(),
            ),
            Error::DiskTool { .. } => Some(
                "qemu-img is in the Debian package qemu-utils; raw disks (`disk create --format raw`) need none"
                    .into(),
            ),
            Error::DiskUnreadable { .. } => Some(
                "stop the VM using the disk first; if none is, `e2fsck -p` on the disk's path replays its journal"
                    .into(),
            ),
            Error::Ambiguous { .. } => Some("give more digest characters".into()),
            Error::PlatformNotFound { .. } => Some("choose one of the available platforms with --platform".into()),
            Error::PlatformMismatch { .. } => Some("drop --platform to accept the image as published".into()),
            Error::InUse { .. } => Some("remove the disks first (`kiln disk rm NAME`), or pass --force to remove only the name (the image stays for its disks)".into()),
            Error::MultipleNames { .. } => Some("remove it by name, or pass --force to remove every name".into()),
            Error::DiffIdMismatch { .. } | Error::LayerCount { .. } | Error::Decompress { .. } => {
                Some("the published image is inconsistent; nothing was recorded for it".into())
            }
            Error::UnsupportedMediaType { .. } | Error::Manifest { .. } => {
                Some("kiln pulls OCI and Docker schema 2 container images (gzip, zstd or uncompressed layers)".into())
            }
            Error::Archive { .. } => Some("nothing from the archive was recorded; kiln loads `docker save` archives and OCI image layouts in a tar (docs/archives.md)".into()),
            Error::TerminalArchive { stream: "stdout", .. } => Some("use -o FILE or redirect stdout".into()),
            Error::TerminalArchive { .. } => Some("use -i FILE or redirect stdin".into()),
            Error::ArchiveOutput(error) if ErrorKind::of_io(error) == ErrorKind::ResourceExhausted => Some(
                "free space where the archive goes, or write it elsewhere (-o PATH); the store is unchanged".into(),
            ),
            Error::CorruptBlob { .. } => {
                Some("run `kiln fsck --repair`, then pull the image again".into())
            }
            Error::NotSaveable { .. } => Some("`kiln save` writes OCI images; an image from a non-OCI source is published with `kiln push`".into()),
            _ => None,
        }
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
