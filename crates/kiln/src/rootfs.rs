//! Images → what a microVM boots. Results are derived artifacts in the
//! store: a blob plus an `artifacts` row keyed by the image's manifest,
//! the format, the options and the converter version, so a second request
//! is instant, `prune`/`rmi` remove them with their image and `fsck`
//! re-hashes them like every blob.

use std::io::Write;
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kiln_rootfs::{
    ContentRef, LayerDevice, LayerPipe, ObjectDir, ParsedLayer, ReadAhead, Tree, layer_pipe,
    layer_reader_ahead, parse_layer_unless, plan_layer_data, read_layers_with_contents,
    write_erofs, write_erofs_layered, write_ext4, write_initramfs, write_layer_data,
};
use kiln_store::ArtifactRecord;
use kiln_types::media_type;
use kiln_types::{Algorithm, Digest, Hasher, Platform};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::{ConvertStage, Event, Manager, Progress, Scratch};

/// Bumped whenever a writer's output for the same input changes.
pub const CONVERTER_VERSION: &str = "kiln-rootfs-3";

/// What to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RootfsFormat {
    /// gzip-compressed newc cpio, for `-initrd`.
    Initramfs,
    /// ext4 raw disk image, for a root block device.
    Ext4,
    /// EROFS image (uncompressed), a read-only root filesystem.
    Erofs,
}

impl RootfsFormat {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            RootfsFormat::Initramfs => "initramfs",
            RootfsFormat::Ext4 => "ext4",
            RootfsFormat::Erofs => "erofs",
        }
    }
}

/// A built (or cached) root filesystem.
#[derive(Debug, Clone, Serialize)]
pub struct RootfsArtifact {
    /// Manifest digest of the image it was made from.
    pub image: Digest,
    /// Format.
    pub format: RootfsFormat,
    /// Digest of the file.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Where it lives in the store (read-only; copy it to change it).
    pub path: PathBuf,
    /// True when it was already in the store.
    pub cached: bool,
    /// True when it was built from layers unpacked as they downloaded
    /// (`pull --rootfs`), not from the stored layers.
    pub unpacked_while_pulling: bool,
}

pub(crate) struct HashingWriter<W> {
    pub(crate) inner: W,
    pub(crate) hasher: Hasher,
    pub(crate) size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Layers unpacked while they download (`pull --rootfs`): each layer's
/// uncompressed bytes, as the pull's diff_id check produces them, are
/// parsed on a thread of their own, contents into one scratch pack. Parsed
/// layers are applied only once the whole image checked out.
pub(crate) struct Unpacker {
    objects: Arc<ObjectDir>,
    /// Set when the pull fails: parsing stops between entries.
    stop: Arc<AtomicBool>,
    scratch: Scratch,
}

/// A layer being parsed.
pub(crate) type Parsing = std::thread::JoinHandle<ParsedLayer>;

impl Unpacker {
    fn new(manager: &Manager) -> Result<Unpacker> {
        let scratch = Scratch::new(manager)?;
        let objects =
            ObjectDir::open(&scratch.0.join("objects")).map_err(kiln_store::StoreError::from)?;
        Ok(Unpacker {
            objects: Arc::new(objects),
            stop: Arc::new(AtomicBool::new(false)),
            scratch,
        })
    }

    fn parse(&self, index: usize, reader: ReadAhead) -> std::io::Result<Parsing> {
        let (objects, stop) = (self.objects.clone(), self.stop.clone());
        std::thread::Builder::new()
            .name("kiln-unpack".into())
            .spawn(move || parse_layer_unless(index, reader, &objects, &stop))
    }

    /// Where layer `index`'s uncompressed bytes go, and the thread parsing them.
    pub(crate) fn tee(&self, index: usize) -> std::io::Result<(LayerPipe, Parsing)> {
        let (pipe, reader) = layer_pipe();
        Ok((pipe, self.parse(index, reader)?))
    }

    /// Parses layer `index` from its stored blob.
    pub(crate) fn stored(
        &self,
        index: usize,
        blob: impl std::io::Read + Send + 'static,
        compression: kiln_types::media_type::Compression,
    ) -> std::io::Result<Parsing> {
        self.parse(index, layer_reader_ahead(blob, compression))
    }

