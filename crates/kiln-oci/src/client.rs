//! A thin OCI distribution client over reqwest: manifests and blobs, the
//! token and basic auth flows, TLS options, retries with backoff, and
//! redirects that never carry `Authorization` to another host.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use kiln_types::media_type::MANIFEST_ACCEPT;
use kiln_types::{Digest, Reference};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue, RANGE, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};

use crate::auth::{Anonymous, Challenge, Credential, CredentialProvider};
use crate::error::{OciError, Result};
use crate::http::{describe, read_limited};

/// Largest manifest or index kiln reads (the distribution spec suggests 4 MiB).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;

/// How hard to retry.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all (first try included) before giving up.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each time.
    pub initial_backoff: Duration,
    /// Longest backoff delay.
    pub max_backoff: Duration,
    /// Longest `Retry-After` kiln honours.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The delay after `failures` failures in a row: doubling, capped.
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// Why `response` is worth another attempt (a 5xx or a 429) and the
    /// delay it asks for; `None` for a final answer.
    pub fn retryable(&self, response: &reqwest::Response) -> Option<(String, Option<Duration>)> {
        let status = response.status();
        (status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS).then(|| {
            (
                format!("HTTP {status}"),
                self.retry_after(response.headers()),
            )
        })
    }

    /// The delay a `Retry-After: SECONDS` header asks for, capped at
    /// [`RetryPolicy::max_retry_after`].
    pub fn retry_after(&self, headers: &HeaderMap) -> Option<Duration> {
        headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s).min(self.max_retry_after))
    }
}

/// Told about each retry so a frontend can show it.
pub trait RetryObserver: Send + Sync {
    /// `what` failed with `reason`; attempt `attempt` follows after `delay`.
    fn retrying(&self, what: &str, attempt: u32, delay: Duration, reason: &str);
}

/// Ignores retries.
pub struct NoObserver;

impl RetryObserver for NoObserver {
    fn retrying(&self, _what: &str, _attempt: u32, _delay: Duration, _reason: &str) {}
}

/// Client settings.
#[derive(Clone)]
pub struct ClientOptions {
    /// Registries (host[:port]) reached over plain HTTP or unverified TLS.
    pub insecure_registries: Vec<String>,
    /// Extra CA certificates (PEM files) trusted for TLS.
    pub ca_certs: Vec<PathBuf>,
    /// Where credentials come from.
    pub credentials: Arc<dyn CredentialProvider>,
    /// Retry behaviour.
    pub retry: RetryPolicy,
    /// `User-Agent` header.
    pub user_agent: String,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Longest silence while reading a response.
    pub read_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            insecure_registries: Vec::new(),
            ca_certs: Vec::new(),
            credentials: Arc::new(Anonymous),
            retry: RetryPolicy::default(),
            user_agent: format!("kiln/{}", env!("CARGO_PKG_VERSION")),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// A fetched manifest or index.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The exact bytes the registry served.
    pub bytes: Bytes,
    /// `Content-Type` the registry gave.
    pub content_type: String,
    /// Digest of `bytes` (verified against the reference when it pinned one).
    pub digest: Digest,
}

/// Makes the body of an upload request (again for each attempt).
pub(crate) type BodyFactory<'a> = dyn Fn() -> Result<reqwest::Body> + Send + Sync + 'a;

/// A registry client; cheap to share (`Arc`).
pub struct RegistryClient {
    options: ClientOptions,
    verified: OnceLock<std::result::Result<reqwest::Client, String>>,
    unverified: OnceLock<std::result::Result<reqwest::Client, String>>,
    schemes: Mutex<HashMap<String, &'static str>>,
    authorizations: Mutex<HashMap<(String, String), HeaderValue>>,
}

/// A repository on a registry.
#[derive(Debug, Clone)]
pub struct Repository {
    /// host[:port] of the API.
    pub host: String,
    /// Registry name as the user wrote it (for credentials).
    pub registry: String,
    /// Repository path.
    pub name: String,
}

impl Repository {
    /// The repository a reference names.
    pub fn of(reference: &Reference) -> Repository {
        Repository {
            host: reference.api_host().to_string(),
            registry: reference.registry().to_string(),
            name: reference.repository().to_string(),
        }
    }
}

