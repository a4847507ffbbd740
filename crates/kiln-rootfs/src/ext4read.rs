//! Reading an ext4 image without mounting it (so no root is needed): what
//! `kiln snapshot` uses to compare a sandbox disk with its image. It reads
//! what a disk made by kiln can hold after a VM wrote to it: extent-mapped
//! files (any depth; holes and unwritten extents read as zeros), linear and
//! htree directories (read linearly), fast and extent-mapped symlinks,
//! device numbers in both encodings, xattrs in the inode and in a block
//! (POSIX ACLs converted back to the kernel's xattr form), 32- and 64-bit
//! group descriptors. A filesystem with a journal still to replay, or with
//! features it does not read (inline data, xattr inodes, encryption,
//! `meta_bg`, block-mapped files), is refused with an error saying so.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use fs_err as fs;

use crate::ext4::{EXTENT_MAGIC, EXTENTS_FL, XATTR_MAGIC};
use crate::ondisk::{u16_at, u32_at, xattr_name};

const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_EA_INODE: u32 = 0x400;
const INCOMPAT_INLINE_DATA: u32 = 0x8000;
const INCOMPAT_ENCRYPT: u32 = 0x10000;
/// Incompatible features this reader understands (filetype, recover is
/// refused separately, extents, 64bit, flex_bg, mmp, csum_seed, largedir).
const INCOMPAT_KNOWN: u32 = 0x2 | 0x40 | 0x80 | 0x100 | 0x200 | 0x2000 | 0x4000;
/// The disk belongs to a sandbox, so its bytes are untrusted: bounds on
/// what one directory, one symlink and one extent tree may make kiln read.
const MAX_DIRECTORY: u64 = 256 << 20;
const MAX_EXTENTS: usize = 1 << 20;
const MAX_SYMLINK: u64 = 4096;
const MAX_ENTRIES: usize = 1 << 20;
/// ext4's own limit on a file's size (2^32 blocks of 4 KiB).
pub const MAX_FILE: u64 = 16 << 40;

