//! Images from configured non-OCI sources (release bundles, checksum
//! catalogs, IMGAPI image servers) in the same store and catalog as OCI
//! images. User documentation: `docs/sources.md`.
//!
//! A source image is one `images` row (`kind` = `release-bundle`, `catalog`
//! or `imgapi`) whose `manifest` blob is a [`SourceRecord`]: kiln's JSON
//! description of the image (source, name, version, architecture, and each
//! file's role, digest, size, media type and published checksums). The
//! image's identity is that record's digest, so the same content from the
//! same source is the same image. Files are blobs like layers: verified
//! against what the source published before they are committed, leased
//! while a pull runs, collected by `prune` when no image needs them.
//!
//! Cache hits never re-hash: each verified blob gets a `stat` stamp (size,
//! mtime, ctime, inode, device; catalog table `blob_stamps`) and a hit
//! compares stamps; a blob whose stamp changed is re-hashed, and quarantined
//! when its content no longer matches (the image then needs a new pull).

mod bundle;
mod catalog;
mod imgapi;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_oci::RetryObserver;
use kiln_sources::{
    Checksum, Config, FetchOptions, Fetcher, Hashes, Location, MultiHasher, SourceConfig,
    SourceError, SourceType,
};
use kiln_store::lock::{LockFile, LockMode};
use kiln_store::{BlobStamp, ImageBlob, NewImage, NewTag, SourceImageRecord};
use kiln_types::{Digest, Platform, SourceReference};
use serde::{Deserialize, Serialize};

pub use bundle::AvailableRelease;
pub use catalog::{AvailableCatalogImage, CachedImage, CatalogSource};

use crate::error::{Error, Result};
use crate::progress::{Event, Progress};
use crate::pull::{Observer, PullOptions, PullPolicy, PulledImage};
use crate::{LeaseGuard, Manager, Scratch};

/// Media type of kiln's record of a source image (its `manifest` blob).
pub const RECORD_MEDIA_TYPE: &str = "application/vnd.kiln.source-image.v1+json";
/// Media type of a release bundle's `manifest.json`.
pub const BUNDLE_MANIFEST_MEDIA_TYPE: &str = "application/vnd.kiln.release-bundle.manifest.v1+json";
/// Media type of a catalog entry as kiln keeps it.
pub const CATALOG_ENTRY_MEDIA_TYPE: &str = "application/vnd.kiln.catalog.entry.v1+json";
/// Media type of an IMGAPI image manifest.
pub const IMGAPI_MANIFEST_MEDIA_TYPE: &str = "application/vnd.joyent.imgapi.manifest.v2+json";
/// Media type of a kernel.
pub const KERNEL_MEDIA_TYPE: &str = "application/vnd.kiln.kernel";
/// Media type of an ext4 root filesystem.
pub const ROOTFS_MEDIA_TYPE: &str = "application/vnd.kiln.rootfs.ext4";
/// Media type of an initial ramdisk.
pub const INITRD_MEDIA_TYPE: &str = "application/vnd.kiln.initrd";
/// Media type of a firecracker binary.
pub const VMM_MEDIA_TYPE: &str = "application/vnd.kiln.vmm.firecracker";

/// Largest file downloaded whose size the source did not publish.
pub const MAX_UNSIZED_FILE: u64 = 64 << 30;

/// kiln's record of a source image: the document its identity is the
/// digest of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// [`RECORD_MEDIA_TYPE`].
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// Configured source name.
    pub source: String,
    /// `github-release`, `catalog`, `imgapi`.
    pub source_type: String,
    /// Where the source is.
    pub source_url: String,
    /// Release tag, catalog entry name or imgapi image name.
    pub name: String,
    /// Version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Architecture (`x86_64`, `aarch64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// imgapi UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// imgapi origin UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Compression of an imgapi file as published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Publication time the source declares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<String>,
    /// The files.
    pub files: Vec<RecordFile>,
}

/// One file of a [`SourceRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordFile {
    /// `source-manifest`, `kernel`, `rootfs`, `initrd`, `vmm`, `file`.
    pub role: String,
    /// Its name at the source.
    pub name: String,
    /// The blob.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// Checksums the source published (algorithm → hex).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checksums: BTreeMap<String, String>,
}

