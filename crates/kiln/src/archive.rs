//! `load` and `save`: images in and out of tar archives (`docker save`
//! archives and OCI image layouts), with the same guarantees as a pull.
//!
//! Load streams the archive once, under one lease: every `blobs/<alg>/<hex>`
//! entry is written into the content store and committed only if it hashes
//! to its name; docker's layer tars are written to a scratch file while
//! hashed and committed under the digest computed. Layers are decompressed
//! on the fly (a thread of their own) so their diff_ids are known when the
//! tar ends. Then the images are resolved and checked (every referenced blob
//! present with its size, configs parsed, diff_ids equal to the config's) and
//! only then recorded in the catalog, exactly as a pull records them. A
//! failure records nothing; what was written stays unreferenced for `prune`.
//!
//! Save writes the stored manifest, config and layer blobs byte for byte.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use kiln_oci::{DiffIdHasher, DiffIdSink};
use kiln_sources::archive::{
    self as format, ArchiveError, ArchiveWriter, DockerManifestEntry, EntrySink, ImageName, Layout,
};
use kiln_store::{ImageBlob, IndexRecord, IngestStart, NewImage, NewTag, StoreError};
use kiln_types::manifest::{ImageIndex, Manifest};
use kiln_types::media_type::{self, Compression, ManifestKind};
use kiln_types::{Algorithm, Descriptor, Digest, Hasher, ImageConfig, Platform, Reference};
use serde::Serialize;

use crate::Scratch;
use crate::error::{Error, Result};
use crate::progress::{Event, Progress};
use crate::{LeaseGuard, Manager, tag_name};

const CHUNK: usize = 1 << 20;
/// Bytes read from the archive at a time (and queued to a diff_id worker:
/// at most 64 of them per worker).
const READ_CHUNK: usize = 256 << 10;
/// diff_id workers still running for earlier entries while the next one
/// streams: decompression of one layer overlaps the copy of the next.
const MAX_PENDING: usize = 1;
const MAX_MANIFEST_SIZE: u64 = 4 << 20;
const MAX_CONFIG_SIZE: u64 = 16 << 20;

/// How to load an archive.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Platform to pick from a multi-platform index, and the only platform
    /// loaded when given (default: the host's, from indexes only).
    pub platform: Option<Platform>,
    /// Name for the first image, instead of the names the archive gives it.
    pub tag: Option<String>,
    /// What to call the archive in messages (`-i FILE`, `stdin`).
    pub archive_name: String,
}

/// One image loaded.
#[derive(Debug, Clone, Serialize)]
pub struct LoadedImage {
    /// Its names (none: reachable by digest only).
    pub names: Vec<String>,
    /// Manifest digest.
    pub manifest_digest: Digest,
    /// Config digest.
    pub config_digest: Digest,
    /// Platform.
    pub platform: String,
    /// Number of layers.
    pub layers: usize,
    /// Why a name in the archive was not used, if one was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The archive layout `save` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// docker 25+'s combined layout: an OCI layout plus `manifest.json` and
    /// `repositories`, readable by `docker load`, podman and skopeo.
    Docker,
    /// A plain OCI image layout.
    Oci,
}

/// What `save` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct SaveReport {
    /// Manifest digests and names of the images, in order.
    pub images: Vec<SavedImage>,
    /// Distinct blobs written.
    pub blobs: usize,
    /// Bytes of those blobs.
    pub bytes: u64,
}

/// One image in a saved archive.
#[derive(Debug, Clone, Serialize)]
pub struct SavedImage {
    /// Its names in the archive.
    pub names: Vec<String>,
    /// Manifest digest.
    pub manifest_digest: Digest,
}

/// What a loader learned about a stored entry.
#[derive(Debug, Clone)]
struct Stored {
    digest: Digest,
    size: u64,
}

/// A diff_id computed while an entry streamed past, for the compression its
/// first bytes showed.
#[derive(Debug, Clone)]
struct Guess {
    compression: Compression,
    diff_id: Digest,
    uncompressed_size: u64,
}

enum Failure {
    Archive(ArchiveError),
    Other(Error),
}

impl From<ArchiveError> for Failure {
    fn from(error: ArchiveError) -> Failure {
        Failure::Archive(error)
    }
}

macro_rules! other {
    ($e:expr) => {
        $e.map_err(|e| Failure::Other(e.into()))
    };
}

fn read_error(entry: &str, error: std::io::Error) -> Failure {
    Failure::Archive(ArchiveError::Read {
        entry: entry.to_string(),
        detail: error.to_string(),
    })
}

/// The compression a blob's first bytes show, if it looks like a layer.
fn detect(head: &[u8]) -> Option<Compression> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some(Compression::Gzip)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(Compression::Zstd)
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Some(Compression::None)
    } else {
        None
    }
}

