//! Pulling images from OCI registries into the store.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use kiln_oci::{
    ClientOptions, CredentialProvider, DiffIdHasher, DiffIdSink, RegistryClient, RetryObserver,
};
use kiln_store::{
    ImageBlob, IndexRecord, IngestStart, LayerRecord, Lease, NewImage, NewTag, StoreError,
};
use kiln_types::manifest::Manifest;
use kiln_types::media_type::{self, Compression, ManifestKind};
use kiln_types::{Descriptor, Digest, ErrorKind, ImageConfig, ImageManifest, Platform, Reference};

use crate::error::{Error, Result};
use crate::progress::{Event, Progress};
use crate::rootfs::{Parsing, Unpacker};
use crate::{LeaseGuard, Manager, tag_name};
use kiln_rootfs::ParsedLayer;

/// A thread to unpack layer `digest` could not start.
fn unpack_error(digest: &Digest, source: std::io::Error) -> Error {
    Error::Task(format!("cannot start unpacking layer {digest}: {source}"))
}

/// Largest image config kiln reads.
const MAX_CONFIG_SIZE: u64 = 16 << 20;
/// Layers downloaded at once by default.
pub const DEFAULT_CONCURRENCY: usize = 6;

/// When to contact the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Ask the registry whether the tag moved (docker's behaviour); download
    /// only what changed.
    Always,
    /// Use the cached image when there is one, with no network at all.
    #[default]
    Missing,
    /// Fail unless the image is cached.
    Never,
}

/// How to pull.
#[derive(Clone)]
pub struct PullOptions {
    /// Platform to select from an index (default: the host's).
    pub platform: Option<Platform>,
    /// When to contact the registry.
    pub policy: PullPolicy,
    /// Download everything again, even blobs the store has.
    pub force: bool,
    /// Reach the reference's registry over plain HTTP or unverified TLS.
    pub insecure: bool,
    /// Extra CA certificates (PEM) for TLS.
    pub ca_certs: Vec<PathBuf>,
    /// Layers downloaded at once.
    pub concurrency: usize,
    /// Credentials to try before docker's config.json.
    pub credentials: Option<Arc<dyn CredentialProvider>>,
    /// Decompress layers (for their diff_id) on a thread of their own
    /// rather than on the thread that writes the blob. On by default: it
    /// benchmarks faster (docs/benchmarks.md).
    pub pipelined_diff_id: bool,
}

impl Default for PullOptions {
    fn default() -> PullOptions {
        PullOptions {
            platform: None,
            policy: PullPolicy::Missing,
            force: false,
            insecure: false,
            ca_certs: Vec::new(),
            concurrency: DEFAULT_CONCURRENCY,
            credentials: None,
            pipelined_diff_id: true,
        }
    }
}

/// The outcome of a pull.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PulledImage {
    /// The canonical reference pulled.
    pub reference: String,
    /// Digest of the image manifest.
    pub manifest_digest: Digest,
    /// Digest of the index the reference named, if any.
    pub index_digest: Option<Digest>,
    /// Platform of the image.
    pub platform: String,
    /// True when nothing was downloaded (served from the store).
    pub cached: bool,
    /// Bytes fetched from the network for blobs.
    pub bytes_downloaded: u64,
    /// Number of layers.
    pub layers: usize,
}

pub(crate) struct Observer(pub(crate) Arc<dyn Progress>);

impl RetryObserver for Observer {
    fn retrying(&self, what: &str, attempt: u32, delay: Duration, reason: &str) {
        self.0.event(Event::Retrying {
            what: what.to_string(),
            attempt,
            delay,
            reason: reason.to_string(),
        });
    }
}

pub(crate) struct LayerOutcome {
    /// diff_id and uncompressed size (layers only).
    pub(crate) diff_id: Option<(Digest, u64)>,
    pub(crate) downloaded: u64,
    /// The layer parsed, when the pull unpacks.
    pub(crate) parsed: Option<ParsedLayer>,
}

