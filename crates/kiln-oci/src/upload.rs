//! The push side of the distribution protocol: blob existence checks,
//! cross-repository mounts, monolithic and chunked uploads, manifest PUTs,
//! and the OCI 1.1 referrers API with its tag-schema fallback.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use kiln_types::media_type;
use kiln_types::{Descriptor, Digest, ImageIndex, Reference};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION};
use reqwest::{Method, StatusCode};

use crate::client::{MAX_MANIFEST_SIZE, RegistryClient, Repository, RetryObserver};
use crate::error::{OciError, Result};
use crate::http::read_limited;

/// Where a blob to upload is read from.
#[derive(Debug, Clone)]
pub struct BlobSource {
    /// The blob's file (read-only in the store).
    pub path: PathBuf,
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
}

/// An open upload session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSession {
    /// Where the upload goes (`Location` of the registry's answer).
    pub location: String,
    /// The smallest chunk the registry accepts for chunked uploads
    /// (`OCI-Chunk-Min-Length`), when it says.
    pub min_chunk: Option<u64>,
}

/// What a mount request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// The registry linked the blob from the other repository.
    Mounted,
    /// It did not (unknown blob, no access, no support); an upload session
    /// was opened instead.
    Upload(UploadSession),
}

/// Told how many bytes of an upload were sent so far.
pub type UploadProgress = Arc<dyn Fn(u64) + Send + Sync>;

/// The answer to a manifest PUT.
#[derive(Debug, Clone)]
pub struct PushedManifest {
    /// Digest of the bytes sent.
    pub digest: Digest,
    /// The registry said it indexed the manifest's `subject` (it answered
    /// `OCI-Subject`): no referrers tag is needed.
    pub subject_indexed: bool,
}

/// The tag the referrers tag schema uses for `digest` (`sha256-HEX`).
pub fn referrers_tag(digest: &Digest) -> String {
    format!("{}-{}", digest.algorithm().as_str(), digest.hex())
}

impl RegistryClient {
    /// Whether `repository` has blob `digest` (HEAD).
    pub async fn blob_exists(
        &self,
        repository: &Repository,
        digest: &Digest,
        observer: &dyn RetryObserver,
    ) -> Result<bool> {
        let what = format!("blob {digest}");
        let path = format!("/v2/{}/blobs/{digest}", repository.name);
        self.exists(repository, &path, HeaderMap::new(), &what, observer)
            .await
    }