    /// The parsed layer (waits for its thread).
    pub(crate) async fn finish(parsing: Parsing) -> Result<ParsedLayer> {
        tokio::task::spawn_blocking(move || parsing.join())
            .await
            .map_err(|e| Error::Task(e.to_string()))?
            .map_err(|_| Error::Task("a layer's unpacking thread panicked".into()))
    }
}

impl Drop for Unpacker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Manager {
    /// Builds (or finds) the root filesystem of the image `query` names.
    /// `size` (ext4 only) is the image size in bytes; default: content plus
    /// headroom. A build tells `progress` how far it is ([`ConvertStage`]).
    pub fn rootfs(
        &self,
        query: &str,
        platform: Option<&Platform>,
        format: RootfsFormat,
        size: Option<u64>,
        progress: Arc<dyn Progress>,
    ) -> Result<RootfsArtifact> {
        let image = self.one_image(query, platform)?;
        let mut artifacts = self.rootfs_of(query, &image, &[(format, size)], None, &progress)?;
        Ok(artifacts.remove(0))
    }

    /// The root filesystems of `image` in `formats`, in that order: a
    /// source image's own, else found in the store, else built. All the
    /// missing ones are built from one tree: the layers parsed while
    /// pulling when `parsed` is given, else the stored layers, read once.
    fn rootfs_of(
        &self,
        query: &str,
        image: &kiln_store::ImageRecord,
        formats: &[(RootfsFormat, Option<u64>)],
        parsed: Option<(Vec<ParsedLayer>, &Unpacker)>,
        progress: &Arc<dyn Progress>,
    ) -> Result<Vec<RootfsArtifact>> {
        if image.media_type == crate::RECORD_MEDIA_TYPE {
            return formats
                .iter()
                .map(|&(format, size)| self.source_rootfs(query, image, format, size))
                .collect();
        }
        let mut artifacts = formats
            .iter()
            .map(|&(format, size)| self.cached_rootfs(image, format, size))
            .collect::<Result<Vec<_>>>()?;
        if artifacts.iter().all(Option::is_some) {
            return Ok(artifacts.into_iter().flatten().collect());
        }
        let unpacked_while_pulling = parsed.is_some();
        let (reading, own_scratch);
        let (tree, objects, scratch) = match parsed {
            Some((layers, unpacker)) => {
                let mut tree = Tree::new();
                for layer in layers {
                    layer
                        .apply(&mut tree)
                        .map_err(|e| self.layer_error(image, query, e))?;
                }
                (tree, unpacker.objects.clone(), unpacker.scratch.0.as_path())
            }
            None => {
                // Leased while the layers are read.
                reading = crate::LeaseGuard::new(self)?;
                own_scratch = Scratch::new(self)?;
                let (tree, objects, _) =
                    self.image_tree(image, query, reading.lease(), &own_scratch.0, progress)?;
                (tree, Arc::new(objects), own_scratch.0.as_path())
            }
        };
        for (artifact, &(format, size)) in artifacts.iter_mut().zip(formats) {
            if artifact.is_none() {
                let mut built =
                    self.build_rootfs(image, &tree, &objects, (format, size), scratch, progress)?;
                built.unpacked_while_pulling = unpacked_while_pulling;
                *artifact = Some(built);
            }
        }
        Ok(artifacts.into_iter().flatten().collect())
    }

    /// The artifact already made from `image` with these parameters, if its
    /// blob is still there.
    fn cached_rootfs(
        &self,
        image: &kiln_store::ImageRecord,
        format: RootfsFormat,
        size: Option<u64>,
    ) -> Result<Option<RootfsArtifact>> {
        let catalog = self.store.catalog();
        let options = rootfs_options(format, size);
        let Some(found) =
            catalog.artifact(image.id, format.as_str(), &options, CONVERTER_VERSION)?
        else {
            return Ok(None);
        };
        if self.store.content().blob_size(&found.digest)? != Some(found.size) {
            return Ok(None);
        }
        catalog.touch_image(image.id)?;
        Ok(Some(RootfsArtifact {
            image: image.manifest_digest.clone(),
            format,
            path: self.store.content().blob_path(&found.digest),
            digest: found.digest,
            size: found.size,
            cached: true,
            unpacked_while_pulling: false,
        }))
    }

