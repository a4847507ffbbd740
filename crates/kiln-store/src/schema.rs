//! The catalog schema and its migrations.
//!
//! The schema version is SQLite's `PRAGMA user_version`: the number of
//! migrations applied. Opening a catalog applies the missing migrations in one
//! transaction each; a catalog whose version is above [`CURRENT_VERSION`] was
//! written by a newer kiln and is refused rather than guessed at.
//!
//! # Version 1
//!
//! | table | one row per | notes |
//! |---|---|---|
//! | `blobs` | committed blob file | `digest`, `size`, `created_at`; the file is `content-v1/blobs/<alg>/<hex>` |
//! | `layers` | layer blob | `media_type`, `diff_id` (digest of the uncompressed tar), `uncompressed_size` |
//! | `images` | image (an OCI manifest today; a release bundle, catalog or imgapi image later) | `manifest_digest` unique; `kind` says which; `complete = 0` after `fsck --repair` lost one of its blobs |
//! | `image_blobs` | blob an image is made of | `role` = `manifest`, `config`, `layer` (later `kernel`, `rootfs`, …), `position` orders layers |
//! | `indexes` | image index / manifest list blob that a tag resolved through | kept so `save`/`push` can reproduce the index |
//! | `tags` | (reference, platform) | `name` is the canonical reference (`registry/repo:tag` or `registry/repo@digest`); several platforms of one index sit side by side |
//! | `holders` | user of an image (a sandbox disk) | `rmi` refuses while one exists; `prune` keeps held images |
//! | `leases` / `lease_blobs` | running operation / blob it needs | garbage collection never removes a leased blob; a lease dies with its process |
//!
//! # Version 2
//!
//! | table | one row per | notes |
//! |---|---|---|
//! | `artifacts` | file derived from an image (a root filesystem) | keyed by image, `format`, `options`, `converter_version`; the file is the blob `digest`; goes with its image (cascade) and keeps its blob alive |
//!
//! # Version 3
//!
//! | table | one row per | notes |
//! |---|---|---|
//! | `disks` | sandbox disk | `name` unique; `path` of its file under `disks-v1/`; `backing` = digest of the ext4 artifact blob it was made from (kept while the disk exists: a qcow2 overlay reads it); a `holders` row (`kind = 'disk'`) is written with it |
//!
//! # Version 4
//!
//! | table | one row per | notes |
//! |---|---|---|
//! | `source_images` | image from a configured non-OCI source (release bundle, checksum catalog, imgapi server) | `source` (configured name), `source_type`, `name`, `version`, imgapi `uuid` and `origin` (the parent image's UUID: `rmi` refuses while a dependent exists), `published_at`; goes with its image |
//! | `blob_stamps` | blob whose content was verified | `size`, `mtime_ns`, `ctime_ns`, `inode`, `device` as `stat` saw them after verification: a cache hit compares them instead of re-hashing, and re-hashes when any differs |
//!
//! Source images use `images.kind` = `release-bundle`, `catalog` or
//! `imgapi`; their `manifest` blob is kiln's JSON record of the image and
//! their files are blobs with roles `source-manifest`, `kernel`, `rootfs`,
//! `initrd`, `vmm` and `file`.
//!
//! All timestamps are seconds since the Unix epoch.

/// The schema version this kiln writes.
pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

/// Migration `i` takes the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[V1, V2, V3, V4];

const V1: &str = r#"
CREATE TABLE blobs (
    digest      TEXT PRIMARY KEY,
    size        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE layers (
    digest            TEXT PRIMARY KEY,
    media_type        TEXT NOT NULL,
    diff_id           TEXT,
    uncompressed_size INTEGER
) STRICT;

CREATE TABLE images (
    id              INTEGER PRIMARY KEY,
    manifest_digest TEXT NOT NULL UNIQUE,
    media_type      TEXT NOT NULL,
    kind            TEXT NOT NULL DEFAULT 'oci',
    config_digest   TEXT,
    platform        TEXT,
    size            INTEGER NOT NULL,
    complete        INTEGER NOT NULL DEFAULT 1,
    image_created   TEXT,
    created_at      INTEGER NOT NULL,
    last_used_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE image_blobs (
    image_id   INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    role       TEXT NOT NULL,
    position   INTEGER NOT NULL,
    digest     TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size       INTEGER NOT NULL,
    PRIMARY KEY (image_id, role, position)
) STRICT;
CREATE INDEX image_blobs_by_digest ON image_blobs(digest);

CREATE TABLE indexes (
    digest     TEXT PRIMARY KEY,
    media_type TEXT NOT NULL,
    size       INTEGER NOT NULL
) STRICT;

CREATE TABLE tags (
    name         TEXT NOT NULL,
    platform     TEXT NOT NULL,
    image_id     INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    index_digest TEXT,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (name, platform)
) STRICT;
CREATE INDEX tags_by_image ON tags(image_id);

CREATE TABLE holders (
    id         INTEGER PRIMARY KEY,
    image_id   INTEGER NOT NULL REFERENCES images(id),
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (kind, name)
) STRICT;
CREATE INDEX holders_by_image ON holders(image_id);

CREATE TABLE leases (
    id            TEXT PRIMARY KEY,
    pid           INTEGER NOT NULL,
    process_start INTEGER,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE lease_blobs (
    lease_id TEXT NOT NULL REFERENCES leases(id) ON DELETE CASCADE,
    digest   TEXT NOT NULL,
    PRIMARY KEY (lease_id, digest)
) STRICT;
CREATE INDEX lease_blobs_by_digest ON lease_blobs(digest);
"#;

const V2: &str = r#"
CREATE TABLE artifacts (
    id                INTEGER PRIMARY KEY,
    image_id          INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    format            TEXT NOT NULL,
    options           TEXT NOT NULL,
    converter_version TEXT NOT NULL,
    digest            TEXT NOT NULL,
    size              INTEGER NOT NULL,
    created_at        INTEGER NOT NULL,
    UNIQUE (image_id, format, options, converter_version)
) STRICT;
CREATE INDEX artifacts_by_digest ON artifacts(digest);
"#;

const V3: &str = r#"
CREATE TABLE disks (
    name       TEXT PRIMARY KEY,
    image_id   INTEGER NOT NULL REFERENCES images(id),
    format     TEXT NOT NULL,
    method     TEXT NOT NULL,
    path       TEXT NOT NULL,
    backing    TEXT NOT NULL,
    size       INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX disks_by_backing ON disks(backing);
"#;

const V4: &str = r#"
CREATE TABLE source_images (
    image_id     INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
    source       TEXT NOT NULL,
    source_type  TEXT NOT NULL,
    name         TEXT NOT NULL,
    version      TEXT,
    uuid         TEXT,
    origin       TEXT,
    published_at TEXT
) STRICT;
CREATE INDEX source_images_by_name ON source_images(source, name);
CREATE INDEX source_images_by_uuid ON source_images(uuid);
CREATE INDEX source_images_by_origin ON source_images(origin);

CREATE TABLE blob_stamps (
    digest      TEXT PRIMARY KEY,
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    ctime_ns    INTEGER NOT NULL,
    inode       INTEGER NOT NULL,
    device      INTEGER NOT NULL,
    verified_at INTEGER NOT NULL
) STRICT;
"#;
