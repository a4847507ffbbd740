//! Applying an image layer (an uncompressed tar) to a [`Tree`], as the OCI
//! image spec describes: entries add or replace paths, `.wh.NAME` removes
//! NAME from lower layers, `.wh..wh..opq` hides everything lower layers put
//! in its directory.
//!
//! Hostile input never escapes: the tree is in memory, so nothing is ever
//! written through a symlink. `..` components, paths through a symlink or a
//! non-directory, hardlinks to missing entries or to directories, whiteouts
//! of the root, and truncated entries are refused with an error naming the
//! layer and the entry. Leading `/` and `./` are stripped, as docker does.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Result, RootfsError};
use crate::objects::{ContentRef, ObjectDir};
use crate::tree::{DirEntry, Inode, InodeId, Kind, ROOT, Tree};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
const XATTR_PREFIX: &str = "SCHILY.xattr.";

/// The uncompressed tar stream of a layer blob.
pub fn layer_reader<'a>(
    blob: impl Read + 'a,
    compression: kiln_types::media_type::Compression,
) -> std::io::Result<Box<dyn Read + 'a>> {
    use kiln_types::media_type::Compression;
    let buffered = std::io::BufReader::with_capacity(1 << 20, blob);
    Ok(match compression {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
    })
}

/// The uncompressed tar stream of a layer blob, decompressed ahead on its
/// own thread (at most 8 MiB ahead) through a [`layer_pipe`], so inflating
/// a layer overlaps applying it. Dropping the reader stops the thread.
pub fn layer_reader_ahead(
    blob: impl Read + Send + 'static,
    compression: kiln_types::media_type::Compression,
) -> ReadAhead {
    let (mut pipe, reader) = layer_pipe();
    std::thread::spawn(move || {
        let copied =
            layer_reader(blob, compression).and_then(|mut layer| pipe.copy_from(&mut layer));
        if let Err(error) = copied {
            pipe.fail(error);
        }
    });
    reader
}

/// A pipe for a layer's uncompressed bytes produced elsewhere (a download's
/// decompression): what is written to the [`LayerPipe`] is read, in order,
/// from the [`ReadAhead`], at most 8 MiB behind. Dropping the writer ends
/// the stream (an empty chunk marks the end: a writer that died, or
/// failed, never reads as a short layer); once the reader is gone, writes
/// fail.
pub fn layer_pipe() -> (LayerPipe, ReadAhead) {
    let (sender, receiver) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(8);
    (
        LayerPipe {
            sender,
            chunk: Vec::with_capacity(PIPE_CHUNK),
            filled: 0,
            failed: false,
        },
        ReadAhead {
            receiver,
            chunk: Vec::new(),
            position: 0,
            ended: false,
        },
    )
}

const PIPE_CHUNK: usize = 1 << 20;

/// The writing end of [`layer_pipe`].
pub struct LayerPipe {
    sender: std::sync::mpsc::SyncSender<std::io::Result<Vec<u8>>>,
    /// The chunk being filled: its first `filled` bytes (zeros may follow,
    /// read into by `copy_from`).
    chunk: Vec<u8>,
    filled: usize,
    /// Ended with an error: no end marker follows.
    failed: bool,
}

impl LayerPipe {
    fn send(&mut self) -> std::io::Result<()> {
        let mut full = std::mem::replace(&mut self.chunk, Vec::with_capacity(PIPE_CHUNK));
        full.truncate(std::mem::take(&mut self.filled));
        self.sender
            .send(Ok(full))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the reader is gone"))
    }

