//! The catalog: what the store holds, in SQLite (WAL). The single source of
//! truth for images, tags, layers, holders and leases; the schema is
//! described in [`crate::schema`].

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use kiln_types::Digest;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::error::{Result, StoreError};
use crate::fsutil::now;
use crate::schema::{CURRENT_VERSION, MIGRATIONS};

const BUSY_TIMEOUT: Duration = Duration::from_secs(120);
/// A lease outlives a process that forgot it by this much at most.
const LEASE_LIFETIME: i64 = 7 * 24 * 3600;

/// The catalog database.
#[derive(Debug)]
pub struct Catalog {
    path: PathBuf,
    connection: Mutex<Connection>,
}

/// An image row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    /// Row id.
    pub id: i64,
    /// Digest of the manifest (or of the source's metadata document).
    pub manifest_digest: Digest,
    /// Media type of that document.
    pub media_type: String,
    /// `oci`, later `bundle`, `catalog`, `imgapi`, `snapshot`.
    pub kind: String,
    /// Digest of the config blob, when the image has one.
    pub config_digest: Option<Digest>,
    /// Platform, `os/arch[/variant]`.
    pub platform: Option<String>,
    /// Bytes of all its blobs.
    pub size: u64,
    /// False when a blob was lost (fsck --repair); the next pull refetches.
    pub complete: bool,
    /// Creation time the image itself declares (RFC 3339).
    pub image_created: Option<String>,
    /// When it entered the store.
    pub created_at: i64,
    /// When it was last pulled, ensured or used.
    pub last_used_at: i64,
}

/// A blob that is part of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBlob {
    /// `manifest`, `config`, `layer`, …
    pub role: String,
    /// Order within the role (layers: base first).
    pub position: u32,
    /// The blob.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size.
    pub size: u64,
}

/// What the catalog knows of a layer blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRecord {
    /// The compressed blob.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Digest of the uncompressed tar.
    pub diff_id: Option<Digest>,
    /// Size of the uncompressed tar.
    pub uncompressed_size: Option<u64>,
}

/// A tag row: a reference name resolved for one platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRecord {
    /// Canonical reference.
    pub name: String,
    /// Platform the reference was resolved for.
    pub platform: String,
    /// The image.
    pub image_id: i64,
    /// The index the reference named, when it named one.
    pub index_digest: Option<Digest>,
    /// When the tag last moved.
    pub updated_at: i64,
}

/// A holder row: something that uses an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderRecord {
    /// The image held.
    pub image_id: i64,
    /// What holds it (`disk`, …).
    pub kind: String,
    /// Its name.
    pub name: String,
    /// When it was created.
    pub created_at: i64,
}

/// An index blob a tag resolved through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRecord {
    /// Its digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size.
    pub size: u64,
}

/// A file derived from an image (a root filesystem), stored as a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRecord {
    /// The image it was made from.
    pub image_id: i64,
    /// `ext4`, `erofs`, `initramfs`, …
    pub format: String,
    /// Options that change the bytes (size, …), canonical text.
    pub options: String,
    /// Version of the converter that made it.
    pub converter_version: String,
    /// The blob holding it.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// When it was made.
    pub created_at: i64,
}

/// A sandbox disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskRecord {
    /// Its name.
    pub name: String,
    /// The image it was made from (a holder of it).
    pub image_id: i64,
    /// `raw` or `qcow2`.
    pub format: String,
    /// `reflink`, `overlay` or `sparse-copy`.
    pub method: String,
    /// Its file.
    pub path: PathBuf,
    /// Digest of the ext4 artifact blob it was made from.
    pub backing: Digest,
    /// Virtual size.
    pub size: u64,
    /// When it was made.
    pub created_at: i64,
}

/// What the catalog indexes of an image from a non-OCI source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceImageRecord {
    /// The image (0 in a [`NewImage`]: filled in when recorded).
    pub image_id: i64,
    /// Configured source name (`sbx`, `smartos`, `mycat`, `local`).
    pub source: String,
    /// `github-release`, `catalog` or `imgapi`.
    pub source_type: String,
    /// Release tag, catalog entry name or imgapi image name.
    pub name: String,
    /// Version, when the source has one.
    pub version: Option<String>,
    /// imgapi UUID.
    pub uuid: Option<String>,
    /// imgapi origin (parent image) UUID.
    pub origin: Option<String>,
    /// Publication time the source declares (RFC 3339).
    pub published_at: Option<String>,
}

/// What `stat` said of a blob right after its content was verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobStamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch (no user can set it back).
    pub ctime_ns: i64,
    /// Inode number.
    pub inode: u64,
    /// Device number.
    pub device: u64,
}

impl BlobStamp {
    /// The stamp of `metadata`.
    pub fn of(metadata: &std::fs::Metadata) -> BlobStamp {
        use std::os::unix::fs::MetadataExt;
        BlobStamp {
            size: metadata.len(),
            mtime_ns: metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
            ctime_ns: metadata.ctime() * 1_000_000_000 + metadata.ctime_nsec(),
            inode: metadata.ino(),
            device: metadata.dev(),
        }
    }
}

/// An image to record.
#[derive(Debug, Clone)]
pub struct NewImage {
    /// The manifest blob (role `manifest`).
    pub manifest: ImageBlob,
    /// `oci`, …
    pub kind: String,
    /// Platform, `os/arch[/variant]`.
    pub platform: Option<String>,
    /// Creation time the image declares.
    pub image_created: Option<String>,
    /// Every other blob (config, layers, …).
    pub blobs: Vec<ImageBlob>,
    /// Layer facts (diff_ids) for the `layer` blobs.
    pub layers: Vec<LayerRecord>,
    /// Source facts, for an image from a non-OCI source.
    pub source: Option<SourceImageRecord>,
}

/// A tag to point at a newly recorded image.
#[derive(Debug, Clone)]
pub struct NewTag {
    /// Canonical reference.
    pub name: String,
    /// Platform the reference was resolved for.
    pub platform: String,
    /// The index the reference named, if any.
    pub index: Option<IndexRecord>,
}