    /// Writes `tree` (contents in `objects`) as a `format` image in
    /// `scratch`, then commits it as the artifact of `image` (a lease keeps
    /// the new blob until the artifact row holds it).
    fn build_rootfs(
        &self,
        image: &kiln_store::ImageRecord,
        tree: &Tree,
        objects: &ObjectDir,
        (format, size): (RootfsFormat, Option<u64>),
        scratch: &Path,
        progress: &Arc<dyn Progress>,
    ) -> Result<RootfsArtifact> {
        let mut guard = crate::LeaseGuard::new(self)?;
        let catalog = self.store.catalog();
        let output = scratch.join(format!("output-{}", format.as_str()));
        let identity = image.manifest_digest.to_string();
        let tell = telling(progress, ConvertStage::Image(format));
        let (digest, written) = match format {
            RootfsFormat::Initramfs => write_output(&output, tell, |writer| {
                write_initramfs(tree, objects, writer)
            })
            .map_err(kiln_store::StoreError::from)?,
            RootfsFormat::Erofs => {
                write_erofs(tree, objects, &output, identity.as_bytes(), Some(tell))?
            }
            RootfsFormat::Ext4 => write_ext4(
                tree,
                objects,
                &output,
                size,
                identity.as_bytes(),
                Some(tell),
            )?,
        };
        guard.keep(&output, &digest, written)?;
        let record = converted(
            image.id,
            format.as_str(),
            rootfs_options(format, size),
            &digest,
            written,
        );
        catalog.add_artifact(&record, guard.lease.take())?;
        catalog.touch_image(image.id)?;
        Ok(RootfsArtifact {
            image: image.manifest_digest.clone(),
            format,
            path: self.store.content().blob_path(&digest),
            digest,
            size: written,
            cached: false,
            unpacked_while_pulling: false,
        })
    }

    /// Pulls `reference` and builds its root filesystems (`formats`, each
    /// with its ext4 size), unpacking every downloaded layer from the same
    /// decompression that checks its diff_id: no layer is read twice. An
    /// image already in the store is converted from its layer blobs (or
    /// its artifacts found), as [`Manager::rootfs`] does.
    pub async fn pull_rootfs(
        &self,
        reference: &str,
        options: &crate::PullOptions,
        formats: &[(RootfsFormat, Option<u64>)],
        progress: std::sync::Arc<dyn crate::Progress>,
    ) -> Result<(crate::PulledImage, Vec<RootfsArtifact>)> {
        let unpacker = if formats.is_empty() {
            None
        } else {
            Some(Unpacker::new(self)?)
        };
        let (pulled, parsed) = self
            .pull_unpacking(reference, options, progress.clone(), unpacker.as_ref())
            .await?;
        if formats.is_empty() {
            return Ok((pulled, Vec::new()));
        }
        let query = pulled.manifest_digest.to_string();
        let platform = pulled.platform.parse::<Platform>().ok();
        let image = self.one_image(&query, platform.as_ref())?;
        // (The user's reference, not the digest, in what errors say.)
        let artifacts = self.rootfs_of(
            reference,
            &image,
            formats,
            parsed.zip(unpacker.as_ref()),
            &progress,
        )?;
        Ok((pulled, artifacts))
    }

    /// The root filesystem a source image ships: its `rootfs` file when it
    /// is an ext4 image (checked by its superblock), used as is.
    fn source_rootfs(
        &self,
        query: &str,
        image: &kiln_store::ImageRecord,
        format: RootfsFormat,
        size: Option<u64>,
    ) -> Result<RootfsArtifact> {
        let not_convertible = |detail: String| Error::NotConvertible {
            image: query.to_string(),
            detail,
        };
        if !self.verify_image(image.id)? {
            return Err(Error::ImageNotFound {
                query: format!("{query} (a file is missing or corrupt: pull it again)"),
            });
        }
        let rootfs = self
            .store
            .catalog()
            .image_blobs(image.id)?
            .into_iter()
            .find(|b| b.role == "rootfs")
            .ok_or_else(|| {
                not_convertible(format!(
                    "a {} image has no root filesystem file kiln can boot",
                    image.kind
                ))
            })?;
        let path = self.store.content().blob_path(&rootfs.digest);
        if !is_ext4(&path) {
            return Err(not_convertible(
                "its rootfs file is not an ext4 filesystem".into(),
            ));
        }
        if format != RootfsFormat::Ext4 {
            return Err(not_convertible(format!(
                "it ships an ext4 root filesystem ({}); kiln converts OCI images to {}",
                path.display(),
                format.as_str()
            )));
        }
        if size.is_some_and(|s| s != rootfs.size) {
            return Err(not_convertible(format!(
                "its ext4 root filesystem is {} bytes as published; --size applies to images kiln converts",
                rootfs.size
            )));
        }
        self.store.catalog().touch_image(image.id)?;
        Ok(RootfsArtifact {
            image: image.manifest_digest.clone(),
            format,
            path,
            digest: rootfs.digest,
            size: rootfs.size,
            cached: true,
            unpacked_while_pulling: false,
        })
    }

