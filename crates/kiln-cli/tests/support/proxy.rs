//! A fault-injecting HTTP proxy in front of the test registry.
//!
//! It forwards each request to the upstream registry, then applies the
//! first matching fault rule: an error status, a connection reset or a
//! truncated body after some bytes, corrupted bytes, a redirect of blob GETs
//! to another origin. It can demand bearer tokens (with a token endpoint of
//! its own, as Docker Hub's auth service does), throttle bodies, and counts
//! every byte of body it sends per path. Request bodies (uploads, manifest
//! PUTs) are forwarded. It can also play a registry with the OCI 1.1
//! referrers API in front of one without it (`referrers_api`): manifests
//! with a `subject` are answered with `OCI-Subject` and listed by
//! `GET /v2/NAME/referrers/DIGEST`, as the distribution spec describes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status (and headers) instead of forwarding.
    Status(u16, Vec<(String, String)>),
    /// Send this many body bytes, then reset the connection.
    ResetAfter(usize),
    /// Declare the full length, send this many body bytes, close cleanly.
    Truncate(usize),
    /// Flip bytes in the body.
    Corrupt,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub path_contains: String,
    pub method: Option<String>,
    pub fault: Fault,
    /// How many times it fires; `usize::MAX` for always.
    pub times: usize,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub port: u16,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    requests: Vec<Request>,
    body_bytes: HashMap<String, u64>,
    throttle: Option<u64>,
    bearer: Option<(String, Option<(String, String)>)>,
    redirect_blobs: bool,
    /// Emulated referrers API: subject digest → descriptors.
    referrers: Option<HashMap<String, Vec<serde_json::Value>>>,
}

#[derive(Clone)]
pub struct Proxy {
    pub address: SocketAddr,
    /// A second port of the proxy: another origin, where blobs redirect to.
    pub storage_address: SocketAddr,
    upstream: String,
    state: Arc<Mutex<State>>,
    shutdown: Arc<tokio::sync::Notify>,
}

const TOKEN: &str = "kiln-test-token-7f3a";