/// Protection for the blobs of an operation in progress. Release it with
/// [`Catalog::release_lease`]; a lease whose process died is collected.
#[derive(Debug)]
pub struct Lease {
    id: String,
}

impl Lease {
    /// The lease id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

pub(crate) fn parse_digest(path: &Path, column: &'static str, value: String) -> Result<Digest> {
    value.parse().map_err(|_| StoreError::CorruptRow {
        path: path.to_path_buf(),
        column,
        value,
    })
}

impl Catalog {
    /// Opens (creating and migrating) the catalog at `path`.
    pub fn open(path: &Path) -> Result<Catalog> {
        let wrap = |source| StoreError::Catalog {
            path: path.to_path_buf(),
            source,
        };
        let mut connection = Connection::open(path).map_err(wrap)?;
        connection.busy_timeout(BUSY_TIMEOUT).map_err(wrap)?;
        let journal: String = connection
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .map_err(wrap)?;
        if !journal.eq_ignore_ascii_case("wal") {
            connection
                .pragma_update(None, "journal_mode", "WAL")
                .map_err(wrap)?;
        }
        connection
            .pragma_update(None, "synchronous", "FULL")
            .map_err(wrap)?;
        connection
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(wrap)?;
        migrate(&mut connection, path, CURRENT_VERSION)?;
        Ok(Catalog {
            path: path.to_path_buf(),
            connection: Mutex::new(connection),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn wrap(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Catalog {
            path: self.path.clone(),
            source,
        }
    }

    pub(crate) fn digest(&self, column: &'static str, value: String) -> Result<Digest> {
        parse_digest(&self.path, column, value)
    }

    /// Records a committed blob (no-op when known).
    pub fn record_blob(&self, digest: &Digest, size: u64) -> Result<()> {
        self.lock()
            .execute(
                "INSERT INTO blobs (digest, size, created_at) VALUES (?1, ?2, ?3) ON CONFLICT(digest) DO NOTHING",
                params![digest.to_string(), size as i64, now()],
            )
            .map_err(self.wrap())?;
        Ok(())
    }

    /// Every blob row: digest and size.
    pub fn blobs(&self) -> Result<Vec<(Digest, u64)>> {
        let connection = self.lock();
        let mut statement = connection
            .prepare("SELECT digest, size FROM blobs ORDER BY digest")
            .map_err(self.wrap())?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })
            .map_err(self.wrap())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.wrap())?;
        rows.into_iter()
            .map(|(digest, size)| Ok((self.digest("blobs.digest", digest)?, size as u64)))
            .collect()
    }

    /// Records an image, points `tag` at it and releases `lease`, in one
    /// transaction. Returns the image id. Recording an image that exists
    /// marks it complete and refreshes its blobs.
    pub fn commit_image(
        &self,
        image: &NewImage,
        tag: Option<&NewTag>,
        lease: Option<Lease>,
    ) -> Result<i64> {
        self.commit_image_tags(image, tag.map(std::slice::from_ref).unwrap_or(&[]), lease)
    }

    /// [`Catalog::commit_image`] with any number of tags, all in the one
    /// transaction.
    pub fn commit_image_tags(
        &self,
        image: &NewImage,
        tags: &[NewTag],
        lease: Option<Lease>,
    ) -> Result<i64> {
        let ids = self.commit_images(&[(image, tags)], lease)?;
        Ok(ids[0])
    }

    /// Records several images, each with its tags, in one transaction: all
    /// or none (a load of an archive of several images). The lease goes
    /// with them.
    pub fn commit_images(
        &self,
        images: &[(&NewImage, &[NewTag])],
        lease: Option<Lease>,
    ) -> Result<Vec<i64>> {
        let mut connection = self.lock();
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.wrap())?;
        let mut ids = Vec::with_capacity(images.len());
        for (image, tags) in images {
            let id = insert_image(&transaction, image).map_err(self.wrap())?;
            ids.push(id);
            Self::insert_tags(&transaction, id, tags).map_err(self.wrap())?;
        }
        if let Some(lease) = lease {
            transaction
                .execute("DELETE FROM leases WHERE id = ?1", params![lease.id])
                .map_err(self.wrap())?;
        }
        transaction.commit().map_err(self.wrap())?;
        Ok(ids)
    }

    fn insert_tags(
        transaction: &rusqlite::Transaction<'_>,
        id: i64,
        tags: &[NewTag],
    ) -> rusqlite::Result<()> {
        for tag in tags {
            if let Some(index) = &tag.index {
                transaction.execute(
                    "INSERT INTO indexes (digest, media_type, size) VALUES (?1, ?2, ?3) ON CONFLICT(digest) DO NOTHING",
                    params![index.digest.to_string(), index.media_type, index.size as i64],
                )?;
            }
            transaction.execute(
                "INSERT INTO tags (name, platform, image_id, index_digest, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(name, platform) DO UPDATE SET image_id = excluded.image_id,
                     index_digest = excluded.index_digest, updated_at = excluded.updated_at",
                params![tag.name, tag.platform, id, tag.index.as_ref().map(|i| i.digest.to_string()), now()],
            )?;
        }
        Ok(())
    }

    /// Tags whose name is `name`, every platform.
    pub fn tags_named(&self, name: &str) -> Result<Vec<TagRecord>> {
        self.query_tags("SELECT name, platform, image_id, index_digest, updated_at FROM tags WHERE name = ?1 ORDER BY platform", params![name])
    }

    /// Tags pointing at an image.
    pub fn tags_of(&self, image_id: i64) -> Result<Vec<TagRecord>> {
        self.query_tags(
            "SELECT name, platform, image_id, index_digest, updated_at FROM tags WHERE image_id = ?1 ORDER BY name, platform",
            params![image_id],
        )
    }

    /// Every tag.
    pub fn all_tags(&self) -> Result<Vec<TagRecord>> {
        self.query_tags("SELECT name, platform, image_id, index_digest, updated_at FROM tags ORDER BY name, platform", params![])
    }

    /// Tags that resolved through an index.
    pub fn tags_with_index(&self, index: &Digest) -> Result<Vec<TagRecord>> {
        self.query_tags(
            "SELECT name, platform, image_id, index_digest, updated_at FROM tags WHERE index_digest = ?1 ORDER BY name, platform",
            params![index.to_string()],
        )
    }

