//! Garbage collection: mark from roots, sweep the rest.
//!
//! Roots are the blobs of every image that stays, the index blobs that tags
//! resolved through, and the blobs of every live lease. Collection runs under
//! the exclusive `locks/gc.lock` and inside one `BEGIN IMMEDIATE` catalog
//! transaction, and unlinks files *before* that transaction commits: a pull
//! leases a blob (a catalog write, which waits for the collector) before it
//! checks whether the blob exists, so it either sees the blob gone and fetches
//! it, or leased it first and the collector keeps it.

use std::collections::{HashMap, HashSet};

use kiln_types::Digest;
use rusqlite::{TransactionBehavior, params};

use crate::Store;
use crate::error::Result;
use crate::fsutil::now;
use crate::lock::{LockFile, LockMode};

/// What to collect.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Report without removing anything.
    pub dry_run: bool,
    /// Remove every image no holder uses, not only untagged ones.
    pub all_unused: bool,
    /// Remove ingests untouched for this many seconds.
    pub ingest_max_age: i64,
    /// The converter versions in use: derived artifacts made by any other
    /// (an older kiln) are dropped, and their blobs with them unless a
    /// disk still reads one. Empty: keep every artifact.
    pub converter_versions: Vec<String>,
}

impl Default for GcOptions {
    fn default() -> GcOptions {
        GcOptions {
            dry_run: false,
            all_unused: false,
            ingest_max_age: 24 * 3600,
            converter_versions: Vec::new(),
        }
    }
}

/// What a collection removed (or, dry, would remove).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    /// Manifest digests of the images removed.
    pub images_removed: Vec<Digest>,
    /// Blobs removed.
    pub blobs_removed: u64,
    /// Bytes those blobs took on disk (allocated blocks: a sparse root
    /// filesystem image frees less than its size).
    pub blob_bytes: u64,
    /// Abandoned ingests removed.
    pub ingests_removed: u64,
    /// Bytes of those ingests.
    pub ingest_bytes: u64,
    /// Leases whose process had died.
    pub leases_expired: u64,
    /// Derived artifacts of superseded converter versions dropped.
    pub artifacts_removed: u64,
    /// Disk directories no catalog row names (left by a killed `disk
    /// create`; counted by the disk manager's prune, not by the store's).
    pub orphans_removed: u64,
    /// Bytes of those directories.
    pub orphan_bytes: u64,
}

impl GcReport {
    /// Everything reclaimed on disk.
    pub fn bytes_reclaimed(&self) -> u64 {
        self.blob_bytes + self.ingest_bytes + self.orphan_bytes
    }
}

/// Deletes the leases whose process died (or that outlived their expiry).
fn expire_dead_leases(transaction: &rusqlite::Transaction<'_>) -> rusqlite::Result<u64> {
    let leases: Vec<(String, i64, Option<i64>, i64)> = transaction
        .prepare("SELECT id, pid, process_start, expires_at FROM leases")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let time = now();
    let mut expired = 0;
    for (id, pid, start, expires_at) in leases {
        if expires_at < time || !crate::process::is_alive(pid as u32, start) {
            transaction.execute("DELETE FROM leases WHERE id = ?1", params![id])?;
            expired += 1;
        }
    }
    Ok(expired)
}

