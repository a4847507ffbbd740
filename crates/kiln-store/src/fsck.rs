//! Store verification: every blob re-hashed, catalog checked against files.

use std::collections::HashSet;

use kiln_types::Digest;

use crate::Store;
use crate::error::{Result, StoreError};
use crate::lock::{LockFile, LockMode};

/// One thing `fsck` found wrong.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    /// `corrupt_blob`, `missing_blob`, `incomplete_image`, `broken_disk`.
    pub kind: &'static str,
    /// The blob or image (manifest digest) concerned.
    pub digest: Digest,
    /// What exactly.
    pub detail: String,
    /// The sandbox disk concerned (`broken_disk`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// What `--repair` did about it, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repaired: Option<String>,
}

/// The result of a check.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FsckReport {
    /// Blob files re-hashed.
    pub blobs_checked: u64,
    /// Bytes re-hashed.
    pub bytes_checked: u64,
    /// Images checked.
    pub images_checked: u64,
    /// Sandbox disks checked.
    pub disks_checked: u64,
    /// Everything wrong.
    pub problems: Vec<Problem>,
}

impl Store {
    /// Re-hashes every blob and checks the catalog against the files.
    /// `observe` is told each blob as it is checked. With `repair`, corrupt
    /// blobs move to `quarantine/` and their images are marked incomplete, so
    /// the next pull fetches what is missing.
    pub fn fsck(&self, repair: bool, observe: &mut dyn FnMut(&Digest, u64)) -> Result<FsckReport> {
        let _gc = if repair {
            Some(LockFile::acquire(
                &self.gc_lock_path(),
                LockMode::Exclusive,
            )?)
        } else {
            None
        };
        let mut report = FsckReport::default();
        let mut good: HashSet<Digest> = HashSet::new();
        for file in self.content.list_blobs()? {
            observe(&file.digest, file.size);
            let (actual, size) = match self.content.hash_blob(&file.digest) {
                Ok(result) => result,
                Err(StoreError::BlobNotFound(_)) => continue, // removed by a concurrent prune
                Err(error) => return Err(error),
            };
            report.blobs_checked += 1;
            report.bytes_checked += size;
            if actual == file.digest {
                good.insert(file.digest);
                continue;
            }
            let mut problem = Problem {
                kind: "corrupt_blob",
                detail: format!(
                    "content of {} hashes to {actual}",
                    self.content.blob_path(&file.digest).display()
                ),
                digest: file.digest.clone(),
                disk: None,
                repaired: None,
            };
            if repair {
                let moved = self.content.quarantine_blob(&file.digest)?;
                let images = self.catalog.forget_blob(&file.digest)?;
                problem.repaired = Some(format!(
                    "moved to {}; {} image(s) marked incomplete, pull them again",
                    moved.display(),
                    images.len()
                ));
            }
            report.problems.push(problem);
        }
        let quarantined: HashSet<Digest> = report
            .problems
            .iter()
            .filter(|p| p.repaired.is_some())
            .map(|p| p.digest.clone())
            .collect();
        for (digest, _) in self.catalog.blobs()? {
            if good.contains(&digest)
                || quarantined.contains(&digest)
                || report.problems.iter().any(|p| p.digest == digest)
            {
                continue;
            }
            let mut problem = Problem {
                kind: "missing_blob",
                detail: "the catalog records it but its file is gone".into(),
                digest: digest.clone(),
                disk: None,
                repaired: None,
            };
            if repair {
                let images = self.catalog.forget_blob(&digest)?;
                problem.repaired = Some(format!(
                    "forgotten; {} image(s) marked incomplete, pull them again",
                    images.len()
                ));
            }
            report.problems.push(problem);
        }
        for image in self.catalog.images()? {
            report.images_checked += 1;
            let missing: Vec<Digest> = self
                .catalog
                .image_blobs(image.id)?
                .into_iter()
                .map(|b| b.digest)
                .filter(|d| !good.contains(d))
                .collect();
            if image.complete && missing.is_empty() {
                continue;
            }
            if !missing.is_empty() && image.complete && repair {
                self.catalog.mark_incomplete(image.id)?;
            }
            let detail = if missing.is_empty() {
                "marked incomplete by an earlier repair".to_string()
            } else {
                format!(
                    "{} of its blobs are missing or corrupt: {}",
                    missing.len(),
                    missing
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            report.problems.push(Problem {
                kind: "incomplete_image",
                digest: image.manifest_digest,
                disk: None,
                detail,
                repaired: repair.then(|| "marked incomplete: pull it again".to_string()),
            });
        }
        // Sandbox disks: each one's file, and for a qcow2 overlay the
        // cached image it reads (never repaired: a disk is the sandbox's).
        for disk in self.catalog.disks()? {
            report.disks_checked += 1;
            let detail = if !disk.path.exists() {
                format!(
                    "disk {:?}: its file {} is gone; `kiln disk rm {}` forgets it",
                    disk.name,
                    disk.path.display(),
                    disk.name
                )
            } else if disk.method == "overlay" && !good.contains(&disk.backing) {
                format!(
                    "disk {:?} is a qcow2 overlay of {}, which is {}: the disk reads wrong \
                     bytes or cannot open; `kiln disk rm {}` and create it again",
                    disk.name,
                    self.content.blob_path(&disk.backing).display(),
                    if quarantined.contains(&disk.backing) {
                        "corrupt and now in quarantine"
                    } else {
                        "missing or corrupt"
                    },
                    disk.name
                )
            } else {
                continue;
            };
            report.problems.push(Problem {
                kind: "broken_disk",
                digest: disk.backing,
                disk: Some(disk.name),
                detail,
                repaired: None,
            });
        }
        Ok(report)
    }
}
