//! Loopback fakes of the servers kiln's non-OCI sources talk to, written
//! from their published APIs:
//!
//! - [`FakeGitHub`]: the GitHub REST releases API (release list with `Link`
//!   pagination, release by tag, asset download through a `302 Found` to a
//!   second origin, the storage host, as `api.github.com` redirects to
//!   `objects.githubusercontent.com`);
//! - [`FakeImgapi`]: SmartOS IMGAPI (`ListImages` with `limit`, `marker`
//!   and `state`, `GetImage`, `GetImageFile`);
//! - [`FakeFiles`]: a static file server for checksum catalogs and the files
//!   they point to.
//!
//! Each listens on 127.0.0.1 (random ports) on a runtime thread of its own,
//! like [`super::proxy::Proxy`], records every request (method, path, query,
//! `Authorization`, `Accept`, `Range`, port) in its [`Recorder`], and applies
//! fault rules switchable at runtime: an error status, a body cut short
//! under a full `Content-Length`, corrupted bytes. File bodies honour
//! `Range: bytes=N-` (and `N-M`). Dropping a fake stops it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as a fake received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Query string without the `?` (empty when none).
    pub query: String,
    pub authorization: Option<String>,
    pub accept: Option<String>,
    pub range: Option<String>,
    /// Local port that received it: tells the listeners of a fake apart.
    pub port: u16,
}

impl Request {
    /// A query parameter (not percent-decoded: the fakes' values need none).
    pub fn param(&self, name: &str) -> Option<String> {
        self.query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.to_string())
    }
}

/// A fault a rule injects into the answer to a matching request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status (and a small JSON body) instead.
    Status(u16),
    /// Declare the full `Content-Length`, send this many body bytes, close.
    Truncate(usize),
    /// Flip bytes of the body (same length).
    Corrupt,
}

/// `times` for a rule that always fires.
pub const ALWAYS: usize = usize::MAX;

#[derive(Debug, Clone)]
struct Rule {
    path_contains: String,
    fault: Fault,
    times: usize,
}

#[derive(Default)]
struct Log {
    requests: Vec<Request>,
    rules: Vec<Rule>,
    body_bytes: HashMap<String, u64>,
}

/// The request log and fault rules of one fake (all its listeners).
#[derive(Clone, Default)]
pub struct Recorder {
    log: Arc<Mutex<Log>>,
}

impl Recorder {
    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().requests.clone()
    }

    /// Requests whose path contains `fragment`.
    pub fn requests_to(&self, fragment: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.contains(fragment))
            .collect()
    }

    /// GET requests whose path contains `fragment`.
    pub fn count(&self, fragment: &str) -> usize {
        self.requests_to(fragment)
            .iter()
            .filter(|r| r.method == "GET")
            .count()
    }

    /// Body bytes sent for paths containing `fragment`.
    pub fn bytes_for(&self, fragment: &str) -> u64 {
        self.log
            .lock()
            .unwrap()
            .body_bytes
            .iter()
            .filter(|(path, _)| path.contains(fragment))
            .map(|(_, bytes)| *bytes)
            .sum()
    }

    /// Injects `fault` into the next `times` answers to paths containing
    /// `path_contains` ([`ALWAYS`] for every one). The first matching rule wins.
    pub fn add_fault(&self, path_contains: &str, fault: Fault, times: usize) {
        self.log.lock().unwrap().rules.push(Rule {
            path_contains: path_contains.to_string(),
            fault,
            times,
        });
    }

    pub fn clear_faults(&self) {
        self.log.lock().unwrap().rules.clear();
    }

    fn record(&self, request: Request) {
        self.log.lock().unwrap().requests.push(request);
    }

    fn take_fault(&self, path: &str) -> Option<Fault> {
        let mut log = self.log.lock().unwrap();
        let rule = log
            .rules
            .iter_mut()
            .find(|rule| rule.times > 0 && path.contains(&rule.path_contains))?;
        if rule.times != ALWAYS {
            rule.times -= 1;
        }
        Some(rule.fault.clone())
    }

    fn sent(&self, path: &str, bytes: usize) {
        *self
            .log
            .lock()
            .unwrap()
            .body_bytes
            .entry(path.to_string())
            .or_default() += bytes as u64;
    }
}

/// An answer, before faults.
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
    delay: Option<Duration>,
}

