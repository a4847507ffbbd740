use std::path::PathBuf;

use kiln_types::{Digest, ErrorKind};

/// A failure of the content store or the catalog.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed (the path is in the message).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The catalog database failed.
    #[error("catalog {path}: {source}")]
    Catalog {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The catalog was written by a newer kiln.
    #[error(
        "catalog {path} has schema version {found}, newer than this kiln understands ({supported})"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    /// Content did not hash to the digest it was stored or published under.
    #[error("digest mismatch for {expected}: content hashes to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    /// Content had another size than published.
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    /// A blob the catalog names is missing from disk.
    #[error("blob {0} is not in the store")]
    BlobNotFound(Digest),
    /// A catalog row holds a value kiln cannot read back.
    #[error("catalog {path}: corrupt value {value:?} in {column}")]
    CorruptRow {
        path: PathBuf,
        column: &'static str,
        value: String,
    },
}

impl StoreError {
    /// The category of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Io(error) => ErrorKind::of_io(error),
            StoreError::Catalog { source, .. } => match source {
                rusqlite::Error::SqliteFailure(code, _)
                    if code.code == rusqlite::ErrorCode::DiskFull =>
                {
                    ErrorKind::ResourceExhausted
                }
                rusqlite::Error::SqliteFailure(code, _)
                    if matches!(
                        code.code,
                        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                    ) =>
                {
                    ErrorKind::Unavailable
                }
                _ => ErrorKind::Internal,
            },
            StoreError::SchemaTooNew { .. } => ErrorKind::FailedPrecondition,
            StoreError::DigestMismatch { .. }
            | StoreError::SizeMismatch { .. }
            | StoreError::CorruptRow { .. } => ErrorKind::DataLoss,
            StoreError::BlobNotFound(_) => ErrorKind::NotFound,
        }
    }

    /// A suggestion for the user, when there is one.
    pub fn hint(&self) -> Option<String> {
        match self {
            StoreError::SchemaTooNew { .. } => {
                Some("upgrade kiln, or point --root at another directory".into())
            }
            StoreError::BlobNotFound(_) | StoreError::CorruptRow { .. } => {
                Some("run `kiln fsck --repair`, then pull the image again".into())
            }
            StoreError::Io(_) if self.kind() == ErrorKind::ResourceExhausted => {
                Some("free disk space (try `kiln prune`) and run the command again".into())
            }
            _ => None,
        }
    }
}

/// Result alias for the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
