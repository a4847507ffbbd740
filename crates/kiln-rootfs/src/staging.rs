//! A tree staged as a host directory for the filesystem tools that read one
//! (`mke2fs -d`, `mkfs.erofs`): directories, regular files (hardlinked out
//! of the object store where they can be) and symlinks. What an ordinary
//! user cannot create or set (ownership, setuid bits, device nodes, fifos,
//! xattrs) is left to each writer's own fix-up step.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use fs_err as fs;

use crate::error::{Result, RootfsError};
use crate::objects::ObjectDir;
use crate::tree::{InodeId, Kind, ROOT, Tree};

/// One walked path of the staged tree.
pub(crate) struct Staged {
    /// Path components inside the tree (empty for the root).
    pub components: Vec<Vec<u8>>,
    /// The inode.
    pub inode: InodeId,
    /// Where it is in the staging directory.
    pub host: PathBuf,
    /// False for the second and later names of a hardlinked inode.
    pub first: bool,
}

/// Stages `tree` under `staging` (which must exist and be empty).
pub(crate) fn stage_plain(tree: &Tree, objects: &ObjectDir, staging: &Path) -> Result<Vec<Staged>> {
    let mut seen_inodes: std::collections::HashMap<InodeId, PathBuf> =
        std::collections::HashMap::new();
    let mut objects_used: HashSet<&kiln_types::Digest> = HashSet::new();
    let mut staged = Vec::new();
    for (components, id) in tree.walk() {
        let host = components.iter().fold(staging.to_path_buf(), |path, c| {
            path.join(OsStr::from_bytes(c))
        });
        if id == ROOT {
            staged.push(Staged {
                components,
                inode: id,
                host,
                first: true,
            });
            continue;
        }
        if let Some(existing) = seen_inodes.get(&id) {
            fs::hard_link(existing, &host)?;
            staged.push(Staged {
                components,
                inode: id,
                host,
                first: false,
            });
            continue;
        }
        seen_inodes.insert(id, host.clone());
        match &tree.inodes[id].kind {
            Kind::Directory(_) => fs::create_dir(&host)?,
            Kind::File(content) => {
                // The first file with a content takes the object itself; later ones copy.
                if objects_used.insert(&content.digest) {
                    fs::hard_link(objects.path(&content.digest), &host)?;
                } else {
                    fs::copy(objects.path(&content.digest), &host)?;
                }
                fs::set_permissions(&host, std::fs::Permissions::from_mode(0o644))?;
            }
            Kind::Symlink(target) => std::os::unix::fs::symlink(OsStr::from_bytes(target), &host)?,
            Kind::CharDevice { .. } | Kind::BlockDevice { .. } | Kind::Fifo => {}
        }
        staged.push(Staged {
            components,
            inode: id,
            host,
            first: true,
        });
    }
    Ok(staged)
}

/// The path of an installed program, or an error naming its Debian package.
pub(crate) fn tool(name: &str, package: &str) -> Result<PathBuf> {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return Ok(path);
        }
    }
    Err(RootfsError::MissingTool {
        tool: name.to_string(),
        package: package.to_string(),
    })
}

/// The error for a tool that failed: its stderr folded onto one line.
pub(crate) fn tool_failed(tool: &str, stderr: &[u8]) -> RootfsError {
    let detail = String::from_utf8_lossy(stderr)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    RootfsError::Tool {
        tool: tool.to_string(),
        detail,
        hint: None,
    }
}