impl Proxy {
    /// Starts a proxy to `upstream` (host:port of a plain-HTTP registry) on
    /// its own runtime thread.
    pub fn start(upstream: &str) -> Proxy {
        let (sender, receiver) = std::sync::mpsc::channel();
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let storage = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let proxy = Proxy {
                    address: listener.local_addr().unwrap(),
                    storage_address: storage.local_addr().unwrap(),
                    upstream,
                    state: Arc::new(Mutex::new(State::default())),
                    shutdown: Arc::new(tokio::sync::Notify::new()),
                };
                sender.send(proxy.clone()).unwrap();
                let client = reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .unwrap();
                loop {
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        a = storage.accept() => a,
                        _ = proxy.shutdown.notified() => break,
                    };
                    let Ok((stream, _)) = accepted else { continue };
                    let (proxy, client) = (proxy.clone(), client.clone());
                    tokio::spawn(async move {
                        let _ = proxy.serve(stream, client).await;
                    });
                }
            });
        });
        receiver.recv().unwrap()
    }

    /// `127.0.0.1:port` of the proxy.
    pub fn host(&self) -> String {
        self.address.to_string()
    }

    pub fn add_rule(&self, path_contains: &str, method: Option<&str>, fault: Fault, times: usize) {
        self.state.lock().unwrap().rules.push(Rule {
            path_contains: path_contains.into(),
            method: method.map(Into::into),
            fault,
            times,
        });
    }

    pub fn throttle(&self, bytes_per_second: Option<u64>) {
        self.state.lock().unwrap().throttle = bytes_per_second;
    }

    /// Demand a bearer token; the token endpoint wants these basic credentials (if any).
    pub fn require_bearer(&self, credentials: Option<(&str, &str)>) {
        self.state.lock().unwrap().bearer =
            Some((TOKEN.into(), credentials.map(|(u, p)| (u.into(), p.into()))));
    }

    /// Serve the OCI 1.1 referrers API (the upstream has none).
    pub fn referrers_api(&self) {
        self.state.lock().unwrap().referrers = Some(HashMap::new());
    }

    pub fn redirect_blobs(&self) {
        self.state.lock().unwrap().redirect_blobs = true;
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Body bytes sent for paths containing `fragment`.
    pub fn bytes_for(&self, fragment: &str) -> u64 {
        self.state
            .lock()
            .unwrap()
            .body_bytes
            .iter()
            .filter(|(p, _)| p.contains(fragment))
            .map(|(_, b)| *b)
            .sum()
    }

    pub fn stop(&self) {
        self.shutdown.notify_one();
    }

    async fn serve(&self, mut stream: TcpStream, client: reqwest::Client) -> std::io::Result<()> {
        let local_port = stream.local_addr()?.port();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await? == 0 {
                return Ok(());
            }
            if head.is_empty() && byte[0] == 0x16 {
                // A TLS handshake on this plain-HTTP port: answer as HTTP
                // servers do, so an --insecure client falls back to HTTP.
                return respond(
                    &mut stream,
                    400,
                    &[],
                    b"Client sent an HTTPS request to an HTTP server",
                )
                .await;
            }
            head.push(byte[0]);
        }
        let parsed = super::RequestHead::parse(&head);
        let (method, path) = (parsed.method.clone(), parsed.target.clone());
        let headers = &parsed.headers;
        let header = |name: &str| parsed.header(name);
        let authorization = header("authorization");
        let mut request_body = Vec::new();
        if let Some(length) = header("content-length").and_then(|l| l.parse::<usize>().ok()) {
            request_body.resize(length, 0);
            stream.read_exact(&mut request_body).await?;
        }
        self.state.lock().unwrap().requests.push(Request {
            method: method.clone(),
            path: path.clone(),
            range: header("range"),
            authorization: authorization.clone(),
            port: local_port,
        });

        // Token endpoint.
        if path.starts_with("/token") {
            let expected = self.state.lock().unwrap().bearer.clone();
            let Some((token, credentials)) = expected else {
                return respond(&mut stream, 404, &[], b"").await;
            };
            if let Some((user, password)) = credentials {
                use base64::Engine as _;
                let wanted = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
                );
                if authorization.as_deref() != Some(wanted.as_str()) {
                    return respond(
                        &mut stream,
                        401,
                        &[],
                        br#"{"details":"incorrect username or password"}"#,
                    )
                    .await;
                }
            }
            let body = format!(r#"{{"token":"{token}","expires_in":300}}"#);
            return respond(
                &mut stream,
                200,
                &[("Content-Type".into(), "application/json".into())],
                body.as_bytes(),
            )
            .await;
        }

        // Bearer demand on the registry port.
        let is_storage = local_port == self.storage_address.port();
        let bearer = self.state.lock().unwrap().bearer.clone();
        if !is_storage
            && let Some((token, _)) = bearer
            && authorization.as_deref() != Some(&format!("Bearer {token}"))
            && path.starts_with("/v2/")
        {
            let repository = path
                .trim_start_matches("/v2/")
                .split("/manifests/")
                .next()
                .unwrap_or("")
                .split("/blobs/")
                .next()
                .unwrap_or("")
                .to_string();
            let challenge = format!(
                r#"Bearer realm="http://{}/token",service="kiln-test",scope="repository:{repository}:pull""#,
                self.address
            );
            return respond(
                &mut stream,
                401,
                &[("WWW-Authenticate".into(), challenge)],
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            )
            .await;
        }

        // Redirect blob GETs to the other origin.
        let redirect = self.state.lock().unwrap().redirect_blobs;
        if redirect && !is_storage && method == "GET" && path.contains("/blobs/") {
            let location = format!("http://{}{path}", self.storage_address);
            return respond(&mut stream, 307, &[("Location".into(), location)], b"").await;
        }

        // The emulated referrers API.
        let emulated = self.state.lock().unwrap().referrers.is_some();
        if emulated && method == "GET" && path.contains("/referrers/") {
            let (before, query) = path.split_once('?').unwrap_or((path.as_str(), ""));
            let subject = before.rsplit('/').next().unwrap_or_default().to_string();
            let wanted = query
                .split('&')
                .find_map(|p| p.strip_prefix("artifactType="))
                .map(|t| t.replace("%2B", "+").replace("%2F", "/"));
            let listed: Vec<serde_json::Value> = self
                .state
                .lock()
                .unwrap()
                .referrers
                .as_ref()
                .and_then(|r| r.get(&subject).cloned())
                .unwrap_or_default()
                .into_iter()
                .filter(|d| wanted.as_deref().is_none_or(|w| d["artifactType"] == w))
                .collect();
            let index = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": listed,
            });
            return respond(
                &mut stream,
                200,
                &[(
                    "Content-Type".into(),
                    "application/vnd.oci.image.index.v1+json".into(),
                )],
                &serde_json::to_vec(&index).unwrap(),
            )
            .await;
        }

        // Faults that replace the answer.
        let fault = {
            let mut state = self.state.lock().unwrap();
            let found = state.rules.iter_mut().find(|r| {
                r.times > 0
                    && path.contains(&r.path_contains)
                    && r.method.as_ref().is_none_or(|m| *m == method)
            });
            found.map(|rule| {
                if rule.times != usize::MAX {
                    rule.times -= 1;
                }
                rule.fault.clone()
            })
        };
        if let Some(Fault::Status(status, extra)) = &fault {
            return respond(&mut stream, *status, extra, b"{}").await;
        }

        // Forward.
        let url = format!("http://{}{path}", self.upstream);
        let mut request = client.request(method.parse().unwrap(), &url);
        for (name, value) in headers {
            if matches!(
                name.as_str(),
                "accept" | "range" | "content-type" | "content-range"
            ) {
                request = request.header(name.as_str(), value.as_str());
            }
        }
        if !request_body.is_empty() || matches!(method.as_str(), "PUT" | "POST" | "PATCH") {
            request = request.body(request_body.clone());
        }
        let Ok(response) = request.send().await else {
            return respond(&mut stream, 502, &[], b"upstream failed").await;
        };
        let status = response.status().as_u16();
        let mut forwarded = Vec::new();
        for name in [
            "content-type",
            "docker-content-digest",
            "content-range",
            "location",
            "www-authenticate",
            "accept-ranges",
        ] {
            if let Some(value) = response.headers().get(name).and_then(|v| v.to_str().ok()) {
                forwarded.push((name.to_string(), value.to_string()));
            }
        }
        // A manifest with a subject: index it and say so, as a registry
        // with the referrers API does.
        if emulated
            && method == "PUT"
            && path.contains("/manifests/")
            && (200..300).contains(&status)
            && let Ok(manifest) = serde_json::from_slice::<serde_json::Value>(&request_body)
            && let Some(subject) = manifest["subject"]["digest"].as_str()
        {
            use sha2::Digest as _;
            let digest = format!(
                "sha256:{}",
                hex::encode(sha2::Sha256::digest(&request_body))
            );
            let descriptor = serde_json::json!({
                "mediaType": manifest["mediaType"],
                "digest": digest,
                "size": request_body.len(),
                "artifactType": manifest["artifactType"],
                "annotations": manifest["annotations"],
            });
            self.state
                .lock()
                .unwrap()
                .referrers
                .as_mut()
                .unwrap()
                .entry(subject.to_string())
                .or_default()
                .push(descriptor);
            forwarded.push(("oci-subject".into(), subject.to_string()));
        }
        let declared_length = response.content_length();
        let mut body = response
            .bytes()
            .await
            .map(|b| b.to_vec())
            .unwrap_or_default();
        if method == "HEAD" {
            forwarded.push((
                "content-length".into(),
                declared_length.unwrap_or(0).to_string(),
            ));
            return respond_head(&mut stream, status, &forwarded).await;
        }
        let full_length = body.len();
        let mut cut = None;
        let mut reset = false;
        match fault {
            Some(Fault::Corrupt) => {
                for byte in body.iter_mut().step_by(997) {
                    *byte ^= 0x5a;
                }
            }
            Some(Fault::ResetAfter(n)) => {
                cut = Some(n.min(full_length));
                reset = true;
            }
            Some(Fault::Truncate(n)) => cut = Some(n.min(full_length)),
            _ => {}
        }
        forwarded.push(("content-length".into(), full_length.to_string()));
        write_head(&mut stream, status, &forwarded).await?;
        let send = &body[..cut.unwrap_or(full_length)];
        let throttle = self.state.lock().unwrap().throttle;
        let chunk_size = throttle
            .map(|rate| (rate / 20).max(1024) as usize)
            .unwrap_or(1 << 16);
        for chunk in send.chunks(chunk_size) {
            stream.write_all(chunk).await?;
            *self
                .state
                .lock()
                .unwrap()
                .body_bytes
                .entry(path.clone())
                .or_default() += chunk.len() as u64;
            if throttle.is_some() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        stream.flush().await?;
        if reset {
            let socket = socket2_linger_zero(stream);
            drop(socket);
        }
        Ok(())
    }
}

/// Closes with RST instead of FIN.
#[allow(deprecated)]
fn socket2_linger_zero(stream: TcpStream) -> TcpStream {
    let _ = stream.set_linger(Some(Duration::ZERO));
    stream
}

async fn write_head(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(String, String)],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nConnection: close\r\n",
        reason(status)
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await
}

async fn respond_head(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(String, String)],
) -> std::io::Result<()> {
    write_head(stream, status, headers).await?;
    stream.flush().await
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut all = headers.to_vec();
    all.push(("content-length".into(), body.len().to_string()));
    write_head(stream, status, &all).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
