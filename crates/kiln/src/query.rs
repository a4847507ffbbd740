//! Listing, inspecting and finding images in the store.

use std::collections::BTreeMap;

use kiln_store::{ImageRecord, TagRecord};
use kiln_types::manifest::RuntimeConfig;
use kiln_types::{Digest, ImageConfig, Platform, Reference};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::{Manager, tag_name};

/// One line of `kiln images`: an image under one of its names (or none).
#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    /// The name, `None` for an image no tag points at.
    pub reference: Option<String>,
    /// Manifest digest.
    pub manifest_digest: Digest,
    /// Index digest the name resolved through, if any.
    pub index_digest: Option<Digest>,
    /// Platform.
    pub platform: Option<String>,
    /// Kind of image (`oci`, …).
    pub kind: String,
    /// Number of layers.
    pub layers: usize,
    /// Bytes stored (compressed blobs).
    pub size: u64,
    /// Bytes once unpacked (sum of uncompressed layers), when known.
    pub unpacked_size: Option<u64>,
    /// Creation time the image declares.
    pub created: Option<String>,
    /// When it entered the store (seconds since the epoch).
    pub pulled_at: i64,
    /// When it was last used (seconds since the epoch).
    pub last_used_at: i64,
    /// False when a blob was lost; pull again.
    pub complete: bool,
    /// How many holders (disks) use it.
    pub holders: usize,
}

/// A layer as `kiln inspect` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LayerDetails {
    /// Position, base first.
    pub position: u32,
    /// Compressed blob digest.
    pub digest: Digest,
    /// Digest of the uncompressed tar.
    pub diff_id: Option<Digest>,
    /// Media type.
    pub media_type: String,
    /// Compressed size.
    pub size: u64,
    /// Uncompressed size.
    pub uncompressed_size: Option<u64>,
}

/// Everything `kiln inspect` shows.
#[derive(Debug, Clone, Serialize)]
pub struct ImageDetails {
    /// Names pointing at the image.
    pub references: Vec<String>,
    /// Manifest digest.
    pub manifest_digest: Digest,
    /// Manifest media type.
    pub media_type: String,
    /// Index digests its names resolved through.
    pub index_digests: Vec<Digest>,
    /// Kind of image.
    pub kind: String,
    /// Platform.
    pub platform: Option<String>,
    /// Config digest.
    pub config_digest: Option<Digest>,
    /// Creation time the image declares.
    pub created: Option<String>,
    /// Author.
    pub author: Option<String>,
    /// Runtime defaults (env, cmd, entrypoint, working dir, user, labels, stop signal).
    pub config: RuntimeConfig,
    /// Layers.
    pub layers: Vec<LayerDetails>,
    /// Bytes stored.
    pub size: u64,
    /// When it entered the store.
    pub pulled_at: i64,
    /// When it was last used.
    pub last_used_at: i64,
    /// False when a blob was lost.
    pub complete: bool,
    /// Holders, as `kind:name`.
    pub holders: Vec<String>,
    /// Root filesystems converted from it and kept in the store.
    pub rootfs: Vec<RootfsDetails>,
    /// Source, files and local paths of an image from a non-OCI source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::SourceDetails>,
}

/// A root filesystem the store holds for an image (`kiln rootfs`,
/// `kiln pull --rootfs`, `kiln disk create`).
#[derive(Debug, Clone, Serialize)]
pub struct RootfsDetails {
    /// `ext4`, `erofs` or `initramfs`.
    pub format: String,
    /// Options that shaped it (`size=BYTES`, or empty for the defaults).
    pub options: String,
    /// The converter that made it.
    pub converter_version: String,
    /// Whether this kiln's converter made it (`kiln rootfs` builds anew
    /// what an older one made; `kiln prune` removes the older one unless a
    /// disk uses it).
    pub current: bool,
    /// Digest of the file.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Where it is.
    pub path: std::path::PathBuf,
    /// When it was made (seconds since the epoch).
    pub created_at: i64,
}

