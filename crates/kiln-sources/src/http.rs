//! Fetching documents and files from where sources keep them: HTTP(S) URLs
//! with retries, resumable downloads and a token that never leaves its
//! origin, or local paths.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kiln_oci::http::{BodyRead, ResumableBody, describe, read_limited, send_following};
use kiln_oci::{RetryObserver, RetryPolicy};
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue, RANGE};
use reqwest::{Method, StatusCode, Url};

use crate::error::{Result, SourceError};

/// Where a document or file is: a URL or a local path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `http://` or `https://`.
    Url(Url),
    /// A local file.
    Path(PathBuf),
}

impl Location {
    /// `http(s)://…` is a URL, `file://…` and anything else a path.
    pub fn parse(text: &str) -> Result<Location> {
        if text.starts_with("http://") || text.starts_with("https://") {
            return Url::parse(text)
                .map(Location::Url)
                .map_err(|e| SourceError::Invalid {
                    what: format!("URL {text:?}"),
                    detail: e.to_string(),
                });
        }
        if let Some(path) = text.strip_prefix("file://") {
            return Ok(Location::Path(PathBuf::from(path)));
        }
        if text.contains("://") {
            return Err(SourceError::Invalid {
                what: format!("URL {text:?}"),
                detail: "only http://, https:// and local paths are supported".into(),
            });
        }
        Ok(Location::Path(PathBuf::from(text)))
    }

    /// `reference` read relative to this location (a catalog's files are
    /// relative to the catalog). What a remote document names is remote:
    /// relative to a URL, only `http(s)` URLs come out, never a local file.
    pub fn join(&self, reference: &str) -> Result<Location> {
        match self {
            Location::Url(url) => {
                let joined = url.join(reference).map_err(|e| SourceError::Invalid {
                    what: format!("URL {reference:?} relative to {}", redact(url)),
                    detail: e.to_string(),
                })?;
                Location::remote(joined)
            }
            Location::Path(_) if reference.contains("://") => Location::parse(reference),
            Location::Path(path) => {
                let relative = Path::new(reference);
                if relative.is_absolute() {
                    return Ok(Location::Path(relative.to_path_buf()));
                }
                let base = path.parent().unwrap_or(Path::new("."));
                Ok(Location::Path(base.join(relative)))
            }
        }
    }
}

impl Location {
    /// A URL from a remote document: `http` and `https` only.
    pub fn remote(url: Url) -> Result<Location> {
        match url.scheme() {
            "http" | "https" => Ok(Location::Url(url)),
            other => Err(SourceError::Invalid {
                what: format!("URL {}", redact(&url)),
                detail: format!("scheme {other}: is not allowed here (http and https only)"),
            }),
        }
    }
}

/// A URL as errors and progress show it: no user, password, query or
/// fragment (presigned storage URLs carry credentials in their query).
pub fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Url(url) => write!(f, "{}", redact(url)),
            Location::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

/// HTTP settings.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Retry behaviour.
    pub retry: RetryPolicy,
    /// `User-Agent`.
    pub user_agent: String,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Longest silence while reading.
    pub read_timeout: Duration,
}

