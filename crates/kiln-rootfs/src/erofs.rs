//! Tree → EROFS image (uncompressed, 4 KiB blocks), the read-only root
//! filesystem modern sandboxes mount, written by kiln itself in one pass
//! (no staging directory, no external tool): ownership, modes, device
//! numbers, mtimes and xattrs come from the tree, so the output is the same
//! — byte for byte — whoever runs kiln.
//!
//! Layout (the kernel's `erofs_fs.h`):
//! - block 0: the superblock at byte 1024 (`meta_blkaddr` = 0), then the
//!   metadata area (after the device table of a layered image, below):
//!   every inode breadth first from the root (nid 36, or 36 + 4 × devices), in the
//!   compact form (32 bytes) when its mtime is the superblock's build time
//!   (the tree's most common mtime) and its ids and link count fit 16 bits,
//!   else the extended form (64 bytes: 32-bit uid/gid, own mtime); each is
//!   followed by its inline xattrs and, when it is small (≤ 2 KiB) or fits
//!   in what is left of the block, the last partial block of its content
//!   (`FLAT_INLINE` tail packing); no inode record crosses a block boundary.
//! - then the data area: the whole blocks of every content (`FLAT_PLAIN`,
//!   or the head of a `FLAT_INLINE` one), in inode order.
//! - directories: sorted `erofs_dirent` blocks (`.` and `..` included).
//! - a layered image ([`write_erofs_layered`]): the device table (128-byte
//!   slots at byte 1152: the data file's digest as the tag, its blocks, and
//!   where it would start in a flat concatenation, `mapped_blkaddr`), then
//!   the inodes; every file of a block or more is chunk-based (one chunk
//!   covering it, one 8-byte index: device 1..N and block), its content in
//!   that device; features `CHUNKED_FILE` and `DEVICE_TABLE`.
//!
//! The volume UUID is derived from the metadata and the caller's identity
//! bytes (kiln passes the image's manifest digest), so the same image
//! always gives the same bytes.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use kiln_types::{Algorithm, Digest, Hasher};

use crate::emit::{Emitter, OnWritten};
use crate::error::{Result, RootfsError};
use crate::objects::{ContentRef, ObjectDir};
use crate::ondisk::{dirent_type, encode_device, put16, put32, put64, uuid_from, xattr_split};
use crate::tree::{InodeId, Kind, Order, Tree};

const BLOCK: u64 = 4096;
const MAGIC: u32 = 0xE0F5_E1E2;
const SUPERBLOCK: usize = 1024;
/// The first inode: right after the 128-byte superblock, 32-byte aligned.
const FIRST_INODE: u64 = 1152;
const INODE_SIZE: u64 = 64;
const COMPACT_SIZE: u64 = 32;
/// Tails up to this size always go inline; larger ones when they fit.
const INLINE_MAX: u64 = 2048;
const FLAT_PLAIN: u16 = 0;
const FLAT_INLINE: u16 = 2;
const CHUNK_BASED: u16 = 4;
/// Chunk format: with 8-byte chunk indexes (device, block), not a block map.
const CHUNK_INDEXES: u16 = 0x20;
const CHUNK_INDEX: u64 = 8;
const INCOMPAT_CHUNKED_FILE: u32 = 0x4;
const INCOMPAT_DEVICE_TABLE: u32 = 0x8;
const DEVICE_SLOT: u64 = 128;
const DIRENT_SIZE: usize = 12;
const NAME_MAX: usize = 255;

/// Where one inode and its content go.
struct Slot {
    id: InodeId,
    /// Byte offset of the inode (nid × 32).
    offset: u64,
    xattrs: Vec<u8>,
    size: u64,
    /// The last bytes of the content, kept inline after the inode (0: none).
    tail: u64,
    /// 32-byte inode (mtime = the superblock's build time) or 64-byte.
    compact: bool,
    nlink: u32,
    blkaddr: u32,
    /// A content kept on an extra device (a layered image): the device
    /// (1-based), its block there, and the chunk format (one chunk).
    chunk: Option<(u16, u32, u16)>,
}

impl Slot {
    /// Whether it has blocks in the data area (more than its inline tail).
    fn owns_blocks(&self) -> bool {
        self.chunk.is_none() && self.size > self.tail
    }
}

