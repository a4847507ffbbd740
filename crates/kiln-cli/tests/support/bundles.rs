//! Fixtures for the non-OCI sources: kernel-like files, real ext4 root
//! filesystems (`mke2fs -d`), firecracker release archives laid out as
//! upstream publishes them, sbx `manifest.json` files, IMGAPI images, and
//! helpers that publish a whole release bundle on a [`FakeGitHub`].

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use bytes::Bytes;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha512};

use super::fakes::{FakeGitHub, ImgapiImage, sha256_hex, timestamp};

/// The host architecture as sbx and catalogs spell it (`x86_64`, `aarch64`).
pub const ARCH: &str = std::env::consts::ARCH;

/// The architecture this host is not.
pub fn other_arch() -> &'static str {
    if ARCH == "x86_64" {
        "aarch64"
    } else {
        "x86_64"
    }
}

pub const SBX_REPO: &str = "slok/sbx-images";
pub const VMM_REPO: &str = "firecracker-microvm/firecracker";
pub const FIRECRACKER_VERSION: &str = "v1.10.1";

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn pseudo_random(seed: u64, length: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(length + 8);
    while out.len() < length {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(length);
    out
}

/// A "kernel": 64 KiB starting with the ELF magic, the rest pseudo-random.
pub fn kernel(seed: u64) -> Vec<u8> {
    let mut bytes = pseudo_random(seed, 64 * 1024);
    bytes[..4].copy_from_slice(b"\x7fELF");
    bytes
}

/// A real 8 MiB ext4 image holding `/etc/hostname` and `/bin/marker`
/// (whose text is `marker`).
pub fn ext4_rootfs(hostname: &str, marker: &str) -> Vec<u8> {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::write(tree.join("etc/hostname"), format!("{hostname}\n")).unwrap();
    std::fs::write(tree.join("bin/marker"), marker).unwrap();
    set_mode(&tree.join("bin/marker"), 0o755);
    let image = work.path().join("rootfs.ext4");
    let output = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&tree)
        .arg(&image)
        .arg("8M")
        .output()
        .expect("mke2fs is installed (e2fsprogs)");
    assert!(
        output.status.success(),
        "mke2fs: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read(image).unwrap()
}

/// `debugfs -R "cat PATH"` of an ext4 image: reads a file without mounting.
pub fn ext4_cat(image: &Path, path: &str) -> String {
    let output = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(image)
        .output()
        .expect("debugfs is installed (e2fsprogs)");
    assert!(output.status.success(), "debugfs cat {path}");
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn sha512_hex(data: &[u8]) -> String {
    hex::encode(Sha512::digest(data))
}

/// SHA-1 through coreutils' `sha1sum`.
pub fn sha1_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha1sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha1sum is installed (coreutils)");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// A firecracker release archive as upstream publishes it.
#[derive(Debug, Clone)]
pub struct FirecrackerRelease {
    pub version: String,
    pub arch: String,
    /// `firecracker-{V}-{ARCH}.tgz`
    pub archive_name: String,
    pub archive: Bytes,
    /// `firecracker-{V}-{ARCH}.tgz.sha256.txt`
    pub checksum_name: String,
    /// `HEX  firecracker-{V}-{ARCH}.tgz\n`
    pub checksum_file: String,
    /// What `release-{V}-{ARCH}/firecracker-{V}-{ARCH}` holds.
    pub binary: Vec<u8>,
}

/// `tar czf firecracker-{V}-{ARCH}.tgz release-{V}-{ARCH}/…` with the
/// firecracker binary among look-alikes (`.debug`, jailer, …) listed first.
pub fn firecracker_release(version: &str, arch: &str) -> FirecrackerRelease {
    let work = tempfile::tempdir().unwrap();
    let dir = format!("release-{version}-{arch}");
    std::fs::create_dir_all(work.path().join(&dir)).unwrap();
    let binary = format!("#!/bin/sh\n# firecracker {version} {arch} (kiln test fixture)\necho \"Firecracker {version}\"\n")
        .into_bytes();
    let files: Vec<(String, Vec<u8>, u32)> = vec![
        (
            format!("firecracker-{version}-{arch}.debug"),
            pseudo_random(11, 4096),
            0o644,
        ),
        (
            format!("jailer-{version}-{arch}"),
            b"#!/bin/sh\necho jailer\n".to_vec(),
            0o755,
        ),
        (
            format!("jailer-{version}-{arch}.debug"),
            pseudo_random(12, 4096),
            0o644,
        ),
        (
            format!("seccomp-filter-{version}-{arch}.json"),
            b"{}\n".to_vec(),
            0o644,
        ),
        ("LICENSE".into(), b"Apache-2.0\n".to_vec(), 0o644),
        (
            format!("firecracker-{version}-{arch}"),
            binary.clone(),
            0o755,
        ),
    ];
    let mut sums = String::new();
    for (name, data, mode) in &files {
        let path = work.path().join(&dir).join(name);
        std::fs::write(&path, data).unwrap();
        set_mode(&path, *mode);
        sums.push_str(&format!("{}  {name}\n", sha256_hex(data)));
    }
    std::fs::write(work.path().join(&dir).join("SHA256SUMS"), sums).unwrap();
    let archive_name = format!("firecracker-{version}-{arch}.tgz");
    let archive_path = work.path().join(&archive_name);
    let mut members: Vec<String> = files
        .iter()
        .map(|(name, _, _)| format!("{dir}/{name}"))
        .collect();
    members.push(format!("{dir}/SHA256SUMS"));
    let output = Command::new("tar")
        .arg("czf")
        .arg(&archive_path)
        .arg("-C")
        .arg(work.path())
        .args(&members)
        .output()
        .expect("tar is installed");
    assert!(
        output.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let archive = std::fs::read(&archive_path).unwrap();
    FirecrackerRelease {
        version: version.to_string(),
        arch: arch.to_string(),
        checksum_name: format!("{archive_name}.sha256.txt"),
        checksum_file: format!("{}  {archive_name}\n", sha256_hex(&archive)),
        archive_name,
        archive: archive.into(),
        binary,
    }
}

/// One architecture's entry of an sbx manifest.
#[derive(Debug, Clone)]
pub struct SbxArtifacts {
    pub arch: String,
    pub kernel_file: String,
    pub kernel_size: u64,
    pub rootfs_file: String,
    pub rootfs_size: u64,
}

/// An sbx `manifest.json`.
#[derive(Debug, Clone)]
pub struct SbxManifest {
    /// `None`: no `schema_version` key.
    pub schema_version: Option<Value>,
    pub version: String,
    pub artifacts: Vec<SbxArtifacts>,
    /// `firecracker.version`; `None`: no `firecracker` section.
    pub firecracker: Option<String>,
}

impl SbxManifest {
    pub fn to_json(&self) -> Value {
        let mut artifacts = serde_json::Map::new();
        for a in &self.artifacts {
            artifacts.insert(
                a.arch.clone(),
                json!({
                    "kernel": {
                        "file": a.kernel_file,
                        "version": "6.1.102",
                        "source": "firecracker-ci",
                        "size_bytes": a.kernel_size
                    },
                    "rootfs": {
                        "file": a.rootfs_file,
                        "distro": "alpine",
                        "distro_version": "3.20",
                        "profile": "minimal",
                        "size_bytes": a.rootfs_size
                    }
                }),
            );
        }
        let mut manifest = json!({
            "version": self.version,
            "artifacts": artifacts,
            "build": { "date": "2026-01-01T00:00:00Z", "commit": "abc123" }
        });
        if let Some(schema_version) = &self.schema_version {
            manifest["schema_version"] = schema_version.clone();
        }
        if let Some(firecracker) = &self.firecracker {
            manifest["firecracker"] = json!({
                "version": firecracker,
                "source": "github.com/firecracker-microvm/firecracker"
            });
        }
        manifest
    }

    pub fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.to_json()).unwrap()
    }
}

/// The files of one architecture of a release bundle.
#[derive(Debug, Clone)]
pub struct SbxBundle {
    pub arch: String,
    pub kernel: Bytes,
    pub rootfs: Bytes,
    pub firecracker: FirecrackerRelease,
}

impl SbxBundle {
    pub fn build(arch: &str) -> SbxBundle {
        SbxBundle {
            arch: arch.to_string(),
            kernel: kernel(1).into(),
            rootfs: ext4_rootfs("sbx", "sbx bundle rootfs\n").into(),
            firecracker: firecracker_release(FIRECRACKER_VERSION, arch),
        }
    }

    pub fn kernel_name(&self) -> String {
        format!("vmlinux-{}", self.arch)
    }

    pub fn rootfs_name(&self) -> String {
        format!("rootfs-{}.ext4", self.arch)
    }

    /// The manifest a release `tag` of this bundle publishes.
    pub fn manifest(&self, tag: &str) -> SbxManifest {
        SbxManifest {
            schema_version: Some(json!(1)),
            version: tag.to_string(),
            artifacts: vec![SbxArtifacts {
                arch: self.arch.clone(),
                kernel_file: self.kernel_name(),
                kernel_size: self.kernel.len() as u64,
                rootfs_file: self.rootfs_name(),
                rootfs_size: self.rootfs.len() as u64,
            }],
            firecracker: Some(self.firecracker.version.clone()),
        }
    }

    /// Publishes release `tag` of [`SBX_REPO`]: `manifest.json`, kernel, rootfs.
    pub fn publish(&self, github: &FakeGitHub, tag: &str, manifest: &SbxManifest) {
        github.create_release(SBX_REPO, tag);
        github.upload(SBX_REPO, tag, "manifest.json", manifest.bytes());
        github.upload(SBX_REPO, tag, &self.kernel_name(), self.kernel.clone());
        github.upload(SBX_REPO, tag, &self.rootfs_name(), self.rootfs.clone());
    }

    /// Publishes the firecracker release of [`VMM_REPO`]: archive and `.sha256.txt`.
    pub fn publish_firecracker(&self, github: &FakeGitHub) {
        let release = &self.firecracker;
        github.create_release(VMM_REPO, &release.version);
        github.upload(
            VMM_REPO,
            &release.version,
            &release.archive_name,
            release.archive.clone(),
        );
        github.upload(
            VMM_REPO,
            &release.version,
            &release.checksum_name,
            release.checksum_file.clone(),
        );
    }
}

/// A UUID for test image `n` (unique per `n`, sorts as `n`).
pub fn test_uuid(n: u64) -> String {
    format!("{n:08x}-0000-4000-8000-{n:012x}")
}

/// An IMGAPI image whose file is `payload` gzipped; the manifest carries the
/// file's size, SHA-1 and SHA-256.
pub fn imgapi_image(n: u64, name: &str, version: &str, payload: &[u8]) -> ImgapiImage {
    let file = gzip(payload);
    let manifest = json!({
        "v": 2,
        "uuid": test_uuid(n),
        "owner": "00000000-0000-0000-0000-000000000000",
        "name": name,
        "version": version,
        "state": "active",
        "disabled": false,
        "public": true,
        "published_at": timestamp(n * 60),
        "type": "zone-dataset",
        "os": "smartos",
        "description": format!("{name} {version} (kiln test image)"),
        "files": [{
            "sha1": sha1_hex(&file),
            "sha256": sha256_hex(&file),
            "size": file.len(),
            "compression": "gzip"
        }]
    });
    ImgapiImage {
        manifest,
        file: file.into(),
    }
}

/// Same file and fields as `template`, another UUID, name, version and date.
pub fn imgapi_copy(template: &ImgapiImage, n: u64, name: &str, version: &str) -> ImgapiImage {
    let mut image = template.clone();
    image.manifest["uuid"] = test_uuid(n).into();
    image.manifest["name"] = name.into();
    image.manifest["version"] = version.into();
    image.manifest["published_at"] = timestamp(n).into();
    image
}

/// `manifest[key] = value` (`Value::Null` removes the key).
pub fn with_field(mut image: ImgapiImage, key: &str, value: Value) -> ImgapiImage {
    let object = image.manifest.as_object_mut().unwrap();
    if value.is_null() {
        object.remove(key);
    } else {
        object.insert(key.to_string(), value);
    }
    image
}

/// `manifest.files[0][key] = value` (`Value::Null` removes the key).
pub fn with_file_field(mut image: ImgapiImage, key: &str, value: Value) -> ImgapiImage {
    let file = image.manifest["files"][0].as_object_mut().unwrap();
    if value.is_null() {
        file.remove(key);
    } else {
        file.insert(key.to_string(), value);
    }
    image
}
