//! Release bundles (`github-release`): kernel + rootfs + firecracker from
//! GitHub releases, against `FakeGitHub`.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use super::support::Kiln;
use super::support::bundles::{
    ARCH, FIRECRACKER_VERSION, SBX_REPO, SbxBundle, SbxManifest, VMM_REPO, ext4_cat, other_arch,
};
use super::support::fakes::{ALWAYS, AssetDigest, FakeGitHub, Fault, sha256_hex};
use super::{
    assert_file, assert_nothing_installed, avail, field_set, images, inspect, path_of, read,
    run_env,
};

/// A fake GitHub publishing release `tags` of the sbx repository (one
/// bundle for the host architecture) and the firecracker release.
struct Sbx {
    github: FakeGitHub,
    bundle: SbxBundle,
}

impl Sbx {
    fn publish(tags: &[&str]) -> Sbx {
        Sbx::publish_with(SbxBundle::build(ARCH), tags, |_| {})
    }

    /// `edit` changes each tag's manifest before it is published.
    fn publish_with(bundle: SbxBundle, tags: &[&str], edit: impl Fn(&mut SbxManifest)) -> Sbx {
        let github = FakeGitHub::start();
        bundle.publish_firecracker(&github);
        for tag in tags {
            let mut manifest = bundle.manifest(tag);
            edit(&mut manifest);
            bundle.publish(&github, tag, &manifest);
        }
        Sbx { github, bundle }
    }

    /// Storage path of an asset of the sbx repository.
    fn asset_path(&self, tag: &str, name: &str) -> String {
        format!("/{SBX_REPO}/releases/download/{tag}/{name}")
    }
}

/// Points the `sbx` source at the fake (the built-in one is removed first).
fn use_sbx(kiln: &Kiln, github: &FakeGitHub, extra: &[&str]) {
    kiln.run(&["sources", "rm", "sbx"]).ok();
    let url = github.url();
    let mut args = vec![
        "sources",
        "add",
        "sbx",
        &url,
        "--type",
        "github-release",
        "--repo",
        SBX_REPO,
    ];
    args.extend_from_slice(extra);
    kiln.run(&args).ok();
}

#[test]
fn avail_pages_through_every_release_and_marks_what_is_installed() {
    let tags: Vec<String> = (1..=105).map(|i| format!("v0.{i}.0")).collect();
    let tag_refs: Vec<&str> = tags.iter().map(String::as_str).collect();
    let sbx = Sbx::publish(&tag_refs);
    let kiln = Kiln::new();
    use_sbx(&kiln, &sbx.github, &[]);
    kiln.run(&["pull", "-q", "sbx://v0.1.0"]).ok();

    // A release is listed by its tag, under `version` (SOURCE://TAG).
    let listed = avail(&kiln, "sbx", &[]);
    let tags_listed = field_set(&listed, "version");
    assert_eq!(
        listed.len(),
        tags_listed.len(),
        "each release once: {listed:?}"
    );
    assert_eq!(
        tags_listed,
        tags.iter().cloned().collect::<BTreeSet<_>>(),
        "every release, across pages"
    );
    for entry in &listed {
        assert_eq!(
            entry["installed"],
            entry["version"] == "v0.1.0",
            "only the pulled release is installed: {entry}"
        );
    }
    let list_path = format!("/repos/{SBX_REPO}/releases");
    let pages: Vec<String> = sbx
        .github
        .api_requests()
        .iter()
        .filter(|r| r.path == list_path)
        .map(|r| r.param("page").unwrap_or_else(|| "1".into()))
        .collect();
    assert!(
        pages.iter().any(|p| p == "2"),
        "105 releases take a second page (GitHub serves at most 100): {pages:?}"
    );
}