impl Store {
    /// Removes unreferenced images, blobs, dead leases and abandoned ingests.
    pub fn collect_garbage(&self, options: &GcOptions) -> Result<GcReport> {
        let _gc = LockFile::acquire(&self.gc_lock_path(), LockMode::Exclusive)?;
        let mut report = GcReport::default();
        let files: HashMap<String, u64> = self
            .content
            .list_blobs()?
            .into_iter()
            .map(|file| (file.digest.to_string(), file.allocated))
            .collect();
        {
            let mut connection = self.catalog.lock();
            let wrap = self.catalog.wrap();
            let transaction = connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(&wrap)?;

            report.leases_expired = expire_dead_leases(&transaction).map_err(&wrap)?;

            let condition = if options.all_unused {
                "NOT EXISTS (SELECT 1 FROM holders h WHERE h.image_id = images.id)"
            } else {
                "NOT EXISTS (SELECT 1 FROM holders h WHERE h.image_id = images.id)
                 AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.image_id = images.id)"
            };
            let doomed: Vec<(i64, String)> = transaction
                .prepare(&format!(
                    "SELECT id, manifest_digest FROM images WHERE {condition}"
                ))
                .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                .map_err(&wrap)?;
            for (id, digest) in doomed {
                transaction
                    .execute("DELETE FROM images WHERE id = ?1", params![id])
                    .map_err(&wrap)?;
                report
                    .images_removed
                    .push(self.catalog.digest("images.manifest_digest", digest)?);
            }
            transaction
                .execute("DELETE FROM indexes WHERE digest NOT IN (SELECT index_digest FROM tags WHERE index_digest IS NOT NULL)", [])
                .map_err(&wrap)?;
            if !options.converter_versions.is_empty() {
                let placeholders = vec!["?"; options.converter_versions.len()].join(", ");
                report.artifacts_removed = transaction
                    .execute(
                        &format!(
                            "DELETE FROM artifacts WHERE converter_version NOT IN ({placeholders})"
                        ),
                        rusqlite::params_from_iter(options.converter_versions.iter()),
                    )
                    .map_err(&wrap)? as u64;
            }

            let live: HashSet<String> = transaction
                .prepare(
                    "SELECT digest FROM image_blobs UNION SELECT digest FROM indexes UNION SELECT digest FROM lease_blobs
                     UNION SELECT digest FROM artifacts UNION SELECT backing FROM disks",
                )
                .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                .map_err(&wrap)?;
            let rows: Vec<String> = transaction
                .prepare("SELECT digest FROM blobs")
                .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                .map_err(&wrap)?;
            let mut dead: Vec<String> = rows.into_iter().filter(|d| !live.contains(d)).collect();
            let recorded: HashSet<String> = dead.iter().cloned().collect();
            for name in files.keys() {
                if !live.contains(name) && !recorded.contains(name) {
                    dead.push(name.clone());
                }
            }
            for digest in &dead {
                report.blobs_removed += 1;
                report.blob_bytes += files.get(digest).copied().unwrap_or(0);
                if !options.dry_run {
                    transaction
                        .execute("DELETE FROM blobs WHERE digest = ?1", params![digest])
                        .map_err(&wrap)?;
                    self.content
                        .remove_blob(&self.catalog.digest("blobs.digest", digest.clone())?)?;
                }
            }
            if options.dry_run {
                transaction.rollback().map_err(&wrap)?;
            } else {
                transaction.commit().map_err(&wrap)?;
            }
        }