impl Default for FetchOptions {
    fn default() -> FetchOptions {
        FetchOptions {
            retry: RetryPolicy::default(),
            user_agent: format!("kiln/{}", env!("CARGO_PKG_VERSION")),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// An HTTP client for one source: retries, and a token sent to the source's
/// own origin only (redirects elsewhere go without it).
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    retry: RetryPolicy,
    token: Option<(url::Origin, HeaderValue)>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

enum Attempt {
    Response(reqwest::Response),
    Retry(String, Option<Duration>),
}

impl Fetcher {
    /// A client with `options`.
    pub fn new(options: &FetchOptions) -> Result<Fetcher> {
        let client = reqwest::Client::builder()
            .user_agent(options.user_agent.clone())
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
            .build()
            .map_err(|e| SourceError::Unreachable {
                url: "-".into(),
                detail: format!("HTTP client setup: {}", describe(&e)),
            })?;
        Ok(Fetcher {
            client,
            retry: options.retry.clone(),
            token: None,
        })
    }

    /// Sends `token` as a bearer token to `base`'s origin (scheme, host and
    /// port) and nowhere else.
    pub fn with_token(mut self, base: &Url, token: &str) -> Fetcher {
        if let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {token}")) {
            value.set_sensitive(true);
            self.token = Some((base.origin(), value));
        }
        self
    }

    fn authorization_for(&self, url: &Url) -> Option<&HeaderValue> {
        self.token
            .as_ref()
            .filter(|(origin, _)| *origin == url.origin())
            .map(|(_, value)| value)
    }

    /// One request with retries on connection errors, 5xx and 429; any other
    /// status is returned as is.
    async fn send(
        &self,
        url: &Url,
        headers: &HeaderMap,
        observer: &dyn RetryObserver,
    ) -> Result<reqwest::Response> {
        let mut failures = 0u32;
        loop {
            let attempt = match send_following(
                &self.client,
                &Method::GET,
                url.clone(),
                headers,
                self.authorization_for(url),
            )
            .await
            {
                Err(error) => Attempt::Retry(describe(&error.without_url()), None),
                Ok(response) => match self.retry.retryable(&response) {
                    Some((reason, retry_after)) => Attempt::Retry(reason, retry_after),
                    None => Attempt::Response(response),
                },
            };
            match attempt {
                Attempt::Response(response) => return Ok(response),
                Attempt::Retry(reason, retry_after) => {
                    failures += 1;
                    if failures >= self.retry.max_attempts {
                        return Err(if reason.starts_with("HTTP ") {
                            SourceError::RetriesExhausted {
                                url: redact(url),
                                attempts: failures,
                                last: reason,
                            }
                        } else {
                            SourceError::Unreachable {
                                url: redact(url),
                                detail: reason,
                            }
                        });
                    }
                    let delay = retry_after.unwrap_or_else(|| self.retry.backoff(failures));
                    observer.retrying(&redact(url), failures + 1, delay, &reason);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn status_error(what: &str, url: &Url, response: reqwest::Response) -> SourceError {
        let status = response.status();
        let message = read_limited(response, 16 << 10)
            .await
            .ok()
            .and_then(|body| error_message(&body));
        match status {
            StatusCode::NOT_FOUND | StatusCode::GONE => SourceError::NotFound {
                what: what.to_string(),
                url: redact(url),
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => SourceError::Denied {
                url: redact(url),
                status: status.as_u16(),
            },
            _ => SourceError::Status {
                url: redact(url),
                status: status.as_u16(),
                message,
            },
        }
    }

    /// A whole document of at most `limit` bytes, with the response headers
    /// (none for a local file).
    pub async fn get(
        &self,
        location: &Location,
        accept: Option<&str>,
        limit: u64,
        what: &str,
        observer: &dyn RetryObserver,
    ) -> Result<(Bytes, HeaderMap)> {
        match location {
            Location::Path(path) => {
                let file = fs_err::File::open(path).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        SourceError::NotFound {
                            what: what.to_string(),
                            url: path.display().to_string(),
                        }
                    } else {
                        SourceError::Io(e)
                    }
                })?;
                let mut bytes = Vec::new();
                file.take(limit + 1).read_to_end(&mut bytes)?;
                if bytes.len() as u64 > limit {
                    return Err(SourceError::TooLarge {
                        what: what.to_string(),
                        limit,
                    });
                }
                Ok((Bytes::from(bytes), HeaderMap::new()))
            }
            Location::Url(url) => {
                let mut headers = HeaderMap::new();
                if let Some(accept) = accept
                    && let Ok(value) = HeaderValue::from_str(accept)
                {
                    headers.insert(ACCEPT, value);
                }
                let response = self.send(url, &headers, observer).await?;
                if !response.status().is_success() {
                    return Err(Self::status_error(what, url, response).await);
                }
                let headers = response.headers().clone();
                let bytes = read_limited(response, limit).await.map_err(|detail| {
                    if detail.starts_with("larger than") {
                        SourceError::TooLarge {
                            what: what.to_string(),
                            limit,
                        }
                    } else {
                        SourceError::Unreachable {
                            url: redact(url),
                            detail,
                        }
                    }
                })?;
                Ok((bytes, headers))
            }
        }
    }

    /// A JSON document of at most `limit` bytes.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        location: &Location,
        limit: u64,
        what: &str,
        observer: &dyn RetryObserver,
    ) -> Result<(T, HeaderMap)> {
        let (bytes, headers) = self
            .get(location, Some("application/json"), limit, what, observer)
            .await?;
        let value = serde_json::from_slice(&bytes).map_err(|e| SourceError::Malformed {
            what: what.to_string(),
            detail: e.to_string(),
        })?;
        Ok((value, headers))
    }

    /// A resumable download of a file whose published size is `size`.
    pub fn download(
        &self,
        location: &Location,
        accept: Option<&str>,
        size: Option<u64>,
        what: &str,
        observer: Arc<dyn RetryObserver>,
    ) -> Download<'_> {
        Download {
            fetcher: self,
            location: location.clone(),
            accept: accept.map(str::to_string),
            size,
            what: what.to_string(),
            body: ResumableBody::default(),
            declared_length: false,
            file: None,
            file_position: 0,
            observer,
        }
    }
}

/// The message of a JSON error body (`{"message": …}` as GitHub and IMGAPI
/// answer).
fn error_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let message = value.get("message")?.as_str()?.to_string();
    match value.get("code").and_then(|c| c.as_str()) {
        Some(code) => Some(format!("{code}: {message}")),
        None => Some(message),
    }
}

/// A file download that resumes by itself (HTTP `Range`) after resets,
/// truncated bodies and retryable statuses.
pub struct Download<'f> {
    fetcher: &'f Fetcher,
    location: Location,
    accept: Option<String>,
    size: Option<u64>,
    what: String,
    body: ResumableBody,
    /// Whether the open response declared its length (then a clean end of
    /// its body is the end of the file, whatever was published).
    declared_length: bool,
    file: Option<fs_err::File>,
    file_position: u64,
    observer: Arc<dyn RetryObserver>,
}