/// Reads until `buffer` is full or the input ends.
fn fill(data: &mut dyn Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match data.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

enum Target<'a> {
    Ingest(&'a mut kiln_store::Ingest),
    File(&'a mut BufWriter<fs_err::File>, &'a mut Hasher),
    Discard(&'a mut Hasher),
}

struct Loader<'a> {
    manager: &'a Manager,
    lease: &'a kiln_store::Lease,
    progress: &'a dyn Progress,
    scratch: Option<Scratch>,
    files: u64,
    buffer: Vec<u8>,
    entries: HashMap<String, Stored>,
    by_digest: HashMap<Digest, Stored>,
    guesses: HashMap<Digest, Guess>,
    pending: VecDeque<(Digest, Compression, DiffIdSink)>,
}

impl Loader<'_> {
    /// Streams one entry into `target`; returns the bytes read and the
    /// compression-specific diff_id if the entry looks like a compressed layer.
    fn stream(
        &mut self,
        path: &str,
        size: u64,
        data: &mut dyn Read,
        mut target: Target<'_>,
    ) -> Result<(Option<Compression>, Option<DiffIdSink>), Failure> {
        let mut total = 0u64;
        let mut detected = None;
        let mut diff: Option<DiffIdSink> = None;
        loop {
            let n = fill(data, &mut self.buffer).map_err(|e| read_error(path, e))?;
            if n == 0 {
                break;
            }
            let chunk = &self.buffer[..n];
            if total == 0 {
                detected = detect(chunk);
                if let Some(compression @ (Compression::Gzip | Compression::Zstd)) = detected {
                    diff = DiffIdSink::new(compression, true).ok();
                }
            }
            if let Some(sink) = diff.as_mut()
                && sink.update(Bytes::copy_from_slice(chunk)).is_err()
            {
                diff = None;
            }
            match &mut target {
                Target::Ingest(ingest) => other!(ingest.write(chunk))?,
                Target::File(writer, hasher) => {
                    other!(writer.write_all(chunk).map_err(StoreError::from))?;
                    hasher.update(chunk);
                }
                Target::Discard(hasher) => hasher.update(chunk),
            }
            total += n as u64;
        }
        if total != size {
            return Err(Failure::Archive(ArchiveError::Read {
                entry: path.into(),
                detail: format!("truncated: {total} of {size} bytes"),
            }));
        }
        Ok((detected, diff))
    }

    fn remember(&mut self, path: &str, stored: Stored) {
        self.by_digest
            .entry(stored.digest.clone())
            .or_insert_with(|| stored.clone());
        self.entries.insert(path.to_string(), stored);
    }

    /// Records what the first bytes of an entry showed; a compressed
    /// layer's diff_id worker finishes later (see [`Loader::settle`]).
    fn observe(
        &mut self,
        digest: &Digest,
        size: u64,
        detected: Option<Compression>,
        diff: Option<DiffIdSink>,
    ) {
        match (detected, diff) {
            (Some(Compression::None), _) if digest.algorithm() == Algorithm::Sha256 => {
                self.guesses.insert(
                    digest.clone(),
                    Guess {
                        compression: Compression::None,
                        diff_id: digest.clone(),
                        uncompressed_size: size,
                    },
                );
            }
            (Some(compression), Some(sink)) => {
                self.pending.push_back((digest.clone(), compression, sink));
                self.settle(MAX_PENDING);
            }
            _ => {}
        }
    }

    /// Waits for diff_id workers until at most `keep` are running.
    fn settle(&mut self, keep: usize) {
        while self.pending.len() > keep {
            let Some((digest, compression, sink)) = self.pending.pop_front() else {
                break;
            };
            if let Ok((diff_id, uncompressed_size)) = sink.finish() {
                self.guesses.insert(
                    digest,
                    Guess {
                        compression,
                        diff_id,
                        uncompressed_size,
                    },
                );
            }
        }
    }
}