#[test]
fn pull_installs_a_release_bundle_whose_files_are_what_was_published() {
    let sbx = Sbx::publish(&["v0.1.0"]);
    let bundle = &sbx.bundle;
    let kiln = Kiln::new();
    use_sbx(&kiln, &sbx.github, &[]);
    kiln.run(&["pull", "sbx://v0.1.0"]).ok();

    let image = inspect(&kiln, "sbx://v0.1.0");
    assert_eq!(image["kind"], "release-bundle", "{image}");
    let source = &image["source"];
    assert_file(&source["paths"]["kernel"], &bundle.kernel, "kernel");
    assert_file(&source["paths"]["rootfs"], &bundle.rootfs, "rootfs");
    assert_file(
        &source["paths"]["vmm"],
        &bundle.firecracker.binary,
        "the firecracker binary, extracted from the release archive",
    );
    let vmm_mode = std::fs::metadata(path_of(&source["paths"]["vmm"]))
        .unwrap()
        .permissions()
        .mode();
    assert_ne!(
        vmm_mode & 0o100,
        0,
        "the VMM binary can be run: {vmm_mode:o}"
    );
    assert_eq!(source["manifest"], bundle.manifest("v0.1.0").to_json());
    assert_eq!(source["name"], "v0.1.0", "{source}");
    assert_eq!(source["version"], "v0.1.0", "{source}");
    assert_eq!(source["arch"], ARCH, "{source}");
    let files = source["files"]
        .as_array()
        .unwrap_or_else(|| panic!("files: {source}"));
    let roles: BTreeSet<&str> = files.iter().map(|f| f["role"].as_str().unwrap()).collect();
    for role in ["kernel", "rootfs", "vmm"] {
        assert!(roles.contains(role), "{role} in {roles:?}");
    }
    for file in files {
        let bytes = read(&file["path"]);
        assert_eq!(file["size"], bytes.len(), "{file}");
        assert_eq!(
            file["digest"],
            format!("sha256:{}", sha256_hex(&bytes)),
            "{file}"
        );
    }

    let listed = images(&kiln);
    let entry = listed
        .iter()
        .find(|i| i["reference"] == "sbx://v0.1.0")
        .unwrap_or_else(|| panic!("sbx://v0.1.0 in images: {listed:?}"));
    assert_eq!(entry["kind"], "release-bundle");

    let before = sbx.github.storage_requests().len();
    kiln.run(&["pull", "sbx://v0.1.0"]).ok();
    assert_eq!(
        sbx.github.storage_requests().len(),
        before,
        "an installed bundle downloads nothing"
    );

    let kernel_name = bundle.kernel_name();
    let rootfs_name = bundle.rootfs_name();
    let archive_name = bundle.firecracker.archive_name.clone();
    let counts = |github: &FakeGitHub| {
        [&kernel_name, &rootfs_name, &archive_name].map(|name| github.downloads(name))
    };
    let before = counts(&sbx.github);
    kiln.run(&["pull", "--force", "sbx://v0.1.0"]).ok();
    let after = counts(&sbx.github);
    for (i, name) in [&kernel_name, &rootfs_name, &archive_name]
        .iter()
        .enumerate()
    {
        assert!(
            after[i] > before[i],
            "--force downloads {name} again ({} then {})",
            before[i],
            after[i]
        );
    }
    let bundles: Vec<Value> = images(&kiln)
        .into_iter()
        .filter(|i| i["kind"] == "release-bundle")
        .collect();
    assert_eq!(
        bundles.len(),
        1,
        "one image, replaced in place: {bundles:?}"
    );
    assert_file(
        &inspect(&kiln, "sbx://v0.1.0")["source"]["paths"]["rootfs"],
        &bundle.rootfs,
        "rootfs",
    );
    kiln.run(&["fsck"]).ok();
}

#[test]
fn a_manifest_without_schema_version_is_read_as_version_1() {
    let sbx = Sbx::publish_with(SbxBundle::build(ARCH), &["v0.1.0"], |m| {
        m.schema_version = None
    });
    let kiln = Kiln::new();
    use_sbx(&kiln, &sbx.github, &[]);
    kiln.run(&["pull", "sbx://v0.1.0"]).ok();
    let image = inspect(&kiln, "sbx://v0.1.0");
    assert_eq!(image["kind"], "release-bundle");
    assert_file(
        &image["source"]["paths"]["rootfs"],
        &sbx.bundle.rootfs,
        "rootfs",
    );
}