    /// The single image `query` names (the host's platform when several match).
    pub(crate) fn one_image(
        &self,
        query: &str,
        platform: Option<&Platform>,
    ) -> Result<kiln_store::ImageRecord> {
        let mut found = self.find(query, platform)?;
        if found.len() > 1 {
            let host = Platform::host();
            if let Some(position) = found.iter().position(|f| {
                f.image
                    .platform
                    .as_deref()
                    .and_then(|p| p.parse::<Platform>().ok())
                    .is_some_and(|p| host.accepts(&p))
            }) {
                return Ok(found.swap_remove(position).image);
            }
            return Err(Error::Ambiguous {
                query: query.to_string(),
                candidates: found
                    .iter()
                    .map(|f| f.image.platform.clone().unwrap_or_default())
                    .collect(),
            });
        }
        Ok(found.remove(0).image)
    }
}

/// Artifact format of a layered EROFS image's metadata (options `layered`).
const LAYERED_OPTIONS: &str = "layered";
/// Artifact format of a layer's data file (options `layer=N blob=DIGEST
/// tar=COMPRESSION`: its position in this image, and the layer blob and how
/// it is read, by which another image with the layer finds the file).
const LAYER_DATA_FORMAT: &str = "erofs-layer";

/// A layered EROFS root filesystem: a small metadata image (the root
/// device) and one data file per layer that has files of a block or more
/// (the extra devices, in order). A layer's data file is the same bytes in
/// every image that has the layer, so images sharing layers share them on
/// disk.
#[derive(Debug, Clone, Serialize)]
pub struct LayeredRootfs {
    /// Manifest digest of the image.
    pub image: Digest,
    /// The metadata image: what the VM mounts, with `device=` for each of
    /// `devices` in order.
    pub metadata: RootfsArtifact,
    /// The layers' data files, in device order.
    pub devices: Vec<LayerData>,
    /// Whether everything came from the store.
    pub cached: bool,
}

/// One layer's data file of a layered EROFS image.
#[derive(Debug, Clone, Serialize)]
pub struct LayerData {
    /// The layer's position in the image (0: the base).
    pub layer: usize,
    /// Digest of the file.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Where it is.
    pub path: PathBuf,
}

impl Manager {
    /// Builds (or finds) the layered EROFS root filesystem of the image
    /// `query` names (see [`LayeredRootfs`]).
    pub fn rootfs_layered(
        &self,
        query: &str,
        platform: Option<&Platform>,
        progress: Arc<dyn Progress>,
    ) -> Result<LayeredRootfs> {
        let image = self.one_image(query, platform)?;
        if image.media_type == crate::RECORD_MEDIA_TYPE {
            return Err(Error::NotConvertible {
                image: query.to_string(),
                detail: format!(
                    "a layered EROFS is made from an OCI image's layers; a {} image has none",
                    image.kind
                ),
            });
        }
        if let Some(found) = self.cached_layered(&image)? {
            return Ok(found);
        }
        let reading = crate::LeaseGuard::new(self)?;
        let scratch = Scratch::new(self)?;
        let (tree, objects, contents) =
            self.image_tree(&image, query, reading.lease(), &scratch.0, &progress)?;
        self.build_layered(&image, &tree, &objects, &contents, &scratch.0, &progress)
    }

    /// Pulls `reference` and builds its layered EROFS from the layers as
    /// they download (as [`Manager::pull_rootfs`] does for the other
    /// formats); an image already in the store is converted from its
    /// stored layers, or its layered EROFS found.
    pub async fn pull_rootfs_layered(
        &self,
        reference: &str,
        options: &crate::PullOptions,
        progress: std::sync::Arc<dyn crate::Progress>,
    ) -> Result<(crate::PulledImage, LayeredRootfs)> {
        let unpacker = Unpacker::new(self)?;
        let (pulled, parsed) = self
            .pull_unpacking(reference, options, progress.clone(), Some(&unpacker))
            .await?;
        let query = pulled.manifest_digest.to_string();
        let platform = pulled.platform.parse::<Platform>().ok();
        let image = self.one_image(&query, platform.as_ref())?;
        if let Some(found) = self.cached_layered(&image)? {
            return Ok((pulled, found));
        }
        let layered = match parsed {
            Some(layers) => {
                let contents: Vec<Vec<ContentRef>> =
                    layers.iter().map(ParsedLayer::contents).collect();
                let mut tree = Tree::new();
                for layer in layers {
                    layer
                        .apply(&mut tree)
                        .map_err(|e| self.layer_error(&image, reference, e))?;
                }
                self.build_layered(
                    &image,
                    &tree,
                    &unpacker.objects,
                    &contents,
                    &unpacker.scratch.0,
                    &progress,
                )?
            }
            _ => self.rootfs_layered(&query, platform.as_ref(), progress)?,
        };
        Ok((pulled, layered))
    }

