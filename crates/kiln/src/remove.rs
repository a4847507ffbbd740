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
    /// Bytes freed on disk (the blobs' allocated blocks: a sparse root
    /// filesystem image frees less than its size).
    pub bytes_freed: u64,
}

impl Manager {
    /// Removes images by name or digest. A name goes; the image goes when no
    /// other name points at it and no holder uses it. Shared layers stay.
    /// Without `force`, refuses an image a holder uses, and removing by
    /// digest an image that has several names.
    pub fn remove(
        &self,
        queries: &[String],
        platform: Option<&Platform>,
        force: bool,
    ) -> Result<RemoveReport> {
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
                        holders: holders
                            .into_iter()
                            .map(|h| format!("{} {}", h.kind, h.name))
                            .collect(),
                    });
                }
                let is_source = item.image.media_type == crate::RECORD_MEDIA_TYPE;
                if is_source
                    && !force
                    && let Some(record) = catalog.source_image(item.image.id)?
                    && let Some(uuid) = &record.uuid
                {
                    let mut dependents = Vec::new();
                    for dependent in catalog.dependents_of(uuid)? {
                        if dependent.image_id == item.image.id {
                            continue;
                        }
                        dependents.push(match &dependent.uuid {
                            Some(child) => format!(
                                "{child} ({}@{})",
                                dependent.name,
                                dependent.version.as_deref().unwrap_or("-")
                            ),
                            None => dependent.name.clone(),
                        });
                    }
                    if !dependents.is_empty() {
                        return Err(Error::HasDependents {
                            image: query.clone(),
                            dependents,
                        });
                    }
                }
                if item.tag.is_none() && !force && !is_source {
                    let names = catalog.tags_of(item.image.id)?;
                    if names.len() > 1 {
                        return Err(Error::MultipleNames {
                            image: query.clone(),
                            names: names.into_iter().map(|t| t.name).collect(),
                        });
                    }
                }
            }
            plans.push(found);
        }
        let mut report = RemoveReport::default();
        let mut candidates = Vec::new();
        for found in plans.into_iter().flatten() {
            // A source image's names (`smartos://UUID`, `smartos://NAME@VERSION`)
            // all name one published image: removing one removes it.
            let tags = match &found.tag {
                Some(tag) if found.image.media_type != crate::RECORD_MEDIA_TYPE => {
                    vec![tag.clone()]
                }
                _ => catalog.tags_of(found.image.id)?,
            };
            for tag in &tags {
                if catalog.remove_tag(&tag.name, &tag.platform)? {
                    report
                        .untagged
                        .push(if tags.len() > 1 || tag.platform.is_empty() {
                            format!("{} ({})", tag.name, tag.platform)
                        } else {
                            tag.name.clone()
                        });
                }
                candidates.extend(tag.index_digest.clone());
            }
            if !catalog.tags_of(found.image.id)?.is_empty() {
                continue;
            }
            let blobs = catalog.image_blobs(found.image.id)?;
            let artifacts = catalog.artifacts_of(found.image.id)?;
            if catalog.remove_image(found.image.id)? {
                report.deleted.push(found.image.manifest_digest.clone());
                candidates.extend(blobs.into_iter().map(|b| b.digest));
                candidates.extend(artifacts.into_iter().map(|a| a.digest));
            } else {
                report
                    .kept_for_holders
                    .push(found.image.manifest_digest.clone());
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
    /// uses), root filesystems an older kiln converted (a disk made from
    /// one keeps its file), unreferenced blobs, ingests abandoned for a day,
    /// killed conversions' and disk creates' scratch, and disk directories
    /// no catalog row names.
    pub fn prune(&self, all: bool, dry_run: bool) -> Result<GcReport> {
        // Disk directories nothing records go first: a disk row, once
        // there, holds its image through the collection below.
        let (orphans, orphan_bytes) = self.remove_orphan_disks(dry_run)?;
        let mut report = self.store.collect_garbage(&GcOptions {
            dry_run,
            all_unused: all,
            converter_versions: vec![crate::rootfs::CONVERTER_VERSION.to_string()],
            ..GcOptions::default()
        })?;
        report.orphans_removed = orphans;
        report.orphan_bytes = orphan_bytes;
        Ok(report)
    }

    /// Re-hashes every blob and checks the catalog; see [`kiln_store::Store::fsck`].
    pub fn fsck(&self, repair: bool, observe: &mut dyn FnMut(&Digest, u64)) -> Result<FsckReport> {
        Ok(self.store.fsck(repair, observe)?)
    }
}

#[cfg(test)]
mod tests {
    use kiln_store::{ImageBlob, LayerRecord, NewImage, NewTag};

    use super::*;

    /// Stores an image made of real (tiny) blobs under `name`.
    fn add_image(manager: &Manager, name: &str, layers: &[&[u8]]) -> Digest {
        let store = manager.store();
        let put = |bytes: &[u8]| {
            let digest = Digest::sha256_of(bytes);
            store.content().put_blob(&digest, bytes).unwrap();
            store
                .catalog()
                .record_blob(&digest, bytes.len() as u64)
                .unwrap();
            digest
        };
        let manifest_bytes = format!("manifest of {name}");
        let manifest = put(manifest_bytes.as_bytes());
        let config = put(format!("config of {name}").as_bytes());
        let mut blobs = vec![ImageBlob {
            role: "config".into(),
            position: 0,
            digest: config,
            media_type: "c".into(),
            size: 1,
        }];
        let mut records = Vec::new();
        for (i, layer) in layers.iter().enumerate() {
            let digest = put(layer);
            blobs.push(ImageBlob {
                role: "layer".into(),
                position: i as u32,
                digest: digest.clone(),
                media_type: "l".into(),
                size: layer.len() as u64,
            });
            records.push(LayerRecord {
                digest,
                media_type: "l".into(),
                diff_id: None,
                uncompressed_size: None,
            });
        }
        let image = NewImage {
            manifest: ImageBlob {
                role: "manifest".into(),
                position: 0,
                digest: manifest.clone(),
                media_type: "m".into(),
                size: manifest_bytes.len() as u64,
            },
            kind: "oci".into(),
            platform: Some("linux/amd64".into()),
            image_created: None,
            blobs,
            layers: records,
            source: None,
        };
        let tag = NewTag {
            name: format!("example.com/{name}:1"),
            platform: "linux/amd64".into(),
            index: None,
        };
        store
            .catalog()
            .commit_image(&image, Some(&tag), None)
            .unwrap();
        manifest
    }

    #[test]
    fn held_images_are_refused_kept_by_force_and_kept_by_prune() {
        let dir = tempfile::tempdir().unwrap();
        let manager = Manager::open(dir.path()).unwrap();
        let digest = add_image(&manager, "app", &[b"base layer", b"app layer"]);
        let id = manager
            .store()
            .catalog()
            .image_by_digest(&digest)
            .unwrap()
            .unwrap()
            .id;
        manager
            .store()
            .catalog()
            .add_holder(id, "disk", "sandbox-1")
            .unwrap();

        let error = manager
            .remove(&["example.com/app:1".into()], None, false)
            .unwrap_err();
        assert!(matches!(error, Error::InUse { .. }), "{error}");
        assert!(error.to_string().contains("disk sandbox-1"), "{error}");
        assert_eq!(error.kind(), kiln_types::ErrorKind::FailedPrecondition);

        // --force removes the name; the image and its blobs stay for the disk.
        let report = manager
            .remove(&["example.com/app:1".into()], None, true)
            .unwrap();
        assert_eq!(report.untagged, ["example.com/app:1"]);
        assert_eq!(report.kept_for_holders, std::slice::from_ref(&digest));
        assert_eq!(report.blobs_removed, 0);
        let report = manager.prune(true, false).unwrap();
        assert!(
            report.images_removed.is_empty(),
            "prune keeps what a disk needs"
        );
        assert_eq!(report.blobs_removed, 0);
        assert!(
            manager
                .store()
                .content()
                .blob_size(&digest)
                .unwrap()
                .is_some()
        );

        // Once the disk goes, prune collects it.
        manager
            .store()
            .catalog()
            .remove_holder("disk", "sandbox-1")
            .unwrap();
        let report = manager.prune(false, false).unwrap();
        assert_eq!(report.images_removed, [digest]);
        assert_eq!(report.blobs_removed, 4);
        assert!(manager.store().content().list_blobs().unwrap().is_empty());
    }

    #[test]
    fn leased_blobs_survive_prune() {
        let dir = tempfile::tempdir().unwrap();
        let manager = Manager::open(dir.path()).unwrap();
        let store = manager.store();
        let orphan = Digest::sha256_of(b"in flight");
        let lease = store.catalog().create_lease().unwrap();
        store.catalog().lease_blob(&lease, &orphan).unwrap();
        store.content().put_blob(&orphan, b"in flight").unwrap();
        store.catalog().record_blob(&orphan, 9).unwrap();
        let allocated = store.content().list_blobs().unwrap()[0].allocated;
        let report = manager.prune(true, false).unwrap();
        assert_eq!(report.blobs_removed, 0, "a live lease protects its blobs");
        store.catalog().release_lease(lease).unwrap();
        let report = manager.prune(true, false).unwrap();
        assert_eq!(report.blobs_removed, 1);
        assert_eq!(report.blob_bytes, allocated, "what the blob took on disk");
    }

    #[test]
    fn rmi_of_one_image_keeps_layers_another_uses() {
        let dir = tempfile::tempdir().unwrap();
        let manager = Manager::open(dir.path()).unwrap();
        add_image(&manager, "one", &[b"shared", b"only one"]);
        add_image(&manager, "two", &[b"shared", b"only two"]);
        let report = manager
            .remove(&["example.com/one:1".into()], None, false)
            .unwrap();
        assert_eq!(report.deleted.len(), 1);
        assert_eq!(report.blobs_removed, 3, "manifest, config, own layer");
        assert!(
            manager
                .store()
                .content()
                .blob_size(&Digest::sha256_of(b"shared"))
                .unwrap()
                .is_some()
        );
        assert!(
            manager
                .store()
                .content()
                .blob_size(&Digest::sha256_of(b"only one"))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn prune_drops_root_filesystems_an_older_kiln_converted_unless_a_disk_reads_one() {
        let dir = tempfile::tempdir().unwrap();
        let manager = Manager::open(dir.path()).unwrap();
        let digest = add_image(&manager, "app", &[b"layer"]);
        let catalog = manager.store().catalog();
        let image_id = catalog.image_by_digest(&digest).unwrap().unwrap().id;
        let artifact = |bytes: &[u8], format: &str, version: &str| {
            let blob = Digest::sha256_of(bytes);
            manager.store().content().put_blob(&blob, bytes).unwrap();
            let record = kiln_store::ArtifactRecord {
                image_id,
                format: format.into(),
                options: String::new(),
                converter_version: version.into(),
                digest: blob.clone(),
                size: bytes.len() as u64,
                created_at: 0,
            };
            catalog.add_artifact(&record, None).unwrap();
            blob
        };
        let old_erofs = artifact(b"old erofs", "erofs", "kiln-rootfs-1");
        let old_ext4 = artifact(b"old ext4", "ext4", "kiln-rootfs-1");
        let current = artifact(b"new erofs", "erofs", crate::rootfs::CONVERTER_VERSION);
        catalog
            .add_disk(&kiln_store::DiskRecord {
                name: "sandbox".into(),
                image_id,
                format: "qcow2".into(),
                method: "overlay".into(),
                path: dir.path().join("disk.qcow2"),
                backing: old_ext4.clone(),
                size: 1,
                created_at: 0,
            })
            .unwrap();

        let dry = manager.prune(false, true).unwrap();
        assert_eq!(dry.artifacts_removed, 2);
        assert!(
            catalog
                .artifact(image_id, "erofs", "", "kiln-rootfs-1")
                .unwrap()
                .is_some()
        );

        let report = manager.prune(false, false).unwrap();
        assert_eq!(report.artifacts_removed, 2);
        assert!(
            catalog
                .artifact(image_id, "erofs", "", "kiln-rootfs-1")
                .unwrap()
                .is_none()
        );
        let content = manager.store().content();
        assert_eq!(
            content.blob_size(&old_erofs).unwrap(),
            None,
            "its blob goes"
        );
        assert!(
            content.blob_size(&old_ext4).unwrap().is_some(),
            "a disk reads this one"
        );
        assert!(content.blob_size(&current).unwrap().is_some());
        assert!(
            catalog
                .artifact(image_id, "erofs", "", crate::rootfs::CONVERTER_VERSION)
                .unwrap()
                .is_some()
        );
    }
}
