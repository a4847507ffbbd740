//! Release bundles published as GitHub release assets (the sbx image model):
//! the releases API, the bundle `manifest.json`, published checksums, and
//! the firecracker release archive.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use kiln_oci::RetryObserver;
use reqwest::Url;
use reqwest::header::{HeaderMap, LINK};
use serde::{Deserialize, Serialize};

use crate::checksum::Checksum;
use crate::error::{Result, SourceError};
use crate::http::{Fetcher, Location};

/// Manifest `schema_version`s this kiln reads.
pub const SUPPORTED_SCHEMA_VERSIONS: &[u64] = &[1];

/// Largest `manifest.json` or checksums file read.
pub const MAX_DOCUMENT: u64 = 1 << 20;

/// Largest releases page read.
const MAX_PAGE: u64 = 32 << 20;

/// Most release pages followed.
const MAX_PAGES: usize = 1000;

/// Largest VMM binary extracted from a release archive.
pub const MAX_VMM_BINARY: u64 = 512 << 20;

/// Media type of octet-stream asset downloads.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// A release, as the REST API describes it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Release {
    /// Release id.
    pub id: u64,
    /// Its tag: the bundle's version.
    pub tag_name: String,
    /// Title.
    #[serde(default)]
    pub name: Option<String>,
    /// Draft releases are skipped.
    #[serde(default)]
    pub draft: bool,
    /// Pre-release flag.
    #[serde(default)]
    pub prerelease: bool,
    /// Publication time.
    #[serde(default)]
    pub published_at: Option<String>,
    /// Its files.
    #[serde(default)]
    pub assets: Vec<Asset>,
}

/// A release asset.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Asset {
    /// Asset id.
    pub id: u64,
    /// File name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// API URL (answers the bytes with `Accept: application/octet-stream`).
    pub url: String,
    /// Public download URL.
    #[serde(default)]
    pub browser_download_url: Option<String>,
    /// `sha256:…` when GitHub computed it.
    #[serde(default)]
    pub digest: Option<String>,
}

impl Release {
    /// The asset called `name`.
    pub fn asset(&self, name: &str) -> Option<&Asset> {
        self.assets.iter().find(|a| a.name == name)
    }
}

/// A repository's releases through the REST API.
pub struct Releases<'f> {
    fetcher: &'f Fetcher,
    api: Url,
    repo: String,
}

impl<'f> Releases<'f> {
    /// Releases of `repo` (`OWNER/NAME`) at API base `api`.
    pub fn new(fetcher: &'f Fetcher, api: &str, repo: &str) -> Result<Releases<'f>> {
        let mut api = Url::parse(api).map_err(|e| SourceError::Invalid {
            what: format!("API URL {api:?}"),
            detail: e.to_string(),
        })?;
        if !api.path().ends_with('/') {
            let path = format!("{}/", api.path());
            api.set_path(&path);
        }
        Ok(Releases {
            fetcher,
            api,
            repo: repo.to_string(),
        })
    }

    /// The repository.
    pub fn repo(&self) -> &str {
        &self.repo
    }

    fn url(&self, path: &str) -> Result<Url> {
        self.api.join(path).map_err(|e| SourceError::Invalid {
            what: format!("API path {path:?}"),
            detail: e.to_string(),
        })
    }

    /// Every published release (drafts skipped), newest first, following
    /// the API's `Link: rel="next"` pages.
    pub async fn list(&self, observer: &dyn RetryObserver) -> Result<Vec<Release>> {
        let mut next = Some(Location::Url(
            self.url(&format!("repos/{}/releases?per_page=100", self.repo))?,
        ));
        let mut releases = Vec::new();
        let mut pages = 0;
        while let Some(location) = next.take() {
            pages += 1;
            if pages > MAX_PAGES {
                break;
            }
            let what = format!("releases of {} (page {pages})", self.repo);
            let (page, headers): (Vec<Release>, HeaderMap) = self
                .fetcher
                .get_json(&location, MAX_PAGE, &what, observer)
                .await?;
            let empty = page.is_empty();
            releases.extend(page.into_iter().filter(|r| !r.draft));
            if !empty {
                next = next_link(&headers).map(Location::Url);
            }
        }
        Ok(releases)
    }

    /// The release tagged `tag`.
    pub async fn release(&self, tag: &str, observer: &dyn RetryObserver) -> Result<Release> {
        let mut url = self.url(&format!("repos/{}/releases/tags/", self.repo))?;
        // The tag is one path segment, escaped (`?`, `#`, `%` stay in it).
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push(tag);
        }
        let location = Location::Url(url);
        let what = format!("release {tag} of {}", self.repo);
        let (release, _): (Release, _) = self
            .fetcher
            .get_json(&location, MAX_PAGE, &what, observer)
            .await?;
        Ok(release)
    }

