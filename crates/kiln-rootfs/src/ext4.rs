//! Tree → ext4 raw image, the root disk Firecracker, cloud-hypervisor and
//! QEMU boot, written by kiln itself in one front-to-back pass (no staging
//! directory, no e2fsprogs): ownership, modes with setuid bits, device
//! nodes, fifos, mtimes and xattrs come from the tree, so the image is the
//! same — byte for byte — whoever runs kiln. `e2fsck -fn` passes on it and
//! the kernel mounts it read-write; e2fsprogs can resize it.
//!
//! Layout (4 KiB blocks, 32768 blocks and `inodes_per_group` 256-byte
//! inodes per group, the classic ext2 group layout without `flex_bg`):
//! - every group: [superblock + group descriptors, in groups 0, 1 and powers
//!   of 3, 5, 7 (`sparse_super`)] [block bitmap] [inode bitmap]
//!   [inode table] [data];
//! - features: `ext_attr`, `dir_index`, `has_journal` / `filetype`, `extents` /
//!   `sparse_super`, `large_file`, `dir_nlink`, `extra_isize` — what every
//!   Linux since 2.6.28 mounts; no metadata checksums;
//! - inodes: 1–10 reserved (8 = the journal, mke2fs's default size, clean),
//!   2 = the root, 11 = `lost+found` (16 KiB, as mke2fs makes it), then the
//!   tree breadth first; data allocated contiguously in the same order;
//!   extents in the inode (a one-level tree for more than four);
//! - directories: written as linear blocks (no htree; with `dir_index` the
//!   guest kernel indexes a one-block directory that grows); xattrs in the inode when they
//!   fit, else in one xattr block (POSIX ACLs converted to ext4's format);
//!   symlinks under 60 bytes in the inode.
//!
//! Unused inode-table and data blocks are holes in the file.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_types::{Algorithm, Digest, Hasher};

use crate::emit::{Emitter, OnWritten};
use crate::error::{Result, RootfsError};
use crate::objects::ObjectDir;
use crate::ondisk::{dirent_type, encode_device, put16, put32, u32_at, uuid_from, xattr_split};
use crate::tree::{InodeId, Kind, Order, ROOT, Tree};

const BLOCK: u64 = 4096;
const BLOCKS_PER_GROUP: u64 = 32768;
const INODE_SIZE: u64 = 256;
const EXTRA_ISIZE: usize = 32;
const FIRST_INO: u32 = 11;
const ROOT_INO: u32 = 2;
const JOURNAL_INO: u32 = 8;
const MIN_SIZE: u64 = 32 << 20;
pub(crate) const EXTENTS_FL: u32 = 0x80000;
pub(crate) const EXTENT_MAGIC: u16 = 0xF30A;
const LEAF_CAPACITY: usize = (BLOCK as usize - 12) / 12;
const MAX_EXTENT: u64 = 32768;
pub(crate) const XATTR_MAGIC: u32 = 0xEA02_0000;

/// The size kiln gives an image by default: content, inode tables and
/// journal, plus 25% headroom and at least 32 MiB.
pub fn default_ext4_size(tree: &Tree) -> u64 {
    default_size(tree, &tree.order())
}

/// [`default_ext4_size`] with the tree's order already walked.
fn default_size(tree: &Tree, order: &Order) -> u64 {
    let mut data = 0u64;
    let mut inodes = 0u64;
    for &id in &order.inodes {
        inodes += 1;
        data += match &tree.inodes[id].kind {
            Kind::File(content) => content.size.div_ceil(BLOCK) * BLOCK,
            Kind::Directory(entries) => {
                let bytes: u64 = entries.keys().map(|n| (8 + n.len() as u64 + 3) & !3).sum();
                (bytes + 24).div_ceil(BLOCK) * BLOCK
            }
            Kind::Symlink(target) if target.len() >= 60 => BLOCK,
            _ => 0,
        };
    }
    // Inode tables (256 bytes an inode, one inode per 16 KiB) and a journal.
    let overhead = inodes * INODE_SIZE + data / 16 + (16 << 20);
    let size = (data + overhead) * 5 / 4;
    // A group holds at most 32768 inodes: enough groups for all of them.
    let groups = (inodes + u64::from(FIRST_INO)).div_ceil(32768);
    let size = size.max(groups * BLOCKS_PER_GROUP * BLOCK);
    size.max(MIN_SIZE).div_ceil(1 << 20) << 20
}

/// mke2fs's default journal size for a filesystem of `blocks` blocks.
fn journal_blocks(blocks: u64) -> u64 {
    match blocks {
        b if b < 2048 => 0,
        b if b < 32768 => 1024,
        b if b < 256 * 1024 => 4096,
        b if b < 512 * 1024 => 8192,
        b if b < 4096 * 1024 => 16384,
        _ => 32768,
    }
}

/// Whether group `group` holds a superblock backup (`sparse_super`).
fn has_superblock(group: u64) -> bool {
    let power_of = |base: u64| {
        let mut n = group;
        while n > 1 && n.is_multiple_of(base) {
            n /= base;
        }
        n == 1
    };
    group <= 1 || power_of(3) || power_of(5) || power_of(7)
}

