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
    /// Local I/O (object store, output file).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl RootfsError {
    /// The category of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RootfsError::Entry { .. } | RootfsError::Tar { .. } => ErrorKind::InvalidArgument,
            RootfsError::Io(error) => ErrorKind::of_io(error),
        }
    }
}

/// Result alias.
pub type Result<T, E = RootfsError> = std::result::Result<T, E>;