enum Attempt {
    Response(reqwest::Response),
    Retry(String, Option<Duration>),
}

impl RegistryClient {
    /// A client with `options`. No network I/O and no certificate loading
    /// happen until the first request.
    pub fn new(options: ClientOptions) -> RegistryClient {
        RegistryClient {
            options,
            verified: OnceLock::new(),
            unverified: OnceLock::new(),
            schemes: Mutex::new(HashMap::new()),
            authorizations: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn is_insecure(&self, host: &str) -> bool {
        self.options.insecure_registries.iter().any(|h| h == host)
    }

    pub(crate) fn http(&self, insecure: bool) -> Result<&reqwest::Client> {
        let cell = if insecure {
            &self.unverified
        } else {
            &self.verified
        };
        cell.get_or_init(|| self.build_http(insecure))
            .as_ref()
            .map_err(|detail| OciError::Client(detail.clone()))
    }

    fn build_http(&self, insecure: bool) -> std::result::Result<reqwest::Client, String> {
        let mut builder = reqwest::Client::builder()
            .user_agent(self.options.user_agent.clone())
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.options.connect_timeout)
            .read_timeout(self.options.read_timeout)
            .danger_accept_invalid_certs(insecure);
        for path in &self.options.ca_certs {
            let pem = std::fs::read(path)
                .map_err(|e| format!("CA certificates {}: {e}", path.display()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                format!("CA certificates {}: not a PEM bundle: {e}", path.display())
            })?;
            if certificates.is_empty() {
                return Err(format!(
                    "CA certificates {}: no certificate in the file",
                    path.display()
                ));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        builder.build().map_err(|e| e.to_string())
    }

    /// Checks that every `--ca-certs` file loads (so a bad path fails before
    /// any download with a clear message).
    pub fn check_ca_certs(&self) -> Result<()> {
        for path in &self.options.ca_certs {
            let pem = std::fs::read(path).map_err(|e| OciError::CaCerts {
                path: path.display().to_string(),
                detail: e.to_string(),
            })?;
            let certificates =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| OciError::CaCerts {
                    path: path.display().to_string(),
                    detail: format!("not a PEM bundle: {e}"),
                })?;
            if certificates.is_empty() {
                return Err(OciError::CaCerts {
                    path: path.display().to_string(),
                    detail: "no certificate in the file".into(),
                });
            }
        }
        Ok(())
    }

    pub(crate) fn scheme(&self, host: &str) -> &'static str {
        self.schemes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .copied()
            .unwrap_or("https")
    }

    pub(crate) fn remember_scheme(&self, host: &str, scheme: &'static str) {
        self.schemes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.to_string(), scheme);
    }

