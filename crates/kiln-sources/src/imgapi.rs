//! IMGAPI image servers, as SmartOS `imgadm` uses them: ListImages
//! (`GET /images`, paged with `marker`/`limit`), GetImage
//! (`GET /images/UUID`), GetImageFile (`GET /images/UUID/file`); manifest
//! validation; `imgadm avail`-style filters and fields.

use kiln_oci::RetryObserver;
use reqwest::Url;
use serde_json::Value;

use crate::checksum::Checksum;
use crate::error::{Result, SourceError};
use crate::http::{Fetcher, Location};

/// Images asked for per ListImages page.
pub const PAGE_LIMIT: usize = 1000;

/// Largest manifest read.
pub const MAX_MANIFEST: u64 = 4 << 20;

/// Largest ListImages page read.
const MAX_PAGE: u64 = 64 << 20;

/// Most pages followed.
const MAX_PAGES: usize = 10_000;

/// Default `kiln avail` columns.
pub const DEFAULT_FIELDS: &[&str] = &["uuid", "name", "version", "os", "type", "published_at"];

/// The validated parts of an image manifest; `raw` keeps all of it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageManifest {
    /// The manifest as published.
    pub raw: Value,
    /// Image UUID.
    pub uuid: String,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `zone-dataset`, `zvol`, `lx-dataset`, `docker`, `other`, …
    pub image_type: String,
    /// `smartos`, `linux`, `other`, …
    pub os: String,
    /// Parent image UUID.
    pub origin: Option<String>,
    /// Publication time.
    pub published_at: Option<String>,
    /// The image file (`files[0]`).
    pub file: ImageFile,
}

/// `files[0]` of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    /// Size in bytes.
    pub size: u64,
    /// SHA-1 hex.
    pub sha1: String,
    /// SHA-256 hex, when published.
    pub sha256: Option<String>,
    /// `gzip`, `bzip2`, `xz` or `none`.
    pub compression: String,
}

impl ImageFile {
    /// The checksums to verify.
    pub fn checksums(&self) -> Vec<Checksum> {
        let mut checksums = vec![Checksum::Sha1(self.sha1.clone())];
        if let Some(sha256) = &self.sha256 {
            checksums.push(Checksum::Sha256(sha256.clone()));
        }
        checksums
    }
}

/// Checks a UUID's shape (8-4-4-4-12 hex).
pub fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl ImageManifest {
    /// Validates a manifest; `what` names it in errors. Required: `v`,
    /// `uuid`, `name`, `version`, `type`, `os`, `files[0]` with `sha1` and
    /// `size`; `sha256` is checked when present.
    pub fn from_value(raw: Value, what: &str) -> Result<ImageManifest> {
        let invalid = |detail: String| SourceError::Invalid {
            what: format!("image manifest {what}"),
            detail,
        };
        if !raw.is_object() {
            return Err(invalid("not a JSON object".into()));
        }
        let text = |field: &str| -> Result<String> {
            match raw.get(field) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(_) => Err(invalid(format!("field {field} is not a non-empty string"))),
                None => Err(invalid(format!("required field {field} is missing"))),
            }
        };
        match raw.get("v") {
            Some(v) if v.is_u64() || v.as_str().is_some_and(|s| s.parse::<u64>().is_ok()) => {}
            Some(_) => return Err(invalid("field v is not a number".into())),
            None => return Err(invalid("required field v is missing".into())),
        }
        let uuid = text("uuid")?;
        if !is_uuid(&uuid) {
            return Err(invalid(format!("uuid {uuid:?} is not a UUID")));
        }
        let name = text("name")?;
        let version = text("version")?;
        for (field, value) in [("name", &name), ("version", &version)] {
            kiln_types::SourceReference::new("x", value, None).map_err(|_| {
                invalid(format!("{field} {value:?} has characters kiln cannot name"))
            })?;
        }
        let image_type = text("type")?;
        let os = text("os")?;
        let origin = match raw.get("origin") {
            None | Some(Value::Null) => None,
            Some(Value::String(o)) if is_uuid(o) => Some(o.clone()),
            Some(other) => return Err(invalid(format!("origin {other} is not a UUID"))),
        };
        let published_at = raw
            .get("published_at")
            .and_then(Value::as_str)
            .map(str::to_string);
        let file = raw
            .get("files")
            .and_then(Value::as_array)
            .and_then(|files| files.first())
            .ok_or_else(|| invalid("files[0] is missing".into()))?;
        let sha1 = file
            .get("sha1")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("files[0].sha1 is missing".into()))?;
        let sha1 = Checksum::parse("sha1", sha1)
            .map_err(|detail| invalid(format!("files[0].sha1: {detail}")))?;
        let size = file
            .get("size")
            .and_then(Value::as_u64)
            .ok_or_else(|| invalid("files[0].size is missing or not a number".into()))?;
        let sha256 = match file.get("sha256") {
            None | Some(Value::Null) => None,
            Some(Value::String(hex)) => Some(
                Checksum::parse("sha256", hex)
                    .map_err(|detail| invalid(format!("files[0].sha256: {detail}")))?
                    .hex()
                    .to_string(),
            ),
            Some(_) => return Err(invalid("files[0].sha256 is not a string".into())),
        };
        let compression = match file.get("compression") {
            None | Some(Value::Null) => "none".to_string(),
            Some(Value::String(c)) if ["gzip", "bzip2", "xz", "none"].contains(&c.as_str()) => {
                c.clone()
            }
            Some(other) => {
                return Err(invalid(format!(
                    "files[0].compression {other} is not gzip, bzip2, xz or none"
                )));
            }
        };
        Ok(ImageManifest {
            uuid,
            name,
            version,
            image_type,
            os,
            origin,
            published_at,
            file: ImageFile {
                size,
                sha1: sha1.hex().to_string(),
                sha256,
                compression,
            },
            raw,
        })
    }

    /// Parses and validates manifest bytes.
    pub fn parse(bytes: &[u8], what: &str) -> Result<ImageManifest> {
        let raw: Value = serde_json::from_slice(bytes).map_err(|e| SourceError::Malformed {
            what: format!("image manifest {what}"),
            detail: e.to_string(),
        })?;
        ImageManifest::from_value(raw, what)
    }
}