impl EntrySink for Loader<'_> {
    type Error = Failure;

    fn blob(
        &mut self,
        path: &str,
        digest: &Digest,
        size: u64,
        data: &mut dyn Read,
    ) -> Result<(), Failure> {
        self.progress.event(Event::ArchiveEntry {
            name: path.to_string(),
            size,
        });
        let store = &self.manager.store;
        other!(store.catalog().lease_blob(self.lease, digest))?;
        let start = if self.entries.contains_key(path) {
            // Seen before in this archive: the copy must hash the same.
            IngestStart::Committed { size }
        } else {
            other!(store.content().ingest(digest, Some(size), false))?
        };
        let (detected, diff) = match start {
            IngestStart::Committed { .. } => {
                let mut hasher = Hasher::new(digest.algorithm());
                let result = self.stream(path, size, data, Target::Discard(&mut hasher))?;
                let actual = hasher.finish();
                if actual != *digest {
                    return Err(Failure::Archive(ArchiveError::DigestMismatch {
                        entry: path.into(),
                        expected: digest.clone(),
                        actual,
                    }));
                }
                result
            }
            IngestStart::Writing(mut ingest) => {
                if ingest.offset() > 0 {
                    other!(ingest.reset())?;
                }
                let result = match self.stream(path, size, data, Target::Ingest(&mut ingest)) {
                    Ok(result) => result,
                    Err(error) => {
                        let _ = ingest.abort();
                        return Err(error);
                    }
                };
                match ingest.commit() {
                    Ok(_) => {}
                    Err(StoreError::DigestMismatch { expected, actual }) => {
                        return Err(Failure::Archive(ArchiveError::DigestMismatch {
                            entry: path.into(),
                            expected,
                            actual,
                        }));
                    }
                    Err(error) => return Err(Failure::Other(error.into())),
                }
                result
            }
        };
        other!(store.catalog().record_blob(digest, size))?;
        self.observe(digest, size, detected, diff);
        self.remember(
            path,
            Stored {
                digest: digest.clone(),
                size,
            },
        );
        Ok(())
    }

    fn file(&mut self, path: &str, size: u64, data: &mut dyn Read) -> Result<(), Failure> {
        self.progress.event(Event::ArchiveEntry {
            name: path.to_string(),
            size,
        });
        let store = &self.manager.store;
        if self.scratch.is_none() {
            self.scratch = Some(other!(Scratch::new(self.manager))?);
        }
        let dir: PathBuf = self
            .scratch
            .as_ref()
            .map(|s| s.0.clone())
            .unwrap_or_default();
        self.files += 1;
        let file_path = dir.join(format!("file-{}", self.files));
        let file = other!(fs_err::File::create(&file_path).map_err(StoreError::from))?;
        let mut writer = BufWriter::with_capacity(CHUNK, file);
        let mut hasher = Hasher::new(Algorithm::Sha256);
        let (detected, diff) =
            self.stream(path, size, data, Target::File(&mut writer, &mut hasher))?;
        other!(writer.flush().map_err(StoreError::from))?;
        drop(writer);
        let digest = hasher.finish();
        if let Some(previous) = self.entries.get(path) {
            let _ = std::fs::remove_file(&file_path);
            if previous.digest != digest {
                return Err(Failure::Archive(ArchiveError::Duplicate {
                    entry: path.into(),
                }));
            }
            return Ok(());
        }
        other!(store.catalog().lease_blob(self.lease, &digest))?;
        if other!(store.content().blob_size(&digest))? == Some(size) {
            let _ = std::fs::remove_file(&file_path);
        } else {
            other!(store.content().adopt_file(&file_path, &digest, size))?;
        }
        other!(store.catalog().record_blob(&digest, size))?;
        self.observe(&digest, size, detected, diff);
        self.remember(path, Stored { digest, size });
        Ok(())
    }
}

/// An image found in the archive's index, before it is checked.
/// Most images one archive may hold.
const MAX_IMAGES: usize = 1000;
/// Most layers one image may have (overlay filesystems stop at 128).
const MAX_LAYERS: usize = 1000;

struct Candidate {
    digest: Digest,
    size: u64,
    names: Vec<Reference>,
    note: Option<String>,
    index: Option<IndexRecord>,
    /// The indexes it was listed through (merged listings): digests a
    /// name may pin besides its own.
    through: Vec<Digest>,
    descriptor_platform: Option<Platform>,
    referrer: String,
}

/// An image checked and ready to record.
struct Checked {
    image: NewImage,
    tags: Vec<NewTag>,
    loaded: LoadedImage,
}

fn blob_entry(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm().as_str(), digest.hex())
}

/// Names from an archive, and a note for the one that could not be used.
fn names_of(names: impl IntoIterator<Item = ImageName>) -> (Vec<Reference>, Option<String>) {
    let (mut references, mut note) = (Vec::new(), None);
    for name in names {
        match name {
            ImageName::Reference(reference) => {
                if !references.contains(&reference) {
                    references.push(reference)
                }
            }
            ImageName::TagOnly(tag) => {
                note = Some(format!(
                    "the archive names this image only by the tag {tag:?}; pass -t REF to name it"
                ))
            }
            ImageName::Invalid(text) => {
                note = Some(format!(
                    "the archive's name {text:?} is not an image reference; pass -t REF to name it"
                ))
            }
        }
    }
    (references, note)
}