    fn cached_authorization(&self, repository: &Repository) -> Option<HeaderValue> {
        self.authorizations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(repository.host.clone(), repository.name.clone()))
            .cloned()
    }

    /// Sends a request to `repository`'s registry with auth, scheme fallback
    /// and retries; returns the final response whatever its status, except
    /// retryable ones.
    pub(crate) async fn execute(
        &self,
        repository: &Repository,
        method: Method,
        path: &str,
        headers: HeaderMap,
        what: &str,
        observer: &dyn RetryObserver,
    ) -> Result<reqwest::Response> {
        self.execute_with_body(repository, method, path, headers, None, what, observer)
            .await
    }

    /// [`RegistryClient::execute`] for a request with a body (made anew by
    /// `body` for every attempt) to `target`: a path on the registry, or an
    /// absolute URL the registry gave (an upload location). Requests with a
    /// body do not follow redirects; `Authorization` goes only to the
    /// registry's own host.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn execute_with_body(
        &self,
        repository: &Repository,
        method: Method,
        target: &str,
        headers: HeaderMap,
        body: Option<&BodyFactory<'_>>,
        what: &str,
        observer: &dyn RetryObserver,
    ) -> Result<reqwest::Response> {
        let host = &repository.host;
        let insecure = self.is_insecure(host);
        let mut failures = 0u32;
        let mut authenticated_once = false;
        // The authorization this call obtained: used for its retry even if
        // a concurrent request replaced the shared one meanwhile.
        let mut fresh_authorization: Option<HeaderValue> = None;
        loop {
            let scheme = self.scheme(host);
            let absolute = target.starts_with("http://") || target.starts_with("https://");
            let url = if absolute {
                Url::parse(target)
            } else {
                Url::parse(&format!("{scheme}://{host}{target}"))
            }
            .map_err(|e| OciError::Client(format!("bad URL for a request to {host}: {e}")))?;
            // Credentials go only to the registry's own origin (scheme,
            // host and port): never to an upload location elsewhere, and
            // never downgraded to plain HTTP.
            let same_origin = Url::parse(&format!("{scheme}://{host}/"))
                .is_ok_and(|registry| registry.origin() == url.origin());
            let client = self.http(insecure)?;
            let authorization = fresh_authorization
                .clone()
                .or_else(|| self.cached_authorization(repository))
                .filter(|_| same_origin);
            let sent = match body {
                None => {
                    crate::http::send_following(
                        client,
                        &method,
                        url,
                        &headers,
                        authorization.as_ref(),
                    )
                    .await
                }
                Some(body) => {
                    let mut request = client
                        .request(method.clone(), url)
                        .headers(headers.clone())
                        .body(body()?);
                    if let Some(value) = &authorization {
                        request = request.header(reqwest::header::AUTHORIZATION, value.clone());
                    }
                    request.send().await
                }
            };
            let attempt = match sent {
                Err(error)
                    if insecure
                        && scheme == "https"
                        && (!self.schemes_known(host) || self.scheme(host) == "http") =>
                {
                    // An insecure registry that does not speak TLS: plain HTTP.
                    let _ = error;
                    self.remember_scheme(host, "http");
                    continue;
                }
                Err(error) => Attempt::Retry(describe(&error.without_url()), None),
                Ok(response) => {
                    if !absolute {
                        self.remember_scheme(host, scheme);
                    }
                    let status = response.status();
                    // Only the registry's own 401 is answered with its
                    // credentials: not one from a host a redirect led to.
                    let from_registry = same_origin
                        && Url::parse(&format!("{scheme}://{host}/"))
                            .is_ok_and(|r| r.origin() == response.url().origin());
                    if status == StatusCode::UNAUTHORIZED && !authenticated_once && from_registry {
                        authenticated_once = true;
                        fresh_authorization =
                            Some(self.authenticate(repository, &response, what).await?);
                        continue;
                    }
                    match self.options.retry.retryable(&response) {
                        Some((reason, retry_after)) => Attempt::Retry(reason, retry_after),
                        None => Attempt::Response(response),
                    }
                }
            };
            match attempt {
                Attempt::Response(response) => return Ok(response),
                Attempt::Retry(reason, retry_after) => {
                    failures += 1;
                    if failures >= self.options.retry.max_attempts {
                        if reason.starts_with("HTTP ") {
                            return Err(OciError::RetriesExhausted {
                                host: host.clone(),
                                what: what.to_string(),
                                attempts: failures,
                                last: reason,
                            });
                        }
                        return Err(OciError::Unreachable {
                            host: host.clone(),
                            detail: reason,
                        });
                    }
                    let delay = retry_after.unwrap_or_else(|| self.options.retry.backoff(failures));
                    observer.retrying(what, failures + 1, delay, &reason);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    fn schemes_known(&self, host: &str) -> bool {
        self.schemes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(host)
    }

    /// Answers a 401: gets a bearer token or prepares basic auth.
    async fn authenticate(
        &self,
        repository: &Repository,
        response: &reqwest::Response,
        what: &str,
    ) -> Result<HeaderValue> {
        let host = repository.host.clone();
        let challenge = Challenge::of(response.headers());
        let credential = self.options.credentials.credentials(&repository.registry)?;
        let authorization = match challenge {
            Some(Challenge::Basic) => match &credential {
                Some(Credential::Basic { username, password }) => basic(username, password),
                _ => {
                    return Err(OciError::Denied {
                        host,
                        status: 401,
                        what: what.to_string(),
                        message: Some("credentials required".into()),
                    });
                }
            },
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", repository.name));
                let token = self
                    .fetch_token(
                        &host,
                        &realm,
                        service.as_deref(),
                        &scope,
                        credential.as_ref(),
                    )
                    .await?;
                bearer(&host, &realm, &token)?
            }
            None => {
                return Err(OciError::Denied {
                    host,
                    status: 401,
                    what: what.to_string(),
                    message: Some("no usable WWW-Authenticate challenge".into()),
                });
            }
        };
        self.authorizations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                (repository.host.clone(), repository.name.clone()),
                authorization.clone(),
            );
        Ok(authorization)
    }

    pub(crate) async fn fetch_token(
        &self,
        host: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        credential: Option<&Credential>,
    ) -> Result<String> {
        let token_error = |detail: String| OciError::Token {
            host: host.to_string(),
            realm: realm.to_string(),
            detail,
        };
        let (url, client) = self.realm_client(host, realm).map_err(&token_error)?;
        let mut failures = 0;
        loop {
            let request = match credential {
                Some(Credential::IdentityToken(refresh)) => {
                    let mut form = vec![
                        ("grant_type", "refresh_token"),
                        ("refresh_token", refresh.as_str()),
                        ("scope", scope),
                        ("client_id", "kiln"),
                    ];
                    if let Some(service) = service {
                        form.push(("service", service));
                    }
                    client.post(url.clone()).form(&form)
                }
                other => {
                    // Several scopes (a mount names two repositories) go
                    // as repeated `scope` parameters, as registries expect.
                    let mut query: Vec<(&str, &str)> =
                        scope.split_whitespace().map(|s| ("scope", s)).collect();
                    if let Some(service) = service {
                        query.push(("service", service));
                    }
                    match other {
                        Some(Credential::Basic { username, password }) => {
                            // As docker does: the account the token is for.
                            query.push(("account", username));
                            client
                                .get(url.clone())
                                .query(&query)
                                .basic_auth(username, Some(password))
                        }
                        _ => client.get(url.clone()).query(&query),
                    }
                }
            };
            let response = match request.send().await {
                Ok(response) => match self.options.retry.retryable(&response) {
                    Some((reason, _)) => Err(reason),
                    None => Ok(response),
                },
                Err(error) => Err(describe(&error)),
            };
            let response = match response {
                Ok(response) => response,
                Err(reason) => {
                    failures += 1;
                    if failures >= self.options.retry.max_attempts {
                        return Err(token_error(reason));
                    }
                    tokio::time::sleep(self.options.retry.backoff(failures)).await;
                    continue;
                }
            };
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(OciError::Denied {
                    host: host.to_string(),
                    status: status.as_u16(),
                    what: format!("a token for {scope}"),
                    message: Some(if credential.is_some() {
                        "credentials refused".into()
                    } else {
                        "credentials required".into()
                    }),
                });
            }
            if !status.is_success() {
                return Err(token_error(format!("HTTP {status}")));
            }
            return read_token(response).await.map_err(token_error);
        }
    }

    /// The token endpoint `realm` of `host`'s registry as a URL, and the
    /// HTTP client that reaches it (unverified TLS when its host is an
    /// insecure registry; plain HTTP only when the registry or the realm's
    /// host is insecure).
    pub(crate) fn realm_client(
        &self,
        host: &str,
        realm: &str,
    ) -> std::result::Result<(Url, &reqwest::Client), String> {
        let url = Url::parse(realm).map_err(|e| format!("bad realm URL: {e}"))?;
        let realm_insecure = url.host_str().is_some_and(|h| {
            let with_port = url
                .port()
                .map(|p| format!("{h}:{p}"))
                .unwrap_or_else(|| h.to_string());
            self.is_insecure(&with_port) || self.is_insecure(h)
        });
        // Credentials go to the token service: never in clear text unless
        // the user allowed plain HTTP for this registry.
        if url.scheme() != "https" && !realm_insecure && !self.is_insecure(host) {
            return Err(format!(
                "the token service is not HTTPS ({}); pass --insecure to allow it",
                url.scheme()
            ));
        }
        let client = self.http(realm_insecure).map_err(|e| e.to_string())?;
        Ok((url, client))
    }

    /// Turns a non-success status into the matching error.
    pub(crate) async fn status_error(
        &self,
        repository: &Repository,
        response: reqwest::Response,
        what: &str,
    ) -> OciError {
        let host = repository.host.clone();
        let status = response.status();
        let message = read_limited(response, 16 << 10)
            .await
            .ok()
            .and_then(|body| registry_message(&body));
        match status {
            StatusCode::NOT_FOUND => OciError::NotFound {
                host,
                what: what.to_string(),
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => OciError::Denied {
                host,
                status: status.as_u16(),
                what: what.to_string(),
                message,
            },
            _ => OciError::Status {
                host,
                status: status.as_u16(),
                what: what.to_string(),
                message,
            },
        }
    }

    /// Fetches a manifest or index by tag or digest. When `reference` pins a
    /// digest, the bytes are verified against it.
    pub async fn fetch_manifest(
        &self,
        reference: &Reference,
        selector: &str,
        observer: &dyn RetryObserver,
    ) -> Result<FetchedManifest> {
        let repository = Repository::of(reference);
        let separator = if selector.contains(':') { '@' } else { ':' };
        let what = format!("manifest {}{separator}{selector}", reference.name());
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        let path = format!("/v2/{}/manifests/{selector}", repository.name);
        let response = self
            .execute(&repository, Method::GET, &path, headers, &what, observer)
            .await?;
        if !response.status().is_success() {
            return Err(self.status_error(&repository, response, &what).await);
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
            .unwrap_or_default();
        let bytes = read_limited(response, MAX_MANIFEST_SIZE)
            .await
            .map_err(|detail| {
                if detail.starts_with("larger than") {
                    OciError::TooLarge {
                        host: repository.host.clone(),
                        what: what.clone(),
                        limit: MAX_MANIFEST_SIZE,
                    }
                } else {
                    OciError::Unreachable {
                        host: repository.host.clone(),
                        detail,
                    }
                }
            })?;
        let digest = match selector.parse::<Digest>() {
            Ok(expected) => {
                let actual = Digest::of(expected.algorithm(), &bytes);
                if actual != expected {
                    return Err(OciError::DigestMismatch {
                        host: repository.host.clone(),
                        what,
                        expected,
                        actual,
                    });
                }
                expected
            }
            Err(_) => Digest::sha256_of(&bytes),
        };
        Ok(FetchedManifest {
            bytes,
            content_type,
            digest,
        })
    }

    /// Asks which digest a tag names now (HEAD), without downloading it.
    /// `None` when the registry does not say (then fetch the manifest).
    pub async fn head_manifest(
        &self,
        reference: &Reference,
        observer: &dyn RetryObserver,
    ) -> Result<Option<Digest>> {
        let repository = Repository::of(reference);
        let selector = reference.manifest_selector();
        let what = format!("manifest {}:{selector}", reference.name());
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        let path = format!("/v2/{}/manifests/{selector}", repository.name);
        let response = self
            .execute(&repository, Method::HEAD, &path, headers, &what, observer)
            .await?;
        if !response.status().is_success() {
            return Err(self.status_error(&repository, response, &what).await);
        }
        Ok(response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()))
    }

    /// Fetches a small blob (a config) of published `size` whole, verified.
    pub async fn fetch_small_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        observer: Arc<dyn RetryObserver>,
    ) -> Result<Bytes> {
        let mut download = self.blob(reference, digest.clone(), Some(size), 0, observer);
        let mut bytes = Vec::new();
        while let Some(chunk) = download.next_chunk().await? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > size {
                return Err(OciError::TooLarge {
                    host: reference.api_host().to_string(),
                    what: format!("blob {digest}"),
                    limit: size,
                });
            }
        }
        let actual = Digest::of(digest.algorithm(), &bytes);
        if actual != *digest {
            return Err(OciError::DigestMismatch {
                host: reference.api_host().to_string(),
                what: format!("blob {digest}"),
                expected: digest.clone(),
                actual,
            });
        }
        Ok(Bytes::from(bytes))
    }

    /// A resumable download of blob `digest` starting at byte `offset`.
    /// `size` is the published size (the download retries when the body ends
    /// before it).
    pub fn blob(
        &self,
        reference: &Reference,
        digest: Digest,
        size: Option<u64>,
        offset: u64,
        observer: Arc<dyn RetryObserver>,
    ) -> BlobDownload<'_> {
        BlobDownload {
            client: self,
            repository: Repository::of(reference),
            digest,
            size,
            body: crate::http::ResumableBody::starting_at(offset),
            observer,
        }
    }
}

