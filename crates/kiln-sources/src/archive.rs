//! Image archives, read and written without a store: `docker save` archives
//! (`manifest.json`, `repositories`, layer tars) and OCI image layouts in a
//! tar (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`), plain or gzip/zstd
//! compressed.
//!
//! Reading streams the tar once. Entries under `blobs/` and every other
//! regular file (docker's layer tars) go to an [`EntrySink`] (the facade
//! writes them into the store while hashing them); small JSON metadata
//! (`manifest.json`, `index.json`, configs named `*.json`, …) is kept in
//! memory under [`MAX_METADATA_ENTRY`] each and [`MAX_METADATA_TOTAL`] in all.
//! Paths are checked before anything else: absolute paths, `..`, links
//! leaving the archive and device files are refused. Links are never
//! followed on disk (nothing is extracted); they only alias another entry
//! of the archive, as the legacy `<id>/layer.tar` links skopeo writes do.
//!
//! Writing ([`ArchiveWriter`]) produces deterministic tar entries (owner 0,
//! mtime 0, mode 0644).
//!
//! ```no_run
//! use kiln_sources::archive::{read_archive, EntrySink, ArchiveError};
//! use kiln_types::Digest;
//!
//! struct Count(u64);
//! impl EntrySink for Count {
//!     type Error = ArchiveError;
//!     fn blob(&mut self, _: &str, _: &Digest, size: u64, _: &mut dyn std::io::Read) -> Result<(), ArchiveError> { self.0 += size; Ok(()) }
//!     fn file(&mut self, _: &str, size: u64, _: &mut dyn std::io::Read) -> Result<(), ArchiveError> { self.0 += size; Ok(()) }
//! }
//! let contents = read_archive(std::fs::File::open("image.tar").unwrap(), &mut Count(0)).unwrap();
//! println!("{:?}", contents.layout().unwrap());
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};

use kiln_types::manifest::{ImageIndex, Manifest};
use kiln_types::{Digest, ErrorKind, Reference, media_type};
use serde::{Deserialize, Serialize};

/// Largest metadata file (`manifest.json`, `index.json`, a config) read.
pub const MAX_METADATA_ENTRY: u64 = 4 << 20;
/// Largest sum of the metadata files of one archive.
pub const MAX_METADATA_TOTAL: u64 = 16 << 20;
/// The annotation naming an image in an OCI layout.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation docker 25+ and containerd write with the full image name.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
const MAX_LINK_HOPS: usize = 16;
/// Most entries one archive may have.
pub const MAX_ENTRIES: usize = 100_000;
/// Largest long-name or PAX extension header kiln reads.
pub const MAX_EXTENSION_HEADER: u64 = 64 << 10;

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Nothing to read.
    #[error("the input is empty, not a tar archive")]
    Empty,
    /// The tar headers do not parse.
    #[error("not a tar archive ({detail})")]
    NotTar { detail: String },
    /// Reading an entry failed (truncated or corrupt archive).
    #[error("cannot read entry {entry}: {detail}")]
    Read { entry: String, detail: String },
    /// An entry path or link target that could escape the archive.
    #[error("entry {entry:?} has an unsafe path: {reason}")]
    UnsafePath { entry: String, reason: String },
    /// A device, fifo or other special file.
    #[error("entry {entry} is a {kind}: an image archive holds only files, directories and links")]
    Special { entry: String, kind: String },
    /// A metadata file over the size cap.
    #[error("entry {entry} is larger than the {limit}-byte limit for metadata files")]
    MetadataTooLarge { entry: String, limit: u64 },
    /// All metadata files together over the cap.
    #[error("the archive's metadata files add up to more than {limit} bytes")]
    MetadataTotal { limit: u64 },
    /// The same path twice with different bytes.
    #[error("entry {entry} appears twice with different content")]
    Duplicate { entry: String },
    /// A blob whose bytes do not hash to the digest its path names.
    #[error("entry {entry} does not match its digest (expected {expected}, got {actual})")]
    DigestMismatch {
        entry: String,
        expected: Digest,
        actual: Digest,
    },
    /// A blob of another size than its descriptor says.
    #[error("entry {entry} is {actual} bytes but {referrer} says {expected}")]
    SizeMismatch {
        entry: String,
        referrer: String,
        expected: u64,
        actual: u64,
    },
    /// A referenced blob or file the archive does not hold.
    #[error("{referrer} refers to {entry}, which is not in the archive")]
    Missing { entry: String, referrer: String },
    /// A document that does not parse or breaks the format's rules.
    #[error("{entry} is malformed: {detail}")]
    Malformed { entry: String, detail: String },
    /// Neither an OCI layout nor a docker archive.
    #[error(
        "not an image archive: it has neither index.json (OCI image layout) nor manifest.json (docker save)"
    )]
    NotImage,
    /// The archive lists no image.
    #[error("{entry} lists no image")]
    NoImages { entry: String },
}