        let cutoff = now() - options.ingest_max_age;
        for ingest in self.content.list_ingests()? {
            if ingest.modified >= cutoff {
                continue;
            }
            if options.dry_run {
                report.ingests_removed += 1;
                report.ingest_bytes += ingest.size;
            } else if let Some(size) = self.content.remove_ingest_if_idle(&ingest.digest)? {
                report.ingests_removed += 1;
                report.ingest_bytes += size;
            }
        }
        if !options.dry_run {
            report.ingest_bytes += self.content.remove_stale_temp_files(cutoff)?;
        }
        Ok(report)
    }

    /// Removes those of `candidates` that nothing references any more (after
    /// `rmi`). Returns the number of blobs and bytes removed.
    pub fn remove_unreferenced(&self, candidates: &[Digest]) -> Result<(u64, u64)> {
        let mut connection = self.catalog.lock();
        let wrap = self.catalog.wrap();
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&wrap)?;
        expire_dead_leases(&transaction).map_err(&wrap)?;
        let (mut count, mut bytes) = (0, 0);
        for digest in candidates {
            let text = digest.to_string();
            let referenced: bool = transaction
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM image_blobs WHERE digest = ?1)
                         OR EXISTS (SELECT 1 FROM lease_blobs WHERE digest = ?1)
                         OR EXISTS (SELECT 1 FROM tags WHERE index_digest = ?1)
                         OR EXISTS (SELECT 1 FROM artifacts WHERE digest = ?1)
                         OR EXISTS (SELECT 1 FROM disks WHERE backing = ?1)",
                    params![text],
                    |r| r.get(0),
                )
                .map_err(&wrap)?;
            if referenced {
                continue;
            }
            transaction
                .execute("DELETE FROM indexes WHERE digest = ?1", params![text])
                .map_err(&wrap)?;
            transaction
                .execute("DELETE FROM blobs WHERE digest = ?1", params![text])
                .map_err(&wrap)?;
            if let Some(size) = self.content.blob_allocated(digest)? {
                self.content.remove_blob(digest)?;
                count += 1;
                bytes += size;
            }
        }
        transaction.commit().map_err(&wrap)?;
        Ok((count, bytes))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::content::IngestStart;

    fn partial(store: &Store, bytes: &[u8]) -> Digest {
        let digest = Digest::sha256_of(bytes);
        let IngestStart::Writing(mut ingest) = store
            .content()
            .ingest(&digest, Some(bytes.len() as u64), false)
            .unwrap()
        else {
            panic!("fresh ingest expected");
        };
        ingest.write(&bytes[..bytes.len() / 2]).unwrap();
        drop(ingest);
        digest
    }

    fn age(store: &Store, digest: &Digest, days: u64) {
        let path = store
            .root()
            .join("content-v1/ingest")
            .join(format!("sha256-{}.partial", digest.hex()));
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(days * 86400))
            .unwrap();
    }

    #[test]
    fn abandoned_ingests_go_after_a_day_unless_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let old = partial(&store, b"abandoned two days ago");
        let fresh = partial(&store, b"interrupted a minute ago");
        let busy = partial(&store, b"old but still being written");
        age(&store, &old, 2);
        age(&store, &busy, 2);
        let IngestStart::Writing(held) = store.content().ingest(&busy, None, false).unwrap() else {
            panic!()
        };

        let dry = store
            .collect_garbage(&GcOptions {
                dry_run: true,
                ..GcOptions::default()
            })
            .unwrap();
        assert_eq!(dry.ingests_removed, 2, "a dry run counts both old ones");
        assert_eq!(
            store.content().list_ingests().unwrap().len(),
            3,
            "and removes nothing"
        );

        let report = store.collect_garbage(&GcOptions::default()).unwrap();
        assert_eq!(report.ingests_removed, 1);
        assert_eq!(report.ingest_bytes, 11);
        let left: Vec<Digest> = store
            .content()
            .list_ingests()
            .unwrap()
            .into_iter()
            .map(|i| i.digest)
            .collect();
        assert!(left.contains(&fresh) && left.contains(&busy) && !left.contains(&old));
        drop(held);
    }

    #[test]
    fn leases_of_dead_processes_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let blob = Digest::sha256_of(b"leased");
        let lease = store.catalog().create_lease().unwrap();
        store.catalog().lease_blob(&lease, &blob).unwrap();
        store.content().put_blob(&blob, b"leased").unwrap();
        let live = store.collect_garbage(&GcOptions::default()).unwrap();
        assert_eq!((live.leases_expired, live.blobs_removed), (0, 0));
        // The owner dies (simulated: the lease names a process that does not exist).
        store
            .catalog()
            .lock()
            .execute("UPDATE leases SET pid = 2147483646", [])
            .unwrap();
        let dead = store.collect_garbage(&GcOptions::default()).unwrap();
        assert_eq!((dead.leases_expired, dead.blobs_removed), (1, 1));
        assert_eq!(store.content().blob_size(&blob).unwrap(), None);
    }
}