impl Manager {
    /// Loads the images of a `docker save` archive or an OCI layout archive
    /// (plain, gzip or zstd) read from `reader`.
    pub fn load(
        &self,
        reader: impl Read,
        options: &LoadOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<Vec<LoadedImage>> {
        let archive = options.archive_name.clone();
        let wrap = |failure: Failure| match failure {
            Failure::Archive(source) => Error::Archive {
                archive: archive.clone(),
                source,
            },
            // Store failures speak for themselves; anything about the
            // content (diff_ids, decompression, platforms) names the archive.
            Failure::Other(error @ Error::Store(_)) => error,
            Failure::Other(error) => Error::InArchive {
                archive: archive.clone(),
                source: Box::new(error),
            },
        };
        let tag = options
            .tag
            .as_deref()
            .map(str::parse::<Reference>)
            .transpose()?;
        let mut guard = LeaseGuard::new(self)?;
        let mut loader = Loader {
            manager: self,
            lease: guard.lease(),
            progress: progress.as_ref(),
            scratch: None,
            files: 0,
            buffer: vec![0u8; READ_CHUNK],
            entries: HashMap::new(),
            by_digest: HashMap::new(),
            guesses: HashMap::new(),
            pending: VecDeque::new(),
        };
        let contents = format::read_archive(reader, &mut loader).map_err(wrap)?;
        drop(loader.scratch.take());
        loader.settle(0);
        let layout = contents.layout().map_err(|e| wrap(e.into()))?;
        let listed = self
            .candidates(&mut loader, &contents, layout, options)
            .map_err(wrap)?;
        // One image per manifest, however often the archive lists it (its
        // names merged), and a bound on how many.
        let mut candidates: Vec<Candidate> = Vec::new();
        for candidate in listed {
            match candidates.iter_mut().find(|c| c.digest == candidate.digest) {
                Some(known) => {
                    for name in candidate.names {
                        if !known.names.contains(&name) {
                            known.names.push(name);
                        }
                    }
                    known.through.extend(candidate.through);
                }
                None => candidates.push(candidate),
            }
            if candidates.len() > MAX_IMAGES {
                return Err(wrap(Failure::Archive(ArchiveError::Malformed {
                    entry: "the archive".into(),
                    detail: format!("it lists more than {MAX_IMAGES} images"),
                })));
            }
        }
        let mut checked = Vec::new();
        let mut skipped = Vec::new();
        for mut candidate in candidates {
            // `-t` names the first image the platform filter keeps.
            if checked.is_empty()
                && let Some(tag) = &tag
                && candidate.descriptor_platform.as_ref().is_none_or(|p| {
                    options
                        .platform
                        .as_ref()
                        .is_none_or(|wanted| wanted.accepts(p))
                })
            {
                candidate.names = vec![tag.clone()];
                candidate.note = None;
            }
            // A name may pin the image's manifest, or an index it was
            // listed through; checked for the images that are loaded.
            let misnamed = candidate
                .names
                .iter()
                .find(|name| {
                    name.digest().is_some_and(|pinned| {
                        *pinned != candidate.digest && !candidate.through.contains(pinned)
                    })
                })
                .map(|name| (name.to_string(), candidate.digest.clone()));
            match self.check(&loader, candidate, options) {
                Ok(Ok(image)) => match misnamed {
                    Some((name, digest)) => {
                        return Err(Error::NameDigest {
                            name,
                            detail: format!(
                                "the name pins another digest than the image's ({digest})"
                            ),
                        });
                    }
                    None => checked.push(image),
                },
                Ok(Err(platform)) => skipped.push(platform),
                Err(failure) => return Err(wrap(failure)),
            }
        }
        if checked.is_empty() {
            return Err(Error::PlatformNotFound {
                reference: archive,
                platform: options
                    .platform
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                available: skipped,
            });
        }
        // Every image in one transaction: a load records all or nothing.
        let records: Vec<(&NewImage, &[NewTag])> = checked
            .iter()
            .map(|item| (&item.image, item.tags.as_slice()))
            .collect();
        self.store
            .catalog()
            .commit_images(&records, guard.lease.take())?;
        let mut loaded = Vec::new();
        for item in checked {
            progress.event(Event::Stored {
                manifest: item.loaded.manifest_digest.clone(),
            });
            loaded.push(item.loaded);
        }
        Ok(loaded)
    }

    /// Small blob from the archive (an index, manifest or config), checked
    /// against its descriptor.
    fn archive_blob(
        &self,
        loader: &Loader<'_>,
        descriptor: &Descriptor,
        referrer: &str,
        limit: u64,
    ) -> Result<Vec<u8>, Failure> {
        let entry = blob_entry(&descriptor.digest);
        let stored =
            loader
                .by_digest
                .get(&descriptor.digest)
                .ok_or_else(|| ArchiveError::Missing {
                    entry: entry.clone(),
                    referrer: referrer.into(),
                })?;
        if stored.size != descriptor.size {
            return Err(ArchiveError::SizeMismatch {
                entry,
                referrer: referrer.into(),
                expected: descriptor.size,
                actual: stored.size,
            }
            .into());
        }
        if descriptor.size > limit {
            return Err(ArchiveError::MetadataTooLarge { entry, limit }.into());
        }
        other!(self.store.content().read_blob(&descriptor.digest))
    }

    /// Keeps a small document as a blob of this load.
    fn keep_document(&self, loader: &mut Loader<'_>, bytes: &[u8]) -> Result<Digest, Failure> {
        let digest = Digest::sha256_of(bytes);
        let catalog = self.store.catalog();
        other!(catalog.lease_blob(loader.lease, &digest))?;
        other!(self.store.content().put_blob(&digest, bytes))?;
        other!(catalog.record_blob(&digest, bytes.len() as u64))?;
        loader.by_digest.insert(
            digest.clone(),
            Stored {
                digest: digest.clone(),
                size: bytes.len() as u64,
            },
        );
        Ok(digest)
    }

    fn candidates(
        &self,
        loader: &mut Loader<'_>,
        contents: &format::Contents,
        layout: Layout,
        options: &LoadOptions,
    ) -> Result<Vec<Candidate>, Failure> {
        let mut candidates = Vec::new();
        match layout {
            Layout::Oci(index) => {
                for descriptor in &index.manifests {
                    let (names, note) = names_of(format::descriptor_name(&descriptor.annotations));
                    match media_type::manifest_kind(&descriptor.media_type) {
                        Some(ManifestKind::Image) => candidates.push(Candidate {
                            digest: descriptor.digest.clone(),
                            size: descriptor.size,
                            names,
                            note,
                            index: None,
                            through: Vec::new(),
                            descriptor_platform: descriptor.platform.clone(),
                            referrer: "index.json".into(),
                        }),
                        Some(ManifestKind::Index) => {
                            let entry = blob_entry(&descriptor.digest);
                            let bytes = self.archive_blob(
                                loader,
                                descriptor,
                                "index.json",
                                MAX_MANIFEST_SIZE,
                            )?;
                            let nested: ImageIndex = format::parse_index(&entry, &bytes)?;
                            let platform = options.platform.clone().unwrap_or_else(Platform::host);
                            let chosen = crate::pull::choose_platform(
                                &entry,
                                &nested.manifests,
                                &platform,
                                options.platform.is_some(),
                            )
                            .map_err(Failure::Other)?;
                            candidates.push(Candidate {
                                digest: chosen.digest.clone(),
                                size: chosen.size,
                                names,
                                note,
                                index: Some(IndexRecord {
                                    digest: descriptor.digest.clone(),
                                    media_type: descriptor.media_type.clone(),
                                    size: descriptor.size,
                                }),
                                through: vec![descriptor.digest.clone()],
                                descriptor_platform: chosen.platform.clone(),
                                referrer: entry,
                            });
                        }
                        None => {
                            return Err(ArchiveError::Malformed {
                                entry: "index.json".into(),
                                detail: format!(
                                    "unsupported media type {:?} for {}",
                                    descriptor.media_type, descriptor.digest
                                ),
                            }
                            .into());
                        }
                    }
                }
            }
            Layout::Docker(entries) => {
                for entry in entries {
                    candidates.push(self.docker_candidate(loader, contents, &entry)?);
                }
            }
        }
        if candidates.is_empty() {
            return Err(ArchiveError::NoImages {
                entry: "index.json".into(),
            }
            .into());
        }
        Ok(candidates)
    }

    /// A docker archive's image: its config kept as is, an OCI manifest
    /// made for it (docker archives carry none).
    fn docker_candidate(
        &self,
        loader: &mut Loader<'_>,
        contents: &format::Contents,
        entry: &DockerManifestEntry,
    ) -> Result<Candidate, Failure> {
        let referrer = "manifest.json";
        let config_path = contents.resolve(&entry.config)?;
        let config = if let Some(bytes) = contents.metadata.get(&config_path) {
            bytes.clone()
        } else if let Some(stored) = loader.entries.get(&config_path) {
            if stored.size > MAX_CONFIG_SIZE {
                return Err(ArchiveError::MetadataTooLarge {
                    entry: config_path,
                    limit: MAX_CONFIG_SIZE,
                }
                .into());
            }
            other!(self.store.content().read_blob(&stored.digest))?
        } else {
            return Err(ArchiveError::Missing {
                entry: config_path,
                referrer: referrer.into(),
            }
            .into());
        };
        let config_digest = self.keep_document(loader, &config)?;
        let mut layers = Vec::new();
        for layer in &entry.layers {
            let path = contents.resolve(layer)?;
            let stored = loader
                .entries
                .get(&path)
                .ok_or_else(|| ArchiveError::Missing {
                    entry: path.clone(),
                    referrer: referrer.into(),
                })?;
            let media_type = match loader.guesses.get(&stored.digest).map(|g| g.compression) {
                Some(Compression::Gzip) => media_type::OCI_LAYER_GZIP,
                Some(Compression::Zstd) => media_type::OCI_LAYER_ZSTD,
                _ => media_type::OCI_LAYER_TAR,
            };
            layers.push(serde_json::json!({
                "mediaType": media_type,
                "digest": stored.digest.to_string(),
                "size": stored.size,
            }));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": {
                "mediaType": media_type::OCI_CONFIG,
                "digest": config_digest.to_string(),
                "size": config.len(),
            },
            "layers": layers,
        });
        let bytes = serde_json::to_vec(&manifest).map_err(|e| ArchiveError::Malformed {
            entry: referrer.into(),
            detail: e.to_string(),
        })?;
        let digest = self.keep_document(loader, &bytes)?;
        let (names, note) = names_of(
            entry
                .repo_tags
                .iter()
                .flatten()
                .map(|name| format::parse_name(name)),
        );
        Ok(Candidate {
            digest,
            size: bytes.len() as u64,
            names,
            note,
            index: None,
            through: Vec::new(),
            descriptor_platform: None,
            referrer: referrer.into(),
        })
    }

    /// Checks one image; `Ok(Err(platform))` when `--platform` excludes it.
    fn check(
        &self,
        loader: &Loader<'_>,
        candidate: Candidate,
        options: &LoadOptions,
    ) -> Result<std::result::Result<Checked, String>, Failure> {
        let manifest_entry = blob_entry(&candidate.digest);
        let descriptor = Descriptor::new("", candidate.digest.clone(), candidate.size);
        let bytes =
            self.archive_blob(loader, &descriptor, &candidate.referrer, MAX_MANIFEST_SIZE)?;
        let malformed = |entry: &str, detail: String| {
            Failure::Archive(ArchiveError::Malformed {
                entry: entry.into(),
                detail,
            })
        };
        let (manifest, manifest_media_type) =
            Manifest::parse(&bytes, "").map_err(|e| malformed(&manifest_entry, e.to_string()))?;
        let Manifest::Image(manifest) = manifest else {
            return Err(malformed(
                &manifest_entry,
                "an index where an image manifest was expected".into(),
            ));
        };
        if !media_type::is_config(&manifest.config.media_type) {
            return Err(malformed(
                &manifest_entry,
                format!(
                    "config media type {:?} is not a container image config",
                    manifest.config.media_type
                ),
            ));
        }
        let config_bytes =
            self.archive_blob(loader, &manifest.config, &manifest_entry, MAX_CONFIG_SIZE)?;
        let config_entry = blob_entry(&manifest.config.digest);
        let config = ImageConfig::from_slice(&config_bytes)
            .map_err(|e| malformed(&config_entry, e.to_string()))?;
        let platform = candidate
            .descriptor_platform
            .clone()
            .unwrap_or_else(|| config.platform());
        if candidate.index.is_none()
            && let Some(wanted) = &options.platform
            && !wanted.accepts(&platform)
        {
            return Ok(Err(platform.to_string()));
        }
        if manifest.layers.len() > MAX_LAYERS {
            return Err(malformed(
                &manifest_entry,
                format!(
                    "it lists {} layers (more than {MAX_LAYERS})",
                    manifest.layers.len()
                ),
            ));
        }
        if manifest.layers.len() != config.rootfs.diff_ids.len() {
            return Err(malformed(
                &manifest_entry,
                format!(
                    "it lists {} layers but its config has {} diff_ids",
                    manifest.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            ));
        }
        let mut diff_ids = Vec::with_capacity(manifest.layers.len());
        for (position, layer) in manifest.layers.iter().enumerate() {
            let entry = blob_entry(&layer.digest);
            let Some(compression) = media_type::layer_compression(&layer.media_type) else {
                return Err(Failure::Other(Error::UnsupportedMediaType {
                    reference: options.archive_name.clone(),
                    what: format!("layer {position} ({})", layer.digest),
                    media_type: layer.media_type.clone(),
                }));
            };
            let stored =
                loader
                    .by_digest
                    .get(&layer.digest)
                    .ok_or_else(|| ArchiveError::Missing {
                        entry: entry.clone(),
                        referrer: manifest_entry.clone(),
                    })?;
            if stored.size != layer.size {
                return Err(ArchiveError::SizeMismatch {
                    entry,
                    referrer: manifest_entry.clone(),
                    expected: layer.size,
                    actual: stored.size,
                }
                .into());
            }
            let (diff_id, uncompressed_size) = match loader.guesses.get(&layer.digest) {
                Some(guess) if guess.compression == compression => {
                    (guess.diff_id.clone(), guess.uncompressed_size)
                }
                _ if compression == Compression::None
                    && layer.digest.algorithm() == Algorithm::Sha256 =>
                {
                    (layer.digest.clone(), layer.size)
                }
                _ => self
                    .diff_id_of(&layer.digest, compression)
                    .map_err(Failure::Other)?,
            };
            diff_ids.push((diff_id, uncompressed_size));
        }
        let image = crate::pull::oci_image(
            ImageBlob {
                role: "manifest".into(),
                position: 0,
                digest: candidate.digest.clone(),
                media_type: manifest_media_type,
                size: bytes.len() as u64,
            },
            &manifest,
            &config,
            config_bytes.len() as u64,
            diff_ids,
            &platform,
        )
        .map_err(Failure::Other)?;
        let tags = candidate
            .names
            .iter()
            .map(|reference| NewTag {
                name: tag_name(reference),
                platform: platform.to_string(),
                index: candidate.index.clone(),
            })
            .collect();
        Ok(Ok(Checked {
            loaded: LoadedImage {
                names: candidate.names.iter().map(tag_name).collect(),
                manifest_digest: candidate.digest,
                config_digest: manifest.config.digest.clone(),
                platform: platform.to_string(),
                layers: manifest.layers.len(),
                note: candidate.note,
            },
            image,
            tags,
        }))
    }

    /// A stored layer's diff_id, by reading it.
    fn diff_id_of(&self, digest: &Digest, compression: Compression) -> Result<(Digest, u64)> {
        let file = self.store.content().open_blob(digest)?;
        DiffIdHasher::of_reader(file, compression, None).map_err(|source| Error::Decompress {
            layer: digest.clone(),
            compression: compression.as_str(),
            source,
        })
    }

    /// Writes the images `queries` name (names, digests, digest prefixes)
    /// into one archive: every blob byte for byte, each once.
    pub fn save(
        &self,
        queries: &[String],
        format: ArchiveFormat,
        output: impl Write,
        progress: Arc<dyn Progress>,
    ) -> Result<SaveReport> {
        let catalog = self.store.catalog();
        // Images in order, each with the names it is saved under.
        let mut images: Vec<(kiln_store::ImageRecord, Vec<String>)> = Vec::new();
        for query in queries {
            for found in self.find(query, None)? {
                if found.image.media_type == crate::RECORD_MEDIA_TYPE {
                    return Err(Error::NotSaveable {
                        image: query.clone(),
                        detail: format!(
                            "is a {} image from a non-OCI source, which kiln save does not write",
                            found.image.kind
                        ),
                    });
                }
                if !found.image.complete {
                    return Err(Error::NotSaveable {
                        image: query.clone(),
                        detail: "is incomplete in the store (a blob was lost); pull it again"
                            .into(),
                    });
                }
                let names: Vec<String> = match found.tag {
                    Some(tag) => vec![tag.name],
                    None => catalog
                        .tags_of(found.image.id)?
                        .into_iter()
                        .map(|t| t.name)
                        .collect(),
                };
                match images.iter_mut().find(|(i, _)| i.id == found.image.id) {
                    Some((_, existing)) => {
                        for name in names {
                            if !existing.contains(&name) {
                                existing.push(name);
                            }
                        }
                    }
                    None => images.push((found.image, names)),
                }
            }
        }
        let guard = LeaseGuard::new(self)?;
        let mut writer = ArchiveWriter::new(BufWriter::with_capacity(CHUNK, output));
        let write_error = Error::ArchiveOutput;
        writer
            .add_bytes("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(write_error)?;
        let mut written: HashSet<Digest> = HashSet::new();
        let mut report = SaveReport {
            images: Vec::new(),
            blobs: 0,
            bytes: 0,
        };
        let mut index = Vec::new();
        let mut docker_manifest = Vec::new();
        let mut repositories = Vec::new();
        for (image, names) in &images {
            let mut blobs = catalog.image_blobs(image.id)?;
            blobs.sort_by_key(|b| {
                (
                    match b.role.as_str() {
                        "manifest" => 0,
                        "config" => 1,
                        _ => 2,
                    },
                    b.position,
                )
            });
            let mut config_path = String::new();
            let mut layer_paths = Vec::new();
            let mut manifest_size = 0;
            for blob in &blobs {
                catalog.lease_blob(guard.lease(), &blob.digest)?;
                let path = blob_entry(&blob.digest);
                match blob.role.as_str() {
                    "manifest" => manifest_size = blob.size,
                    "config" => config_path = path.clone(),
                    _ => layer_paths.push(path.clone()),
                }
                if !written.insert(blob.digest.clone()) {
                    continue;
                }
                let file = self.store.content().open_blob(&blob.digest)?;
                let actual = file.metadata().map_err(StoreError::from)?.len();
                if actual != blob.size {
                    return Err(StoreError::SizeMismatch {
                        digest: blob.digest.clone(),
                        expected: blob.size,
                        actual,
                    }
                    .into());
                }
                progress.event(Event::ArchiveEntry {
                    name: path.clone(),
                    size: blob.size,
                });
                // Every byte is hashed on its way out: a blob damaged on
                // disk since it was stored fails the save instead of
                // reaching the archive.
                let mut verified = Verified::new(file, &blob.digest);
                let copied = writer.add_reader(&path, blob.size, &mut verified);
                if let Some(actual) = verified.mismatch {
                    return Err(Error::CorruptBlob {
                        digest: blob.digest.clone(),
                        actual,
                    });
                }
                copied.map_err(write_error)?;
                report.blobs += 1;
                report.bytes += blob.size;
            }
            let references: Vec<Reference> = names.iter().filter_map(|n| n.parse().ok()).collect();
            let platform = image.platform.as_deref().and_then(|p| p.parse().ok());
            let descriptor = |name: Option<&str>| {
                let mut annotations = BTreeMap::new();
                if let Some(name) = name {
                    annotations.insert(format::REF_NAME.to_string(), name.to_string());
                    if format == ArchiveFormat::Docker {
                        annotations.insert(format::CONTAINERD_NAME.to_string(), name.to_string());
                    }
                }
                Descriptor {
                    media_type: image.media_type.clone(),
                    digest: image.manifest_digest.clone(),
                    size: manifest_size,
                    platform: platform.clone(),
                    urls: Vec::new(),
                    annotations,
                    artifact_type: None,
                }
            };
            if names.is_empty() {
                index.push(descriptor(None));
            }
            for name in names {
                index.push(descriptor(Some(name)));
            }
            let repo_tags: Vec<Reference> = references
                .into_iter()
                .filter(|r| r.tag().is_some() && r.digest().is_none())
                .collect();
            let id = image
                .config_digest
                .as_ref()
                .map(|d| d.hex().to_string())
                .unwrap_or_default();
            repositories.extend(repo_tags.iter().map(|r| (r.clone(), id.clone())));
            docker_manifest.push(DockerManifestEntry {
                config: config_path,
                repo_tags: Some(repo_tags.iter().map(|r| r.to_string()).collect()),
                layers: layer_paths,
            });
            report.images.push(SavedImage {
                names: names.clone(),
                manifest_digest: image.manifest_digest.clone(),
            });
        }
        let index = ImageIndex {
            schema_version: 2,
            media_type: Some(media_type::OCI_INDEX.into()),
            manifests: index,
            annotations: BTreeMap::new(),
        };
        writer
            .add_bytes("index.json", &json(&index))
            .map_err(write_error)?;
        if format == ArchiveFormat::Docker {
            writer
                .add_bytes("manifest.json", &json(&docker_manifest))
                .map_err(write_error)?;
            writer
                .add_bytes("repositories", &format::repositories_json(&repositories))
                .map_err(write_error)?;
        }
        let mut output = writer.finish().map_err(write_error)?;
        output.flush().map_err(write_error)?;
        drop(guard);
        Ok(report)
    }
}

/// A blob's bytes, hashed as they are read: at its end, when they do not
/// hash to `digest`, the read fails and `mismatch` holds what they hash to.
struct Verified<'d, R> {
    inner: R,
    digest: &'d Digest,
    hasher: Option<Hasher>,
    mismatch: Option<Digest>,
}