/// One extra device of a layered EROFS image: a layer's data file (see
/// [`write_layer_data`]).
#[derive(Debug, Clone)]
pub struct LayerDevice {
    /// What the device slot records (kiln: the data file's digest, hex).
    pub tag: String,
    /// Its size in blocks.
    pub blocks: u32,
    /// Where each of its contents starts (block), by the content's offset
    /// in the object pack.
    pub placed: HashMap<u64, u32>,
}

/// The tags of a layered EROFS image's device table, in device order
/// (none for a plain image).
pub fn erofs_device_tags(image: &Path) -> std::io::Result<Vec<String>> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::open(image)?;
    let mut superblock = [0u8; 128];
    file.seek(SeekFrom::Start(SUPERBLOCK as u64))?;
    file.read_exact(&mut superblock)?;
    let count = u16::from_le_bytes([superblock[86], superblock[87]]);
    let table = u64::from(u16::from_le_bytes([superblock[88], superblock[89]])) * DEVICE_SLOT;
    let mut tags = Vec::with_capacity(usize::from(count));
    let mut slot = [0u8; DEVICE_SLOT as usize];
    file.seek(SeekFrom::Start(table))?;
    for _ in 0..count {
        file.read_exact(&mut slot)?;
        let end = slot[..64].iter().position(|b| *b == 0).unwrap_or(64);
        tags.push(String::from_utf8_lossy(&slot[..end]).into_owned());
    }
    Ok(tags)
}

/// A written layer data file: its digest, its size, and the block each
/// content starts at, by the content's offset in the object pack.
pub type LayerData = (Digest, u64, HashMap<u64, u32>);

/// Writes a layer's data file for a layered EROFS image: every content of
/// `contents` (a layer's files, in tar order) of a block or more, each from
/// a block boundary, in order — so a layer gives the same file, byte for
/// byte, in every image that has it. Returns its digest, size and where
/// each content went, or `None` when the layer has no such content.
pub fn write_layer_data(
    contents: &[ContentRef],
    objects: &ObjectDir,
    output: &Path,
    on_written: Option<OnWritten>,
) -> Result<Option<LayerData>> {
    let Some((placed, blocks)) = plan_layer_data(contents)? else {
        return Ok(None);
    };
    let mut emitter = Emitter::create(output, blocks * BLOCK, on_written)?;
    for content in contents.iter().filter(|c| c.size >= BLOCK) {
        let at = u64::from(placed[&content.offset]) * BLOCK;
        emitter.copy(at, &mut objects.reader(content, 0), content.size)?;
    }
    let (digest, size) = emitter.finish(blocks * BLOCK)?;
    Ok(Some((digest, size, placed)))
}

/// Where [`write_layer_data`] puts each content (its block, by the
/// content's offset in the object pack) and the file's size in blocks,
/// without writing it: for a layer whose data file the store has.
pub fn plan_layer_data(contents: &[ContentRef]) -> Result<Option<(HashMap<u64, u32>, u64)>> {
    let mut placed = HashMap::new();
    let mut next = 0u64;
    for content in contents.iter().filter(|c| c.size >= BLOCK) {
        let block = u32::try_from(next).map_err(|_| RootfsError::Unrepresentable {
            path: "/".into(),
            reason: "a layer of 16 TiB or more".into(),
        })?;
        placed.insert(content.offset, block);
        next += content.size.div_ceil(BLOCK);
    }
    Ok((next > 0).then_some((placed, next)))
}

/// Writes `tree` as an EROFS image at `output`; returns its digest and
/// size. `identity` (for instance the image's digest) seeds the volume UUID.
pub fn write_erofs(
    tree: &Tree,
    objects: &ObjectDir,
    output: &Path,
    identity: &[u8],
    on_written: Option<OnWritten>,
) -> Result<(Digest, u64)> {
    write_erofs_layered(tree, objects, output, identity, &[], on_written)
}

