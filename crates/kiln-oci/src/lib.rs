//! kiln's side of the OCI distribution protocol: fetch manifests and blobs
//! from any registry (Docker Hub, ghcr.io, CNCF distribution, Harbor, zot)
//! with the token and basic auth flows, TLS options, retries with backoff and
//! downloads that resume by themselves; plus layer diff_id computation.
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

pub use auth::{
    Anonymous, ChainedCredentials, Credential, CredentialProvider, DockerConfig, StaticCredentials,
};
pub use client::{
    BlobDownload, ClientOptions, FetchedManifest, MAX_MANIFEST_SIZE, NoObserver, RegistryClient,
    Repository, RetryObserver, RetryPolicy,
};
pub use error::{OciError, Result};
pub use layer::{DiffIdHasher, DiffIdSink, DiffIdWorker};
pub use login::LoginCheck;
