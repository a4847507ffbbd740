//! The JSON documents of the OCI image spec (and Docker schema 2, which has the
//! same shape): descriptors, manifests, indexes and image configs.
//!
//! These types only read what kiln uses; unknown fields are ignored on parse.
//! kiln never re-serializes them for storage: the original bytes are the blob.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::media_type::{self, ManifestKind};
use crate::platform::Platform;

/// Why a manifest, index or config document was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not valid JSON for the expected document.
    #[error("malformed {what}: {source}")]
    Malformed {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A media type kiln does not handle.
    #[error("unsupported media type {media_type:?} for {what}")]
    UnsupportedMediaType {
        what: &'static str,
        media_type: String,
    },
    /// A schema version other than 2.
    #[error("unsupported manifest schemaVersion {0} (kiln reads schemaVersion 2)")]
    SchemaVersion(u32),
}

/// A content descriptor: what a blob is, its digest and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type of the referenced content.
    pub media_type: String,
    /// The digest of the referenced content.
    pub digest: Digest,
    /// The size in bytes of the referenced content.
    pub size: u64,
    /// Platform of an index entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Alternate download locations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Artifact type of the referenced manifest (OCI 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    /// A descriptor of `media_type`, `digest` and `size`, with no platform,
    /// URLs, annotations or artifact type.
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            platform: None,
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            artifact_type: None,
        }
    }
}

/// An image manifest: one config and ordered layers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when the document states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Artifact type (OCI 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The image config blob.
    pub config: Descriptor,
    /// Layer blobs, base first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// Manifest this one refers to (OCI 1.1 referrers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index / manifest list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when the document states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// One descriptor per manifest.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The runtime part of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RuntimeConfig {
    /// User (name or uid[:gid]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Environment, `KEY=value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Signal that stops the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Exposed ports (`"80/tcp": {}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    /// Volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
}

/// The root filesystem section of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Digests of the uncompressed layer tars, base first.
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

/// An image config document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Creation time, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// CPU architecture.
    #[serde(default)]
    pub architecture: String,
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// CPU variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Runtime defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<RuntimeConfig>,
    /// Layer diff_ids.
    #[serde(default)]
    pub rootfs: RootFs,
}

impl ImageConfig {
    /// Parses config bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<ImageConfig, ManifestError> {
        serde_json::from_slice(bytes).map_err(|source| ManifestError::Malformed {
            what: "image config",
            source,
        })
    }

    /// The platform the config declares.
    pub fn platform(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone(),
        }
    }
}

/// A parsed manifest document of either kind.
#[derive(Debug, Clone)]
pub enum Manifest {
    /// An image manifest.
    Image(ImageManifest),
    /// An index or manifest list.
    Index(ImageIndex),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

impl Manifest {
    /// Parses manifest bytes; `content_type` is what the registry said (may be
    /// empty), the document's own `mediaType` wins when present.
    pub fn parse(bytes: &[u8], content_type: &str) -> Result<(Manifest, String), ManifestError> {
        let probe: Probe =
            serde_json::from_slice(bytes).map_err(|source| ManifestError::Malformed {
                what: "manifest",
                source,
            })?;
        let media_type = match (&probe.media_type, content_type) {
            (Some(declared), _) => declared.clone(),
            (None, given) if media_type::manifest_kind(given).is_some() => given.to_string(),
            // OCI documents may omit mediaType: infer from the shape.
            (None, _) if probe.manifests.is_some() => media_type::OCI_INDEX.to_string(),
            (None, _) if probe.config.is_some() => media_type::OCI_MANIFEST.to_string(),
            (None, given) => given.to_string(),
        };
        let Some(kind) = media_type::manifest_kind(&media_type) else {
            return Err(ManifestError::UnsupportedMediaType {
                what: "manifest",
                media_type,
            });
        };
        let version = probe.schema_version.unwrap_or(0);
        if version != 2 {
            return Err(ManifestError::SchemaVersion(version));
        }
        let manifest = match kind {
            ManifestKind::Image => {
                Manifest::Image(serde_json::from_slice(bytes).map_err(|source| {
                    ManifestError::Malformed {
                        what: "image manifest",
                        source,
                    }
                })?)
            }
            ManifestKind::Index => {
                Manifest::Index(serde_json::from_slice(bytes).map_err(|source| {
                    ManifestError::Malformed {
                        what: "image index",
                        source,
                    }
                })?)
            }
        };
        Ok((manifest, media_type))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn parses_docker_schema2_and_oci() {
        let docker = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{CONFIG}","size":7}},"layers":[{{"mediaType":"{}","digest":"{CONFIG}","size":9}}]}}"#,
            media_type::DOCKER_MANIFEST,
            media_type::DOCKER_CONFIG,
            media_type::DOCKER_LAYER_GZIP
        );
        let (manifest, media_type) = Manifest::parse(docker.as_bytes(), "").unwrap();
        assert_eq!(media_type, media_type::DOCKER_MANIFEST);
        let Manifest::Image(image) = manifest else {
            panic!("expected an image manifest")
        };
        assert_eq!(image.layers.len(), 1);
        assert_eq!(image.config.size, 7);

        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{CONFIG}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
            media_type::OCI_MANIFEST
        );
        let (manifest, media_type) = Manifest::parse(index.as_bytes(), "application/json").unwrap();
        assert_eq!(media_type, media_type::OCI_INDEX);
        let Manifest::Index(index) = manifest else {
            panic!("expected an index")
        };
        assert_eq!(
            index.manifests[0].platform.as_ref().unwrap().to_string(),
            "linux/arm64/v8"
        );
    }

    #[test]
    fn refuses_what_it_cannot_pull() {
        let schema1 = br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
        assert!(
            Manifest::parse(schema1, media_type::DOCKER_SCHEMA1_SIGNED)
                .unwrap_err()
                .to_string()
                .contains("unsupported media type")
        );
        let odd = br#"{"schemaVersion":2,"mediaType":"application/x-other"}"#;
        assert!(Manifest::parse(odd, "").is_err());
        assert!(
            Manifest::parse(b"not json", "")
                .unwrap_err()
                .to_string()
                .contains("malformed manifest")
        );
        let v3 = br#"{"schemaVersion":3,"manifests":[]}"#;
        assert!(
            Manifest::parse(v3, "")
                .unwrap_err()
                .to_string()
                .contains("schemaVersion 3")
        );
    }
}
