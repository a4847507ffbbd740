//! Checksum catalogs (`catalog` sources): the smolvm `ImageManager` shape,
//! `ensure` / `is_cached` / `list_available`.

use std::path::PathBuf;
use std::sync::Arc;

use kiln_sources::catalog::{CatalogFile, CatalogImage, MAX_CATALOG};
use kiln_sources::github::{bundle_arch, host_arch, oci_arch};
use kiln_sources::{Location, SourceConfig, SourceType};
use kiln_types::{Digest, Platform, SourceReference};
use serde::Serialize;

use super::{
    CATALOG_ENTRY_MEDIA_TYPE, FileSpec, INITRD_MEDIA_TYPE, KERNEL_MEDIA_TYPE, NewSourceImage,
    RECORD_MEDIA_TYPE, ROOTFS_MEDIA_TYPE, SourceRecord, may_use_cache,
};
use crate::error::{Error, Result};
use crate::progress::{Event, Progress};
use crate::pull::{Observer, PullOptions, PullPolicy, PulledImage};
use crate::{LeaseGuard, Manager};

/// A catalog source: named images whose files carry checksums.
pub struct CatalogSource<'m> {
    manager: &'m Manager,
    name: String,
    config: SourceConfig,
}

/// An image a catalog offers.
#[derive(Debug, Clone, Serialize)]
pub struct AvailableCatalogImage {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: Option<String>,
    /// What it is.
    pub description: Option<String>,
    /// Architectures it has files for.
    pub architectures: Vec<String>,
    /// Whether the store has it, verified.
    pub installed: bool,
}

/// Local paths of an ensured catalog image.
#[derive(Debug, Clone, Serialize)]
pub struct CachedImage {
    /// `SOURCE://NAME`.
    pub reference: String,
    /// The image's digest in the store.
    pub image: Digest,
    /// The kernel.
    pub kernel: PathBuf,
    /// The root filesystem.
    pub rootfs: PathBuf,
    /// The initial ramdisk, when the catalog has one.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub boot_args: Option<String>,
    /// True when nothing was downloaded.
    pub cached: bool,
}

impl Manager {
    /// The catalog source called `name`.
    pub fn catalog_source(&self, name: &str) -> Result<CatalogSource<'_>> {
        let config = self.source_config(name)?;
        if config.source_type != SourceType::Catalog {
            return Err(Error::WrongSourceType {
                name: name.to_string(),
                actual: config.source_type.to_string(),
                expected: "catalog",
            });
        }
        Ok(CatalogSource {
            manager: self,
            name: name.to_string(),
            config,
        })
    }

    pub(crate) async fn pull_catalog_image(
        &self,
        reference: &SourceReference,
        _config: &SourceConfig,
        options: &PullOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<PulledImage> {
        let source = self.catalog_source(reference.source())?;
        let (image, downloaded) = source.fetch(reference, options, progress).await?;
        let platform = self
            .store
            .catalog()
            .image_by_digest(&image.image)?
            .and_then(|i| i.platform)
            .unwrap_or_default();
        Ok(self.pulled_source(
            &image.reference,
            image.image,
            platform,
            image.cached,
            downloaded,
        ))
    }
}