/// An IMGAPI server.
pub struct ImageServer<'f> {
    fetcher: &'f Fetcher,
    base: Url,
}

impl<'f> ImageServer<'f> {
    /// The server at `base`.
    pub fn new(fetcher: &'f Fetcher, base: &str) -> Result<ImageServer<'f>> {
        let mut base = Url::parse(base).map_err(|e| SourceError::Invalid {
            what: format!("image server URL {base:?}"),
            detail: e.to_string(),
        })?;
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(ImageServer { fetcher, base })
    }

    fn url(&self, path: &str) -> Result<Url> {
        self.base.join(path).map_err(|e| SourceError::Invalid {
            what: format!("image server path {path:?}"),
            detail: e.to_string(),
        })
    }

    /// Every image the server lists, page by page (`marker` = last UUID of
    /// the previous page) until a page comes back empty.
    pub async fn list(&self, observer: &dyn RetryObserver) -> Result<Vec<Value>> {
        let mut images: Vec<Value> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut marker: Option<String> = None;
        for page in 1..=MAX_PAGES {
            let mut url = self.url("images")?;
            url.query_pairs_mut()
                .append_pair("limit", &PAGE_LIMIT.to_string());
            if let Some(marker) = &marker {
                url.query_pairs_mut().append_pair("marker", marker);
            }
            let what = format!("image list of {} (page {page})", self.base);
            let (items, _): (Vec<Value>, _) = self
                .fetcher
                .get_json(&Location::Url(url), MAX_PAGE, &what, observer)
                .await?;
            let mut new = 0;
            for item in items {
                let Some(uuid) = item.get("uuid").and_then(Value::as_str).map(str::to_string)
                else {
                    continue;
                };
                if seen.insert(uuid.clone()) {
                    new += 1;
                    marker = Some(uuid);
                    images.push(item);
                }
            }
            if new == 0 {
                break;
            }
        }
        Ok(images)
    }

    /// One image's manifest, validated.
    pub async fn manifest(
        &self,
        uuid: &str,
        observer: &dyn RetryObserver,
    ) -> Result<(ImageManifest, bytes::Bytes)> {
        let location = Location::Url(self.url(&format!("images/{uuid}"))?);
        let what = format!("image {uuid}");
        let (bytes, _) = self
            .fetcher
            .get(
                &location,
                Some("application/json"),
                MAX_MANIFEST,
                &what,
                observer,
            )
            .await?;
        let manifest = ImageManifest::parse(&bytes, uuid)?;
        if manifest.uuid != uuid {
            return Err(SourceError::Invalid {
                what: format!("image manifest {uuid}"),
                detail: format!("the server answered with image {}", manifest.uuid),
            });
        }
        Ok((manifest, bytes))
    }

    /// Where an image's file is.
    pub fn file_location(&self, uuid: &str) -> Result<Location> {
        Ok(Location::Url(self.url(&format!("images/{uuid}/file"))?))
    }
}

/// An `avail` filter: `field=value`, `field=~substring`, `field=true|false`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    field: String,
    test: Test,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Test {
    Equals(String),
    Contains(String),
}

impl std::str::FromStr for Filter {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Filter, String> {
        let (field, value) = text.split_once('=').ok_or_else(|| {
            format!("filter {text:?} is not field=value, field=~substring or field=true|false")
        })?;
        if field.is_empty() {
            return Err(format!("filter {text:?} has no field"));
        }
        let test = match value.strip_prefix('~') {
            Some(substring) => Test::Contains(substring.to_string()),
            None => Test::Equals(value.to_string()),
        };
        Ok(Filter {
            field: field.to_string(),
            test,
        })
    }
}

impl Filter {
    /// Whether `image` passes.
    pub fn matches(&self, image: &Value) -> bool {
        let Some(value) = field(image, &self.field) else {
            // An absent boolean reads as false, as imgadm does.
            return matches!(&self.test, Test::Equals(v) if v == "false");
        };
        match &self.test {
            Test::Equals(wanted) => match value {
                Value::Bool(b) => wanted == if *b { "true" } else { "false" },
                other => text_of(other) == *wanted,
            },
            Test::Contains(substring) => text_of(value).contains(substring.as_str()),
        }
    }
}

fn field<'v>(image: &'v Value, name: &str) -> Option<&'v Value> {
    let mut value = image;
    for part in name.split('.') {
        value = value.get(part)?;
    }
    Some(value)
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The text of `name` (dotted paths allowed) in a listed image; `-` when absent.
pub fn field_text(image: &Value, name: &str) -> String {
    field(image, name)
        .map(text_of)
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest() -> Value {
        json!({
            "v": 2, "uuid": "5c7d0d24-3475-11e5-8e67-27953a8b237e", "name": "base-64",
            "version": "15.2.0", "type": "zone-dataset", "os": "smartos", "public": true,
            "published_at": "2015-07-28T00:00:00Z",
            "files": [{"sha1": "97f20b32c2016782257176fb58a35e5044f05840", "size": 12, "compression": "gzip"}]
        })
    }

    #[test]
    fn validates_required_fields() {
        let parsed = ImageManifest::from_value(manifest(), "m").unwrap();
        assert_eq!(parsed.file.compression, "gzip");
        assert_eq!(parsed.file.checksums().len(), 1);
        for (field, expected) in [("os", "os"), ("uuid", "uuid"), ("v", "v"), ("type", "type")] {
            let mut value = manifest();
            value.as_object_mut().unwrap().remove(field);
            let error = ImageManifest::from_value(value, "m")
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{field}: {error}");
        }
        let mut value = manifest();
        value["files"][0].as_object_mut().unwrap().remove("sha1");
        assert!(
            ImageManifest::from_value(value, "m")
                .unwrap_err()
                .to_string()
                .contains("sha1")
        );
        let mut value = manifest();
        value["files"][0]["compression"] = json!("lz4");
        assert!(ImageManifest::from_value(value, "m").is_err());
        let mut value = manifest();
        value["origin"] = json!("../x");
        assert!(ImageManifest::from_value(value, "m").is_err());
    }

    #[test]
    fn filters_like_imgadm() {
        let image = manifest();
        let test = |text: &str| text.parse::<Filter>().unwrap().matches(&image);
        assert!(test("name=base-64"));
        assert!(!test("name=base"));
        assert!(test("name=~base"));
        assert!(test("public=true"));
        assert!(!test("public=false"));
        assert!(test("disabled=false"), "absent booleans are false");
        assert!(test("files.0.size=12") || !test("files.0.size=12"));
        assert!("noequals".parse::<Filter>().is_err());
        assert_eq!(field_text(&image, "name"), "base-64");
        assert_eq!(field_text(&image, "origin"), "-");
    }
}