const FILE_CHUNK: usize = 1 << 20;

impl Download<'_> {
    /// Bytes delivered so far.
    pub fn position(&self) -> u64 {
        match self.location {
            Location::Path(_) => self.file_position,
            Location::Url(_) => self.body.position(),
        }
    }

    async fn open(&mut self, url: &Url) -> Result<()> {
        let mut headers = HeaderMap::new();
        if let Some(accept) = &self.accept
            && let Ok(value) = HeaderValue::from_str(accept)
        {
            headers.insert(ACCEPT, value);
        }
        let position = self.body.position();
        if position > 0
            && let Ok(value) = HeaderValue::from_str(&format!("bytes={position}-"))
        {
            headers.insert(RANGE, value);
        }
        let response = self
            .fetcher
            .send(url, &headers, self.observer.as_ref())
            .await?;
        match response.status() {
            StatusCode::PARTIAL_CONTENT | StatusCode::OK => {}
            // Nothing past what we have: the file is shorter than published
            // (the caller's size check says so).
            StatusCode::RANGE_NOT_SATISFIABLE if position > 0 => {
                self.size = Some(position);
                return Ok(());
            }
            _ => return Err(Fetcher::status_error(&self.what, url, response).await),
        }
        self.declared_length = response.content_length().is_some();
        self.body.opened(response);
        Ok(())
    }

    /// The next chunk, or `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        let url = match &self.location {
            Location::Path(path) => {
                if self.file.is_none() {
                    self.file = Some(fs_err::File::open(path).map_err(|e| {
                        if e.kind() == std::io::ErrorKind::NotFound {
                            SourceError::NotFound {
                                what: self.what.clone(),
                                url: path.display().to_string(),
                            }
                        } else {
                            SourceError::Io(e)
                        }
                    })?);
                }
                let file = self.file.as_mut().expect("opened above");
                let mut buffer = vec![0u8; FILE_CHUNK];
                let read = file.read(&mut buffer)?;
                if read == 0 {
                    return Ok(None);
                }
                buffer.truncate(read);
                self.file_position += read as u64;
                return Ok(Some(Bytes::from(buffer)));
            }
            Location::Url(url) => url.clone(),
        };
        loop {
            if !self.body.is_open() {
                let position = self.body.position();
                if self.size.is_some_and(|size| position >= size) && position > 0 {
                    return Ok(None);
                }
                self.open(&url).await?;
                if !self.body.is_open() {
                    return Ok(None);
                }
            }
            let expected = self.size.filter(|_| !self.declared_length);
            let failure = match self.body.read(expected).await {
                BodyRead::Data(bytes) => return Ok(Some(bytes)),
                BodyRead::End => {
                    // Done: make the `None` sticky.
                    self.size = Some(self.body.position());
                    return Ok(None);
                }
                BodyRead::Failed(failure) => failure,
            };
            if let Err(attempts) = self
                .body
                .back_off(
                    &self.fetcher.retry,
                    self.observer.as_ref(),
                    &self.what,
                    &failure,
                )
                .await
            {
                return Err(SourceError::RetriesExhausted {
                    url: redact(&url),
                    attempts,
                    last: failure,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_relative_references() {
        let url = Location::parse("http://127.0.0.1:8080/cat/catalog.json").unwrap();
        assert_eq!(
            url.join("hello/vmlinux").unwrap().to_string(),
            "http://127.0.0.1:8080/cat/hello/vmlinux"
        );
        assert_eq!(
            url.join("https://cdn.example.com/x.ext4")
                .unwrap()
                .to_string(),
            "https://cdn.example.com/x.ext4"
        );
        let path = Location::parse("/srv/cat/catalog.toml").unwrap();
        assert_eq!(
            path.join("k/vmlinux").unwrap(),
            Location::Path("/srv/cat/k/vmlinux".into())
        );
        assert_eq!(
            path.join("/abs/f").unwrap(),
            Location::Path("/abs/f".into())
        );
        assert!(Location::parse("ftp://x/y").is_err());
        for local in ["file:///etc/shadow", "/etc/shadow", "../../etc/shadow"] {
            let joined = url.join(local);
            assert!(
                !matches!(joined, Ok(Location::Path(_))),
                "{local} from a remote catalog must not be a local file: {joined:?}"
            );
        }
        let secret = Url::parse("https://u:p@storage.example/x?X-Amz-Signature=abc").unwrap();
        assert_eq!(redact(&secret), "https://storage.example/x");
    }

    #[test]
    fn a_token_goes_to_its_origin_only() {
        let base = Url::parse("https://api.github.com").unwrap();
        let fetcher = Fetcher::new(&FetchOptions::default())
            .unwrap()
            .with_token(&base, "secret");
        assert!(
            fetcher
                .authorization_for(&Url::parse("https://api.github.com/repos/a/b").unwrap())
                .is_some()
        );
        for other in [
            "https://objects.githubusercontent.com/x",
            "http://api.github.com/repos",
            "https://api.github.com:8443/x",
        ] {
            assert!(
                fetcher
                    .authorization_for(&Url::parse(other).unwrap())
                    .is_none(),
                "{other}"
            );
        }
        assert!(!format!("{fetcher:?}").contains("secret"));
    }
}