impl ArchiveError {
    /// The category of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ArchiveError::DigestMismatch { .. }
            | ArchiveError::SizeMismatch { .. }
            | ArchiveError::Missing { .. }
            | ArchiveError::Read { .. } => ErrorKind::DataLoss,
            _ => ErrorKind::InvalidArgument,
        }
    }
}

/// Where a (safe, normalized) entry path goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// `blobs/<alg>/<hex>`: content named by its digest.
    Blob(Digest),
    /// Small JSON or text metadata, kept in memory.
    Metadata,
    /// Any other file (a docker layer tar): streamed, named by its path.
    File,
}

/// Normalizes a tar entry path: `./a//b` → `a/b`. Refuses absolute paths,
/// `..`, control characters (a name must print as one line) and names that
/// are not UTF-8. `None` for the archive root itself.
pub fn normalize_path(raw: &[u8]) -> Result<Option<String>, ArchiveError> {
    let text = std::str::from_utf8(raw).map_err(|_| ArchiveError::UnsafePath {
        entry: String::from_utf8_lossy(raw).into_owned(),
        reason: "not UTF-8".into(),
    })?;
    if text.starts_with('/') {
        return Err(ArchiveError::UnsafePath {
            entry: text.into(),
            reason: "absolute path".into(),
        });
    }
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(ArchiveError::UnsafePath {
                    entry: text.into(),
                    reason: "'..' component".into(),
                });
            }
            part if part.chars().any(char::is_control) => {
                return Err(ArchiveError::UnsafePath {
                    entry: printable(text),
                    reason: "control character in the name".into(),
                });
            }
            part => parts.push(part),
        }
    }
    Ok(if parts.is_empty() {
        None
    } else {
        Some(parts.join("/"))
    })
}

/// Resolves a symbolic link `target` found at `entry`, lexically, inside
/// the archive; refuses targets that leave it.
fn resolve_link(entry: &str, target: &str) -> Result<String, ArchiveError> {
    if target.starts_with('/') {
        return Err(ArchiveError::UnsafePath {
            entry: entry.into(),
            reason: format!("link to the absolute path {target:?}"),
        });
    }
    let mut parts: Vec<&str> = entry.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(ArchiveError::UnsafePath {
                        entry: entry.into(),
                        reason: format!("link to {target:?}, outside the archive"),
                    });
                }
            }
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err(ArchiveError::UnsafePath {
            entry: entry.into(),
            reason: format!("link to {target:?}, the archive root"),
        });
    }
    Ok(parts.join("/"))
}

/// Classifies a normalized path.
pub fn classify(path: &str) -> EntryKind {
    if let Some(rest) = path.strip_prefix("blobs/")
        && let Some((algorithm, hex)) = rest.split_once('/')
        && let Ok(digest) = format!("{algorithm}:{hex}").parse::<Digest>()
    {
        return EntryKind::Blob(digest);
    }
    let name = path.rsplit('/').next().unwrap_or(path);
    if matches!(name, "oci-layout" | "repositories" | "json" | "VERSION") || name.ends_with(".json")
    {
        EntryKind::Metadata
    } else {
        EntryKind::File
    }
}

/// Receives the streamed entries of an archive.
pub trait EntrySink {
    /// The sink's error; archive problems convert into it.
    type Error: From<ArchiveError>;
    /// A `blobs/<alg>/<hex>` entry: `data` yields `size` bytes that must hash to `digest`.
    fn blob(
        &mut self,
        path: &str,
        digest: &Digest,
        size: u64,
        data: &mut dyn Read,
    ) -> Result<(), Self::Error>;
    /// Any other regular file that is not metadata.
    fn file(&mut self, path: &str, size: u64, data: &mut dyn Read) -> Result<(), Self::Error>;
}

