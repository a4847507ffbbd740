//! Release bundles from GitHub releases (`github-release` sources).

use std::sync::Arc;

use kiln_sources::github::{
    self, BundleManifest, OCTET_STREAM, Releases, bundle_arch, firecracker_archive_name, oci_arch,
};
use kiln_sources::{Fetcher, MultiHasher, SourceConfig, SourceError};
use kiln_types::{Platform, SourceReference};
use serde::Serialize;

use super::{
    FileSpec, KERNEL_MEDIA_TYPE, NewSourceImage, RECORD_MEDIA_TYPE, ROOTFS_MEDIA_TYPE,
    SourceRecord, StoredFile, VMM_MEDIA_TYPE, may_use_cache,
};
use crate::error::{Error, Result};
use crate::progress::{Event, Progress};
use crate::pull::{Observer, PullOptions, PullPolicy, PulledImage};
use crate::{LeaseGuard, Manager, Scratch};

/// A release of a `github-release` source, as `avail` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct AvailableRelease {
    /// The image name: the release tag (`SOURCE://NAME`).
    pub name: String,
    /// Release tag (the bundle version).
    pub version: String,
    /// Title.
    pub title: Option<String>,
    /// Pre-release flag.
    pub prerelease: bool,
    /// Publication time.
    pub published_at: Option<String>,
    /// Whether the store has it.
    pub installed: bool,
}

impl Manager {
    /// Releases of a `github-release` source, newest first.
    pub async fn avail_releases(
        &self,
        source: &str,
        progress: Arc<dyn Progress>,
    ) -> Result<Vec<AvailableRelease>> {
        let config = self.source_config(source)?;
        let repo = github_repo(source, &config)?;
        let fetcher = self.fetcher(&config)?;
        let releases = Releases::new(&fetcher, &config.url, repo)?;
        let observer = Observer(progress);
        let mut available = Vec::new();
        for release in releases.list(&observer).await? {
            let reference = SourceReference::new(source, &release.tag_name, None);
            let installed = match reference {
                Ok(reference) => !self.find_source_tags(&reference)?.is_empty(),
                Err(_) => false,
            };
            available.push(AvailableRelease {
                name: release.tag_name.clone(),
                version: release.tag_name,
                title: release.name,
                prerelease: release.prerelease,
                published_at: release.published_at,
                installed,
            });
        }
        Ok(available)
    }