/// [`write_erofs`] with the contents `devices` hold kept there: the image
/// is the metadata (and the contents under a block), each larger file a
/// chunk on the extra device of the layer that carried it (device table,
/// chunk indexes; Linux 5.16+: `mount -t erofs -o device=D1,device=D2`).
pub fn write_erofs_layered(
    tree: &Tree,
    objects: &ObjectDir,
    output: &Path,
    identity: &[u8],
    devices: &[LayerDevice],
    on_written: Option<OnWritten>,
) -> Result<(Digest, u64)> {
    let order = tree.order();
    let extra = u16::try_from(devices.len())
        .ok()
        .filter(|n| *n < 256)
        .ok_or_else(|| RootfsError::Unrepresentable {
            path: "/".into(),
            reason: format!("{} layer devices (kiln writes at most 255)", devices.len()),
        })?;
    let mut external: HashMap<u64, (u16, u32)> = HashMap::new();
    for (index, device) in devices.iter().enumerate() {
        for (&offset, &block) in &device.placed {
            external.insert(offset, (index as u16 + 1, block));
        }
    }
    let unrepresentable = |id: InodeId, reason: String| RootfsError::Unrepresentable {
        path: order.path(id),
        reason,
    };

    // The most common mtime is the build time compact inodes take.
    let mut mtimes: HashMap<i64, usize> = HashMap::new();
    for &id in &order.inodes {
        *mtimes.entry(tree.inodes[id].mtime.max(0)).or_default() += 1;
    }
    let build_time = mtimes
        .into_iter()
        .max_by_key(|(mtime, count)| (*count, std::cmp::Reverse(*mtime)))
        .map_or(0, |(mtime, _)| mtime);

    // Inode records in the metadata area.
    let mut slot_of = vec![usize::MAX; tree.inodes.len()];
    let mut slots = Vec::with_capacity(order.inodes.len());
    // The device table (128 bytes a device) sits between the superblock
    // and the first inode.
    let mut offset = FIRST_INODE + DEVICE_SLOT * u64::from(extra);
    for &id in &order.inodes {
        let inode = &tree.inodes[id];
        let xattrs = xattr_body(&inode.xattrs).map_err(|reason| unrepresentable(id, reason))?;
        let size = match &inode.kind {
            Kind::File(content) => content.size,
            Kind::Directory(_) => {
                directory_size(&names_of(tree, id)).map_err(|reason| unrepresentable(id, reason))?
            }
            Kind::Symlink(target) => target.len() as u64,
            _ => 0,
        };
        let nlink = match &inode.kind {
            Kind::Directory(_) => 2 + tree.subdirectories(id),
            _ => order.links[id],
        };
        let compact = inode.mtime.max(0) == build_time
            && inode.uid <= 0xffff
            && inode.gid <= 0xffff
            && nlink <= 0xffff
            && size <= u64::from(u32::MAX);
        let inode_size = if compact { COMPACT_SIZE } else { INODE_SIZE };
        let head = inode_size + xattrs.len() as u64;
        let chunk = match &inode.kind {
            Kind::File(content) if content.size >= BLOCK => {
                external.get(&content.offset).and_then(|&(device, block)| {
                    // One chunk holds the whole content (up to 8 TiB).
                    let blocks = content.size.div_ceil(BLOCK);
                    let bits = 64 - (blocks - 1).leading_zeros() as u16;
                    (bits <= 31).then_some((device, block, bits | CHUNK_INDEXES))
                })
            }
            _ => None,
        };
        // Tail packing: the content's last partial block goes inline when it
        // is small, or when it fits in what is left of the current block.
        let partial = size % BLOCK;
        let tail = if chunk.is_none()
            && partial > 0
            && head + partial <= BLOCK
            && (partial <= INLINE_MAX || offset % BLOCK + head + partial <= BLOCK)
        {
            partial
        } else {
            0
        };
        let record = match chunk {
            // The chunk index follows the xattrs, 8-byte aligned.
            Some(_) => head.next_multiple_of(8) + CHUNK_INDEX,
            None => head + tail,
        };
        if record > BLOCK {
            return Err(unrepresentable(id, "its xattrs exceed a block".into()));
        }
        if offset % BLOCK + record > BLOCK {
            offset = offset.next_multiple_of(BLOCK);
        }
        slot_of[id] = slots.len();
        slots.push(Slot {
            id,
            offset,
            xattrs,
            size,
            tail,
            compact,
            nlink,
            blkaddr: 0,
            chunk,
        });
        offset += record.next_multiple_of(32);
    }
    let metadata_end = offset.next_multiple_of(BLOCK);

    // Data blocks, in inode order.
    let mut next_block = metadata_end / BLOCK;
    for slot in &mut slots {
        let full = slot.size - slot.tail;
        if full == 0 || slot.chunk.is_some() {
            continue;
        }
        slot.blkaddr = u32::try_from(next_block)
            .map_err(|_| unrepresentable(slot.id, "the image exceeds 16 TiB".into()))?;
        next_block += full.div_ceil(BLOCK);
    }
    let blocks = u32::try_from(next_block).map_err(|_| RootfsError::Unrepresentable {
        path: "/".into(),
        reason: "the image exceeds 16 TiB".into(),
    })?;
    let nid = |id: InodeId| slots[slot_of[id]].offset / 32;

    // The volume UUID: the identity and every inode's metadata.
    let mut uuid_hasher = Hasher::new(Algorithm::Sha256);
    uuid_hasher.update(identity);
    uuid_hasher.update(&blocks.to_le_bytes());
    for slot in &slots {
        let inode = &tree.inodes[slot.id];
        for value in [
            slot.offset,
            slot.size,
            u64::from(slot.blkaddr),
            u64::from(inode.mode),
        ] {
            uuid_hasher.update(&value.to_le_bytes());
        }
        for value in [
            u64::from(inode.uid),
            u64::from(inode.gid),
            inode.mtime as u64,
        ] {
            uuid_hasher.update(&value.to_le_bytes());
        }
        uuid_hasher.update(&order.names[slot.id]);
        uuid_hasher.update(&slot.xattrs);
        if let Some((device, block, _)) = slot.chunk {
            uuid_hasher.update(&device.to_le_bytes());
            uuid_hasher.update(&block.to_le_bytes());
        }
    }
    for device in devices {
        uuid_hasher.update(device.tag.as_bytes());
    }
    let uuid = uuid_from(&uuid_hasher.finish());
    let mut superblock = [0u8; 128];
    put32(&mut superblock, 0, MAGIC);
    superblock[12] = 12; // blkszbits
    // The root is the first inode: right after the superblock (and the
    // device table) unless its xattrs and inline tail pushed it to the next
    // block.
    put16(&mut superblock, 14, (slots[0].offset / 32) as u16); // root nid
    put64(&mut superblock, 16, slots.len() as u64); // inos
    put64(&mut superblock, 24, build_time as u64); // the mtime of compact inodes
    put32(&mut superblock, 36, blocks);
    put32(&mut superblock, 40, 0); // meta_blkaddr
    superblock[48..64].copy_from_slice(&uuid);
    superblock[64..70].copy_from_slice(b"rootfs");
    if extra > 0 {
        put32(
            &mut superblock,
            80,
            INCOMPAT_CHUNKED_FILE | INCOMPAT_DEVICE_TABLE,
        );
        put16(&mut superblock, 86, extra); // extra_devices
        put16(&mut superblock, 88, (FIRST_INODE / DEVICE_SLOT) as u16); // devt_slotoff
    }

    // Front to back: the superblock, the inode records (each built as it is
    // written, so memory does not grow with the tree), then the data blocks.
    let mut emitter = Emitter::create(output, u64::from(blocks) * BLOCK, on_written)?;
    emitter.bytes(SUPERBLOCK as u64, &superblock)?;
    if extra > 0 {
        let mut table = vec![0u8; DEVICE_SLOT as usize * devices.len()];
        // Where each device would start in one flat file (the metadata
        // image, then the devices in order): a kernel mounting the image
        // with no device= reads there, never the metadata image's blocks.
        let mut mapped = u64::from(blocks);
        for (index, device) in devices.iter().enumerate() {
            let slot = &mut table[index * DEVICE_SLOT as usize..][..DEVICE_SLOT as usize];
            let tag = device.tag.as_bytes();
            slot[..tag.len().min(64)].copy_from_slice(&tag[..tag.len().min(64)]);
            put32(slot, 64, device.blocks);
            put32(
                slot,
                68,
                u32::try_from(mapped).map_err(|_| RootfsError::Unrepresentable {
                    path: "/".into(),
                    reason: "layer devices of 16 TiB or more".into(),
                })?,
            );
            mapped += u64::from(device.blocks);
        }
        emitter.bytes(FIRST_INODE, &table)?;
    }
    let mut record = Vec::with_capacity(BLOCK as usize);
    let mut directory_heads: HashMap<InodeId, Vec<u8>> = HashMap::new();
    for slot in &slots {
        let inode = &tree.inodes[slot.id];
        let layout = if slot.chunk.is_some() {
            CHUNK_BASED
        } else if slot.tail > 0 {
            FLAT_INLINE
        } else {
            FLAT_PLAIN
        };
        let icount = if slot.xattrs.is_empty() {
            0
        } else {
            (slot.xattrs.len() - 12) / 4 + 1
        };
        let union = match &inode.kind {
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                encode_device(*major, *minor)
            }
            // The chunk format (the reserved half stays 0).
            _ => slot
                .chunk
                .map_or(slot.blkaddr, |(_, _, format)| u32::from(format)),
        };
        let mode = (inode.type_bits() | inode.mode) as u16;
        let ino = slot_of[slot.id] as u32 + 1;
        record.clear();
        if slot.compact {
            record.resize(COMPACT_SIZE as usize, 0);
            put16(&mut record, 0, layout << 1);
            put16(&mut record, 2, icount as u16);
            put16(&mut record, 4, mode);
            put16(&mut record, 6, slot.nlink as u16);
            put32(&mut record, 8, slot.size as u32);
            put32(&mut record, 16, union);
            put32(&mut record, 20, ino);
            put16(&mut record, 24, inode.uid as u16);
            put16(&mut record, 26, inode.gid as u16);
        } else {
            record.resize(INODE_SIZE as usize, 0);
            put16(&mut record, 0, 1 | (layout << 1));
            put16(&mut record, 2, icount as u16);
            put16(&mut record, 4, mode);
            put64(&mut record, 8, slot.size);
            put32(&mut record, 16, union);
            put32(&mut record, 20, ino);
            put32(&mut record, 24, inode.uid);
            put32(&mut record, 28, inode.gid);
            put64(&mut record, 32, inode.mtime.max(0) as u64);
            put32(&mut record, 44, slot.nlink);
        }
        record.extend_from_slice(&slot.xattrs);
        if let Some((device, block, _)) = slot.chunk {
            record.resize(record.len().next_multiple_of(8), 0);
            let mut index = [0u8; CHUNK_INDEX as usize];
            put16(&mut index, 2, device);
            put32(&mut index, 4, block);
            record.extend_from_slice(&index);
        }
        if slot.tail > 0 {
            let from = slot.size - slot.tail;
            match &inode.kind {
                Kind::File(content) => {
                    objects.reader(content, from).read_to_end(&mut record)?;
                }
                Kind::Symlink(target) => record.extend_from_slice(&target[from as usize..]),
                Kind::Directory(_) => {
                    let bytes = directory_bytes(tree, &order, slot.id, &nid);
                    record.extend_from_slice(&bytes[from as usize..]);
                    // Its head goes to the data area below: built once.
                    if slot.owns_blocks() {
                        directory_heads.insert(slot.id, bytes);
                    }
                }
                _ => {}
            }
        }
        emitter.bytes(slot.offset, &record)?;
    }
    for slot in slots.iter().filter(|s| s.owns_blocks()) {
        let at = u64::from(slot.blkaddr) * BLOCK;
        let full = slot.size - slot.tail;
        match &tree.inodes[slot.id].kind {
            Kind::File(content) => emitter.copy(at, &mut objects.reader(content, 0), full)?,
            Kind::Symlink(target) => emitter.bytes(at, &target[..full as usize])?,
            Kind::Directory(_) => {
                let bytes = directory_heads
                    .remove(&slot.id)
                    .unwrap_or_else(|| directory_bytes(tree, &order, slot.id, &nid));
                emitter.bytes(at, &bytes[..full as usize])?
            }
            _ => {}
        }
    }
    Ok(emitter.finish(u64::from(blocks) * BLOCK)?)
}

