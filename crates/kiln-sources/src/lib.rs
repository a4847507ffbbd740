//! kiln's non-OCI image sources: release bundles published as GitHub
//! release assets, checksum catalogs, IMGAPI image servers, and the config
//! file that names them. This crate reads sources; it never touches the
//! store or the catalog — the facade (`kiln`) streams what it fetches into
//! the store. [`archive`] reads and writes image archives (`docker save`,
//! OCI layouts in a tar) the same way: streamed entries, no store.
//!
//! ```no_run
//! # async fn example() -> kiln_sources::Result<()> {
//! use kiln_oci::NoObserver;
//! use kiln_sources::{FetchOptions, Fetcher, github::Releases};
//!
//! let fetcher = Fetcher::new(&FetchOptions::default())?;
//! let releases = Releases::new(&fetcher, "https://api.github.com", "slok/sbx-images")?;
//! for release in releases.list(&NoObserver).await? {
//!     println!("{}", release.tag_name);
//! }
//! # Ok(()) }
//! ```

pub mod archive;
pub mod catalog;
pub mod checksum;
pub mod config;
mod error;
pub mod github;
pub mod http;
pub mod imgapi;

pub use checksum::{Checksum, Hashes, MultiHasher};
pub use config::RegistryConfig;
pub use config::{Config, SourceConfig, SourceType};
pub use error::{Result, SourceError};
pub use http::{Download, FetchOptions, Fetcher, Location};
