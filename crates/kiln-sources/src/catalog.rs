//! Checksum catalogs: a JSON or TOML file of named images whose kernel,
//! rootfs and optional initrd carry SHA-256 or SHA-512 (the smolvm
//! `ImageManager` model). The schema is strict: unknown fields are refused.
//! Documented for users in `docs/sources.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::checksum::Checksum;
use crate::error::{Result, SourceError};
use crate::http::Location;

/// The catalog schema version this kiln reads.
pub const CATALOG_VERSION: u32 = 1;

/// Largest catalog file read.
pub const MAX_CATALOG: u64 = 16 << 20;

/// A catalog file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogFile {
    /// Schema version (1).
    pub version: u32,
    /// Images by name.
    pub images: BTreeMap<String, CatalogImage>,
}

/// One named image.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogImage {
    /// What it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Files per architecture (`x86_64`, `aarch64`).
    pub architectures: BTreeMap<String, CatalogArch>,
}

/// The files of one architecture.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogArch {
    /// The kernel.
    pub kernel: CatalogEntryFile,
    /// The root filesystem.
    pub rootfs: CatalogEntryFile,
    /// An initial ramdisk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<CatalogEntryFile>,
    /// Kernel command line for this architecture (overrides the image's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// A file with its checksum.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntryFile {
    /// Absolute, or relative to the catalog.
    pub url: String,
    /// SHA-256 hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// SHA-512 hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha512: Option<String>,
    /// Size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

impl CatalogEntryFile {
    /// Its one checksum.
    pub fn checksum(&self) -> Checksum {
        // Validated when the catalog was parsed; an empty value never matches.
        let parsed = match (&self.sha256, &self.sha512) {
            (Some(hex), _) => Checksum::parse("sha256", hex),
            (None, Some(hex)) => Checksum::parse("sha512", hex),
            (None, None) => Err(String::new()),
        };
        parsed.unwrap_or_else(|_| Checksum::Sha256(String::new()))
    }
}

impl CatalogFile {
    /// Parses a catalog; `toml` picks the syntax; `what` names it in errors.
    pub fn parse(bytes: &[u8], toml: bool, what: &str) -> Result<CatalogFile> {
        let malformed = |detail: String| SourceError::Malformed {
            what: format!("catalog {what}"),
            detail,
        };
        let catalog: CatalogFile = if toml {
            let text = std::str::from_utf8(bytes).map_err(|e| malformed(e.to_string()))?;
            toml::from_str(text).map_err(|e| malformed(e.message().to_string()))?
        } else {
            serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?
        };
        let invalid = |detail: String| SourceError::Invalid {
            what: format!("catalog {what}"),
            detail,
        };
        if catalog.version != CATALOG_VERSION {
            return Err(invalid(format!(
                "version {} is not supported (this kiln reads version {CATALOG_VERSION}); upgrade kiln",
                catalog.version
            )));
        }
        for (name, image) in &catalog.images {
            kiln_types::SourceReference::new("x", name, None)
                .map_err(|_| invalid(format!("image name {name:?} is not a valid name")))?;
            if name.is_empty() {
                return Err(invalid("an image name is empty".into()));
            }
            if image.architectures.is_empty() {
                return Err(invalid(format!("image {name}: architectures is empty")));
            }
            for (arch, files) in &image.architectures {
                let mut all = vec![("kernel", &files.kernel), ("rootfs", &files.rootfs)];
                if let Some(initrd) = &files.initrd {
                    all.push(("initrd", initrd));
                }
                for (role, file) in all {
                    let place = format!("image {name}, {arch} {role}");
                    if file.url.trim().is_empty() {
                        return Err(invalid(format!("{place}: url is empty")));
                    }
                    match (&file.sha256, &file.sha512) {
                        (Some(hex), None) => Checksum::parse("sha256", hex),
                        (None, Some(hex)) => Checksum::parse("sha512", hex),
                        (None, None) => Err("needs a sha256 or a sha512".to_string()),
                        (Some(_), Some(_)) => {
                            Err("has both sha256 and sha512: give exactly one".to_string())
                        }
                    }
                    .map_err(|detail| invalid(format!("{place}: {detail}")))?;
                }
            }
        }
        Ok(catalog)
    }

    /// Whether a catalog at `location` is TOML (by its name).
    pub fn is_toml(location: &Location) -> bool {
        let text = match location {
            Location::Url(url) => url.path().to_string(),
            Location::Path(path) => path.display().to_string(),
        };
        text.ends_with(".toml")
    }

    /// Image names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.images.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA256: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn parses_json_and_toml() {
        let json = format!(
            r#"{{"version":1,"images":{{"hello":{{"boot_args":"console=ttyS0","architectures":{{"x86_64":{{"kernel":{{"url":"k","sha256":"{SHA256}","size":5}},"rootfs":{{"url":"r","sha512":"{}"}}}}}}}}}}}}"#,
            "a".repeat(128)
        );
        let catalog = CatalogFile::parse(json.as_bytes(), false, "c").unwrap();
        assert_eq!(catalog.names(), ["hello"]);
        let toml_text = format!(
            "version = 1\n[images.hello.architectures.x86_64.kernel]\nurl = \"k\"\nsha256 = \"{SHA256}\"\n[images.hello.architectures.x86_64.rootfs]\nurl = \"r\"\nsha256 = \"{SHA256}\"\n"
        );
        let catalog = CatalogFile::parse(toml_text.as_bytes(), true, "c").unwrap();
        assert_eq!(
            catalog.images["hello"].architectures["x86_64"]
                .rootfs
                .checksum(),
            Checksum::Sha256(SHA256.into())
        );
    }

    #[test]
    fn is_strict() {
        let file = format!(r#"{{"url":"k","sha256":"{SHA256}"}}"#);
        let with = |kernel: &str, extra: &str| {
            format!(
                r#"{{"version":1,"images":{{"hello":{{{extra}"architectures":{{"x86_64":{{"kernel":{kernel},"rootfs":{file}}}}}}}}}}}"#
            )
        };
        let cases = [
            (with(&file, r#""colour":"red","#), "colour"),
            (with(r#"{"url":"k"}"#, ""), "sha256 or a sha512"),
            (with(r#"{"url":"k","sha256":"abc"}"#, ""), "64 hex"),
            (
                with(
                    &format!(
                        r#"{{"url":"k","sha256":"{SHA256}","sha512":"{}"}}"#,
                        "a".repeat(128)
                    ),
                    "",
                ),
                "exactly one",
            ),
            (
                with(&format!(r#"{{"url":"","sha256":"{SHA256}"}}"#), ""),
                "url is empty",
            ),
            (r#"{"version":2,"images":{}}"#.to_string(), "version 2"),
        ];
        for (text, expected) in cases {
            let error = CatalogFile::parse(text.as_bytes(), false, "c")
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