/// A directory's entries, `.` and `..` included, sorted by name.
fn names_of(tree: &Tree, directory: InodeId) -> Vec<&[u8]> {
    let mut names: Vec<&[u8]> = vec![b".", b".."];
    if let Some(entries) = tree.entries(directory) {
        names.extend(entries.keys().map(Vec::as_slice));
    }
    names.sort_unstable();
    names
}

/// How many entries go in each directory block.
fn directory_blocks(names: &[&[u8]]) -> Vec<usize> {
    let mut blocks = Vec::new();
    let (mut count, mut used) = (0usize, 0usize);
    for name in names {
        let need = DIRENT_SIZE + name.len();
        if used + need > BLOCK as usize {
            blocks.push(count);
            (count, used) = (0, 0);
        }
        count += 1;
        used += need;
    }
    blocks.push(count);
    blocks
}

/// A directory's size: full blocks, then the used part of the last one.
fn directory_size(names: &[&[u8]]) -> std::result::Result<u64, String> {
    if let Some(long) = names.iter().find(|n| n.len() > NAME_MAX) {
        return Err(format!(
            "the name {:?} is longer than {NAME_MAX} bytes",
            String::from_utf8_lossy(long)
        ));
    }
    let blocks = directory_blocks(names);
    let last = &names[names.len() - blocks[blocks.len() - 1]..];
    let last_used: usize = last.iter().map(|n| DIRENT_SIZE + n.len()).sum();
    Ok((blocks.len() as u64 - 1) * BLOCK + last_used as u64)
}

