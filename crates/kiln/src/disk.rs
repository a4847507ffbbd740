//! Sandbox disks: a writable ext4 disk per sandbox, made cheaply from the
//! image's cached ext4 root filesystem, and a holder of that image.
//!
//! How a disk is made (`DiskFormat::Auto`): a reflink (copy-on-write clone)
//! where the filesystem supports it; else a qcow2 overlay whose backing file
//! is the cached raw image; else a sparse copy. `Raw` never makes an
//! overlay, `Qcow2` always does. Disks live in `ROOT/disks-v1/<name>/` and
//! in the catalog's `disks` table; the image they came from cannot be removed
//! (without `--force`, which removes only its name) and the raw image an
//! overlay reads stays until its last disk goes.
//!
//! A disk is made inside a locked scratch directory in `disks-v1/` (a
//! killed `disk create` leaves it to the next `prune`), then published:
//! under `disks-v1/.lock`,
//! its directory is renamed into place and its catalog row added. `disk rm`
//! takes the same lock to remove both, and `prune` takes it to remove a
//! directory that has no row (a create killed between the two steps).

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_store::DiskRecord;
use kiln_types::Platform;
use serde::Serialize;

use crate::Manager;
use crate::error::{Error, Result};
use crate::rootfs::RootfsFormat;

/// How to make a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// Reflink, else qcow2 overlay, else sparse copy.
    Auto,
    /// A raw image: reflink, else sparse copy.
    Raw,
    /// A qcow2 overlay on the cached raw image.
    Qcow2,
}

/// A sandbox disk.
#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    /// Its name.
    pub name: String,
    /// `raw` or `qcow2`.
    pub format: String,
    /// How it was made: `reflink`, `overlay`, `sparse-copy`.
    pub method: String,
    /// The file to hand to the VMM.
    pub path: PathBuf,
    /// Manifest digest of its image.
    pub image: kiln_types::Digest,
    /// Names of its image, when it has any.
    pub references: Vec<String>,
    /// Virtual size in bytes.
    pub size: u64,
    /// Bytes it takes on disk now.
    pub allocated: u64,
    /// Seconds since the epoch.
    pub created_at: i64,
    /// The kernel to boot it with, when its image ships one (release
    /// bundles, catalog images).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
}

/// `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 128 characters, not `.`/`..`-like.
pub fn validate_disk_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !name.contains("..");
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidDiskName {
            name: name.to_string(),
        })
    }
}

impl Manager {
    fn disks_dir(&self) -> PathBuf {
        self.store.root().join("disks-v1")
    }

    /// The lock under which disks are published and removed.
    fn lock_disks(&self) -> Result<kiln_store::lock::LockFile> {
        let directory = self.disks_dir();
        fs_err::create_dir_all(&directory).map_err(kiln_store::StoreError::from)?;
        Ok(kiln_store::lock::LockFile::acquire(
            &directory.join(".lock"),
            kiln_store::lock::LockMode::Exclusive,
        )
        .map_err(kiln_store::StoreError::from)?)
    }

    /// Removes the disk directories that no catalog row names (a create
    /// killed between publishing and recording): their number and bytes.
    pub(crate) fn remove_orphan_disks(&self, dry_run: bool) -> Result<(u64, u64)> {
        let directory = self.disks_dir();
        if !directory.exists() {
            return Ok((0, 0));
        }
        let _lock = self.lock_disks()?;
        let recorded: std::collections::HashSet<String> = self
            .store
            .catalog()
            .disks()?
            .into_iter()
            .map(|disk| disk.name)
            .collect();
        let (mut count, mut bytes) = (0, 0);
        if !dry_run {
            // Killed creates' scratch: at once once unlocked; a half-made
            // one (`.making`) after an hour.
            bytes += kiln_store::content::remove_stale_temps_in(
                &directory,
                kiln_store::fsutil::now() - 3600,
            )?;
        }
        for entry in fs_err::read_dir(&directory).map_err(kiln_store::StoreError::from)? {
            let entry = entry.map_err(kiln_store::StoreError::from)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // (Valid names never start with a dot: the lock and scratch do.)
            if validate_disk_name(&name).is_err()
                || !entry.path().is_dir()
                || recorded.contains(&name)
            {
                continue;
            }
            count += 1;
            bytes += kiln_store::fsutil::tree_bytes(&entry.path());
            if !dry_run {
                fs_err::remove_dir_all(entry.path()).map_err(kiln_store::StoreError::from)?;
            }
        }
        Ok((count, bytes))
    }

