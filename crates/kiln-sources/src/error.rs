use kiln_types::ErrorKind;

/// A failure reading a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Connection-level failure after retries.
    #[error("cannot reach {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// A retryable status kept coming back.
    #[error("{url} still failing after {attempts} attempts: {last}")]
    RetriesExhausted {
        url: String,
        attempts: u32,
        last: String,
    },
    /// An unexpected status.
    #[error("{url} answered {status}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Status {
        url: String,
        status: u16,
        message: Option<String>,
    },
    /// The thing asked for does not exist at the source.
    #[error("{what} not found ({url})")]
    NotFound { what: String, url: String },
    /// Access refused.
    #[error("{url} refused access ({status})")]
    Denied { url: String, status: u16 },
    /// A document larger than any sane one.
    #[error("{what} is larger than {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    /// A document that does not parse.
    #[error("{what} is malformed: {detail}")]
    Malformed { what: String, detail: String },
    /// A document that parses but breaks the rules.
    #[error("{what}: {detail}")]
    Invalid { what: String, detail: String },
    /// A manifest schema version kiln does not know.
    #[error("unsupported manifest schema_version {found} in {what} (kiln supports {})", supported.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "))]
    UnsupportedSchema {
        what: String,
        found: u64,
        supported: Vec<u64>,
    },
    /// The source has nothing for this architecture.
    #[error("{what} has no artifacts for architecture {arch} (it has: {})", if available.is_empty() { "none".to_string() } else { available.join(", ") })]
    NoArchitecture {
        what: String,
        arch: String,
        available: Vec<String>,
    },
    /// Bytes received differ from the published size.
    #[error("{what}: size mismatch: published {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    /// Bytes received differ from the published checksum.
    #[error("{what} does not match its published {algorithm}: expected {expected}, got {actual}")]
    ChecksumMismatch {
        what: String,
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
    /// The config file cannot be used.
    #[error("config file {path}: {detail}")]
    Config { path: String, detail: String },
    /// Local I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl SourceError {
    /// The category of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SourceError::Unreachable { .. } | SourceError::RetriesExhausted { .. } => {
                ErrorKind::Unavailable
            }
            SourceError::Status { status, .. } if *status >= 500 || *status == 429 => {
                ErrorKind::Unavailable
            }
            SourceError::Status { .. } => ErrorKind::InvalidArgument,
            SourceError::NotFound { .. } | SourceError::NoArchitecture { .. } => {
                ErrorKind::NotFound
            }
            SourceError::Denied { .. } => ErrorKind::PermissionDenied,
            SourceError::TooLarge { .. }
            | SourceError::SizeMismatch { .. }
            | SourceError::ChecksumMismatch { .. } => ErrorKind::DataLoss,
            SourceError::Malformed { .. } | SourceError::Invalid { .. } => {
                ErrorKind::InvalidArgument
            }
            SourceError::UnsupportedSchema { .. } => ErrorKind::FailedPrecondition,
            SourceError::Config { .. } => ErrorKind::InvalidArgument,
            SourceError::Io(error) => ErrorKind::of_io(error),
        }
    }

    /// A suggestion for the user.
    pub fn hint(&self) -> Option<String> {
        match self {
            SourceError::Unreachable { .. } => {
                Some("check the source's URL (`kiln sources ls`) and your network".into())
            }
            SourceError::RetriesExhausted { .. } => {
                Some("the server is overloaded or failing; try again later".into())
            }
            SourceError::NotFound { .. } => {
                Some("`kiln avail SOURCE` lists what the source offers".into())
            }
            SourceError::Denied { .. } => Some(
                "set a token for the source (`kiln sources add ... --token-env VAR`) or check the URL"
                    .into(),
            ),
            SourceError::UnsupportedSchema { .. } => {
                Some("upgrade kiln to a version that reads this manifest".into())
            }
            SourceError::NoArchitecture { .. } => {
                Some("pick another release, or pass --platform for another architecture".into())
            }
            SourceError::SizeMismatch { .. }
            | SourceError::ChecksumMismatch { .. }
            | SourceError::TooLarge { .. } => Some(
                "the source served different bytes than it published; nothing was stored, try again or report it to the publisher"
                    .into(),
            ),
            SourceError::Config { .. } => {
                Some("fix the file by hand or remove it to get the built-in sources back".into())
            }
            _ => None,
        }
    }
}

/// Result alias.
pub type Result<T, E = SourceError> = std::result::Result<T, E>;