    fn query_tags(&self, sql: &str, parameters: &[&dyn rusqlite::ToSql]) -> Result<Vec<TagRecord>> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(sql).map_err(self.wrap())?;
        let rows = statement
            .query_map(parameters, |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    row.get::<_, i64>(4)?,
                ))
            })
            .map_err(self.wrap())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.wrap())?;
        drop(statement);
        drop(connection);
        rows.into_iter()
            .map(|(name, platform, image_id, index_digest, updated_at)| {
                let index_digest = index_digest
                    .map(|d| self.digest("tags.index_digest", d))
                    .transpose()?;
                Ok(TagRecord {
                    name,
                    platform,
                    image_id,
                    index_digest,
                    updated_at,
                })
            })
            .collect()
    }

    /// Points `tag` at an existing image (another name for it).
    pub fn add_tag(&self, tag: &NewTag, image_id: i64) -> Result<()> {
        self.lock()
            .execute(
                "INSERT INTO tags (name, platform, image_id, index_digest, updated_at) VALUES (?1, ?2, ?3, NULL, ?4)
                 ON CONFLICT(name, platform) DO UPDATE SET image_id = excluded.image_id,
                     index_digest = NULL, updated_at = excluded.updated_at",
                params![tag.name, tag.platform, image_id, now()],
            )
            .map_err(self.wrap())?;
        Ok(())
    }

    /// Removes one tag row; returns whether it existed.
    pub fn remove_tag(&self, name: &str, platform: &str) -> Result<bool> {
        let count = self
            .lock()
            .execute(
                "DELETE FROM tags WHERE name = ?1 AND platform = ?2",
                params![name, platform],
            )
            .map_err(self.wrap())?;
        Ok(count > 0)
    }

    const IMAGE_COLUMNS: &str = "id, manifest_digest, media_type, kind, config_digest, platform, size, complete, image_created, created_at, last_used_at";

    fn query_images(
        &self,
        sql_tail: &str,
        parameters: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<ImageRecord>> {
        type Row = (
            i64,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            i64,
            bool,
            Option<String>,
            i64,
            i64,
        );
        let connection = self.lock();
        let sql = format!("SELECT {} FROM images {sql_tail}", Self::IMAGE_COLUMNS);
        let mut statement = connection.prepare_cached(&sql).map_err(self.wrap())?;
        let rows: Vec<Row> = statement
            .query_map(parameters, |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                    row.get(6)?,
                    row.get(7)?,
                    row.get(8)?,
                    row.get(9)?,
                    row.get(10)?,
                ))
            })
            .map_err(self.wrap())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.wrap())?;
        drop(statement);
        drop(connection);
        rows.into_iter()
            .map(
                |(
                    id,
                    manifest_digest,
                    media_type,
                    kind,
                    config_digest,
                    platform,
                    size,
                    complete,
                    image_created,
                    created_at,
                    last_used_at,
                )| {
                    Ok(ImageRecord {
                        id,
                        manifest_digest: self.digest("images.manifest_digest", manifest_digest)?,
                        media_type,
                        kind,
                        config_digest: config_digest
                            .map(|d| self.digest("images.config_digest", d))
                            .transpose()?,
                        platform,
                        size: size as u64,
                        complete,
                        image_created,
                        created_at,
                        last_used_at,
                    })
                },
            )
            .collect()
    }

    /// Every image, newest first.
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        self.query_images("ORDER BY created_at DESC, id DESC", params![])
    }

    /// The image with this row id.
    pub fn image(&self, id: i64) -> Result<Option<ImageRecord>> {
        Ok(self.query_images("WHERE id = ?1", params![id])?.pop())
    }

    /// The image whose manifest has this digest.
    pub fn image_by_digest(&self, digest: &Digest) -> Result<Option<ImageRecord>> {
        Ok(self
            .query_images("WHERE manifest_digest = ?1", params![digest.to_string()])?
            .pop())
    }

    /// Images whose manifest digest hex starts with `prefix` (lowercase hex).
    pub fn images_by_prefix(&self, prefix: &str) -> Result<Vec<ImageRecord>> {
        let pattern = format!("%:{}%", prefix.replace(['%', '_'], ""));
        self.query_images(
            "WHERE manifest_digest LIKE ?1 ORDER BY id",
            params![pattern],
        )
    }

    /// The blobs of an image, manifest first, then config, then layers in order.
    pub fn image_blobs(&self, image_id: i64) -> Result<Vec<ImageBlob>> {
        let connection = self.lock();
        let mut statement = connection
            .prepare_cached(
                "SELECT role, position, digest, media_type, size FROM image_blobs WHERE image_id = ?1
                 ORDER BY CASE role WHEN 'manifest' THEN 0 WHEN 'config' THEN 1 WHEN 'layer' THEN 2 ELSE 3 END, role, position",
            )
            .map_err(self.wrap())?;
        let rows = statement
            .query_map(params![image_id], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, i64>(4)?,
                ))
            })
            .map_err(self.wrap())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.wrap())?;
        drop(statement);
        drop(connection);
        rows.into_iter()
            .map(|(role, position, digest, media_type, size)| {
                Ok(ImageBlob {
                    role,
                    position: position as u32,
                    digest: self.digest("image_blobs.digest", digest)?,
                    media_type,
                    size: size as u64,
                })
            })
            .collect()
    }

    /// What the catalog knows of a layer blob.
    pub fn layer(&self, digest: &Digest) -> Result<Option<LayerRecord>> {
        let connection = self.lock();
        let row = connection
            .query_row(
                "SELECT media_type, diff_id, uncompressed_size FROM layers WHERE digest = ?1",
                params![digest.to_string()],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, Option<String>>(1)?,
                        row.get::<_, Option<i64>>(2)?,
                    ))
                },
            )
            .optional()
            .map_err(self.wrap())?;
        drop(connection);
        row.map(|(media_type, diff_id, uncompressed_size)| {
            Ok(LayerRecord {
                digest: digest.clone(),
                media_type,
                diff_id: diff_id
                    .map(|d| self.digest("layers.diff_id", d))
                    .transpose()?,
                uncompressed_size: uncompressed_size.map(|s| s as u64),
            })
        })
        .transpose()
    }

    /// Marks an image used now.
    pub fn touch_image(&self, image_id: i64) -> Result<()> {
        self.lock()
            .execute(
                "UPDATE images SET last_used_at = ?1 WHERE id = ?2",
                params![now(), image_id],
            )
            .map_err(self.wrap())?;
        Ok(())
    }

    const SOURCE_COLUMNS: &str =
        "image_id, source, source_type, name, version, uuid, origin, published_at";

    fn query_source_images(
        &self,
        sql_tail: &str,
        parameters: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<SourceImageRecord>> {
        let connection = self.lock();
        let sql = format!(
            "SELECT {} FROM source_images {sql_tail}",
            Self::SOURCE_COLUMNS
        );
        let mut statement = connection.prepare_cached(&sql).map_err(self.wrap())?;
        let rows = statement
            .query_map(parameters, |row| {
                Ok(SourceImageRecord {
                    image_id: row.get(0)?,
                    source: row.get(1)?,
                    source_type: row.get(2)?,
                    name: row.get(3)?,
                    version: row.get(4)?,
                    uuid: row.get(5)?,
                    origin: row.get(6)?,
                    published_at: row.get(7)?,
                })
            })
            .map_err(self.wrap())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.wrap())?;
        Ok(rows)
    }

    /// Source facts of an image, when it came from a non-OCI source.
    pub fn source_image(&self, image_id: i64) -> Result<Option<SourceImageRecord>> {
        Ok(self
            .query_source_images("WHERE image_id = ?1", params![image_id])?
            .into_iter()
            .next())
    }

    /// Every image from non-OCI sources.
    pub fn source_images(&self) -> Result<Vec<SourceImageRecord>> {
        self.query_source_images("ORDER BY source, name, version", params![])
    }

    /// Images of `source` named `name`, newest publication first.
    pub fn source_images_named(&self, source: &str, name: &str) -> Result<Vec<SourceImageRecord>> {
        self.query_source_images(
            "WHERE source = ?1 AND name = ?2 ORDER BY published_at DESC, image_id DESC",
            params![source, name],
        )
    }

    /// Images (of any source) with imgapi UUID `uuid`.
    pub fn source_images_with_uuid(&self, uuid: &str) -> Result<Vec<SourceImageRecord>> {
        self.query_source_images("WHERE uuid = ?1 ORDER BY image_id", params![uuid])
    }

    /// Installed images whose origin is `uuid`.
    pub fn dependents_of(&self, uuid: &str) -> Result<Vec<SourceImageRecord>> {
        self.query_source_images("WHERE origin = ?1 ORDER BY image_id", params![uuid])
    }

    /// The stamp recorded when `digest` was last verified.
    pub fn blob_stamp(&self, digest: &Digest) -> Result<Option<BlobStamp>> {
        let connection = self.lock();
        let row = connection
            .query_row(
                "SELECT size, mtime_ns, ctime_ns, inode, device FROM blob_stamps WHERE digest = ?1",
                params![digest.to_string()],
                |row| {
                    Ok(BlobStamp {
                        size: row.get::<_, i64>(0)? as u64,
                        mtime_ns: row.get(1)?,
                        ctime_ns: row.get(2)?,
                        inode: row.get::<_, i64>(3)? as u64,
                        device: row.get::<_, i64>(4)? as u64,
                    })
                },
            )
            .optional()
            .map_err(self.wrap())?;
        Ok(row)
    }

    /// Records that `digest` was verified and `stat` then said `stamp`.
    pub fn set_blob_stamp(&self, digest: &Digest, stamp: &BlobStamp) -> Result<()> {
        self.lock()
            .execute(
                "INSERT OR REPLACE INTO blob_stamps (digest, size, mtime_ns, ctime_ns, inode, device, verified_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    digest.to_string(),
                    stamp.size as i64,
                    stamp.mtime_ns,
                    stamp.ctime_ns,
                    stamp.inode as i64,
                    stamp.device as i64,
                    now()
                ],
            )
            .map_err(self.wrap())?;
        Ok(())
    }

    /// Forgets the stamp of `digest` (its file changed or went).
    pub fn clear_blob_stamp(&self, digest: &Digest) -> Result<()> {
        self.lock()
            .execute(
                "DELETE FROM blob_stamps WHERE digest = ?1",
                params![digest.to_string()],
            )
            .map_err(self.wrap())?;
        Ok(())
    }

    /// Removes an image row (its tags and blob links go with it; blobs stay
    /// for garbage collection). Refuses while a holder exists.
    pub fn remove_image(&self, image_id: i64) -> Result<bool> {
        let mut connection = self.lock();
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.wrap())?;
        let held: i64 = transaction
            .query_row(
                "SELECT COUNT(*) FROM holders WHERE image_id = ?1",
                params![image_id],
                |row| row.get(0),
            )
            .map_err(self.wrap())?;
        if held > 0 {
            return Ok(false);
        }
        transaction
            .execute("DELETE FROM images WHERE id = ?1", params![image_id])
            .map_err(self.wrap())?;
        transaction.commit().map_err(self.wrap())?;
        Ok(true)
    }

    /// Records that `kind`/`name` uses an image.
    pub fn add_holder(&self, image_id: i64, kind: &str, name: &str) -> Result<()> {
        self.lock()
            .execute(
                "INSERT INTO holders (image_id, kind, name, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![image_id, kind, name, now()],
            )
            .map_err(self.wrap())?;
        Ok(())
    }

    /// Removes a holder; returns whether it existed.
    pub fn remove_holder(&self, kind: &str, name: &str) -> Result<bool> {
        let count = self
            .lock()
            .execute(
                "DELETE FROM holders WHERE kind = ?1 AND name = ?2",
                params![kind, name],
            )
            .map_err(self.wrap())?;
        Ok(count > 0)
    }

    /// Holders of an image.
    pub fn holders_of(&self, image_id: i64) -> Result<Vec<HolderRecord>> {
        let connection = self.lock();
        let mut statement = connection
            .prepare_cached("SELECT image_id, kind, name, created_at FROM holders WHERE image_id = ?1 ORDER BY kind, name")
            .map_err(self.wrap())?;
        let rows = statement
            .query_map(params![image_id], |row| {
                Ok(HolderRecord {
                    image_id: row.get(0)?,
                    kind: row.get(1)?,
                    name: row.get(2)?,
                    created_at: row.get(3)?,
                })
            })
            .map_err(self.wrap())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.wrap())?;
        Ok(rows)
    }

    /// Starts a lease owned by this process.
    pub fn create_lease(&self) -> Result<Lease> {
        let pid = std::process::id();
        let id = format!("{pid}-{}", crate::fsutil::temp_name("lease"));
        let created = now();
        self.lock()
            .execute(
                "INSERT INTO leases (id, pid, process_start, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, pid, crate::process::start_time(pid), created, created + LEASE_LIFETIME],
            )
            .map_err(self.wrap())?;
        Ok(Lease { id })
    }

    /// Protects `digest` for the lease's lifetime. Call before checking
    /// whether the blob exists: after this returns, garbage collection keeps it.
    pub fn lease_blob(&self, lease: &Lease, digest: &Digest) -> Result<()> {
        self.lock()
            .execute(
                "INSERT INTO lease_blobs (lease_id, digest) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![lease.id, digest.to_string()],
            )
            .map_err(self.wrap())?;
        Ok(())
    }

    /// Ends a lease.
    pub fn release_lease(&self, lease: Lease) -> Result<()> {
        self.lock()
            .execute("DELETE FROM leases WHERE id = ?1", params![lease.id])
            .map_err(self.wrap())?;
        Ok(())
    }

    /// Marks every image that contains `digest` incomplete (fsck lost it) and
    /// forgets the blob row. Returns the manifest digests of those images.
    pub fn forget_blob(&self, digest: &Digest) -> Result<Vec<Digest>> {
        let mut connection = self.lock();
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.wrap())?;
        let affected: Vec<String> = {
            let mut statement = transaction
                .prepare("SELECT DISTINCT i.manifest_digest FROM images i JOIN image_blobs b ON b.image_id = i.id WHERE b.digest = ?1")
                .map_err(self.wrap())?;
            statement
                .query_map(params![digest.to_string()], |row| row.get(0))
                .map_err(self.wrap())?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(self.wrap())?
        };
        transaction
            .execute(
                "UPDATE images SET complete = 0 WHERE id IN (SELECT image_id FROM image_blobs WHERE digest = ?1)",
                params![digest.to_string()],
            )
            .map_err(self.wrap())?;
        transaction
            .execute(
                "DELETE FROM artifacts WHERE digest = ?1",
                params![digest.to_string()],
            )
            .map_err(self.wrap())?;
        transaction
            .execute(
                "DELETE FROM blobs WHERE digest = ?1",
                params![digest.to_string()],
            )
            .map_err(self.wrap())?;
        transaction.commit().map_err(self.wrap())?;
        drop(connection);
        affected
            .into_iter()
            .map(|d| self.digest("images.manifest_digest", d))
            .collect()
    }

    /// The artifact made from `image_id` with these parameters, if any.
    pub fn artifact(
        &self,
        image_id: i64,
        format: &str,
        options: &str,
        converter_version: &str,
    ) -> Result<Option<ArtifactRecord>> {
        Ok(self
            .query_artifacts(
                "WHERE image_id = ?1 AND format = ?2 AND options = ?3 AND converter_version = ?4",
                &[&image_id, &format, &options, &converter_version],
            )?
            .pop())
    }

    /// Records an artifact (replacing one with the same key) and releases
    /// `lease`, in one transaction.
    pub fn add_artifact(&self, artifact: &ArtifactRecord, lease: Option<Lease>) -> Result<()> {
        let mut connection = self.lock();
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.wrap())?;
        transaction
            .execute(
                "INSERT INTO blobs (digest, size, created_at) VALUES (?1, ?2, ?3) ON CONFLICT(digest) DO NOTHING",
                params![artifact.digest.to_string(), artifact.size as i64, now()],
            )
            .map_err(self.wrap())?;
        transaction
            .execute(
                "INSERT INTO artifacts (image_id, format, options, converter_version, digest, size, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(image_id, format, options, converter_version) DO UPDATE SET digest = excluded.digest, size = excluded.size, created_at = excluded.created_at",
                params![artifact.image_id, artifact.format, artifact.options, artifact.converter_version, artifact.digest.to_string(), artifact.size as i64, artifact.created_at],
            )
            .map_err(self.wrap())?;
        if let Some(lease) = lease {
            transaction
                .execute("DELETE FROM leases WHERE id = ?1", params![lease.id])
                .map_err(self.wrap())?;
        }
        transaction.commit().map_err(self.wrap())?;
        Ok(())
    }

    /// The artifacts of `format` by this converter, made from any image,
    /// whose options end with `suffix` (a layer's data file, which every
    /// image with the layer shares): digest and size of each, once.
    pub fn artifacts_ending(
        &self,
        format: &str,
        suffix: &str,
        converter_version: &str,
    ) -> Result<Vec<(Digest, u64)>> {
        let mut found: Vec<(Digest, u64)> = self
            .query_artifacts(
                "WHERE format = ?1 AND converter_version = ?2 AND substr(options, -length(?3)) = ?3",
                &[&format, &converter_version, &suffix],
            )?
            .into_iter()
            .map(|a| (a.digest, a.size))
            .collect();
        found.sort();
        found.dedup();
        Ok(found)
    }

    /// Forgets the artifacts of `format` made from an image (their blobs
    /// stay for garbage collection). Returns how many rows went.
    pub fn remove_artifacts(&self, image_id: i64, format: &str) -> Result<usize> {
        let connection = self.lock();
        connection
            .execute(
                "DELETE FROM artifacts WHERE image_id = ?1 AND format = ?2",
                params![image_id, format],
            )
            .map_err(self.wrap())
    }

    /// The artifacts made from an image, by format, options and converter.
    pub fn artifacts_of(&self, image_id: i64) -> Result<Vec<ArtifactRecord>> {
        self.query_artifacts(
            "WHERE image_id = ?1 ORDER BY format, options, converter_version",
            &[&image_id],
        )
    }

    /// Runs `sql` and returns its rows as `T` (a tuple of its columns); the
    /// connection is free again before the caller converts them.
    fn select<T>(&self, sql: &str, parameters: &[&dyn rusqlite::ToSql]) -> Result<Vec<T>>
    where
        T: for<'r> TryFrom<&'r rusqlite::Row<'r>, Error = rusqlite::Error>,
    {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(sql).map_err(self.wrap())?;
        statement
            .query_map(parameters, |row| T::try_from(row))
            .map_err(self.wrap())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.wrap())
    }

    fn query_artifacts(
        &self,
        tail: &str,
        parameters: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<ArtifactRecord>> {
        type Row = (i64, String, String, String, String, i64, i64);
        let rows: Vec<Row> = self.select(
            &format!(
                "SELECT image_id, format, options, converter_version, digest, size, created_at FROM artifacts {tail}"
            ),
            parameters,
        )?;
        rows.into_iter()
            .map(
                |(image_id, format, options, converter_version, digest, size, created_at)| {
                    Ok(ArtifactRecord {
                        image_id,
                        format,
                        options,
                        converter_version,
                        digest: self.digest("artifacts.digest", digest)?,
                        size: size as u64,
                        created_at,
                    })
                },
            )
            .collect()
    }

    /// Records a disk and its hold on the image, in one transaction.
    pub fn add_disk(&self, disk: &DiskRecord) -> Result<()> {
        let mut connection = self.lock();
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.wrap())?;
        transaction
            .execute(
                "INSERT INTO disks (name, image_id, format, method, path, backing, size, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    disk.name,
                    disk.image_id,
                    disk.format,
                    disk.method,
                    disk.path.to_string_lossy(),
                    disk.backing.to_string(),
                    disk.size as i64,
                    disk.created_at
                ],
            )
            .map_err(self.wrap())?;
        transaction
            .execute(
                "INSERT INTO holders (image_id, kind, name, created_at) VALUES (?1, 'disk', ?2, ?3)",
                params![disk.image_id, disk.name, disk.created_at],
            )
            .map_err(self.wrap())?;
        transaction.commit().map_err(self.wrap())?;
        Ok(())
    }

    /// Removes a disk's row and its hold; returns whether it existed.
    pub fn remove_disk(&self, name: &str) -> Result<bool> {
        let mut connection = self.lock();
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.wrap())?;
        let count = transaction
            .execute("DELETE FROM disks WHERE name = ?1", params![name])
            .map_err(self.wrap())?;
        transaction
            .execute(
                "DELETE FROM holders WHERE kind = 'disk' AND name = ?1",
                params![name],
            )
            .map_err(self.wrap())?;
        transaction.commit().map_err(self.wrap())?;
        Ok(count > 0)
    }

    fn query_disks(
        &self,
        tail: &str,
        parameters: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<DiskRecord>> {
        type Row = (String, i64, String, String, String, String, i64, i64);
        let rows: Vec<Row> = self.select(
            &format!(
                "SELECT name, image_id, format, method, path, backing, size, created_at FROM disks {tail}"
            ),
            parameters,
        )?;
        rows.into_iter()
            .map(
                |(name, image_id, format, method, path, backing, size, created_at)| {
                    Ok(DiskRecord {
                        name,
                        image_id,
                        format,
                        method,
                        path: PathBuf::from(path),
                        backing: self.digest("disks.backing", backing)?,
                        size: size as u64,
                        created_at,
                    })
                },
            )
            .collect()
    }

    /// One disk.
    pub fn disk(&self, name: &str) -> Result<Option<DiskRecord>> {
        Ok(self.query_disks("WHERE name = ?1", params![name])?.pop())
    }

    /// Every disk, by name.
    pub fn disks(&self) -> Result<Vec<DiskRecord>> {
        self.query_disks("ORDER BY name", params![])
    }

    /// Marks an image incomplete (a blob it needs is missing).
    pub fn mark_incomplete(&self, image_id: i64) -> Result<()> {
        self.lock()
            .execute(
                "UPDATE images SET complete = 0 WHERE id = ?1",
                params![image_id],
            )
            .map_err(self.wrap())?;
        Ok(())
    }
}

