//! kiln's side of the OCI distribution protocol: fetch manifests and blobs
//! from any registry (Docker Hub, ghcr.io, CNCF distribution, Harbor, zot)
//! with the token and basic auth flows, TLS options, retries with backoff and
//! downloads that resume by themselves; push blobs (existence checks,
//! cross-repository mounts, monolithic and chunked uploads) and manifests;
//! the OCI 1.1 referrers API and its tag schema; plus layer diff_id
//! computation.
//!
//! The client knows nothing of the store: the facade streams what it fetches
//! into the store.
//!
//! ```no_run
//! # async fn example() -> Result<(), kiln_oci::OciError> {
//! use kiln_oci::{ClientOptions, NoObserver, RegistryClient};
//!
//! let client = RegistryClient::new(ClientOptions::default());
//! let reference = "alpine:3.20".parse().unwrap();
//! let manifest = client.fetch_manifest(&reference, "3.20", &NoObserver).await?;
//! println!("{}", manifest.digest);
//! # Ok(()) }
//! ```

pub mod auth;
mod client;
mod error;
pub mod http;
pub mod layer;
mod login;
mod upload;

pub use auth::{
    Anonymous, ChainedCredentials, Credential, CredentialProvider, DockerConfig, StaticCredentials,
};
pub use client::{
    BlobDownload, ClientOptions, FetchedManifest, MAX_MANIFEST_SIZE, NoObserver, RegistryClient,
    Repository, RetryObserver, RetryPolicy,
};
pub use error::{OciError, Result};
pub use layer::{DiffIdHasher, DiffIdSink, DiffIdWorker, Tee};
pub use login::LoginCheck;
pub use upload::{
    BlobSource, Mount, PushedManifest, UploadProgress, UploadSession, empty_index,
    referrer_descriptor, referrers_tag,
};
