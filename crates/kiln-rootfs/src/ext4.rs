//! Tree → ext4 raw image, the root disk Firecracker, cloud-hypervisor and
//! QEMU boot. e2fsprogs does the filesystem: the tree is staged as plain
//! directories, files (hardlinked from the object store where it can) and
//! symlinks, `mke2fs -d` copies it in, then one `debugfs -w` script sets
//! what an ordinary user cannot create on the host: ownership, modes with
//! setuid bits, device nodes, fifos, mtimes and xattrs. So the image is the
//! same whether kiln runs as root or not.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use fs_err as fs;

use crate::error::{Result, RootfsError};
use crate::objects::ObjectDir;
use crate::staging::{stage_plain, tool, tool_failed};
use crate::tree::{Kind, Tree};

const BLOCK: u64 = 4096;
const MIN_SIZE: u64 = 32 << 20;

/// The size kiln gives an image by default: content, inode tables and
/// journal, plus 25% headroom and at least 32 MiB.
pub fn default_ext4_size(tree: &Tree) -> u64 {
    let mut data = 0u64;
    let mut inodes = 0u64;
    let links = tree.link_counts();
    for (id, inode) in tree.inodes.iter().enumerate() {
        if links[id] == 0 {
            continue;
        }
        inodes += 1;
        data += match &inode.kind {
            Kind::File(content) => content.size.div_ceil(BLOCK) * BLOCK,
            Kind::Directory(entries) => (entries.len() as u64 * 64).div_ceil(BLOCK).max(1) * BLOCK,
            Kind::Symlink(target) if target.len() >= 60 => BLOCK,
            _ => 0,
        };
    }
    // Inode tables (256 bytes an inode, mke2fs reserves ~1 per 16 KiB) and a journal.
    let overhead = inodes * 256 + data / 16 + (16 << 20);
    let size = (data + overhead) * 5 / 4;
    size.max(MIN_SIZE).div_ceil(1 << 20) << 20
}

/// Writes `tree` as an ext4 image of `size` bytes (default:
/// [`default_ext4_size`]) at `output`, using `scratch` for staging.
pub fn write_ext4(
    tree: &Tree,
    objects: &ObjectDir,
    output: &Path,
    size: Option<u64>,
    scratch: &Path,
) -> Result<()> {
    let mke2fs = tool("mke2fs", "e2fsprogs")?;
    let debugfs = tool("debugfs", "e2fsprogs")?;
    let staging = scratch.join("staging");
    fs::create_dir_all(&staging)?;
    let script = stage(tree, objects, &staging, scratch)?;

    let size = size.unwrap_or_else(|| default_ext4_size(tree));
    {
        let file = fs::File::create(output)?;
        file.set_len(size)?;
    }
    let result = Command::new(&mke2fs)
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-L",
            "rootfs",
            "-E",
            "root_owner=0:0",
            "-d",
        ])
        .arg(&staging)
        .arg(output)
        .output()?;
    if !result.status.success() {
        let stderr = String::from_utf8_lossy(&result.stderr);
        if stderr.contains("Could not allocate")
            || stderr.contains("too small")
            || stderr.contains("No space")
        {
            return Err(RootfsError::TooSmall {
                size,
                needed: default_ext4_size(tree),
            });
        }
        return Err(tool_failed("mke2fs", &result.stderr));
    }
    let script_path = scratch.join("debugfs.script");
    fs::write(&script_path, script)?;
    let result = Command::new(&debugfs)
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(output)
        .output()?;
    let stderr = String::from_utf8_lossy(&result.stderr);
    // debugfs reports command failures on stderr but exits 0.
    let failures: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect();
    if !result.status.success() || !failures.is_empty() {
        return Err(RootfsError::Tool {
            tool: "debugfs".into(),
            detail: failures.join("; "),
            hint: None,
        });
    }
    Ok(())
}

/// `"/a/b"` for debugfs: an absolute path of the tree, double-quoted.
fn quote(path: &[Vec<u8>]) -> Result<String> {
    quote_text(format!("/{}", String::from_utf8_lossy(&path.join(&b'/'))))
}

/// `"name"` for debugfs: one name relative to its `cd`.
fn quote_name(name: &[u8]) -> Result<String> {
    quote_text(String::from_utf8_lossy(name).into_owned())
}

/// debugfs's parser cannot take a double quote or a control character.
fn quote_text(text: String) -> Result<String> {
    if text.contains('"') || text.chars().any(char::is_control) {
        return Err(RootfsError::Unrepresentable {
            path: text,
            reason: "a name with a double quote or a control character".into(),
        });
    }
    Ok(format!("\"{text}\""))
}

/// Creates the staging tree and returns the debugfs script that finishes it.
fn stage(tree: &Tree, objects: &ObjectDir, staging: &Path, scratch: &Path) -> Result<String> {
    let mut script = String::new();
    let mut xattr_files = 0usize;
    for entry in stage_plain(tree, objects, staging)? {
        if !entry.first {
            continue;
        }
        let components = &entry.components;
        let inode = &tree.inodes[entry.inode];
        let quoted = quote(components)?;
        match &inode.kind {
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                let (parent, name) = components.split_at(components.len() - 1);
                let kind = if matches!(inode.kind, Kind::CharDevice { .. }) {
                    'c'
                } else {
                    'b'
                };
                let _ = writeln!(script, "cd {}", quote(parent)?);
                let _ = writeln!(
                    script,
                    "mknod {} {kind} {major} {minor}",
                    quote_name(&name[0])?
                );
            }
            Kind::Fifo => {
                let (parent, name) = components.split_at(components.len() - 1);
                let _ = writeln!(script, "cd {}", quote(parent)?);
                let _ = writeln!(script, "mknod {} p", quote_name(&name[0])?);
            }
            _ => {}
        }
        let mode = inode.type_bits() | inode.mode;
        let _ = writeln!(script, "sif {quoted} mode 0{mode:o}");
        let _ = writeln!(script, "sif {quoted} uid {}", inode.uid);
        let _ = writeln!(script, "sif {quoted} gid {}", inode.gid);
        let _ = writeln!(script, "sif {quoted} mtime @{}", inode.mtime.max(0));
        for (name, value) in &inode.xattrs {
            xattr_files += 1;
            let value_path = scratch.join(format!("xattr-{xattr_files}"));
            fs::write(&value_path, value)?;
            let name = String::from_utf8_lossy(name);
            if name.contains('"') || name.chars().any(char::is_control) || name.contains(' ') {
                return Err(RootfsError::Unrepresentable {
                    path: format!("{quoted} xattr {name}"),
                    reason: "an odd xattr name".into(),
                });
            }
            let _ = writeln!(
                script,
                "ea_set -f \"{}\" {quoted} {name}",
                value_path.display()
            );
        }
    }
    Ok(script)
}