impl CatalogSource<'_> {
    async fn load(&self, progress: Arc<dyn Progress>) -> Result<CatalogFile> {
        let location = Location::parse(&self.config.url)?;
        let fetcher = self.manager.fetcher(&self.config)?;
        let what = format!("catalog {}", self.name);
        let (bytes, _) = fetcher
            .get(&location, None, MAX_CATALOG, &what, &Observer(progress))
            .await?;
        Ok(CatalogFile::parse(
            &bytes,
            CatalogFile::is_toml(&location),
            &format!("{} ({location})", self.name),
        )?)
    }

    fn reference(&self, name: &str) -> Result<SourceReference> {
        Ok(SourceReference::new(&self.name, name, None)?)
    }

    fn arch(platform: Option<&Platform>) -> String {
        match platform {
            Some(platform) => bundle_arch(&platform.architecture),
            None => host_arch().to_string(),
        }
    }

    /// Every image the catalog offers, marking those the store has.
    pub async fn list_available(
        &self,
        progress: Arc<dyn Progress>,
    ) -> Result<Vec<AvailableCatalogImage>> {
        let catalog = self.load(progress).await?;
        let mut available = Vec::new();
        for (name, image) in catalog.images {
            let installed = self.is_cached(&name)?;
            available.push(AvailableCatalogImage {
                name,
                version: image.version,
                description: image.description,
                architectures: image.architectures.keys().cloned().collect(),
                installed,
            });
        }
        Ok(available)
    }

    /// Whether the store has image `name` for the host, intact (a stat
    /// check of each file; re-hashes only files whose stat changed).
    pub fn is_cached(&self, name: &str) -> Result<bool> {
        if name.is_empty() {
            return Err(Error::InvalidSourceImageName {
                reference: format!("{}://", self.name),
                detail: "the image name is empty".into(),
            });
        }
        let reference = self.reference(name)?;
        let platform: Platform = format!("linux/{}", oci_arch(&Self::arch(None))).parse()?;
        Ok(self
            .manager
            .cached_source_image(&reference.to_string(), Some(&platform))?
            .is_some())
    }

    /// The local files of image `name`, downloading and verifying what the
    /// store does not have.
    pub async fn ensure(&self, name: &str, progress: Arc<dyn Progress>) -> Result<CachedImage> {
        let reference = if name.is_empty() {
            SourceReference::new(&self.name, "", None)?
        } else {
            self.reference(name)?
        };
        Ok(self
            .fetch(&reference, &PullOptions::default(), progress)
            .await?
            .0)
    }

    /// `ensure` with pull options.
    async fn fetch(
        &self,
        reference: &SourceReference,
        options: &PullOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<(CachedImage, u64)> {
        let manager = self.manager;
        let arch = Self::arch(options.platform.as_ref());
        let platform_text = format!("linux/{}", oci_arch(&arch));
        let platform: Platform = platform_text.parse()?;
        let tag = reference.to_string();
        if reference.version().is_some() {
            return Err(Error::InvalidSourceImageName {
                reference: tag,
                detail: "catalog images are named SOURCE://NAME, without @VERSION".into(),
            });
        }
        if !reference.name().is_empty() {
            if may_use_cache(options)
                && let Some(image) = manager.source_cache_hit(&tag, &platform, &progress)?
            {
                return Ok((self.cached_image(&tag, &image, true)?, 0));
            }
            if options.policy == PullPolicy::Never {
                return Err(Error::NotCached { reference: tag });
            }
        }
        let catalog = self.load(progress.clone()).await?;
        let Some(entry) = catalog.images.get(reference.name()) else {
            return Err(Error::UnknownSourceImage {
                reference: tag,
                available: catalog.names(),
            });
        };
        let files = entry.architectures.get(&arch).ok_or_else(|| {
            kiln_sources::SourceError::NoArchitecture {
                what: tag.clone(),
                arch: arch.clone(),
                available: entry.architectures.keys().cloned().collect(),
            }
        })?;
        let _lock = manager
            .lock_source_image(&format!("{tag} {platform_text}"))
            .await?;
        if may_use_cache(options)
            && let Some(image) = manager.source_cache_hit(&tag, &platform, &progress)?
        {
            return Ok((self.cached_image(&tag, &image, true)?, 0));
        }
        let base = Location::parse(&self.config.url)?;
        let fetcher = manager.fetcher(&self.config)?;
        let guard = LeaseGuard::new(manager)?;
        let mut wanted = vec![
            ("kernel", &files.kernel, KERNEL_MEDIA_TYPE),
            ("rootfs", &files.rootfs, ROOTFS_MEDIA_TYPE),
        ];
        if let Some(initrd) = &files.initrd {
            wanted.push(("initrd", initrd, INITRD_MEDIA_TYPE));
        }
        let mut stored = Vec::new();
        let mut downloaded = 0;
        for (role, file, media_type) in wanted {
            let location = base.join(&file.url)?;
            let name = file
                .url
                .rsplit('/')
                .next()
                .filter(|n| !n.is_empty())
                .unwrap_or(role)
                .to_string();
            let spec = FileSpec {
                role,
                name: format!("{tag} {role} ({name})"),
                location,
                accept: None,
                size: file.size,
                checksums: vec![file.checksum()],
                media_type: media_type.to_string(),
            };
            let (mut file, bytes) = manager
                .fetch_file(&fetcher, spec, guard.lease(), options.force, &progress)
                .await?;
            file.name = name;
            downloaded += bytes;
            stored.push(file);
        }
        let boot_args = files.boot_args.clone().or(entry.boot_args.clone());
        let entry_json = entry_document(reference.name(), entry);
        let record = SourceRecord {
            media_type: RECORD_MEDIA_TYPE.into(),
            source: self.name.clone(),
            source_type: SourceType::Catalog.to_string(),
            source_url: self.config.url.clone(),
            name: reference.name().to_string(),
            version: entry.version.clone(),
            arch: Some(arch),
            uuid: None,
            origin: None,
            compression: None,
            boot_args,
            published_at: None,
            files: Vec::new(),
        };
        let digest = manager.commit_source_image(
            NewSourceImage {
                record,
                source_manifest: Some((entry_json, CATALOG_ENTRY_MEDIA_TYPE)),
                files: stored,
                tags: vec![tag.clone()],
                platform: platform_text,
                created: None,
            },
            guard,
        )?;
        progress.event(Event::Stored {
            manifest: digest.clone(),
        });
        let image = manager
            .store
            .catalog()
            .image_by_digest(&digest)?
            .ok_or_else(|| Error::ImageNotFound { query: tag.clone() })?;
        Ok((self.cached_image(&tag, &image, false)?, downloaded))
    }

    fn cached_image(
        &self,
        tag: &str,
        image: &kiln_store::ImageRecord,
        cached: bool,
    ) -> Result<CachedImage> {
        let record = self.manager.source_record(image)?;
        let content = self.manager.store.content();
        let path_of = |role: &str| {
            record
                .files
                .iter()
                .find(|f| f.role == role)
                .map(|f| content.blob_path(&f.digest))
        };
        let missing = || Error::ImageNotFound {
            query: format!("{tag} (its record lacks a kernel or rootfs: pull it again)"),
        };
        Ok(CachedImage {
            reference: tag.to_string(),
            image: image.manifest_digest.clone(),
            kernel: path_of("kernel").ok_or_else(missing)?,
            rootfs: path_of("rootfs").ok_or_else(missing)?,
            initrd: path_of("initrd"),
            boot_args: record.boot_args,
            cached,
        })
    }
}

/// The catalog entry as kiln keeps it (JSON, with its name).
fn entry_document(name: &str, entry: &CatalogImage) -> Vec<u8> {
    let document = serde_json::json!({ "name": name, "image": entry });
    serde_json::to_vec_pretty(&document).unwrap_or_default()
}