    /// Creates disk `name` from the image `query` names.
    pub fn create_disk(
        &self,
        name: &str,
        query: &str,
        platform: Option<&Platform>,
        format: DiskFormat,
        size: Option<u64>,
        progress: std::sync::Arc<dyn crate::Progress>,
    ) -> Result<Disk> {
        validate_disk_name(name)?;
        let catalog = self.store.catalog();
        if catalog.disk(name)?.is_some() {
            return Err(Error::DiskExists {
                name: name.to_string(),
            });
        }
        let base = self.rootfs(query, platform, RootfsFormat::Ext4, size, progress)?;
        let image = catalog
            .image_by_digest(&base.image)?
            .ok_or_else(|| Error::ImageNotFound {
                query: query.to_string(),
            })?;
        let disks = self.disks_dir();
        let directory = disks.join(name);
        // Made beside the disks (their filesystem, whatever is mounted
        // there), in a locked scratch a killed create leaves to `prune`.
        let scratch = crate::Scratch::in_dir(&disks, "making")?;
        let staging = scratch.0.join("disk");
        fs_err::create_dir_all(&staging).map_err(kiln_store::StoreError::from)?;
        let (file_name, disk_format, method) = make_disk(&base.path, &staging, format)?;
        // Publish, under the disks' lock: the directory appears whole, then
        // the catalog row.
        let _lock = self.lock_disks()?;
        if directory.exists() {
            if catalog.disk(name)?.is_some() {
                return Err(Error::DiskExists {
                    name: name.to_string(),
                });
            }
            // Left by a create that died between publishing the directory
            // and recording it: nothing refers to it.
            fs_err::remove_dir_all(&directory).map_err(kiln_store::StoreError::from)?;
        }
        fs_err::rename(&staging, &directory).map_err(kiln_store::StoreError::from)?;
        kiln_store::fsutil::sync_dir(&disks).map_err(kiln_store::StoreError::from)?;
        let path = directory.join(file_name);
        let record = DiskRecord {
            name: name.to_string(),
            image_id: image.id,
            format: disk_format.to_string(),
            method: method.to_string(),
            path: path.clone(),
            backing: base.digest.clone(),
            size: base.size,
            created_at: kiln_store::fsutil::now(),
        };
        if let Err(error) = catalog.add_disk(&record) {
            let _ = std::fs::remove_dir_all(&directory);
            return Err(match error {
                kiln_store::StoreError::Catalog { .. }
                    if catalog.disk(name).ok().flatten().is_some() =>
                {
                    Error::DiskExists {
                        name: name.to_string(),
                    }
                }
                // `rmi` took the image while the disk was being made.
                kiln_store::StoreError::Catalog { .. }
                    if catalog.image(image.id).ok().flatten().is_none() =>
                {
                    Error::ImageNotFound {
                        query: format!("{query} (removed while the disk was made)"),
                    }
                }
                other => other.into(),
            });
        }
        self.disk(name)
    }

    /// One disk.
    pub fn disk(&self, name: &str) -> Result<Disk> {
        let record = self
            .store
            .catalog()
            .disk(name)?
            .ok_or_else(|| Error::DiskNotFound {
                name: name.to_string(),
            })?;
        self.describe_disk(record)
    }

    fn describe_disk(&self, record: DiskRecord) -> Result<Disk> {
        let catalog = self.store.catalog();
        let image = catalog.image(record.image_id)?;
        let references = catalog
            .tags_of(record.image_id)?
            .into_iter()
            .map(|t| t.name)
            .collect();
        let allocated = kiln_store::fsutil::tree_bytes(&record.path);
        let kernel = match &image {
            Some(image) => self.source_kernel(image)?,
            None => None,
        };
        Ok(Disk {
            kernel,
            name: record.name,
            format: record.format,
            method: record.method,
            path: record.path,
            image: image.map(|i| i.manifest_digest).unwrap_or(record.backing),
            references,
            size: record.size,
            allocated,
            created_at: record.created_at,
        })
    }

    /// Every disk.
    pub fn disks(&self) -> Result<Vec<Disk>> {
        self.store
            .catalog()
            .disks()?
            .into_iter()
            .map(|record| self.describe_disk(record))
            .collect()
    }

    /// Removes a disk (its file, its row, its hold on the image).
    pub fn remove_disk(&self, name: &str) -> Result<()> {
        validate_disk_name(name)?;
        let _lock = self.lock_disks()?;
        if !self.store.catalog().remove_disk(name)? {
            return Err(Error::DiskNotFound {
                name: name.to_string(),
            });
        }
        let directory = self.disks_dir().join(name);
        match std::fs::remove_dir_all(&directory) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(kiln_store::StoreError::from(error).into())
            }
            _ => Ok(()),
        }
    }
}

/// What a disk tool error says when `qemu-img` is not there.
pub(crate) const QEMU_IMG_MISSING: &str = "not installed (Debian package qemu-utils)";

/// Makes the disk file in `directory`; returns (file name, format, method).
fn make_disk(
    base: &Path,
    directory: &Path,
    format: DiskFormat,
) -> Result<(&'static str, &'static str, &'static str)> {
    use kiln_store::fsutil::{Copied, copy_file};
    let raw = directory.join("disk.raw");
    let copy =
        |reflink_only| copy_file(base, &raw, reflink_only).map_err(kiln_store::StoreError::from);
    if format != DiskFormat::Qcow2 && copy(true)? == Some(Copied::Reflink) {
        return Ok(("disk.raw", "raw", "reflink"));
    }
    if format != DiskFormat::Raw {
        let qcow2 = directory.join("disk.qcow2");
        let output = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(base)
            .arg(&qcow2)
            .output();
        match output {
            Ok(output) if output.status.success() => {
                fs_err::File::open(&qcow2)
                    .and_then(|file| file.sync_all())
                    .map_err(kiln_store::StoreError::from)?;
                return Ok(("disk.qcow2", "qcow2", "overlay"));
            }
            Ok(output) if format == DiskFormat::Qcow2 => {
                return Err(Error::DiskTool {
                    tool: "qemu-img".into(),
                    detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
                });
            }
            Err(_) if format == DiskFormat::Qcow2 => {
                return Err(Error::DiskTool {
                    tool: "qemu-img".into(),
                    detail: QEMU_IMG_MISSING.into(),
                });
            }
            _ => {}
        }
    }
    copy(false)?;
    Ok(("disk.raw", "raw", "sparse-copy"))
}