/// Where the metadata of each group lives.
struct Geometry {
    blocks: u64,
    groups: u64,
    inodes_per_group: u64,
    descriptor_blocks: u64,
}

impl Geometry {
    fn new(size: u64, inodes_wanted: u64) -> Geometry {
        let mut blocks = size / BLOCK;
        loop {
            let groups = blocks.div_ceil(BLOCKS_PER_GROUP);
            let inodes_per_group =
                (inodes_wanted.div_ceil(groups).next_multiple_of(16)).clamp(16, 32768);
            let geometry = Geometry {
                blocks,
                groups,
                inodes_per_group,
                descriptor_blocks: (groups * 32).div_ceil(BLOCK),
            };
            // A last group too small for its own metadata is dropped, as mke2fs does.
            let last = groups - 1;
            let last_size = blocks - last * BLOCKS_PER_GROUP;
            if groups > 1 && last_size < geometry.metadata_blocks(last) + 64 {
                blocks = last * BLOCKS_PER_GROUP;
                continue;
            }
            return geometry;
        }
    }

    fn start(&self, group: u64) -> u64 {
        group * BLOCKS_PER_GROUP
    }

    fn end(&self, group: u64) -> u64 {
        ((group + 1) * BLOCKS_PER_GROUP).min(self.blocks)
    }

    fn superblock_blocks(&self, group: u64) -> u64 {
        if has_superblock(group) {
            1 + self.descriptor_blocks
        } else {
            0
        }
    }

    fn table_blocks(&self) -> u64 {
        self.inodes_per_group * INODE_SIZE / BLOCK
    }

    fn block_bitmap(&self, group: u64) -> u64 {
        self.start(group) + self.superblock_blocks(group)
    }

    fn inode_table(&self, group: u64) -> u64 {
        self.block_bitmap(group) + 2
    }

    fn metadata_blocks(&self, group: u64) -> u64 {
        self.superblock_blocks(group) + 2 + self.table_blocks()
    }

    fn data_start(&self, group: u64) -> u64 {
        self.start(group) + self.metadata_blocks(group)
    }

    fn inodes(&self) -> u64 {
        self.groups * self.inodes_per_group
    }
}

/// Hands out data blocks front to back, skipping group metadata.
struct Allocator<'g> {
    geometry: &'g Geometry,
    group: u64,
    next: u64,
    used: Vec<u64>,
}

impl Allocator<'_> {
    /// `count` blocks as runs `(first block, length)`.
    fn allocate(&mut self, count: u64) -> Option<Vec<(u64, u64)>> {
        let mut runs = Vec::new();
        let mut left = count;
        while left > 0 {
            if self.group >= self.geometry.groups {
                return None;
            }
            let end = self.geometry.end(self.group);
            if self.next >= end {
                self.group += 1;
                if self.group < self.geometry.groups {
                    self.next = self.geometry.data_start(self.group);
                }
                continue;
            }
            // At most the rest of a group, which is shorter than an
            // extent's limit; the next group's metadata splits the runs.
            let take = left.min(end - self.next).min(MAX_EXTENT);
            runs.push((self.next, take));
            self.used[self.group as usize] += take;
            self.next += take;
            left -= take;
        }
        Some(runs)
    }
}

/// What goes into the image, by block.
enum Piece<'t> {
    Bytes(Vec<u8>),
    /// `bytes` bytes of a file's content from byte `offset`.
    Content {
        content: &'t crate::objects::ContentRef,
        offset: u64,
        bytes: u64,
    },
}

/// One inode's blocks.
#[derive(Default)]
struct Placement {
    /// `(logical block, physical block, length)`.
    extents: Vec<(u64, u64, u64)>,
    /// Extent-tree leaf blocks (more than four extents).
    leaves: Vec<u64>,
    /// The xattrs: the inode's xattr area when they fit there, else
    /// the block holding them.
    xattrs: Xattrs,
}

#[derive(Default)]
enum Xattrs {
    #[default]
    None,
    InInode(Vec<u8>),
    Block(u64),
}