    /// Writes the layered EROFS of `image` from its tree and each layer's
    /// contents (in `objects`), working in `scratch`, and records it.
    fn build_layered(
        &self,
        image: &kiln_store::ImageRecord,
        tree: &Tree,
        objects: &ObjectDir,
        contents: &[Vec<ContentRef>],
        scratch: &Path,
        progress: &Arc<dyn Progress>,
    ) -> Result<LayeredRootfs> {
        let catalog = self.store.catalog();
        let content = self.store.content();
        let with_devices = contents
            .iter()
            .filter(|list| list.iter().any(|c| c.size >= 4096))
            .count();
        if with_devices > 255 {
            return Err(kiln_rootfs::RootfsError::Unrepresentable {
                path: "/".into(),
                reason: format!(
                    "{with_devices} layers with files of a block or more (a layered EROFS takes 255)"
                ),
            }
            .into());
        }
        // Keeps the new blobs until the artifact rows hold them.
        let mut guard = crate::LeaseGuard::new(self)?;
        let mut devices = Vec::new();
        let mut layer_devices = Vec::new();
        // Each layer's key: its blob and how it is read (the same bytes
        // could be declared gzip in one image and plain tar in another).
        let layer_keys: Vec<String> = catalog
            .image_blobs(image.id)?
            .into_iter()
            .filter(|b| b.role == "layer")
            .map(|b| {
                let tar =
                    media_type::layer_compression(&b.media_type).map_or("unknown", |c| c.as_str());
                format!("blob={} tar={tar}", b.digest)
            })
            .collect();
        for (layer, list) in contents.iter().enumerate() {
            let Some((placed, blocks)) = plan_layer_data(list)? else {
                continue;
            };
            // A layer another image has: its data file is in the store
            // already (the same bytes), so only where things are is needed.
            let mut known = None;
            for (digest, size) in catalog.artifacts_ending(
                LAYER_DATA_FORMAT,
                &format!(" {}", layer_keys[layer]),
                CONVERTER_VERSION,
            )? {
                if size != blocks * 4096 {
                    continue;
                }
                // Leased first, then checked: a prune or rmi running now
                // either removed it already or leaves it alone.
                catalog.lease_blob(guard.lease(), &digest)?;
                if content.blob_size(&digest)? == Some(size) {
                    known = Some((digest, size));
                    break;
                }
            }
            let (digest, size) = match known {
                Some(found) => found,
                None => {
                    let output = scratch.join(format!("layer-{layer}"));
                    let tell = telling(progress, ConvertStage::LayerFile(layer));
                    let Some((digest, size, _)) =
                        write_layer_data(list, objects, &output, Some(tell))?
                    else {
                        continue;
                    };
                    guard.keep(&output, &digest, size)?;
                    (digest, size)
                }
            };
            layer_devices.push(LayerDevice {
                tag: digest.hex().to_string(),
                blocks: u32::try_from(size / 4096).map_err(|_| {
                    kiln_rootfs::RootfsError::Unrepresentable {
                        path: "/".into(),
                        reason: format!("layer {layer} holds 16 TiB or more"),
                    }
                })?,
                placed,
            });
            devices.push(LayerData {
                layer,
                path: content.blob_path(&digest),
                digest,
                size,
            });
        }
        let output = scratch.join("metadata-erofs");
        let identity = image.manifest_digest.to_string();
        let (digest, size) = write_erofs_layered(
            tree,
            objects,
            &output,
            identity.as_bytes(),
            &layer_devices,
            Some(telling(progress, ConvertStage::Image(RootfsFormat::Erofs))),
        )?;
        guard.keep(&output, &digest, size)?;
        // The devices first (rows an earlier conversion left go), then the
        // metadata, whose device table says which rows belong to it.
        catalog.remove_artifacts(image.id, LAYER_DATA_FORMAT)?;
        for device in &devices {
            catalog.add_artifact(
                &converted(
                    image.id,
                    LAYER_DATA_FORMAT,
                    format!("layer={} {}", device.layer, layer_keys[device.layer]),
                    &device.digest,
                    device.size,
                ),
                None,
            )?;
        }
        catalog.add_artifact(
            &converted(
                image.id,
                RootfsFormat::Erofs.as_str(),
                LAYERED_OPTIONS.into(),
                &digest,
                size,
            ),
            guard.lease.take(),
        )?;
        catalog.touch_image(image.id)?;
        Ok(LayeredRootfs {
            image: image.manifest_digest.clone(),
            metadata: RootfsArtifact {
                image: image.manifest_digest.clone(),
                format: RootfsFormat::Erofs,
                path: content.blob_path(&digest),
                digest,
                size,
                cached: false,
                unpacked_while_pulling: false,
            },
            devices,
            cached: false,
        })
    }