/// A blob download that resumes by itself (HTTP `Range`) after connection
/// resets, truncated bodies and retryable statuses.
pub struct BlobDownload<'c> {
    client: &'c RegistryClient,
    repository: Repository,
    digest: Digest,
    size: Option<u64>,
    body: crate::http::ResumableBody,
    observer: Arc<dyn RetryObserver>,
}

impl BlobDownload<'_> {
    /// Bytes delivered so far, counting the starting offset.
    pub fn position(&self) -> u64 {
        self.body.position()
    }

    async fn open(&mut self) -> Result<()> {
        let what = format!("blob {}", self.digest);
        let mut headers = HeaderMap::new();
        if self.body.position() > 0 {
            let range = HeaderValue::from_str(&format!("bytes={}-", self.body.position()))
                .map_err(|e| OciError::Client(e.to_string()))?;
            headers.insert(RANGE, range);
        }
        let path = format!("/v2/{}/blobs/{}", self.repository.name, self.digest);
        let response = self
            .client
            .execute(
                &self.repository,
                Method::GET,
                &path,
                headers,
                &what,
                self.observer.as_ref(),
            )
            .await?;
        match response.status() {
            StatusCode::PARTIAL_CONTENT | StatusCode::OK => self.body.opened(response),
            _ => {
                return Err(self
                    .client
                    .status_error(&self.repository, response, &what)
                    .await);
            }
        }
        Ok(())
    }

    /// The next chunk, or `None` at the end of the blob.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        use crate::http::BodyRead;
        loop {
            if !self.body.is_open() {
                if self.size.is_some_and(|size| self.body.position() >= size) {
                    return Ok(None);
                }
                self.open().await?;
            }
            let failure = match self.body.read(self.size).await {
                BodyRead::Data(bytes) => return Ok(Some(bytes)),
                BodyRead::End => return Ok(None),
                BodyRead::Failed(failure) => failure,
            };
            let what = format!("blob {}", self.digest);
            if let Err(attempts) = self
                .body
                .back_off(
                    &self.client.options.retry,
                    self.observer.as_ref(),
                    &what,
                    &failure,
                )
                .await
            {
                return Err(OciError::RetriesExhausted {
                    host: self.repository.host.clone(),
                    what,
                    attempts,
                    last: failure,
                });
            }
        }
    }
}

