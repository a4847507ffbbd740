use kiln_types::ErrorKind;

/// A failure while building a root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A layer entry kiln refuses (path escape, bad link, malformed header).
    #[error("layer {layer}, entry {entry:?}: {reason}")]
    Entry {
        layer: usize,
        entry: String,
        reason: String,
    },
    /// The layer tar itself is unreadable.
    #[error("layer {layer}: malformed tar: {source}")]
    Tar {
        layer: usize,
        #[source]
        source: std::io::Error,
    },
    /// The requested image size cannot hold the content.
    #[error("the content does not fit in an ext4 image of {size} bytes")]
    TooSmall { size: u64, needed: u64 },
    /// The tree holds something the output format cannot carry.
    #[error("{path}: cannot be written: {reason}")]
    Unrepresentable { path: String, reason: String },
    /// A diff would store more file data than the filesystem it reads can
    /// hold (sparse files: a layer stores files in full).
    #[error(
        "{path}: its {size} bytes bring the files to store to {total} bytes, more than the \
         disk's {capacity} bytes (a sparse file? a layer stores files in full)"
    )]
    DiffTooLarge {
        path: String,
        size: u64,
        total: u64,
        capacity: u64,
    },
    /// Local I/O (object store, output file).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl RootfsError {
    /// The category of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RootfsError::Entry { .. } | RootfsError::Tar { .. } => ErrorKind::InvalidArgument,
            RootfsError::Unrepresentable { .. } | RootfsError::TooSmall { .. } => {
                ErrorKind::InvalidArgument
            }
            RootfsError::DiffTooLarge { .. } => ErrorKind::FailedPrecondition,
            RootfsError::Io(error) => ErrorKind::of_io(error),
        }
    }
}

impl RootfsError {
    /// The index of the layer at fault (base first), when one is.
    pub fn layer(&self) -> Option<usize> {
        match self {
            RootfsError::Entry { layer, .. } | RootfsError::Tar { layer, .. } => Some(*layer),
            _ => None,
        }
    }

    /// A suggestion for the user.
    pub fn hint(&self) -> Option<String> {
        match self {
            RootfsError::TooSmall { needed, .. } => Some(format!(
                "pass a larger --size (kiln's default for this image is {}M), or leave --size out",
                needed >> 20
            )),
            RootfsError::DiffTooLarge { .. } => Some(
                "remove that file or make it smaller inside the sandbox, then snapshot again"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// Result alias.
pub type Result<T, E = RootfsError> = std::result::Result<T, E>;