fn invalid(what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// An ext4 filesystem image opened for reading.
pub struct Ext4Image {
    file: fs::File,
    path: PathBuf,
    block: u64,
    /// The filesystem's size in bytes (its block count).
    size: u64,
    inodes_per_group: u64,
    inode_size: u64,
    descriptors: Vec<u8>,
    descriptor_size: usize,
    wide: bool,
}

/// The facts of one inode that a diff needs.
#[derive(Debug, Clone)]
pub struct Ext4Inode {
    /// Inode number.
    pub number: u32,
    /// `S_IF*` and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub links: u32,
    flags: u32,
    block: [u8; 60],
    file_acl: u64,
    raw: Vec<u8>,
}

impl Ext4Inode {
    /// `(major, minor)` of a device node.
    pub fn device(&self) -> (u32, u32) {
        let old = u32::from_le_bytes(self.block[0..4].try_into().unwrap());
        if old != 0 {
            return ((old >> 8) & 0xff, old & 0xff);
        }
        let new = u32::from_le_bytes(self.block[4..8].try_into().unwrap());
        ((new & 0xfff00) >> 8, (new & 0xff) | ((new >> 12) & 0xfff00))
    }
}

impl Ext4Image {
    /// Opens the image at `path`, checking it is an ext4 filesystem this
    /// reader can read consistently.
    pub fn open(path: &Path) -> std::io::Result<Ext4Image> {
        let file = fs::File::open(path)?;
        let mut superblock = [0u8; 1024];
        file.file().read_exact_at(&mut superblock, 1024)?;
        if u16_at(&superblock, 56) != 0xEF53 {
            return Err(invalid(format!(
                "{} is not an ext4 filesystem",
                path.display()
            )));
        }
        let incompat = u32_at(&superblock, 96);
        if incompat & INCOMPAT_RECOVER != 0 {
            return Err(invalid(format!(
                "{} has a journal still to replay (it was not cleanly unmounted: stop the VM using it, or run e2fsck -p on it)",
                path.display()
            )));
        }
        for (bit, name) in [
            (INCOMPAT_META_BG, "meta_bg"),
            (INCOMPAT_EA_INODE, "ea_inode"),
            (INCOMPAT_INLINE_DATA, "inline_data"),
            (INCOMPAT_ENCRYPT, "encrypt"),
        ] {
            if incompat & bit != 0 {
                return Err(invalid(format!(
                    "{} uses the ext4 feature {name}, which kiln does not read",
                    path.display()
                )));
            }
        }
        if incompat & !(INCOMPAT_KNOWN | INCOMPAT_RECOVER) != 0 {
            return Err(invalid(format!(
                "{} uses ext4 features kiln does not read (incompat {:#x})",
                path.display(),
                incompat
            )));
        }
        let block = 1024u64 << u32_at(&superblock, 24).min(6);
        let blocks = u64::from(u32_at(&superblock, 4))
            | if incompat & INCOMPAT_64BIT != 0 {
                u64::from(u32_at(&superblock, 336)) << 32
            } else {
                0
            };
        let blocks_per_group = u64::from(u32_at(&superblock, 32));
        let groups = blocks.div_ceil(blocks_per_group.max(1));
        let wide = incompat & INCOMPAT_64BIT != 0;
        let descriptor_size = if wide {
            usize::from(u16_at(&superblock, 254)).max(32)
        } else {
            32
        };
        let inode_size = if u32_at(&superblock, 76) == 0 {
            128
        } else {
            u64::from(u16_at(&superblock, 88))
        };
        let first_data_block = u64::from(u32_at(&superblock, 20));
        let length = file.metadata()?.len();
        let inodes_per_group = u64::from(u32_at(&superblock, 40));
        if !(128..=1024.min(block)).contains(&inode_size)
            || !inode_size.is_power_of_two()
            || !(1..=8 * block).contains(&inodes_per_group)
            || !(8..=8 * block).contains(&blocks_per_group)
            || blocks.checked_mul(block).is_none_or(|bytes| bytes > length)
        {
            return Err(invalid(format!(
                "{} has a damaged ext4 superblock",
                path.display()
            )));
        }
        let mut descriptors = vec![0u8; groups as usize * descriptor_size];
        file.file()
            .read_exact_at(&mut descriptors, (first_data_block + 1) * block)?;
        Ok(Ext4Image {
            file,
            path: path.to_path_buf(),
            block,
            size: blocks * block,
            inodes_per_group,
            inode_size,
            descriptors,
            descriptor_size,
            wide,
        })
    }

    /// The filesystem's size in bytes: what all its files' data fits in,
    /// unless some are sparse.
    pub fn capacity(&self) -> u64 {
        self.size
    }

    /// An error about this image: `PATH: what`.
    fn damaged(&self, what: impl std::fmt::Display) -> std::io::Error {
        invalid(format!("{}: {what}", self.path.display()))
    }

    /// The byte offset of block `number`, or an error for one beyond any disk.
    fn offset(&self, number: u64) -> std::io::Result<u64> {
        number
            .checked_mul(self.block)
            .ok_or_else(|| self.damaged(format!("block {number} is out of range")))
    }

    fn read_block(&self, number: u64) -> std::io::Result<Vec<u8>> {
        let mut buffer = vec![0u8; self.block as usize];
        self.file
            .file()
            .read_exact_at(&mut buffer, self.offset(number)?)?;
        Ok(buffer)
    }

    /// Reads inode `number`.
    pub fn inode(&self, number: u32) -> std::io::Result<Ext4Inode> {
        let index = u64::from(
            number
                .checked_sub(1)
                .ok_or_else(|| self.damaged("inode 0"))?,
        );
        let group = (index / self.inodes_per_group) as usize;
        let descriptor = self
            .descriptors
            .get(group * self.descriptor_size..(group + 1) * self.descriptor_size)
            .ok_or_else(|| self.damaged(format!("inode {number} is beyond the last group")))?;
        let mut table = u64::from(u32_at(descriptor, 8));
        if self.wide && self.descriptor_size >= 64 {
            table |= u64::from(u32_at(descriptor, 0x28)) << 32;
        }
        let mut raw = vec![0u8; self.inode_size as usize];
        let at = self
            .offset(table)?
            .checked_add((index % self.inodes_per_group) * self.inode_size)
            .ok_or_else(|| self.damaged(format!("inode {number} is out of range")))?;
        self.file.file().read_exact_at(&mut raw, at)?;
        let extra = if raw.len() > 128 {
            usize::from(u16_at(&raw, 128))
        } else {
            0
        };
        let mut mtime = i64::from(u32_at(&raw, 16) as i32);
        if extra >= 12 && raw.len() >= 140 {
            mtime += i64::from(u32_at(&raw, 136) & 3) << 32;
        }
        Ok(Ext4Inode {
            number,
            mode: u32::from(u16_at(&raw, 0)),
            uid: u32::from(u16_at(&raw, 2)) | (u32::from(u16_at(&raw, 120)) << 16),
            gid: u32::from(u16_at(&raw, 24)) | (u32::from(u16_at(&raw, 122)) << 16),
            size: u64::from(u32_at(&raw, 4)) | (u64::from(u32_at(&raw, 108)) << 32),
            mtime,
            links: u32::from(u16_at(&raw, 26)),
            flags: u32_at(&raw, 32),
            block: raw[40..100].try_into().unwrap(),
            file_acl: u64::from(u32_at(&raw, 104)) | (u64::from(u16_at(&raw, 118)) << 32),
            raw,
        })
    }

    /// The extents of an inode: `(logical block, physical block, length,
    /// written)`, sorted.
    fn extents(&self, inode: &Ext4Inode) -> std::io::Result<Vec<(u64, u64, u64, bool)>> {
        if inode.flags & EXTENTS_FL == 0 {
            if inode.block.iter().all(|b| *b == 0) {
                return Ok(Vec::new());
            }
            return Err(self.damaged(format!(
                "inode {} maps its blocks without extents, which kiln does not read",
                inode.number
            )));
        }
        let mut out = Vec::new();
        let mut nodes = 0usize;
        self.walk_extents(&inode.block, 0, inode.number, &mut out, &mut nodes)?;
        out.sort_by_key(|e| e.0);
        if out.windows(2).any(|w| w[0].0 + w[0].2 > w[1].0) {
            return Err(self.damaged(format!("inode {} has overlapping extents", inode.number)));
        }
        Ok(out)
    }

    fn walk_extents(
        &self,
        node: &[u8],
        level: u32,
        number: u32,
        out: &mut Vec<(u64, u64, u64, bool)>,
        nodes: &mut usize,
    ) -> std::io::Result<()> {
        *nodes += 1;
        if out.len() > MAX_EXTENTS || *nodes > MAX_EXTENTS / 64 {
            return Err(self.damaged(format!(
                "inode {number} has an extent tree too large to be real"
            )));
        }
        if u16_at(node, 0) != EXTENT_MAGIC || level > 5 {
            return Err(self.damaged(format!("inode {number} has a damaged extent tree")));
        }
        let entries = usize::from(u16_at(node, 2));
        let depth = u16_at(node, 6);
        for index in 0..entries {
            let at = 12 + index * 12;
            let entry = node
                .get(at..at + 12)
                .ok_or_else(|| self.damaged(format!("inode {number}: extent node overflows")))?;
            if depth == 0 {
                let raw_length = u64::from(u16_at(entry, 4));
                let (length, written) = if raw_length > 32768 {
                    (raw_length - 32768, false)
                } else {
                    (raw_length, true)
                };
                let physical = (u64::from(u16_at(entry, 6)) << 32) | u64::from(u32_at(entry, 8));
                out.push((u64::from(u32_at(entry, 0)), physical, length, written));
            } else {
                let leaf = (u64::from(u16_at(entry, 8)) << 32) | u64::from(u32_at(entry, 4));
                let child = self.read_block(leaf)?;
                self.walk_extents(&child, level + 1, number, out, nodes)?;
            }
        }
        Ok(())
    }

    /// The content of a file (or directory, or long symlink).
    pub fn reader(&self, inode: &Ext4Inode) -> std::io::Result<Ext4Reader<'_>> {
        if inode.size > MAX_FILE {
            return Err(self.damaged(format!(
                "inode {} claims {} bytes, more than ext4 allows",
                inode.number, inode.size
            )));
        }
        Ok(Ext4Reader {
            image: self,
            extents: self.extents(inode)?,
            position: 0,
            size: inode.size,
        })
    }

    /// The entries of a directory (not `.` and `..`): name → inode number, sorted.
    pub fn read_dir(&self, inode: &Ext4Inode) -> std::io::Result<Vec<(Vec<u8>, u32)>> {
        let content = self.read_capped(inode, MAX_DIRECTORY, "directory")?;
        let mut entries = Vec::new();
        let mut at = 0usize;
        while at + 8 <= content.len() {
            let number = u32_at(&content, at);
            let rec_len = usize::from(u16_at(&content, at + 4));
            let name_len = usize::from(content[at + 6]);
            if rec_len < 8 || at + rec_len > content.len() || 8 + name_len > rec_len {
                return Err(self.damaged(format!("directory inode {} is damaged", inode.number)));
            }
            let name = &content[at + 8..at + 8 + name_len];
            if number != 0 && name != b"." && name != b".." {
                if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
                    return Err(self.damaged(format!(
                        "directory inode {} holds an impossible name {:?}",
                        inode.number,
                        String::from_utf8_lossy(name)
                    )));
                }
                if entries.len() >= MAX_ENTRIES {
                    return Err(self.damaged(format!(
                        "directory inode {} holds more than {MAX_ENTRIES} entries",
                        inode.number
                    )));
                }
                entries.push((name.to_vec(), number));
            }
            at += rec_len;
        }
        entries.sort();
        Ok(entries)
    }

    /// A symlink's target.
    pub fn read_link(&self, inode: &Ext4Inode) -> std::io::Result<Vec<u8>> {
        if inode.flags & EXTENTS_FL == 0 && inode.size < 60 {
            return Ok(inode.block[..inode.size as usize].to_vec());
        }
        self.read_capped(inode, MAX_SYMLINK, "symlink")
    }

    /// All of a `what` inode's content, refused above `cap` bytes.
    fn read_capped(&self, inode: &Ext4Inode, cap: u64, what: &str) -> std::io::Result<Vec<u8>> {
        if inode.size > cap {
            return Err(self.damaged(format!(
                "{what} inode {} claims {} bytes",
                inode.number, inode.size
            )));
        }
        let mut content = Vec::new();
        self.reader(inode)?.read_to_end(&mut content)?;
        Ok(content)
    }

    /// Extended attributes: in the inode, then in its xattr block.
    pub fn xattrs(&self, inode: &Ext4Inode) -> std::io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        let mut found = BTreeMap::new();
        let raw = &inode.raw;
        if raw.len() > 128 {
            let start = 128 + usize::from(u16_at(raw, 128));
            if start + 4 <= raw.len() && u32_at(raw, start) == XATTR_MAGIC {
                let region = &raw[start + 4..];
                self.xattr_entries(region, 0, region, inode.number, &mut found)?;
            }
        }
        if inode.file_acl != 0 {
            let block = self.read_block(inode.file_acl)?;
            if u32_at(&block, 0) != XATTR_MAGIC {
                return Err(
                    self.damaged(format!("inode {} has a damaged xattr block", inode.number))
                );
            }
            self.xattr_entries(&block, 32, &block, inode.number, &mut found)?;
        }
        Ok(found)
    }

    fn xattr_entries(
        &self,
        entries: &[u8],
        mut at: usize,
        values: &[u8],
        number: u32,
        found: &mut BTreeMap<Vec<u8>, Vec<u8>>,
    ) -> std::io::Result<()> {
        let damaged = || self.damaged(format!("inode {number}: damaged xattrs"));
        while at + 4 <= entries.len() && u32_at(entries, at) != 0 {
            let header = entries.get(at..at + 16).ok_or_else(damaged)?;
            let name_len = usize::from(header[0]);
            let index = header[1];
            let value_offset = usize::from(u16_at(header, 2));
            if u32_at(header, 4) != 0 {
                return Err(self.damaged(format!(
                    "inode {number}: an xattr stored in its own inode, which kiln does not read"
                )));
            }
            let value_size = u32_at(header, 8) as usize;
            let suffix = entries
                .get(at + 16..at + 16 + name_len)
                .ok_or_else(damaged)?;
            let value = values
                .get(value_offset..value_offset + value_size)
                .ok_or_else(damaged)?;
            let name = xattr_name(index, suffix).ok_or_else(damaged)?;
            let value = if index == 2 || index == 3 {
                acl_from_disk(value).ok_or_else(damaged)?
            } else {
                value.to_vec()
            };
            found.insert(name, value);
            at += (16 + name_len).next_multiple_of(4);
        }
        Ok(())
    }
}