/// `Authorization: Bearer TOKEN`, marked sensitive.
pub(crate) fn bearer(host: &str, realm: &str, token: &str) -> Result<HeaderValue> {
    let mut value =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| OciError::Token {
            host: host.to_string(),
            realm: realm.to_string(),
            detail: "token is not a valid header value".into(),
        })?;
    value.set_sensitive(true);
    Ok(value)
}

pub(crate) fn basic(username: &str, password: &str) -> HeaderValue {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

/// The token in a token endpoint's successful answer (`token`, or OAuth2's
/// `access_token`). The error never holds the body.
pub(crate) async fn read_token(response: reqwest::Response) -> std::result::Result<String, String> {
    let body = read_limited(response, MAX_TOKEN_RESPONSE).await?;
    #[derive(serde::Deserialize)]
    struct TokenResponse {
        token: Option<String>,
        access_token: Option<String>,
    }
    let parsed: TokenResponse =
        serde_json::from_slice(&body).map_err(|_| "malformed token response".to_string())?;
    parsed
        .token
        .or(parsed.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| "response has no token".to_string())
}

/// The first message of a distribution-spec error body.
pub(crate) fn registry_message(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        code: Option<String>,
        message: Option<String>,
    }
    let parsed: Errors = serde_json::from_slice(body).ok()?;
    let first = parsed.errors.into_iter().next()?;
    match (first.code, first.message) {
        (Some(code), Some(message)) => Some(format!("{code}: {message}")),
        (code, message) => code.or(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff(1), Duration::from_millis(250));
        assert_eq!(policy.backoff(2), Duration::from_millis(500));
        assert_eq!(policy.backoff(20), Duration::from_secs(8));
    }

    #[test]
    fn reads_registry_error_messages() {
        let body =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(
            registry_message(body).as_deref(),
            Some("MANIFEST_UNKNOWN: manifest unknown")
        );
        assert_eq!(registry_message(b"<html>"), None);
    }
}