/// An image found by what the user typed, with the name that found it.
#[derive(Debug, Clone)]
pub struct Found {
    /// The image.
    pub image: ImageRecord,
    /// The tag the query named, when it named one.
    pub tag: Option<TagRecord>,
}

impl Manager {
    /// Every image under each of its names, newest first.
    pub fn images(&self) -> Result<Vec<ImageSummary>> {
        let catalog = self.store.catalog();
        let mut tags: BTreeMap<i64, Vec<TagRecord>> = BTreeMap::new();
        for tag in catalog.all_tags()? {
            tags.entry(tag.image_id).or_default().push(tag);
        }
        let mut summaries = Vec::new();
        for image in catalog.images()? {
            let blobs = catalog.image_blobs(image.id)?;
            let layer_blobs: Vec<_> = blobs.iter().filter(|b| b.role == "layer").collect();
            let mut unpacked = Some(0u64);
            for blob in &layer_blobs {
                let size = catalog
                    .layer(&blob.digest)?
                    .and_then(|l| l.uncompressed_size);
                unpacked = unpacked.zip(size).map(|(a, b)| a + b);
            }
            let holders = catalog.holders_of(image.id)?.len();
            let names = tags.remove(&image.id).unwrap_or_default();
            let summary = |reference: Option<String>, index_digest: Option<Digest>| ImageSummary {
                reference,
                manifest_digest: image.manifest_digest.clone(),
                index_digest,
                platform: image.platform.clone(),
                kind: image.kind.clone(),
                layers: layer_blobs.len(),
                size: image.size,
                unpacked_size: unpacked,
                created: image.image_created.clone(),
                pulled_at: image.created_at,
                last_used_at: image.last_used_at,
                complete: image.complete,
                holders,
            };
            if names.is_empty() {
                summaries.push(summary(None, None));
            }
            for tag in names {
                summaries.push(summary(Some(tag.name), tag.index_digest));
            }
        }
        Ok(summaries)
    }