/// A configured source, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct SourceInfo {
    /// Its name.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub source_type: String,
    /// Its URL.
    pub url: String,
    /// GitHub repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// VMM repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmm_repo: Option<String>,
    /// Environment variable with a token (the name only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
}

/// A file of an installed source image, for `inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct SourceFileDetails {
    /// Its role.
    pub role: String,
    /// Its name at the source.
    pub name: String,
    /// Local path (read-only).
    pub path: PathBuf,
    /// The blob.
    pub digest: Digest,
    /// Size.
    pub size: u64,
    /// Media type.
    pub media_type: String,
    /// Published checksums.
    pub checksums: BTreeMap<String, String>,
}

/// What `inspect` shows of a source image.
#[derive(Debug, Clone, Serialize)]
pub struct SourceDetails {
    /// Configured source name.
    pub source: String,
    /// Source type.
    #[serde(rename = "type")]
    pub source_type: String,
    /// Source URL.
    pub url: String,
    /// Name.
    pub name: String,
    /// Version.
    pub version: Option<String>,
    /// Architecture.
    pub arch: Option<String>,
    /// imgapi UUID.
    pub uuid: Option<String>,
    /// imgapi origin.
    pub origin: Option<String>,
    /// imgapi file compression.
    pub compression: Option<String>,
    /// Kernel command line.
    pub boot_args: Option<String>,
    /// Publication time.
    pub published_at: Option<String>,
    /// The published manifest (bundle `manifest.json`, catalog entry, imgapi manifest).
    pub manifest: Option<serde_json::Value>,
    /// Local paths by role.
    pub paths: BTreeMap<String, PathBuf>,
    /// Every file.
    pub files: Vec<SourceFileDetails>,
}

/// A file to fetch from a source.
pub(crate) struct FileSpec {
    pub role: &'static str,
    pub name: String,
    pub location: Location,
    pub accept: Option<&'static str>,
    pub size: Option<u64>,
    pub checksums: Vec<Checksum>,
    pub media_type: String,
}

/// A fetched, verified, committed file.
pub(crate) struct StoredFile {
    pub role: String,
    pub name: String,
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub checksums: Vec<Checksum>,
}

impl StoredFile {
    fn record(&self) -> RecordFile {
        RecordFile {
            role: self.role.clone(),
            name: self.name.clone(),
            digest: self.digest.clone(),
            size: self.size,
            media_type: self.media_type.clone(),
            checksums: self
                .checksums
                .iter()
                .map(|c| (c.algorithm().to_string(), c.hex().to_string()))
                .collect(),
        }
    }
}

/// What a pull of a source image commits.
pub(crate) struct NewSourceImage {
    pub record: SourceRecord,
    pub source_manifest: Option<(Vec<u8>, &'static str)>,
    pub files: Vec<StoredFile>,
    pub tags: Vec<String>,
    pub platform: String,
    pub created: Option<String>,
}

/// The default config file: `$KILN_CONFIG`, else
/// `$XDG_CONFIG_HOME/kiln/config.toml`, else `~/.config/kiln/config.toml`.
pub fn default_config_path() -> PathBuf {
    let non_empty = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    non_empty("KILN_CONFIG")
        .or_else(|| non_empty("XDG_CONFIG_HOME").map(|d| d.join("kiln/config.toml")))
        .or_else(|| non_empty("HOME").map(|h| h.join(".config/kiln/config.toml")))
        .unwrap_or_else(|| PathBuf::from("kiln-config.toml"))
}

fn source_info(name: &str, config: &SourceConfig) -> SourceInfo {
    SourceInfo {
        name: name.to_string(),
        source_type: config.source_type.to_string(),
        url: config.url.clone(),
        repo: config.repo.clone(),
        vmm_repo: (config.source_type == SourceType::GithubRelease)
            .then(|| config.vmm_repo().to_string()),
        token_env: config.token_env.clone(),
    }
}

impl Manager {
    /// The config file this manager reads.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The config (the built-in defaults while the file does not exist).
    pub fn config(&self) -> Result<Config> {
        Ok(Config::load(&self.config_path)?)
    }

