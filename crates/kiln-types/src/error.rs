/// The category of a failure, shared by every kiln crate.
///
/// Frontends derive what they show from the kind, never from message text:
/// the CLI's exit code, a future HTTP status, a future Python exception class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The thing asked for does not exist (image, tag, blob, manifest).
    NotFound,
    /// The thing to create exists already.
    AlreadyExists,
    /// The caller gave bad input (reference, platform, flag, file content).
    InvalidArgument,
    /// The request is valid but the current state forbids it (image in use).
    FailedPrecondition,
    /// Credentials were missing or refused.
    PermissionDenied,
    /// A remote or local resource could not be reached; retrying later may work.
    Unavailable,
    /// Data did not match what was published (digest, size, schema).
    DataLoss,
    /// A local resource ran out (disk full).
    ResourceExhausted,
    /// A bug or an environment kiln does not handle.
    Internal,
}

impl ErrorKind {
    /// Whether the failure is the user's to fix (bad input, missing thing)
    /// rather than something unexpected.
    pub fn is_user_error(self) -> bool {
        !matches!(self, ErrorKind::Internal)
    }

    /// A short lowercase name, stable for `--format json` output.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::FailedPrecondition => "failed_precondition",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::DataLoss => "data_loss",
            ErrorKind::ResourceExhausted => "resource_exhausted",
            ErrorKind::Internal => "internal",
        }
    }

    /// The kind of an I/O error: a full disk is exhausted, a missing file is
    /// not found, the rest is unexpected.
    pub fn of_io(error: &std::io::Error) -> ErrorKind {
        use std::io::ErrorKind as Io;
        match error.kind() {
            Io::NotFound => ErrorKind::NotFound,
            Io::AlreadyExists => ErrorKind::AlreadyExists,
            Io::PermissionDenied => ErrorKind::PermissionDenied,
            Io::StorageFull | Io::QuotaExceeded | Io::FileTooLarge => ErrorKind::ResourceExhausted,
            _ => ErrorKind::Internal,
        }
    }
}