impl Reply {
    fn new(status: u16, content_type: &str, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
            delay: None,
        }
    }

    fn json(status: u16, value: &Value) -> Reply {
        Reply::new(
            status,
            "application/json; charset=utf-8",
            serde_json::to_vec_pretty(value).unwrap(),
        )
    }

    fn redirect(status: u16, location: &str) -> Reply {
        Reply::new(status, "text/html;charset=utf-8", Bytes::new()).header("Location", location)
    }

    fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn delayed(mut self, delay: Option<Duration>) -> Reply {
        self.delay = delay;
        self
    }
}

/// The bytes of a file, honouring `Range: bytes=N-` and `bytes=N-M`.
fn file_reply(request: &Request, data: &Bytes, content_type: &str) -> Reply {
    let length = data.len();
    let range = request
        .range
        .as_deref()
        .and_then(|r| r.trim().strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(start, end)| {
            let start: usize = start.trim().parse().ok()?;
            let end: Option<usize> = if end.trim().is_empty() {
                None
            } else {
                Some(end.trim().parse().ok()?)
            };
            Some((start, end))
        });
    match range {
        Some((start, _)) if start >= length => Reply::new(
            416,
            "text/plain",
            Bytes::from_static(b"range not satisfiable"),
        )
        .header("Content-Range", &format!("bytes */{length}")),
        Some((start, end)) => {
            let last = end.unwrap_or(length - 1).min(length - 1).max(start);
            Reply::new(206, content_type, data.slice(start..=last))
                .header("Accept-Ranges", "bytes")
                .header("Content-Range", &format!("bytes {start}-{last}/{length}"))
        }
        None => Reply::new(200, content_type, data.clone()).header("Accept-Ranges", "bytes"),
    }
}

type Router = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// The listeners of a fake; dropping it stops them.
struct Server {
    shutdown: Arc<tokio::sync::Notify>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.notify_one();
    }
}

fn bind() -> std::net::TcpListener {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    listener
}

/// Serves `router` on `listeners` from a runtime thread of its own.
fn start(listeners: Vec<std::net::TcpListener>, recorder: Recorder, router: Router) -> Server {
    let shutdown = Arc::new(tokio::sync::Notify::new());
    let stop = shutdown.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            for listener in listeners {
                let listener = TcpListener::from_std(listener).unwrap();
                let (recorder, router) = (recorder.clone(), router.clone());
                tokio::spawn(async move {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let (recorder, router) = (recorder.clone(), router.clone());
                        tokio::spawn(async move {
                            let _ = serve(stream, recorder, router).await;
                        });
                    }
                });
            }
            stop.notified().await;
        });
    });
    Server { shutdown }
}

async fn serve(mut stream: TcpStream, recorder: Recorder, router: Router) -> std::io::Result<()> {
    let port = stream.local_addr()?.port();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let parsed = super::RequestHead::parse(&head);
    let method = parsed.method.clone();
    let (path, query) = match parsed.target.split_once('?') {
        Some((path, query)) => (path.to_string(), query.to_string()),
        None => (parsed.target.clone(), String::new()),
    };
    let header = |name: &str| parsed.header(name);
    let request = Request {
        method: method.clone(),
        path: path.clone(),
        query,
        authorization: header("authorization"),
        accept: header("accept"),
        range: header("range"),
        port,
    };
    recorder.record(request.clone());

    let fault = recorder.take_fault(&path);
    let reply = match &fault {
        Some(Fault::Status(status)) => Reply::json(
            *status,
            &json!({ "message": format!("injected status {status}") }),
        ),
        _ => router(&request),
    };
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    let mut body = reply.body.to_vec();
    let mut cut = body.len();
    match fault {
        Some(Fault::Corrupt) => {
            for byte in body.iter_mut().step_by(997) {
                *byte ^= 0x5a;
            }
        }
        Some(Fault::Truncate(keep)) => cut = keep.min(body.len()),
        _ => {}
    }
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nConnection: close\r\n",
        reply.status,
        reason(reply.status)
    );
    for (name, value) in &reply.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(out.as_bytes()).await?;
    if method != "HEAD" {
        for chunk in body[..cut].chunks(1 << 16) {
            stream.write_all(chunk).await?;
            recorder.sent(&path, chunk.len());
        }
    }
    stream.flush().await?;
    stream.shutdown().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        409 => "Conflict",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// `2026-01-01T00:00:00Z` plus `minutes` (within January).
