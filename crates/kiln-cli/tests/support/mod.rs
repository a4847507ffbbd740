//! Test harness: the environment `.ci/testenv.sh` set up (real registries
//! with fixture images), a runner for the real `kiln` binary, the
//! fault-injecting proxy, and the loopback fakes and fixtures of the non-OCI
//! sources (`fakes`, `bundles`).

#![allow(dead_code)]

pub mod bundles;
pub mod fakes;
pub mod proxy;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// An HTTP/1.1 request head, as the loopback test servers read it.
pub struct RequestHead {
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// Parses the bytes up to and including the blank line.
    pub fn parse(head: &[u8]) -> RequestHead {
        let text = String::from_utf8_lossy(head).to_string();
        let mut lines = text.split("\r\n");
        let mut first = lines.next().unwrap_or_default().split_whitespace();
        let method = first.next().unwrap_or_default().to_string();
        let target = first.next().unwrap_or_default().to_string();
        let headers = lines
            .filter(|l| !l.is_empty())
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
            .collect();
        RequestHead {
            method,
            target,
            headers,
        }
    }

    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }
}

/// What `.ci/testenv.sh up` exported.
pub struct Env {
    /// Plain HTTP registry.
    pub registry: String,
    /// Basic-auth registry (plain HTTP).
    pub auth_registry: String,
    pub auth_user: String,
    pub auth_password: String,
    /// TLS registry with a private CA.
    pub tls_registry: String,
    pub ca: PathBuf,
    /// Token-auth registry (plain HTTP; tokens from .ci/token-server.py for
    /// the auth_user / auth_password account).
    pub token_registry: String,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the registries and fixtures of `.ci/testenv.sh up DIR` \
             (run ./.ci/run, or `bash .ci/testenv.sh up /tmp/kiln-testenv && . /tmp/kiln-testenv/env` before cargo test)"
        )
    })
}

pub fn env() -> Env {
    Env {
        registry: var("KILN_TEST_REGISTRY"),
        auth_registry: var("KILN_TEST_AUTH_REGISTRY"),
        auth_user: var("KILN_TEST_AUTH_USER"),
        auth_password: var("KILN_TEST_AUTH_PASSWORD"),
        tls_registry: var("KILN_TEST_TLS_REGISTRY"),
        ca: PathBuf::from(var("KILN_TEST_CA")),
        token_registry: var("KILN_TEST_TOKEN_REGISTRY"),
    }
}