#[test]
fn a_manifest_of_another_schema_version_is_refused_with_a_hint_to_upgrade() {
    let sbx = Sbx::publish_with(SbxBundle::build(ARCH), &["v0.1.0"], |m| {
        m.schema_version = Some(json!(2))
    });
    let kiln = Kiln::new();
    use_sbx(&kiln, &sbx.github, &[]);
    let run = kiln.run(&["pull", "sbx://v0.1.0"]).fails(1);
    for expected in ["schema_version 2", "supports 1", "upgrade", "sbx://v0.1.0"] {
        assert!(run.stderr.contains(expected), "{expected}: {}", run.stderr);
    }
    assert_eq!(
        sbx.github.downloads(&sbx.bundle.rootfs_name()),
        0,
        "refused before downloading the rootfs"
    );
    assert_nothing_installed(&kiln, "sbx");
}

#[test]
fn a_release_without_the_host_architecture_names_the_ones_it_has() {
    let sbx = Sbx::publish_with(SbxBundle::build(other_arch()), &["v0.1.0"], |_| {});
    let kiln = Kiln::new();
    use_sbx(&kiln, &sbx.github, &[]);
    let run = kiln.run(&["pull", "sbx://v0.1.0"]).fails(1);
    assert!(
        run.stderr.contains(ARCH) && run.stderr.contains(other_arch()),
        "names the wanted and the published architectures: {}",
        run.stderr
    );
    assert_eq!(sbx.github.downloads(&sbx.bundle.rootfs_name()), 0);
    assert_nothing_installed(&kiln, "sbx");
}

#[test]
fn sizes_must_equal_the_manifest_and_the_asset() {
    let bundle = SbxBundle::build(ARCH);
    type Edit = fn(&mut SbxManifest);
    // (what, manifest edit, bytes added to the rootfs asset's declared size)
    let cases: [(&str, Edit, u64); 3] = [
        (
            "manifest rootfs size_bytes",
            |m| m.artifacts[0].rootfs_size += 4096,
            0,
        ),
        (
            "manifest kernel size_bytes",
            |m| m.artifacts[0].kernel_size -= 1,
            0,
        ),
        ("asset size", |_| {}, 4096),
    ];
    for (what, edit, extra) in cases {
        let sbx = Sbx::publish_with(bundle.clone(), &["v0.1.0"], edit);
        if extra > 0 {
            let size = bundle.rootfs.len() as u64 + extra;
            sbx.github
                .set_asset_size(SBX_REPO, "v0.1.0", &bundle.rootfs_name(), size);
        }
        let kiln = Kiln::new();
        use_sbx(&kiln, &sbx.github, &[]);
        let run = kiln.run(&["pull", "sbx://v0.1.0"]).fails(1);
        assert!(run.stderr.contains("size"), "{what}: {}", run.stderr);
        assert_nothing_installed(&kiln, "sbx");
    }
}

#[test]
fn a_checksum_mismatch_wherever_it_is_published_is_refused() {
    let bundle = SbxBundle::build(ARCH);
    let wrong = "0".repeat(64);
    let rootfs = bundle.rootfs_name();
    let kernel = bundle.kernel_name();
    let cases: Vec<(&str, Box<dyn Fn(&Sbx) + '_>)> = vec![
        (
            "asset digest",
            Box::new(|sbx: &Sbx| {
                sbx.github.set_asset_digest(
                    SBX_REPO,
                    "v0.1.0",
                    &rootfs,
                    AssetDigest::Fixed(format!("sha256:{wrong}")),
                )
            }),
        ),
        (
            "FILE.sha256 asset",
            Box::new(|sbx: &Sbx| {
                sbx.github
                    .set_release_digests(SBX_REPO, "v0.1.0", AssetDigest::Omitted);
                sbx.github.upload(
                    SBX_REPO,
                    "v0.1.0",
                    &format!("{rootfs}.sha256"),
                    format!("{wrong}  {rootfs}\n"),
                );
            }),
        ),
        (
            "SHA256SUMS asset",
            Box::new(|sbx: &Sbx| {
                sbx.github
                    .set_release_digests(SBX_REPO, "v0.1.0", AssetDigest::Null);
                let sums = format!(
                    "{wrong}  {kernel}\n{}  {rootfs}\n",
                    sha256_hex(&sbx.bundle.rootfs)
                );
                sbx.github.upload(SBX_REPO, "v0.1.0", "SHA256SUMS", sums);
            }),
        ),
        (
            "firecracker .sha256.txt",
            Box::new(|sbx: &Sbx| {
                let release = &sbx.bundle.firecracker;
                sbx.github.set_asset_data(
                    VMM_REPO,
                    &release.version,
                    &release.checksum_name,
                    format!("{wrong}  {}\n", release.archive_name),
                );
            }),
        ),
    ];
    for (what, break_it) in &cases {
        let sbx = Sbx::publish_with(bundle.clone(), &["v0.1.0"], |_| {});
        break_it(&sbx);
        let kiln = Kiln::new();
        use_sbx(&kiln, &sbx.github, &[]);
        let run = kiln.run(&["pull", "sbx://v0.1.0"]).fails(1);
        assert!(
            run.stderr.to_lowercase().contains("sha256"),
            "{what}: {}",
            run.stderr
        );
        assert_nothing_installed(&kiln, "sbx");
    }
}