impl<'d, R: Read> Verified<'d, R> {
    fn new(inner: R, digest: &'d Digest) -> Self {
        Verified {
            inner,
            digest,
            hasher: Some(Hasher::new(digest.algorithm())),
            mismatch: None,
        }
    }
}

impl<R: Read> Read for Verified<'_, R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buffer)?;
        if n > 0 {
            if let Some(hasher) = &mut self.hasher {
                hasher.update(&buffer[..n]);
            }
        } else if let Some(hasher) = self.hasher.take() {
            let actual = hasher.finish();
            if actual != *self.digest {
                self.mismatch = Some(actual);
            }
        }
        if self.mismatch.is_some() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("blob {} is corrupt", self.digest),
            ));
        }
        Ok(n)
    }
}

/// JSON bytes of a document kiln writes (these types always serialize).
fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_layer_compression_from_the_first_bytes() {
        assert_eq!(detect(&[0x1f, 0x8b, 8, 0]), Some(Compression::Gzip));
        assert_eq!(
            detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Some(Compression::Zstd)
        );
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(detect(&tar), Some(Compression::None));
        assert_eq!(detect(b"{\"schemaVersion\":2}"), None);
    }

    #[test]
    fn names_and_notes() {
        let (names, note) = names_of([
            format::parse_name("busybox:1"),
            format::parse_name("busybox:1"),
            format::parse_name("1.0"),
        ]);
        assert_eq!(names.len(), 1);
        assert!(note.unwrap().contains("\"1.0\""));
    }
}