    /// Where an asset's bytes come from (its API URL, which redirects to
    /// storage; the token stays with the API host). Never a local file.
    pub fn asset_location(&self, asset: &Asset) -> Result<Location> {
        let url = Url::parse(&asset.url).map_err(|e| SourceError::Invalid {
            what: format!("URL of asset {}", asset.name),
            detail: e.to_string(),
        })?;
        Location::remote(url)
    }

    /// A small asset, whole.
    pub async fn asset_bytes(
        &self,
        asset: &Asset,
        observer: &dyn RetryObserver,
    ) -> Result<bytes::Bytes> {
        let what = format!("{} of {}", asset.name, self.repo);
        let (bytes, _) = self
            .fetcher
            .get(
                &self.asset_location(asset)?,
                Some(OCTET_STREAM),
                MAX_DOCUMENT,
                &what,
                observer,
            )
            .await?;
        Ok(bytes)
    }

    /// The SHA-256 the release publishes for `asset`: the asset's `digest`
    /// field, an `ASSET.sha256`/`ASSET.sha256.txt` asset, or a release-wide
    /// `SHA256SUMS`/`sha256sums.txt`/`checksums.txt`. A published value that
    /// disagrees with another is an error.
    pub async fn published_sha256(
        &self,
        release: &Release,
        asset: &Asset,
        observer: &dyn RetryObserver,
    ) -> Result<Option<Checksum>> {
        let mut found: Vec<(String, Checksum)> = Vec::new();
        if let Some(digest) = &asset.digest
            && let Some(hex_text) = digest.strip_prefix("sha256:")
        {
            let checksum =
                Checksum::parse("sha256", hex_text).map_err(|detail| SourceError::Invalid {
                    what: format!("digest of asset {}", asset.name),
                    detail,
                })?;
            found.push(("the asset's digest".into(), checksum));
        }
        let candidates = [
            format!("{}.sha256", asset.name),
            format!("{}.sha256.txt", asset.name),
            format!("{}.sha256sum", asset.name),
            "SHA256SUMS".to_string(),
            "SHA256SUMS.txt".to_string(),
            "sha256sums.txt".to_string(),
            "checksums.txt".to_string(),
        ];
        for candidate in candidates {
            let Some(file) = release.asset(&candidate) else {
                continue;
            };
            let text = self.asset_bytes(file, observer).await?;
            let text = String::from_utf8_lossy(&text);
            if let Some(checksum) =
                checksum_line(&text, &asset.name, candidate.starts_with(&asset.name))
            {
                found.push((candidate.clone(), checksum));
            }
        }
        let Some((_, first)) = found.first().cloned() else {
            return Ok(None);
        };
        if let Some((place, other)) = found.iter().find(|(_, c)| *c != first) {
            return Err(SourceError::Invalid {
                what: format!("release {} of {}", release.tag_name, self.repo),
                detail: format!(
                    "published checksums of {} disagree ({} says {}, {} says {})",
                    asset.name,
                    found[0].0,
                    first.hex(),
                    place,
                    other.hex()
                ),
            });
        }
        Ok(Some(first))
    }
}

/// The SHA-256 for `name` in a checksums file (`HEX  NAME`, `HEX *NAME`);
/// in a file made for that one asset, a lone `HEX` line counts too.
fn checksum_line(text: &str, name: &str, single: bool) -> Option<Checksum> {
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let Some(hex_text) = parts.next() else {
            continue;
        };
        let file = parts.next().map(|f| f.trim_start_matches('*'));
        let file_base = file.map(|f| f.rsplit('/').next().unwrap_or(f));
        let matches = match file_base {
            Some(file) => file == name,
            None => single,
        };
        if matches && let Ok(checksum) = Checksum::parse("sha256", hex_text) {
            return Some(checksum);
        }
    }
    None
}

/// The `rel="next"` URL of a `Link` header.
fn next_link(headers: &HeaderMap) -> Option<Url> {
    for value in headers.get_all(LINK) {
        let text = value.to_str().ok()?;
        for part in text.split(',') {
            let mut pieces = part.split(';');
            let target = pieces.next()?.trim();
            if pieces.any(|p| p.trim() == "rel=\"next\"" || p.trim() == "rel=next") {
                let target = target.trim_start_matches('<').trim_end_matches('>');
                return Url::parse(target).ok();
            }
        }
    }
    None
}

/// A bundle's `manifest.json`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct BundleManifest {
    /// Schema version (missing means 1).
    #[serde(default)]
    pub schema_version: Option<u64>,
    /// Bundle version (normally the release tag).
    #[serde(default)]
    pub version: Option<String>,
    /// Artifacts per architecture (`x86_64`, `aarch64`).
    pub artifacts: BTreeMap<String, ArchArtifacts>,
    /// The VMM the bundle was validated with.
    #[serde(default)]
    pub firecracker: Option<Firecracker>,
    /// Build facts.
    #[serde(default)]
    pub build: Option<Build>,
}