/// What an archive held besides the streamed entries.
#[derive(Debug, Default)]
pub struct Contents {
    /// Metadata files by path.
    pub metadata: BTreeMap<String, Vec<u8>>,
    /// Links (symbolic or hard) by path, to the path they alias.
    pub links: BTreeMap<String, String>,
    /// Every regular file path (streamed or metadata).
    pub files: BTreeSet<String>,
}

/// The two archive layouts.
#[derive(Debug)]
pub enum Layout {
    /// An OCI image layout: its `index.json`.
    Oci(ImageIndex),
    /// A docker archive: its `manifest.json`.
    Docker(Vec<DockerManifestEntry>),
}

/// One image of a docker archive's `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DockerManifestEntry {
    /// Path of the config file in the archive.
    pub config: String,
    /// Names (`repo:tag`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_tags: Option<Vec<String>>,
    /// Paths of the layer files, base first.
    pub layers: Vec<String>,
}

#[derive(Deserialize)]
struct OciLayout {
    #[serde(rename = "imageLayoutVersion")]
    image_layout_version: String,
}

impl Contents {
    /// The path `path` names after following links.
    pub fn resolve(&self, path: &str) -> Result<String, ArchiveError> {
        let mut current =
            normalize_path(path.as_bytes())?.ok_or_else(|| ArchiveError::UnsafePath {
                entry: path.into(),
                reason: "empty path".into(),
            })?;
        for _ in 0..MAX_LINK_HOPS {
            match self.links.get(&current) {
                Some(target) => current = target.clone(),
                None => return Ok(current),
            }
        }
        Err(ArchiveError::UnsafePath {
            entry: path.into(),
            reason: "too many levels of links".into(),
        })
    }

    /// Which layout the archive has: `index.json` wins when both are there
    /// (docker 25+ writes both).
    pub fn layout(&self) -> Result<Layout, ArchiveError> {
        if let Some(bytes) = self.metadata.get("index.json") {
            let layout =
                self.metadata
                    .get("oci-layout")
                    .ok_or_else(|| ArchiveError::Malformed {
                        entry: "index.json".into(),
                        detail: "the archive has no oci-layout file next to it".into(),
                    })?;
            let layout: OciLayout =
                serde_json::from_slice(layout).map_err(|e| ArchiveError::Malformed {
                    entry: "oci-layout".into(),
                    detail: e.to_string(),
                })?;
            if !layout.image_layout_version.starts_with("1.") {
                return Err(ArchiveError::Malformed {
                    entry: "oci-layout".into(),
                    detail: format!(
                        "imageLayoutVersion {:?} (kiln reads 1.x)",
                        layout.image_layout_version
                    ),
                });
            }
            return Ok(Layout::Oci(parse_index("index.json", bytes)?));
        }
        if let Some(bytes) = self.metadata.get("manifest.json") {
            let entries: Vec<DockerManifestEntry> =
                serde_json::from_slice(bytes).map_err(|e| ArchiveError::Malformed {
                    entry: "manifest.json".into(),
                    detail: e.to_string(),
                })?;
            if entries.is_empty() {
                return Err(ArchiveError::NoImages {
                    entry: "manifest.json".into(),
                });
            }
            return Ok(Layout::Docker(entries));
        }
        Err(ArchiveError::NotImage)
    }
}

/// Parses an image index document (`index.json` or a nested index blob).
pub fn parse_index(entry: &str, bytes: &[u8]) -> Result<ImageIndex, ArchiveError> {
    match Manifest::parse(bytes, media_type::OCI_INDEX) {
        Ok((Manifest::Index(index), _)) => Ok(index),
        Ok((Manifest::Image(_), _)) => Err(ArchiveError::Malformed {
            entry: entry.into(),
            detail: "an image manifest where an index was expected".into(),
        }),
        Err(e) => Err(ArchiveError::Malformed {
            entry: entry.into(),
            detail: e.to_string(),
        }),
    }
}

/// What an annotation or `RepoTags` entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageName {
    /// A reference (docker's normalization applied).
    Reference(Reference),
    /// A bare tag (`1.0`, `latest`): no repository to put it in.
    TagOnly(String),
    /// Not usable as a name.
    Invalid(String),
}

/// Reads an image name from an archive. `busybox:1` and `alpine` get
/// docker's defaults (`docker.io/library/…`); a word that starts with a
/// digit, or `latest`, is a bare tag (the OCI convention for ref.name).
pub fn parse_name(text: &str) -> ImageName {
    let text = text.trim();
    let bare = !text.contains('/') && !text.contains(':') && !text.contains('@');
    if bare && (text == "latest" || text.starts_with(|c: char| c.is_ascii_digit())) {
        return ImageName::TagOnly(text.into());
    }
    match text.parse::<Reference>() {
        Ok(reference) => ImageName::Reference(reference),
        Err(_) => ImageName::Invalid(text.into()),
    }
}

