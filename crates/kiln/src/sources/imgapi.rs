//! IMGAPI image servers (`imgapi` sources), as SmartOS `imgadm` uses them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_sources::imgapi::{Filter, ImageManifest, ImageServer, is_uuid};
use kiln_sources::{Location, SourceConfig, SourceError, SourceType};
use kiln_types::{Digest, SourceReference};
use serde_json::Value;

use super::{
    FileSpec, IMGAPI_MANIFEST_MEDIA_TYPE, NewSourceImage, RECORD_MEDIA_TYPE, SourceRecord,
    StoredFile, may_use_cache,
};
use crate::error::{Error, Result};
use crate::progress::{Event, Progress};
use crate::pull::{Observer, PullOptions, PullPolicy, PulledImage};
use crate::{LeaseGuard, Manager};

/// Longest origin chain followed.
const MAX_ORIGIN_DEPTH: usize = 64;

/// Media type of an IMGAPI image file, by its compression.
fn file_media_type(compression: &str) -> String {
    match compression {
        "none" => "application/vnd.joyent.imgapi.file.v1".to_string(),
        other => format!("application/vnd.joyent.imgapi.file.v1+{other}"),
    }
}

/// Where `update` caches an imgapi source's image list.
fn list_cache_path(root: &Path, source: &str) -> PathBuf {
    root.join("sources-v1").join(source).join("images.json")
}

impl Manager {
    fn imgapi_config(&self, source: &str) -> Result<SourceConfig> {
        let config = self.source_config(source)?;
        if config.source_type != SourceType::Imgapi {
            return Err(Error::WrongSourceType {
                name: source.to_string(),
                actual: config.source_type.to_string(),
                expected: "imgapi",
            });
        }
        Ok(config)
    }

    /// Refreshes the cached image lists of imgapi sources (all of them when
    /// `sources` is empty). Returns each source with its image count.
    pub async fn update_sources(
        &self,
        sources: &[String],
        progress: Arc<dyn Progress>,
    ) -> Result<Vec<(String, usize)>> {
        let names: Vec<String> = if sources.is_empty() {
            self.config()?
                .sources
                .iter()
                .filter(|(_, c)| c.source_type == SourceType::Imgapi)
                .map(|(n, _)| n.clone())
                .collect()
        } else {
            sources.to_vec()
        };
        let mut counts = Vec::new();
        for name in names {
            let config = self.imgapi_config(&name)?;
            let images = self.refresh_list(&name, &config, progress.clone()).await?;
            counts.push((name, images.len()));
        }
        Ok(counts)
    }

    async fn refresh_list(
        &self,
        source: &str,
        config: &SourceConfig,
        progress: Arc<dyn Progress>,
    ) -> Result<Vec<Value>> {
        let fetcher = self.fetcher(config)?;
        let server = ImageServer::new(&fetcher, &config.url)?;
        let images = server.list(&Observer(progress)).await?;
        let path = list_cache_path(self.store.root(), source);
        if let Some(parent) = path.parent() {
            fs_err::create_dir_all(parent).map_err(kiln_store::StoreError::from)?;
        }
        let bytes = serde_json::to_vec(&images).map_err(|e| Error::Task(e.to_string()))?;
        kiln_store::fsutil::write_atomic(&path, &bytes, false)
            .map_err(kiln_store::StoreError::from)?;
        Ok(images)
    }

