//! Tree → initramfs: a newc ("070701") cpio archive, gzip-compressed, as the
//! Linux kernel unpacks it. Ownership, modes and device numbers come from the
//! tree. Hardlinks share an inode number, with the data on the last link (as
//! GNU cpio writes them). newc has no room for xattrs: they are dropped.

use std::collections::HashMap;
use std::io::{self, Write};

use crate::objects::ObjectDir;
use crate::tree::{InodeId, Kind, Tree};

/// Writes `tree` as a gzip-compressed newc cpio archive to `output`.
pub fn write_initramfs(tree: &Tree, objects: &ObjectDir, output: impl Write) -> io::Result<()> {
    let mut gzip = flate2::write::GzEncoder::new(
        io::BufWriter::with_capacity(1 << 20, output),
        flate2::Compression::new(6),
    );
    write_cpio(tree, objects, &mut gzip)?;
    gzip.finish()?.flush()
}

/// Writes `tree` as an uncompressed newc cpio archive.
pub fn write_cpio(tree: &Tree, objects: &ObjectDir, output: &mut impl Write) -> io::Result<()> {
    let links = tree.link_counts();
    let paths = tree.walk();
    // Which path of a multiply-linked file carries the data: the last one.
    let mut last_link: HashMap<InodeId, usize> = HashMap::new();
    for (index, (_, inode)) in paths.iter().enumerate() {
        last_link.insert(*inode, index);
    }
    let mut numbers: HashMap<InodeId, u32> = HashMap::new();
    for (index, (path, inode_id)) in paths.iter().enumerate() {
        let inode = &tree.inodes[*inode_id];
        let next = numbers.len() as u32 + 1;
        let ino = *numbers.entry(*inode_id).or_insert(next);
        let name = if path.is_empty() {
            b".".to_vec()
        } else {
            path.join(&b'/')
        };
        let nlink = match &inode.kind {
            Kind::Directory(_) => 2 + tree.subdirectories(*inode_id),
            _ => links[*inode_id],
        };
        let (data_size, rdev) = match &inode.kind {
            Kind::File(content) if last_link.get(inode_id) == Some(&index) => {
                (content.size, (0, 0))
            }
            Kind::Symlink(target) => (target.len() as u64, (0, 0)),
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                (0, (*major, *minor))
            }
            _ => (0, (0, 0)),
        };
        if data_size > u32::MAX as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is larger than newc cpio allows (4 GiB)",
                    String::from_utf8_lossy(&name)
                ),
            ));
        }
        let mtime = inode.mtime.clamp(0, u32::MAX as i64) as u32;
        write_header(
            output,
            ino,
            inode.type_bits() | inode.mode,
            inode.uid,
            inode.gid,
            nlink,
            mtime,
            data_size as u32,
            rdev,
            &name,
        )?;
        match &inode.kind {
            Kind::File(content) if data_size > 0 => {
                // The reader fails on a short pack, so all of it is copied.
                io::copy(&mut objects.reader(content, 0), output)?;
                pad(output, data_size)?;
            }
            Kind::Symlink(target) => {
                output.write_all(target)?;
                pad(output, data_size)?;
            }
            _ => {}
        }
    }
    write_header(output, 0, 0, 0, 0, 1, 0, 0, (0, 0), b"TRAILER!!!")
}

#[allow(clippy::too_many_arguments)]
fn write_header(
    output: &mut impl Write,
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rdev: (u32, u32),
    name: &[u8],
) -> io::Result<()> {
    let header = format!(
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() + 1,
        0
    );
    output.write_all(header.as_bytes())?;
    output.write_all(name)?;
    output.write_all(&[0])?;
    pad(output, (header.len() + name.len() + 1) as u64)
}

fn pad(output: &mut impl Write, written: u64) -> io::Result<()> {
    let padding = (4 - (written % 4)) % 4;
    output.write_all(&[0u8; 3][..padding as usize])
}