    /// The layered EROFS of `image` in the store, if all its files are there.
    fn cached_layered(&self, image: &kiln_store::ImageRecord) -> Result<Option<LayeredRootfs>> {
        let catalog = self.store.catalog();
        let content = self.store.content();
        let rows = catalog.artifacts_of(image.id)?;
        let Some(metadata) = rows.iter().find(|row| {
            row.format == RootfsFormat::Erofs.as_str()
                && row.options == LAYERED_OPTIONS
                && row.converter_version == CONVERTER_VERSION
        }) else {
            return Ok(None);
        };
        let mut devices = Vec::new();
        for row in &rows {
            let layer = row
                .options
                .strip_prefix("layer=")
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse().ok());
            if let (LAYER_DATA_FORMAT, Some(layer), true) = (
                row.format.as_str(),
                layer,
                row.converter_version == CONVERTER_VERSION,
            ) {
                devices.push(LayerData {
                    layer,
                    path: content.blob_path(&row.digest),
                    digest: row.digest.clone(),
                    size: row.size,
                });
            }
        }
        devices.sort_by_key(|d| d.layer);
        if content.blob_size(&metadata.digest)? != Some(metadata.size) {
            return Ok(None);
        }
        // The metadata image's device table names its data files: rows that
        // say otherwise (a file fsck forgot, an interrupted conversion) mean
        // building it again.
        let tags = kiln_rootfs::erofs_device_tags(&content.blob_path(&metadata.digest))
            .map_err(kiln_store::StoreError::from)?;
        if tags.len() != devices.len()
            || tags
                .iter()
                .zip(&devices)
                .any(|(tag, d)| tag != d.digest.hex())
        {
            return Ok(None);
        }
        for device in &devices {
            if content.blob_size(&device.digest)? != Some(device.size) {
                return Ok(None);
            }
        }
        catalog.touch_image(image.id)?;
        Ok(Some(LayeredRootfs {
            image: image.manifest_digest.clone(),
            metadata: RootfsArtifact {
                image: image.manifest_digest.clone(),
                format: RootfsFormat::Erofs,
                path: content.blob_path(&metadata.digest),
                digest: metadata.digest.clone(),
                size: metadata.size,
                cached: true,
                unpacked_while_pulling: false,
            },
            devices,
            cached: true,
        }))
    }