/// The name an OCI index entry gives its image: `io.containerd.image.name`
/// (a full name), else `org.opencontainers.image.ref.name`.
pub fn descriptor_name(annotations: &BTreeMap<String, String>) -> Option<ImageName> {
    if let Some(full) = annotations.get(CONTAINERD_NAME)
        && let ImageName::Reference(reference) = parse_name(full)
    {
        return Some(ImageName::Reference(reference));
    }
    annotations.get(REF_NAME).map(|name| parse_name(name))
}

/// Wraps `input`, decompressing it when it starts with the gzip or zstd
/// magic (`docker save | gzip`). Fails on empty input.
pub fn decompressed<'a>(input: impl Read + 'a) -> Result<Box<dyn Read + 'a>, ArchiveError> {
    let mut reader = BufReader::with_capacity(1 << 20, input);
    let head = reader.fill_buf().map_err(|e| ArchiveError::NotTar {
        detail: e.to_string(),
    })?;
    if head.is_empty() {
        return Err(ArchiveError::Empty);
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::read::MultiGzDecoder::new(reader),
        )));
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let decoder =
            zstd::stream::read::Decoder::with_buffer(reader).map_err(|e| ArchiveError::NotTar {
                detail: format!("zstd: {e}"),
            })?;
        return Ok(Box::new(decoder));
    }
    Ok(Box::new(reader))
}

/// `text` on one line, without control or non-ASCII characters (the tar
/// crate quotes raw header bytes in its errors), at most 120 characters.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(120)
        .collect()
}