fn insert_image(transaction: &Transaction<'_>, image: &NewImage) -> rusqlite::Result<i64> {
    let time = now();
    let size: u64 = image.manifest.size + image.blobs.iter().map(|b| b.size).sum::<u64>();
    let config_digest = image
        .blobs
        .iter()
        .find(|b| b.role == "config")
        .map(|b| b.digest.to_string());
    transaction.execute(
        "INSERT INTO images (manifest_digest, media_type, kind, config_digest, platform, size, complete, image_created, created_at, last_used_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?8, ?8)
         ON CONFLICT(manifest_digest) DO UPDATE SET complete = 1, last_used_at = excluded.last_used_at, size = excluded.size",
        params![
            image.manifest.digest.to_string(),
            image.manifest.media_type,
            image.kind,
            config_digest,
            image.platform,
            size as i64,
            image.image_created,
            time
        ],
    )?;
    let id: i64 = transaction.query_row(
        "SELECT id FROM images WHERE manifest_digest = ?1",
        params![image.manifest.digest.to_string()],
        |row| row.get(0),
    )?;
    transaction.execute("DELETE FROM image_blobs WHERE image_id = ?1", params![id])?;
    let mut insert_blob = transaction.prepare_cached(
        "INSERT INTO image_blobs (image_id, role, position, digest, media_type, size) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for blob in std::iter::once(&image.manifest).chain(&image.blobs) {
        insert_blob.execute(params![
            id,
            blob.role,
            blob.position,
            blob.digest.to_string(),
            blob.media_type,
            blob.size as i64
        ])?;
    }
    let mut insert_layer = transaction.prepare_cached(
        "INSERT INTO layers (digest, media_type, diff_id, uncompressed_size) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(digest) DO UPDATE SET diff_id = COALESCE(excluded.diff_id, diff_id),
             uncompressed_size = COALESCE(excluded.uncompressed_size, uncompressed_size)",
    )?;
    for layer in &image.layers {
        insert_layer.execute(params![
            layer.digest.to_string(),
            layer.media_type,
            layer.diff_id.as_ref().map(|d| d.to_string()),
            layer.uncompressed_size.map(|s| s as i64)
        ])?;
    }
    if let Some(source) = &image.source {
        transaction.execute(
            "INSERT OR REPLACE INTO source_images (image_id, source, source_type, name, version, uuid, origin, published_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                id,
                source.source,
                source.source_type,
                source.name,
                source.version,
                source.uuid,
                source.origin,
                source.published_at
            ],
        )?;
    }
    Ok(id)
}