#[test]
fn checksums_published_as_files_are_accepted() {
    let sbx = Sbx::publish(&["v0.1.0"]);
    let bundle = &sbx.bundle;
    sbx.github
        .set_release_digests(SBX_REPO, "v0.1.0", AssetDigest::Omitted);
    sbx.github
        .set_release_digests(VMM_REPO, FIRECRACKER_VERSION, AssetDigest::Null);
    sbx.github.upload(
        SBX_REPO,
        "v0.1.0",
        &format!("{}.sha256.txt", bundle.kernel_name()),
        format!("{}  {}\n", sha256_hex(&bundle.kernel), bundle.kernel_name()),
    );
    sbx.github.upload(
        SBX_REPO,
        "v0.1.0",
        "checksums.txt",
        format!(
            "{}  {}\n{}  {}\n",
            sha256_hex(&bundle.kernel),
            bundle.kernel_name(),
            sha256_hex(&bundle.rootfs),
            bundle.rootfs_name()
        ),
    );
    let kiln = Kiln::new();
    use_sbx(&kiln, &sbx.github, &[]);
    kiln.run(&["pull", "sbx://v0.1.0"]).ok();
    let image = inspect(&kiln, "sbx://v0.1.0");
    assert_file(
        &image["source"]["paths"]["kernel"],
        &bundle.kernel,
        "kernel",
    );
    assert_file(
        &image["source"]["paths"]["rootfs"],
        &bundle.rootfs,
        "rootfs",
    );
}

#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let sbx = Sbx::publish(&["v0.1.0"]);
    let rootfs_path = sbx.asset_path("v0.1.0", &sbx.bundle.rootfs_name());
    sbx.github
        .log
        .add_fault(&rootfs_path, Fault::Truncate(3 << 20), 1);
    let kiln = Kiln::new();
    use_sbx(&kiln, &sbx.github, &[]);
    kiln.run(&["pull", "sbx://v0.1.0"]).ok();
    let ranges: Vec<String> = sbx
        .github
        .log
        .requests_to(&rootfs_path)
        .iter()
        .filter_map(|r| r.range.clone())
        .collect();
    let resumed_at: Vec<u64> = ranges
        .iter()
        .filter_map(|r| r.strip_prefix("bytes=")?.split('-').next()?.parse().ok())
        .collect();
    assert!(
        resumed_at.iter().any(|start| *start > 0),
        "the second request asks for the rest with Range: {ranges:?}"
    );
    let image = inspect(&kiln, "sbx://v0.1.0");
    assert_file(
        &image["source"]["paths"]["rootfs"],
        &sbx.bundle.rootfs,
        "rootfs",
    );
    kiln.run(&["fsck"]).ok();
}

#[test]
fn a_download_that_always_breaks_fails_and_installs_nothing() {
    let sbx = Sbx::publish(&["v0.1.0"]);
    let rootfs_path = sbx.asset_path("v0.1.0", &sbx.bundle.rootfs_name());
    sbx.github
        .log
        // No body byte ever arrives: no resume can make progress.
        .add_fault(&rootfs_path, Fault::Truncate(0), ALWAYS);
    let kiln = Kiln::new();
    use_sbx(&kiln, &sbx.github, &[]);
    kiln.run(&["pull", "sbx://v0.1.0"]).fails(1);
    assert_nothing_installed(&kiln, "sbx");
}

#[test]
fn a_missing_release_is_not_found() {
    let sbx = Sbx::publish(&["v0.1.0"]);
    let kiln = Kiln::new();
    use_sbx(&kiln, &sbx.github, &[]);
    let run = kiln.run(&["pull", "sbx://v9.9.9"]).fails(1);
    assert!(
        run.stderr.to_lowercase().contains("not found") && run.stderr.contains("v9.9.9"),
        "{}",
        run.stderr
    );
    assert_nothing_installed(&kiln, "sbx");
}