    /// The cached list (fetched when there is none yet).
    async fn image_list(
        &self,
        source: &str,
        config: &SourceConfig,
        progress: Arc<dyn Progress>,
    ) -> Result<Vec<Value>> {
        let path = list_cache_path(self.store.root(), source);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                SourceError::Malformed {
                    what: format!("cached image list {}", path.display()),
                    detail: format!("{e} (run `kiln update {source}`)"),
                }
                .into()
            }),
            Err(_) => self.refresh_list(source, config, progress).await,
        }
    }

    /// Images an imgapi source offers that pass every filter, each with
    /// `installed` added, in the server's order.
    pub async fn avail_images(
        &self,
        source: &str,
        filters: &[Filter],
        progress: Arc<dyn Progress>,
    ) -> Result<Vec<Value>> {
        let config = self.imgapi_config(source)?;
        let images = self.image_list(source, &config, progress).await?;
        let catalog = self.store.catalog();
        let mut selected = Vec::new();
        for mut image in images {
            if !filters.iter().all(|f| f.matches(&image)) {
                continue;
            }
            let installed = match image.get("uuid").and_then(Value::as_str) {
                Some(uuid) => !catalog.source_images_with_uuid(uuid)?.is_empty(),
                None => false,
            };
            if let Some(object) = image.as_object_mut() {
                object.insert("installed".into(), Value::Bool(installed));
            }
            selected.push(image);
        }
        Ok(selected)
    }

    /// An installed, intact image with this UUID.
    fn installed_uuid(&self, uuid: &str) -> Result<Option<kiln_store::ImageRecord>> {
        let catalog = self.store.catalog();
        for record in catalog.source_images_with_uuid(uuid)? {
            if self.verify_image(record.image_id)?
                && let Some(image) = catalog.image(record.image_id)?
            {
                return Ok(Some(image));
            }
        }
        Ok(None)
    }

    /// The UUID `reference` names: itself, or the newest image of that
    /// name (and version) in the source's list.
    async fn resolve_uuid(
        &self,
        reference: &SourceReference,
        config: &SourceConfig,
        options: &PullOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<String> {
        if is_uuid(reference.name()) && reference.version().is_none() {
            return Ok(reference.name().to_ascii_lowercase());
        }
        if reference.name().is_empty() {
            return Err(Error::InvalidSourceImageName {
                reference: reference.to_string(),
                detail: "name an image: SOURCE://UUID, SOURCE://NAME or SOURCE://NAME@VERSION"
                    .into(),
            });
        }
        // NAME@VERSION names one image: the installed one will do. A bare
        // NAME means the newest published, so it asks the (cached) list.
        if may_use_cache(options) && reference.version().is_some() {
            let installed = self
                .store
                .catalog()
                .source_images_named(reference.source(), reference.name())?;
            if let Some(found) = installed.iter().find(|r| {
                reference.version().is_none() || r.version.as_deref() == reference.version()
            }) && let Some(uuid) = &found.uuid
            {
                return Ok(uuid.clone());
            }
        }
        let mut images = self
            .image_list(reference.source(), config, progress.clone())
            .await?;
        let matches = |images: &[Value]| -> Option<String> {
            images
                .iter()
                .filter(|i| i.get("name").and_then(Value::as_str) == Some(reference.name()))
                .filter(|i| {
                    reference.version().is_none()
                        || i.get("version").and_then(Value::as_str) == reference.version()
                })
                .max_by_key(|i| {
                    i.get("published_at")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                })
                .and_then(|i| i.get("uuid").and_then(Value::as_str).map(str::to_string))
        };
        if let Some(uuid) = matches(&images) {
            return Ok(uuid);
        }
        // The cached list may be old: refresh once.
        images = self
            .refresh_list(reference.source(), config, progress)
            .await?;
        if let Some(uuid) = matches(&images) {
            return Ok(uuid);
        }
        let mut versions: Vec<String> = images
            .iter()
            .filter(|i| i.get("name").and_then(Value::as_str) == Some(reference.name()))
            .filter_map(|i| i.get("version").and_then(Value::as_str))
            .map(|v| format!("{}@{v}", reference.name()))
            .collect();
        versions.sort();
        versions.dedup();
        Err(Error::UnknownSourceImage {
            reference: reference.to_string(),
            available: versions,
        })
    }

    pub(crate) async fn pull_imgapi(
        &self,
        reference: &SourceReference,
        config: &SourceConfig,
        options: &PullOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<PulledImage> {
        let uuid = self
            .resolve_uuid(reference, config, options, progress.clone())
            .await?;
        let source = reference.source();
        if may_use_cache(options)
            && let Some(image) = self.installed_uuid(&uuid)?
        {
            progress.event(Event::Cached {
                manifest: image.manifest_digest.clone(),
            });
            self.store.catalog().touch_image(image.id)?;
            self.name_imgapi_image(source, &image)?;
            let platform = image.platform.clone().unwrap_or_default();
            return Ok(self.pulled_source(
                &reference.to_string(),
                image.manifest_digest,
                platform,
                true,
                0,
            ));
        }
        if options.policy == PullPolicy::Never {
            return Err(Error::NotCached {
                reference: reference.to_string(),
            });
        }
        let fetcher = self.fetcher(config)?;
        let server = ImageServer::new(&fetcher, &config.url)?;
        let observer = Observer(progress.clone());
        // The chain, newest first: the image, its origin, the origin's origin…
        let mut chain = Vec::new();
        let mut seen = HashSet::new();
        let mut next = Some(uuid.clone());
        while let Some(current) = next.take() {
            if !seen.insert(current.clone()) || chain.len() >= MAX_ORIGIN_DEPTH {
                return Err(SourceError::Invalid {
                    what: format!("origin chain of {reference}"),
                    detail: format!("it loops or is deeper than {MAX_ORIGIN_DEPTH} at {current}"),
                }
                .into());
            }
            let (manifest, bytes) = server.manifest(&current, &observer).await?;
            next = manifest
                .origin
                .clone()
                .filter(|origin| self.installed_uuid(origin).ok().flatten().is_none());
            chain.push((manifest, bytes));
        }
        let mut result = None;
        let mut downloaded = 0;
        let force_all = options.force;
        for (manifest, bytes) in chain.into_iter().rev() {
            let is_target = manifest.uuid == uuid;
            let _lock = self
                .lock_source_image(&format!("imgapi {}", manifest.uuid))
                .await?;
            if !(force_all && is_target)
                && let Some(image) = self.installed_uuid(&manifest.uuid)?
            {
                if is_target {
                    self.name_imgapi_image(source, &image)?;
                    result = Some((
                        image.manifest_digest,
                        image.platform.unwrap_or_default(),
                        true,
                    ));
                }
                continue;
            }
            let guard = LeaseGuard::new(self)?;
            let spec = FileSpec {
                role: "file",
                name: format!("{source}://{} file", manifest.uuid),
                location: server.file_location(&manifest.uuid)?,
                accept: None,
                size: Some(manifest.file.size),
                checksums: manifest.file.checksums(),
                media_type: file_media_type(&manifest.file.compression),
            };
            let (stored, bytes_downloaded) = self
                .fetch_file(
                    &fetcher,
                    spec,
                    guard.lease(),
                    force_all && is_target,
                    &progress,
                )
                .await?;
            downloaded += bytes_downloaded;
            let platform = manifest.os.clone();
            let digest =
                self.commit_imgapi(source, &config.url, &manifest, &bytes, stored, guard)?;
            progress.event(Event::Stored {
                manifest: digest.clone(),
            });
            if is_target {
                result = Some((digest, platform, false));
            }
        }
        let (digest, platform, cached) = result.ok_or_else(|| Error::ImageNotFound {
            query: reference.to_string(),
        })?;
        Ok(self.pulled_source(&reference.to_string(), digest, platform, cached, downloaded))
    }

    /// Gives an installed image (perhaps installed through another source
    /// name, or from local files) the names `source` gives it.
    fn name_imgapi_image(&self, source: &str, image: &kiln_store::ImageRecord) -> Result<()> {
        let catalog = self.store.catalog();
        let Some(record) = catalog.source_image(image.id)? else {
            return Ok(());
        };
        let platform = image.platform.clone().unwrap_or_default();
        let mut names = Vec::new();
        if let Some(uuid) = &record.uuid {
            names.push(format!("{source}://{uuid}"));
        }
        if let Some(version) = &record.version {
            names.push(format!("{source}://{}@{version}", record.name));
        }
        for name in names {
            if !catalog
                .tags_named(&name)?
                .iter()
                .any(|t| t.image_id == image.id)
            {
                catalog.add_tag(
                    &kiln_store::NewTag {
                        name,
                        platform: platform.clone(),
                        index: None,
                    },
                    image.id,
                )?;
            }
        }
        Ok(())
    }

    fn commit_imgapi(
        &self,
        source: &str,
        url: &str,
        manifest: &ImageManifest,
        manifest_bytes: &[u8],
        mut file: StoredFile,
        guard: LeaseGuard<'_>,
    ) -> Result<Digest> {
        file.name = format!("{}-{}.file", manifest.name, manifest.version);
        let record = SourceRecord {
            media_type: RECORD_MEDIA_TYPE.into(),
            source: source.to_string(),
            source_type: SourceType::Imgapi.to_string(),
            source_url: url.to_string(),
            name: manifest.name.clone(),
            version: Some(manifest.version.clone()),
            arch: None,
            uuid: Some(manifest.uuid.clone()),
            origin: manifest.origin.clone(),
            compression: Some(manifest.file.compression.clone()),
            boot_args: None,
            published_at: manifest.published_at.clone(),
            files: Vec::new(),
        };
        self.commit_source_image(
            NewSourceImage {
                record,
                source_manifest: Some((manifest_bytes.to_vec(), IMGAPI_MANIFEST_MEDIA_TYPE)),
                files: vec![file],
                tags: vec![
                    format!("{source}://{}", manifest.uuid),
                    format!("{source}://{}@{}", manifest.name, manifest.version),
                ],
                platform: manifest.os.clone(),
                created: manifest.published_at.clone(),
            },
            guard,
        )
    }

    /// Installs an IMGAPI image from a local manifest and file (`imgadm
    /// install -m -f`), with the checks of a pull; its origin must be
    /// installed. Named `SOURCE://UUID` and `SOURCE://NAME@VERSION`.
    pub async fn install_image_file(
        &self,
        manifest_path: &Path,
        file_path: &Path,
        source: &str,
        progress: Arc<dyn Progress>,
    ) -> Result<PulledImage> {
        kiln_types::validate_source_name(source).map_err(|detail| Error::InvalidSource {
            name: source.to_string(),
            detail,
        })?;
        let bytes = fs_err::read(manifest_path).map_err(|e| SourceError::Invalid {
            what: format!("manifest {}", manifest_path.display()),
            detail: e.to_string(),
        })?;
        let manifest = ImageManifest::parse(&bytes, &manifest_path.display().to_string())?;
        if let Some(origin) = &manifest.origin
            && self.installed_uuid(origin)?.is_none()
        {
            return Err(Error::OriginMissing {
                image: manifest.uuid.clone(),
                origin: origin.clone(),
            });
        }
        let _lock = self
            .lock_source_image(&format!("imgapi {}", manifest.uuid))
            .await?;
        let fetcher = kiln_sources::Fetcher::new(&kiln_sources::FetchOptions::default())?;
        let guard = LeaseGuard::new(self)?;
        let spec = FileSpec {
            role: "file",
            name: file_path.display().to_string(),
            location: Location::Path(file_path.to_path_buf()),
            accept: None,
            size: Some(manifest.file.size),
            checksums: manifest.file.checksums(),
            media_type: file_media_type(&manifest.file.compression),
        };
        let (stored, _) = self
            .fetch_file(&fetcher, spec, guard.lease(), false, &progress)
            .await?;
        let url = format!(
            "file://{}",
            std::path::absolute(manifest_path)
                .unwrap_or_else(|_| manifest_path.to_path_buf())
                .display()
        );
        let platform = manifest.os.clone();
        let digest = self.commit_imgapi(source, &url, &manifest, &bytes, stored, guard)?;
        progress.event(Event::Stored {
            manifest: digest.clone(),
        });
        Ok(self.pulled_source(
            &format!("{source}://{}", manifest.uuid),
            digest,
            platform,
            false,
            0,
        ))
    }
}