impl Manager {
    /// Pulls `reference` (docker syntax) into the store.
    pub async fn pull(
        &self,
        reference: &str,
        options: &PullOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<PulledImage> {
        Ok(self
            .pull_unpacking(reference, options, progress, None)
            .await?
            .0)
    }

    /// [`Manager::pull`], unpacking layers with `unpacker` as they
    /// download: the parsed layers, in order, come back when the image was
    /// downloaded (not when it was cached, nor for a source image).
    pub(crate) async fn pull_unpacking(
        &self,
        reference: &str,
        options: &PullOptions,
        progress: Arc<dyn Progress>,
        unpacker: Option<&Unpacker>,
    ) -> Result<(PulledImage, Option<Vec<ParsedLayer>>)> {
        if kiln_types::SourceReference::looks_like(reference) {
            return Ok((
                self.pull_source(&reference.parse()?, options, progress)
                    .await?,
                None,
            ));
        }
        let reference: Reference = reference.parse()?;
        let platform = options.platform.clone().unwrap_or_else(Platform::host);
        progress.event(Event::Resolving {
            reference: reference.to_string(),
        });
        if !options.force && options.policy != PullPolicy::Always {
            if let Some(hit) = self.find_cached(&reference, &platform)? {
                progress.event(Event::Cached {
                    manifest: hit.manifest_digest.clone(),
                });
                return Ok((hit, None));
            }
            if options.policy == PullPolicy::Never {
                return Err(Error::NotCached {
                    reference: reference.to_string(),
                });
            }
        }
        let client = self.registry_client(&reference, options);
        client.check_ca_certs()?;
        let observer = Arc::new(Observer(progress.clone()));
        if options.policy == PullPolicy::Always
            && !options.force
            && let Some(remote) = self
                .remote_digest(&client, &reference, observer.as_ref())
                .await?
            && let Some(hit) = self.find_cached_remote(&reference, &platform, &remote)?
        {
            progress.event(Event::Cached {
                manifest: hit.manifest_digest.clone(),
            });
            return Ok((hit, None));
        }
        let guard = LeaseGuard::new(self)?;
        let what = reference.to_string();
        let top = client
            .fetch_manifest(
                &reference,
                &reference.manifest_selector(),
                observer.as_ref(),
            )
            .await?;
        let (parsed, top_media_type) =
            Manifest::parse(&top.bytes, &top.content_type).map_err(|source| Error::Manifest {
                reference: what.clone(),
                source,
            })?;
        let (
            index,
            manifest_bytes,
            manifest_digest,
            manifest_media_type,
            manifest,
            descriptor_platform,
        ) = match parsed {
            Manifest::Image(manifest) => {
                (None, top.bytes, top.digest, top_media_type, manifest, None)
            }
            Manifest::Index(index) => {
                self.keep_blob(guard.lease(), &top.digest, &top.bytes)?;
                let chosen = choose_platform(
                    &what,
                    &index.manifests,
                    &platform,
                    options.platform.is_some(),
                )?;
                let child = client
                    .fetch_manifest(&reference, &chosen.digest.to_string(), observer.as_ref())
                    .await?;
                let (parsed, media_type) = Manifest::parse(&child.bytes, &child.content_type)
                    .map_err(|source| Error::Manifest {
                        reference: format!("{what} ({})", chosen.digest),
                        source,
                    })?;
                let Manifest::Image(manifest) = parsed else {
                    return Err(Error::UnsupportedMediaType {
                        reference: what,
                        what: "platform manifest".into(),
                        media_type,
                    });
                };
                let index = IndexRecord {
                    digest: top.digest.clone(),
                    media_type: top_media_type,
                    size: top.bytes.len() as u64,
                };
                (
                    Some(index),
                    child.bytes,
                    child.digest,
                    media_type,
                    manifest,
                    chosen.platform.clone(),
                )
            }
        };
        self.keep_blob(guard.lease(), &manifest_digest, &manifest_bytes)?;
        progress.event(Event::Resolved {
            manifest: manifest_digest.clone(),
            platform: descriptor_platform
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            layers: manifest.layers.len(),
        });

        if manifest.config.media_type == crate::RECORD_MEDIA_TYPE {
            return Ok((
                self.pull_source_artifact(
                    &client,
                    &reference,
                    &manifest,
                    IndexRecord {
                        digest: manifest_digest.clone(),
                        media_type: manifest_media_type.clone(),
                        size: manifest_bytes.len() as u64,
                    },
                    guard,
                    progress,
                    observer,
                    options.concurrency,
                )
                .await?,
                None,
            ));
        }
        let (config, config_bytes_len) = self
            .fetch_config(
                &client,
                &reference,
                &manifest,
                guard.lease(),
                options.force,
                &observer,
            )
            .await?;
        let image_platform = descriptor_platform.unwrap_or_else(|| config.platform());
        if index.is_none() && options.platform.is_some() && !platform.accepts(&image_platform) {
            return Err(Error::PlatformMismatch {
                reference: what,
                requested: platform.to_string(),
                actual: image_platform.to_string(),
            });
        }
        if manifest.layers.len() != config.rootfs.diff_ids.len() {
            return Err(Error::LayerCount {
                reference: what,
                layers: manifest.layers.len(),
                diff_ids: config.rootfs.diff_ids.len(),
            });
        }
        let mut compressions = Vec::with_capacity(manifest.layers.len());
        for (position, layer) in manifest.layers.iter().enumerate() {
            let Some(compression) = media_type::layer_compression(&layer.media_type) else {
                return Err(Error::UnsupportedMediaType {
                    reference: what,
                    what: format!("layer {position} ({})", layer.digest),
                    media_type: layer.media_type.clone(),
                });
            };
            compressions.push(compression);
        }

        let outcomes: Result<Vec<LayerOutcome>> =
            stream::iter(manifest.layers.iter().zip(compressions).enumerate().map(
                |(index, (layer, compression))| {
                    self.pull_layer(
                        &client,
                        &reference,
                        layer,
                        Some(compression),
                        guard.lease(),
                        options,
                        progress.clone(),
                        observer.clone(),
                        unpacker.map(|u| (u, index)),
                    )
                },
            ))
            .buffered(options.concurrency.max(1))
            .try_collect()
            .await;
        let mut outcomes: Vec<LayerOutcome> = match outcomes {
            Ok(outcomes) => outcomes,
            Err(error) => {
                if error.kind() == ErrorKind::ResourceExhausted {
                    // On a full disk the partial downloads are what fills
                    // it, and none can resume until there is room again:
                    // they go (those another pull is writing stay).
                    self.drop_partial_downloads(&manifest.layers).await;
                }
                return Err(error);
            }
        };

        let mut diff_ids = Vec::with_capacity(outcomes.len());
        let mut downloaded = 0;
        let parsed: Option<Vec<ParsedLayer>> = unpacker.and_then(|_| {
            outcomes
                .iter_mut()
                .map(|outcome| outcome.parsed.take())
                .collect()
        });
        for (layer, outcome) in manifest.layers.iter().zip(&outcomes) {
            let Some(diff_id) = outcome.diff_id.clone() else {
                return Err(Error::Task(format!(
                    "layer {} has no diff_id",
                    layer.digest
                )));
            };
            diff_ids.push(diff_id);
            downloaded += outcome.downloaded;
        }
        let image = oci_image(
            ImageBlob {
                role: "manifest".into(),
                position: 0,
                digest: manifest_digest.clone(),
                media_type: manifest_media_type,
                size: manifest_bytes.len() as u64,
            },
            &manifest,
            &config,
            config_bytes_len,
            diff_ids,
            &image_platform,
        )?;
        let tag = NewTag {
            name: tag_name(&reference),
            platform: image_platform.to_string(),
            index: index.clone(),
        };
        let mut guard = guard;
        self.store
            .catalog()
            .commit_image(&image, Some(&tag), guard.lease.take())?;
        progress.event(Event::Stored {
            manifest: manifest_digest.clone(),
        });
        Ok((
            PulledImage {
                reference: reference.to_string(),
                manifest_digest,
                index_digest: index.map(|i| i.digest),
                platform: image_platform.to_string(),
                cached: false,
                bytes_downloaded: downloaded,
                layers: manifest.layers.len(),
            },
            parsed,
        ))
    }

    /// What the tag names now, by a HEAD request. A registry that cannot
    /// answer HEAD (some answer 405) gets a full GET instead; a missing tag
    /// or refused credentials fail at once.
    async fn remote_digest(
        &self,
        client: &RegistryClient,
        reference: &Reference,
        observer: &dyn RetryObserver,
    ) -> Result<Option<Digest>> {
        match client.head_manifest(reference, observer).await {
            Ok(digest) => Ok(digest),
            Err(kiln_oci::OciError::Status { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// `pull` with the `missing` policy and default options: the cached image
    /// when there is one, else a download.
    pub async fn ensure(
        &self,
        reference: &str,
        progress: Arc<dyn Progress>,
    ) -> Result<PulledImage> {
        self.pull(reference, &PullOptions::default(), progress)
            .await
    }

    pub(crate) fn registry_client(
        &self,
        reference: &Reference,
        options: &PullOptions,
    ) -> RegistryClient {
        RegistryClient::new(self.client_options(reference, options))
    }

    /// The registry client settings for `reference`.
    pub(crate) fn client_options(
        &self,
        reference: &Reference,
        options: &PullOptions,
    ) -> ClientOptions {
        let credentials = self.credential_chain(options.credentials.clone());
        ClientOptions {
            insecure_registries: if options.insecure {
                vec![reference.api_host().to_string()]
            } else {
                Vec::new()
            },
            ca_certs: options.ca_certs.clone(),
            credentials: Arc::new(credentials),
            ..ClientOptions::default()
        }
    }

    /// Leases, stores and records a small blob held in memory.
    fn keep_blob(&self, lease: &Lease, digest: &Digest, bytes: &[u8]) -> Result<()> {
        let catalog = self.store.catalog();
        catalog.lease_blob(lease, digest)?;
        self.store.content().put_blob(digest, bytes)?;
        catalog.record_blob(digest, bytes.len() as u64)?;
        Ok(())
    }

    async fn fetch_config(
        &self,
        client: &RegistryClient,
        reference: &Reference,
        manifest: &ImageManifest,
        lease: &Lease,
        force: bool,
        observer: &Arc<Observer>,
    ) -> Result<(ImageConfig, u64)> {
        let descriptor = &manifest.config;
        if !media_type::is_config(&descriptor.media_type) {
            return Err(Error::UnsupportedMediaType {
                reference: reference.to_string(),
                what: "config (not a container image)".into(),
                media_type: descriptor.media_type.clone(),
            });
        }
        if descriptor.size > MAX_CONFIG_SIZE {
            return Err(kiln_oci::OciError::TooLarge {
                host: reference.api_host().to_string(),
                what: format!("config {}", descriptor.digest),
                limit: MAX_CONFIG_SIZE,
            }
            .into());
        }
        self.store.catalog().lease_blob(lease, &descriptor.digest)?;
        let cached = if force {
            None
        } else {
            self.store.content().read_blob(&descriptor.digest).ok()
        };
        let bytes = match cached {
            Some(bytes) => Bytes::from(bytes),
            None => {
                let bytes = client
                    .fetch_small_blob(
                        reference,
                        &descriptor.digest,
                        descriptor.size,
                        observer.clone(),
                    )
                    .await?;
                self.store.content().put_blob(&descriptor.digest, &bytes)?;
                bytes
            }
        };
        self.store
            .catalog()
            .record_blob(&descriptor.digest, bytes.len() as u64)?;
        let config = ImageConfig::from_slice(&bytes).map_err(|source| Error::Manifest {
            reference: reference.to_string(),
            source,
        })?;
        Ok((config, bytes.len() as u64))
    }

    /// Downloads one blob into the store (resuming a partial download),
    /// computing its diff_id when `compression` is given (layers).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn pull_layer(
        &self,
        client: &RegistryClient,
        reference: &Reference,
        layer: &Descriptor,
        compression: Option<Compression>,
        lease: &Lease,
        options: &PullOptions,
        progress: Arc<dyn Progress>,
        observer: Arc<Observer>,
        unpack: Option<(&Unpacker, usize)>,
    ) -> Result<LayerOutcome> {
        let digest = layer.digest.clone();
        let force = options.force;
        // Lease first, then look: garbage collection keeps what is leased.
        self.store.catalog().lease_blob(lease, &digest)?;
        let mut fresh_start = force;
        for attempt in 0..2 {
            let content = self.store.content().clone();
            let (ingest_digest, size, rewrite) = (digest.clone(), layer.size, fresh_start);
            let start = tokio::task::spawn_blocking(move || {
                content.ingest(&ingest_digest, Some(size), rewrite)
            })
            .await
            .map_err(|e| Error::Task(e.to_string()))??;
            let mut ingest = match start {
                IngestStart::Committed { size } => {
                    progress.event(Event::BlobExists {
                        digest: digest.clone(),
                        size,
                    });
                    let (diff_id, parsing) = match compression {
                        Some(compression) => {
                            let (diff_id, parsing) =
                                self.known_diff_id(&digest, compression, unpack).await?;
                            (Some(diff_id), parsing)
                        }
                        None => (None, None),
                    };
                    self.store.catalog().record_blob(&digest, size)?;
                    let parsed = match parsing {
                        Some(parsing) => Some(Unpacker::finish(parsing).await?),
                        None => None,
                    };
                    return Ok(LayerOutcome {
                        diff_id,
                        downloaded: 0,
                        parsed,
                    });
                }
                IngestStart::Writing(ingest) => ingest,
            };
            let mut parsing = None;
            let mut worker = match compression {
                Some(compression) => Some(
                    DiffIdSink::with_tee(
                        compression,
                        options.pipelined_diff_id,
                        match unpack {
                            Some((unpacker, index)) => {
                                let (tee, thread) = unpacker
                                    .tee(index)
                                    .map_err(|source| unpack_error(&digest, source))?;
                                parsing = Some(thread);
                                Some(Box::new(tee) as kiln_oci::Tee)
                            }
                            None => None,
                        },
                    )
                    .map_err(|source| Error::Decompress {
                        layer: digest.clone(),
                        compression: compression.as_str(),
                        source,
                    })?,
                ),
                None => None,
            };
            let offset = ingest.offset();
            let (ingest, worker) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
                if ingest.offset() > 0
                    && let Some(worker) = worker.as_mut()
                {
                    ingest.replay(|chunk| worker.update(Bytes::copy_from_slice(chunk)))?;
                }
                Ok((ingest, worker))
            })
            .await
            .map_err(|e| Error::Task(e.to_string()))??;
            progress.event(Event::BlobStarted {
                digest: digest.clone(),
                size: layer.size,
                offset,
            });

            let (sender, mut receiver) = tokio::sync::mpsc::channel::<Bytes>(4);
            let writer = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
                let mut ingest = ingest;
                let mut worker = worker;
                let mut worker_failed = None;
                while let Some(chunk) = receiver.blocking_recv() {
                    ingest.write(&chunk)?;
                    if worker_failed.is_none()
                        && let Some(worker) = worker.as_mut()
                        && let Err(error) = worker.update(chunk)
                    {
                        worker_failed = Some(error);
                    }
                }
                Ok((ingest, worker, worker_failed))
            });
            let mut download = client.blob(
                reference,
                digest.clone(),
                Some(layer.size),
                offset,
                observer.clone(),
            );
            let mut network_error = None;
            loop {
                match download.next_chunk().await {
                    Ok(Some(chunk)) => {
                        if sender.send(chunk).await.is_err() {
                            break; // the writer failed; its error follows
                        }
                        progress.event(Event::BlobProgress {
                            digest: digest.clone(),
                            position: download.position(),
                        });
                    }
                    Ok(None) => break,
                    Err(error) => {
                        network_error = Some(error);
                        break;
                    }
                }
            }
            drop(sender);
            let (ingest, worker, worker_failed) =
                writer.await.map_err(|e| Error::Task(e.to_string()))??;
            if let Some(error) = network_error {
                // The partial data stays for the next pull to resume.
                drop(ingest);
                return Err(error.into());
            }
            let committed = tokio::task::spawn_blocking(move || ingest.commit())
                .await
                .map_err(|e| Error::Task(e.to_string()))?;
            match committed {
                Ok(size) => {
                    self.store.catalog().record_blob(&digest, size)?;
                    progress.event(Event::BlobDone {
                        digest: digest.clone(),
                        size,
                    });
                    let compression_name = compression.map(|c| c.as_str()).unwrap_or("none");
                    let diff_id = match (worker_failed, worker) {
                        (Some(source), _) => {
                            return Err(Error::Decompress {
                                layer: digest,
                                compression: compression_name,
                                source,
                            });
                        }
                        (None, None) => None,
                        (None, Some(worker)) => Some(
                            tokio::task::spawn_blocking(move || worker.finish())
                                .await
                                .map_err(|e| Error::Task(e.to_string()))?
                                .map_err(|source| Error::Decompress {
                                    layer: digest.clone(),
                                    compression: compression_name,
                                    source,
                                })?,
                        ),
                    };
                    let parsed = match parsing {
                        Some(parsing) => Some(Unpacker::finish(parsing).await?),
                        None => None,
                    };
                    return Ok(LayerOutcome {
                        diff_id,
                        downloaded: layer.size - offset,
                        parsed,
                    });
                }
                Err(StoreError::DigestMismatch { .. }) if attempt == 0 => {
                    // Bad bytes (from the network or an old partial file) were
                    // discarded; try once more from scratch.
                    progress.event(Event::Retrying {
                        what: format!("blob {digest}"),
                        attempt: 2,
                        delay: Duration::ZERO,
                        reason:
                            "content did not match its digest; downloading again from the start"
                                .into(),
                    });
                    fresh_start = true;
                    continue;
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(Error::Task(format!("download of layer {digest} gave up")))
    }

    /// The diff_id of a committed layer: from the catalog, else by reading
    /// it. With `unpack`, the layer is also parsed (the thread doing it is
    /// returned), from the same read when the diff_id had to be computed.
    async fn known_diff_id(
        &self,
        digest: &Digest,
        compression: Compression,
        unpack: Option<(&Unpacker, usize)>,
    ) -> Result<((Digest, u64), Option<Parsing>)> {
        let unpack_error = |source| unpack_error(digest, source);
        let blob = || self.store.content().open_blob(digest);
        if let Some(record) = self.store.catalog().layer(digest)?
            && let (Some(diff_id), Some(size)) = (record.diff_id, record.uncompressed_size)
        {
            let parsing = match unpack {
                Some((unpacker, index)) => Some(
                    unpacker
                        .stored(index, blob()?, compression)
                        .map_err(unpack_error)?,
                ),
                None => None,
            };
            return Ok(((diff_id, size), parsing));
        }
        let file = blob()?;
        let (tee, parsing) = match unpack {
            Some((unpacker, index)) => {
                let (pipe, parsing) = unpacker.tee(index).map_err(unpack_error)?;
                (Some(Box::new(pipe) as kiln_oci::Tee), Some(parsing))
            }
            None => (None, None),
        };
        let layer = digest.clone();
        let diff_id =
            tokio::task::spawn_blocking(move || DiffIdHasher::of_reader(file, compression, tee))
                .await
                .map_err(|e| Error::Task(e.to_string()))?
                .map_err(|source| Error::Decompress {
                    layer,
                    compression: compression.as_str(),
                    source,
                })?;
        Ok((diff_id, parsing))
    }

    /// Removes the partial downloads of `layers` no writer holds. Writers
    /// of a failed pull finish as soon as their channel closes, so held
    /// ones are asked again for up to a second (in all) before they are
    /// left alone: another pull may be writing them.
    async fn drop_partial_downloads(&self, layers: &[Descriptor]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        let mut left: Vec<&Digest> = layers.iter().map(|l| &l.digest).collect();
        loop {
            left.retain(|digest| {
                matches!(self.store.content().remove_ingest_if_idle(digest), Ok(None))
            });
            if left.is_empty() || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A complete cached image for `reference` on `platform`.
    pub(crate) fn find_cached(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<Option<PulledImage>> {
        let catalog = self.store.catalog();
        let mut candidates = catalog.tags_named(&tag_name(reference))?;
        if candidates.is_empty()
            && let Some(digest) = reference.digest()
        {
            candidates = catalog.tags_with_index(digest)?;
            if let Some(image) = catalog.image_by_digest(digest)? {
                candidates.extend(catalog.tags_of(image.id)?);
            }
        }
        for tag in candidates {
            let Ok(tag_platform) = tag.platform.parse::<Platform>() else {
                continue;
            };
            if !platform.accepts(&tag_platform) {
                continue;
            }
            if let Some(hit) =
                self.complete_image(reference, tag.image_id, tag.index_digest.clone())?
            {
                return Ok(Some(hit));
            }
        }
        Ok(None)
    }

    /// A cached image whose manifest or index has the digest the registry
    /// now reports for the reference.
    fn find_cached_remote(
        &self,
        reference: &Reference,
        platform: &Platform,
        remote: &Digest,
    ) -> Result<Option<PulledImage>> {
        for tag in self.store.catalog().tags_named(&tag_name(reference))? {
            let Ok(tag_platform) = tag.platform.parse::<Platform>() else {
                continue;
            };
            if !platform.accepts(&tag_platform) {
                continue;
            }
            let Some(image) = self.store.catalog().image(tag.image_id)? else {
                continue;
            };
            if (image.manifest_digest == *remote || tag.index_digest.as_ref() == Some(remote))
                && let Some(hit) =
                    self.complete_image(reference, tag.image_id, tag.index_digest.clone())?
            {
                return Ok(Some(hit));
            }
        }
        Ok(None)
    }

    fn complete_image(
        &self,
        reference: &Reference,
        image_id: i64,
        index_digest: Option<Digest>,
    ) -> Result<Option<PulledImage>> {
        let catalog = self.store.catalog();
        let Some(image) = catalog.image(image_id)? else {
            return Ok(None);
        };
        if !image.complete {
            return Ok(None);
        }
        let blobs = catalog.image_blobs(image_id)?;
        for blob in &blobs {
            if self.store.content().blob_size(&blob.digest)? != Some(blob.size) {
                return Ok(None);
            }
        }
        catalog.touch_image(image_id)?;
        Ok(Some(PulledImage {
            reference: reference.to_string(),
            manifest_digest: image.manifest_digest,
            index_digest,
            platform: image.platform.unwrap_or_default(),
            cached: true,
            bytes_downloaded: 0,
            layers: blobs.iter().filter(|b| b.role == "layer").count(),
        }))
    }
}

/// The catalog entry of an OCI image whose blobs are all in the store.
/// `diff_ids` holds each layer's computed diff_id and uncompressed size, in
/// order; each must be the one the config lists (the caller has checked that
/// the counts agree).
pub(crate) fn oci_image(
    manifest_blob: ImageBlob,
    manifest: &ImageManifest,
    config: &ImageConfig,
    config_size: u64,
    diff_ids: Vec<(Digest, u64)>,
    platform: &Platform,
) -> Result<NewImage> {
    let mut blobs = vec![ImageBlob {
        role: "config".into(),
        position: 0,
        digest: manifest.config.digest.clone(),
        media_type: manifest.config.media_type.clone(),
        size: config_size,
    }];
    let mut layers = Vec::with_capacity(diff_ids.len());
    for (position, ((layer, (diff_id, uncompressed_size)), expected)) in manifest
        .layers
        .iter()
        .zip(diff_ids)
        .zip(&config.rootfs.diff_ids)
        .enumerate()
    {
        if diff_id != *expected {
            return Err(Error::DiffIdMismatch {
                layer: layer.digest.clone(),
                expected: expected.clone(),
                actual: diff_id,
            });
        }
        blobs.push(ImageBlob {
            role: "layer".into(),
            position: position as u32,
            digest: layer.digest.clone(),
            media_type: layer.media_type.clone(),
            size: layer.size,
        });
        layers.push(LayerRecord {
            digest: layer.digest.clone(),
            media_type: layer.media_type.clone(),
            diff_id: Some(diff_id),
            uncompressed_size: Some(uncompressed_size),
        });
    }
    Ok(NewImage {
        manifest: manifest_blob,
        kind: "oci".into(),
        platform: Some(platform.to_string()),
        image_created: config.created.clone(),
        blobs,
        layers,
        source: None,
    })
}

/// Picks the index entry for `platform`.
pub(crate) fn choose_platform<'a>(
    reference: &str,
    manifests: &'a [Descriptor],
    platform: &Platform,
    explicit: bool,
) -> Result<&'a Descriptor> {
    let images: Vec<&Descriptor> = manifests
        .iter()
        .filter(|d| media_type::manifest_kind(&d.media_type) == Some(ManifestKind::Image))
        .filter(|d| d.platform.as_ref().is_some_and(|p| p.os != "unknown"))
        .collect();
    // An exact variant match beats a variant-less one.
    let exact = images
        .iter()
        .find(|d| d.platform.as_ref() == Some(platform));
    let accepted = exact.or_else(|| {
        images
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| platform.accepts(p)))
    });
    if let Some(descriptor) = accepted {
        return Ok(descriptor);
    }
    let _ = explicit;
    Err(Error::PlatformNotFound {
        reference: reference.to_string(),
        platform: platform.to_string(),
        available: images
            .iter()
            .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(platform: &str, n: u8) -> Descriptor {
        Descriptor {
            media_type: media_type::OCI_MANIFEST.into(),
            digest: Digest::sha256_of(&[n]),
            size: 1,
            platform: Some(platform.parse().unwrap()),
            urls: vec![],
            annotations: Default::default(),
            artifact_type: None,
        }
    }

    #[test]
    fn chooses_the_platform_and_lists_alternatives() {
        let manifests = vec![
            descriptor("linux/amd64", 1),
            descriptor("linux/arm64/v8", 2),
            descriptor("unknown/unknown", 3),
        ];
        let p = |s: &str| s.parse::<Platform>().unwrap();
        assert_eq!(
            choose_platform("x", &manifests, &p("linux/arm64"), false)
                .unwrap()
                .digest,
            Digest::sha256_of(&[2])
        );
        assert_eq!(
            choose_platform("x", &manifests, &p("linux/amd64"), false)
                .unwrap()
                .digest,
            Digest::sha256_of(&[1])
        );
        let error = choose_platform("x", &manifests, &p("linux/s390x"), true)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("available: linux/amd64, linux/arm64/v8"),
            "{error}"
        );
    }
}
