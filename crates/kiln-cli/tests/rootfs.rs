//! `kiln rootfs`: the tree a microVM gets must be the tree `umoci raw unpack`
//! (run as root) makes of the same image, and the same whoever runs kiln.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{Kiln, env};

/// Everything a user of the root filesystem relies on, per path.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    content: Option<String>,
    target: Option<String>,
    rdev: u64,
    mtime: Option<i64>,
}

/// Walks a directory: path → entry, plus hardlink groups (sets of paths).
fn snapshot(root: &Path) -> (BTreeMap<String, Entry>, Vec<Vec<String>>) {
    let mut entries = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for item in std::fs::read_dir(&dir).unwrap() {
            let path = item.unwrap().path();
            let metadata = std::fs::symlink_metadata(&path).unwrap();
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .to_string();
            let file_type = metadata.file_type();
            let kind = if file_type.is_dir() {
                stack.push(path.clone());
                "dir"
            } else if file_type.is_symlink() {
                "symlink"
            } else if file_type.is_file() {
                "file"
            } else if file_type.is_char_device() {
                "char"
            } else if file_type.is_block_device() {
                "block"
            } else {
                "fifo"
            };
            if kind == "file" && metadata.nlink() > 1 {
                inodes
                    .entry(metadata.ino())
                    .or_default()
                    .push(relative.clone());
            }
            entries.insert(
                relative,
                Entry {
                    kind,
                    mode: metadata.mode() & 0o7777,
                    uid: metadata.uid(),
                    gid: metadata.gid(),
                    size: if kind == "dir" { 0 } else { metadata.size() },
                    content: (kind == "file").then(|| sha256(&path)),
                    target: (kind == "symlink").then(|| {
                        std::fs::read_link(&path)
                            .unwrap()
                            .to_string_lossy()
                            .to_string()
                    }),
                    rdev: metadata.rdev(),
                    mtime: (kind == "file").then(|| metadata.mtime()),
                },
            );
        }
    }
    let mut groups: Vec<Vec<String>> = inodes
        .into_values()
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    groups.sort();
    (entries, groups)
}

/// Every xattr under `root` (symlinks not followed): path → name → hex value.
fn xattrs(root: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let output = Command::new("getfattr")
        .args([
            "-R",
            "-P",
            "-h",
            "-d",
            "-m",
            "-",
            "-e",
            "hex",
            "--absolute-names",
        ])
        .arg(root)
        .output()
        .expect("getfattr is installed (package attr)");
    assert!(output.status.success(), "getfattr {}", root.display());
    let mut all = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        if let Some(path) = line.strip_prefix("# file: ") {
            let relative = Path::new(path)
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .to_string();
            current = Some(relative);
        } else if let Some((name, value)) = line.split_once('=')
            && let Some(path) = &current
        {
            all.entry(path.clone())
                .or_insert_with(BTreeMap::new)
                .insert(name.to_string(), value.to_string());
        }
    }
    all
}

fn sha256(path: &Path) -> String {
    let output = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn umoci_unpack(layout_tag: &str, target: &Path) {
    let status = Command::new("umoci")
        .args(["raw", "unpack", "--image", layout_tag])
        .arg(target)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "umoci raw unpack {layout_tag}: {}",
        String::from_utf8_lossy(&status.stderr)
    );
}

fn cpio_unpack(initramfs: &Path, target: &Path) {
    std::fs::create_dir_all(target).unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zcat '{}' | cpio -idm --quiet --no-absolute-filenames",
            initramfs.display()
        ))
        .current_dir(target)
        .status()
        .unwrap();
    assert!(status.success(), "cpio unpack of {}", initramfs.display());
}

/// Mounts a filesystem image read-only (loop) for as long as it lives.
struct Mounted(std::path::PathBuf);

