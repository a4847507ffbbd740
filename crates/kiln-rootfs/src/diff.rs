//! A root filesystem compared with the tree it started from: what changed
//! becomes a new image layer (added and modified entries, `.wh.` whiteouts
//! for removed ones), as `kiln snapshot` publishes it. The filesystem is
//! read through [`FsView`]; kiln's own is an ext4 image read directly
//! ([`Ext4Image`]: no mount, no root).
//!
//! Hardlinks: a changed file whose inode was already seen in the walk (in
//! this layer, or unchanged from the base) becomes a tar hardlink entry to
//! that path. Xattrs travel as PAX `SCHILY.xattr.NAME` records (the host's
//! `security.selinux` label excepted); a change of xattrs alone counts as a
//! change.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;

use crate::error::{Result, RootfsError};
use crate::ext4read::Ext4Image;
use crate::objects::ObjectDir;
use crate::tree::{InodeId, Kind, ROOT, Tree};

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;
const S_IFIFO: u32 = 0o010000;

/// What a diff layer holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DiffStats {
    /// Entries added or changed.
    pub changed: u64,
    /// Entries removed (whiteouts).
    pub removed: u64,
}

/// The facts of a node a diff compares and records.
#[derive(Debug, Clone)]
pub struct Stat {
    /// `S_IF*` and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    /// `(major, minor)` of a device node.
    pub device: (u32, u32),
    pub links: u64,
    /// Identifies the inode within the view (for hardlinks).
    pub key: (u64, u64),
}

impl Stat {
    fn file_type(&self) -> u32 {
        self.mode & S_IFMT
    }
}

/// A filesystem tree a diff reads.
pub trait FsView {
    /// One file, directory, link or device of the view.
    type Node;
    /// The root directory.
    fn root(&self) -> std::io::Result<Self::Node>;
    /// Its facts.
    fn stat(&self, node: &Self::Node) -> std::io::Result<Stat>;
    /// A directory's entries, sorted by name (no `.` or `..`).
    fn children(&self, directory: &Self::Node) -> std::io::Result<Vec<(Vec<u8>, Self::Node)>>;
    /// A symlink's target.
    fn read_link(&self, node: &Self::Node) -> std::io::Result<Vec<u8>>;
    /// The xattrs a layer carries (see [`carried`]).
    fn xattrs(&self, node: &Self::Node) -> std::io::Result<BTreeMap<Vec<u8>, Vec<u8>>>;
    /// A regular file's content.
    fn open(&self, node: &Self::Node) -> std::io::Result<Box<dyn Read + '_>>;
    /// What the view's files can hold in all, if bounded: a diff that
    /// would write more file data than that is refused (see
    /// [`write_diff_layer`]).
    fn capacity(&self) -> Option<u64> {
        None
    }
}

impl FsView for Ext4Image {
    /// An inode number: inodes are read when needed, so a huge directory
    /// costs its names, not its inodes.
    type Node = u32;

    fn root(&self) -> std::io::Result<u32> {
        Ok(2)
    }

    fn stat(&self, node: &u32) -> std::io::Result<Stat> {
        let inode = self.inode(*node)?;
        Ok(Stat {
            mode: inode.mode,
            uid: inode.uid,
            gid: inode.gid,
            size: inode.size,
            mtime: inode.mtime,
            device: inode.device(),
            links: u64::from(inode.links),
            key: (0, u64::from(*node)),
        })
    }

    fn children(&self, directory: &u32) -> std::io::Result<Vec<(Vec<u8>, u32)>> {
        self.read_dir(&self.inode(*directory)?)
    }

    fn read_link(&self, node: &u32) -> std::io::Result<Vec<u8>> {
        Ext4Image::read_link(self, &self.inode(*node)?)
    }

    fn xattrs(&self, node: &u32) -> std::io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        let mut found = Ext4Image::xattrs(self, &self.inode(*node)?)?;
        found.retain(|name, _| carried(name));
        Ok(found)
    }

    fn open(&self, node: &u32) -> std::io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(self.reader(&self.inode(*node)?)?))
    }

    fn capacity(&self) -> Option<u64> {
        Some(Ext4Image::capacity(self))
    }
}

fn unchanged<V: FsView>(
    tree: &Tree,
    objects: &ObjectDir,
    inode: InodeId,
    view: &V,
    node: &V::Node,
    stat: &Stat,
) -> std::io::Result<bool> {
    let base = &tree.inodes[inode];
    let same_meta = base.mode == stat.mode & 0o7777
        && base.uid == stat.uid
        && base.gid == stat.gid
        && (matches!(base.kind, Kind::Directory(_)) || base.mtime == stat.mtime)
        && base
            .xattrs
            .iter()
            .filter(|(name, _)| carried(name))
            .eq(view.xattrs(node)?.iter());
    if !same_meta && !matches!(base.kind, Kind::Symlink(_)) {
        return Ok(false);
    }
    let file_type = stat.file_type();
    Ok(match &base.kind {
        Kind::Directory(_) => file_type == S_IFDIR,
        Kind::File(content) => {
            file_type == S_IFREG
                && stat.size == content.size
                && objects.same_content(content, &mut view.open(node)?)?
        }
        Kind::Symlink(target) => file_type == S_IFLNK && view.read_link(node)? == *target,
        Kind::CharDevice { major, minor } => {
            file_type == S_IFCHR && stat.device == (*major, *minor)
        }
        Kind::BlockDevice { major, minor } => {
            file_type == S_IFBLK && stat.device == (*major, *minor)
        }
        Kind::Fifo => file_type == S_IFIFO,
    })
}