/// Writes `tree` as an ext4 image of `size` bytes (default:
/// [`default_ext4_size`]) at `output`; returns its digest and size.
/// `identity` (for instance the image's digest) seeds the volume UUID.
pub fn write_ext4(
    tree: &Tree,
    objects: &ObjectDir,
    output: &Path,
    size: Option<u64>,
    identity: &[u8],
    on_written: Option<OnWritten>,
) -> Result<(Digest, u64)> {
    let order = tree.order();
    let size = size.unwrap_or_else(|| default_size(tree, &order));
    let too_small = || RootfsError::TooSmall {
        size,
        needed: default_size(tree, &order),
    };
    let unrepresentable = |id: InodeId, reason: String| RootfsError::Unrepresentable {
        path: order.path(id),
        reason,
    };
    if size < MIN_SIZE {
        return Err(too_small());
    }
    if size / BLOCK > u64::from(u32::MAX) {
        return Err(RootfsError::Unrepresentable {
            path: "/".into(),
            reason: "an ext4 image of 16 TiB or more (kiln writes 32-bit block numbers)".into(),
        });
    }

    // Inode numbers: the root is 2, a lost+found of kiln's own is 11.
    let root_entries = tree.entries(ROOT).expect("the root is a directory");
    let own_lost_found = !root_entries.contains_key(&b"lost+found"[..]);
    let mut ino = vec![0u32; tree.inodes.len()];
    let mut next_ino = if own_lost_found {
        FIRST_INO + 1
    } else {
        FIRST_INO
    };
    for &id in &order.inodes {
        ino[id] = if id == ROOT {
            ROOT_INO
        } else {
            next_ino += 1;
            next_ino - 1
        };
    }
    let used_inodes = u64::from(next_ino - 1);
    let geometry = Geometry::new(size, used_inodes.max(size / 16384));
    if used_inodes > geometry.inodes() || geometry.data_start(0) >= geometry.end(0) {
        return Err(too_small());
    }

    // Data blocks: the journal, then every inode in order.
    let mut allocator = Allocator {
        geometry: &geometry,
        group: 0,
        next: geometry.data_start(0),
        used: vec![0; geometry.groups as usize],
    };
    let mut pieces: Vec<(u64, Piece)> = Vec::new();
    let journal_length = journal_blocks(geometry.blocks);
    let mut journal = Placement::default();
    if journal_length > 0 {
        let runs = allocator.allocate(journal_length).ok_or_else(too_small)?;
        journal.extents = logical(&runs);
        pieces.push((runs[0].0, Piece::Bytes(journal_superblock(journal_length))));
    }
    let mut placements: Vec<Placement> = (0..tree.inodes.len())
        .map(|_| Placement::default())
        .collect();
    let mut lost_found = Placement::default();
    for &id in &order.inodes {
        let inode = &tree.inodes[id];
        let placement = &mut placements[id];
        match &inode.kind {
            Kind::File(content) if content.size > 0 => {
                let runs = allocator
                    .allocate(content.size.div_ceil(BLOCK))
                    .ok_or_else(too_small)?;
                placement.extents = logical(&runs);
                for &(logical_block, start, length) in &placement.extents {
                    let offset = logical_block * BLOCK;
                    pieces.push((
                        start,
                        Piece::Content {
                            content,
                            offset,
                            bytes: (length * BLOCK).min(content.size - offset),
                        },
                    ));
                }
            }
            Kind::Directory(entries) => {
                let parent = order.parent[id].unwrap_or(ROOT);
                let mut list = vec![
                    (ino[id], b".".as_slice(), 2u8),
                    (ino[parent], b"..".as_slice(), 2u8),
                ];
                if id == ROOT && own_lost_found {
                    list.push((FIRST_INO, b"lost+found".as_slice(), 2));
                }
                for (name, entry) in entries {
                    if name.len() > 255 {
                        return Err(unrepresentable(
                            id,
                            format!(
                                "the name {:?} is longer than 255 bytes",
                                String::from_utf8_lossy(name)
                            ),
                        ));
                    }
                    list.push((
                        ino[entry.inode],
                        name.as_slice(),
                        dirent_type(&tree.inodes[entry.inode].kind),
                    ));
                }
                let blocks = directory_blocks(&list, 1);
                let runs = allocator
                    .allocate(blocks.len() as u64)
                    .ok_or_else(too_small)?;
                placement.extents = logical(&runs);
                for (start, block) in block_starts(&runs).into_iter().zip(blocks) {
                    pieces.push((start, Piece::Bytes(block)));
                }
            }
            Kind::Symlink(target) if target.len() >= 60 => {
                if target.len() >= BLOCK as usize {
                    return Err(unrepresentable(
                        id,
                        "a symlink target of 4 KiB or more".into(),
                    ));
                }
                let runs = allocator.allocate(1).ok_or_else(too_small)?;
                placement.extents = logical(&runs);
                pieces.push((runs[0].0, Piece::Bytes(target.clone())));
            }
            _ => {}
        }
        if placement.extents.len() > 4 {
            let leaves = placement.extents.len().div_ceil(LEAF_CAPACITY);
            if leaves > 4 {
                return Err(unrepresentable(
                    id,
                    "a file in more than 1360 pieces".into(),
                ));
            }
            let runs = allocator.allocate(leaves as u64).ok_or_else(too_small)?;
            placement.leaves = block_starts(&runs);
            for (index, &leaf) in placement.leaves.iter().enumerate() {
                let chunk = &placement.extents[index * LEAF_CAPACITY
                    ..((index + 1) * LEAF_CAPACITY).min(placement.extents.len())];
                let mut block = vec![0u8; BLOCK as usize];
                extent_node(&mut block, chunk.len(), LEAF_CAPACITY, 0);
                for (slot, extent) in chunk.iter().enumerate() {
                    put_extent(&mut block[12 + slot * 12..], *extent);
                }
                pieces.push((leaf, Piece::Bytes(block)));
            }
        }
        let attrs = xattr_entries(&inode.xattrs).map_err(|reason| unrepresentable(id, reason))?;
        if let Some(body) = in_inode_xattrs(&attrs) {
            placement.xattrs = Xattrs::InInode(body);
        } else if !attrs.is_empty() {
            let block = xattr_block(&attrs)
                .ok_or_else(|| unrepresentable(id, "its xattrs exceed a block".into()))?;
            let runs = allocator.allocate(1).ok_or_else(too_small)?;
            placement.xattrs = Xattrs::Block(runs[0].0);
            pieces.push((runs[0].0, Piece::Bytes(block)));
        }
        // kiln's own lost+found gets its blocks right after the root's.
        if id == ROOT && own_lost_found {
            let runs = allocator.allocate(4).ok_or_else(too_small)?;
            let blocks = directory_blocks(
                &[
                    (FIRST_INO, b".".as_slice(), 2),
                    (ROOT_INO, b"..".as_slice(), 2),
                ],
                4,
            );
            for (start, block) in block_starts(&runs).into_iter().zip(blocks) {
                pieces.push((start, Piece::Bytes(block)));
            }
            lost_found.extents = logical(&runs);
        }
    }

    // Inode tables.
    let mut tables: Vec<Vec<u8>> = vec![Vec::new(); geometry.groups as usize];
    let mut used_directories = vec![0u64; geometry.groups as usize];
    let mut put_inode = |number: u32, bytes: [u8; INODE_SIZE as usize], directory: bool| {
        let index = u64::from(number - 1);
        let group = (index / geometry.inodes_per_group) as usize;
        let at = ((index % geometry.inodes_per_group) * INODE_SIZE) as usize;
        let table = &mut tables[group];
        if table.len() < at + INODE_SIZE as usize {
            table.resize(at + INODE_SIZE as usize, 0);
        }
        table[at..at + INODE_SIZE as usize].copy_from_slice(&bytes);
        if directory {
            used_directories[group] += 1;
        }
    };
    if journal_length > 0 {
        let mut bytes = [0u8; INODE_SIZE as usize];
        let facts = InodeFacts {
            mode: 0o100600,
            uid: 0,
            gid: 0,
            mtime: 0,
            links: 1,
            size: journal_length * BLOCK,
        };
        facts.write(&mut bytes);
        write_data_map(&mut bytes, &journal)?;
        put_inode(JOURNAL_INO, bytes, false);
    }
    if own_lost_found {
        let mut bytes = [0u8; INODE_SIZE as usize];
        InodeFacts {
            mode: 0o040700,
            uid: 0,
            gid: 0,
            mtime: tree.inodes[ROOT].mtime,
            links: 2,
            size: 4 * BLOCK,
        }
        .write(&mut bytes);
        write_data_map(&mut bytes, &lost_found)?;
        put_inode(FIRST_INO, bytes, true);
    }
    let mut uuid_hasher = Hasher::new(Algorithm::Sha256);
    uuid_hasher.update(identity);
    for &id in &order.inodes {
        let inode = &tree.inodes[id];
        let placement = &placements[id];
        let directory = matches!(inode.kind, Kind::Directory(_));
        let links = match &inode.kind {
            Kind::Directory(_) => {
                let subdirectories =
                    tree.subdirectories(id) + u32::from(id == ROOT && own_lost_found);
                // dir_nlink: 1 stands for "too many to count".
                if subdirectories + 2 >= 65000 {
                    1
                } else {
                    subdirectories + 2
                }
            }
            _ if order.links[id] > 65000 => {
                return Err(unrepresentable(
                    id,
                    format!("{} hardlinks (ext4 allows 65000)", order.links[id]),
                ));
            }
            _ => order.links[id],
        };
        let size = match &inode.kind {
            Kind::File(content) => content.size,
            Kind::Directory(_) => placement.extents.iter().map(|e| e.2).sum::<u64>() * BLOCK,
            Kind::Symlink(target) => target.len() as u64,
            _ => 0,
        };
        let mut bytes = [0u8; INODE_SIZE as usize];
        InodeFacts {
            mode: inode.type_bits() | inode.mode,
            uid: inode.uid,
            gid: inode.gid,
            mtime: inode.mtime,
            links,
            size,
        }
        .write(&mut bytes);
        match &inode.kind {
            Kind::File(_) | Kind::Directory(_) => write_data_map(&mut bytes, placement)?,
            Kind::Symlink(target) if target.len() < 60 => {
                bytes[40..40 + target.len()].copy_from_slice(target)
            }
            Kind::Symlink(_) => write_data_map(&mut bytes, placement)?,
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                if *major < 256 && *minor < 256 {
                    put32(&mut bytes, 40, (major << 8) | minor);
                } else {
                    put32(&mut bytes, 44, encode_device(*major, *minor));
                }
            }
            Kind::Fifo => {}
        }
        match &placement.xattrs {
            Xattrs::None => {}
            Xattrs::InInode(body) => bytes[128 + EXTRA_ISIZE..].copy_from_slice(body),
            Xattrs::Block(block) => {
                put32(&mut bytes, 104, *block as u32);
                let sectors = u32_at(&bytes, 28) + (BLOCK / 512) as u32;
                put32(&mut bytes, 28, sectors);
            }
        }
        uuid_hasher.update(&bytes);
        put_inode(ino[id], bytes, directory);
    }
    for (start, piece) in &pieces {
        if let Piece::Bytes(bytes) = piece {
            uuid_hasher.update(&start.to_le_bytes());
            uuid_hasher.update(bytes);
        }
    }
    let uuid = uuid_from(&uuid_hasher.finish());
    if journal_length > 0
        && let Some((_, Piece::Bytes(journal_super))) = pieces.first_mut()
    {
        journal_super[0x30..0x40].copy_from_slice(&uuid);
    }

    // Bitmaps, descriptors, superblocks.
    let used_inodes_in = |group: u64| -> u64 {
        let first = group * geometry.inodes_per_group;
        used_inodes
            .saturating_sub(first)
            .min(geometry.inodes_per_group)
    };
    let mut descriptors = vec![0u8; (geometry.descriptor_blocks * BLOCK) as usize];
    let mut free_blocks_total = 0u64;
    let mut free_inodes_total = 0u64;
    for group in 0..geometry.groups {
        let start = geometry.start(group);
        let group_blocks = geometry.end(group) - start;
        let used = geometry.metadata_blocks(group) + allocator.used[group as usize];
        let free = group_blocks - used;
        let inodes_used = used_inodes_in(group);
        let free_inodes = geometry.inodes_per_group - inodes_used;
        free_blocks_total += free;
        free_inodes_total += free_inodes;
        let descriptor = &mut descriptors[(group * 32) as usize..(group * 32 + 32) as usize];
        put32(descriptor, 0, geometry.block_bitmap(group) as u32);
        put32(descriptor, 4, geometry.block_bitmap(group) as u32 + 1);
        put32(descriptor, 8, geometry.inode_table(group) as u32);
        put16(descriptor, 12, free as u16);
        put16(descriptor, 14, free_inodes as u16);
        put16(descriptor, 16, used_directories[group as usize] as u16);

        // Used blocks are a prefix of the group: metadata, then allocations in order.
        let mut block_bitmap = bitmap_prefix(used);
        for bit in group_blocks..BLOCKS_PER_GROUP {
            block_bitmap[(bit / 8) as usize] |= 1 << (bit % 8);
        }
        pieces.push((geometry.block_bitmap(group), Piece::Bytes(block_bitmap)));
        let mut inode_bitmap = bitmap_prefix(inodes_used);
        for bit in geometry.inodes_per_group..BLOCKS_PER_GROUP {
            inode_bitmap[(bit / 8) as usize] |= 1 << (bit % 8);
        }
        pieces.push((geometry.block_bitmap(group) + 1, Piece::Bytes(inode_bitmap)));
        let table = std::mem::take(&mut tables[group as usize]);
        if !table.is_empty() {
            pieces.push((geometry.inode_table(group), Piece::Bytes(table)));
        }
    }
    let superblock = Superblock {
        geometry: &geometry,
        free_blocks: free_blocks_total,
        free_inodes: free_inodes_total,
        uuid,
        journal: (journal_length > 0).then_some(&journal),
        journal_length,
    };
    for group in (0..geometry.groups).filter(|g| has_superblock(*g)) {
        let mut block = vec![0u8; (BLOCK * (1 + geometry.descriptor_blocks)) as usize];
        let at = if group == 0 { 1024 } else { 0 };
        superblock.write(&mut block[at..at + 1024], group)?;
        block[BLOCK as usize..].copy_from_slice(&descriptors);
        pieces.push((geometry.start(group), Piece::Bytes(block)));
    }

    // Front to back.
    pieces.sort_by_key(|(start, _)| *start);
    let mut emitter = Emitter::create(output, size, on_written)?;
    for (start, piece) in pieces {
        let at = start * BLOCK;
        match piece {
            Piece::Bytes(bytes) => emitter.bytes(at, &bytes)?,
            Piece::Content {
                content,
                offset,
                bytes,
            } => {
                emitter.copy(at, &mut objects.reader(content, offset), bytes)?;
            }
        }
    }
    Ok(emitter.finish(size)?)
}

