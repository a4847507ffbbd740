//! Tree → EROFS image (uncompressed), the read-only root filesystem modern
//! sandboxes mount. erofs-utils 1.5's `mkfs.erofs` reads a directory, so the
//! tree is staged, then a script run under `fakeroot` gives every entry its
//! owner, mode (setuid included), device number, xattrs and mtime and, in
//! the same fakeroot session, runs `mkfs.erofs`, which sees the faked
//! metadata. kiln runs it that way as root too, so the output is the same
//! for every user.

use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use fs_err as fs;

use crate::error::{Result, RootfsError};
use crate::objects::ObjectDir;
use crate::staging::{stage_plain, tool, tool_failed};
use crate::tree::{Kind, Tree};

/// Single-quotes a path for sh.
fn sh(path: &Path) -> String {
    let bytes = path.as_os_str().as_bytes();
    let text = String::from_utf8_lossy(bytes);
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// Writes `tree` as an EROFS image at `output`, using `scratch` for staging.
pub fn write_erofs(tree: &Tree, objects: &ObjectDir, output: &Path, scratch: &Path) -> Result<()> {
    let mkfs = tool("mkfs.erofs", "erofs-utils")?;
    let fakeroot = tool("fakeroot", "fakeroot")?;
    let setfattr_needed = tree.inodes.iter().any(|i| !i.xattrs.is_empty());
    let setfattr = if setfattr_needed {
        Some(tool("setfattr", "attr")?)
    } else {
        None
    };
    let staging = scratch.join("staging");
    fs::create_dir_all(&staging)?;
    let entries = stage_plain(tree, objects, &staging)?;
    let mut script = String::from("set -e\n");
    let mut times = Vec::new();
    for entry in &entries {
        if !entry.first {
            continue;
        }
        let inode = &tree.inodes[entry.inode];
        let path = sh(&entry.host);
        if String::from_utf8_lossy(entry.host.as_os_str().as_bytes()).contains('\u{fffd}') {
            return Err(RootfsError::Unrepresentable {
                path: entry.host.display().to_string(),
                reason: "a name that is not UTF-8".into(),
            });
        }
        match &inode.kind {
            Kind::CharDevice { major, minor } => {
                let _ = writeln!(script, "mknod {path} c {major} {minor}");
            }
            Kind::BlockDevice { major, minor } => {
                let _ = writeln!(script, "mknod {path} b {major} {minor}");
            }
            Kind::Fifo => {
                let _ = writeln!(script, "mkfifo {path}");
            }
            _ => {}
        }
        let _ = writeln!(script, "chown -h {}:{} {path}", inode.uid, inode.gid);
        if !matches!(inode.kind, Kind::Symlink(_)) {
            let _ = writeln!(script, "chmod {:o} {path}", inode.mode);
        }
        if let Some(setfattr) = &setfattr {
            for (name, value) in &inode.xattrs {
                let name = String::from_utf8_lossy(name);
                if name.chars().any(|c| c.is_control() || c == '\'') {
                    return Err(RootfsError::Unrepresentable {
                        path: entry.host.display().to_string(),
                        reason: format!("xattr name {name:?}"),
                    });
                }
                let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
                let _ = writeln!(
                    script,
                    "{} -h -n '{name}' -v 0x{hex} {path}",
                    setfattr.display()
                );
            }
        }
        times.push((path, inode.mtime.max(0)));
    }
    // Children first, so creating them does not move their parent's mtime.
    for (path, mtime) in times.iter().rev() {
        let _ = writeln!(script, "touch -h -d @{mtime} {path}");
    }
    let _ = writeln!(
        script,
        "{} --quiet --preserve-mtime -x1 {} {}",
        mkfs.display(),
        sh(output),
        sh(&staging)
    );
    let script_path = scratch.join("erofs.sh");
    fs::write(&script_path, script)?;
    let result = Command::new(&fakeroot)
        .arg("--")
        .arg("sh")
        .arg(&script_path)
        .output()?;
    if !result.status.success() {
        return Err(tool_failed("mkfs.erofs (under fakeroot)", &result.stderr));
    }
    Ok(())
}