pub fn timestamp(minutes: u64) -> String {
    let day = 1 + minutes / 1440;
    assert!(day <= 31, "timestamps stay in January");
    format!(
        "2026-01-{day:02}T{:02}:{:02}:00Z",
        minutes % 1440 / 60,
        minutes % 60
    )
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

// ---------------------------------------------------------------------------
// GitHub releases

/// The `digest` field of a release asset.
#[derive(Debug, Clone)]
pub enum AssetDigest {
    /// `sha256:` of the asset's current bytes.
    Computed,
    /// `"digest": null`, as GitHub answers for assets uploaded before it kept digests.
    Null,
    /// No `digest` key at all.
    Omitted,
    /// This value, whatever the bytes.
    Fixed(String),
}

#[derive(Debug, Clone)]
struct Asset {
    id: u64,
    name: String,
    content_type: String,
    data: Bytes,
    digest: AssetDigest,
    /// Declared `size` when it is not the data's length.
    size: Option<u64>,
}

#[derive(Debug, Clone)]
struct Release {
    id: u64,
    tag: String,
    prerelease: bool,
    published_at: String,
    assets: Vec<Asset>,
}

#[derive(Default)]
struct GitHubState {
    /// `owner/name` → releases, oldest first.
    repos: BTreeMap<String, Vec<Release>>,
    next_id: u64,
    /// Repositories are private: the API answers 404 without this bearer token.
    token: Option<String>,
}

impl GitHubState {
    fn release_mut(&mut self, repo: &str, tag: &str) -> &mut Release {
        self.repos
            .get_mut(repo)
            .and_then(|releases| releases.iter_mut().find(|r| r.tag == tag))
            .unwrap_or_else(|| panic!("fake GitHub has no release {repo}@{tag}"))
    }

    fn asset_mut(&mut self, repo: &str, tag: &str, name: &str) -> &mut Asset {
        self.release_mut(repo, tag)
            .assets
            .iter_mut()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("fake GitHub has no asset {name} in {repo}@{tag}"))
    }
}

/// GitHub's REST API for releases (`api` listener) and the storage host its
/// asset downloads redirect to (`storage` listener, another origin).
pub struct FakeGitHub {
    pub api: SocketAddr,
    pub storage: SocketAddr,
    pub log: Recorder,
    state: Arc<Mutex<GitHubState>>,
    _server: Server,
}

/// The largest `per_page` GitHub honours.
pub const GITHUB_MAX_PER_PAGE: usize = 100;
/// `per_page` when the request gives none.
pub const GITHUB_DEFAULT_PER_PAGE: usize = 30;

impl FakeGitHub {
    pub fn start() -> FakeGitHub {
        let (api, storage) = (bind(), bind());
        let (api_address, storage_address) =
            (api.local_addr().unwrap(), storage.local_addr().unwrap());
        let state = Arc::new(Mutex::new(GitHubState {
            next_id: 1000,
            ..GitHubState::default()
        }));
        let log = Recorder::default();
        let router: Router = {
            let state = state.clone();
            Arc::new(move |request: &Request| {
                let mut state = state.lock().unwrap();
                if request.port == storage_address.port() {
                    storage_route(&mut state, request)
                } else {
                    api_route(&mut state, api_address, storage_address, request)
                }
            })
        };
        let server = start(vec![api, storage], log.clone(), router);
        FakeGitHub {
            api: api_address,
            storage: storage_address,
            log,
            state,
            _server: server,
        }
    }

    /// The API base URL, as a source's `url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// Publishes a new release (the newest of `repo`) with no assets.
    pub fn create_release(&self, repo: &str, tag: &str) {
        let mut state = self.state.lock().unwrap();
        state.next_id += 1;
        let id = state.next_id;
        let releases = state.repos.entry(repo.to_string()).or_default();
        assert!(
            releases.iter().all(|r| r.tag != tag),
            "release {tag} exists"
        );
        releases.push(Release {
            id,
            tag: tag.to_string(),
            prerelease: false,
            published_at: timestamp(id - 1000),
            assets: Vec::new(),
        });
    }