/// Runs → extents `(logical block, physical block, length)`.
fn logical(runs: &[(u64, u64)]) -> Vec<(u64, u64, u64)> {
    let mut logical = 0;
    runs.iter()
        .map(|&(start, length)| {
            let extent = (logical, start, length);
            logical += length;
            extent
        })
        .collect()
}

/// Every block of the runs, in order.
fn block_starts(runs: &[(u64, u64)]) -> Vec<u64> {
    runs.iter()
        .flat_map(|&(start, length)| start..start + length)
        .collect()
}

/// A bitmap block with the first `count` bits set.
fn bitmap_prefix(count: u64) -> Vec<u8> {
    let mut bitmap = vec![0u8; BLOCK as usize];
    let full = (count / 8) as usize;
    bitmap[..full].fill(0xff);
    if !count.is_multiple_of(8) {
        bitmap[full] = (1u8 << (count % 8)) - 1;
    }
    bitmap
}

/// Linear directory blocks for `entries` (`.` and `..` first), at least `minimum` blocks.
fn directory_blocks(entries: &[(u32, &[u8], u8)], minimum: usize) -> Vec<Vec<u8>> {
    let mut blocks = Vec::new();
    let mut block = vec![0u8; BLOCK as usize];
    let mut position = 0usize;
    let mut last = 0usize;
    for &(number, name, kind) in entries {
        let need = (8 + name.len()).next_multiple_of(4);
        if position + need > BLOCK as usize {
            put16(&mut block, last + 4, (BLOCK as usize - last) as u16);
            blocks.push(std::mem::replace(&mut block, vec![0u8; BLOCK as usize]));
            position = 0;
        }
        put32(&mut block, position, number);
        put16(&mut block, position + 4, need as u16);
        block[position + 6] = name.len() as u8;
        block[position + 7] = kind;
        block[position + 8..position + 8 + name.len()].copy_from_slice(name);
        last = position;
        position += need;
    }
    put16(&mut block, last + 4, (BLOCK as usize - last) as u16);
    blocks.push(block);
    while blocks.len() < minimum {
        let mut empty = vec![0u8; BLOCK as usize];
        put16(&mut empty, 4, BLOCK as u16);
        blocks.push(empty);
    }
    blocks
}