/// Whether an xattr goes into a layer: not the host's SELinux label, and
/// only names a PAX record can carry (UTF-8). Applied to both sides of the
/// comparison, so neither makes a file look changed.
fn carried(name: &[u8]) -> bool {
    name != b"security.selinux" && std::str::from_utf8(name).is_ok()
}

/// Writes, as an uncompressed tar to `output`, how the tree `view` shows
/// differs from `base`. `lost+found` at the top is ignored.
///
/// Files are written out in full, holes as zeros: a layer has no holes
/// that every reader understands. So that a disk cannot make a layer far
/// larger than itself (a sparse file of a terabyte on a 1 GiB disk), the
/// file data written is bounded by the view's [`FsView::capacity`], and
/// going past it is an error naming the file.
pub fn write_diff_layer<V: FsView>(
    base: &Tree,
    objects: &ObjectDir,
    view: &V,
    output: impl Write,
) -> Result<DiffStats> {
    let mut builder = tar::Builder::new(output);
    let mut stats = DiffStats::default();
    let mut walker = Walker {
        base,
        objects,
        view,
        links: HashMap::new(),
        directories: HashSet::new(),
        held: 0,
        visited: 0,
        data: 0,
        stats: &mut stats,
    };
    let root = view.root()?;
    walker.directories.insert(view.stat(&root)?.key);
    walker.walk(Some(ROOT), &root, Vec::new(), &mut builder)?;
    builder.into_inner()?.flush()?;
    Ok(stats)
}

/// State of one diff walk.
struct Walker<'a, V: FsView> {
    base: &'a Tree,
    objects: &'a ObjectDir,
    view: &'a V,
    /// Paths already in the layer or unchanged from the base, by inode key,
    /// for files with several links.
    links: HashMap<(u64, u64), Vec<u8>>,
    /// Directories walked: a damaged or hostile filesystem may link one
    /// into itself.
    directories: HashSet<(u64, u64)>,
    /// Entries listed by the directories being walked (the recursion's
    /// memory), and entries seen in all.
    held: usize,
    visited: usize,
    /// File data written so far, in bytes.
    data: u64,
    stats: &'a mut DiffStats,
}

/// Deeper trees are refused rather than walked (the walk recurses).
const MAX_DEPTH: usize = 2048;
/// Bounds on what a damaged or hostile filesystem can make a walk hold and
/// visit (a real root filesystem has well under a million entries).
const MAX_HELD: usize = 4 << 20;
const MAX_VISITED: usize = 16 << 20;