    /// Adds an asset to a release; returns its id.
    pub fn upload(&self, repo: &str, tag: &str, name: &str, data: impl Into<Bytes>) -> u64 {
        let mut state = self.state.lock().unwrap();
        state.next_id += 1;
        let id = state.next_id;
        let content_type = if name.ends_with(".json") {
            "application/json"
        } else if name.ends_with(".tgz") {
            "application/gzip"
        } else if name.ends_with(".txt") || name.ends_with(".sha256") || name.ends_with("SUMS") {
            "text/plain"
        } else {
            "application/octet-stream"
        };
        let release = state.release_mut(repo, tag);
        assert!(release.assets.iter().all(|a| a.name != name));
        release.assets.push(Asset {
            id,
            name: name.to_string(),
            content_type: content_type.to_string(),
            data: data.into(),
            digest: AssetDigest::Computed,
            size: None,
        });
        id
    }

    /// Replaces an asset's bytes (its computed digest and size follow).
    pub fn set_asset_data(&self, repo: &str, tag: &str, name: &str, data: impl Into<Bytes>) {
        self.state.lock().unwrap().asset_mut(repo, tag, name).data = data.into();
    }

    pub fn set_asset_digest(&self, repo: &str, tag: &str, name: &str, digest: AssetDigest) {
        self.state.lock().unwrap().asset_mut(repo, tag, name).digest = digest;
    }

    /// Declares a `size` other than the bytes served.
    pub fn set_asset_size(&self, repo: &str, tag: &str, name: &str, size: u64) {
        self.state.lock().unwrap().asset_mut(repo, tag, name).size = Some(size);
    }

    /// Gives every asset of a release this kind of digest.
    pub fn set_release_digests(&self, repo: &str, tag: &str, digest: AssetDigest) {
        for asset in &mut self.state.lock().unwrap().release_mut(repo, tag).assets {
            asset.digest = digest.clone();
        }
    }

    pub fn set_prerelease(&self, repo: &str, tag: &str, prerelease: bool) {
        self.state.lock().unwrap().release_mut(repo, tag).prerelease = prerelease;
    }

    pub fn delete_release(&self, repo: &str, tag: &str) {
        let mut state = self.state.lock().unwrap();
        if let Some(releases) = state.repos.get_mut(repo) {
            releases.retain(|r| r.tag != tag);
        }
    }

    /// Makes every repository private: the API answers 404 (as GitHub does)
    /// unless the request carries `Authorization: Bearer TOKEN` (or `token TOKEN`).
    pub fn require_token(&self, token: &str) {
        self.state.lock().unwrap().token = Some(token.to_string());
    }

    /// The asset id of `name` in a release.
    pub fn asset_id(&self, repo: &str, tag: &str, name: &str) -> u64 {
        self.state.lock().unwrap().asset_mut(repo, tag, name).id
    }

    /// Requests the API listener received.
    pub fn api_requests(&self) -> Vec<Request> {
        self.log
            .requests()
            .into_iter()
            .filter(|r| r.port == self.api.port())
            .collect()
    }

    /// Requests the storage listener received.
    pub fn storage_requests(&self) -> Vec<Request> {
        self.log
            .requests()
            .into_iter()
            .filter(|r| r.port == self.storage.port())
            .collect()
    }

    /// GETs of asset `name` on the storage host (any release).
    pub fn downloads(&self, name: &str) -> usize {
        self.storage_requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with(&format!("/{name}")))
            .count()
    }
}

fn github_not_found() -> Reply {
    Reply::json(
        404,
        &json!({
            "message": "Not Found",
            "documentation_url": "https://docs.github.com/rest",
            "status": "404"
        }),
    )
}

fn asset_json(api: SocketAddr, storage: SocketAddr, repo: &str, tag: &str, asset: &Asset) -> Value {
    let mut value = json!({
        "url": format!("http://{api}/repos/{repo}/releases/assets/{}", asset.id),
        "id": asset.id,
        "node_id": format!("RA_{}", asset.id),
        "name": asset.name,
        "label": "",
        "content_type": asset.content_type,
        "state": "uploaded",
        "size": asset.size.unwrap_or(asset.data.len() as u64),
        "download_count": 0,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "browser_download_url": format!(
            "http://{storage}/{repo}/releases/download/{tag}/{}",
            asset.name
        ),
    });
    match &asset.digest {
        AssetDigest::Computed => {
            value["digest"] = format!("sha256:{}", sha256_hex(&asset.data)).into();
        }
        AssetDigest::Null => value["digest"] = Value::Null,
        AssetDigest::Omitted => {}
        AssetDigest::Fixed(digest) => value["digest"] = digest.clone().into(),
    }
    value
}