/// The fields every inode has.
struct InodeFacts {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    links: u32,
    size: u64,
}

impl InodeFacts {
    fn write(&self, bytes: &mut [u8; INODE_SIZE as usize]) {
        let seconds = self.mtime.clamp(-(1 << 31), (1 << 33) + (1 << 31) - 1);
        let low = seconds as i32;
        let epoch = (((seconds - i64::from(low)) >> 32) & 3) as u32;
        put16(bytes, 0, self.mode as u16);
        put16(bytes, 2, self.uid as u16);
        put32(bytes, 4, self.size as u32);
        for at in [8, 12, 16, 144] {
            put32(bytes, at, low as u32);
        }
        put16(bytes, 24, self.gid as u16);
        put16(bytes, 26, self.links.min(65535) as u16);
        put32(bytes, 108, (self.size >> 32) as u32);
        put16(bytes, 120, (self.uid >> 16) as u16);
        put16(bytes, 122, (self.gid >> 16) as u16);
        put16(bytes, 128, EXTRA_ISIZE as u16);
        for at in [132, 136, 140, 148] {
            put32(bytes, at, epoch);
        }
    }
}

/// The extent tree (and block count) of an inode with data blocks.
fn write_data_map(bytes: &mut [u8; INODE_SIZE as usize], placement: &Placement) -> Result<()> {
    let data: u64 = placement.extents.iter().map(|e| e.2).sum();
    let sectors = (data + placement.leaves.len() as u64) * (BLOCK / 512);
    let sectors = u32::try_from(sectors).map_err(|_| RootfsError::Unrepresentable {
        path: "a file".into(),
        reason: "larger than 2 TiB".into(),
    })?;
    put32(bytes, 28, sectors);
    put32(bytes, 32, EXTENTS_FL);
    let node = &mut bytes[40..100];
    if placement.leaves.is_empty() {
        extent_node(node, placement.extents.len(), 4, 0);
        for (slot, extent) in placement.extents.iter().enumerate() {
            put_extent(&mut node[12 + slot * 12..], *extent);
        }
    } else {
        extent_node(node, placement.leaves.len(), 4, 1);
        for (slot, &leaf) in placement.leaves.iter().enumerate() {
            let first = placement.extents[slot * LEAF_CAPACITY].0;
            let index = &mut node[12 + slot * 12..24 + slot * 12];
            put32(index, 0, first as u32);
            put32(index, 4, leaf as u32);
            put16(index, 8, (leaf >> 32) as u16);
        }
    }
    Ok(())
}