    /// HEAD `path`: true for a success, false for 404.
    async fn exists(
        &self,
        repository: &Repository,
        path: &str,
        headers: HeaderMap,
        what: &str,
        observer: &dyn RetryObserver,
    ) -> Result<bool> {
        let response = self
            .execute(repository, Method::HEAD, path, headers, what, observer)
            .await?;
        match response.status() {
            status if status.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.status_error(repository, response, what).await),
        }
    }

    /// Asks the registry to link blob `digest` from repository `from` on
    /// the same registry (no data sent).
    pub async fn mount_blob(
        &self,
        repository: &Repository,
        digest: &Digest,
        from: &str,
        observer: &dyn RetryObserver,
    ) -> Result<Mount> {
        let what = format!("mount of blob {digest} from {from}");
        let path = format!(
            "/v2/{}/blobs/uploads/?mount={}&from={}",
            repository.name,
            encode(&digest.to_string()),
            encode(from)
        );
        let response = self.post_empty(repository, &path, &what, observer).await?;
        match response.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => Ok(Mount::Upload(self.session(repository, &response, &what)?)),
            _ => Err(self.status_error(repository, response, &what).await),
        }
    }

    /// POST with an empty body (an upload session or a mount).
    async fn post_empty(
        &self,
        repository: &Repository,
        path: &str,
        what: &str,
        observer: &dyn RetryObserver,
    ) -> Result<reqwest::Response> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from(0u64));
        self.execute_with_body(
            repository,
            Method::POST,
            path,
            headers,
            Some(&|| Ok(reqwest::Body::from(Bytes::new()))),
            what,
            observer,
        )
        .await
    }

    /// Opens an upload session.
    pub async fn start_upload(
        &self,
        repository: &Repository,
        observer: &dyn RetryObserver,
    ) -> Result<UploadSession> {
        let what = format!("an upload to {}", repository.name);
        let path = format!("/v2/{}/blobs/uploads/", repository.name);
        let response = self.post_empty(repository, &path, &what, observer).await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(self.status_error(repository, response, &what).await);
        }
        self.session(repository, &response, &what)
    }

    /// The session an upload-opening answer describes.
    fn session(
        &self,
        repository: &Repository,
        response: &reqwest::Response,
        what: &str,
    ) -> Result<UploadSession> {
        Ok(UploadSession {
            location: self.location(repository, response, what)?,
            min_chunk: response
                .headers()
                .get("oci-chunk-min-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok()),
        })
    }

    /// Uploads `blob` into `session`: in one PUT, or in PATCH requests of
    /// `chunk_size` bytes (at least what the registry asks for) followed by
    /// the closing PUT.
    pub async fn upload_blob(
        &self,
        repository: &Repository,
        session: UploadSession,
        blob: &BlobSource,
        chunk_size: Option<u64>,
        progress: UploadProgress,
        observer: &dyn RetryObserver,
    ) -> Result<()> {
        let what = format!("upload of blob {}", blob.digest);
        let mut location = session.location;
        let mut offset = 0u64;
        if let Some(chunk_size) = chunk_size.filter(|c| *c > 0) {
            let chunk_size = chunk_size.max(session.min_chunk.unwrap_or(0));
            while offset < blob.size {
                let length = chunk_size.min(blob.size - offset);
                let mut headers = HeaderMap::new();
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
                headers.insert(
                    "Content-Range",
                    header_value(&format!("{offset}-{}", offset + length - 1))?,
                );
                let body = file_body(blob.path.clone(), offset, length, progress.clone());
                let response = self
                    .execute_with_body(
                        repository,
                        Method::PATCH,
                        &location,
                        headers,
                        Some(&body),
                        &what,
                        observer,
                    )
                    .await?;
                if response.status() != StatusCode::ACCEPTED {
                    return Err(self.status_error(repository, response, &what).await);
                }
                location = self.location(repository, &response, &what)?;
                offset += length;
            }
        }
        let separator = if location.contains('?') { '&' } else { '?' };
        let target = format!(
            "{location}{separator}digest={}",
            encode(&blob.digest.to_string())
        );
        let length = blob.size - offset;
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
        let body = file_body(blob.path.clone(), offset, length, progress);
        let response = self
            .execute_with_body(
                repository,
                Method::PUT,
                &target,
                headers,
                Some(&body),
                &what,
                observer,
            )
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(self.status_error(repository, response, &what).await);
        }
        if let Some(served) = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok())
            && served != blob.digest
        {
            return Err(OciError::DigestMismatch {
                host: repository.host.clone(),
                what,
                expected: blob.digest.clone(),
                actual: served,
            });
        }
        Ok(())
    }

    /// Stores a manifest or index under `selector` (a tag or its digest).
    pub async fn put_manifest(
        &self,
        repository: &Repository,
        selector: &str,
        bytes: Bytes,
        media_type: &str,
        observer: &dyn RetryObserver,
    ) -> Result<PushedManifest> {
        self.put_manifest_if(repository, selector, bytes, media_type, None, observer)
            .await
    }

    /// [`RegistryClient::put_manifest`], only if what `selector` names now
    /// is `if_match` (an `If-Match` ETag; registries that do not support it
    /// ignore it). A registry that sees another version answers 412
    /// ([`OciError::Status`] with status 412).
    pub async fn put_manifest_if(
        &self,
        repository: &Repository,
        selector: &str,
        bytes: Bytes,
        media_type: &str,
        if_match: Option<&str>,
        observer: &dyn RetryObserver,
    ) -> Result<PushedManifest> {
        let digest = Digest::sha256_of(&bytes);
        let separator = if selector.contains(':') { '@' } else { ':' };
        let what = format!("manifest {}{separator}{selector}", repository.name);
        let path = format!("/v2/{}/manifests/{selector}", repository.name);
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, header_value(media_type)?);
        headers.insert(CONTENT_LENGTH, HeaderValue::from(bytes.len() as u64));
        if let Some(etag) = if_match {
            headers.insert(reqwest::header::IF_MATCH, header_value(etag)?);
        }
        let body = move || Ok(reqwest::Body::from(bytes.clone()));
        let response = self
            .execute_with_body(
                repository,
                Method::PUT,
                &path,
                headers,
                Some(&body),
                &what,
                observer,
            )
            .await?;
        if !response.status().is_success() {
            return Err(self.status_error(repository, response, &what).await);
        }
        let subject_indexed = response.headers().contains_key("oci-subject");
        if let Some(served) = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok())
            && served != digest
        {
            return Err(OciError::DigestMismatch {
                host: repository.host.clone(),
                what,
                expected: digest,
                actual: served,
            });
        }
        Ok(PushedManifest {
            digest,
            subject_indexed,
        })
    }

    /// The manifests that name `digest` as their subject, from the referrers
    /// API; `None` when the registry has no referrers API (then use the tag
    /// schema: [`RegistryClient::referrers_by_tag`]).
    pub async fn referrers(
        &self,
        repository: &Repository,
        digest: &Digest,
        artifact_type: Option<&str>,
        observer: &dyn RetryObserver,
    ) -> Result<Option<ImageIndex>> {
        let what = format!("referrers of {}@{digest}", repository.name);
        let mut path = format!("/v2/{}/referrers/{digest}", repository.name);
        if let Some(artifact_type) = artifact_type {
            path.push_str(&format!("?artifactType={}", encode(artifact_type)));
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static(media_type::OCI_INDEX),
        );
        let response = self
            .execute(repository, Method::GET, &path, headers, &what, observer)
            .await?;
        let status = response.status();
        let is_index = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(media_type::OCI_INDEX));
        if status == StatusCode::NOT_FOUND
            || status == StatusCode::METHOD_NOT_ALLOWED
            || (status.is_success() && !is_index)
        {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.status_error(repository, response, &what).await);
        }
        let bytes = read_limited(response, MAX_MANIFEST_SIZE)
            .await
            .map_err(|detail| OciError::Unreachable {
                host: repository.host.clone(),
                detail,
            })?;
        parse_index(repository, &what, &bytes).map(Some)
    }

    /// The referrers index kept under the tag schema (`sha256-HEX`), empty
    /// when the tag does not exist.
    pub async fn referrers_by_tag(
        &self,
        reference: &Reference,
        digest: &Digest,
        observer: &dyn RetryObserver,
    ) -> Result<ImageIndex> {
        Ok(self
            .referrers_tag_index(reference, digest, observer)
            .await?
            .0)
    }

    /// [`RegistryClient::referrers_by_tag`] with the ETag to update it
    /// with ([`RegistryClient::put_manifest_if`]): the quoted digest of the
    /// index read, as distribution registries give it; `None` when there
    /// was none.
    pub async fn referrers_tag_index(
        &self,
        reference: &Reference,
        digest: &Digest,
        observer: &dyn RetryObserver,
    ) -> Result<(ImageIndex, Option<String>)> {
        let repository = Repository::of(reference);
        let tag = referrers_tag(digest);
        match self.fetch_manifest(reference, &tag, observer).await {
            Ok(fetched) => Ok((
                parse_index(
                    &repository,
                    &format!("referrers tag {}:{tag}", repository.name),
                    &fetched.bytes,
                )?,
                Some(format!("\"{}\"", fetched.digest)),
            )),
            Err(OciError::NotFound { .. }) => Ok((empty_index(), None)),
            Err(error) => Err(error),
        }
    }

    /// The `Location` of an upload response, made absolute.
    fn location(
        &self,
        repository: &Repository,
        response: &reqwest::Response,
        what: &str,
    ) -> Result<String> {
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| OciError::Status {
                host: repository.host.clone(),
                status: response.status().as_u16(),
                what: what.to_string(),
                message: Some("no Location header in the upload response".into()),
            })?;
        if location.starts_with("http://")
            || location.starts_with("https://")
            || location.starts_with('/')
        {
            Ok(location.to_string())
        } else {
            Ok(format!("/{location}"))
        }
    }
}