#[test]
fn a_failed_force_pull_keeps_the_good_copy_in_place() {
    let sbx = Sbx::publish(&["v0.1.0"]);
    let kiln = Kiln::new();
    use_sbx(&kiln, &sbx.github, &[]);
    kiln.run(&["pull", "sbx://v0.1.0"]).ok();
    let before = inspect(&kiln, "sbx://v0.1.0");

    let rootfs_path = sbx.asset_path("v0.1.0", &sbx.bundle.rootfs_name());
    sbx.github
        .log
        .add_fault(&rootfs_path, Fault::Corrupt, ALWAYS);
    let run = kiln.run(&["pull", "--force", "sbx://v0.1.0"]).fails(1);
    assert!(
        run.stderr.to_lowercase().contains("sha256"),
        "{}",
        run.stderr
    );
    assert!(
        sbx.github.downloads(&sbx.bundle.rootfs_name()) >= 2,
        "the forced pull did download again"
    );

    let after = inspect(&kiln, "sbx://v0.1.0");
    assert_eq!(after["manifest_digest"], before["manifest_digest"]);
    for role in ["kernel", "rootfs", "vmm"] {
        assert_eq!(
            after["source"]["paths"][role], before["source"]["paths"][role],
            "{role} stays where it was"
        );
    }
    let source = &after["source"];
    assert_file(&source["paths"]["kernel"], &sbx.bundle.kernel, "kernel");
    assert_file(&source["paths"]["rootfs"], &sbx.bundle.rootfs, "rootfs");
    assert_file(
        &source["paths"]["vmm"],
        &sbx.bundle.firecracker.binary,
        "vmm",
    );
    kiln.run(&["fsck"]).ok();
    kiln.run(&["disk", "create", "d1", "--image", "sbx://v0.1.0"])
        .ok();
}

#[test]
fn a_token_goes_to_the_api_host_and_never_to_the_storage_host() {
    const TOKEN: &str = "s3cr3t-token";
    let sbx = Sbx::publish(&["v0.1.0"]);
    sbx.github.require_token(TOKEN);
    let kiln = Kiln::new();
    use_sbx(&kiln, &sbx.github, &["--token-env", "KILN_TEST_GH_TOKEN"]);
    let env = [("KILN_TEST_GH_TOKEN", TOKEN)];
    let runs = [
        run_env(&kiln, &["pull", "sbx://v0.1.0"], &env),
        run_env(&kiln, &["avail", "sbx", "--format", "json"], &env),
        run_env(&kiln, &["inspect", "sbx://v0.1.0"], &env),
        run_env(&kiln, &["sources", "ls", "--format", "json"], &env),
    ];

    let api = sbx.github.api_requests();
    assert!(!api.is_empty());
    for request in &api {
        assert_eq!(
            request.authorization.as_deref(),
            Some("Bearer s3cr3t-token"),
            "{} {}",
            request.method,
            request.path
        );
    }
    let storage = sbx.github.storage_requests();
    assert!(!storage.is_empty(), "downloads went to the storage host");
    for request in &storage {
        assert_eq!(
            request.authorization, None,
            "no credentials after the redirect: {} {}",
            request.method, request.path
        );
    }
    for run in &runs {
        assert_eq!(
            run.status, 0,
            "stdout: {}\nstderr: {}",
            run.stdout, run.stderr
        );
        assert!(
            !run.stdout.contains(TOKEN) && !run.stderr.contains(TOKEN),
            "the token is never printed:\n{}\n{}",
            run.stdout,
            run.stderr
        );
    }
    let config = std::fs::read_to_string(kiln.config_path()).unwrap();
    assert!(
        !config.contains(TOKEN),
        "the config names the variable only"
    );
    assert!(config.contains("KILN_TEST_GH_TOKEN"), "{config}");
}