/// An extent-tree node header.
fn extent_node(node: &mut [u8], entries: usize, capacity: usize, depth: u16) {
    put16(node, 0, EXTENT_MAGIC);
    put16(node, 2, entries as u16);
    put16(node, 4, capacity as u16);
    put16(node, 6, depth);
}

fn put_extent(slot: &mut [u8], (logical, physical, length): (u64, u64, u64)) {
    put32(slot, 0, logical as u32);
    put16(slot, 4, length as u16);
    put16(slot, 6, (physical >> 32) as u16);
    put32(slot, 8, physical as u32);
}

/// The journal's superblock (jbd2 v2, big-endian, clean, empty).
fn journal_superblock(blocks: u64) -> Vec<u8> {
    let mut block = vec![0u8; BLOCK as usize];
    let mut put = |at: usize, value: u32| block[at..at + 4].copy_from_slice(&value.to_be_bytes());
    put(0x0, 0xC03B_3998);
    put(0x4, 4);
    put(0xC, BLOCK as u32);
    put(0x10, blocks as u32);
    put(0x14, 1);
    put(0x18, 1);
    put(0x40, 1);
    block
}

/// An xattr: ext4's name index, the name without its prefix, the value.
type Attr = (u8, Vec<u8>, Vec<u8>);

/// The tree's xattrs in ext4's terms, sorted as ext4 keeps them in blocks.
fn xattr_entries(xattrs: &BTreeMap<Vec<u8>, Vec<u8>>) -> std::result::Result<Vec<Attr>, String> {
    let mut out = Vec::new();
    for (name, value) in xattrs {
        let show = || format!("{:?}", String::from_utf8_lossy(name));
        let Some((index, suffix)) = xattr_split(name) else {
            return Err(format!(
                "the xattr {} has a namespace ext4 cannot store (user., trusted., security., POSIX ACLs)",
                show()
            ));
        };
        let value = if matches!(index, 2 | 3) {
            acl_to_disk(value).ok_or_else(|| format!("the ACL {} is malformed", show()))?
        } else {
            value.clone()
        };
        if suffix.len() > 255 {
            return Err(format!("the xattr name {} is too long", show()));
        }
        out.push((index, suffix.to_vec(), value));
    }
    out.sort_by(|a, b| (a.0, a.1.len(), &a.1).cmp(&(b.0, b.1.len(), &b.1)));
    Ok(out)
}