impl<V: FsView> Walker<'_, V> {
    /// Counts `size` bytes of file data for `path`, refusing more than the
    /// view holds.
    fn count_data(&mut self, path: &[Vec<u8>], size: u64) -> Result<()> {
        self.data = self.data.saturating_add(size);
        match self.view.capacity() {
            Some(capacity) if self.data > capacity => Err(RootfsError::DiffTooLarge {
                path: format!("/{}", String::from_utf8_lossy(&path.join(&b'/'))),
                size,
                total: self.data,
                capacity,
            }),
            _ => Ok(()),
        }
    }

    fn walk<W: Write>(
        &mut self,
        base_dir: Option<InodeId>,
        directory: &V::Node,
        path: Vec<Vec<u8>>,
        builder: &mut tar::Builder<W>,
    ) -> Result<()> {
        let children = self.view.children(directory)?;
        self.held += children.len();
        self.visited += children.len();
        if self.held > MAX_HELD || self.visited > MAX_VISITED {
            return Err(crate::error::RootfsError::Unrepresentable {
                path: format!("/{}", String::from_utf8_lossy(&path.join(&b'/'))),
                reason: "more entries than a root filesystem holds (a damaged filesystem?)".into(),
            });
        }
        let result = self.walk_children(base_dir, &children, path, builder);
        self.held -= children.len();
        result
    }

    fn walk_children<W: Write>(
        &mut self,
        base_dir: Option<InodeId>,
        children: &[(Vec<u8>, V::Node)],
        path: Vec<Vec<u8>>,
        builder: &mut tar::Builder<W>,
    ) -> Result<()> {
        let base = self.base;
        let names: BTreeSet<&Vec<u8>> = children.iter().map(|(name, _)| name).collect();
        let base_entries = base_dir.and_then(|d| base.entries(d));
        // Removed since the base: whiteouts.
        if let Some(entries) = base_entries {
            for name in entries.keys() {
                if !names.contains(name) {
                    let mut whiteout = path.clone();
                    whiteout.push([b".wh.".as_slice(), name].concat());
                    append(builder, &whiteout, Entry::<V>::Whiteout)?;
                    self.stats.removed += 1;
                }
            }
        }
        for (name, node) in children {
            if path.is_empty() && name.as_slice() == b"lost+found" {
                continue;
            }
            let stat = self.view.stat(node)?;
            let mut child = path.clone();
            child.push(name.clone());
            let base_inode = base_entries.and_then(|e| e.get(name)).map(|e| e.inode);
            let same = match base_inode {
                Some(inode) => unchanged(base, self.objects, inode, self.view, node, &stat)?,
                None => false,
            };
            let linked = stat.file_type() == S_IFREG && stat.links > 1;
            if !same {
                match self.links.get(&stat.key).filter(|_| linked) {
                    Some(target) => append(builder, &child, Entry::<V>::Link(target, &stat))?,
                    None => {
                        if stat.file_type() == S_IFREG {
                            self.count_data(&child, stat.size)?;
                        }
                        append(builder, &child, Entry::Node(self.view, node, &stat))?
                    }
                }
                self.stats.changed += 1;
            }
            if linked {
                self.links
                    .entry(stat.key)
                    .or_insert_with(|| child.join(&b'/'));
            }
            if stat.file_type() == S_IFDIR {
                let shown = || String::from_utf8_lossy(&child.join(&b'/')).into_owned();
                if !self.directories.insert(stat.key) {
                    return Err(crate::error::RootfsError::Unrepresentable {
                        path: shown(),
                        reason:
                            "a directory that is also one of its ancestors (a damaged filesystem)"
                                .into(),
                    });
                }
                if child.len() > MAX_DEPTH {
                    return Err(crate::error::RootfsError::Unrepresentable {
                        path: shown(),
                        reason: format!("directories nested more than {MAX_DEPTH} deep"),
                    });
                }
                let base_child =
                    base_inode.filter(|i| matches!(base.inodes[*i].kind, Kind::Directory(_)));
                self.walk(base_child, node, child, builder)?;
            }
        }
        Ok(())
    }
}

enum Entry<'a, V: FsView> {
    Whiteout,
    Node(&'a V, &'a V::Node, &'a Stat),
    /// A hardlink to this path of the layer or of the base.
    Link(&'a [u8], &'a Stat),
}

fn append<W: Write, V: FsView>(
    builder: &mut tar::Builder<W>,
    path: &[Vec<u8>],
    entry: Entry<'_, V>,
) -> Result<()> {
    let name = std::ffi::OsStr::from_bytes(&path.join(&b'/')).to_owned();
    let mut header = tar::Header::new_gnu();
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mode(0o644);
    header.set_size(0);
    let owned = |header: &mut tar::Header, stat: &Stat| {
        header.set_mode(stat.mode & 0o7777);
        header.set_uid(u64::from(stat.uid));
        header.set_gid(u64::from(stat.gid));
        header.set_mtime(stat.mtime.max(0) as u64);
    };
    match entry {
        Entry::Whiteout => {
            header.set_entry_type(tar::EntryType::Regular);
            builder.append_data(&mut header, &name, std::io::empty())?;
        }
        Entry::Link(target, stat) => {
            owned(&mut header, stat);
            header.set_entry_type(tar::EntryType::Link);
            builder.append_link(&mut header, &name, std::ffi::OsStr::from_bytes(target))?;
        }
        Entry::Node(view, node, stat) => {
            let xattrs = view.xattrs(node)?;
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
            owned(&mut header, stat);
            match stat.file_type() {
                S_IFDIR => {
                    header.set_entry_type(tar::EntryType::Directory);
                    builder.append_data(&mut header, &name, std::io::empty())?;
                }
                S_IFREG => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(stat.size);
                    builder.append_data(&mut header, &name, view.open(node)?.take(stat.size))?;
                }
                S_IFLNK => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    let target = view.read_link(node)?;
                    builder.append_link(
                        &mut header,
                        &name,
                        std::ffi::OsStr::from_bytes(&target),
                    )?;
                }
                S_IFCHR | S_IFBLK => {
                    let (major, minor) = stat.device;
                    header.set_entry_type(if stat.file_type() == S_IFCHR {
                        tar::EntryType::Char
                    } else {
                        tar::EntryType::Block
                    });
                    header.set_device_major(major)?;
                    header.set_device_minor(minor)?;
                    builder.append_data(&mut header, &name, std::io::empty())?;
                }
                S_IFIFO => {
                    header.set_entry_type(tar::EntryType::Fifo);
                    builder.append_data(&mut header, &name, std::io::empty())?;
                }
                _ => {} // sockets are not carried by layers
            }
        }
    }
    Ok(())
}