fn release_json(api: SocketAddr, storage: SocketAddr, repo: &str, release: &Release) -> Value {
    json!({
        "url": format!("http://{api}/repos/{repo}/releases/{}", release.id),
        "assets_url": format!("http://{api}/repos/{repo}/releases/{}/assets", release.id),
        "html_url": format!("http://{storage}/{repo}/releases/tag/{}", release.tag),
        "id": release.id,
        "node_id": format!("RE_{}", release.id),
        "tag_name": release.tag,
        "target_commitish": "main",
        "name": release.tag,
        "draft": false,
        "prerelease": release.prerelease,
        "created_at": release.published_at,
        "published_at": release.published_at,
        "assets": release
            .assets
            .iter()
            .map(|asset| asset_json(api, storage, repo, &release.tag, asset))
            .collect::<Vec<_>>(),
        "tarball_url": format!("http://{api}/repos/{repo}/tarball/{}", release.tag),
        "zipball_url": format!("http://{api}/repos/{repo}/zipball/{}", release.tag),
        "body": "",
    })
}

fn api_route(
    state: &mut GitHubState,
    api: SocketAddr,
    storage: SocketAddr,
    request: &Request,
) -> Reply {
    if let Some(token) = &state.token {
        let given = request.authorization.as_deref().unwrap_or_default();
        if given != format!("Bearer {token}") && given != format!("token {token}") {
            return github_not_found();
        }
    }
    let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
    let ["repos", owner, name, "releases", rest @ ..] = segments.as_slice() else {
        return github_not_found();
    };
    let repo = format!("{owner}/{name}");
    let Some(releases) = state.repos.get(&repo) else {
        return github_not_found();
    };
    match rest {
        [] | [""] => {
            let per_page = request
                .param("per_page")
                .and_then(|p| p.parse::<usize>().ok())
                .unwrap_or(GITHUB_DEFAULT_PER_PAGE)
                .clamp(1, GITHUB_MAX_PER_PAGE);
            let page = request
                .param("page")
                .and_then(|p| p.parse::<usize>().ok())
                .unwrap_or(1)
                .max(1);
            let newest_first: Vec<&Release> = releases.iter().rev().collect();
            let last = newest_first.len().div_ceil(per_page).max(1);
            let items: Vec<Value> = newest_first
                .iter()
                .skip((page - 1) * per_page)
                .take(per_page)
                .map(|release| release_json(api, storage, &repo, release))
                .collect();
            let link = |page: usize, rel: &str| {
                format!(
                    "<http://{api}/repos/{repo}/releases?per_page={per_page}&page={page}>; rel=\"{rel}\""
                )
            };
            let mut links = Vec::new();
            if page > 1 {
                links.push(link(page - 1, "prev"));
            }
            if page < last {
                links.push(link(page + 1, "next"));
                links.push(link(last, "last"));
            }
            if page > 1 {
                links.push(link(1, "first"));
            }
            let reply = Reply::json(200, &Value::Array(items));
            if links.is_empty() {
                reply
            } else {
                reply.header("Link", &links.join(", "))
            }
        }
        ["tags", tag] => match releases.iter().find(|r| r.tag == *tag) {
            Some(release) => Reply::json(200, &release_json(api, storage, &repo, release)),
            None => github_not_found(),
        },
        ["latest"] => match releases.iter().rev().find(|r| !r.prerelease) {
            Some(release) => Reply::json(200, &release_json(api, storage, &repo, release)),
            None => github_not_found(),
        },
        ["assets", id] => {
            let found = releases.iter().find_map(|release| {
                release
                    .assets
                    .iter()
                    .find(|a| a.id.to_string() == *id)
                    .map(|asset| (release, asset))
            });
            let Some((release, asset)) = found else {
                return github_not_found();
            };
            let wants_bytes = request
                .accept
                .as_deref()
                .is_some_and(|a| a.contains("application/octet-stream"));
            if wants_bytes {
                // A signed, short-lived URL on another origin.
                let location = format!(
                    "http://{storage}/{repo}/releases/download/{}/{}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=fake{}",
                    release.tag, asset.name, asset.id
                );
                Reply::redirect(302, &location)
            } else {
                Reply::json(200, &asset_json(api, storage, &repo, &release.tag, asset))
            }
        }
        [id] => match releases.iter().find(|r| r.id.to_string() == *id) {
            Some(release) => Reply::json(200, &release_json(api, storage, &repo, release)),
            None => github_not_found(),
        },
        _ => github_not_found(),
    }
}