/// A POSIX ACL in the kernel's xattr form (version 2) → ext4's on-disk form (version 1).
fn acl_to_disk(value: &[u8]) -> Option<Vec<u8>> {
    if value.len() < 4 || !(value.len() - 4).is_multiple_of(8) || value[..4] != 2u32.to_le_bytes() {
        return None;
    }
    let mut out = 1u32.to_le_bytes().to_vec();
    for entry in value[4..].chunks(8) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        out.extend_from_slice(&entry[..4]);
        match tag {
            0x01 | 0x04 | 0x10 | 0x20 => {}
            0x02 | 0x08 => out.extend_from_slice(&entry[4..8]),
            _ => return None,
        }
    }
    Some(out)
}

/// ext4's hash of one xattr entry (`ext2fs_ext_attr_hash_entry`).
fn entry_hash(name: &[u8], value: &[u8]) -> u32 {
    let mut hash = 0u32;
    for &c in name {
        hash = (hash << 5) ^ (hash >> 27) ^ u32::from(c);
    }
    for chunk in value.chunks(4) {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        hash = (hash << 16) ^ (hash >> 16) ^ u32::from_le_bytes(word);
    }
    hash
}

/// Entries and values laid out in `space` bytes: entries from the front,
/// values from the back; `None` when they do not fit. Value offsets count
/// from `base` (the start of the entries in an inode, of the block in a block).
fn xattr_region(attrs: &[Attr], space: usize, entries_at: usize, base: usize) -> Option<Vec<u8>> {
    let mut region = vec![0u8; space];
    let mut entry = entries_at;
    let mut value_end = space;
    for (index, name, value) in attrs {
        let entry_size = (16 + name.len()).next_multiple_of(4);
        let value_size = value.len().next_multiple_of(4);
        if entry + entry_size + 4 > value_end.checked_sub(value_size)? {
            return None;
        }
        value_end -= value_size;
        region[value_end..value_end + value.len()].copy_from_slice(value);
        region[entry] = name.len() as u8;
        region[entry + 1] = *index;
        put16(
            &mut region,
            entry + 2,
            if value.is_empty() {
                0
            } else {
                (value_end - base) as u16
            },
        );
        put32(&mut region, entry + 8, value.len() as u32);
        put32(&mut region, entry + 12, entry_hash(name, value));
        region[entry + 16..entry + 16 + name.len()].copy_from_slice(name);
        entry += entry_size;
    }
    Some(region)
}

/// The xattr area after the inode's fixed part, when everything fits there.
fn in_inode_xattrs(attrs: &[Attr]) -> Option<Vec<u8>> {
    if attrs.is_empty() {
        return None;
    }
    let space = INODE_SIZE as usize - 128 - EXTRA_ISIZE;
    let mut region = xattr_region(attrs, space, 4, 4)?;
    put32(&mut region, 0, XATTR_MAGIC);
    Some(region)
}

/// One xattr block (refcount 1) holding every xattr.
fn xattr_block(attrs: &[Attr]) -> Option<Vec<u8>> {
    let mut block = xattr_region(attrs, BLOCK as usize, 32, 0)?;
    put32(&mut block, 0, XATTR_MAGIC);
    put32(&mut block, 4, 1); // refcount
    put32(&mut block, 8, 1); // blocks
    let mut hash = 0u32;
    for (_, name, value) in attrs {
        hash = (hash << 16) ^ (hash >> 16) ^ entry_hash(name, value);
    }
    put32(&mut block, 12, hash);
    Some(block)
}

struct Superblock<'a> {
    geometry: &'a Geometry,
    free_blocks: u64,
    free_inodes: u64,
    uuid: [u8; 16],
    journal: Option<&'a Placement>,
    journal_length: u64,
}