/// The files of one architecture.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ArchArtifacts {
    /// The kernel.
    pub kernel: KernelArtifact,
    /// The root filesystem.
    pub rootfs: RootfsArtifact,
}

/// A kernel file.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct KernelArtifact {
    /// Asset name.
    pub file: String,
    /// Kernel version.
    #[serde(default)]
    pub version: Option<String>,
    /// Where it was built.
    #[serde(default)]
    pub source: Option<String>,
    /// Size in bytes.
    #[serde(default)]
    pub size_bytes: Option<u64>,
}

/// A root filesystem file.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RootfsArtifact {
    /// Asset name.
    pub file: String,
    /// Distribution.
    #[serde(default)]
    pub distro: Option<String>,
    /// Its version.
    #[serde(default)]
    pub distro_version: Option<String>,
    /// Build profile.
    #[serde(default)]
    pub profile: Option<String>,
    /// Size in bytes.
    #[serde(default)]
    pub size_bytes: Option<u64>,
}

/// The VMM.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Firecracker {
    /// Release tag of firecracker (`v1.10.1`).
    #[serde(default)]
    pub version: Option<String>,
    /// Where it comes from.
    #[serde(default)]
    pub source: Option<String>,
}

/// Build facts.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Build {
    /// Build date.
    #[serde(default)]
    pub date: Option<String>,
    /// Source commit.
    #[serde(default)]
    pub commit: Option<String>,
}

fn check_file_name(what: &str, field: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || name.contains('/')
        || name.contains('\\')
        || name == "."
        || name == ".."
        || name.chars().any(char::is_control)
    {
        return Err(SourceError::Invalid {
            what: what.to_string(),
            detail: format!("{field} {name:?} is not a plain file name"),
        });
    }
    Ok(())
}

impl BundleManifest {
    /// Parses and validates `manifest.json`; `what` names it in errors
    /// (`sbx://v0.1.0`).
    pub fn parse(bytes: &[u8], what: &str) -> Result<BundleManifest> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| SourceError::Malformed {
                what: format!("manifest.json of {what}"),
                detail: e.to_string(),
            })?;
        // The version first: a future schema may not parse as this one.
        let version = match value.get("schema_version") {
            None | Some(serde_json::Value::Null) => 1,
            Some(v) => v.as_u64().ok_or_else(|| SourceError::Invalid {
                what: format!("manifest.json of {what}"),
                detail: format!("schema_version {v} is not a positive integer"),
            })?,
        };
        if !SUPPORTED_SCHEMA_VERSIONS.contains(&version) {
            return Err(SourceError::UnsupportedSchema {
                what: what.to_string(),
                found: version,
                supported: SUPPORTED_SCHEMA_VERSIONS.to_vec(),
            });
        }
        let mut manifest: BundleManifest =
            serde_json::from_value(value).map_err(|e| SourceError::Malformed {
                what: format!("manifest.json of {what}"),
                detail: e.to_string(),
            })?;
        manifest.schema_version = Some(version);
        let doc = format!("manifest.json of {what}");
        if manifest.artifacts.is_empty() {
            return Err(SourceError::Invalid {
                what: doc,
                detail: "artifacts is empty".into(),
            });
        }
        for (arch, artifacts) in &manifest.artifacts {
            check_file_name(
                &doc,
                &format!("artifacts.{arch}.kernel.file"),
                &artifacts.kernel.file,
            )?;
            check_file_name(
                &doc,
                &format!("artifacts.{arch}.rootfs.file"),
                &artifacts.rootfs.file,
            )?;
        }
        if let Some(version) = manifest.vmm_version() {
            check_file_name(&doc, "firecracker.version", version)?;
        }
        Ok(manifest)
    }

    /// The artifacts for `arch`, or an error naming what the release has.
    pub fn for_arch(&self, arch: &str, what: &str) -> Result<&ArchArtifacts> {
        self.artifacts
            .get(arch)
            .ok_or_else(|| SourceError::NoArchitecture {
                what: what.to_string(),
                arch: arch.to_string(),
                available: self.artifacts.keys().cloned().collect(),
            })
    }

    /// The firecracker release to fetch, when the manifest names one.
    pub fn vmm_version(&self) -> Option<&str> {
        self.firecracker
            .as_ref()
            .and_then(|f| f.version.as_deref())
            .filter(|v| !v.is_empty())
    }
}

/// The release-bundle architecture name of the host (`x86_64`, `aarch64`).
pub fn host_arch() -> &'static str {
    std::env::consts::ARCH
}