/// A fresh store plus an empty docker config dir (so the developer's own
/// credentials never leak into a test).
pub struct Kiln {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Run {
        assert_eq!(
            self.status, 0,
            "kiln failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    /// The error output is one `error:` line (plus optional `caused by:`
    /// and `hint:` lines, the `resolving` status of a pull, and the stage
    /// a conversion reached: `layers: reading …`, `ext4: writing …`).
    pub fn assert_one_error(&self) {
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{}", self.stderr);
        assert!(
            self.stderr.lines().filter(|l| !l.is_empty()).all(|l| [
                "error:",
                "caused by:",
                "hint:",
                "resolving "
            ]
            .iter()
            .any(|p| l.starts_with(p))
                || conversion_stage(l)),
            "{}",
            self.stderr
        );
    }

    pub fn fails(self, code: i32) -> Run {
        assert_eq!(
            self.status, code,
            "expected exit {code}:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

impl Kiln {
    pub fn new() -> Kiln {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("docker")).unwrap();
        Kiln { dir }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// kiln's config file (sources); absent until a test or `kiln sources` writes it.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    pub fn docker_config(&self) -> PathBuf {
        self.dir.path().join("docker")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
        command.arg("--root").arg(self.root()).args(args);
        command
            .env("DOCKER_CONFIG", self.docker_config())
            .env_remove("KILN_ROOT")
            .env("KILN_CONFIG", self.config_path())
            .env("NO_COLOR", "1");
        command.stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let output: Output = self.command(args).output().unwrap();
        Run {
            status: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).to_string(),
        }
    }

    /// Writes docker's config.json with basic credentials for `host`.
    pub fn docker_login(&self, host: &str, user: &str, password: &str) {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let config = serde_json::json!({ "auths": { host: { "auth": auth } } });
        std::fs::write(self.docker_config().join("config.json"), config.to_string()).unwrap();
    }

    /// Committed blob files in the store.
    pub fn blob_files(&self) -> Vec<PathBuf> {
        let dir = self.root().join("content-v1/blobs/sha256");
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        files.sort();
        files
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.root()
            .join("content-v1/blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// Flips one byte of a committed blob, keeping its size (damage only
    /// hashing can tell).
    pub fn damage_blob(&self, digest: &str) {
        let path = self.blob_path(digest);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 0xff;
        let mut permissions = std::fs::metadata(&path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        permissions.set_readonly(false);
        std::fs::set_permissions(&path, permissions).unwrap();
        std::fs::write(&path, &bytes).unwrap();
    }

    /// Whether no conversion scratch directory (`ingest/.work-*`) is left.
    pub fn no_scratch(&self) -> bool {
        std::fs::read_dir(self.root().join("content-v1/ingest"))
            .unwrap()
            .all(|e| {
                !e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".work-")
            })
    }

    pub fn partial_files(&self) -> Vec<(PathBuf, u64)> {
        let dir = self.root().join("content-v1/ingest");
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
                    .map(|e| (e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `skopeo inspect` of an image on a plain-HTTP registry: the peer's view.
pub fn skopeo_inspect(reference: &str, raw: bool) -> serde_json::Value {
    let mut command = Command::new("skopeo");
    command.args(["inspect", "--tls-verify=false"]);
    if raw {
        command.arg("--raw");
    }
    let output = command
        .arg(format!("docker://{reference}"))
        .output()
        .expect("skopeo is installed (.ci/run installs it)");
    assert!(
        output.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The manifest digest the registry serves for a reference (sha256 of the raw bytes).
pub fn registry_digest(reference: &str) -> String {
    let output = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            "--raw",
            &format!("docker://{reference}"),
        ])
        .output()
        .expect("skopeo is installed");
    assert!(output.status.success());
    let digest = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&output.stdout)?;
            child.wait_with_output()
        });
    let text = String::from_utf8(digest.unwrap().stdout).unwrap();
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

/// `skopeo copy` between two plain-HTTP registry references.
pub fn skopeo_copy(from: &str, to: &str) {
    let status = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{from}"),
            &format!("docker://{to}"),
        ])
        .status()
        .expect("skopeo is installed");
    assert!(status.success(), "skopeo copy {from} {to}");
}

pub fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    for _ in 0..600 {
        if condition() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

pub fn exists(path: &Path) -> bool {
    path.exists()
}

/// Loop-mounts a filesystem image (`options` e.g. `loop,ro`).
pub fn mount(image: &Path, target: &Path, options: &str, filesystem: &str) {
    std::fs::create_dir_all(target).unwrap();
    let output = Command::new("mount")
        .args(["-o", options, "-t", filesystem])
        .arg(image)
        .arg(target)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "mount {}: {}",
        image.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Unmounts what [`mount`] mounted.
pub fn umount(target: &Path) {
    assert!(
        Command::new("umount")
            .arg(target)
            .status()
            .unwrap()
            .success(),
        "umount {}",
        target.display()
    );
}

/// kiln run as the ordinary user `nobody`, with its own store in a
/// world-writable directory (and its own copy of the binary, which nobody
/// can reach wherever the checkout lives).
pub struct Nobody {
    /// The shared directory (`0777`): the store and files nobody writes.
    pub dir: tempfile::TempDir,
    binary: PathBuf,
}

impl Nobody {
    pub fn new() -> Nobody {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let binary = dir.path().join("kiln");
        std::fs::copy(env!("CARGO_BIN_EXE_kiln"), &binary).unwrap();
        Nobody { dir, binary }
    }

    /// Runs kiln as nobody; asserts success and returns stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let root = self.dir.path().join("nobody-root");
        let output = Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .arg(&self.binary)
            .arg("--root")
            .arg(&root)
            .args(args)
            .env("DOCKER_CONFIG", self.dir.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "as nobody {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

/// A line of a conversion's progress without a terminal (`layers:
/// reading 1.1MB`, `ext4: writing 2.1GB`, `layer 3: writing 5MB`).
fn conversion_stage(line: &str) -> bool {
    line.split_once(": ").is_some_and(|(stage, doing)| {
        let known = ["layers", "ext4", "erofs", "initramfs"].contains(&stage)
            || stage
                .strip_prefix("layer ")
                .is_some_and(|n| n.parse::<usize>().is_ok());
        known && (doing.starts_with("reading") || doing.starts_with("writing"))
    })
}
