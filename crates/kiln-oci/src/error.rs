use kiln_types::{Digest, ErrorKind, ManifestError};

/// A failure talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// Connection-level failure (refused, reset, TLS, timeout) after retries.
    #[error("cannot reach registry {host}: {detail}")]
    Unreachable { host: String, detail: String },
    /// The registry answered with an unexpected status.
    #[error("registry {host} answered {status} for {what}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Status {
        host: String,
        status: u16,
        what: String,
        message: Option<String>,
    },
    /// The manifest or blob does not exist.
    #[error("{what} not found on {host}")]
    NotFound { host: String, what: String },
    /// Credentials missing or refused.
    #[error("registry {host} refused access to {what} ({status}){}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Denied {
        host: String,
        status: u16,
        what: String,
        message: Option<String>,
    },
    /// The registry kept failing with retryable errors.
    #[error("registry {host} still failing after {attempts} attempts for {what}: {last}")]
    RetriesExhausted {
        host: String,
        what: String,
        attempts: u32,
        last: String,
    },
    /// Content did not match its digest.
    #[error("{what} from {host} does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch {
        host: String,
        what: String,
        expected: Digest,
        actual: Digest,
    },
    /// A document too large to be what it claims to be.
    #[error("{what} from {host} is larger than {limit} bytes")]
    TooLarge {
        host: String,
        what: String,
        limit: u64,
    },
    /// A manifest kiln cannot read.
    #[error("manifest {what} from {host}: {source}")]
    Manifest {
        host: String,
        what: String,
        #[source]
        source: ManifestError,
    },
    /// The token endpoint gave no usable token.
    #[error("token service {realm} for {host}: {detail}")]
    Token {
        host: String,
        realm: String,
        detail: String,
    },
    /// A CA bundle could not be loaded.
    #[error("CA certificates {path}: {detail}")]
    CaCerts { path: String, detail: String },
    /// A credential helper or docker config failed.
    #[error("credentials for {host}: {detail}")]
    Credentials { host: String, detail: String },
    /// A credential source failed (a file others can read, a variable that
    /// is not set); its message never holds a secret.
    #[error("credentials for {host}: {source}")]
    CredentialSource {
        host: String,
        kind: ErrorKind,
        hint: Option<String>,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Building the HTTP client failed.
    #[error("HTTP client setup: {0}")]
    Client(String),
    /// Local I/O (CA file).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl OciError {
    /// The category of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            OciError::Unreachable { .. } | OciError::RetriesExhausted { .. } => {
                ErrorKind::Unavailable
            }
            OciError::Status { status, .. } if *status >= 500 || *status == 429 => {
                ErrorKind::Unavailable
            }
            OciError::Status { .. } => ErrorKind::InvalidArgument,
            OciError::NotFound { .. } => ErrorKind::NotFound,
            OciError::Denied { .. } | OciError::Token { .. } | OciError::Credentials { .. } => {
                ErrorKind::PermissionDenied
            }
            OciError::DigestMismatch { .. } | OciError::TooLarge { .. } => ErrorKind::DataLoss,
            OciError::Manifest { .. } => ErrorKind::InvalidArgument,
            OciError::CaCerts { .. } => ErrorKind::InvalidArgument,
            OciError::CredentialSource { kind, .. } => *kind,
            OciError::Client(_) => ErrorKind::Internal,
            OciError::Io(error) => ErrorKind::of_io(error),
        }
    }

    /// A suggestion for the user.
    pub fn hint(&self) -> Option<String> {
        match self {
            OciError::Unreachable { host, detail } if detail.contains("certificate") || detail.contains("tls") || detail.contains("TLS") => Some(format!(
                "if {host} uses a private CA pass --ca-certs FILE.pem; for a test registry without TLS pass --insecure"
            )),
            OciError::Unreachable { .. } => Some("check the registry address and your network; cached images still work with --policy missing".into()),
            OciError::RetriesExhausted { .. } => Some("the registry is overloaded or failing; try again later".into()),
            OciError::NotFound { .. } => Some("check the repository name and tag (`kiln pull` takes docker-style references)".into()),
            OciError::Denied { host, .. } | OciError::Token { host, .. } => {
                Some(format!("log in with `kiln login {host}` (kiln also reads its config file and docker's config.json and credential helpers), or check that the repository exists"))
            }
            OciError::DigestMismatch { .. } => Some("the registry served corrupt data; nothing was stored, try again".into()),
            OciError::Manifest { .. } => Some("kiln pulls OCI and Docker schema 2 images; check the reference".into()),
            OciError::CredentialSource { hint, .. } => hint.clone(),
            _ => None,
        }
    }
}

/// Result alias.
pub type Result<T, E = OciError> = std::result::Result<T, E>;