fn storage_route(state: &mut GitHubState, request: &Request) -> Reply {
    // Signed URLs refuse a second authentication, as S3-style storage does.
    if request.authorization.is_some() && request.query.contains("X-Amz-Signature") {
        return Reply::new(
            400,
            "application/xml",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InvalidArgument</Code>\
             <Message>Only one auth mechanism allowed</Message></Error>",
        );
    }
    let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
    let [owner, name, "releases", "download", tag, file] = segments.as_slice() else {
        return Reply::new(404, "text/plain", "Not Found");
    };
    let asset = state
        .repos
        .get(&format!("{owner}/{name}"))
        .and_then(|releases| releases.iter().find(|r| r.tag == *tag))
        .and_then(|release| release.assets.iter().find(|a| a.name == *file));
    match asset {
        Some(asset) => file_reply(request, &asset.data, "application/octet-stream"),
        None => Reply::new(404, "text/plain", "Not Found"),
    }
}

// ---------------------------------------------------------------------------
// IMGAPI

/// An IMGAPI image: its manifest (served as is) and its file.
#[derive(Debug, Clone)]
pub struct ImgapiImage {
    pub manifest: Value,
    pub file: Bytes,
}

impl ImgapiImage {
    pub fn uuid(&self) -> String {
        self.manifest["uuid"].as_str().unwrap().to_string()
    }

    pub fn name(&self) -> String {
        self.manifest["name"].as_str().unwrap().to_string()
    }

    fn sort_key(&self) -> (String, String) {
        (
            self.manifest["published_at"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            self.uuid(),
        )
    }
}

#[derive(Default)]
struct ImgapiState {
    images: Vec<ImgapiImage>,
    max_limit: usize,
    file_delay: Option<Duration>,
}

impl ImgapiState {
    fn sorted(&self) -> Vec<&ImgapiImage> {
        let mut images: Vec<&ImgapiImage> = self.images.iter().collect();
        images.sort_by_key(|image| image.sort_key());
        images
    }
}

/// The most images one `ListImages` page holds (IMGAPI's documented maximum).
pub const IMGAPI_MAX_LIMIT: usize = 1000;

/// A SmartOS IMGAPI server.
pub struct FakeImgapi {
    pub address: SocketAddr,
    pub log: Recorder,
    state: Arc<Mutex<ImgapiState>>,
    _server: Server,
}

fn imgapi_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(status, &json!({ "code": code, "message": message }))
}

impl FakeImgapi {
    pub fn start() -> FakeImgapi {
        let listener = bind();
        let address = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ImgapiState {
            max_limit: IMGAPI_MAX_LIMIT,
            ..ImgapiState::default()
        }));
        let log = Recorder::default();
        let router: Router = {
            let state = state.clone();
            Arc::new(move |request: &Request| imgapi_route(&state.lock().unwrap(), request))
        };
        let server = start(vec![listener], log.clone(), router);
        FakeImgapi {
            address,
            log,
            state,
            _server: server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn add(&self, image: ImgapiImage) {
        let mut state = self.state.lock().unwrap();
        assert!(
            state.images.iter().all(|i| i.uuid() != image.uuid()),
            "image {} exists",
            image.uuid()
        );
        state.images.push(image);
    }

    /// Replaces the image with the same UUID.
    pub fn replace(&self, image: ImgapiImage) {
        let mut state = self.state.lock().unwrap();
        let slot = state
            .images
            .iter_mut()
            .find(|i| i.uuid() == image.uuid())
            .expect("an image to replace");
        *slot = image;
    }

    pub fn remove(&self, uuid: &str) {
        self.state
            .lock()
            .unwrap()
            .images
            .retain(|i| i.uuid() != uuid);
    }

    /// Caps `limit` (default [`IMGAPI_MAX_LIMIT`]).
    pub fn set_max_limit(&self, max: usize) {
        self.state.lock().unwrap().max_limit = max;
    }

    /// Holds every `GetImageFile` answer this long before sending it.
    pub fn set_file_delay(&self, delay: Option<Duration>) {
        self.state.lock().unwrap().file_delay = delay;
    }

    /// Every image's UUID in `ListImages` order (all states).
    pub fn uuids(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .sorted()
            .iter()
            .map(|i| i.uuid())
            .collect()
    }

    /// `GET /images/UUID/file` requests.
    pub fn file_requests(&self, uuid: &str) -> usize {
        self.log.count(&format!("/images/{uuid}/file"))
    }

    /// `GET /images` (`ListImages`) requests.
    pub fn list_requests(&self) -> Vec<Request> {
        self.log
            .requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path.trim_end_matches('/') == "/images")
            .collect()
    }
}

