//! Pushing images from the store to OCI distribution registries.
//!
//! - OCI images go as they were pulled or loaded: the original manifest,
//!   config and layer blobs byte for byte, so every digest survives.
//! - Source images (release bundles, catalog and imgapi images) go as OCI
//!   artifacts: `artifactType` and config media type are
//!   [`RECORD_MEDIA_TYPE`], the config blob is kiln's record byte for byte,
//!   each file is a layer with its own media type and an
//!   `org.opencontainers.image.title`. A pull of that artifact on another
//!   host gives the same catalog entry (same record digest, files, source
//!   facts).
//! - `--rootfs FORMAT` publishes a converted root filesystem as an artifact
//!   whose `subject` is the image's manifest (OCI 1.1 referrers; on
//!   registries without the referrers API the referrers tag schema,
//!   `sha256-HEX`), so `kiln rootfs` on another host downloads it instead of
//!   converting.
//!
//! Media types and annotations: `docs/push.md`.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use kiln_oci::{BlobSource, Mount, RegistryClient, Repository};
use kiln_types::media_type;
use kiln_types::{Descriptor, Digest, ImageManifest, Platform, Reference};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::progress::{Event, Progress};
use crate::pull::{Observer, PullOptions};
use crate::rootfs::{CONVERTER_VERSION, RootfsArtifact, RootfsFormat};
use crate::sources::RECORD_MEDIA_TYPE;
use crate::{LeaseGuard, Manager};

/// Media type of the empty config of kiln's rootfs artifacts (OCI 1.1).
pub const EMPTY_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// Annotation: the role of a file of a source image.
pub const ROLE_ANNOTATION: &str = "dev.kiln.role";
/// Annotation: the platform of a source image artifact.
pub const PLATFORM_ANNOTATION: &str = "dev.kiln.platform";
/// Annotation: rootfs format of a rootfs artifact.
pub const ROOTFS_FORMAT_ANNOTATION: &str = "dev.kiln.rootfs.format";
/// Annotation: conversion options of a rootfs artifact (`size=BYTES` or empty).
pub const ROOTFS_OPTIONS_ANNOTATION: &str = "dev.kiln.rootfs.options";
/// Annotation: converter version of a rootfs artifact.
pub const ROOTFS_CONVERTER_ANNOTATION: &str = "dev.kiln.rootfs.converter";
const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
const CREATED_ANNOTATION: &str = "org.opencontainers.image.created";

/// The artifact type of a rootfs artifact of `format`.
pub fn rootfs_artifact_type(format: RootfsFormat) -> String {
    format!("application/vnd.kiln.rootfs.{}.v1", format.as_str())
}

/// The media type of the rootfs layer of a rootfs artifact.
pub fn rootfs_media_type(format: RootfsFormat) -> String {
    match format {
        RootfsFormat::Initramfs => "application/vnd.kiln.rootfs.initramfs+gzip".into(),
        other => format!("application/vnd.kiln.rootfs.{}", other.as_str()),
    }
}

/// How to push.
#[derive(Clone, Default)]
pub struct PushOptions {
    /// Platform of the image to push when a name has several.
    pub platform: Option<Platform>,
    /// Registry settings and credentials (`insecure`, `ca_certs`,
    /// `credentials`, `concurrency` are used).
    pub registry: PullOptions,
    /// Upload blobs in PATCH requests of this many bytes (default: one PUT).
    pub chunk_size: Option<u64>,
    /// Also publish this root filesystem as a referrer of the image.
    pub rootfs: Option<RootfsFormat>,
    /// `--size` of the ext4 root filesystem to publish.
    pub rootfs_size: Option<u64>,
}

/// The outcome of a push.
#[derive(Debug, Clone, Serialize)]
pub struct PushedImage {
    /// Where it went.
    pub reference: String,
    /// Digest of the manifest pushed.
    pub manifest_digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Artifact type, for source images.
    pub artifact_type: Option<String>,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs the registry linked from another repository.
    pub mounted: usize,
    /// Blobs the repository already had.
    pub existing: usize,
    /// Bytes sent for blobs.
    pub bytes_uploaded: u64,
    /// The rootfs referrer, with `--rootfs`.
    pub referrer: Option<PushedReferrer>,
}

