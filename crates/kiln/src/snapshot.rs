//! `snapshot`: a sandbox disk's current content becomes a new image — the
//! disk's image plus one layer holding what changed (whiteouts for what was
//! removed) — listed by `images`, usable by `disk create` and `rootfs`.
//! A disk of a non-OCI source image (no layers) becomes a one-layer OCI
//! image holding the whole disk.
//!
//! The disk is read directly as an ext4 image (kiln's own reader: no mount,
//! so no root is needed; a qcow2 overlay is first flattened with `qemu-img
//! convert`). It must not be in use by a running VM: a disk whose journal
//! still needs replaying is refused.

use std::io::Write;
use std::process::Command;

use kiln_rootfs::write_diff_layer;
use kiln_store::{ImageBlob, LayerRecord, NewImage, NewTag};
use kiln_types::media_type;
use kiln_types::{Algorithm, Digest, Hasher, Reference};
use serde_json::Value;

use crate::Scratch;
use crate::error::{Error, Result};
use crate::rootfs::HashingWriter;
use crate::{LeaseGuard, Manager, tag_name};

/// A new image made from a disk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    /// Its name.
    pub reference: String,
    /// Its manifest digest.
    pub manifest_digest: Digest,
    /// The new layer.
    pub layer: Digest,
    /// Entries added or changed.
    pub changed: u64,
    /// Entries removed.
    pub removed: u64,
}

fn run(tool: &str, command: &mut Command) -> Result<()> {
    let output = command.output().map_err(|e| Error::DiskTool {
        tool: tool.into(),
        detail: if e.kind() == std::io::ErrorKind::NotFound {
            crate::disk::QEMU_IMG_MISSING.into()
        } else {
            e.to_string()
        },
    })?;
    if !output.status.success() {
        let detail = String::from_utf8_lossy(&output.stderr)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(Error::DiskTool {
            tool: tool.into(),
            detail,
        });
    }
    Ok(())
}