    /// Copies all of `reader` into the pipe, reading straight into its chunks.
    fn copy_from(&mut self, reader: &mut dyn Read) -> std::io::Result<()> {
        loop {
            self.chunk.resize(PIPE_CHUNK, 0);
            match reader.read(&mut self.chunk[self.filled..]) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    self.filled += n;
                    if self.filled == PIPE_CHUNK {
                        self.send()?;
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// Ends the stream with `error`: what was written before it is read first.
    fn fail(mut self, error: std::io::Error) {
        if self.filled > 0 && self.send().is_err() {
            return;
        }
        self.failed = true;
        let _ = self.sender.send(Err(error));
    }
}

impl std::io::Write for LayerPipe {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = bytes.len().min(PIPE_CHUNK - self.filled);
        self.chunk.truncate(self.filled);
        self.chunk.extend_from_slice(&bytes[..n]);
        self.filled += n;
        if self.filled == PIPE_CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LayerPipe {
    fn drop(&mut self) {
        // A writer that failed or panicked sends no end marker.
        if self.failed || std::thread::panicking() {
            return;
        }
        // What is left, then the end marker (an empty chunk).
        if self.filled > 0 {
            let _ = self.send();
        }
        let _ = self.sender.send(Ok(Vec::new()));
    }
}

/// See [`layer_reader_ahead`].
pub struct ReadAhead {
    receiver: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    position: usize,
    ended: bool,
}

impl Read for ReadAhead {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        while self.position == self.chunk.len() {
            if self.ended {
                return Ok(0);
            }
            match self.receiver.recv() {
                Ok(Ok(chunk)) if chunk.is_empty() => self.ended = true,
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.position = 0;
                }
                Ok(Err(error)) => return Err(error),
                Err(_) => {
                    return Err(std::io::Error::other(
                        "the decompression thread stopped before the end of the layer",
                    ));
                }
            }
        }
        let n = buffer.len().min(self.chunk.len() - self.position);
        buffer[..n].copy_from_slice(&self.chunk[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

/// Applies layer number `layer` (base = 0), read as an uncompressed tar from
/// `reader`, to `tree`, storing file contents in `objects`. The same as
/// [`parse_layer`] then [`ParsedLayer::apply`].
pub fn apply_layer(
    tree: &mut Tree,
    layer: usize,
    reader: impl Read,
    objects: &ObjectDir,
) -> Result<()> {
    parse_layer(layer, reader, objects).apply(tree)
}

/// One layer read through, its file contents stored, not yet applied: what
/// needs no tree (parsing, decompressing, storing contents) is done, so
/// several layers can be parsed at once and applied in order after.
pub struct ParsedLayer {
    layer: usize,
    changes: Vec<Change>,
    /// Where reading stopped, if it did: raised after the changes before it
    /// are applied, so errors come out in the same order as a plain walk.
    error: Option<RootfsError>,
}

/// One entry of a layer.
struct Change {
    /// The entry's name as the tar has it (for messages).
    shown: String,
    /// Path components (empty: the root).
    components: Vec<Vec<u8>>,
    op: Op,
}

enum Op {
    Opaque,
    Whiteout(Vec<u8>),
    HardLink { target: Vec<Vec<u8>>, raw: Vec<u8> },
    Directory(Metadata),
    Node(Metadata, Kind),
}

/// At most this many entries in one layer: a parsed layer is held in memory
/// until it is applied, and a hostile layer could repeat one entry forever.
pub const MAX_LAYER_ENTRIES: usize = 1 << 20;

/// Reads layer number `layer` through (see [`ParsedLayer`]).
pub fn parse_layer(layer: usize, reader: impl Read, objects: &ObjectDir) -> ParsedLayer {
    parse_layer_unless(layer, reader, objects, &AtomicBool::new(false))
}

/// [`parse_layer`], giving up between entries once `stop` is set (another
/// layer failed, so this one is not needed).
pub fn parse_layer_unless(
    layer: usize,
    reader: impl Read,
    objects: &ObjectDir,
    stop: &AtomicBool,
) -> ParsedLayer {
    let mut changes = Vec::new();
    let error = parse_into(layer, reader, objects, &mut changes, stop).err();
    ParsedLayer {
        layer,
        changes,
        error,
    }
}

fn parse_into(
    layer: usize,
    reader: impl Read,
    objects: &ObjectDir,
    changes: &mut Vec<Change>,
    stop: &AtomicBool,
) -> Result<()> {
    let mut archive = tar::Archive::new(crate::guard::TarGuard::new(reader));
    let entries = archive
        .entries()
        .map_err(|source| RootfsError::Tar { layer, source })?;
    for entry in entries {
        if stop.load(Ordering::Relaxed) {
            return Err(RootfsError::Tar {
                layer,
                source: std::io::Error::other("not read: an earlier layer failed"),
            });
        }
        if changes.len() >= MAX_LAYER_ENTRIES {
            return Err(RootfsError::Tar {
                layer,
                source: std::io::Error::other(format!(
                    "more than {MAX_LAYER_ENTRIES} entries in one layer"
                )),
            });
        }
        let mut entry = entry.map_err(|source| RootfsError::Tar { layer, source })?;
        let raw_path = entry.path_bytes().into_owned();
        // (A hostile name is shown cut short: errors stay one line.)
        let shown = match raw_path.get(..200) {
            Some(start) if raw_path.len() > 200 => {
                format!("{}…", String::from_utf8_lossy(start))
            }
            _ => String::from_utf8_lossy(&raw_path).into_owned(),
        };
        let refuse = |reason: &str| RootfsError::Entry {
            layer,
            entry: shown.clone(),
            reason: reason.to_string(),
        };
        let components = split_path(&raw_path).map_err(&refuse)?;

        let header = entry.header().clone();
        let entry_type = header.entry_type();
        if entry_type.is_pax_global_extensions()
            || entry_type.is_pax_local_extensions()
            || entry_type.is_gnu_longname()
            || entry_type.is_gnu_longlink()
        {
            continue;
        }
        let op = match components.last() {
            None => {
                // The root itself: take its metadata.
                if !entry_type.is_dir() {
                    return Err(refuse("only a directory can be the root"));
                }
                Op::Directory(metadata(&mut entry, &header).map_err(|reason| refuse(&reason))?)
            }
            Some(name) if name.as_slice() == OPAQUE => Op::Opaque,
            Some(name) if name.starts_with(WHITEOUT_PREFIX) => {
                let target = &name[WHITEOUT_PREFIX.len()..];
                if target.is_empty() || target == b"." || target == b".." || target.contains(&b'/')
                {
                    return Err(refuse("whiteout of an invalid name"));
                }
                Op::Whiteout(target.to_vec())
            }
            Some(_) if entry_type.is_hard_link() => {
                let raw = entry
                    .link_name_bytes()
                    .ok_or_else(|| refuse("hardlink without a target"))?
                    .into_owned();
                let target = split_path(&raw)
                    .map_err(|reason| refuse(&format!("hardlink target: {reason}")))?;
                Op::HardLink { target, raw }
            }
            Some(_) => {
                let metadata = metadata(&mut entry, &header).map_err(|reason| refuse(&reason))?;
                if entry_type.is_dir() {
                    Op::Directory(metadata)
                } else if entry_type.is_file() || entry_type == tar::EntryType::Continuous {
                    let size = entry.size();
                    let content = objects.put(&mut entry, size).map_err(|e| {
                        if e.kind() == std::io::ErrorKind::UnexpectedEof {
                            refuse(&format!("truncated: {e}"))
                        } else {
                            RootfsError::Io(e)
                        }
                    })?;
                    Op::Node(metadata, Kind::File(content))
                } else if entry_type.is_symlink() {
                    let target = entry
                        .link_name_bytes()
                        .ok_or_else(|| refuse("symlink without a target"))?
                        .into_owned();
                    if target.len() >= PATH_MAX {
                        return Err(refuse("symlink target longer than 4095 bytes"));
                    }
                    Op::Node(metadata, Kind::Symlink(target))
                } else if entry_type.is_character_special() || entry_type.is_block_special() {
                    let major = header
                        .device_major()
                        .ok()
                        .flatten()
                        .ok_or_else(|| refuse("device without a major number"))?;
                    let minor = header
                        .device_minor()
                        .ok()
                        .flatten()
                        .ok_or_else(|| refuse("device without a minor number"))?;
                    let kind = if entry_type.is_character_special() {
                        Kind::CharDevice { major, minor }
                    } else {
                        Kind::BlockDevice { major, minor }
                    };
                    Op::Node(metadata, kind)
                } else if entry_type.is_fifo() {
                    Op::Node(metadata, Kind::Fifo)
                } else {
                    return Err(refuse(&format!("unsupported entry type {:?}", entry_type)));
                }
            }
        };
        changes.push(Change {
            shown,
            components,
            op,
        });
    }
    Ok(())
}

impl ParsedLayer {
    /// The contents of the regular files the layer carries, in tar order.
    pub fn contents(&self) -> Vec<ContentRef> {
        self.changes
            .iter()
            .filter_map(|change| match &change.op {
                Op::Node(_, Kind::File(content)) => Some(content.clone()),
                _ => None,
            })
            .collect()
    }

    /// Applies the layer to `tree` (layers in order, base first).
    pub fn apply(self, tree: &mut Tree) -> Result<()> {
        let layer = self.layer;
        for change in self.changes {
            let refuse = |reason: &str| RootfsError::Entry {
                layer,
                entry: change.shown.clone(),
                reason: reason.to_string(),
            };
            let Some((name, parents)) = change.components.split_last() else {
                if let Op::Directory(metadata) = change.op {
                    metadata.apply_to(&mut tree.inodes[ROOT]);
                }
                continue;
            };
            match change.op {
                Op::Opaque => {
                    let directory = resolve_directory(tree, parents, layer, true)
                        .map_err(|reason| refuse(&reason))?;
                    if let Some(entries) = tree.entries_mut(directory) {
                        entries.retain(|_, e| e.layer >= layer);
                    }
                }
                Op::Whiteout(target) => {
                    // Whiting out inside a directory that does not exist: nothing to do.
                    if let Ok(directory) = resolve_directory(tree, parents, layer, false)
                        && let Some(entries) = tree.entries_mut(directory)
                        && entries.get(&target).is_some_and(|e| e.layer < layer)
                    {
                        entries.remove(&target);
                    }
                }
                Op::HardLink { target, raw } => {
                    let directory = resolve_directory(tree, parents, layer, true)
                        .map_err(|reason| refuse(&reason))?;
                    let found = lookup(tree, &target, layer).ok_or_else(|| {
                        refuse(&format!(
                            "hardlink to {:?}, which does not exist",
                            String::from_utf8_lossy(&raw)
                        ))
                    })?;
                    if matches!(tree.inodes[found].kind, Kind::Directory(_)) {
                        return Err(refuse("hardlink to a directory"));
                    }
                    insert(tree, directory, name.clone(), found, layer);
                }
                Op::Directory(metadata) => {
                    let directory = resolve_directory(tree, parents, layer, true)
                        .map_err(|reason| refuse(&reason))?;
                    // An existing directory keeps its children and takes the new metadata.
                    if let Some(existing) = tree
                        .entries(directory)
                        .and_then(|e| e.get(name))
                        .map(|e| e.inode)
                        && matches!(tree.inodes[existing].kind, Kind::Directory(_))
                    {
                        metadata.apply_to(&mut tree.inodes[existing]);
                        if let Some(entries) = tree.entries_mut(directory)
                            && let Some(e) = entries.get_mut(name)
                        {
                            e.layer = e.layer.max(layer);
                        }
                        continue;
                    }
                    let inode = tree.add(metadata.into_inode(Kind::Directory(BTreeMap::new())));
                    insert(tree, directory, name.clone(), inode, layer);
                }
                Op::Node(metadata, kind) => {
                    let directory = resolve_directory(tree, parents, layer, true)
                        .map_err(|reason| refuse(&reason))?;
                    let inode = tree.add(metadata.into_inode(kind));
                    insert(tree, directory, name.clone(), inode, layer);
                }
            }
        }
        match self.error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Reads the layers (compressed blobs, base first) into a tree: up to
/// `workers` layers are read through at once (decompressed, parsed, their
/// contents stored in `objects`), and applied in order as they come. A
/// worker reads at most `workers` layers past the last applied one, so few
/// parsed layers wait in memory; once a layer fails, the others stop
/// between entries and the first error in layer order is returned. Also
/// returns each layer's file contents in the order its tar holds them
/// (every regular file the layer carries, also those a later layer
/// removes): what a per-layer image of the layer holds.
pub fn read_layers_with_contents<R: Read + Send + 'static>(
    layers: Vec<(R, kiln_types::media_type::Compression)>,
    objects: &ObjectDir,
    workers: usize,
) -> Result<(Tree, Vec<Vec<ContentRef>>)> {
    let mut contents = vec![Vec::new(); layers.len()];
    struct Queue<R> {
        layers: Vec<Option<(R, kiln_types::media_type::Compression)>>,
        next: usize,
        applied: usize,
    }
    let count = layers.len();
    let workers = workers.clamp(1, count.max(1));
    let queue = std::sync::Mutex::new(Queue {
        layers: layers.into_iter().map(Some).collect(),
        next: 0,
        applied: 0,
    });
    let turn = std::sync::Condvar::new();
    let stop = AtomicBool::new(false);
    let mut tree = Tree::new();
    std::thread::scope(|scope| {
        let (sender, receiver) = std::sync::mpsc::channel();
        for _ in 0..workers {
            let sender = sender.clone();
            let (queue, turn, stop) = (&queue, &turn, &stop);
            scope.spawn(move || {
                loop {
                    let Ok(mut state) = queue.lock() else { return };
                    while state.next < count
                        && state.next >= state.applied + workers
                        && !stop.load(Ordering::Relaxed)
                    {
                        let Ok(next) = turn.wait(state) else { return };
                        state = next;
                    }
                    if state.next >= count || stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let index = state.next;
                    state.next += 1;
                    let Some((blob, compression)) = state.layers[index].take() else {
                        return;
                    };
                    drop(state);
                    let reader = layer_reader_ahead(blob, compression);
                    let parsed = parse_layer_unless(index, reader, objects, stop);
                    if sender.send((index, parsed)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(sender);
        let mut pending = std::collections::BTreeMap::new();
        let mut applied = 0;
        for (index, parsed) in receiver {
            pending.insert(index, parsed);
            while let Some(parsed) = pending.remove(&applied) {
                contents[applied] = parsed.contents();
                let result = parsed.apply(&mut tree);
                if result.is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
                applied += 1;
                if let Ok(mut state) = queue.lock() {
                    state.applied = applied;
                }
                turn.notify_all();
                result?;
            }
        }
        if applied != count {
            return Err(RootfsError::Io(std::io::Error::other(format!(
                "a layer reader stopped after {applied} of {count} layers"
            ))));
        }
        Ok(())
    })?;
    Ok((tree, contents))
}

struct Metadata {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Metadata {
    /// Gives an existing inode (a directory seen again, the root) this metadata.
    fn apply_to(self, inode: &mut Inode) {
        (inode.mode, inode.uid, inode.gid, inode.mtime, inode.xattrs) =
            (self.mode, self.uid, self.gid, self.mtime, self.xattrs);
    }

    fn into_inode(self, kind: Kind) -> Inode {
        Inode {
            kind,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            mtime: self.mtime,
            xattrs: self.xattrs,
        }
    }
}

fn metadata<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    header: &tar::Header,
) -> std::result::Result<Metadata, String> {
    let mode = header.mode().map_err(|e| format!("bad mode: {e}"))? & 0o7777;
    let uid = u32::try_from(header.uid().map_err(|e| format!("bad uid: {e}"))?)
        .map_err(|_| "uid out of range".to_string())?;
    let gid = u32::try_from(header.gid().map_err(|e| format!("bad gid: {e}"))?)
        .map_err(|_| "gid out of range".to_string())?;
    let mtime = header.mtime().map_err(|e| format!("bad mtime: {e}"))? as i64;
    let mut xattrs = BTreeMap::new();
    let mut uid = uid;
    let mut gid = gid;
    let mut mtime = mtime;
    if let Some(extensions) = entry
        .pax_extensions()
        .map_err(|e| format!("bad PAX header: {e}"))?
    {
        for extension in extensions {
            let extension = extension.map_err(|e| format!("bad PAX record: {e}"))?;
            let key = extension
                .key()
                .map_err(|_| "PAX key is not UTF-8".to_string())?;
            if let Some(name) = key.strip_prefix(XATTR_PREFIX) {
                xattrs.insert(name.as_bytes().to_vec(), extension.value_bytes().to_vec());
            } else if key == "uid" {
                uid = parse_pax_number(extension.value_bytes()).ok_or("bad PAX uid")?;
            } else if key == "gid" {
                gid = parse_pax_number(extension.value_bytes()).ok_or("bad PAX gid")?;
            } else if key == "mtime" {
                let text =
                    std::str::from_utf8(extension.value_bytes()).map_err(|_| "bad PAX mtime")?;
                mtime = text
                    .split('.')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("bad PAX mtime")?;
            }
        }
    }
    Ok(Metadata {
        mode,
        uid,
        gid,
        mtime,
        xattrs,
    })
}

fn parse_pax_number(value: &[u8]) -> Option<u32> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// Linux's limits: a path (or a symlink's target) under `PATH_MAX` bytes,
/// each name at most `NAME_MAX`, as system calls take them; a hostile
/// layer would use longer ones to make every lookup costly.
const PATH_MAX: usize = 4096;
const NAME_MAX: usize = 255;

/// Splits a tar path into components, refusing `..`, NUL bytes, and paths
/// and names longer than Linux allows.
fn split_path(path: &[u8]) -> std::result::Result<Vec<Vec<u8>>, &'static str> {
    let mut components: Vec<Vec<u8>> = Vec::new();
    for component in path.split(|b| *b == b'/') {
        match component {
            b"" | b"." => continue,
            b".." => return Err("path contains '..'"),
            name if name.contains(&0) => return Err("path contains a NUL byte"),
            // (A whiteout's name is the removed name behind `.wh.`.)
            name if name.len() - usize::from(name.starts_with(b".wh.")) * 4 > NAME_MAX => {
                return Err("a name longer than 255 bytes");
            }
            name => components.push(name.to_vec()),
        }
    }
    let length: usize = components.iter().map(|c| c.len() + 1).sum();
    if length >= PATH_MAX {
        return Err("path longer than 4095 bytes");
    }
    Ok(components)
}

/// Symlinks followed while resolving one path, at most (Linux's MAXSYMLINKS).
const MAX_SYMLINK_HOPS: usize = 40;

/// The directory at `path`, creating missing ones (0755, root) when `create`.
/// A symlink on the way is followed inside the tree, as containerd and umoci
/// do: an absolute target starts again at the root and `..` stops there, so
/// no path leads outside the root filesystem.
fn resolve_directory(
    tree: &mut Tree,
    path: &[Vec<u8>],
    layer: usize,
    create: bool,
) -> std::result::Result<InodeId, String> {
    let mut chain = vec![ROOT];
    let mut queue: std::collections::VecDeque<Vec<u8>> = path.iter().cloned().collect();
    let mut hops = 0;
    while let Some(component) = queue.pop_front() {
        match component.as_slice() {
            b"" | b"." => continue,
            b".." => {
                if chain.len() > 1 {
                    chain.pop();
                }
                continue;
            }
            name if name.contains(&0) => {
                return Err("a symlink on the path holds a NUL byte".into());
            }
            _ => {}
        }
        let current = *chain.last().expect("the root stays");
        let existing = tree
            .entries(current)
            .and_then(|e| e.get(&component))
            .map(|e| e.inode);
        match existing {
            Some(inode) => match &tree.inodes[inode].kind {
                Kind::Directory(_) => chain.push(inode),
                Kind::Symlink(target) => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(format!(
                            "path goes through more than {MAX_SYMLINK_HOPS} symlinks (a loop at {:?}?)",
                            String::from_utf8_lossy(&component)
                        ));
                    }
                    if target.is_empty() {
                        return Err(format!(
                            "path goes through the empty symlink {:?}",
                            String::from_utf8_lossy(&component)
                        ));
                    }
                    if target.starts_with(b"/") {
                        chain.truncate(1);
                    }
                    for part in target.split(|b| *b == b'/').rev() {
                        queue.push_front(part.to_vec());
                    }
                }
                _ => {
                    return Err(format!(
                        "path goes through {:?}, which is not a directory",
                        String::from_utf8_lossy(&component)
                    ));
                }
            },
            None if create => {
                let inode = tree.add(Inode::implicit_directory());
                insert(tree, current, component, inode, layer);
                chain.push(inode);
            }
            None => return Err("no such directory".into()),
        }
    }
    Ok(*chain.last().expect("the root stays"))
}

/// The entry at `path`: its directory resolved as [`resolve_directory`]
/// does (symlinks on the way followed), its last component not followed.
fn lookup(tree: &mut Tree, path: &[Vec<u8>], layer: usize) -> Option<InodeId> {
    let (name, parents) = path.split_last()?;
    let directory = resolve_directory(tree, parents, layer, false).ok()?;
    Some(tree.entries(directory)?.get(name)?.inode)
}

fn insert(tree: &mut Tree, directory: InodeId, name: Vec<u8>, inode: InodeId, layer: usize) {
    if let Some(entries) = tree.entries_mut(directory) {
        entries.insert(name, DirEntry { inode, layer });
    }
}