impl Superblock<'_> {
    fn write(&self, sb: &mut [u8], group: u64) -> Result<()> {
        let g = self.geometry;
        put32(sb, 0, g.inodes() as u32);
        put32(sb, 4, g.blocks as u32);
        put32(sb, 8, (g.blocks / 20) as u32);
        put32(sb, 12, self.free_blocks as u32);
        put32(sb, 16, self.free_inodes as u32);
        put32(sb, 20, 0); // first data block
        put32(sb, 24, 2); // 4 KiB blocks
        put32(sb, 28, 2);
        put32(sb, 32, BLOCKS_PER_GROUP as u32);
        put32(sb, 36, BLOCKS_PER_GROUP as u32);
        put32(sb, 40, g.inodes_per_group as u32);
        put16(sb, 54, 0xFFFF); // max mount count: never forced
        put16(sb, 56, 0xEF53);
        put16(sb, 58, 1); // clean
        put16(sb, 60, 1); // errors: continue
        put32(sb, 76, 1); // dynamic revision
        put32(sb, 84, FIRST_INO);
        put16(sb, 88, INODE_SIZE as u16);
        put16(sb, 90, group as u16);
        let journal = self.journal.is_some();
        // ext_attr, dir_index (the kernel indexes a directory once it
        // outgrows a block), has_journal
        put32(sb, 92, 0x8 | 0x20 | if journal { 0x4 } else { 0 });
        put32(sb, 96, 0x2 | 0x40); // filetype, extents
        put32(sb, 100, 0x1 | 0x2 | 0x20 | 0x40); // sparse_super, large_file, dir_nlink, extra_isize
        sb[104..120].copy_from_slice(&self.uuid);
        sb[120..126].copy_from_slice(b"rootfs");
        if let Some(placement) = self.journal {
            put32(sb, 224, JOURNAL_INO);
            let mut inode = [0u8; INODE_SIZE as usize];
            write_data_map(&mut inode, placement)?;
            sb[268..328].copy_from_slice(&inode[40..100]);
            put32(
                sb,
                268 + 15 * 4,
                ((self.journal_length * BLOCK) >> 32) as u32,
            );
            put32(sb, 268 + 16 * 4, (self.journal_length * BLOCK) as u32);
            sb[253] = 1; // s_jnl_backup_type: EXT3_JNL_BACKUP_BLOCKS
        }
        for (index, chunk) in self.uuid.chunks(4).enumerate() {
            sb[236 + index * 4..240 + index * 4].copy_from_slice(chunk);
        }
        sb[252] = 1; // half_md4, the hash of the directories the kernel indexes
        put16(sb, 348, EXTRA_ISIZE as u16);
        put16(sb, 350, EXTRA_ISIZE as u16);
        put32(sb, 352, 1); // signed directory hash, as mke2fs sets on x86
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_backups_follow_sparse_super() {
        let groups: Vec<u64> = (0..60).filter(|g| has_superblock(*g)).collect();
        assert_eq!(groups, vec![0, 1, 3, 5, 7, 9, 25, 27, 49]);
    }

    #[test]
    fn directory_blocks_fill_and_chain_rec_len() {
        let name = vec![b'n'; 100];
        let mut entries: Vec<(u32, &[u8], u8)> = vec![(2, b".", 2), (2, b"..", 2)];
        for n in 0..50 {
            entries.push((12 + n, &name, 1));
        }
        let blocks = directory_blocks(&entries, 1);
        assert_eq!(blocks.len(), 2);
        for block in &blocks {
            // rec_lens chain exactly to the end of every block
            let mut at = 0usize;
            while at < BLOCK as usize {
                let rec_len = u16::from_le_bytes([block[at + 4], block[at + 5]]) as usize;
                assert!(rec_len >= 12);
                at += rec_len;
            }
            assert_eq!(at, BLOCK as usize);
        }
    }

    #[test]
    fn acls_are_converted_to_ext4s_short_form() {
        let mut vfs = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 6u16, u32::MAX),
            (2, 4, 1000),
            (4, 4, u32::MAX),
            (0x10, 4, u32::MAX),
            (0x20, 0, u32::MAX),
        ] {
            vfs.extend_from_slice(&tag.to_le_bytes());
            vfs.extend_from_slice(&perm.to_le_bytes());
            vfs.extend_from_slice(&id.to_le_bytes());
        }
        let disk = acl_to_disk(&vfs).unwrap();
        assert_eq!(disk.len(), 4 + 4 * 4 + 8);
        assert_eq!(&disk[..4], &1u32.to_le_bytes());
        assert!(acl_to_disk(b"junk").is_none());
    }

    #[test]
    fn xattrs_go_in_the_inode_until_they_do_not_fit() {
        let small = vec![(6u8, b"capability".to_vec(), vec![1u8; 20])];
        assert!(in_inode_xattrs(&small).is_some());
        let large = vec![(1u8, b"big".to_vec(), vec![1u8; 200])];
        assert!(in_inode_xattrs(&large).is_none());
        assert!(xattr_block(&large).is_some());
    }
}
