//! A mounted root filesystem compared with the tree it started from: what
//! changed becomes a new image layer (added and modified entries, `.wh.`
//! whiteouts for removed ones), as `kiln snapshot` publishes it.
//!
//! Hardlinks: a changed file whose inode was already seen in the walk (in
//! this layer, or unchanged from the base) becomes a tar hardlink entry to
//! that path. Xattrs travel as PAX `SCHILY.xattr.NAME` records (the host's
//! `security.selinux` label excepted); a change of xattrs alone counts as a
//! change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use fs_err as fs;

use crate::error::Result;
use crate::objects::ObjectDir;
use crate::tree::{InodeId, Kind, ROOT, Tree};

/// What a diff layer holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DiffStats {
    /// Entries added or changed.
    pub changed: u64,
    /// Entries removed (whiteouts).
    pub removed: u64,
}

fn unchanged(
    tree: &Tree,
    objects: &ObjectDir,
    inode: InodeId,
    host: &Path,
    metadata: &std::fs::Metadata,
) -> std::io::Result<bool> {
    let base = &tree.inodes[inode];
    let same_meta = base.mode == metadata.mode() & 0o7777
        && base.uid == metadata.uid()
        && base.gid == metadata.gid()
        && (matches!(base.kind, Kind::Directory(_)) || base.mtime == metadata.mtime())
        && base
            .xattrs
            .iter()
            .filter(|(name, _)| carried(name))
            .eq(read_xattrs(host)?.iter());
    if !same_meta && !matches!(base.kind, Kind::Symlink(_)) {
        return Ok(false);
    }
    let file_type = metadata.file_type();
    Ok(match &base.kind {
        Kind::Directory(_) => file_type.is_dir(),
        Kind::File(content) => {
            file_type.is_file()
                && metadata.len() == content.size
                && objects.same_content(content, host)?
        }
        Kind::Symlink(target) => {
            file_type.is_symlink()
                && fs::read_link(host)?.as_os_str().as_bytes() == target.as_slice()
        }
        Kind::CharDevice { major, minor } => {
            file_type.is_char_device() && metadata.rdev() == makedev(*major, *minor)
        }
        Kind::BlockDevice { major, minor } => {
            file_type.is_block_device() && metadata.rdev() == makedev(*major, *minor)
        }
        Kind::Fifo => file_type.is_fifo(),
    })
}

/// Whether an xattr goes into a layer: not the host's SELinux label, and
/// only names a PAX record can carry (UTF-8). Applied to both sides of the
/// comparison, so neither makes a file look changed.
fn carried(name: &[u8]) -> bool {
    name != b"security.selinux" && std::str::from_utf8(name).is_ok()
}

/// The extended attributes of `path` (not following a symlink) that
/// [`carried`] keeps. A filesystem without xattr support has none.
fn read_xattrs(path: &Path) -> std::io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    use std::ffi::CString;
    let mut found = BTreeMap::new();
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    // Sizes can change between the two calls: read into a buffer grown
    // to what the first call says, and retry on ERANGE.
    let read = |probe: &dyn Fn(*mut libc::c_char, usize) -> isize| -> std::io::Result<Vec<u8>> {
        for _ in 0..4 {
            let size = probe(std::ptr::null_mut(), 0);
            if size < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut buffer = vec![0u8; size as usize];
            let read = probe(buffer.as_mut_ptr().cast(), buffer.len());
            if read >= 0 {
                buffer.truncate(read as usize);
                return Ok(buffer);
            }
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::ERANGE) {
                return Err(error);
            }
        }
        Err(std::io::Error::from_raw_os_error(libc::ERANGE))
    };
    let names = match read(&|buffer, size| {
        // SAFETY: c_path is a valid C string; buffer is null with size 0
        // or points to `size` writable bytes.
        unsafe { libc::llistxattr(c_path.as_ptr(), buffer, size) }
    }) {
        Ok(names) => names,
        Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(found),
        Err(error) => return Err(error),
    };
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if !carried(name) {
            continue;
        }
        let c_name = CString::new(name)?;
        let value = read(&|buffer, size| {
            // SAFETY: as above; c_name is a valid C string.
            unsafe { libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), buffer.cast(), size) }
        })?;
        found.insert(name.to_vec(), value);
    }
    Ok(found)
}

/// Linux's `makedev`.
fn makedev(major: u32, minor: u32) -> u64 {
    let (major, minor) = (major as u64, minor as u64);
    ((major & 0xfffff000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffffff00) << 12)
        | (minor & 0xff)
}

fn major_minor(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 32) & 0xfffff000) | ((rdev >> 8) & 0xfff);
    let minor = ((rdev >> 12) & 0xffffff00) | (rdev & 0xff);
    (major as u32, minor as u32)
}

/// Writes, as an uncompressed tar to `output`, how the tree mounted at
/// `root` differs from `base`. `lost+found` at the top is ignored.
pub fn write_diff_layer(
    base: &Tree,
    objects: &ObjectDir,
    root: &Path,
    output: impl Write,
) -> Result<DiffStats> {
    let mut builder = tar::Builder::new(output);
    let mut stats = DiffStats::default();
    let mut walker = Walker {
        base,
        objects,
        links: HashMap::new(),
        stats: &mut stats,
    };
    walker.walk(Some(ROOT), root, Vec::new(), &mut builder)?;
    builder.into_inner()?.flush()?;
    Ok(stats)
}