/// A directory's content: per block, the dirents then their names; every
/// block but the last padded to the block size.
fn directory_bytes(
    tree: &Tree,
    order: &Order,
    directory: InodeId,
    nid: &dyn Fn(InodeId) -> u64,
) -> Vec<u8> {
    let entries = tree.entries(directory).expect("a directory");
    let parent = order.parent[directory].unwrap_or(directory);
    let names = names_of(tree, directory);
    let target = |name: &[u8]| match name {
        b"." => directory,
        b".." => parent,
        name => entries[name].inode,
    };
    let blocks = directory_blocks(&names);
    let mut out = Vec::new();
    let mut first = 0;
    for (index, &count) in blocks.iter().enumerate() {
        let block_start = out.len();
        let block = &names[first..first + count];
        let mut name_offset = count * DIRENT_SIZE;
        for name in block {
            let inode = target(name);
            let mut dirent = [0u8; DIRENT_SIZE];
            put64(&mut dirent, 0, nid(inode));
            put16(&mut dirent, 8, name_offset as u16);
            dirent[10] = dirent_type(&tree.inodes[inode].kind);
            out.extend_from_slice(&dirent);
            name_offset += name.len();
        }
        for name in block {
            out.extend_from_slice(name);
        }
        if index + 1 < blocks.len() {
            out.resize(block_start + BLOCK as usize, 0);
        }
        first += count;
    }
    out
}