    /// The filesystem tree of an image: its layers applied in order, file
    /// contents in `scratch/objects`, and each layer's contents in tar
    /// order. Layer blobs are leased while read.
    pub(crate) fn image_tree(
        &self,
        image: &kiln_store::ImageRecord,
        query: &str,
        lease: &kiln_store::Lease,
        scratch: &Path,
        progress: &Arc<dyn Progress>,
    ) -> Result<(Tree, ObjectDir, Vec<Vec<ContentRef>>)> {
        if !image.complete {
            return Err(Error::ImageNotFound {
                query: format!("{query} (incomplete: pull it again)"),
            });
        }
        let image_id = image.id;
        let catalog = self.store.catalog();
        let objects =
            ObjectDir::open(&scratch.join("objects")).map_err(kiln_store::StoreError::from)?;
        let layers: Vec<_> = catalog
            .image_blobs(image_id)?
            .into_iter()
            .filter(|b| b.role == "layer")
            .collect();
        let read = Arc::new(LayersRead {
            progress: progress.clone(),
            done: AtomicU64::new(0),
            told: AtomicU64::new(0),
        });
        let total = layers.iter().map(|layer| layer.size).sum();
        let mut blobs = Vec::with_capacity(layers.len());
        for (index, layer) in layers.iter().enumerate() {
            catalog.lease_blob(lease, &layer.digest)?;
            let compression =
                media_type::layer_compression(&layer.media_type).ok_or_else(|| {
                    Error::UnsupportedMediaType {
                        reference: query.to_string(),
                        what: format!("layer {index}"),
                        media_type: layer.media_type.clone(),
                    }
                })?;
            let blob = self.store.content().open_blob(&layer.digest)?;
            blobs.push((Counted(blob, read.clone()), compression));
        }
        let stage = ConvertStage::Layers;
        progress.event(Event::ConvertStarted { stage, total });
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let (tree, contents) = read_layers_with_contents(blobs, &objects, workers)
            .map_err(|e| self.layer_error(image, query, e))?;
        progress.event(Event::ConvertDone { stage, total });
        Ok((tree, objects, contents))
    }

    /// A layer's error, naming the image and the layer's digest.
    pub(crate) fn layer_error(
        &self,
        image: &kiln_store::ImageRecord,
        query: &str,
        error: kiln_rootfs::RootfsError,
    ) -> Error {
        let digest = error.layer().and_then(|index| {
            let blobs = self.store.catalog().image_blobs(image.id).ok()?;
            blobs
                .into_iter()
                .filter(|b| b.role == "layer")
                .nth(index)
                .map(|b| (index, b.digest))
        });
        match digest {
            Some((index, digest)) => Error::Layer {
                image: query.to_string(),
                index,
                digest,
                source: error,
            },
            None => Error::Rootfs(error),
        }
    }
}

/// The catalog row of a root filesystem this kiln's converter made (or
/// fetched) from image `image_id`, now.
pub(crate) fn converted(
    image_id: i64,
    format: &str,
    options: String,
    digest: &Digest,
    size: u64,
) -> ArtifactRecord {
    ArtifactRecord {
        image_id,
        format: format.to_string(),
        options,
        converter_version: CONVERTER_VERSION.to_string(),
        digest: digest.clone(),
        size,
        created_at: kiln_store::fsutil::now(),
    }
}

/// Writes a file through `write`, hashing it; returns digest and size.
fn write_output(
    path: &Path,
    tell: kiln_rootfs::OnWritten,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<(Digest, u64)> {
    let file = fs_err::File::create(path)?;
    let mut writer = HashingWriter {
        inner: std::io::BufWriter::with_capacity(1 << 20, Telling(file, tell.clone(), 0)),
        hasher: Hasher::new(Algorithm::Sha256),
        size: 0,
    };
    tell(0, u64::MAX);
    write(&mut writer)?;
    writer.flush()?;
    tell(writer.size, writer.size);
    Ok((writer.hasher.finish(), writer.size))
}

/// A writer telling how many bytes went through it (in 1 MiB writes, from
/// the buffer in front of it): the size of an initramfs is known only once
/// it is compressed.
struct Telling<W>(W, kiln_rootfs::OnWritten, u64);

impl<W: Write> Write for Telling<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(bytes)?;
        self.2 += n as u64;
        // Not done until the caller says: the total is not known.
        (self.1)(self.2, u64::MAX);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// What the writers tell, as [`Event`]s of `stage`: the first call starts
/// it (its total; `u64::MAX`: not known, told as 0), one at the total ends
/// it.
fn telling(progress: &Arc<dyn Progress>, stage: ConvertStage) -> kiln_rootfs::OnWritten {
    let progress = progress.clone();
    let started = AtomicBool::new(false);
    Arc::new(move |done, total| {
        if !started.swap(true, Ordering::Relaxed) {
            let known = if total == u64::MAX { 0 } else { total };
            progress.event(Event::ConvertStarted {
                stage,
                total: known,
            });
        }
        if done >= total {
            progress.event(Event::ConvertDone { stage, total });
        } else if done > 0 {
            progress.event(Event::ConvertProgress { stage, done });
        }
    })
}

/// The stored layers' compressed bytes read so far, told every few MiB.
struct LayersRead {
    progress: Arc<dyn Progress>,
    done: AtomicU64,
    told: AtomicU64,
}

/// A stored layer blob counted into [`LayersRead`] as it is read.
struct Counted<R>(R, Arc<LayersRead>);

impl<R: std::io::Read> std::io::Read for Counted<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buffer)?;
        let read = &self.1;
        let done = read.done.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        let told = read.told.load(Ordering::Relaxed);
        if done >= told + (8 << 20)
            && read
                .told
                .compare_exchange(told, done, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            read.progress.event(Event::ConvertProgress {
                stage: ConvertStage::Layers,
                done,
            });
        }
        Ok(n)
    }
}

