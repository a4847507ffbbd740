//! An in-memory filesystem tree: inodes in an arena, directories mapping
//! names to inodes (so hardlinks share one inode), contents in an
//! [`ObjectDir`](crate::objects::ObjectDir). Writers turn a tree into bytes;
//! they never look at the host filesystem, so ownership, modes and device
//! nodes come out the same whoever runs kiln.

use std::collections::BTreeMap;

use crate::objects::ContentRef;

/// Index of an inode in [`Tree::inodes`].
pub type InodeId = usize;

/// What an inode is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory: name → entry.
    Directory(BTreeMap<Vec<u8>, DirEntry>),
    /// A regular file.
    File(ContentRef),
    /// A symbolic link and its target.
    Symlink(Vec<u8>),
    /// A character device.
    CharDevice { major: u32, minor: u32 },
    /// A block device.
    BlockDevice { major: u32, minor: u32 },
    /// A named pipe.
    Fifo,
}

/// A directory entry: the inode and the layer that put it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The inode.
    pub inode: InodeId,
    /// Index of the layer that created the entry.
    pub layer: usize,
}

/// Metadata and content of one inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    /// What it is.
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Extended attributes (`security.capability`, `user.*`, …).
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Inode {
    /// An empty directory with docker's defaults for directories a layer
    /// implies but does not list: 0755, owned by root.
    pub fn implicit_directory() -> Inode {
        Inode {
            kind: Kind::Directory(BTreeMap::new()),
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: BTreeMap::new(),
        }
    }

    /// The `S_IF*` type bits.
    pub fn type_bits(&self) -> u32 {
        match self.kind {
            Kind::Directory(_) => 0o040000,
            Kind::File(_) => 0o100000,
            Kind::Symlink(_) => 0o120000,
            Kind::CharDevice { .. } => 0o020000,
            Kind::BlockDevice { .. } => 0o060000,
            Kind::Fifo => 0o010000,
        }
    }
}

/// A root filesystem under construction or complete.
#[derive(Debug, Clone)]
pub struct Tree {
    /// Every inode ever created; unreachable ones are skipped by writers.
    pub inodes: Vec<Inode>,
}

/// The root directory's inode id.
pub const ROOT: InodeId = 0;

impl Default for Tree {
    fn default() -> Tree {
        Tree::new()
    }
}

impl Tree {
    /// An empty root directory (0755, root-owned).
    pub fn new() -> Tree {
        Tree {
            inodes: vec![Inode::implicit_directory()],
        }
    }

    /// Adds an inode.
    pub fn add(&mut self, inode: Inode) -> InodeId {
        self.inodes.push(inode);
        self.inodes.len() - 1
    }

    /// The entries of a directory inode.
    pub fn entries(&self, directory: InodeId) -> Option<&BTreeMap<Vec<u8>, DirEntry>> {
        match &self.inodes[directory].kind {
            Kind::Directory(entries) => Some(entries),
            _ => None,
        }
    }

    pub(crate) fn entries_mut(
        &mut self,
        directory: InodeId,
    ) -> Option<&mut BTreeMap<Vec<u8>, DirEntry>> {
        match &mut self.inodes[directory].kind {
            Kind::Directory(entries) => Some(entries),
            _ => None,
        }
    }

    /// Every reachable path, parents before children, with its inode:
    /// `(path components, inode)`. The root is the empty path.
    pub fn walk(&self) -> Vec<(Vec<Vec<u8>>, InodeId)> {
        let mut out = vec![(Vec::new(), ROOT)];
        let mut index = 0;
        while index < out.len() {
            let (path, inode) = out[index].clone();
            if let Some(entries) = self.entries(inode) {
                for (name, entry) in entries {
                    let mut child = path.clone();
                    child.push(name.clone());
                    out.push((child, entry.inode));
                }
            }
            index += 1;
        }
        out
    }

    /// How many directories a directory holds (its link count is 2 more).
    pub fn subdirectories(&self, directory: InodeId) -> u32 {
        self.entries(directory).map_or(0, |entries| {
            entries
                .values()
                .filter(|e| matches!(self.inodes[e.inode].kind, Kind::Directory(_)))
                .count() as u32
        })
    }

    /// Every reachable inode once, breadth first from the root (entries in
    /// name order), with facts writers need: the parent of each directory
    /// (the root is its own) and the number of names of each inode.
    pub fn order(&self) -> Order {
        let mut inodes = vec![ROOT];
        let mut parent = vec![None; self.inodes.len()];
        let mut links = vec![0u32; self.inodes.len()];
        let mut names = vec![Vec::new(); self.inodes.len()];
        parent[ROOT] = Some(ROOT);
        links[ROOT] = 1;
        let mut index = 0;
        while index < inodes.len() {
            let directory = inodes[index];
            if let Some(entries) = self.entries(directory) {
                for (name, entry) in entries {
                    links[entry.inode] += 1;
                    if links[entry.inode] == 1 {
                        inodes.push(entry.inode);
                        parent[entry.inode] = Some(directory);
                        names[entry.inode] = name.clone();
                    }
                }
            }
            index += 1;
        }
        Order {
            inodes,
            parent,
            links,
            names,
        }
    }

    /// Number of directory entries naming each inode (hardlink counts).
    pub fn link_counts(&self) -> Vec<u32> {
        self.order().links
    }
}

/// The reachable inodes of a tree in the order writers lay them out.
#[derive(Debug, Clone)]
pub struct Order {
    /// Reachable inodes, breadth first, the root first.
    pub inodes: Vec<InodeId>,
    /// The directory each inode was first reached from (root: itself).
    pub parent: Vec<Option<InodeId>>,
    /// Names of each inode (1 for the root); 0 when unreachable.
    pub links: Vec<u32>,
    /// The name each inode was first reached by (root: empty).
    pub names: Vec<Vec<u8>>,
}

impl Order {
    /// `/a/b`: the path an inode was first reached by, for messages.
    pub fn path(&self, inode: InodeId) -> String {
        let mut components = Vec::new();
        let mut current = inode;
        while current != ROOT {
            components.push(String::from_utf8_lossy(&self.names[current]).into_owned());
            match self.parent[current] {
                Some(parent) => current = parent,
                None => break,
            }
        }
        components.reverse();
        format!("/{}", components.join("/"))
    }
}