/// Reads an archive once: streams blobs and files into `sink`, keeps
/// metadata, checks every path.
pub fn read_archive<S: EntrySink>(input: impl Read, sink: &mut S) -> Result<Contents, S::Error> {
    let input = decompressed(input)?;
    let mut archive = tar::Archive::new(input);
    // Raw entries: long names and PAX headers are read here, bounded, not
    // by the tar crate (which would read any size into memory).
    let entries = archive
        .entries()
        .map_err(|e| ArchiveError::NotTar {
            detail: e.to_string(),
        })?
        .raw(true);
    let mut contents = Contents::default();
    let mut metadata_total = 0u64;
    let mut last: Option<String> = None;
    let mut count = 0usize;
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    for entry in entries {
        let mut entry = entry.map_err(|e| match &last {
            None => ArchiveError::NotTar {
                detail: format!(
                    "its first 512 bytes are not a tar header ({})",
                    printable(&e.to_string())
                ),
            },
            Some(previous) => ArchiveError::Read {
                entry: format!("after {previous}"),
                detail: format!("corrupt or truncated tar: {}", printable(&e.to_string())),
            },
        })?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(ArchiveError::Malformed {
                entry: "the archive".into(),
                detail: format!("it has more than {MAX_ENTRIES} entries"),
            }
            .into());
        }
        use tar::EntryType;
        let entry_type = entry.header().entry_type();
        if matches!(
            entry_type,
            EntryType::GNULongName
                | EntryType::GNULongLink
                | EntryType::XHeader
                | EntryType::XGlobalHeader
        ) {
            let after = last.clone().unwrap_or_else(|| "the start".into());
            if entry.size() > MAX_EXTENSION_HEADER {
                return Err(ArchiveError::Malformed {
                    entry: format!("an extension header after {after}"),
                    detail: format!("{} bytes (more than {MAX_EXTENSION_HEADER})", entry.size()),
                }
                .into());
            }
            let mut bytes = Vec::new();
            (&mut entry)
                .take(MAX_EXTENSION_HEADER)
                .read_to_end(&mut bytes)
                .map_err(|e| ArchiveError::Read {
                    entry: format!("an extension header after {after}"),
                    detail: e.to_string(),
                })?;
            let trimmed = |mut b: Vec<u8>| {
                while b.last() == Some(&0) {
                    b.pop();
                }
                b
            };
            match entry_type {
                EntryType::GNULongName => long_name = Some(trimmed(bytes)),
                EntryType::GNULongLink => long_link = Some(trimmed(bytes)),
                EntryType::XHeader => {
                    for record in tar::PaxExtensions::new(&bytes).flatten() {
                        match record.key_bytes() {
                            b"path" => long_name = Some(record.value_bytes().to_vec()),
                            b"linkpath" => long_link = Some(record.value_bytes().to_vec()),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
            continue;
        }
        let raw = long_name
            .take()
            .unwrap_or_else(|| entry.path_bytes().into_owned());
        let link = long_link.take();
        let Some(path) = normalize_path(&raw)? else {
            continue;
        };
        last = Some(path.clone());
        match entry_type {
            EntryType::Directory => continue,
            EntryType::Symlink | EntryType::Link => {
                if contents.links.contains_key(&path) || contents.files.contains(&path) {
                    return Err(ArchiveError::Duplicate { entry: path }.into());
                }
                if matches!(classify(&path), EntryKind::Blob(_)) {
                    return Err(ArchiveError::UnsafePath {
                        entry: path,
                        reason: "a link where a blob must be (blobs are named by their digest)"
                            .into(),
                    }
                    .into());
                }
                let target = link
                    .or_else(|| entry.link_name_bytes().map(|t| t.into_owned()))
                    .unwrap_or_default();
                let target =
                    std::str::from_utf8(&target).map_err(|_| ArchiveError::UnsafePath {
                        entry: path.clone(),
                        reason: "link target is not UTF-8".into(),
                    })?;
                let resolved = if entry_type == EntryType::Symlink {
                    resolve_link(&path, target)?
                } else {
                    normalize_path(target.as_bytes())?.ok_or_else(|| ArchiveError::UnsafePath {
                        entry: path.clone(),
                        reason: "hard link to the archive root".into(),
                    })?
                };
                contents.links.insert(path, resolved);
                continue;
            }
            EntryType::Regular | EntryType::Continuous => {}
            other => {
                let kind = match other {
                    EntryType::Char => "character device".to_string(),
                    EntryType::Block => "block device".to_string(),
                    EntryType::Fifo => "fifo".to_string(),
                    EntryType::GNUSparse => "sparse file".to_string(),
                    other => format!("entry of type {:?}", other.as_byte() as char),
                };
                return Err(ArchiveError::Special { entry: path, kind }.into());
            }
        }
        if contents.links.contains_key(&path) {
            return Err(ArchiveError::Duplicate { entry: path }.into());
        }
        let size = entry.size();
        let mut data: &mut dyn Read = &mut entry;
        match classify(&path) {
            EntryKind::Blob(digest) => sink.blob(&path, &digest, size, &mut data)?,
            EntryKind::File => sink.file(&path, size, &mut data)?,
            EntryKind::Metadata => {
                if size > MAX_METADATA_ENTRY {
                    return Err(ArchiveError::MetadataTooLarge {
                        entry: path,
                        limit: MAX_METADATA_ENTRY,
                    }
                    .into());
                }
                metadata_total += size;
                if metadata_total > MAX_METADATA_TOTAL {
                    return Err(ArchiveError::MetadataTotal {
                        limit: MAX_METADATA_TOTAL,
                    }
                    .into());
                }
                let mut bytes = Vec::with_capacity(size as usize);
                data.take(MAX_METADATA_ENTRY)
                    .read_to_end(&mut bytes)
                    .map_err(|e| ArchiveError::Read {
                        entry: path.clone(),
                        detail: e.to_string(),
                    })?;
                if bytes.len() as u64 != size {
                    return Err(ArchiveError::Read {
                        entry: path,
                        detail: format!("truncated: {} of {size} bytes", bytes.len()),
                    }
                    .into());
                }
                if let Some(previous) = contents.metadata.get(&path)
                    && *previous != bytes
                {
                    return Err(ArchiveError::Duplicate { entry: path }.into());
                }
                contents.metadata.insert(path.clone(), bytes);
            }
        }
        contents.files.insert(path);
    }
    if last.is_none() {
        // A valid but empty tar (only its end-of-archive blocks).
        return Err(ArchiveError::NotImage.into());
    }
    Ok(contents)
}

/// Writes a tar archive entry by entry: owner 0, mtime 0, mode 0644
/// (directories 0755), so the same input gives the same bytes.
pub struct ArchiveWriter<W: Write> {
    builder: tar::Builder<W>,
    directories: BTreeSet<String>,
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// Counts the bytes read through it.
struct Counted<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buffer)?;
        self.count += n as u64;
        Ok(n)
    }
}

impl<W: Write> ArchiveWriter<W> {
    /// A writer into `output`.
    pub fn new(output: W) -> ArchiveWriter<W> {
        ArchiveWriter {
            builder: tar::Builder::new(output),
            directories: BTreeSet::new(),
        }
    }

    fn parents(&mut self, path: &str) -> std::io::Result<()> {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            prefix.push_str(part);
            prefix.push('/');
            if self.directories.insert(prefix.clone()) {
                let mut header = header(tar::EntryType::Directory, 0, 0o755);
                self.builder
                    .append_data(&mut header, &prefix, std::io::empty())?;
            }
        }
        Ok(())
    }

    /// Adds a file held in memory.
    pub fn add_bytes(&mut self, path: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.add_reader(path, bytes.len() as u64, bytes)
    }

    /// Adds a file of exactly `size` bytes read from `data`; fails when
    /// `data` yields another number of bytes.
    pub fn add_reader(&mut self, path: &str, size: u64, data: impl Read) -> std::io::Result<()> {
        self.parents(path)?;
        let mut header = header(tar::EntryType::Regular, size, 0o644);
        let mut counted = Counted {
            inner: data.take(size.saturating_add(1)),
            count: 0,
        };
        self.builder.append_data(&mut header, path, &mut counted)?;
        if counted.count != size {
            return Err(std::io::Error::other(format!(
                "{path}: {} bytes read, {size} expected",
                counted.count
            )));
        }
        Ok(())
    }

    /// Writes the end-of-archive marker and returns the output.
    pub fn finish(self) -> std::io::Result<W> {
        self.builder.into_inner()
    }
}