/// Brings the schema of `connection` up to `target` (a test may stop early).
pub(crate) fn migrate(connection: &mut Connection, path: &Path, target: i64) -> Result<()> {
    let wrap = |source| StoreError::Catalog {
        path: path.to_path_buf(),
        source,
    };
    loop {
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(wrap)?;
        let version: i64 = transaction
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(wrap)?;
        if version > CURRENT_VERSION {
            return Err(StoreError::SchemaTooNew {
                path: path.to_path_buf(),
                found: version,
                supported: CURRENT_VERSION,
            });
        }
        if version >= target {
            return Ok(());
        }
        transaction
            .execute_batch(MIGRATIONS[version as usize])
            .map_err(wrap)?;
        transaction
            .pragma_update(None, "user_version", version + 1)
            .map_err(wrap)?;
        transaction.commit().map_err(wrap)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    fn blob(role: &str, position: u32, n: u8) -> ImageBlob {
        ImageBlob {
            role: role.into(),
            position,
            digest: digest(n),
            media_type: format!("type/{role}"),
            size: 10,
        }
    }

    #[test]
    fn migration_v3_to_v4_adds_source_images_and_stamps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let mut connection = Connection::open(&path).unwrap();
        migrate(&mut connection, &path, 3).unwrap();
        connection
            .execute("INSERT INTO images (manifest_digest, media_type, size, created_at, last_used_at) VALUES (?1, 'm', 1, 0, 0)", params![digest(1).to_string()])
            .unwrap();
        drop(connection);
        let catalog = Catalog::open(&path).unwrap();
        assert!(
            catalog.image_by_digest(&digest(1)).unwrap().is_some(),
            "v3 rows survive"
        );
        let mut parent = image(2, &[10]);
        parent.kind = "imgapi".into();
        parent.source = Some(SourceImageRecord {
            image_id: 0,
            source: "smartos".into(),
            source_type: "imgapi".into(),
            name: "base-64".into(),
            version: Some("15.2.0".into()),
            uuid: Some("aaaa".into()),
            origin: None,
            published_at: Some("2026-01-01T00:00:00Z".into()),
        });
        let parent_id = catalog.commit_image(&parent, None, None).unwrap();
        let mut child = image(3, &[11]);
        child.source = Some(SourceImageRecord {
            uuid: Some("bbbb".into()),
            origin: Some("aaaa".into()),
            ..parent.source.clone().unwrap()
        });
        let child_id = catalog.commit_image(&child, None, None).unwrap();
        let record = catalog.source_image(parent_id).unwrap().unwrap();
        assert_eq!(record.image_id, parent_id);
        assert_eq!(record.uuid.as_deref(), Some("aaaa"));
        let dependents = catalog.dependents_of("aaaa").unwrap();
        assert_eq!(dependents.len(), 1);
        assert_eq!(dependents[0].image_id, child_id);
        assert_eq!(
            catalog
                .source_images_named("smartos", "base-64")
                .unwrap()
                .len(),
            2
        );
        assert!(catalog.remove_image(child_id).unwrap());
        assert!(
            catalog.dependents_of("aaaa").unwrap().is_empty(),
            "source rows go with their image"
        );

        let stamp = BlobStamp {
            size: 5,
            mtime_ns: 1,
            ctime_ns: 2,
            inode: 3,
            device: 4,
        };
        assert_eq!(catalog.blob_stamp(&digest(10)).unwrap(), None);
        catalog.set_blob_stamp(&digest(10), &stamp).unwrap();
        assert_eq!(catalog.blob_stamp(&digest(10)).unwrap(), Some(stamp));
        catalog.clear_blob_stamp(&digest(10)).unwrap();
        assert_eq!(catalog.blob_stamp(&digest(10)).unwrap(), None);
    }

    fn image(manifest: u8, layers: &[u8]) -> NewImage {
        let mut blobs = vec![blob("config", 0, manifest + 100)];
        blobs.extend(
            layers
                .iter()
                .enumerate()
                .map(|(i, n)| blob("layer", i as u32, *n)),
        );
        NewImage {
            manifest: blob("manifest", 0, manifest),
            kind: "oci".into(),
            platform: Some("linux/amd64".into()),
            image_created: None,
            blobs,
            layers: layers
                .iter()
                .map(|n| LayerRecord {
                    digest: digest(*n),
                    media_type: "type/layer".into(),
                    diff_id: Some(digest(n + 50)),
                    uncompressed_size: Some(20),
                })
                .collect(),
            source: None,
        }
    }

    #[test]
    fn migration_v0_to_v1_creates_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let mut connection = Connection::open(&path).unwrap();
        migrate(&mut connection, &path, 0).unwrap();
        let version: i64 = connection
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 0);
        migrate(&mut connection, &path, 1).unwrap();
        let tables: Vec<String> = connection
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            tables,
            [
                "blobs",
                "holders",
                "image_blobs",
                "images",
                "indexes",
                "layers",
                "lease_blobs",
                "leases",
                "tags"
            ]
        );
        migrate(&mut connection, &path, 2).unwrap();
        drop(connection);
        // Reopening is idempotent and keeps data.
        let catalog = Catalog::open(&path).unwrap();
        catalog.record_blob(&digest(1), 5).unwrap();
        drop(catalog);
        let catalog = Catalog::open(&path).unwrap();
        assert_eq!(catalog.blobs().unwrap(), vec![(digest(1), 5)]);
    }

    #[test]
    fn migration_v1_to_v2_adds_artifacts_and_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let mut connection = Connection::open(&path).unwrap();
        migrate(&mut connection, &path, 1).unwrap();
        connection
            .execute("INSERT INTO images (manifest_digest, media_type, size, created_at, last_used_at) VALUES (?1, 'm', 1, 0, 0)", params![digest(1).to_string()])
            .unwrap();
        drop(connection);
        let catalog = Catalog::open(&path).unwrap();
        let image = catalog
            .image_by_digest(&digest(1))
            .unwrap()
            .expect("v1 rows survive");
        let artifact = ArtifactRecord {
            image_id: image.id,
            format: "ext4".into(),
            options: "size=auto".into(),
            converter_version: "1".into(),
            digest: digest(7),
            size: 3,
            created_at: 5,
        };
        catalog.add_artifact(&artifact, None).unwrap();
        assert_eq!(
            catalog
                .artifact(image.id, "ext4", "size=auto", "1")
                .unwrap(),
            Some(artifact)
        );
        assert_eq!(
            catalog
                .artifact(image.id, "ext4", "size=auto", "2")
                .unwrap(),
            None,
            "another converter version is another artifact"
        );
        assert!(catalog.remove_image(image.id).unwrap());
        assert!(
            catalog.artifacts_of(image.id).unwrap().is_empty(),
            "artifacts go with their image"
        );
    }

    #[test]
    fn migration_v2_to_v3_adds_disks_that_hold_their_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let mut connection = Connection::open(&path).unwrap();
        migrate(&mut connection, &path, 2).unwrap();
        connection
            .execute("INSERT INTO images (manifest_digest, media_type, size, created_at, last_used_at) VALUES (?1, 'm', 1, 0, 0)", params![digest(1).to_string()])
            .unwrap();
        drop(connection);
        let catalog = Catalog::open(&path).unwrap();
        let image = catalog
            .image_by_digest(&digest(1))
            .unwrap()
            .expect("v2 rows survive");
        let disk = DiskRecord {
            name: "sandbox-1".into(),
            image_id: image.id,
            format: "raw".into(),
            method: "reflink".into(),
            path: "/store/disks-v1/sandbox-1/disk.raw".into(),
            backing: digest(7),
            size: 1 << 30,
            created_at: 9,
        };
        catalog.add_disk(&disk).unwrap();
        assert_eq!(catalog.disk("sandbox-1").unwrap(), Some(disk.clone()));
        assert!(catalog.add_disk(&disk).is_err(), "names are unique");
        assert!(
            !catalog.remove_image(image.id).unwrap(),
            "a disk holds its image"
        );
        assert!(catalog.remove_disk("sandbox-1").unwrap());
        assert!(catalog.holders_of(image.id).unwrap().is_empty());
        assert!(catalog.remove_image(image.id).unwrap());
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let connection = Connection::open(&path).unwrap();
        connection
            .pragma_update(None, "user_version", CURRENT_VERSION + 1)
            .unwrap();
        drop(connection);
        let error = Catalog::open(&path).unwrap_err();
        assert!(matches!(error, StoreError::SchemaTooNew { .. }), "{error}");
        assert!(error.hint().unwrap().contains("upgrade kiln"));
    }

    #[test]
    fn images_tags_and_platforms_side_by_side() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("catalog.db")).unwrap();
        let index = IndexRecord {
            digest: digest(9),
            media_type: "index".into(),
            size: 3,
        };
        let amd = catalog
            .commit_image(
                &image(1, &[10, 11]),
                Some(&NewTag {
                    name: "r/x:1".into(),
                    platform: "linux/amd64".into(),
                    index: Some(index.clone()),
                }),
                None,
            )
            .unwrap();
        let arm = catalog
            .commit_image(
                &image(2, &[10, 12]),
                Some(&NewTag {
                    name: "r/x:1".into(),
                    platform: "linux/arm64".into(),
                    index: Some(index),
                }),
                None,
            )
            .unwrap();
        assert_ne!(amd, arm);
        let tags = catalog.tags_named("r/x:1").unwrap();
        assert_eq!(tags.len(), 2);
        assert_eq!(tags[0].index_digest, Some(digest(9)));
        let blobs = catalog.image_blobs(amd).unwrap();
        assert_eq!(
            blobs.iter().map(|b| b.role.as_str()).collect::<Vec<_>>(),
            ["manifest", "config", "layer", "layer"]
        );
        assert_eq!(
            catalog.layer(&digest(10)).unwrap().unwrap().diff_id,
            Some(digest(60))
        );
        assert_eq!(
            catalog.image_by_digest(&digest(1)).unwrap().unwrap().size,
            40
        );
        let arm_digest = digest(2);
        let prefix = &arm_digest.hex()[..6];
        assert_eq!(catalog.images_by_prefix(prefix).unwrap()[0].id, arm);

        catalog.add_holder(amd, "disk", "d1").unwrap();
        assert!(!catalog.remove_image(amd).unwrap(), "held images stay");
        assert!(catalog.remove_holder("disk", "d1").unwrap());
        assert!(catalog.remove_image(amd).unwrap());
        assert_eq!(
            catalog.tags_named("r/x:1").unwrap().len(),
            1,
            "tags go with their image"
        );
    }

    #[test]
    fn forget_blob_marks_images_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("catalog.db")).unwrap();
        let id = catalog.commit_image(&image(1, &[10]), None, None).unwrap();
        catalog.record_blob(&digest(10), 10).unwrap();
        assert_eq!(catalog.forget_blob(&digest(10)).unwrap(), vec![digest(1)]);
        assert!(!catalog.image(id).unwrap().unwrap().complete);
        assert!(catalog.blobs().unwrap().is_empty());
        catalog.commit_image(&image(1, &[10]), None, None).unwrap();
        assert!(
            catalog.image(id).unwrap().unwrap().complete,
            "a new pull completes it again"
        );
    }
}