/// The bundle architecture of an OCI architecture name (`amd64` → `x86_64`).
pub fn bundle_arch(oci_architecture: &str) -> String {
    match oci_architecture {
        "amd64" => "x86_64".into(),
        "arm64" => "aarch64".into(),
        other => other.into(),
    }
}

/// The OCI architecture of a bundle architecture (`x86_64` → `amd64`).
pub fn oci_arch(bundle_architecture: &str) -> String {
    match bundle_architecture {
        "x86_64" => "amd64".into(),
        "aarch64" => "arm64".into(),
        other => other.into(),
    }
}

/// The firecracker archive asset name for `version` and `arch`.
pub fn firecracker_archive_name(version: &str, arch: &str) -> String {
    format!("firecracker-{version}-{arch}.tgz")
}

/// Copies the `firecracker-{version}-{arch}` binary out of a firecracker
/// release archive (gzip tar) into `out`; returns its size.
pub fn extract_firecracker(
    archive: impl Read,
    version: &str,
    arch: &str,
    out: &mut impl Write,
) -> Result<u64> {
    let wanted = format!("firecracker-{version}-{arch}");
    let what = firecracker_archive_name(version, arch);
    let malformed = |detail: String| SourceError::Malformed {
        what: what.clone(),
        detail,
    };
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    for entry in tar.entries().map_err(|e| malformed(e.to_string()))? {
        let mut entry = entry.map_err(|e| malformed(e.to_string()))?;
        let path = entry.path().map_err(|e| malformed(e.to_string()))?;
        let base = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if base == wanted && entry.header().entry_type().is_file() {
            let size = std::io::copy(&mut (&mut entry).take(MAX_VMM_BINARY + 1), out)
                .map_err(|e| malformed(e.to_string()))?;
            if size > MAX_VMM_BINARY {
                return Err(SourceError::TooLarge {
                    what: format!("{wanted} in {what}"),
                    limit: MAX_VMM_BINARY,
                });
            }
            return Ok(size);
        }
    }
    Err(SourceError::Invalid {
        what,
        detail: format!("the archive has no {wanted} binary"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_version_missing_means_one_and_others_are_refused() {
        let body = |version: &str| {
            format!(
                r#"{{{version}"artifacts":{{"x86_64":{{"kernel":{{"file":"vmlinux"}},"rootfs":{{"file":"rootfs.ext4","size_bytes":5}}}}}},"firecracker":{{"version":"v1.10.1"}}}}"#
            )
        };
        let manifest = BundleManifest::parse(body("").as_bytes(), "sbx://v1").unwrap();
        assert_eq!(manifest.schema_version, Some(1));
        assert_eq!(manifest.vmm_version(), Some("v1.10.1"));
        BundleManifest::parse(body(r#""schema_version":1,"#).as_bytes(), "sbx://v1").unwrap();
        let error = BundleManifest::parse(body(r#""schema_version":2,"#).as_bytes(), "sbx://v1")
            .unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("schema_version 2") && text.contains("supports 1"),
            "{text}"
        );
        assert!(error.hint().unwrap().contains("upgrade kiln"));
        let error = BundleManifest::parse(body("").as_bytes(), "sbx://v1")
            .unwrap()
            .for_arch("aarch64", "sbx://v1")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("aarch64") && error.contains("x86_64"),
            "{error}"
        );
    }

    #[test]
    fn refuses_file_names_with_paths() {
        let body = r#"{"artifacts":{"x86_64":{"kernel":{"file":"../../etc/passwd"},"rootfs":{"file":"r"}}}}"#;
        let error = BundleManifest::parse(body.as_bytes(), "sbx://v1")
            .unwrap_err()
            .to_string();
        assert!(error.contains("kernel.file"), "{error}");
    }

    #[test]
    fn reads_checksum_files() {
        let hex = "a".repeat(64);
        let text = format!("{hex}  rootfs.ext4\n{}  *vmlinux\n", "b".repeat(64));
        assert_eq!(
            checksum_line(&text, "rootfs.ext4", false).unwrap().hex(),
            hex
        );
        assert_eq!(
            checksum_line(&text, "vmlinux", false).unwrap().hex(),
            "b".repeat(64)
        );
        assert!(checksum_line(&text, "other", false).is_none());
        assert_eq!(
            checksum_line(&format!("{hex}\n"), "x", true).unwrap().hex(),
            hex
        );
    }

    #[test]
    fn follows_link_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            LINK,
            r#"<https://api.github.com/repositories/1/releases?page=2>; rel="next", <https://api.github.com/repositories/1/releases?page=5>; rel="last""#
                .parse()
                .unwrap(),
        );
        assert_eq!(
            next_link(&headers).unwrap().as_str(),
            "https://api.github.com/repositories/1/releases?page=2"
        );
        assert!(next_link(&HeaderMap::new()).is_none());
    }
}
