//! kiln's vocabulary: the types every other kiln crate speaks, with no I/O.
//!
//! Types validate when they are parsed, so a value that exists is a valid one:
//! a [`Digest`] always holds a well-formed `algorithm:hex` pair, a [`Reference`]
//! always names a registry, a repository and a tag or digest.
//!
//! ```
//! use kiln_types::{Digest, Reference};
//!
//! let reference: Reference = "alpine".parse().unwrap();
//! assert_eq!(reference.to_string(), "docker.io/library/alpine:latest");
//!
//! let digest = Digest::sha256_of(b"hello");
//! assert!(digest.to_string().starts_with("sha256:2cf24dba"));
//! ```

mod digest;
mod error;
pub mod manifest;
pub mod media_type;
mod platform;
mod reference;
mod source_reference;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use error::ErrorKind;
pub use manifest::{Descriptor, ImageConfig, ImageIndex, ImageManifest, Manifest, ManifestError};
pub use platform::{Platform, PlatformError};
pub use reference::{Reference, ReferenceError};
pub use source_reference::{SourceReference, SourceReferenceError, validate_source_name};