    /// Changes the config file under its lock (re-read after the lock is taken).
    fn edit_config(&self, change: impl FnOnce(&mut Config) -> Result<()>) -> Result<()> {
        let path = &self.config_path;
        let config_error = |detail: String| SourceError::Config {
            path: path.display().to_string(),
            detail,
        };
        let directory = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(directory).map_err(|e| config_error(e.to_string()))?;
        let lock_path = directory.join(format!(
            ".{}.lock",
            path.file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| "config".into())
        ));
        let _lock = LockFile::acquire(&lock_path, LockMode::Exclusive)
            .map_err(|e| config_error(e.to_string()))?;
        let mut config = self.config()?;
        change(&mut config)?;
        kiln_store::fsutil::write_atomic(path, config.to_toml().as_bytes(), false)
            .map_err(|e| config_error(e.to_string()))?;
        Ok(())
    }

    /// Configured sources.
    pub fn sources(&self) -> Result<Vec<SourceInfo>> {
        Ok(self
            .config()?
            .sources
            .iter()
            .map(|(name, config)| source_info(name, config))
            .collect())
    }

    /// Adds a source.
    pub fn add_source(&self, name: &str, source: SourceConfig) -> Result<SourceInfo> {
        source
            .validate(name)
            .map_err(|detail| Error::InvalidSource {
                name: name.to_string(),
                detail,
            })?;
        let info = source_info(name, &source);
        self.edit_config(|config| {
            if config.sources.contains_key(name) {
                return Err(Error::SourceExists {
                    name: name.to_string(),
                });
            }
            config.sources.insert(name.to_string(), source);
            Ok(())
        })?;
        Ok(info)
    }

    /// Removes a source (its installed images stay).
    pub fn remove_source(&self, name: &str) -> Result<()> {
        self.edit_config(|config| {
            if config.sources.remove(name).is_none() {
                return Err(Error::UnknownSource {
                    name: name.to_string(),
                    available: config.sources.keys().cloned().collect(),
                });
            }
            Ok(())
        })
    }

    /// The source called `name`.
    pub(crate) fn source_config(&self, name: &str) -> Result<SourceConfig> {
        let config = self.config()?;
        config
            .source(name)
            .cloned()
            .ok_or_else(|| Error::UnknownSource {
                name: name.to_string(),
                available: config.sources.keys().cloned().collect(),
            })
    }

    /// An HTTP client for a source (with its token, for its own origin).
    pub(crate) fn fetcher(&self, source: &SourceConfig) -> Result<Fetcher> {
        let fetcher = Fetcher::new(&FetchOptions::default())?;
        let Some(variable) = &source.token_env else {
            return Ok(fetcher);
        };
        let token = std::env::var(variable).unwrap_or_default();
        if token.trim().is_empty() {
            return Err(Error::MissingToken {
                variable: variable.clone(),
            });
        }
        match Location::parse(&source.url)? {
            Location::Url(base) => Ok(fetcher.with_token(&base, token.trim())),
            Location::Path(_) => Ok(fetcher),
        }
    }