/// The `repositories` file of a docker archive: `{repo: {tag: id}}`.
pub fn repositories_json(names: &[(Reference, String)]) -> Vec<u8> {
    let mut map: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (reference, id) in names {
        if let Some(tag) = reference.tag() {
            map.entry(reference.name())
                .or_default()
                .insert(tag.to_string(), id.clone());
        }
    }
    serde_json::to_vec(&map).unwrap_or_else(|_| b"{}".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_and_refuses_unsafe_paths() {
        let ok = |p: &str| normalize_path(p.as_bytes()).unwrap();
        assert_eq!(ok("./blobs//sha256/ab"), Some("blobs/sha256/ab".into()));
        assert_eq!(ok("manifest.json"), Some("manifest.json".into()));
        assert_eq!(ok("./"), None);
        for bad in ["../evil", "/etc/passwd", "a/../../b", "blobs/../x"] {
            let error = normalize_path(bad.as_bytes()).unwrap_err();
            assert!(
                matches!(error, ArchiveError::UnsafePath { .. }),
                "{bad}: {error}"
            );
        }
        assert!(normalize_path(b"\xff\xfe").is_err());
    }

    #[test]
    fn resolves_links_inside_the_archive_only() {
        assert_eq!(
            resolve_link("abc/layer.tar", "../123.tar").unwrap(),
            "123.tar"
        );
        assert_eq!(resolve_link("abc/layer.tar", "x.tar").unwrap(), "abc/x.tar");
        assert!(resolve_link("abc/layer.tar", "../../etc/passwd").is_err());
        assert!(resolve_link("layer.tar", "/etc/passwd").is_err());
    }

    #[test]
    fn classifies_entries() {
        let hex = "a".repeat(64);
        assert_eq!(
            classify(&format!("blobs/sha256/{hex}")),
            EntryKind::Blob(format!("sha256:{hex}").parse().unwrap())
        );
        assert_eq!(classify("blobs/sha256/nothex"), EntryKind::File);
        for name in [
            "manifest.json",
            "index.json",
            "oci-layout",
            "repositories",
            "abc/json",
            "abc/VERSION",
            "c506.json",
        ] {
            assert_eq!(classify(name), EntryKind::Metadata, "{name}");
        }
        assert_eq!(classify("abc/layer.tar"), EntryKind::File);
    }

    #[test]
    fn names_from_archives() {
        let reference = |s: &str| ImageName::Reference(s.parse().unwrap());
        assert_eq!(
            parse_name("busybox:1"),
            reference("docker.io/library/busybox:1")
        );
        assert_eq!(
            parse_name("alpine"),
            reference("docker.io/library/alpine:latest")
        );
        assert_eq!(
            parse_name("127.0.0.1:5000/x/y:2"),
            reference("127.0.0.1:5000/x/y:2")
        );
        assert_eq!(parse_name("1.0"), ImageName::TagOnly("1.0".into()));
        assert_eq!(parse_name("latest"), ImageName::TagOnly("latest".into()));
        assert!(matches!(parse_name("Bad Name"), ImageName::Invalid(_)));
        let mut annotations = BTreeMap::new();
        annotations.insert(REF_NAME.to_string(), "1".to_string());
        assert_eq!(
            descriptor_name(&annotations),
            Some(ImageName::TagOnly("1".into()))
        );
        annotations.insert(
            CONTAINERD_NAME.to_string(),
            "docker.io/library/busybox:1".to_string(),
        );
        assert_eq!(
            descriptor_name(&annotations),
            Some(reference("docker.io/library/busybox:1"))
        );
    }

    struct Collect(Vec<(String, Vec<u8>)>);

    impl EntrySink for Collect {
        type Error = ArchiveError;
        fn blob(
            &mut self,
            path: &str,
            _: &Digest,
            _: u64,
            data: &mut dyn Read,
        ) -> Result<(), ArchiveError> {
            self.file(path, 0, data)
        }
        fn file(&mut self, path: &str, _: u64, data: &mut dyn Read) -> Result<(), ArchiveError> {
            let mut bytes = Vec::new();
            data.read_to_end(&mut bytes).unwrap();
            self.0.push((path.into(), bytes));
            Ok(())
        }
    }

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut writer = ArchiveWriter::new(Vec::new());
        for (path, bytes) in entries {
            writer.add_bytes(path, bytes).unwrap();
        }
        writer.finish().unwrap()
    }

    #[test]
    fn reads_what_it_writes_plain_and_gzipped() {
        let hex = Digest::sha256_of(b"layer").hex().to_string();
        let blob = format!("blobs/sha256/{hex}");
        let tar = tar_of(&[
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
            (&blob, b"layer"),
            ("index.json", br#"{"schemaVersion":2,"manifests":[]}"#),
        ]);
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(&tar).unwrap();
        for input in [tar.clone(), gzip.finish().unwrap()] {
            let mut sink = Collect(Vec::new());
            let contents = read_archive(&input[..], &mut sink).unwrap();
            assert_eq!(sink.0, vec![(blob.clone(), b"layer".to_vec())]);
            assert!(
                matches!(contents.layout().unwrap(), Layout::Oci(index) if index.manifests.is_empty())
            );
        }
    }

    #[test]
    fn refuses_bad_archives() {
        let mut sink = Collect(Vec::new());
        assert!(matches!(
            read_archive(&b""[..], &mut sink),
            Err(ArchiveError::Empty)
        ));
        let random: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8 + 1).collect();
        assert!(matches!(
            read_archive(&random[..], &mut sink),
            Err(ArchiveError::NotTar { .. })
        ));
        let big = vec![b' '; MAX_METADATA_ENTRY as usize + 1];
        assert!(matches!(
            read_archive(&tar_of(&[("manifest.json", &big)])[..], &mut sink),
            Err(ArchiveError::MetadataTooLarge { .. })
        ));
        let twice = tar_of(&[("manifest.json", b"[]"), ("manifest.json", b"[1]")]);
        assert!(matches!(
            read_archive(&twice[..], &mut sink),
            Err(ArchiveError::Duplicate { .. })
        ));
        let none = tar_of(&[("hello.txt", b"hi")]);
        assert!(matches!(
            read_archive(&none[..], &mut sink).unwrap().layout(),
            Err(ArchiveError::NotImage)
        ));
        let empty_manifest = tar_of(&[("manifest.json", b"[]")]);
        assert!(matches!(
            read_archive(&empty_manifest[..], &mut sink)
                .unwrap()
                .layout(),
            Err(ArchiveError::NoImages { .. })
        ));
    }

    #[test]
    fn refuses_traversal_written_raw() {
        // The tar crate's writer refuses `..`, so write the header by hand.
        let mut header = tar::Header::new_gnu();
        header.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../evil\0\0");
        header.set_size(2);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        let mut bytes = header.as_bytes().to_vec();
        bytes.extend_from_slice(b"hi");
        bytes.resize(1024 + 2048, 0);
        let mut sink = Collect(Vec::new());
        let error = read_archive(&bytes[..], &mut sink).unwrap_err();
        assert!(error.to_string().contains("unsafe path"), "{error}");
    }
}