/// The inline xattr body: a 12-byte header, then 4-byte aligned entries
/// (name length, prefix index, value size, name suffix, value).
fn xattr_body(
    xattrs: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
) -> std::result::Result<Vec<u8>, String> {
    if xattrs.is_empty() {
        return Ok(Vec::new());
    }
    let mut body = vec![0u8; 12];
    for (name, value) in xattrs {
        let (index, suffix) = xattr_index(name)?;
        let value_size = u16::try_from(value.len())
            .map_err(|_| format!("the value of xattr {} is too large", show(name)))?;
        body.push(suffix.len() as u8);
        body.push(index);
        body.extend_from_slice(&value_size.to_le_bytes());
        body.extend_from_slice(suffix);
        body.extend_from_slice(value);
        body.resize(body.len().next_multiple_of(4), 0);
    }
    Ok(body)
}

/// EROFS's xattr prefix index and the rest of the name.
fn xattr_index(name: &[u8]) -> std::result::Result<(u8, &[u8]), String> {
    match xattr_split(name) {
        Some((_, suffix)) if suffix.len() > NAME_MAX => {
            Err(format!("the xattr name {} is too long", show(name)))
        }
        Some(found) => Ok(found),
        None => Err(format!(
            "the xattr {} has a namespace EROFS cannot store (user., trusted., security., POSIX ACLs)",
            show(name)
        )),
    }
}

fn show(name: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_blocks_split_where_a_block_fills() {
        let long = vec![b'x'; 200];
        let mut names: Vec<&[u8]> = vec![b".", b".."];
        for _ in 0..40 {
            names.push(&long);
        }
        // 212 bytes per long entry: 19 fit after . and .. in the first block.
        let blocks = directory_blocks(&names);
        assert_eq!(blocks.iter().sum::<usize>(), 42);
        assert_eq!(blocks[0], 21);
        assert_eq!(
            directory_size(&names).unwrap(),
            (blocks.len() as u64 - 1) * BLOCK + blocks[blocks.len() - 1] as u64 * 212
        );
    }

    #[test]
    fn xattr_namespaces() {
        assert_eq!(xattr_index(b"user.a").unwrap(), (1, &b"a"[..]));
        assert_eq!(
            xattr_index(b"security.capability").unwrap(),
            (6, &b"capability"[..])
        );
        assert_eq!(xattr_index(b"system.posix_acl_access").unwrap().0, 2);
        assert!(xattr_index(b"system.other").is_err());
        assert!(xattr_index(b"userx").is_err());
    }
}