    /// Pulls `reference` from its configured source.
    pub async fn pull_source(
        &self,
        reference: &SourceReference,
        options: &PullOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<PulledImage> {
        let config = self.source_config(reference.source())?;
        progress.event(Event::Resolving {
            reference: reference.to_string(),
        });
        match config.source_type {
            SourceType::GithubRelease => {
                self.pull_bundle(reference, &config, options, progress)
                    .await
            }
            SourceType::Catalog => {
                self.pull_catalog_image(reference, &config, options, progress)
                    .await
            }
            SourceType::Imgapi => {
                self.pull_imgapi(reference, &config, options, progress)
                    .await
            }
        }
    }

    /// The cached image a source tag names, when it is complete and its
    /// files pass the stamp check.
    pub(crate) fn cached_source_image(
        &self,
        tag: &str,
        platform: Option<&Platform>,
    ) -> Result<Option<kiln_store::ImageRecord>> {
        let catalog = self.store.catalog();
        for found in catalog.tags_named(tag)? {
            let Some(image) = catalog.image(found.image_id)? else {
                continue;
            };
            let platform_ok = match (platform, image.platform.as_deref()) {
                (None, _) => true,
                (Some(wanted), Some(actual)) => actual
                    .parse::<Platform>()
                    .is_ok_and(|actual| wanted.accepts(&actual)),
                (Some(_), None) => false,
            };
            if platform_ok && self.verify_image(image.id)? {
                return Ok(Some(image));
            }
        }
        Ok(None)
    }

    /// [`Manager::cached_source_image`] as a pull uses it: a hit is reported
    /// (`Event::Cached`) and marked used.
    pub(crate) fn source_cache_hit(
        &self,
        tag: &str,
        platform: &Platform,
        progress: &Arc<dyn Progress>,
    ) -> Result<Option<kiln_store::ImageRecord>> {
        let Some(image) = self.cached_source_image(tag, Some(platform))? else {
            return Ok(None);
        };
        progress.event(Event::Cached {
            manifest: image.manifest_digest.clone(),
        });
        self.store.catalog().touch_image(image.id)?;
        Ok(Some(image))
    }

    /// Whether an image is complete and every blob still is what was
    /// verified (stat stamps; re-hash only what changed).
    pub(crate) fn verify_image(&self, image_id: i64) -> Result<bool> {
        let catalog = self.store.catalog();
        let Some(image) = catalog.image(image_id)? else {
            return Ok(false);
        };
        if !image.complete {
            return Ok(false);
        }
        let mut intact = true;
        for blob in catalog.image_blobs(image_id)? {
            if !self.verify_blob(&blob.digest)? {
                intact = false;
            }
        }
        Ok(intact)
    }

    /// Stamp check of one blob; a changed blob is re-hashed, a corrupt one
    /// quarantined and forgotten (its images become incomplete).
    pub(crate) fn verify_blob(&self, digest: &Digest) -> Result<bool> {
        let content = self.store.content();
        let catalog = self.store.catalog();
        let metadata = match std::fs::metadata(content.blob_path(digest)) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                catalog.clear_blob_stamp(digest)?;
                catalog.forget_blob(digest)?;
                return Ok(false);
            }
            Err(error) => return Err(kiln_store::StoreError::from(error).into()),
        };
        let stamp = BlobStamp::of(&metadata);
        if catalog.blob_stamp(digest)? == Some(stamp) {
            return Ok(true);
        }
        let (actual, _) = content.hash_blob(digest)?;
        if actual == *digest {
            catalog.set_blob_stamp(digest, &stamp)?;
            return Ok(true);
        }
        catalog.clear_blob_stamp(digest)?;
        // Another process may have quarantined (or replaced) it first.
        if let Err(error) = content.quarantine_blob(digest)
            && error.kind() != kiln_types::ErrorKind::NotFound
        {
            return Err(error.into());
        }
        catalog.forget_blob(digest)?;
        Ok(false)
    }

    pub(crate) fn stamp_blob(&self, digest: &Digest) -> Result<()> {
        let path = self.store.content().blob_path(digest);
        let metadata = std::fs::metadata(&path).map_err(kiln_store::StoreError::from)?;
        self.store
            .catalog()
            .set_blob_stamp(digest, &BlobStamp::of(&metadata))?;
        Ok(())
    }

    /// Holds the exclusive lock of one source image while it is pulled:
    /// concurrent pulls of it wait, then find it installed.
    pub(crate) async fn lock_source_image(&self, key: &str) -> Result<LockFile> {
        let path = self.store.root().join("locks").join(format!(
            "source-{}.lock",
            &Digest::sha256_of(key.as_bytes()).hex()[..32]
        ));
        let locked =
            tokio::task::spawn_blocking(move || LockFile::acquire(&path, LockMode::Exclusive))
                .await
                .map_err(|e| Error::Task(e.to_string()))?;
        Ok(locked.map_err(kiln_store::StoreError::from)?)
    }

    /// Downloads `spec` into `path`, checking size and checksums as bytes
    /// arrive. Returns the hashes.
    pub(crate) async fn download_to(
        &self,
        fetcher: &Fetcher,
        spec: &FileSpec,
        path: &Path,
        progress: &Arc<dyn Progress>,
    ) -> Result<(Hashes, u64)> {
        let observer: Arc<dyn RetryObserver> = Arc::new(Observer(progress.clone()));
        let mut download =
            fetcher.download(&spec.location, spec.accept, spec.size, &spec.name, observer);
        let file = fs_err::File::create(path).map_err(kiln_store::StoreError::from)?;
        let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut hasher = MultiHasher::new(&spec.checksums);
        progress.event(Event::FileStarted {
            name: spec.name.clone(),
            size: spec.size,
        });
        let mut downloaded = 0u64;
        let mut last_report = 0u64;
        while let Some(chunk) = download.next_chunk().await? {
            downloaded += chunk.len() as u64;
            if spec.size.is_none() && downloaded > MAX_UNSIZED_FILE {
                return Err(SourceError::TooLarge {
                    what: spec.name.clone(),
                    limit: MAX_UNSIZED_FILE,
                }
                .into());
            }
            if let Some(size) = spec.size
                && downloaded > size
            {
                return Err(SourceError::SizeMismatch {
                    what: spec.name.clone(),
                    expected: size,
                    actual: downloaded,
                }
                .into());
            }
            hasher.update(&chunk);
            writer
                .write_all(&chunk)
                .map_err(kiln_store::StoreError::from)?;
            if downloaded - last_report >= 1 << 20 {
                last_report = downloaded;
                progress.event(Event::FileProgress {
                    name: spec.name.clone(),
                    position: downloaded,
                });
            }
        }
        writer.flush().map_err(kiln_store::StoreError::from)?;
        let hashes = hasher.finish();
        if let Some(size) = spec.size
            && hashes.size != size
        {
            return Err(SourceError::SizeMismatch {
                what: spec.name.clone(),
                expected: size,
                actual: hashes.size,
            }
            .into());
        }
        hashes.verify(&spec.name, &spec.checksums)?;
        progress.event(Event::FileDone {
            name: spec.name.clone(),
            size: hashes.size,
        });
        Ok((hashes, downloaded))
    }

    /// Makes a verified scratch file the blob `digest` (kept alive by the
    /// lease), stamped. A blob of that digest already in the store is kept
    /// only when it passes its own check and `force` is off; else the
    /// verified file replaces it (an atomic rename).
    pub(crate) fn commit_scratch(
        &self,
        path: &Path,
        digest: &Digest,
        size: u64,
        lease: &kiln_store::Lease,
        force: bool,
    ) -> Result<()> {
        let catalog = self.store.catalog();
        let content = self.store.content();
        catalog.lease_blob(lease, digest)?;
        if force || content.blob_size(digest)? != Some(size) || !self.verify_blob(digest)? {
            content.adopt_file(path, digest, size)?;
        }
        catalog.record_blob(digest, size)?;
        self.stamp_blob(digest)?;
        Ok(())
    }

    /// Fetches one file into the store (nothing when the store has a
    /// verified blob of its published SHA-256 and `force` is off). Returns
    /// the file and the bytes downloaded.
    pub(crate) async fn fetch_file(
        &self,
        fetcher: &Fetcher,
        spec: FileSpec,
        lease: &kiln_store::Lease,
        force: bool,
        progress: &Arc<dyn Progress>,
    ) -> Result<(StoredFile, u64)> {
        let known = spec.checksums.iter().find_map(|c| match c {
            Checksum::Sha256(hex) => format!("sha256:{hex}").parse::<Digest>().ok(),
            _ => None,
        });
        if !force && let Some(digest) = &known {
            self.store.catalog().lease_blob(lease, digest)?;
            if let Some(size) = self.store.content().blob_size(digest)?
                && spec.size.is_none_or(|s| s == size)
                && self.verify_blob(digest)?
            {
                progress.event(Event::FileExists {
                    name: spec.name.clone(),
                    size,
                });
                return Ok((
                    StoredFile {
                        role: spec.role.to_string(),
                        name: spec.name,
                        digest: digest.clone(),
                        size,
                        media_type: spec.media_type,
                        checksums: spec.checksums,
                    },
                    0,
                ));
            }
        }
        let scratch = Scratch::new(self)?;
        let path = scratch.0.join("file");
        let (hashes, downloaded) = self.download_to(fetcher, &spec, &path, progress).await?;
        self.commit_scratch(&path, &hashes.sha256, hashes.size, lease, force)?;
        Ok((
            StoredFile {
                role: spec.role.to_string(),
                name: spec.name,
                digest: hashes.sha256,
                size: hashes.size,
                media_type: spec.media_type,
                checksums: spec.checksums,
            },
            downloaded,
        ))
    }

    pub(crate) fn put_small_blob(&self, bytes: &[u8], lease: &kiln_store::Lease) -> Result<Digest> {
        let digest = Digest::sha256_of(bytes);
        let catalog = self.store.catalog();
        catalog.lease_blob(lease, &digest)?;
        if self.store.content().blob_size(&digest)?.is_some() {
            // A damaged copy is quarantined here, so put_blob writes it anew.
            self.verify_blob(&digest)?;
        }
        self.store.content().put_blob(&digest, bytes)?;
        catalog.record_blob(&digest, bytes.len() as u64)?;
        self.stamp_blob(&digest)?;
        Ok(digest)
    }

    /// Records a fetched source image: record and source manifest blobs,
    /// the image row, its source facts and tags, in one catalog commit
    /// (the lease goes with it). Returns the image's digest.
    pub(crate) fn commit_source_image(
        &self,
        mut image: NewSourceImage,
        guard: LeaseGuard<'_>,
    ) -> Result<Digest> {
        let lease = guard.lease();
        if let Some((bytes, media_type)) = &image.source_manifest {
            let digest = self.put_small_blob(bytes, lease)?;
            image.record.files.insert(
                0,
                RecordFile {
                    role: "source-manifest".into(),
                    name: "manifest.json".into(),
                    digest: digest.clone(),
                    size: bytes.len() as u64,
                    media_type: media_type.to_string(),
                    checksums: BTreeMap::new(),
                },
            );
        }
        image
            .record
            .files
            .extend(image.files.iter().map(StoredFile::record));
        let record_bytes = serde_json::to_vec_pretty(&image.record)
            .map_err(|e| Error::Task(format!("source record: {e}")))?;
        let record_digest = self.put_small_blob(&record_bytes, lease)?;
        let tags: Vec<NewTag> = image
            .tags
            .iter()
            .map(|name| NewTag {
                name: name.clone(),
                platform: image.platform.clone(),
                index: None,
            })
            .collect();
        self.commit_record(
            &image.record,
            &record_digest,
            record_bytes.len() as u64,
            &tags,
            &image.platform,
            image.created.clone(),
            guard,
        )?;
        Ok(record_digest)
    }

    /// Records a source image whose record (blob `record_digest`) and files
    /// are in the store under `guard`'s lease: the image row, its source
    /// facts and `tags`, in one catalog commit. (A tag's `index` is the
    /// OCI artifact a registry name served it as.)
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn commit_record(
        &self,
        record: &SourceRecord,
        record_digest: &Digest,
        record_size: u64,
        tags: &[NewTag],
        platform: &str,
        created: Option<String>,
        mut guard: LeaseGuard<'_>,
    ) -> Result<()> {
        let mut blobs = Vec::new();
        let mut positions: BTreeMap<String, u32> = BTreeMap::new();
        for file in &record.files {
            let position = positions.entry(file.role.clone()).or_insert(0);
            blobs.push(ImageBlob {
                role: file.role.clone(),
                position: *position,
                digest: file.digest.clone(),
                media_type: file.media_type.clone(),
                size: file.size,
            });
            *position += 1;
        }
        let new_image = NewImage {
            manifest: ImageBlob {
                role: "manifest".into(),
                position: 0,
                digest: record_digest.clone(),
                media_type: RECORD_MEDIA_TYPE.into(),
                size: record_size,
            },
            kind: record
                .source_type
                .parse::<SourceType>()
                .map(|t| t.image_kind().to_string())
                .unwrap_or_else(|_| record.source_type.clone()),
            platform: Some(platform.to_string()),
            image_created: created,
            blobs,
            layers: Vec::new(),
            source: Some(SourceImageRecord {
                image_id: 0,
                source: record.source.clone(),
                source_type: record.source_type.clone(),
                name: record.name.clone(),
                version: record.version.clone(),
                uuid: record.uuid.clone(),
                origin: record.origin.clone(),
                published_at: record.published_at.clone(),
            }),
        };
        self.store
            .catalog()
            .commit_image_tags(&new_image, tags, guard.lease.take())?;
        Ok(())
    }

    /// The record of a source image.
    pub(crate) fn source_record(&self, image: &kiln_store::ImageRecord) -> Result<SourceRecord> {
        let bytes = self.store.content().read_blob(&image.manifest_digest)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            SourceError::Malformed {
                what: format!("kiln's record of image {}", image.manifest_digest),
                detail: e.to_string(),
            }
            .into()
        })
    }

    /// What `inspect` shows of a source image; `None` for OCI images.
    pub(crate) fn source_details(
        &self,
        image: &kiln_store::ImageRecord,
    ) -> Result<Option<SourceDetails>> {
        if image.media_type != RECORD_MEDIA_TYPE {
            return Ok(None);
        }
        let record = self.source_record(image)?;
        let content = self.store.content();
        let mut manifest = None;
        let mut paths = BTreeMap::new();
        let mut files = Vec::new();
        for file in &record.files {
            let path = content.blob_path(&file.digest);
            if file.role == "source-manifest" {
                manifest = content
                    .read_blob(&file.digest)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
            } else {
                paths.entry(file.role.clone()).or_insert(path.clone());
            }
            files.push(SourceFileDetails {
                role: file.role.clone(),
                name: file.name.clone(),
                path,
                digest: file.digest.clone(),
                size: file.size,
                media_type: file.media_type.clone(),
                checksums: file.checksums.clone(),
            });
        }
        Ok(Some(SourceDetails {
            source: record.source,
            source_type: record.source_type,
            url: record.source_url,
            name: record.name,
            version: record.version,
            arch: record.arch,
            uuid: record.uuid,
            origin: record.origin,
            compression: record.compression,
            boot_args: record.boot_args,
            published_at: record.published_at,
            manifest,
            paths,
            files,
        }))
    }

    /// The kernel file of a source image, when it has one.
    pub(crate) fn source_kernel(&self, image: &kiln_store::ImageRecord) -> Result<Option<PathBuf>> {
        if image.media_type != RECORD_MEDIA_TYPE {
            return Ok(None);
        }
        Ok(self
            .store
            .catalog()
            .image_blobs(image.id)?
            .into_iter()
            .find(|b| b.role == "kernel")
            .map(|b| self.store.content().blob_path(&b.digest)))
    }

    /// The names under which images of `reference`'s source are found by
    /// `find`: the exact tag, else the newest installed image of that name.
    pub(crate) fn find_source_tags(
        &self,
        reference: &SourceReference,
    ) -> Result<Vec<kiln_store::TagRecord>> {
        let catalog = self.store.catalog();
        let tags = catalog.tags_named(&reference.to_string())?;
        if !tags.is_empty() || reference.version().is_some() {
            return Ok(tags);
        }
        let mut found = Vec::new();
        if let Some(newest) = catalog
            .source_images_named(reference.source(), reference.name())?
            .into_iter()
            .next()
        {
            found.extend(catalog.tags_of(newest.image_id)?.into_iter().take(1));
        }
        Ok(found)
    }

    /// A pulled image's summary for a source image.
    pub(crate) fn pulled_source(
        &self,
        reference: &str,
        digest: Digest,
        platform: String,
        cached: bool,
        downloaded: u64,
    ) -> PulledImage {
        PulledImage {
            reference: reference.to_string(),
            manifest_digest: digest,
            index_digest: None,
            platform,
            cached,
            bytes_downloaded: downloaded,
            layers: 0,
        }
    }
}

/// Whether `policy` lets a pull use what is cached.
pub(crate) fn may_use_cache(options: &PullOptions) -> bool {
    !options.force && options.policy != PullPolicy::Always
}