/// A pushed rootfs artifact.
#[derive(Debug, Clone, Serialize)]
pub struct PushedReferrer {
    /// Digest of the artifact manifest.
    pub digest: Digest,
    /// Its artifact type.
    pub artifact_type: String,
    /// The image manifest it refers to.
    pub subject: Digest,
    /// The root filesystem blob.
    pub rootfs: Digest,
    /// Its size.
    pub size: u64,
    /// True when the referrers tag schema was written (no referrers API).
    pub tag_schema: bool,
}

enum BlobOutcome {
    Existing,
    Mounted,
    Uploaded(u64),
}

#[derive(Default)]
struct Counts {
    uploaded: usize,
    mounted: usize,
    existing: usize,
    bytes: u64,
}

impl Manager {
    /// Pushes the image `source` names to `destination` (default: the
    /// registry reference it was pulled as).
    pub async fn push(
        &self,
        source: &str,
        destination: Option<&str>,
        options: &PushOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<PushedImage> {
        let image = self.one_image(source, options.platform.as_ref())?;
        if !image.complete {
            return Err(Error::ImageNotFound {
                query: format!("{source} (incomplete: pull it again)"),
            });
        }
        if let Some(format) = options.rootfs
            && image.media_type == RECORD_MEDIA_TYPE
        {
            return Err(Error::NotConvertible {
                image: source.to_string(),
                detail: format!(
                    "--rootfs {} applies to OCI images; a {} image is pushed with its own files",
                    format.as_str(),
                    image.kind
                ),
            });
        }
        let destination = self.push_destination(source, destination, &image)?;
        let client = self.registry_client(&destination, &options.registry);
        client.check_ca_certs()?;
        let observer = Arc::new(Observer(progress.clone()));
        let repository = Repository::of(&destination);
        let guard = LeaseGuard::new(self)?;
        let catalog = self.store.catalog();
        let content = self.store.content();
        let mut blobs = Vec::new();
        let (manifest_bytes, manifest_media_type, artifact_type) =
            if image.media_type == RECORD_MEDIA_TYPE {
                let (manifest, files) = self.source_artifact(&image)?;
                for (digest, size) in files {
                    blobs.push((digest, size));
                }
                let bytes = serde_json::to_vec(&manifest)
                    .map_err(|e| Error::Task(format!("artifact manifest: {e}")))?;
                (
                    Bytes::from(bytes),
                    media_type::OCI_MANIFEST.to_string(),
                    Some(RECORD_MEDIA_TYPE.to_string()),
                )
            } else {
                for blob in catalog.image_blobs(image.id)? {
                    if blob.role == "config" || blob.role == "layer" {
                        blobs.push((blob.digest, blob.size));
                    }
                }
                let bytes = content.read_blob(&image.manifest_digest)?;
                (Bytes::from(bytes), image.media_type.clone(), None)
            };
        let manifest_digest = Digest::sha256_of(&manifest_bytes);
        let manifest_size = manifest_bytes.len() as u64;
        if let Some(pinned) = destination.digest()
            && *pinned != manifest_digest
        {
            return Err(Error::PushDigest {
                destination: destination.to_string(),
                image: manifest_digest,
            });
        }
        let mut sources = Vec::with_capacity(blobs.len());
        for (digest, size) in blobs {
            catalog.lease_blob(guard.lease(), &digest)?;
            if content.blob_size(&digest)? != Some(size) {
                return Err(Error::ImageNotFound {
                    query: format!("{source} (blob {digest} is missing: pull it again)"),
                });
            }
            if !sources.iter().any(|s: &BlobSource| s.digest == digest) {
                sources.push(BlobSource {
                    path: content.blob_path(&digest),
                    digest,
                    size,
                });
            }
        }
        progress.event(Event::Resolving {
            reference: destination.to_string(),
        });
        let mount_from = self.mount_candidates(image.id, &destination)?;
        let counts = self
            .push_blobs(
                &client,
                &repository,
                sources,
                &mount_from,
                options,
                &progress,
                &observer,
            )
            .await?;
        let selector = destination
            .tag()
            .map(str::to_string)
            .unwrap_or_else(|| manifest_digest.to_string());
        let pushed = client
            .put_manifest(
                &repository,
                &selector,
                manifest_bytes,
                &manifest_media_type,
                observer.as_ref(),
            )
            .await?;
        progress.event(Event::ManifestPushed {
            reference: destination.to_string(),
            digest: pushed.digest.clone(),
        });
        let referrer = match options.rootfs {
            Some(format) => Some(
                self.push_rootfs_referrer(
                    &client,
                    &destination,
                    &image,
                    &Descriptor::new(&manifest_media_type, pushed.digest.clone(), manifest_size),
                    format,
                    options,
                    &progress,
                    &observer,
                )
                .await?,
            ),
            None => None,
        };
        drop(guard);
        Ok(PushedImage {
            reference: destination.to_string(),
            manifest_digest: pushed.digest,
            media_type: manifest_media_type,
            artifact_type,
            uploaded: counts.uploaded,
            mounted: counts.mounted,
            existing: counts.existing,
            bytes_uploaded: counts.bytes,
            referrer,
        })
    }

    /// The registry reference to push to.
    fn push_destination(
        &self,
        source: &str,
        destination: Option<&str>,
        image: &kiln_store::ImageRecord,
    ) -> Result<Reference> {
        if let Some(destination) = destination {
            return Ok(destination.parse()?);
        }
        // Only a registry name the image has (as pulled or loaded), never a
        // digest prefix or a local name read as a Docker Hub reference.
        if image.media_type != RECORD_MEDIA_TYPE
            && image.kind != "snapshot"
            && !kiln_types::SourceReference::looks_like(source)
            && let Ok(reference) = source.parse::<Reference>()
            && self
                .store
                .catalog()
                .tags_of(image.id)?
                .iter()
                .any(|tag| tag.name == crate::tag_name(&reference))
        {
            return Ok(reference);
        }
        Err(Error::PushDestination {
            source_name: source.to_string(),
        })
    }

    /// Repositories on `destination`'s registry that this image was pulled
    /// from (blobs can be mounted from them).
    fn mount_candidates(&self, image_id: i64, destination: &Reference) -> Result<Vec<String>> {
        let mut found = Vec::new();
        for tag in self.store.catalog().tags_of(image_id)? {
            let name = tag.name.split('@').next().unwrap_or(&tag.name);
            if let Ok(reference) = name.parse::<Reference>()
                && reference.api_host() == destination.api_host()
                && reference.repository() != destination.repository()
                && !found.iter().any(|f| f == reference.repository())
            {
                found.push(reference.repository().to_string());
            }
        }
        Ok(found)
    }

    #[allow(clippy::too_many_arguments)]
    async fn push_blobs(
        &self,
        client: &RegistryClient,
        repository: &Repository,
        blobs: Vec<BlobSource>,
        mount_from: &[String],
        options: &PushOptions,
        progress: &Arc<dyn Progress>,
        observer: &Arc<Observer>,
    ) -> Result<Counts> {
        let outcomes: Vec<BlobOutcome> = stream::iter(blobs.into_iter().map(|blob| {
            push_blob(
                client,
                repository,
                blob,
                mount_from,
                options.chunk_size,
                progress.clone(),
                observer.clone(),
            )
        }))
        .buffer_unordered(options.registry.concurrency.max(1))
        .try_collect()
        .await?;
        let mut counts = Counts::default();
        for outcome in outcomes {
            match outcome {
                BlobOutcome::Existing => counts.existing += 1,
                BlobOutcome::Mounted => counts.mounted += 1,
                BlobOutcome::Uploaded(bytes) => {
                    counts.uploaded += 1;
                    counts.bytes += bytes;
                }
            }
        }
        Ok(counts)
    }

    /// The OCI artifact manifest of a source image, and its blobs.
    fn source_artifact(
        &self,
        image: &kiln_store::ImageRecord,
    ) -> Result<(ImageManifest, Vec<(Digest, u64)>)> {
        let record = self.source_record(image)?;
        let record_size = self
            .store
            .content()
            .blob_size(&image.manifest_digest)?
            .ok_or_else(|| Error::ImageNotFound {
                query: format!("{} (its record is missing)", image.manifest_digest),
            })?;
        let mut blobs = vec![(image.manifest_digest.clone(), record_size)];
        let mut layers = Vec::new();
        for file in &record.files {
            blobs.push((file.digest.clone(), file.size));
            let mut layer = Descriptor::new(&file.media_type, file.digest.clone(), file.size);
            layer
                .annotations
                .insert(TITLE_ANNOTATION.to_string(), file.name.clone());
            layer
                .annotations
                .insert(ROLE_ANNOTATION.to_string(), file.role.clone());
            layers.push(layer);
        }
        let mut annotations = BTreeMap::new();
        if let Some(platform) = &image.platform {
            annotations.insert(PLATFORM_ANNOTATION.to_string(), platform.clone());
        }
        if let Some(created) = &image.image_created {
            annotations.insert(CREATED_ANNOTATION.to_string(), created.clone());
        }
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(media_type::OCI_MANIFEST.to_string()),
            artifact_type: Some(RECORD_MEDIA_TYPE.to_string()),
            config: Descriptor::new(
                RECORD_MEDIA_TYPE,
                image.manifest_digest.clone(),
                record_size,
            ),
            layers,
            subject: None,
            annotations,
        };
        Ok((manifest, blobs))
    }