impl Mounted {
    fn image(image: &Path, target: &Path, filesystem: &str) -> Mounted {
        support::mount(image, target, "loop,ro", filesystem);
        Mounted(target.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn e2fsck_clean(image: &Path) {
    let output = Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "e2fsck -fn {}: {}{}",
        image.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

type Snapshot = (BTreeMap<String, Entry>, Vec<Vec<String>>);
type XattrMap = BTreeMap<String, BTreeMap<String, String>>;

/// The tree inside an output: unpacked (initramfs) or mounted (ext4,
/// EROFS), and its xattrs (none for an initramfs: newc cannot carry them).
fn tree_of(format: &str, image: &Path, work: &Path) -> (Snapshot, XattrMap) {
    let target = work.join(format!(
        "{}-tree",
        image.file_name().unwrap().to_string_lossy()
    ));
    if format == "initramfs" {
        cpio_unpack(image, &target);
        (snapshot(&target), BTreeMap::new())
    } else if format == "erofs" {
        let check = Command::new("fsck.erofs").arg(image).output().unwrap();
        assert!(
            check.status.success(),
            "fsck.erofs {}: {}",
            image.display(),
            String::from_utf8_lossy(&check.stderr)
        );
        let _mounted = Mounted::image(image, &target, "erofs");
        (snapshot(&target), xattrs(&target))
    } else {
        e2fsck_clean(image);
        let _mounted = Mounted::image(image, &target, "ext4");
        let (mut entries, links) = snapshot(&target);
        assert_eq!(
            entries.remove("lost+found").map(|e| e.kind),
            Some("dir"),
            "an ext4 root has lost+found, as mke2fs makes it"
        );
        ((entries, links), xattrs(&target))
    }
}

#[test]
fn initramfs_ext4_and_erofs_hold_exactly_the_tree_umoci_unpacks() {
    let env = env();
    let fixtures =
        std::env::var("KILN_TEST_FIXTURES").expect("KILN_TEST_FIXTURES from .ci/testenv.sh");
    let kiln = Kiln::new();
    for (tag, layout_tag) in [
        ("busybox:multi", "busybox-multi"),
        ("busybox:zstd", "busybox-multi"),
        ("busybox:plain", "busybox-multi"),
        ("shared:1", "shared-1"),
        ("symlinked:1", "symlinked-1"),
    ] {
        let reference = format!("{}/{tag}", env.registry);
        kiln.run(&["pull", "--insecure", "-q", &reference]).ok();
        let theirs = kiln.dir.path().join(format!("umoci-{layout_tag}"));
        if !theirs.exists() {
            umoci_unpack(&format!("{fixtures}/images:{layout_tag}"), &theirs);
        }
        let (their_entries, their_links) = snapshot(&theirs);
        let their_xattrs = xattrs(&theirs);
        for format in ["initramfs", "ext4", "erofs"] {
            let output = kiln
                .dir
                .path()
                .join(format!("{}.{format}", tag.replace(':', "-")));
            let run = kiln
                .run(&[
                    "rootfs",
                    "--format",
                    format,
                    &reference,
                    "-o",
                    output.to_str().unwrap(),
                ])
                .ok();
            assert_eq!(run.stdout.trim(), output.to_str().unwrap());
            let ((our_entries, our_links), our_xattrs) = tree_of(format, &output, kiln.dir.path());
            if format != "initramfs" {
                assert_eq!(our_xattrs, their_xattrs, "{tag} {format}: xattrs");
            }
            for (path, theirs) in &their_entries {
                assert_eq!(
                    our_entries.get(path),
                    Some(theirs),
                    "{tag} {format}: {path}"
                );
            }
            let extra: Vec<_> = our_entries
                .keys()
                .filter(|k| !their_entries.contains_key(*k))
                .collect();
            assert!(extra.is_empty(), "{tag} {format}: extra entries {extra:?}");
            assert_eq!(our_links, their_links, "{tag} {format}: hardlink groups");
            if tag == "symlinked:1" {
                // Paths through symlinks land where the symlinks point, inside the root.
                for path in ["usr/lib/added", "usr/lib/sub/deeper", "climbed", "hard"] {
                    assert!(our_entries.contains_key(path), "{format}: {path}");
                }
                assert!(
                    !our_entries.contains_key("usr/lib/old"),
                    "{format}: whiteout"
                );
                assert_eq!(our_entries["lib"].kind, "symlink");
            }
            if tag == "busybox:multi" {
                assert!(
                    our_entries["data/suid"].mode & 0o4000 != 0,
                    "{format}: setuid survives"
                );
                assert_eq!(our_entries["data/owned"].uid, 1000);
                assert_eq!(our_entries["data/null"].kind, "char");
                assert_eq!(our_entries["data/null"].rdev, 0x103, "{format}: device 1:3");
                assert_eq!(our_entries["data/loop9"].kind, "block");
                assert_eq!(our_entries["data/fifo"].kind, "fifo");
                assert!(!our_entries.contains_key("data/b.txt"), "whiteout applied");
                assert!(
                    !our_entries.contains_key("data/dir/x"),
                    "opaque directory applied"
                );
                assert_eq!(
                    our_links,
                    vec![vec!["data/a.txt".to_string(), "data/hard".to_string()]]
                );
                if format != "initramfs" {
                    assert_eq!(our_xattrs["data/hard"]["user.kiln"], "0x68656c6c6f");
                    assert!(our_xattrs["data/suid"].contains_key("security.capability"));
                    assert_eq!(our_xattrs["data/owned"]["user.big"].len(), 2 + 600);
                }
            }
        }
    }
}

#[test]
fn rootfs_is_cached_identical_for_any_user_and_collected_with_its_image() {
    let env = env();
    let reference = format!("{}/busybox:multi", env.registry);
    let kiln = Kiln::new();
    kiln.run(&["pull", "--insecure", "-q", &reference]).ok();
    let first = kiln
        .run(&["rootfs", "--format", "initramfs", "--json", &reference])
        .ok()
        .json();
    assert_eq!(first["cached"], false);
    let second = kiln
        .run(&["rootfs", "--format", "initramfs", "--json", &reference])
        .ok()
        .json();
    assert_eq!(
        second["cached"], true,
        "a second request is served from the store"
    );
    assert_eq!(first["digest"], second["digest"]);
    let path = first["path"].as_str().unwrap();
    assert!(std::fs::metadata(path).unwrap().permissions().readonly());
    kiln.run(&["fsck"]).ok();

    // An ordinary user gets the same bytes (ownership comes from the layers,
    // not from what the host lets a user do).
    let nobody = support::Nobody::new();
    let shared = &nobody.dir;
    let as_nobody = |args: &[&str]| nobody.run(args);
    as_nobody(&["pull", "--insecure", "-q", &reference]);
    let theirs: serde_json::Value = serde_json::from_str(&as_nobody(&[
        "rootfs",
        "--format",
        "initramfs",
        "--json",
        &reference,
    ]))
    .unwrap();
    assert_eq!(
        theirs["digest"], first["digest"],
        "root and an ordinary user build the same initramfs"
    );
    let ext4_root = kiln.dir.path().join("root.ext4");
    kiln.run(&[
        "rootfs",
        "--format",
        "ext4",
        &reference,
        "-o",
        ext4_root.to_str().unwrap(),
    ])
    .ok();
    let ext4_nobody = shared.path().join("nobody.ext4");
    as_nobody(&[
        "rootfs",
        "--format",
        "ext4",
        &reference,
        "-o",
        ext4_nobody.to_str().unwrap(),
    ]);
    assert_eq!(
        tree_of("ext4", &ext4_root, kiln.dir.path()),
        tree_of("ext4", &ext4_nobody, kiln.dir.path()),
        "root and an ordinary user build the same ext4 tree"
    );
    assert_eq!(
        sha256(&ext4_root),
        sha256(&ext4_nobody),
        "kiln's ext4 writer is reproducible: the same image, byte for byte"
    );

    let erofs_root = kiln.dir.path().join("root.erofs");
    kiln.run(&[
        "rootfs",
        "--format",
        "erofs",
        &reference,
        "-o",
        erofs_root.to_str().unwrap(),
    ])
    .ok();
    let erofs_nobody = shared.path().join("nobody.erofs");
    as_nobody(&[
        "rootfs",
        "--format",
        "erofs",
        &reference,
        "-o",
        erofs_nobody.to_str().unwrap(),
    ]);
    assert_eq!(
        tree_of("erofs", &erofs_root, kiln.dir.path()),
        tree_of("erofs", &erofs_nobody, kiln.dir.path()),
        "root and an ordinary user build the same EROFS tree"
    );
    assert_eq!(
        sha256(&erofs_root),
        sha256(&erofs_nobody),
        "kiln's EROFS writer is reproducible: the same image, byte for byte"
    );

    // --size is honoured; a size too small fails with an error, not a panic.
    // Without a terminal, a build says each stage on a line of its own.
    let built = kiln
        .run(&["rootfs", "--format", "ext4", "--size", "64M", &reference])
        .ok();
    let lines: Vec<&str> = built.stderr.lines().collect();
    assert!(
        lines.len() == 3
            && lines[0].starts_with("layers: reading ")
            && lines[1] == "ext4: writing 67.11MB"
            && lines[2].ends_with("(67.11MB): built"),
        "{}",
        built.stderr
    );
    let sized = kiln
        .run(&[
            "rootfs", "--format", "ext4", "--size", "64M", "--json", &reference,
        ])
        .ok()
        .json();
    assert_eq!(sized["size"], 64 << 20);
    // -o copies the image's data and keeps its free space as holes.
    let copied = kiln.dir.path().join("sized.ext4");
    kiln.run(&[
        "rootfs",
        "--format",
        "ext4",
        "--size",
        "64M",
        &reference,
        "-o",
        copied.to_str().unwrap(),
    ])
    .ok();
    let cached = Path::new(sized["path"].as_str().unwrap());
    assert_eq!(sha256(&copied), sha256(cached), "the same bytes");
    use std::os::unix::fs::MetadataExt;
    let (copy, original) = (
        std::fs::metadata(&copied).unwrap(),
        std::fs::metadata(cached).unwrap(),
    );
    assert_eq!(copy.len(), 64 << 20);
    assert!(
        copy.blocks() * 512 < 16 << 20 && copy.blocks() <= original.blocks() + 8,
        "a sparse copy: {} bytes allocated of {} ({} in the store)",
        copy.blocks() * 512,
        copy.len(),
        original.blocks() * 512
    );
    let tiny = kiln
        .run(&["rootfs", "--format", "ext4", "--size", "1M", &reference])
        .fails(1);
    tiny.assert_one_error();
    assert!(
        tiny.stderr
            .contains("does not fit in an ext4 image of 1048576 bytes")
            && tiny.stderr.contains("hint: pass a larger --size"),
        "{}",
        tiny.stderr
    );

    // inspect lists what the store holds for the image, where it is.
    let details = kiln
        .run(&["inspect", &reference, "--format", "json"])
        .ok()
        .json();
    let listed: Vec<(String, String, u64)> = details[0]["rootfs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["current"], true, "{r}");
            let at = Path::new(r["path"].as_str().unwrap());
            assert_eq!(
                std::fs::metadata(at).unwrap().len(),
                r["size"].as_u64().unwrap()
            );
            (
                r["format"].as_str().unwrap().to_string(),
                r["options"].as_str().unwrap().to_string(),
                r["size"].as_u64().unwrap(),
            )
        })
        .collect();
    let formats: Vec<(&str, &str)> = listed
        .iter()
        .map(|(f, o, _)| (f.as_str(), o.as_str()))
        .collect();
    assert_eq!(
        formats,
        [
            ("erofs", ""),
            ("ext4", ""),
            ("ext4", &*format!("size={}", 64 << 20)),
            ("initramfs", "")
        ],
        "{details}"
    );
    assert!(
        details[0]["rootfs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["path"] == first["path"] && r["digest"] == first["digest"])
    );
    let text = kiln.run(&["inspect", &reference]).ok().stdout;
    assert!(text.contains("Root filesystems:"), "{text}");
    assert!(text.contains(path), "{text}");

    // rmi takes the artifacts with the image, and counts what that frees
    // on disk: the 64M ext4 image is mostly holes, which free nothing.
    let (apparent, allocated) = kiln.blob_files().iter().fold((0, 0), |(a, b), file| {
        let metadata = std::fs::metadata(file).unwrap();
        (a + metadata.len(), b + metadata.blocks() * 512)
    });
    assert!(allocated < apparent / 2, "{allocated} of {apparent}");
    let removed: serde_json::Value = serde_json::from_str(
        &kiln
            .run(&["rmi", "--format", "json", &reference])
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(removed["bytes_freed"], allocated, "{removed}");
    assert!(!Path::new(path).exists());
    assert!(kiln.blob_files().is_empty());
    let missing = kiln
        .run(&["rootfs", "--format", "initramfs", &reference])
        .fails(1);
    assert!(missing.stderr.contains("no image"), "{}", missing.stderr);
}

/// `kiln pull --rootfs`: layers are unpacked from the download's own
/// decompression; the result must be byte for byte what `kiln rootfs`
/// builds from the stored layers, whichever layers were already stored.
#[test]
fn pull_rootfs_builds_what_rootfs_builds_while_downloading() {
    let env = env();
    // Reference builds: pull, then convert from the stored layers.
    let reference_digests = |tag: &str| {
        let kiln = Kiln::new();
        let image = format!("{}/{tag}", env.registry);
        kiln.run(&["pull", "--insecure", "-q", &image]).ok();
        ["ext4", "erofs", "initramfs"].map(|format| {
            kiln.run(&["rootfs", "--format", format, "--json", &image])
                .ok()
                .json()["digest"]
                .as_str()
                .unwrap()
                .to_string()
        })
    };

    for (tag, extra) in [
        ("busybox:multi", None),
        ("busybox:zstd", Some("--inline-diff-id")),
        ("busybox:plain", None),
    ] {
        let expected = reference_digests(tag);
        let kiln = Kiln::new();
        let image = format!("{}/{tag}", env.registry);
        let mut args = vec![
            "pull",
            "--insecure",
            "--format",
            "json",
            "--rootfs",
            "ext4",
            "--rootfs",
            "erofs",
            "--rootfs",
            "initramfs",
            &image,
        ];
        args.extend(extra);
        let pulled = kiln.run(&args).ok().json();
        let built = pulled["rootfs"].as_array().unwrap();
        assert_eq!(built.len(), 3, "{tag}: {pulled}");
        for (artifact, digest) in built.iter().zip(&expected) {
            assert_eq!(
                artifact["digest"].as_str().unwrap(),
                digest,
                "{tag} {}: the same image as `kiln rootfs` builds",
                artifact["format"]
            );
            assert_eq!(artifact["cached"], false);
            assert_eq!(
                artifact["unpacked_while_pulling"], true,
                "{tag}: built from the download, not from the stored layers"
            );
            assert_eq!(
                sha256(Path::new(artifact["path"].as_str().unwrap())),
                digest.trim_start_matches("sha256:"),
                "{tag}: the file in the store is what its digest says"
            );
        }
        // They are the image's artifacts: `rootfs` finds them.
        let again = kiln
            .run(&["rootfs", "--format", "erofs", "--json", &image])
            .ok()
            .json();
        assert_eq!(again["cached"], true);
        assert_eq!(again["digest"].as_str().unwrap(), expected[1]);
        kiln.run(&["fsck"]).ok();
        assert!(kiln.no_scratch(), "no scratch left behind");
    }

    // Some layers already stored (busybox:1 is shared:1's base): those are
    // unpacked from the store, the others from the download.
    let expected = reference_digests("shared:1");
    let kiln = Kiln::new();
    kiln.run(&[
        "pull",
        "--insecure",
        "-q",
        &format!("{}/busybox:1", env.registry),
    ])
    .ok();
    let image = format!("{}/shared:1", env.registry);
    let run = kiln
        .run(&["pull", "--insecure", "--rootfs", "ext4", &image])
        .ok();
    assert!(run.stderr.contains("built while pulling"), "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "the digest, then the path: {}", run.stdout);
    assert!(lines[0].starts_with("sha256:"));
    assert_eq!(
        format!("sha256:{}", sha256(Path::new(lines[1]))),
        expected[0],
        "partly stored layers give the same ext4"
    );
    e2fsck_clean(Path::new(lines[1]));

    // A cached image: the artifacts come from the store (or are built from
    // the stored layers).
    let cached = kiln
        .run(&[
            "pull",
            "--insecure",
            "--format",
            "json",
            "--rootfs",
            "ext4",
            "--rootfs",
            "erofs",
            &image,
        ])
        .ok()
        .json();
    assert_eq!(cached["cached"], true);
    assert_eq!(cached["rootfs"][0]["cached"], true);
    assert_eq!(cached["rootfs"][1]["cached"], false);
    assert_eq!(
        cached["rootfs"][1]["unpacked_while_pulling"], false,
        "nothing was downloaded: built from the stored layers"
    );
    assert_eq!(cached["rootfs"][1]["digest"].as_str().unwrap(), expected[1]);

    // `kiln rootfs` of an image the store does not hold says how to get it.
    let fresh = Kiln::new();
    let absent = fresh
        .run(&["rootfs", "--format", "ext4", "--no-referrers", &image])
        .fails(1);
    assert!(
        absent.stderr.contains("hint:") && absent.stderr.contains("--rootfs FORMAT"),
        "{}",
        absent.stderr
    );

    // Bad requests fail before any download, or leave nothing behind.
    let refused = kiln
        .run(&[
            "pull",
            "--insecure",
            "--rootfs",
            "erofs",
            "--rootfs-size",
            "64M",
            &image,
        ])
        .fails(1);
    assert!(
        refused
            .stderr
            .contains("--rootfs-size applies to --rootfs ext4"),
        "{}",
        refused.stderr
    );
    let missing = kiln
        .run(&[
            "pull",
            "--insecure",
            "--rootfs",
            "ext4",
            &format!("{}/no-such:1", env.registry),
        ])
        .fails(1);
    assert!(missing.stderr.contains("error:"), "{}", missing.stderr);
    assert!(kiln.no_scratch(), "a failed pull leaves no scratch");
}

/// Loop devices attached read-only for one test, detached when dropped.
struct LoopDevices(Vec<String>);

impl LoopDevices {
    fn attach(&mut self, file: &Path) -> String {
        let output = Command::new("losetup")
            .args(["-f", "--show", "-r"])
            .arg(file)
            .output()
            .unwrap();
        assert!(output.status.success(), "losetup {}", file.display());
        let device = String::from_utf8_lossy(&output.stdout).trim().to_string();
        self.0.push(device.clone());
        device
    }
}

impl Drop for LoopDevices {
    fn drop(&mut self) {
        for device in &self.0 {
            let _ = Command::new("losetup").args(["-d", device]).status();
        }
    }
}

/// The tree of a layered EROFS (`fsck.erofs` with its devices first),
/// The layer files of a layered EROFS (`--json`), in device order.
fn device_paths(built: &serde_json::Value) -> Vec<&Path> {
    built["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| Path::new(d["path"].as_str().unwrap()))
        .collect()
}

/// mounted with one `device=` per layer file, in order.
fn layered_tree(metadata: &Path, devices: &[&Path], work: &Path) -> (Snapshot, XattrMap) {
    let mut check = Command::new("fsck.erofs");
    for device in devices {
        check.arg(format!("--device={}", device.display()));
    }
    let check = check.arg(metadata).output().unwrap();
    assert!(
        check.status.success(),
        "fsck.erofs {}: {}",
        metadata.display(),
        String::from_utf8_lossy(&check.stderr)
    );
    let mut loops = LoopDevices(Vec::new());
    let mut options = String::from("ro");
    for device in devices {
        options += &format!(",device={}", loops.attach(device));
    }
    let root = loops.attach(metadata);
    let target = work.join("layered-tree");
    support::mount(Path::new(&root), &target, &options, "erofs");
    let _mounted = Mounted(target.clone());
    (snapshot(&target), xattrs(&target))
}

#[test]
fn layered_erofs_holds_the_same_tree_and_images_share_their_layer_files() {
    let env = env();
    let kiln = Kiln::new();
    let multi = format!("{}/busybox:multi", env.registry);
    let shared = format!("{}/shared:1", env.registry);
    kiln.run(&["pull", "--insecure", "-q", &multi]).ok();
    kiln.run(&["pull", "--insecure", "-q", &shared]).ok();
    let layered = |reference: &str| {
        kiln.run(&[
            "rootfs",
            "--format",
            "erofs",
            "--layered",
            "--json",
            reference,
        ])
        .ok()
        .json()
    };

    let built = layered(&multi);
    assert_eq!(built["cached"], false);
    let devices = device_paths(&built);
    assert!(!devices.is_empty(), "{built}");
    let metadata = Path::new(built["metadata"]["path"].as_str().unwrap());
    // The metadata image holds no content of a block or more.
    let flat = kiln.dir.path().join("flat.erofs");
    kiln.run(&[
        "rootfs",
        "--format",
        "erofs",
        &multi,
        "-o",
        flat.to_str().unwrap(),
    ])
    .ok();
    assert!(
        std::fs::metadata(metadata).unwrap().len() < std::fs::metadata(&flat).unwrap().len() / 4,
        "{built}"
    );
    // The same tree as the flattened image (which the oracle test compares
    // with umoci's): names, types, modes, owners, contents, links, xattrs.
    assert_eq!(
        layered_tree(metadata, &devices, kiln.dir.path()),
        tree_of("erofs", &flat, kiln.dir.path()),
    );

    // Built while pulling (layers unpacked from the download), into
    // another store: the same files, byte for byte.
    let fresh = Kiln::new();
    let pulled = fresh
        .run(&[
            "pull",
            "--insecure",
            "--rootfs",
            "erofs",
            "--layered",
            "--format",
            "json",
            &multi,
        ])
        .ok()
        .json();
    assert_eq!(pulled["layered"]["cached"], false, "{pulled}");
    assert_eq!(
        pulled["layered"]["metadata"]["digest"],
        built["metadata"]["digest"]
    );
    let digests = |value: &serde_json::Value| -> Vec<String> {
        value["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["digest"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(digests(&pulled["layered"]), digests(&built));
    let text = fresh
        .run(&[
            "pull",
            "--insecure",
            "-q",
            "--rootfs",
            "erofs",
            "--layered",
            &multi,
        ])
        .ok()
        .stdout;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2 + devices.len(), "{text}");
    assert_eq!(lines[0], pulled["manifest_digest"].as_str().unwrap());
    let refused = fresh
        .run(&[
            "pull",
            "--insecure",
            "--rootfs",
            "ext4",
            "--layered",
            &multi,
        ])
        .fails(1);
    assert!(
        refused
            .stderr
            .contains("--layered goes with --rootfs erofs alone"),
        "{}",
        refused.stderr
    );

    // -o DIR: copies of the metadata image and the layer files, named by
    // role, with the same tree; a directory with something in it is refused.
    let out = kiln.dir.path().join("layered-out");
    let copied = kiln
        .run(&[
            "rootfs",
            "--format",
            "erofs",
            "--layered",
            "--json",
            &multi,
            "-o",
            out.to_str().unwrap(),
        ])
        .ok()
        .json();
    assert_eq!(
        copied["metadata"]["path"],
        out.join("metadata.erofs").to_str().unwrap()
    );
    let copies = device_paths(&copied);
    assert_eq!(copies.len(), devices.len());
    for (copy, original) in copies.iter().zip(&devices) {
        assert!(copy.starts_with(&out), "{}", copy.display());
        assert_eq!(sha256(copy), sha256(original));
    }
    assert_eq!(
        layered_tree(&out.join("metadata.erofs"), &copies, kiln.dir.path()),
        tree_of("erofs", &flat, kiln.dir.path()),
    );
    let taken = kiln
        .run(&[
            "rootfs",
            "--format",
            "erofs",
            "--layered",
            &multi,
            "-o",
            out.to_str().unwrap(),
        ])
        .fails(1);
    taken.assert_one_error();
    assert!(taken.stderr.contains("not empty"), "{}", taken.stderr);
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1 + devices.len());

    // A second request comes from the store; the text form prints the
    // metadata image, then each layer file in device order.
    let again = layered(&multi);
    assert_eq!(again["cached"], true);
    assert_eq!(again["metadata"]["digest"], built["metadata"]["digest"]);
    let text = kiln
        .run(&["rootfs", "--format", "erofs", "--layered", &multi])
        .ok()
        .stdout;
    let mut expected = vec![metadata.display().to_string()];
    expected.extend(devices.iter().map(|d| d.display().to_string()));
    assert_eq!(text.lines().collect::<Vec<_>>(), expected);

    // shared:1 has the same base layer: the same file, stored once.
    let other = layered(&shared);
    assert_eq!(other["devices"][0]["layer"], 0);
    assert_eq!(built["devices"][0]["layer"], 0);
    assert_eq!(other["devices"][0]["digest"], built["devices"][0]["digest"]);
    let base = devices[0].to_path_buf();

    // Wrong combinations are refused.
    let ext4 = kiln
        .run(&["rootfs", "--format", "ext4", "--layered", &multi])
        .fails(1);
    assert!(
        ext4.stderr.contains("--layered applies to EROFS only"),
        "{}",
        ext4.stderr
    );
    let sized = kiln
        .run(&[
            "rootfs",
            "--format",
            "erofs",
            "--layered",
            "--size",
            "1G",
            &multi,
        ])
        .fails(1);
    assert!(
        sized.stderr.contains("cannot be used with"),
        "{}",
        sized.stderr
    );

    // Several devices, numbered in order past layers without one: big:1
    // (a device per layer), and a snapshot of busybox:multi with a large
    // file on top (devices for layers 0 and 3; 1 and 2 have none).
    let big = format!("{}/big:1", env.registry);
    kiln.run(&["pull", "--insecure", "-q", &big]).ok();
    let disk = kiln
        .run(&[
            "disk", "create", "gap", "--image", &multi, "--format", "raw",
        ])
        .ok()
        .stdout;
    let mnt = kiln.dir.path().join("gap-mnt");
    support::mount(Path::new(disk.trim()), &mnt, "loop,rw", "ext4");
    std::fs::write(mnt.join("top.bin"), vec![7u8; 300_000]).unwrap();
    support::umount(&mnt);
    kiln.run(&["snapshot", "gap", "localhost/gap:1"]).ok();
    // gap:1 and shared:1 reuse busybox:multi's file for the base layer.
    for (reference, layers) in [
        (big.as_str(), vec![0, 1, 2, 3]),
        ("localhost/gap:1", vec![0, 3]),
        (shared.as_str(), vec![0]),
    ] {
        let built = layered(reference);
        let devices = device_paths(&built);
        let numbers: Vec<u64> = built["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["layer"].as_u64().unwrap())
            .collect();
        assert_eq!(numbers, layers, "{built}");
        let flat = kiln.dir.path().join("flat-more.erofs");
        kiln.run(&[
            "rootfs",
            "--format",
            "erofs",
            reference,
            "-o",
            flat.to_str().unwrap(),
        ])
        .ok();
        assert_eq!(
            layered_tree(
                Path::new(built["metadata"]["path"].as_str().unwrap()),
                &devices,
                kiln.dir.path()
            ),
            tree_of("erofs", &flat, kiln.dir.path()),
            "{reference}"
        );
        std::fs::remove_file(&flat).unwrap();
    }

    // A layer file fsck finds damaged and forgets is built again, not
    // served incomplete from the store.
    let damaged = built["devices"][0]["digest"].as_str().unwrap().to_string();
    kiln.damage_blob(&damaged);
    kiln.run(&["fsck", "--repair"]).fails(1);
    let rebuilt = layered(&multi);
    assert_eq!(rebuilt["cached"], false, "{rebuilt}");
    assert_eq!(rebuilt["devices"], built["devices"]);
    // shared:1 lost its row for that file too: it is rebuilt as well.
    let again = layered(&shared);
    assert_eq!(again["cached"], false, "{again}");
    assert_eq!(again["devices"], other["devices"]);
    kiln.run(&["fsck"]).ok();

    // The shared file stays while an image uses it.
    kiln.run(&["disk", "rm", "gap"]).ok();
    kiln.run(&["rmi", "localhost/gap:1"]).ok();
    kiln.run(&["rmi", &big]).ok();
    kiln.run(&["rmi", &multi]).ok();
    assert!(base.exists(), "shared:1 still uses the base layer's file");
    assert!(!metadata.exists());
    kiln.run(&["rmi", &shared]).ok();
    assert!(!base.exists());
    kiln.run(&["fsck"]).ok();
}

/// An image whose second layer climbs out of the root (`../kiln-escape`):
/// every way of converting it fails with one error naming the image and
/// the layer's digest, the entry as the cause, and a hint; nothing is
/// written anywhere, no scratch is left, and the store stays consistent.
#[test]
fn a_hostile_layer_fails_every_conversion_naming_the_image_and_the_layer() {
    let env = env();
    let reference = format!("{}/hostile:1", env.registry);
    let digests: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            Path::new(&std::env::var("KILN_TEST_ENV_DIR").unwrap()).join("digests.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let layer = digests["hostile:1"]["layers"][1]
        .as_str()
        .unwrap()
        .to_string();
    let check = |run: support::Run, what: &str| {
        let run = run.fails(1);
        run.assert_one_error();
        assert!(
            run.stderr.lines().any(|line| {
                line == format!("error: cannot unpack layer 1 ({layer}) of {reference}")
            }) && run
                .stderr
                .contains("caused by: layer 1, entry \"../kiln-escape\": path contains '..'")
                && run.stderr.contains("hint: the layer is malformed"),
            "{what}: {}",
            run.stderr
        );
    };
    let kiln = Kiln::new();
    kiln.run(&["pull", "--insecure", "-q", &reference]).ok();
    for format in ["ext4", "erofs", "initramfs"] {
        check(
            kiln.run(&["rootfs", "--format", format, &reference]),
            format,
        );
    }
    check(
        kiln.run(&["rootfs", "--format", "erofs", "--layered", &reference]),
        "layered",
    );
    assert!(kiln.no_scratch(), "no scratch left");
    kiln.run(&["fsck"]).ok();

    let pulling = Kiln::new();
    check(
        pulling.run(&["pull", "--insecure", "-q", "--rootfs", "ext4", &reference]),
        "pull --rootfs",
    );
    assert!(pulling.no_scratch(), "no scratch left");
    pulling.run(&["fsck"]).ok();
    let layered = Kiln::new();
    check(
        layered.run(&[
            "pull",
            "--insecure",
            "-q",
            "--rootfs",
            "erofs",
            "--layered",
            &reference,
        ]),
        "pull --rootfs erofs --layered",
    );
    assert!(layered.no_scratch(), "no scratch left");
    for root in [kiln.dir.path(), pulling.dir.path(), layered.dir.path()] {
        let escaped: Vec<_> = walk(root)
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n == "kiln-escape"))
            .collect();
        assert!(escaped.is_empty(), "{escaped:?}");
    }
}

/// Every path under `root`.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path.clone());
            }
            found.push(path);
        }
    }
    found
}