/// A raw copy of a disk (`qemu-img convert` of a qcow2 overlay).
fn raw_disk(kiln: &Kiln, disk: &Value) -> PathBuf {
    let path = path_of(&disk["path"]);
    match disk["format"].as_str() {
        Some("raw") => path,
        Some("qcow2") => {
            let raw = kiln
                .dir
                .path()
                .join(format!("{}.raw", disk["name"].as_str().unwrap_or("disk")));
            let output = Command::new("qemu-img")
                .args(["convert", "-O", "raw"])
                .arg(&path)
                .arg(&raw)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "qemu-img convert: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            raw
        }
        other => panic!("unknown disk format {other:?}: {disk}"),
    }
}

#[test]
fn a_sandbox_disk_from_a_bundle_holds_its_rootfs_with_the_kernel_beside_it() {
    let sbx = Sbx::publish(&["v0.1.0"]);
    let kiln = Kiln::new();
    use_sbx(&kiln, &sbx.github, &[]);
    kiln.run(&["pull", "-q", "sbx://v0.1.0"]).ok();
    let image = inspect(&kiln, "sbx://v0.1.0");
    let rootfs = image["source"]["paths"]["rootfs"].clone();

    kiln.run(&["disk", "create", "sb1", "--image", "sbx://v0.1.0"])
        .ok();
    let disks = kiln.run(&["disk", "ls", "--format", "json"]).ok().json();
    let sb1 = disks
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "sb1")
        .unwrap_or_else(|| panic!("{disks}"))
        .clone();
    assert_eq!(
        sb1["kernel"], image["source"]["paths"]["kernel"],
        "the kernel is reported beside the disk: {sb1}"
    );
    let path = kiln.run(&["disk", "path", "sb1"]).ok().stdout;
    assert_eq!(Path::new(path.trim()), path_of(&sb1["path"]));
    let raw = raw_disk(&kiln, &sb1);
    let check = Command::new("e2fsck")
        .arg("-fn")
        .arg(&raw)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "the disk is a clean ext4: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    assert_eq!(ext4_cat(&raw, "/bin/marker"), "sbx bundle rootfs\n");

    // A disk is the sandbox's own copy: changing it leaves the bundle as published.
    let sb2 = kiln
        .run(&[
            "disk",
            "create",
            "sb2",
            "--image",
            "sbx://v0.1.0",
            "--format",
            "raw",
            "--json",
        ])
        .ok()
        .json();
    let write = Command::new("debugfs")
        .args(["-w", "-R", "rm /bin/marker"])
        .arg(path_of(&sb2["path"]))
        .output()
        .unwrap();
    assert!(write.status.success());
    assert_eq!(
        ext4_cat(&path_of(&sb2["path"]), "/bin/marker"),
        "",
        "the marker is gone from sb2"
    );
    assert_file(&rootfs, &sbx.bundle.rootfs, "the bundle rootfs");

    // A bundle's root filesystem has no layers: a snapshot of its disk is
    // an OCI image whose one layer is the whole disk.
    let snapshot = kiln
        .run(&["snapshot", "sb1", "localhost/from-bundle:1", "--json"])
        .ok()
        .json();
    assert_eq!(snapshot["removed"], 0, "{snapshot}");
    let made = inspect(&kiln, "localhost/from-bundle:1");
    assert_eq!(made["kind"], "snapshot", "{made}");
    assert_eq!(made["layers"].as_array().unwrap().len(), 1, "{made}");
    let from_snapshot = kiln
        .run(&[
            "disk",
            "create",
            "sb3",
            "--image",
            "localhost/from-bundle:1",
            "--format",
            "raw",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(
        ext4_cat(&path_of(&from_snapshot["path"]), "/bin/marker"),
        "sbx bundle rootfs\n"
    );
    kiln.run(&["disk", "rm", "sb3"]).ok();
    kiln.run(&["rmi", "localhost/from-bundle:1"]).ok();
    kiln.run(&["fsck"]).ok();
    kiln.run(&["disk", "rm", "sb2"]).ok();

    let refused = kiln.run(&["rmi", "sbx://v0.1.0"]).fails(1);
    assert!(refused.stderr.contains("sb1"), "{}", refused.stderr);
    kiln.run(&["disk", "rm", "sb1"]).ok();
    kiln.run(&["rmi", "sbx://v0.1.0"]).ok();
    kiln.run(&["prune", "--yes"]).ok();
    kiln.run(&["fsck"]).ok();
    assert!(!path_of(&rootfs).exists(), "the bundle's files are gone");
    assert_nothing_installed(&kiln, "sbx");
}