impl Manager {
    /// Makes disk `disk`'s content the image `new_reference`.
    pub fn snapshot(
        &self,
        disk: &str,
        new_reference: &str,
        progress: std::sync::Arc<dyn crate::Progress>,
    ) -> Result<Snapshot> {
        let reference: Reference = new_reference.parse()?;
        if reference.digest().is_some() {
            // As `docker commit`: the snapshot's digest is known only once it is made.
            return Err(Error::NameDigest {
                name: reference.to_string(),
                detail: "a snapshot cannot be named by a digest: its digest is known only once it is made".into(),
            });
        }
        crate::disk::validate_disk_name(disk)?;
        let catalog = self.store.catalog();
        let record = catalog.disk(disk)?.ok_or_else(|| Error::DiskNotFound {
            name: disk.to_string(),
        })?;
        let base = catalog
            .image(record.image_id)?
            .ok_or_else(|| Error::ImageNotFound {
                query: disk.to_string(),
            })?;
        let mut guard = LeaseGuard::new(self)?;
        let scratch = Scratch::new(self)?;

        // Read the disk as an ext4 image (first: a disk kiln cannot read
        // fails before the base image's layers are read).
        let raw = if record.format == "qcow2" {
            let flat = scratch.0.join("flat.raw");
            run(
                "qemu-img",
                Command::new("qemu-img")
                    .args(["convert", "-O", "raw"])
                    .arg(&record.path)
                    .arg(&flat),
            )?;
            flat
        } else {
            record.path.clone()
        };
        let image = kiln_rootfs::Ext4Image::open(&raw).map_err(|error| Error::DiskUnreadable {
            disk: disk.to_string(),
            detail: error.to_string(),
        })?;
        let (tree, objects, _) =
            self.image_tree(&base, disk, guard.lease(), &scratch.0, &progress)?;

        // The layer: tar → (diff_id hash) → gzip → (blob hash) → file.
        let layer_path = scratch.0.join("layer.tar.gz");
        let file = fs_err::File::create(&layer_path).map_err(kiln_store::StoreError::from)?;
        let compressed = HashingWriter {
            inner: std::io::BufWriter::new(file),
            hasher: Hasher::new(Algorithm::Sha256),
            size: 0,
        };
        let gzip = flate2::write::GzEncoder::new(compressed, flate2::Compression::new(6));
        let mut uncompressed = HashingWriter {
            inner: gzip,
            hasher: Hasher::new(Algorithm::Sha256),
            size: 0,
        };
        let stats = write_diff_layer(&tree, &objects, &image, &mut uncompressed)?;
        let HashingWriter {
            inner: gzip,
            hasher: diff_hasher,
            size: uncompressed_size,
        } = uncompressed;
        let mut compressed = gzip.finish().map_err(kiln_store::StoreError::from)?;
        compressed.flush().map_err(kiln_store::StoreError::from)?;
        let (diff_id, layer_digest, layer_size) = (
            diff_hasher.finish(),
            compressed.hasher.finish(),
            compressed.size,
        );
        drop(compressed.inner);
        guard.keep(&layer_path, &layer_digest, layer_size)?;
        catalog.record_blob(&layer_digest, layer_size)?;

        // Config and manifest: the base's, extended by one layer. An image
        // from a non-OCI source (a release bundle's, a catalog's or an image
        // server's root filesystem) has neither and no layers: the snapshot
        // is then a new OCI image whose one layer is the whole disk.
        let blobs = catalog.image_blobs(base.id)?;
        let malformed = |what: &str| {
            Error::Task(format!(
                "stored {what} of {} is not what kiln wrote",
                base.manifest_digest
            ))
        };
        let stored = |role: &str| blobs.iter().find(|b| b.role == role);
        let read_json = |blob: &ImageBlob, what: &str| -> Result<Value> {
            serde_json::from_slice(&self.store.content().read_blob(&blob.digest)?)
                .map_err(|_| malformed(what))
        };
        let (mut config, config_media_type, mut manifest, manifest_media_type) =
            if !matches!(base.kind.as_str(), "oci" | "snapshot") {
                empty_oci_image(base.platform.as_deref())
            } else if let (Some(manifest), Some(config)) = (stored("manifest"), stored("config")) {
                (
                    read_json(config, "config")?,
                    config.media_type.clone(),
                    read_json(manifest, "manifest")?,
                    manifest.media_type.clone(),
                )
            } else {
                return Err(Error::ImageNotFound {
                    query: format!("{disk}'s image (incomplete: pull it again)"),
                });
            };
        let now = rfc3339(kiln_store::fsutil::now());
        config["created"] = Value::String(now.clone());
        config["rootfs"]["diff_ids"]
            .as_array_mut()
            .ok_or_else(|| malformed("config"))?
            .push(Value::String(diff_id.to_string()));
        if let Some(history) = config.get_mut("history").and_then(Value::as_array_mut) {
            history.push(serde_json::json!({ "created": now, "created_by": format!("kiln snapshot {disk}") }));
        }
        let config_bytes = serde_json::to_vec(&config).map_err(|_| malformed("config"))?;
        let config_digest = Digest::sha256_of(&config_bytes);
        catalog.lease_blob(guard.lease(), &config_digest)?;
        self.store
            .content()
            .put_blob(&config_digest, &config_bytes)?;
        catalog.record_blob(&config_digest, config_bytes.len() as u64)?;

        let docker = manifest_media_type == media_type::DOCKER_MANIFEST;
        let layer_media_type = if docker {
            media_type::DOCKER_LAYER_GZIP
        } else {
            media_type::OCI_LAYER_GZIP
        };
        manifest["config"]["mediaType"] = Value::String(config_media_type.clone());
        manifest["config"]["digest"] = Value::String(config_digest.to_string());
        manifest["config"]["size"] = Value::from(config_bytes.len());
        manifest["layers"].as_array_mut().ok_or_else(|| malformed("manifest"))?.push(serde_json::json!({
            "mediaType": layer_media_type, "digest": layer_digest.to_string(), "size": layer_size,
        }));
        let manifest_bytes = serde_json::to_vec(&manifest).map_err(|_| malformed("manifest"))?;
        let manifest_digest = Digest::sha256_of(&manifest_bytes);
        catalog.lease_blob(guard.lease(), &manifest_digest)?;
        self.store
            .content()
            .put_blob(&manifest_digest, &manifest_bytes)?;
        catalog.record_blob(&manifest_digest, manifest_bytes.len() as u64)?;

        let mut image_blobs = vec![ImageBlob {
            role: "config".into(),
            position: 0,
            digest: config_digest.clone(),
            media_type: config_media_type,
            size: config_bytes.len() as u64,
        }];
        let mut layers = Vec::new();
        let base_layers: Vec<&ImageBlob> = blobs.iter().filter(|b| b.role == "layer").collect();
        for blob in &base_layers {
            image_blobs.push((*blob).clone());
            if let Some(layer) = catalog.layer(&blob.digest)? {
                layers.push(layer);
            }
        }
        image_blobs.push(ImageBlob {
            role: "layer".into(),
            position: base_layers.len() as u32,
            digest: layer_digest.clone(),
            media_type: layer_media_type.into(),
            size: layer_size,
        });
        layers.push(LayerRecord {
            digest: layer_digest.clone(),
            media_type: layer_media_type.into(),
            diff_id: Some(diff_id),
            uncompressed_size: Some(uncompressed_size),
        });
        let image = NewImage {
            manifest: ImageBlob {
                role: "manifest".into(),
                position: 0,
                digest: manifest_digest.clone(),
                media_type: manifest_media_type,
                size: manifest_bytes.len() as u64,
            },
            kind: "snapshot".into(),
            platform: base.platform.clone(),
            image_created: Some(now),
            blobs: image_blobs,
            layers,
            source: None,
        };
        let tag = NewTag {
            name: tag_name(&reference),
            platform: base.platform.clone().unwrap_or_default(),
            index: None,
        };
        catalog.commit_image(&image, Some(&tag), guard.lease.take())?;
        Ok(Snapshot {
            reference: reference.to_string(),
            manifest_digest,
            layer: layer_digest,
            changed: stats.changed,
            removed: stats.removed,
        })
    }
}

/// `2026-11-23T09:00:00Z` for seconds since the epoch.
fn rfc3339(seconds: i64) -> String {
    let days = seconds.div_euclid(86400);
    let rest = seconds.rem_euclid(86400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + if month <= 2 { 1 } else { 0 };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The config and manifest (with their media types) of an OCI image with
/// no layers yet, for `platform` (`os/arch[/variant]`; the host's if
/// absent): what a snapshot of a non-OCI source image's disk extends.
fn empty_oci_image(platform: Option<&str>) -> (Value, String, Value, String) {
    let platform = platform
        .and_then(|p| p.parse::<kiln_types::Platform>().ok())
        .unwrap_or_else(kiln_types::Platform::host);
    let mut config = serde_json::json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [] },
        "history": [],
    });
    if let Some(variant) = &platform.variant {
        config["variant"] = Value::String(variant.clone());
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": {},
        "layers": [],
    });
    (
        config,
        media_type::OCI_CONFIG.to_string(),
        manifest,
        media_type::OCI_MANIFEST.to_string(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_times() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_714_564_800), "2024-05-01T12:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