    pub(crate) async fn pull_bundle(
        &self,
        reference: &SourceReference,
        config: &SourceConfig,
        options: &PullOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<PulledImage> {
        if reference.name().is_empty() || reference.version().is_some() {
            return Err(Error::InvalidSourceImageName {
                reference: reference.to_string(),
                detail: "name a release by its tag: SOURCE://TAG (e.g. sbx://v0.1.0)".into(),
            });
        }
        let repo = github_repo(reference.source(), config)?;
        let arch = match &options.platform {
            Some(platform) => bundle_arch(&platform.architecture),
            None => github::host_arch().to_string(),
        };
        let platform_text = format!("linux/{}", oci_arch(&arch));
        let platform: Platform = platform_text.parse()?;
        let tag = reference.to_string();
        if may_use_cache(options)
            && let Some(image) = self.source_cache_hit(&tag, &platform, &progress)?
        {
            return Ok(self.pulled_source(&tag, image.manifest_digest, platform_text, true, 0));
        }
        if options.policy == PullPolicy::Never {
            return Err(Error::NotCached { reference: tag });
        }
        let _lock = self
            .lock_source_image(&format!("{tag} {platform_text}"))
            .await?;
        if may_use_cache(options)
            && let Some(image) = self.source_cache_hit(&tag, &platform, &progress)?
        {
            return Ok(self.pulled_source(&tag, image.manifest_digest, platform_text, true, 0));
        }
        let fetcher = self.fetcher(config)?;
        let releases = Releases::new(&fetcher, &config.url, repo)?;
        let observer = Observer(progress.clone());
        let release = releases.release(reference.name(), &observer).await?;
        let manifest_asset =
            release
                .asset("manifest.json")
                .ok_or_else(|| SourceError::Invalid {
                    what: format!("release {} of {repo}", release.tag_name),
                    detail: "it has no manifest.json asset (not a release bundle)".into(),
                })?;
        let manifest_bytes = releases.asset_bytes(manifest_asset, &observer).await?;
        let manifest = BundleManifest::parse(&manifest_bytes, &tag)?;
        let artifacts = manifest.for_arch(&arch, &tag)?;
        let guard = LeaseGuard::new(self)?;
        let mut files: Vec<StoredFile> = Vec::new();
        let mut downloaded = 0;
        let wanted = [
            (
                "kernel",
                &artifacts.kernel.file,
                artifacts.kernel.size_bytes,
                KERNEL_MEDIA_TYPE,
            ),
            (
                "rootfs",
                &artifacts.rootfs.file,
                artifacts.rootfs.size_bytes,
                ROOTFS_MEDIA_TYPE,
            ),
        ];
        for (role, file, manifest_size, media_type) in wanted {
            let asset = release.asset(file).ok_or_else(|| SourceError::Invalid {
                what: format!("release {} of {repo}", release.tag_name),
                detail: format!(
                    "manifest.json names {role} {file}, which the release does not have"
                ),
            })?;
            if let Some(size) = manifest_size
                && size != asset.size
            {
                return Err(SourceError::SizeMismatch {
                    what: format!(
                        "{file} of {tag} (manifest.json size_bytes vs the release asset)"
                    ),
                    expected: size,
                    actual: asset.size,
                }
                .into());
            }
            let spec = asset_spec(&releases, &release, asset, role, media_type, &observer).await?;
            let (stored, bytes) = self
                .fetch_file(&fetcher, spec, guard.lease(), options.force, &progress)
                .await?;
            downloaded += bytes;
            files.push(stored);
        }
        if let Some(version) = manifest.vmm_version() {
            let (stored, bytes) = self
                .fetch_firecracker(&fetcher, config, version, &arch, &guard, &progress)
                .await?;
            downloaded += bytes;
            files.push(stored);
        }
        let record = SourceRecord {
            media_type: RECORD_MEDIA_TYPE.into(),
            source: reference.source().to_string(),
            source_type: config.source_type.to_string(),
            source_url: format!("{}/repos/{repo}", config.url.trim_end_matches('/')),
            name: reference.name().to_string(),
            version: manifest
                .version
                .clone()
                .or_else(|| Some(release.tag_name.clone())),
            arch: Some(arch.clone()),
            uuid: None,
            origin: None,
            compression: None,
            boot_args: None,
            published_at: release.published_at.clone(),
            files: Vec::new(),
        };
        let created = manifest
            .build
            .as_ref()
            .and_then(|b| b.date.clone())
            .or(release.published_at.clone());
        let digest = self.commit_source_image(
            NewSourceImage {
                record,
                source_manifest: Some((manifest_bytes.to_vec(), super::BUNDLE_MANIFEST_MEDIA_TYPE)),
                files,
                tags: vec![tag.clone()],
                platform: platform_text.clone(),
                created,
            },
            guard,
        )?;
        progress.event(Event::Stored {
            manifest: digest.clone(),
        });
        Ok(self.pulled_source(&tag, digest, platform_text, false, downloaded))
    }

    /// Downloads firecracker's release archive for `version`, checks it, and
    /// stores the `firecracker` binary from it.
    async fn fetch_firecracker(
        &self,
        fetcher: &Fetcher,
        config: &SourceConfig,
        version: &str,
        arch: &str,
        guard: &LeaseGuard<'_>,
        progress: &Arc<dyn Progress>,
    ) -> Result<(StoredFile, u64)> {
        let observer = Observer(progress.clone());
        let vmm_repo = config.vmm_repo();
        let releases = Releases::new(fetcher, &config.url, vmm_repo)?;
        let release = releases.release(version, &observer).await?;
        let archive_name = firecracker_archive_name(version, arch);
        let asset = release
            .asset(&archive_name)
            .ok_or_else(|| SourceError::Invalid {
                what: format!("release {version} of {vmm_repo}"),
                detail: format!("it has no {archive_name}"),
            })?;
        let spec = asset_spec(&releases, &release, asset, "vmm", VMM_MEDIA_TYPE, &observer).await?;
        let scratch = Scratch::new(self)?;
        let archive_path = scratch.0.join("archive.tgz");
        let (_, downloaded) = self
            .download_to(fetcher, &spec, &archive_path, progress)
            .await?;
        let binary_path = scratch.0.join("firecracker");
        let (version_owned, arch_owned) = (version.to_string(), arch.to_string());
        let extract_path = binary_path.clone();
        let hashes = tokio::task::spawn_blocking(move || -> Result<kiln_sources::Hashes> {
            let archive =
                fs_err::File::open(&archive_path).map_err(kiln_store::StoreError::from)?;
            let out = fs_err::File::create(&extract_path).map_err(kiln_store::StoreError::from)?;
            let mut writer = HashingWriter {
                inner: std::io::BufWriter::new(out),
                hasher: MultiHasher::new(&[]),
            };
            github::extract_firecracker(
                std::io::BufReader::new(archive),
                &version_owned,
                &arch_owned,
                &mut writer,
            )?;
            std::io::Write::flush(&mut writer.inner).map_err(kiln_store::StoreError::from)?;
            Ok(writer.hasher.finish())
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        set_executable(&binary_path)?;
        self.commit_scratch(
            &binary_path,
            &hashes.sha256,
            hashes.size,
            guard.lease(),
            true,
        )?;
        Ok((
            StoredFile {
                role: "vmm".into(),
                name: format!("firecracker-{version}-{arch}"),
                digest: hashes.sha256,
                size: hashes.size,
                media_type: VMM_MEDIA_TYPE.into(),
                // The published sum is the archive's, checked above.
                checksums: Vec::new(),
            },
            downloaded,
        ))
    }
}

/// How to fetch release asset `asset`: its download location, published
/// size and whatever SHA-256 the release publishes for it.
async fn asset_spec(
    releases: &Releases<'_>,
    release: &github::Release,
    asset: &github::Asset,
    role: &'static str,
    media_type: &str,
    observer: &Observer,
) -> Result<FileSpec> {
    Ok(FileSpec {
        role,
        name: asset.name.clone(),
        location: releases.asset_location(asset)?,
        accept: Some(OCTET_STREAM),
        size: Some(asset.size),
        checksums: releases
            .published_sha256(release, asset, observer)
            .await?
            .into_iter()
            .collect(),
        media_type: media_type.to_string(),
    })
}

/// Makes the VMM binary executable before it becomes a read-only blob
/// (`adopt_file` then drops only the write bits).
fn set_executable(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(kiln_store::StoreError::from)?;
    Ok(())
}

struct HashingWriter<W> {
    inner: W,
    hasher: MultiHasher,
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn github_repo<'c>(source: &str, config: &'c SourceConfig) -> Result<&'c str> {
    config.repo.as_deref().ok_or_else(|| Error::InvalidSource {
        name: source.to_string(),
        detail: "a github-release source needs a repo".into(),
    })
}