/// ext4's on-disk POSIX ACL (version 1, short entries for the owner, group,
/// mask and other) → the kernel's xattr form (version 2).
fn acl_from_disk(value: &[u8]) -> Option<Vec<u8>> {
    if value.len() < 4 || u32_at(value, 0) != 1 {
        return None;
    }
    let mut out = 2u32.to_le_bytes().to_vec();
    let mut at = 4;
    while at < value.len() {
        let head = value.get(at..at + 4)?;
        let tag = u16_at(head, 0);
        out.extend_from_slice(head);
        match tag {
            0x01 | 0x04 | 0x10 | 0x20 => {
                out.extend_from_slice(&u32::MAX.to_le_bytes());
                at += 4;
            }
            0x02 | 0x08 => {
                out.extend_from_slice(value.get(at + 4..at + 8)?);
                at += 8;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Reads a file's content through its extents.
pub struct Ext4Reader<'a> {
    image: &'a Ext4Image,
    extents: Vec<(u64, u64, u64, bool)>,
    position: u64,
    size: u64,
}

impl Read for Ext4Reader<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if self.position >= self.size || buffer.is_empty() {
            return Ok(0);
        }
        let block = self.image.block;
        let logical = self.position / block;
        let within = self.position % block;
        let left = (self.size - self.position).min(buffer.len() as u64);
        // The first extent ending after `logical` (extents are sorted, disjoint).
        let index = self
            .extents
            .partition_point(|(start, _, length, _)| start + length <= logical);
        let found = self
            .extents
            .get(index)
            .filter(|(start, _, _, _)| *start <= logical);
        let n = match found {
            Some(&(start, physical, length, written)) => {
                let run = (start + length - logical) * block - within;
                let n = left.min(run) as usize;
                if written {
                    let at = self
                        .image
                        .offset(physical + (logical - start))?
                        .checked_add(within)
                        .ok_or_else(|| self.image.damaged("an extent out of range"))?;
                    self.image.file.file().read_exact_at(&mut buffer[..n], at)?;
                } else {
                    buffer[..n].fill(0);
                }
                n
            }
            None => {
                // A hole: zeros up to the next extent.
                let next = self
                    .extents
                    .get(index)
                    .map_or(u64::MAX, |e| e.0.saturating_mul(block) - self.position);
                let n = left.min(next) as usize;
                buffer[..n].fill(0);
                n
            }
        };
        self.position += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acls_come_back_in_the_xattr_form_and_truncated_ones_are_refused() {
        // ext4 form: owner rw (short), user 1000 r (long), other none (short).
        let mut disk = 1u32.to_le_bytes().to_vec();
        disk.extend_from_slice(&[0x01, 0, 6, 0]);
        disk.extend_from_slice(&[0x02, 0, 4, 0]);
        disk.extend_from_slice(&1000u32.to_le_bytes());
        disk.extend_from_slice(&[0x20, 0, 0, 0]);
        let vfs = acl_from_disk(&disk).unwrap();
        assert_eq!(vfs.len(), 4 + 3 * 8);
        assert_eq!(&vfs[..4], &2u32.to_le_bytes());
        assert_eq!(
            &vfs[4 + 4..4 + 8],
            &u32::MAX.to_le_bytes(),
            "no id for the owner"
        );
        assert_eq!(&vfs[12 + 4..12 + 8], &1000u32.to_le_bytes());
        assert!(acl_from_disk(&[1, 0, 0, 0, 1]).is_none());
        assert!(acl_from_disk(&[1, 0, 0, 0, 2, 0, 4, 0, 1]).is_none());
    }
}