/// Copies `from` to `to`: a reflink (copy-on-write clone) where the
/// filesystem supports it, else a copy of its data that keeps its holes
/// (an ext4 image's free space stays unallocated). Atomic: temp, fsync,
/// rename, fsync of the directory.
pub fn copy_out(from: &Path, to: &Path) -> std::io::Result<()> {
    let directory = to
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temp = directory.join(kiln_store::fsutil::temp_name("kiln-out"));
    let result = (|| {
        kiln_store::fsutil::copy_file(from, &temp, false)?;
        fs_err::rename(&temp, to)?;
        kiln_store::fsutil::sync_dir(directory)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Copies a layered EROFS image into the directory `to` (made, or empty):
/// `metadata.erofs` and `layer-N.erofs` for each layer file (N its
/// position in the image), each copied as [`copy_out`] copies. Atomic: the files
/// are copied into a temporary directory beside `to`, which then takes its
/// name. Returns the image with the copies' paths.
pub fn copy_layered_out(built: &LayeredRootfs, to: &Path) -> std::io::Result<LayeredRootfs> {
    if let Ok(mut entries) = std::fs::read_dir(to)
        && entries.next().is_some()
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} is a directory that is not empty", to.display()),
        ));
    }
    if to.exists() && !to.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a directory", to.display()),
        ));
    }
    let parent = to
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temp = parent.join(kiln_store::fsutil::temp_name("kiln-out"));
    let result = (|| {
        fs_err::create_dir(&temp)?;
        let mut copied = built.clone();
        let copy = |from: &Path, name: &str| {
            kiln_store::fsutil::copy_file(from, &temp.join(name), false).map(|_| to.join(name))
        };
        copied.metadata.path = copy(&built.metadata.path, "metadata.erofs")?;
        for device in &mut copied.devices {
            device.path = copy(&device.path, &format!("layer-{}.erofs", device.layer))?;
        }
        kiln_store::fsutil::sync_dir(&temp)?;
        // rename(2) replaces an empty directory.
        fs_err::rename(&temp, to)?;
        kiln_store::fsutil::sync_dir(parent)?;
        Ok(copied)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result
}

/// Whether `path` starts with an ext2/3/4 superblock (magic 0xEF53 at byte 1080).
fn is_ext4(path: &std::path::Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut magic = [0u8; 2];
    std::fs::File::open(path)
        .and_then(|mut file| {
            file.seek(SeekFrom::Start(1080))?;
            file.read_exact(&mut magic)
        })
        .is_ok()
        && magic == [0x53, 0xEF]
}

/// The options part of a derived artifact's key (and of a rootfs
/// referrer's annotation): `size=BYTES` for a sized ext4, else empty.
pub(crate) fn rootfs_options(format: RootfsFormat, size: Option<u64>) -> String {
    match (format, size) {
        (RootfsFormat::Ext4, Some(size)) => format!("size={size}"),
        _ => String::new(),
    }
}

/// Whether `path` has the signature of a `format` image: the ext4
/// superblock magic, the EROFS superblock magic (0xE0F5E1E2 at byte 1024),
/// or gzip's magic for an initramfs.
pub(crate) fn looks_like(format: RootfsFormat, path: &std::path::Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let read_at = |offset: u64, buffer: &mut [u8]| {
        std::fs::File::open(path)
            .and_then(|mut file| {
                file.seek(SeekFrom::Start(offset))?;
                file.read_exact(buffer)
            })
            .is_ok()
    };
    match format {
        RootfsFormat::Ext4 => is_ext4(path),
        RootfsFormat::Erofs => {
            let mut magic = [0u8; 4];
            read_at(1024, &mut magic) && magic == 0xE0F5_E1E2u32.to_le_bytes()
        }
        RootfsFormat::Initramfs => {
            let mut magic = [0u8; 2];
            read_at(0, &mut magic) && magic == [0x1f, 0x8b]
        }
    }
}
