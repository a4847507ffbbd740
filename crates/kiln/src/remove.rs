//! `rmi`, `prune` and `fsck`.

use kiln_store::{FsckReport, GcOptions, GcReport};
use kiln_types::{Digest, Platform};
use serde::Serialize;

use crate::Manager;
use crate::error::{Error, Result};

/// What `rmi` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RemoveReport {
    /// Names removed.
    pub untagged: Vec<String>,
    /// Images removed (manifest digests).
    pub deleted: Vec<Digest>,
    /// Images kept because a holder uses them (their names went with --force).
    pub kept_for_holders: Vec<Digest>,
    /// Blobs removed.
    pub blobs_removed: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
}

impl Manager {
    /// Removes images by name or digest. A name goes; the image goes when no
    /// other name points at it and no holder uses it. Shared layers stay.
    /// Without `force`, refuses an image a holder uses, and removing by
    /// digest an image that has several names.
    pub fn remove(&self, queries: &[String], platform: Option<&Platform>, force: bool) -> Result<RemoveReport> {
        let catalog = self.store.catalog();
        // Resolve everything first: fail before changing anything.
        let mut plans = Vec::new();
        for query in queries {
            let found = self.find(query, platform)?;
            for item in &found {
                let holders = catalog.holders_of(item.image.id)?;
                if !holders.is_empty() && !force {
                    return Err(Error::InUse {
                        image: query.clone(),
                        holders: holders.into_iter().map(|h| format!("{} {}", h.kind, h.name)).collect(),
                    });
                }
                if item.tag.is_none() && !force {
                    let names = catalog.tags_of(item.image.id)?;
                    if names.len() > 1 {
                        return Err(Error::MultipleNames { image: query.clone(), names: names.into_iter().map(|t| t.name).collect() });
                    }
                }
            }
            plans.push(found);
        }
        let mut report = RemoveReport::default();
        let mut candidates = Vec::new();
        for found in plans.into_iter().flatten() {
            let tags = match &found.tag {
                Some(tag) => vec![tag.clone()],
                None => catalog.tags_of(found.image.id)?,
            };
            for tag in &tags {
                if catalog.remove_tag(&tag.name, &tag.platform)? {
                    report.untagged.push(if tags.len() > 1 || tag.platform.is_empty() { format!("{} ({})", tag.name, tag.platform) } else { tag.name.clone() });
                }
                candidates.extend(tag.index_digest.clone());
            }
            if !catalog.tags_of(found.image.id)?.is_empty() {
                continue;
            }
            let blobs = catalog.image_blobs(found.image.id)?;
            if catalog.remove_image(found.image.id)? {
                report.deleted.push(found.image.manifest_digest.clone());
                candidates.extend(blobs.into_iter().map(|b| b.digest));
            } else {
                report.kept_for_holders.push(found.image.manifest_digest.clone());
            }
        }
        candidates.sort();
        candidates.dedup();
        let (count, bytes) = self.store.remove_unreferenced(&candidates)?;
        report.blobs_removed = count;
        report.bytes_freed = bytes;
        Ok(report)
    }

    /// Removes images nothing references (`all`: every image no holder
    /// uses), unreferenced blobs and ingests abandoned for a day.
    pub fn prune(&self, all: bool, dry_run: bool) -> Result<GcReport> {
        Ok(self.store.collect_garbage(&GcOptions { dry_run, all_unused: all, ..GcOptions::default() })?)
    }

    /// Re-hashes every blob and checks the catalog; see [`kiln_store::Store::fsck`].
    pub fn fsck(&self, repair: bool, observe: &mut dyn FnMut(&Digest, u64)) -> Result<FsckReport> {
        Ok(self.store.fsck(repair, observe)?)
    }
}