/// State of one diff walk.
struct Walker<'a> {
    base: &'a Tree,
    objects: &'a ObjectDir,
    /// Paths already in the layer or unchanged from the base, by (device,
    /// inode), for files with several links.
    links: HashMap<(u64, u64), Vec<u8>>,
    stats: &'a mut DiffStats,
}

impl Walker<'_> {
    fn walk<W: Write>(
        &mut self,
        base_dir: Option<InodeId>,
        host_dir: &Path,
        path: Vec<Vec<u8>>,
        builder: &mut tar::Builder<W>,
    ) -> Result<()> {
        let base = self.base;
        let mut names: Vec<Vec<u8>> = fs::read_dir(host_dir)?
            .map(|e| e.map(|e| e.file_name().as_bytes().to_vec()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        let host_names: BTreeSet<&Vec<u8>> = names.iter().collect();
        let base_entries = base_dir.and_then(|d| base.entries(d));
        // Removed since the base: whiteouts.
        if let Some(entries) = base_entries {
            for name in entries.keys() {
                if !host_names.contains(name) {
                    let mut whiteout = path.clone();
                    whiteout.push([b".wh.".as_slice(), name].concat());
                    append(builder, &whiteout, EntryKind::Whiteout, None)?;
                    self.stats.removed += 1;
                }
            }
        }
        for name in &names {
            if path.is_empty() && name.as_slice() == b"lost+found" {
                continue;
            }
            let host = host_dir.join(std::ffi::OsStr::from_bytes(name));
            let metadata = fs::symlink_metadata(&host)?;
            let mut child = path.clone();
            child.push(name.clone());
            let base_inode = base_entries.and_then(|e| e.get(name)).map(|e| e.inode);
            let same = match base_inode {
                Some(inode) => unchanged(base, self.objects, inode, &host, &metadata)?,
                None => false,
            };
            let linked = metadata.is_file() && metadata.nlink() > 1;
            let key = (metadata.dev(), metadata.ino());
            if !same {
                match self.links.get(&key).filter(|_| linked) {
                    Some(target) => {
                        append(builder, &child, EntryKind::Link(target), Some(&metadata))?
                    }
                    None => append(builder, &child, EntryKind::Host(&host), Some(&metadata))?,
                }
                self.stats.changed += 1;
            }
            if linked {
                self.links.entry(key).or_insert_with(|| child.join(&b'/'));
            }
            if metadata.is_dir() {
                let base_child =
                    base_inode.filter(|i| matches!(base.inodes[*i].kind, Kind::Directory(_)));
                self.walk(base_child, &host, child, builder)?;
            }
        }
        Ok(())
    }
}

enum EntryKind<'a> {
    Whiteout,
    Host(&'a Path),
    /// A hardlink to this path of the layer or of the base.
    Link(&'a [u8]),
}

fn append<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &[Vec<u8>],
    kind: EntryKind<'_>,
    metadata: Option<&std::fs::Metadata>,
) -> Result<()> {
    let name = std::ffi::OsStr::from_bytes(&path.join(&b'/')).to_owned();
    let mut header = tar::Header::new_gnu();
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mode(0o644);
    header.set_size(0);
    match (kind, metadata) {
        (EntryKind::Whiteout, _) | (_, None) => {
            header.set_entry_type(tar::EntryType::Regular);
            builder.append_data(&mut header, &name, std::io::empty())?;
        }
        (EntryKind::Link(target), Some(metadata)) => {
            header.set_mode(metadata.mode() & 0o7777);
            header.set_uid(metadata.uid() as u64);
            header.set_gid(metadata.gid() as u64);
            header.set_mtime(metadata.mtime().max(0) as u64);
            header.set_entry_type(tar::EntryType::Link);
            builder.append_link(&mut header, &name, std::ffi::OsStr::from_bytes(target))?;
        }
        (EntryKind::Host(host), Some(metadata)) => {
            let xattrs = read_xattrs(host)?;
            if !xattrs.is_empty() {
                let records: Vec<(String, &[u8])> = xattrs
                    .iter()
                    .filter_map(|(key, value)| {
                        let key = std::str::from_utf8(key).ok()?;
                        Some((format!("SCHILY.xattr.{key}"), value.as_slice()))
                    })
                    .collect();
                builder.append_pax_extensions(
                    records.iter().map(|(key, value)| (key.as_str(), *value)),
                )?;
            }
            header.set_mode(metadata.mode() & 0o7777);
            header.set_uid(metadata.uid() as u64);
            header.set_gid(metadata.gid() as u64);
            header.set_mtime(metadata.mtime().max(0) as u64);
            let file_type = metadata.file_type();
            if file_type.is_dir() {
                header.set_entry_type(tar::EntryType::Directory);
                builder.append_data(&mut header, &name, std::io::empty())?;
            } else if file_type.is_file() {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(metadata.len());
                builder.append_data(&mut header, &name, fs::File::open(host)?)?;
            } else if file_type.is_symlink() {
                header.set_entry_type(tar::EntryType::Symlink);
                builder.append_link(&mut header, &name, fs::read_link(host)?)?;
            } else if file_type.is_char_device() || file_type.is_block_device() {
                let (major, minor) = major_minor(metadata.rdev());
                header.set_entry_type(if file_type.is_char_device() {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                header.set_device_major(major)?;
                header.set_device_minor(minor)?;
                builder.append_data(&mut header, &name, std::io::empty())?;
            } else if file_type.is_fifo() {
                header.set_entry_type(tar::EntryType::Fifo);
                builder.append_data(&mut header, &name, std::io::empty())?;
            }
        }
    }
    Ok(())
}
