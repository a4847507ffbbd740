//! Sandbox disks: cheap writable copies of an image's ext4 root filesystem,
//! isolated from each other and from the base, holding their image.

mod support;

use std::path::Path;
use std::process::Command;

use support::{Kiln, env, umount};

fn mount(image: &Path, target: &Path, options: &str) {
    support::mount(image, target, options, "ext4");
}

fn qemu_img_info(path: &str) -> serde_json::Value {
    let output = Command::new("qemu-img")
        .args(["info", "--output", "json", path])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "qemu-img info {path}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A store holding `tag` (pulled from the test registry) and a raw disk
/// `work` made from it: the store, the image's reference, the disk's path.
fn raw_work_disk(tag: &str) -> (Kiln, String, String) {
    let env = env();
    let kiln = Kiln::new();
    let reference = format!("{}/{tag}", env.registry);
    kiln.run(&["pull", "--insecure", "-q", &reference]).ok();
    let disk = kiln
        .run(&[
            "disk", "create", "work", "--image", &reference, "--format", "raw",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    (kiln, reference, disk)
}

#[test]
fn raw_disks_are_isolated_from_each_other_and_from_the_base() {
    let env = env();
    let kiln = Kiln::new();
    let reference = format!("{}/busybox:multi", env.registry);
    kiln.run(&["pull", "--insecure", "-q", &reference]).ok();
    let one = kiln
        .run(&[
            "disk", "create", "one", "--image", &reference, "--format", "raw",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    let two = kiln
        .run(&[
            "disk", "create", "two", "--image", &reference, "--format", "raw", "--json",
        ])
        .ok()
        .json();
    assert_eq!(two["format"], "raw");
    assert!(["reflink", "sparse-copy"].contains(&two["method"].as_str().unwrap()));
    assert_eq!(kiln.run(&["disk", "path", "one"]).ok().stdout.trim(), one);

    let mnt = kiln.dir.path().join("mnt");
    mount(Path::new(&one), &mnt, "loop,rw");
    std::fs::write(mnt.join("written-in-one"), b"sandbox state").unwrap();
    assert_eq!(
        std::fs::read(mnt.join("data/a.txt")).unwrap(),
        b"file a\n",
        "the disk holds the image"
    );
    umount(&mnt);
    mount(Path::new(two["path"].as_str().unwrap()), &mnt, "loop,ro");
    assert!(
        !mnt.join("written-in-one").exists(),
        "another disk does not see it"
    );
    umount(&mnt);
    // The base image in the store is unchanged: fsck re-hashes it.
    kiln.run(&["fsck"]).ok();
    let base = kiln
        .run(&["rootfs", "--format", "ext4", "--json", &reference])
        .ok()
        .json();
    assert_eq!(base["cached"], true);
    mount(Path::new(base["path"].as_str().unwrap()), &mnt, "loop,ro");
    assert!(!mnt.join("written-in-one").exists(), "nor does the base");
    umount(&mnt);
}

#[test]
fn disks_hold_their_image_and_overlays_keep_their_backing_file() {
    let env = env();
    let kiln = Kiln::new();
    let reference = format!("{}/busybox:1", env.registry);
    kiln.run(&["pull", "--insecure", "-q", &reference]).ok();
    let overlay = kiln
        .run(&[
            "disk",
            "create",
            "sandbox-1",
            "--image",
            &reference,
            "--format",
            "qcow2",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    let base = kiln
        .run(&["rootfs", "--format", "ext4", "--json", &reference])
        .ok()
        .json();
    let info = qemu_img_info(&overlay);
    assert_eq!(info["format"], "qcow2");
    assert_eq!(
        info["backing-filename"], base["path"],
        "the overlay reads the cached raw image"
    );
    kiln.run(&[
        "disk",
        "create",
        "sandbox-2",
        "--image",
        &reference,
        "--format",
        "raw",
    ])
    .ok();

    let listed = kiln.run(&["disk", "ls", "--format", "json"]).ok().json();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sandbox-1", "sandbox-2"]);
    assert_eq!(listed[0]["references"][0], reference.as_str());

    // rmi refuses while disks exist, and names them.
    let refused = kiln.run(&["rmi", &reference]).fails(1);
    assert!(
        refused.stderr.contains("disk sandbox-1") && refused.stderr.contains("disk sandbox-2"),
        "{}",
        refused.stderr
    );
    // --force removes the name; the image and the overlay's backing file stay.
    let forced = kiln.run(&["rmi", "--force", &reference]).ok();
    assert!(forced.stdout.contains("Untagged:"), "{}", forced.stdout);
    kiln.run(&["prune", "--all", "--yes"]).ok();
    assert!(
        Path::new(base["path"].as_str().unwrap()).exists(),
        "prune keeps what a disk needs"
    );
    let check = Command::new("qemu-img")
        .args(["check", &overlay])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "the overlay is intact: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    let images = kiln.run(&["images", "--format", "json"]).ok().json();
    assert_eq!(images.as_array().unwrap().len(), 1);
    assert!(images[0]["reference"].is_null());

    // When the last disk goes, prune collects the image and everything it had.
    kiln.run(&["disk", "rm", "sandbox-1"]).ok();
    kiln.run(&["prune", "--all", "--yes"]).ok();
    assert!(
        Path::new(base["path"].as_str().unwrap()).exists(),
        "sandbox-2 still holds the image"
    );
    kiln.run(&["disk", "rm", "sandbox-2"]).ok();
    let pruned = kiln
        .run(&["prune", "--all", "--yes", "--format", "json"])
        .ok()
        .json();
    assert_eq!(pruned["images_removed"].as_array().unwrap().len(), 1);
    assert!(kiln.blob_files().is_empty(), "{:?}", kiln.blob_files());
    assert!(!kiln.root().join("disks-v1/sandbox-1").exists());
    kiln.run(&["fsck"]).ok();
}

/// fsck checks the disks too: an overlay whose cached image went bad, and a
/// disk whose file is gone, are named (and left to the user: a disk is the
/// sandbox's).
#[test]
fn fsck_names_the_disks_a_bad_or_missing_file_breaks() {
    let env = env();
    let kiln = Kiln::new();
    let reference = format!("{}/busybox:1", env.registry);
    kiln.run(&["pull", "--insecure", "-q", &reference]).ok();
    for (name, format) in [("over", "qcow2"), ("copy", "raw")] {
        kiln.run(&[
            "disk", "create", name, "--image", &reference, "--format", format,
        ])
        .ok();
    }
    let clean = kiln.run(&["fsck"]).ok();
    assert!(
        clean.stderr.contains("and 2 disks: 0 problem(s)"),
        "{}",
        clean.stderr
    );

    let base = kiln
        .run(&["rootfs", "--format", "ext4", "--json", &reference])
        .ok()
        .json();
    kiln.damage_blob(base["digest"].as_str().unwrap());
    let found = kiln.run(&["fsck"]).fails(1);
    let broken: Vec<&str> = found
        .stdout
        .lines()
        .filter(|l| l.starts_with("broken_disk:"))
        .collect();
    assert_eq!(broken.len(), 1, "{}", found.stdout);
    assert!(
        broken[0].contains("disk \"over\" is a qcow2 overlay"),
        "{}",
        broken[0]
    );
    let repaired = kiln.run(&["fsck", "--repair"]).fails(1);
    assert!(
        repaired.stdout.contains("corrupt and now in quarantine"),
        "the report names the disk the repair broke: {}",
        repaired.stdout
    );

    let copy = kiln.run(&["disk", "path", "copy"]).ok().stdout;
    std::fs::remove_file(copy.trim()).unwrap();
    let gone = kiln.run(&["fsck"]).fails(1);
    assert!(
        gone.stdout.contains("disk \"copy\": its file") && gone.stdout.contains("is gone"),
        "{}",
        gone.stdout
    );
    for name in ["over", "copy"] {
        kiln.run(&["disk", "rm", name]).ok();
    }
    kiln.run(&["rmi", &reference]).ok();
    kiln.run(&["prune", "--yes"]).ok();
    kiln.run(&["fsck"]).ok();
}

#[test]
fn disk_names_and_errors() {
    let env = env();
    let kiln = Kiln::new();
    let reference = format!("{}/busybox:1", env.registry);
    kiln.run(&["pull", "--insecure", "-q", &reference]).ok();
    for bad in [
        "../escape",
        "a/b",
        "..",
        ".hidden",
        "x".repeat(129).as_str(),
        "",
    ] {
        let run = kiln
            .run(&["disk", "create", bad, "--image", &reference])
            .fails(1);
        assert!(
            run.stderr.contains("invalid disk name"),
            "{bad:?}: {}",
            run.stderr
        );
    }
    let created = kiln
        .run(&["disk", "create", "ok.name_1-2", "--image", &reference])
        .ok();
    if created.stderr.contains("(qcow2, overlay") {
        assert!(
            created.stderr.contains("for Firecracker") && created.stderr.contains("--format raw"),
            "an overlay chosen for the user says what opens it: {}",
            created.stderr
        );
    }
    let again = kiln
        .run(&["disk", "create", "ok.name_1-2", "--image", &reference])
        .fails(1);
    assert!(again.stderr.contains("exists already"), "{}", again.stderr);
    // As `docker rm`: one missing disk does not keep the others.
    kiln.run(&["disk", "create", "gone", "--image", &reference])
        .ok();
    let missing = kiln.run(&["disk", "rm", "nope", "gone"]).fails(1);
    missing.assert_one_error();
    assert!(
        missing.stderr.contains("no disk \"nope\""),
        "{}",
        missing.stderr
    );
    assert_eq!(missing.stdout.trim(), "Removed: gone");
    let no_image = kiln
        .run(&["disk", "create", "x", "--image", "127.0.0.1:1/none:1"])
        .fails(1);
    assert!(no_image.stderr.contains("no image"), "{}", no_image.stderr);
    let published = || -> Vec<String> {
        std::fs::read_dir(kiln.root().join("disks-v1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != ".lock")
            .collect()
    };
    assert_eq!(
        published(),
        ["ok.name_1-2"],
        "failed creates leave nothing behind"
    );
    assert!(kiln.no_scratch(), "nor scratch");
    // A create that died after publishing its directory but before recording
    // it leaves an orphan directory: the next create of that name replaces it.
    std::fs::create_dir_all(kiln.root().join("disks-v1/orphan")).unwrap();
    std::fs::write(kiln.root().join("disks-v1/orphan/disk.raw"), b"half").unwrap();
    kiln.run(&["disk", "create", "orphan", "--image", &reference])
        .ok();
    assert_eq!(
        kiln.run(&["disk", "ls", "-q"]).ok().stdout.lines().count(),
        2
    );
    // An orphan of a name nobody creates again goes with the next prune,
    // and so does the scratch of a create killed while it copied.
    let killed = kiln.root().join("disks-v1/.making-1-2-3.tmp");
    std::fs::create_dir_all(killed.join("disk")).unwrap();
    std::fs::write(killed.join(".lock"), b"").unwrap();
    std::fs::write(killed.join("disk/disk.raw"), vec![7u8; 1 << 20]).unwrap();
    std::fs::File::open(&killed)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(60))
        .unwrap();
    std::fs::create_dir_all(kiln.root().join("disks-v1/stray")).unwrap();
    std::fs::write(
        kiln.root().join("disks-v1/stray/disk.raw"),
        vec![7u8; 1 << 20],
    )
    .unwrap();
    let pruned = kiln.run(&["prune", "--yes"]).ok();
    assert!(
        pruned
            .stdout
            .contains("1 disk directories a killed disk create left"),
        "{}",
        pruned.stdout
    );
    let mut left = published();
    left.sort();
    assert_eq!(
        left,
        ["ok.name_1-2", "orphan"],
        "the stray and the killed scratch are gone"
    );
}

#[test]
fn snapshot_round_trip() {
    let (kiln, reference, disk) = raw_work_disk("busybox:multi");
    let mnt = kiln.dir.path().join("mnt");
    mount(Path::new(&disk), &mnt, "loop,rw");
    std::fs::write(mnt.join("made-in-the-sandbox"), b"state").unwrap();
    std::fs::hard_link(mnt.join("made-in-the-sandbox"), mnt.join("made-link")).unwrap();
    let setfattr = std::process::Command::new("setfattr")
        .args(["-n", "user.kiln", "-v", "sandboxed"])
        .arg(mnt.join("made-in-the-sandbox"))
        .status()
        .expect("setfattr is installed (package attr)");
    assert!(setfattr.success());
    std::fs::remove_file(mnt.join("data/a.txt")).unwrap();
    std::fs::set_permissions(
        mnt.join("etc"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    umount(&mnt);

    let snapshot = kiln
        .run(&["snapshot", "work", "localhost/work-snap:1", "--json"])
        .ok()
        .json();
    assert_eq!(snapshot["changed"], 3, "{snapshot}");
    // Named by a digest it cannot have: refused, as `docker commit` does.
    let pinned = format!("localhost/work-snap@sha256:{}", "a".repeat(64));
    let refused = kiln.run(&["snapshot", "work", &pinned]).fails(1);
    refused.assert_one_error();
    assert!(
        refused.stderr.contains("cannot be named by a digest"),
        "{}",
        refused.stderr
    );
    assert_eq!(snapshot["removed"], 1, "{snapshot}");
    let image = &kiln
        .run(&["inspect", "--format", "json", "localhost/work-snap:1"])
        .ok()
        .json()[0];
    assert_eq!(
        image["layers"].as_array().unwrap().len(),
        4,
        "the base's three layers plus one"
    );
    assert_eq!(image["kind"], "snapshot");
    assert_eq!(
        image["config"]["Cmd"][0], "/bin/sh",
        "the base's config carries over"
    );

    // The snapshot is an image like any other: a disk made from it has the changes.
    let again = kiln
        .run(&[
            "disk",
            "create",
            "again",
            "--image",
            "localhost/work-snap:1",
            "--format",
            "raw",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    mount(Path::new(&again), &mnt, "loop,ro");
    assert_eq!(
        std::fs::read(mnt.join("made-in-the-sandbox")).unwrap(),
        b"state"
    );
    // The hardlink and the xattr made in the sandbox survive the snapshot.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(mnt.join("made-in-the-sandbox"))
            .unwrap()
            .ino(),
        std::fs::metadata(mnt.join("made-link")).unwrap().ino(),
        "one inode, two names"
    );
    let getfattr = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", "user.kiln"])
        .arg(mnt.join("made-in-the-sandbox"))
        .output()
        .unwrap();
    assert_eq!(getfattr.stdout, b"sandboxed");
    assert!(
        !mnt.join("data/a.txt").exists(),
        "the removal is a whiteout"
    );
    assert!(mnt.join("data/hard").exists());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(mnt.join("etc"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o700
    );
    umount(&mnt);
    // The base image did not change.
    let base = kiln
        .run(&["rootfs", "--format", "ext4", "--json", &reference])
        .ok()
        .json();
    mount(Path::new(base["path"].as_str().unwrap()), &mnt, "loop,ro");
    assert!(!mnt.join("made-in-the-sandbox").exists() && mnt.join("data/a.txt").exists());
    umount(&mnt);
    kiln.run(&["fsck"]).ok();

    let unknown = kiln.run(&["snapshot", "nope", "localhost/x:1"]).fails(1);
    assert!(
        unknown.stderr.contains("no disk \"nope\""),
        "{}",
        unknown.stderr
    );
    let bad = kiln.run(&["snapshot", "work", "Bad Name"]).fails(1);
    assert!(
        bad.stderr.contains("invalid image reference"),
        "{}",
        bad.stderr
    );
}

/// A sandbox can make a sparse file far larger than its disk; a layer would
/// store it in full. `snapshot` refuses, naming the file, and records
/// nothing; once the file is gone, the snapshot goes through.
#[test]
fn a_sparse_file_larger_than_the_disk_is_refused_by_snapshot() {
    let (kiln, _, disk) = raw_work_disk("busybox:1");
    let mnt = kiln.dir.path().join("mnt");
    mount(Path::new(&disk), &mnt, "loop,rw");
    let huge = std::fs::File::create(mnt.join("huge")).unwrap();
    huge.set_len(64 << 30).unwrap();
    drop(huge);
    umount(&mnt);

    let refused = kiln.run(&["snapshot", "work", "localhost/huge:1"]).fails(1);
    refused.assert_one_error();
    assert!(
        refused
            .stderr
            .lines()
            .any(|line| line.starts_with("error: /huge: "))
            && refused.stderr.contains("sparse")
            && refused.stderr.contains("hint: remove that file"),
        "{}",
        refused.stderr
    );
    let images = kiln.run(&["images", "-q"]).ok().stdout;
    assert_eq!(images.lines().count(), 1, "nothing recorded: {images}");
    kiln.run(&["fsck"]).ok();

    mount(Path::new(&disk), &mnt, "loop,rw");
    std::fs::remove_file(mnt.join("huge")).unwrap();
    umount(&mnt);
    kiln.run(&["snapshot", "work", "localhost/huge:1"]).ok();
}

/// A qcow2 disk that a VM still has open is refused by `snapshot` with
/// QEMU's lock named and a hint to stop the VM; once it stops, it works.
#[test]
fn a_disk_a_running_vm_holds_is_refused_by_snapshot() {
    let env = env();
    let kiln = Kiln::new();
    let reference = format!("{}/busybox:1", env.registry);
    kiln.run(&["pull", "--insecure", "-q", &reference]).ok();
    let disk = kiln
        .run(&[
            "disk", "create", "busy", "--image", &reference, "--format", "qcow2",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    // A VM that holds the disk and never runs (-S: stopped before its
    // first instruction).
    /// The VM, killed however the test ends.
    struct Vm(std::process::Child);
    impl Drop for Vm {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let vm = Vm(Command::new("qemu-system-x86_64")
        .args(["-M", "microvm", "-accel", "tcg", "-S", "-display", "none"])
        .args(["-serial", "none", "-monitor", "none", "-drive"])
        .arg(format!("id=d,file={disk},format=qcow2,if=none"))
        .args(["-device", "virtio-blk-device,drive=d"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 (.ci/run installs qemu-system-x86)"));
    // Wait for QEMU's locks on the file (open file description locks, no
    // pid), read from /proc/locks: taking a lock to test for them could
    // race QEMU's own and make it give up.
    use std::os::unix::fs::MetadataExt;
    let inode = format!(":{} ", std::fs::metadata(&disk).unwrap().ino());
    let held = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .any(|l| l.contains("OFDLCK") && l.contains(&inode))
    });
    assert!(held, "the VM took the disk's lock");
    let refused = kiln.run(&["snapshot", "busy", "localhost/busy:1"]);
    drop(vm);
    let refused = refused.fails(1);
    refused.assert_one_error();
    assert!(
        refused.stderr.contains("lock")
            && refused
                .stderr
                .contains("hint: a VM still has the disk open"),
        "{}",
        refused.stderr
    );
    let images = kiln.run(&["images", "-q"]).ok().stdout;
    assert_eq!(images.lines().count(), 1, "nothing recorded: {images}");
    let done = kiln
        .run(&["snapshot", "busy", "localhost/busy:1", "--json"])
        .ok()
        .json();
    assert_eq!(done["changed"], 0, "{done}");
}

#[test]
fn an_ordinary_user_snapshots_a_disk_without_root() {
    let env = env();
    let reference = format!("{}/busybox:multi", env.registry);
    let nobody = support::Nobody::new();
    nobody.run(&["pull", "--insecure", "-q", &reference]);
    let disk = nobody
        .run(&[
            "disk", "create", "work", "--image", &reference, "--format", "raw",
        ])
        .trim()
        .to_string();

    // What a sandbox does to its disk (root only plays the VM here).
    let mnt = nobody.dir.path().join("mnt");
    mount(Path::new(&disk), &mnt, "loop,rw");
    let sparse = std::fs::File::create(mnt.join("sparse")).unwrap();
    sparse.set_len(20 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    sparse.write_all_at(b"middle", 9 << 20).unwrap();
    drop(sparse);
    let long_target = "t".repeat(200);
    std::os::unix::fs::symlink(&long_target, mnt.join("long-link")).unwrap();
    let big: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(mnt.join("data/owned"), &big).unwrap();
    std::os::unix::fs::chown(mnt.join("data/owned"), Some(4321), Some(4321)).unwrap();
    let mknod = Command::new("mknod")
        .arg(mnt.join("tty9"))
        .args(["c", "4", "9"])
        .status()
        .unwrap();
    assert!(mknod.success());
    let setfattr = Command::new("setfattr")
        .args(["-n", "user.made", "-v", "by-the-vm"])
        .arg(mnt.join("long-link").with_file_name("sparse"))
        .status()
        .unwrap();
    assert!(setfattr.success());
    std::fs::remove_dir_all(mnt.join("data/dir")).unwrap();
    umount(&mnt);

    // A disk whose journal needs replaying (a VM still running, or killed)
    // is refused with a clear error.
    let debugfs = |request: &str| {
        let status = Command::new("debugfs")
            .args(["-w", "-R", request])
            .arg(&disk)
            .output()
            .unwrap();
        assert!(status.status.success());
    };
    debugfs("feature needs_recovery");
    let refused = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(nobody.dir.path().join("kiln"))
        .arg("--root")
        .arg(nobody.dir.path().join("nobody-root"))
        .args(["snapshot", "work", "localhost/refused:1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.starts_with("error: cannot read disk \"work\"") && stderr.contains("journal"),
        "{stderr}"
    );
    assert!(stderr.contains("hint:"), "{stderr}");
    debugfs("feature -needs_recovery");

    // As nobody: no mount, no root.
    let snapshot: serde_json::Value = serde_json::from_str(&nobody.run(&[
        "snapshot",
        "work",
        "localhost/nobody-snap:1",
        "--json",
    ]))
    .unwrap();
    assert_eq!(
        snapshot["changed"], 4,
        "sparse, long-link, data/owned, tty9: {snapshot}"
    );
    assert_eq!(snapshot["removed"], 1, "{snapshot}");

    let again = nobody
        .run(&[
            "disk",
            "create",
            "again",
            "--image",
            "localhost/nobody-snap:1",
            "--format",
            "raw",
        ])
        .trim()
        .to_string();
    mount(Path::new(&again), &mnt, "loop,ro");
    let checked = std::panic::catch_unwind(|| {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let sparse = std::fs::read(mnt.join("sparse")).unwrap();
        assert_eq!(sparse.len(), 20 << 20);
        assert_eq!(&sparse[9 << 20..(9 << 20) + 6], b"middle");
        assert!(sparse[..9 << 20].iter().all(|b| *b == 0));
        assert_eq!(
            std::fs::read_link(mnt.join("long-link")).unwrap(),
            Path::new(&long_target)
        );
        assert!(std::fs::read(mnt.join("data/owned")).unwrap() == big);
        let owned = std::fs::metadata(mnt.join("data/owned")).unwrap();
        assert_eq!((owned.uid(), owned.gid()), (4321, 4321));
        let tty = std::fs::symlink_metadata(mnt.join("tty9")).unwrap();
        assert!(tty.file_type().is_char_device());
        assert_eq!(tty.rdev(), 0x409);
        let getfattr = Command::new("getfattr")
            .args(["--only-values", "-n", "user.made"])
            .arg(mnt.join("sparse"))
            .output()
            .unwrap();
        assert_eq!(getfattr.stdout, b"by-the-vm");
        assert!(!mnt.join("data/dir").exists(), "the removal is a whiteout");
        assert!(mnt.join("data/a.txt").exists(), "unchanged files stay");
    });
    umount(&mnt);
    checked.unwrap();
}