    /// Converts (or finds) the image's rootfs and pushes it as a referrer
    /// of the manifest just pushed.
    #[allow(clippy::too_many_arguments)]
    async fn push_rootfs_referrer(
        &self,
        client: &RegistryClient,
        destination: &Reference,
        image: &kiln_store::ImageRecord,
        subject: &Descriptor,
        format: RootfsFormat,
        options: &PushOptions,
        progress: &Arc<dyn Progress>,
        observer: &Arc<Observer>,
    ) -> Result<PushedReferrer> {
        let artifact: RootfsArtifact = {
            let query = image.manifest_digest.to_string();
            let platform = options.platform.clone();
            let size = options.rootfs_size;
            let convert = || self.rootfs(&query, platform.as_ref(), format, size, progress.clone());
            // A conversion is long blocking work: tell a multi-threaded
            // runtime so it moves other tasks away from this thread.
            match tokio::runtime::Handle::current().runtime_flavor() {
                tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(convert)?,
                _ => convert()?,
            }
        };
        let repository = Repository::of(destination);
        let guard = LeaseGuard::new(self)?;
        self.store
            .catalog()
            .lease_blob(guard.lease(), &artifact.digest)?;
        let empty = b"{}";
        let empty_digest = self.put_small_blob(empty, guard.lease())?;
        let blobs = vec![
            BlobSource {
                path: self.store.content().blob_path(&empty_digest),
                digest: empty_digest.clone(),
                size: empty.len() as u64,
            },
            BlobSource {
                path: artifact.path.clone(),
                digest: artifact.digest.clone(),
                size: artifact.size,
            },
        ];
        self.push_blobs(client, &repository, blobs, &[], options, progress, observer)
            .await?;
        let artifact_type = rootfs_artifact_type(format);
        let options_text = crate::rootfs::rootfs_options(format, options.rootfs_size);
        let mut annotations = BTreeMap::new();
        annotations.insert(
            ROOTFS_FORMAT_ANNOTATION.to_string(),
            format.as_str().to_string(),
        );
        annotations.insert(ROOTFS_OPTIONS_ANNOTATION.to_string(), options_text);
        annotations.insert(
            ROOTFS_CONVERTER_ANNOTATION.to_string(),
            CONVERTER_VERSION.to_string(),
        );
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(media_type::OCI_MANIFEST.to_string()),
            artifact_type: Some(artifact_type.clone()),
            config: Descriptor::new(EMPTY_CONFIG_MEDIA_TYPE, empty_digest, empty.len() as u64),
            layers: vec![Descriptor {
                annotations: BTreeMap::from([(
                    TITLE_ANNOTATION.to_string(),
                    format!("rootfs.{}", format.as_str()),
                )]),
                ..Descriptor::new(
                    rootfs_media_type(format),
                    artifact.digest.clone(),
                    artifact.size,
                )
            }],
            subject: Some(subject.clone()),
            annotations: annotations.clone(),
        };
        let bytes = Bytes::from(
            serde_json::to_vec(&manifest)
                .map_err(|e| Error::Task(format!("rootfs artifact manifest: {e}")))?,
        );
        let size = bytes.len() as u64;
        let digest = Digest::sha256_of(&bytes);
        let pushed = client
            .put_manifest(
                &repository,
                &digest.to_string(),
                bytes,
                media_type::OCI_MANIFEST,
                observer.as_ref(),
            )
            .await?;
        let mut tag_schema = false;
        if !pushed.subject_indexed {
            // No referrers API: keep the referrers index under the tag
            // `sha256-HEX` (OCI distribution spec, "referrers tag schema").
            let tag_reference = destination.with_digest(subject.digest.clone());
            // Read, add, write back only if nobody changed it meanwhile
            // (If-Match); another host's concurrent update means read again.
            let mut attempts = 0;
            loop {
                let (mut index, etag) = client
                    .referrers_tag_index(&tag_reference, &subject.digest, observer.as_ref())
                    .await?;
                if index.manifests.iter().any(|d| d.digest == digest) {
                    break;
                }
                index.manifests.push(kiln_oci::referrer_descriptor(
                    digest.clone(),
                    size,
                    &artifact_type,
                    annotations.clone(),
                ));
                let bytes = serde_json::to_vec(&index)
                    .map_err(|e| Error::Task(format!("referrers index: {e}")))?;
                match client
                    .put_manifest_if(
                        &repository,
                        &kiln_oci::referrers_tag(&subject.digest),
                        Bytes::from(bytes),
                        media_type::OCI_INDEX,
                        etag.as_deref(),
                        observer.as_ref(),
                    )
                    .await
                {
                    Ok(_) => break,
                    Err(kiln_oci::OciError::Status { status: 412, .. }) if attempts < 5 => {
                        attempts += 1;
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            tag_schema = true;
        }
        drop(guard);
        Ok(PushedReferrer {
            digest,
            artifact_type,
            subject: subject.digest.clone(),
            rootfs: artifact.digest,
            size: artifact.size,
            tag_schema,
        })
    }

    /// A rootfs artifact some host published for this image, downloaded
    /// into the store as if converted here. `None` when the image did not
    /// come from a registry or nobody published one.
    pub async fn rootfs_from_referrers(
        &self,
        query: &str,
        platform: Option<&Platform>,
        format: RootfsFormat,
        size: Option<u64>,
        registry: &PullOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<Option<RootfsArtifact>> {
        let image = self.one_image(query, platform)?;
        if image.media_type == RECORD_MEDIA_TYPE || image.kind == "snapshot" {
            // Source images ship their own rootfs; a snapshot's names are
            // local, not where it came from.
            return Ok(None);
        }
        let options = crate::rootfs::rootfs_options(format, size);
        let catalog = self.store.catalog();
        if catalog
            .artifact(image.id, format.as_str(), &options, CONVERTER_VERSION)?
            .is_some()
        {
            return Ok(None); // converted or fetched before: `rootfs` finds it
        }
        let mut origins = Vec::new();
        for tag in catalog.tags_of(image.id)? {
            let name = tag.name.split('@').next().unwrap_or(&tag.name).to_string();
            if let Ok(reference) = name.parse::<Reference>() {
                origins.push(reference);
            }
        }
        let artifact_type = rootfs_artifact_type(format);
        let observer = Arc::new(Observer(progress.clone()));
        for origin in origins {
            // One quick try: a registry that is gone must not slow down a
            // conversion that works offline.
            let quick = RegistryClient::new(kiln_oci::ClientOptions {
                retry: kiln_oci::RetryPolicy {
                    max_attempts: 1,
                    ..kiln_oci::RetryPolicy::default()
                },
                connect_timeout: std::time::Duration::from_secs(3),
                read_timeout: std::time::Duration::from_secs(20),
                ..self.client_options(&origin, registry)
            });
            let repository = Repository::of(&origin);
            let listed = match quick
                .referrers(
                    &repository,
                    &image.manifest_digest,
                    Some(&artifact_type),
                    observer.as_ref(),
                )
                .await
            {
                Ok(Some(index)) => index,
                Ok(None) => {
                    match quick
                        .referrers_by_tag(
                            &origin.with_digest(image.manifest_digest.clone()),
                            &image.manifest_digest,
                            observer.as_ref(),
                        )
                        .await
                    {
                        Ok(index) => index,
                        Err(_) => continue,
                    }
                }
                Err(_) => continue,
            };
            let candidate = listed.manifests.iter().find(|d| {
                d.artifact_type.as_deref() == Some(artifact_type.as_str())
                    && d.annotations.get(ROOTFS_OPTIONS_ANNOTATION) == Some(&options)
                    && d.annotations
                        .get(ROOTFS_CONVERTER_ANNOTATION)
                        .map(String::as_str)
                        == Some(CONVERTER_VERSION)
            });
            let Some(candidate) = candidate else {
                continue;
            };
            // The download gets the normal retries (only the lookup is quick).
            let client = self.registry_client(&origin, registry);
            match self
                .fetch_rootfs_referrer(
                    &client,
                    &origin,
                    &image,
                    &candidate.digest,
                    format,
                    &options,
                    &progress,
                    &observer,
                )
                .await
            {
                Ok(artifact) => return Ok(Some(artifact)),
                Err(error) => progress.event(Event::Warning {
                    message: format!(
                        "cannot use the {} referrer {} on {origin}, converting here instead: {error}",
                        format.as_str(),
                        candidate.digest
                    ),
                }),
            }
        }
        Ok(None)
    }

    /// Downloads the rootfs referrer `digest` of `image` from `origin`,
    /// checks it and records it as the image's derived artifact.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_rootfs_referrer(
        &self,
        client: &RegistryClient,
        origin: &Reference,
        image: &kiln_store::ImageRecord,
        digest: &Digest,
        format: RootfsFormat,
        options: &str,
        progress: &Arc<dyn Progress>,
        observer: &Arc<Observer>,
    ) -> Result<RootfsArtifact> {
        let catalog = self.store.catalog();
        let fetched = client
            .fetch_manifest(origin, &digest.to_string(), observer.as_ref())
            .await?;
        let manifest: ImageManifest =
            serde_json::from_slice(&fetched.bytes).map_err(|e| Error::Artifact {
                reference: origin.to_string(),
                detail: format!("artifact {} is not an image manifest: {e}", fetched.digest),
            })?;
        let layer = match manifest.layers.as_slice() {
            [layer]
                if layer.media_type == rootfs_media_type(format)
                    && manifest.subject.as_ref().map(|s| &s.digest)
                        == Some(&image.manifest_digest) =>
            {
                layer.clone()
            }
            _ => {
                return Err(Error::Artifact {
                    reference: origin.to_string(),
                    detail: format!(
                        "artifact {} is not one {} layer for {}",
                        fetched.digest,
                        rootfs_media_type(format),
                        image.manifest_digest
                    ),
                });
            }
        };
        let mut guard = LeaseGuard::new(self)?;
        self.fetch_plain_blob(client, origin, &layer, guard.lease(), progress, observer)
            .await?;
        let path = self.store.content().blob_path(&layer.digest);
        if !crate::rootfs::looks_like(format, &path) {
            return Err(Error::Artifact {
                reference: origin.to_string(),
                detail: format!(
                    "the {} published in {} is not a {} image",
                    layer.digest,
                    fetched.digest,
                    format.as_str()
                ),
            });
        }
        catalog.add_artifact(
            &crate::rootfs::converted(
                image.id,
                format.as_str(),
                options.to_string(),
                &layer.digest,
                layer.size,
            ),
            guard.lease.take(),
        )?;
        Ok(RootfsArtifact {
            image: image.manifest_digest.clone(),
            format,
            path,
            digest: layer.digest,
            size: layer.size,
            cached: false,
            unpacked_while_pulling: false,
        })
    }
}

async fn push_blob(
    client: &RegistryClient,
    repository: &Repository,
    blob: BlobSource,
    mount_from: &[String],
    chunk_size: Option<u64>,
    progress: Arc<dyn Progress>,
    observer: Arc<Observer>,
) -> Result<BlobOutcome> {
    if client
        .blob_exists(repository, &blob.digest, observer.as_ref())
        .await?
    {
        progress.event(Event::BlobOnRegistry {
            digest: blob.digest.clone(),
            size: blob.size,
            mounted_from: None,
        });
        return Ok(BlobOutcome::Existing);
    }
    let mut opened_session = None;
    for from in mount_from {
        // A mount is an optimisation: a registry that refuses it (no access
        // to the other repository, no support) gets an upload instead.
        let Ok(mount) = client
            .mount_blob(repository, &blob.digest, from, observer.as_ref())
            .await
        else {
            continue;
        };
        match mount {
            Mount::Mounted => {
                progress.event(Event::BlobOnRegistry {
                    digest: blob.digest.clone(),
                    size: blob.size,
                    mounted_from: Some(from.clone()),
                });
                return Ok(BlobOutcome::Mounted);
            }
            Mount::Upload(opened) => {
                opened_session = Some(opened);
                break;
            }
        }
    }
    progress.event(Event::UploadStarted {
        digest: blob.digest.clone(),
        size: blob.size,
    });
    let mut attempt = 0;
    loop {
        let session = match opened_session.take() {
            Some(session) => session,
            None => client.start_upload(repository, observer.as_ref()).await?,
        };
        let reporter = progress.clone();
        let digest = blob.digest.clone();
        let report: kiln_oci::UploadProgress = Arc::new(move |position| {
            reporter.event(Event::UploadProgress {
                digest: digest.clone(),
                position,
            })
        });
        match client
            .upload_blob(
                repository,
                session,
                &blob,
                chunk_size,
                report,
                observer.as_ref(),
            )
            .await
        {
            Ok(()) => break,
            Err(error)
                if attempt == 0
                    && !matches!(
                        error.kind(),
                        kiln_types::ErrorKind::PermissionDenied | kiln_types::ErrorKind::DataLoss
                    ) =>
            {
                // A failed upload session is gone or confused on most
                // registries (a retried PATCH may be refused as out of
                // order): start a new one once.
                attempt += 1;
                progress.event(Event::Retrying {
                    what: format!("upload of blob {}", blob.digest),
                    attempt: 2,
                    delay: std::time::Duration::ZERO,
                    reason: error.to_string(),
                });
            }
            Err(error) => return Err(error.into()),
        }
    }
    progress.event(Event::UploadDone {
        digest: blob.digest.clone(),
        size: blob.size,
    });
    Ok(BlobOutcome::Uploaded(blob.size))
}

impl Manager {
    /// Downloads one blob (not a layer: no diff_id) into the store.
    pub(crate) async fn fetch_plain_blob(
        &self,
        client: &RegistryClient,
        reference: &Reference,
        descriptor: &Descriptor,
        lease: &kiln_store::Lease,
        progress: &Arc<dyn Progress>,
        observer: &Arc<Observer>,
    ) -> Result<u64> {
        let outcome = self
            .pull_layer(
                client,
                reference,
                descriptor,
                None,
                lease,
                &PullOptions::default(),
                progress.clone(),
                observer.clone(),
                None,
            )
            .await?;
        Ok(outcome.downloaded)
    }
}

/// Largest source record kiln reads from a registry.
const MAX_RECORD_SIZE: u64 = 16 << 20;

impl Manager {
    /// Pulls a source image that `kiln push` published as an OCI artifact:
    /// the record (config blob) and every file (layers), into the same
    /// catalog entry the source's own pull made.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn pull_source_artifact(
        &self,
        client: &RegistryClient,
        reference: &Reference,
        manifest: &ImageManifest,
        artifact: kiln_store::IndexRecord,
        guard: LeaseGuard<'_>,
        progress: Arc<dyn Progress>,
        observer: Arc<Observer>,
        concurrency: usize,
    ) -> Result<crate::PulledImage> {
        let what = reference.to_string();
        let invalid = |detail: String| Error::Artifact {
            reference: what.clone(),
            detail,
        };
        let config = &manifest.config;
        if config.size > MAX_RECORD_SIZE {
            return Err(invalid(format!(
                "its kiln record is {} bytes (more than {MAX_RECORD_SIZE})",
                config.size
            )));
        }
        let record_bytes = client
            .fetch_small_blob(reference, &config.digest, config.size, observer.clone())
            .await?;
        let record: crate::SourceRecord = serde_json::from_slice(&record_bytes)
            .map_err(|e| invalid(format!("its kiln record is malformed: {e}")))?;
        if record.media_type != RECORD_MEDIA_TYPE {
            return Err(invalid(format!(
                "its record has media type {:?}, not {RECORD_MEDIA_TYPE}",
                record.media_type
            )));
        }
        let matches = record.files.len() == manifest.layers.len()
            && record
                .files
                .iter()
                .zip(&manifest.layers)
                .all(|(file, layer)| file.digest == layer.digest && file.size == layer.size);
        if !matches {
            return Err(invalid(
                "its layers are not the files its record lists".into(),
            ));
        }
        let record_digest = self.put_small_blob(&record_bytes, guard.lease())?;
        if record_digest != config.digest {
            return Err(invalid("its record does not match its digest".into()));
        }
        let downloaded: Vec<u64> = stream::iter(manifest.layers.iter().map(|layer| {
            self.fetch_plain_blob(
                client,
                reference,
                layer,
                guard.lease(),
                &progress,
                &observer,
            )
        }))
        .buffered(concurrency.max(1))
        .try_collect()
        .await?;
        for layer in &manifest.layers {
            self.stamp_blob(&layer.digest)?;
        }
        let platform = manifest
            .annotations
            .get(PLATFORM_ANNOTATION)
            .cloned()
            .ok_or_else(|| invalid(format!("it has no {PLATFORM_ANNOTATION} annotation")))?;
        let created = manifest.annotations.get(CREATED_ANNOTATION).cloned();
        // The names the source's own pull gives (docs/sources.md), plus the
        // registry name, which remembers the artifact it served (so
        // `--policy always` recognises it).
        let mut names = Vec::new();
        match (&record.uuid, &record.version) {
            (Some(uuid), version) => {
                names.push(format!("{}://{uuid}", record.source));
                if let Some(version) = version {
                    names.push(format!("{}://{}@{version}", record.source, record.name));
                }
            }
            (None, _) => names.push(format!("{}://{}", record.source, record.name)),
        }
        let mut tags = vec![kiln_store::NewTag {
            name: crate::tag_name(reference),
            platform: platform.clone(),
            index: Some(artifact),
        }];
        // A source name already naming another image stays where it is:
        // an artifact from a registry does not re-point what the source's
        // own pull installed.
        for name in names {
            let taken = self
                .store
                .catalog()
                .tags_named(&name)?
                .into_iter()
                .filter_map(|tag| self.store.catalog().image(tag.image_id).ok().flatten())
                .any(|image| image.manifest_digest != record_digest);
            if taken {
                progress.event(Event::Warning {
                    message: format!(
                        "{name} already names another image; {reference} is recorded without that name"
                    ),
                });
                continue;
            }
            tags.push(kiln_store::NewTag {
                name,
                platform: platform.clone(),
                index: None,
            });
        }
        self.commit_record(
            &record,
            &record_digest,
            record_bytes.len() as u64,
            &tags,
            &platform,
            created,
            guard,
        )?;
        progress.event(Event::Stored {
            manifest: record_digest.clone(),
        });
        Ok(crate::PulledImage {
            reference: reference.to_string(),
            manifest_digest: record_digest,
            index_digest: None,
            platform,
            cached: false,
            bytes_downloaded: downloaded.iter().sum(),
            layers: 0,
        })
    }
}