/// An empty OCI index (for the referrers tag schema).
pub fn empty_index() -> ImageIndex {
    ImageIndex {
        schema_version: 2,
        media_type: Some(media_type::OCI_INDEX.to_string()),
        manifests: Vec::new(),
        annotations: Default::default(),
    }
}

fn parse_index(repository: &Repository, what: &str, bytes: &[u8]) -> Result<ImageIndex> {
    serde_json::from_slice::<ImageIndex>(bytes).map_err(|e| OciError::Status {
        host: repository.host.clone(),
        status: 200,
        what: what.to_string(),
        message: Some(format!("not an OCI index: {e}")),
    })
}

/// A descriptor list entry for a referrer.
pub fn referrer_descriptor(
    digest: Digest,
    size: u64,
    artifact_type: &str,
    annotations: std::collections::BTreeMap<String, String>,
) -> Descriptor {
    Descriptor {
        annotations,
        artifact_type: Some(artifact_type.to_string()),
        ..Descriptor::new(media_type::OCI_MANIFEST, digest, size)
    }
}

fn header_value(text: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(text).map_err(|e| OciError::Client(format!("header {text:?}: {e}")))
}

/// Percent-encodes a query value.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// A body streaming `length` bytes of `path` from `offset`, reporting the
/// bytes sent.
fn file_body(
    path: PathBuf,
    offset: u64,
    length: u64,
    progress: UploadProgress,
) -> impl Fn() -> Result<reqwest::Body> + Send + Sync {
    move || {
        use std::io::{Seek, SeekFrom};
        use tokio::io::AsyncReadExt;
        let mut file = std::fs::File::open(&path)?;
        file.seek(SeekFrom::Start(offset))?;
        let reader = tokio::fs::File::from_std(file).take(length);
        let state = (reader, offset, progress.clone());
        let stream =
            futures_util::stream::unfold(state, |(mut reader, sent, progress)| async move {
                let mut buffer = vec![0u8; 1 << 20];
                match reader.read(&mut buffer).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buffer.truncate(n);
                        let sent = sent + n as u64;
                        progress(sent);
                        Some((
                            Ok::<_, std::io::Error>(Bytes::from(buffer)),
                            (reader, sent, progress),
                        ))
                    }
                    Err(error) => Some((Err(error), (reader, sent, progress))),
                }
            });
        Ok(reqwest::Body::wrap_stream(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_query_values_and_names_referrers_tags() {
        assert_eq!(encode("sha256:ab"), "sha256%3Aab");
        assert_eq!(encode("library/alpine"), "library/alpine");
        let digest = Digest::sha256_of(b"x");
        assert_eq!(referrers_tag(&digest), format!("sha256-{}", digest.hex()));
    }
}