fn imgapi_route(state: &ImgapiState, request: &Request) -> Reply {
    let segments: Vec<&str> = request
        .path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .collect();
    match segments.as_slice() {
        ["ping"] => Reply::json(
            200,
            &json!({"ping": "pong", "pid": 1, "version": "4.13.0", "imgapi": true}),
        ),
        ["images"] => {
            let limit = match request.param("limit") {
                None => state.max_limit,
                Some(text) => match text.parse::<usize>() {
                    Ok(limit) if limit >= 1 => limit.min(state.max_limit),
                    _ => {
                        return imgapi_error(
                            409,
                            "InvalidParameter",
                            &format!("invalid limit {text:?}"),
                        );
                    }
                },
            };
            // IMGAPI lists active images unless asked for another state (or `all`).
            let wanted = request.param("state").unwrap_or_else(|| "active".into());
            let sorted: Vec<&ImgapiImage> = state
                .sorted()
                .into_iter()
                .filter(|i| {
                    wanted == "all" || i.manifest["state"].as_str().unwrap_or("active") == wanted
                })
                .collect();
            let start = match request.param("marker") {
                None => 0,
                Some(marker) => match sorted.iter().position(|i| i.uuid() == marker) {
                    Some(index) => index + 1,
                    None => {
                        return imgapi_error(
                            404,
                            "ResourceNotFound",
                            &format!("image {marker} not found"),
                        );
                    }
                },
            };
            let page: Vec<Value> = sorted
                .iter()
                .skip(start)
                .take(limit)
                .map(|i| i.manifest.clone())
                .collect();
            Reply::json(200, &Value::Array(page))
        }
        ["images", uuid] => match state.images.iter().find(|i| i.uuid() == *uuid) {
            Some(image) => Reply::json(200, &image.manifest),
            None => imgapi_error(404, "ResourceNotFound", &format!("image {uuid} not found")),
        },
        ["images", uuid, "file"] => match state.images.iter().find(|i| i.uuid() == *uuid) {
            Some(image) => file_reply(request, &image.file, "application/octet-stream")
                .delayed(state.file_delay),
            None => imgapi_error(404, "ResourceNotFound", &format!("image {uuid} not found")),
        },
        _ => imgapi_error(
            404,
            "ResourceNotFound",
            &format!("{} does not exist", request.path),
        ),
    }
}

// ---------------------------------------------------------------------------
// Static files

/// A static file server (catalogs and the files they point to).
pub struct FakeFiles {
    pub address: SocketAddr,
    pub log: Recorder,
    files: Arc<Mutex<HashMap<String, Bytes>>>,
    _server: Server,
}

impl FakeFiles {
    pub fn start() -> FakeFiles {
        let listener = bind();
        let address = listener.local_addr().unwrap();
        let files: Arc<Mutex<HashMap<String, Bytes>>> = Arc::default();
        let log = Recorder::default();
        let router: Router = {
            let files = files.clone();
            Arc::new(move |request: &Request| {
                let files = files.lock().unwrap();
                match files.get(&request.path) {
                    Some(data) => {
                        let content_type = if request.path.ends_with(".json") {
                            "application/json"
                        } else if request.path.ends_with(".toml") {
                            "application/toml"
                        } else {
                            "application/octet-stream"
                        };
                        file_reply(request, data, content_type)
                    }
                    None => Reply::new(404, "text/plain", "Not Found"),
                }
            })
        };
        let server = start(vec![listener], log.clone(), router);
        FakeFiles {
            address,
            log,
            files,
            _server: server,
        }
    }

    /// The URL of `path` (`/dir/file`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Serves `data` at `path` (replacing what was there).
    pub fn put(&self, path: &str, data: impl Into<Bytes>) {
        assert!(path.starts_with('/'));
        self.files
            .lock()
            .unwrap()
            .insert(path.to_string(), data.into());
    }

    pub fn remove(&self, path: &str) {
        self.files.lock().unwrap().remove(path);
    }

    /// GETs of exactly `path`.
    pub fn downloads(&self, path: &str) -> usize {
        self.log
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == path)
            .count()
    }
}