    /// Finds images by name (`alpine`, `host/repo:tag`, `repo@sha256:…`), by
    /// manifest digest (`sha256:…`) or by a unique digest prefix (≥ 4 hex).
    /// With `platform`, only images for it.
    pub fn find(&self, query: &str, platform: Option<&Platform>) -> Result<Vec<Found>> {
        let catalog = self.store.catalog();
        let platform_ok = |image: &ImageRecord| match (
            platform,
            image.platform.as_deref().map(str::parse::<Platform>),
        ) {
            (None, _) => true,
            (Some(wanted), Some(Ok(actual))) => wanted.accepts(&actual),
            (Some(_), _) => false,
        };
        if let Ok(digest) = query.parse::<Digest>() {
            let found: Vec<Found> = catalog
                .image_by_digest(&digest)?
                .into_iter()
                .filter(|image| platform_ok(image))
                .map(|image| Found { image, tag: None })
                .collect();
            return if found.is_empty() {
                Err(Error::ImageNotFound {
                    query: query.to_string(),
                })
            } else {
                Ok(found)
            };
        }
        let hex = query.strip_prefix("sha256:").unwrap_or(query);
        if hex.len() >= 4
            && hex.len() <= 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            let matches: Vec<ImageRecord> = catalog
                .images_by_prefix(hex)?
                .into_iter()
                .filter(|i| platform_ok(i))
                .collect();
            match matches.len() {
                0 => {}
                1 => {
                    return Ok(matches
                        .into_iter()
                        .map(|image| Found { image, tag: None })
                        .collect());
                }
                _ => {
                    return Err(Error::Ambiguous {
                        query: query.to_string(),
                        candidates: matches
                            .iter()
                            .map(|i| i.manifest_digest.to_string())
                            .collect(),
                    });
                }
            }
        }
        if kiln_types::SourceReference::looks_like(query) {
            let reference: kiln_types::SourceReference = query.parse()?;
            let mut found = Vec::new();
            for tag in self.find_source_tags(&reference)? {
                if let Some(image) = catalog.image(tag.image_id)?
                    && platform_ok(&image)
                {
                    found.push(Found {
                        image,
                        tag: Some(tag),
                    });
                }
            }
            if found.is_empty() {
                return Err(Error::ImageNotFound {
                    query: query.to_string(),
                });
            }
            return Ok(found);
        }
        let reference: Reference = query.parse()?;
        let mut found = Vec::new();
        for tag in catalog.tags_named(&tag_name(&reference))? {
            if let Some(image) = catalog.image(tag.image_id)?
                && platform_ok(&image)
            {
                found.push(Found {
                    image,
                    tag: Some(tag),
                });
            }
        }
        if found.is_empty()
            && let Some(digest) = reference.digest()
        {
            for tag in catalog.tags_with_index(digest)? {
                if let Some(image) = catalog.image(tag.image_id)?
                    && platform_ok(&image)
                {
                    found.push(Found {
                        image,
                        tag: Some(tag),
                    });
                }
            }
            if let Some(image) = catalog.image_by_digest(digest)?
                && platform_ok(&image)
                && !found.iter().any(|f| f.image.id == image.id)
            {
                found.push(Found { image, tag: None });
            }
        }
        if found.is_empty() {
            return Err(Error::ImageNotFound {
                query: query.to_string(),
            });
        }
        Ok(found)
    }

    /// Full details of the image(s) `query` names: one per platform.
    pub fn inspect(&self, query: &str, platform: Option<&Platform>) -> Result<Vec<ImageDetails>> {
        let catalog = self.store.catalog();
        let mut details = Vec::new();
        for found in self.find(query, platform)? {
            let image = found.image;
            let tags = catalog.tags_of(image.id)?;
            let source = self.source_details(&image)?;
            let config = match &image.config_digest {
                Some(digest) => {
                    let bytes = self.store.content().read_blob(digest)?;
                    ImageConfig::from_slice(&bytes).map_err(|source| Error::Manifest {
                        reference: query.to_string(),
                        source,
                    })?
                }
                None => ImageConfig::default(),
            };
            let mut layers = Vec::new();
            for blob in catalog
                .image_blobs(image.id)?
                .into_iter()
                .filter(|b| b.role == "layer")
            {
                let record = catalog.layer(&blob.digest)?;
                layers.push(LayerDetails {
                    position: blob.position,
                    diff_id: record.as_ref().and_then(|r| r.diff_id.clone()),
                    uncompressed_size: record.and_then(|r| r.uncompressed_size),
                    digest: blob.digest,
                    media_type: blob.media_type,
                    size: blob.size,
                });
            }
            let mut index_digests: Vec<Digest> =
                tags.iter().filter_map(|t| t.index_digest.clone()).collect();
            index_digests.sort();
            index_digests.dedup();
            details.push(ImageDetails {
                references: tags.iter().map(|t| t.name.clone()).collect(),
                manifest_digest: image.manifest_digest,
                media_type: image.media_type,
                index_digests,
                kind: image.kind,
                platform: image.platform,
                config_digest: image.config_digest,
                created: config.created.clone().or(image.image_created),
                author: config.author.clone(),
                config: config.config.unwrap_or_default(),
                layers,
                size: image.size,
                pulled_at: image.created_at,
                last_used_at: image.last_used_at,
                complete: image.complete,
                holders: catalog
                    .holders_of(image.id)?
                    .into_iter()
                    .map(|h| format!("{}:{}", h.kind, h.name))
                    .collect(),
                rootfs: catalog
                    .artifacts_of(image.id)?
                    .into_iter()
                    .map(|a| RootfsDetails {
                        current: a.converter_version == crate::CONVERTER_VERSION,
                        path: self.store.content().blob_path(&a.digest),
                        format: a.format,
                        options: a.options,
                        converter_version: a.converter_version,
                        digest: a.digest,
                        size: a.size,
                        created_at: a.created_at,
                    })
                    .collect(),
                source,
            });
        }
        Ok(details)
    }
}
