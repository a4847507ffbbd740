//! The flow a microVM user runs: pull → rootfs → disk → boot → snapshot. QEMU (`-M
//! microvm`) with Debian's kernel boots the initramfs, and the ext4 image
//! and a sandbox disk made from it as the root device (through Debian's initrd, which loads virtio-blk and ext4), to the
//! marker the image's /init prints; and the EROFS image as the root device
//! (through a small initramfs of its own that loads virtio and EROFS). TCG only: /dev/kvm exists on the CI
//! machines but a KVM guest hangs there, and `-accel kvm -accel tcg` does
//! not fall back when KVM opens but cannot run.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{Kiln, env};

fn newest(prefix: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .expect("/boot exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| panic!("no /boot/{prefix}*: .ci/run installs linux-image-amd64"))
}

/// Boots with `disks` as virtio disks (vda, vdb, ... in that order;
/// read-only unless `writable`; qcow2 when named `*.qcow2`, else raw) and
/// returns the console output.
fn boot(initrd: &Path, disks: &[&Path], writable: bool, append: &str) -> String {
    let mut command = Command::new("timeout");
    command.args([
        "240",
        "qemu-system-x86_64",
        "-M",
        "microvm",
        "-accel",
        "tcg",
        "-m",
        "512",
        "-no-reboot",
        "-nographic",
    ]);
    command
        .arg("-kernel")
        .arg(newest("vmlinuz-"))
        .arg("-initrd")
        .arg(initrd);
    for (index, disk) in disks.iter().enumerate() {
        let format = if disk.extension().is_some_and(|e| e == "qcow2") {
            "qcow2"
        } else {
            "raw"
        };
        command.arg("-drive").arg(format!(
            "id=disk{index},file={},format={format},if=none,readonly={}",
            disk.display(),
            if writable { "off" } else { "on" }
        ));
        command
            .arg("-device")
            .arg(format!("virtio-blk-device,drive=disk{index}"));
    }
    command.arg("-append").arg(format!(
        "console=ttyS0 tsc_early_khz=2000000 panic=-1 quiet {append}"
    ));
    let output = command
        .output()
        .expect("qemu-system-x86_64 is installed (.ci/run installs qemu-system-x86)");
    String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr)
}

#[test]
fn pulled_images_boot_as_initramfs_and_as_ext4_root() {
    let env = env();
    let kiln = Kiln::new();
    let reference = format!("{}/boot:1", env.registry);
    kiln.run(&["pull", "--insecure", "-q", &reference]).ok();

    let initramfs = kiln.dir.path().join("initramfs.img");
    kiln.run(&[
        "rootfs",
        "--format",
        "initramfs",
        &reference,
        "-o",
        initramfs.to_str().unwrap(),
    ])
    .ok();
    let console = boot(&initramfs, &[], false, "");
    assert!(
        console.contains("KILN-BOOT-OK from-the-image"),
        "initramfs boot:\n{console}"
    );

    let disk = kiln.dir.path().join("root.ext4");
    kiln.run(&[
        "rootfs",
        "--format",
        "ext4",
        &reference,
        "-o",
        disk.to_str().unwrap(),
    ])
    .ok();
    let console = boot(
        &newest("initrd.img-"),
        &[&disk],
        true,
        "root=/dev/vda rw init=/init",
    );
    assert!(
        console.contains("KILN-BOOT-OK from-the-image"),
        "ext4 root boot:\n{console}"
    );

    // A sandbox's own disk (here a qcow2 overlay on the cached image: the
    // store's ext4 has no reflink) boots read-write, and the VM's writes
    // go into it.
    let sandbox = kiln
        .run(&["disk", "create", "vm1", "--image", &reference, "--json"])
        .ok()
        .json();
    let sandbox_disk = PathBuf::from(sandbox["path"].as_str().unwrap());
    let console = boot(
        &newest("initrd.img-"),
        &[&sandbox_disk],
        true,
        "root=/dev/vda rw init=/init",
    );
    assert!(
        console.contains("KILN-BOOT-OK from-the-image"),
        "boot of the sandbox disk {}:\n{console}",
        sandbox_disk.display()
    );
    let after = kiln.run(&["disk", "ls", "--format", "json"]).ok().json();
    assert!(
        after[0]["allocated"].as_u64() > sandbox["allocated"].as_u64(),
        "the VM wrote to its own disk (its superblock and journal at mount): {} then {}",
        sandbox["allocated"],
        after[0]["allocated"]
    );
    let check = Command::new("qemu-img")
        .arg("check")
        .arg(&sandbox_disk)
        .output()
        .unwrap();
    assert!(
        check.status.success() || sandbox["format"] == "raw",
        "{check:?}"
    );

    // What the VM writes is what a snapshot of its disk holds: a shell as
    // init writes a file, remounts read-only (a clean journal) and stops.
    let console = boot(
        &newest("initrd.img-"),
        &[&sandbox_disk],
        true,
        "root=/dev/vda rw init=/bin/busybox -- sh -c \"echo made-in-the-vm > /made; \
         mount -o remount,ro /; echo KILN-WROTE; poweroff -f\"",
    );
    assert!(console.contains("KILN-WROTE"), "{console}");
    let snapshot = kiln
        .run(&["snapshot", "vm1", "localhost/vm1:1", "--json"])
        .ok()
        .json();
    assert_eq!(snapshot["changed"], 1, "{snapshot}");
    let image = kiln.dir.path().join("vm1.ext4");
    kiln.run(&[
        "rootfs",
        "--format",
        "ext4",
        "localhost/vm1:1",
        "-o",
        image.to_str().unwrap(),
    ])
    .ok();
    let made = Command::new("debugfs")
        .args(["-R", "cat /made"])
        .arg(&image)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&made.stdout), "made-in-the-vm\n");
    kiln.run(&["fsck"]).ok();
}

/// A minimal initramfs for an EROFS root with Debian's modular kernel: a
/// static busybox and an /init that loads virtio-mmio, virtio-blk and EROFS
/// (Debian's own initrd has no EROFS module), mounts /dev/vda read-only and
/// hands over to the image's /init.
fn erofs_loader(dir: &Path, extra_devices: usize) -> PathBuf {
    let kernel = newest("vmlinuz-");
    let release = kernel
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    let tree = dir.join("loader");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::create_dir_all(tree.join("m")).unwrap();
    for sub in ["dev", "proc", "sys", "newroot"] {
        std::fs::create_dir_all(tree.join(sub)).unwrap();
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox"))
        .expect("/bin/busybox (.ci/run installs busybox-static)");
    let mut script = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t devtmpfs dev /dev\n\
         /bin/busybox mount -t proc proc /proc\n\
         devices=\n\
         for arg in $(/bin/busybox cat /proc/cmdline); do\n\
         case $arg in virtio_mmio.device=*) devices=\"$devices device=${arg#virtio_mmio.device=}\";; esac\n\
         done\n",
    );
    // In load order, each after what it needs (crc32c_generic: what
    // libcrc32c asks the crypto API for). Found with modinfo, so a kernel
    // that builds one in, or compresses its modules, works too.
    for name in [
        "crc32c_generic",
        "libcrc32c",
        "erofs",
        "virtio_ring",
        "virtio",
        "virtio_mmio",
        "virtio_blk",
    ] {
        let found = Command::new("modinfo")
            .args(["-k", &release, "-n", name])
            .output()
            .expect("modinfo (kmod)");
        let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
        assert!(found.status.success(), "module {name} of {release}: {path}");
        if path == "(builtin)" {
            continue;
        }
        let unpack = match Path::new(&path).extension().and_then(|e| e.to_str()) {
            Some("xz") => Some("xz"),
            Some("zst") => Some("zstd"),
            Some("gz") => Some("gzip"),
            _ => None,
        };
        let target = tree.join("m").join(format!("{name}.ko"));
        match unpack {
            None => {
                std::fs::copy(&path, &target).unwrap_or_else(|e| panic!("{path}: {e}"));
            }
            Some(tool) => {
                let bytes = Command::new(tool).args(["-dc", &path]).output().unwrap();
                assert!(bytes.status.success(), "{tool} -dc {path}");
                std::fs::write(&target, bytes.stdout).unwrap();
            }
        }
        let parameters = if name == "virtio_mmio" {
            " $devices"
        } else {
            ""
        };
        script += &format!("/bin/busybox insmod /m/{name}.ko{parameters}\n");
    }
    // vdb, vdc, ...: a layered image's layer files, in device order.
    let names: Vec<String> = (0..extra_devices)
        .map(|n| format!("/dev/vd{}", (b'b' + n as u8) as char))
        .collect();
    let devices: String = names.iter().map(|d| format!(",device={d}")).collect();
    let last = names.last().cloned().unwrap_or_else(|| "/dev/vda".into());
    script += &format!(
        "for _ in 1 2 3 4 5 6 7 8 9 10; do [ -b {last} ] && break; /bin/busybox sleep 0.5; done\n\
         /bin/busybox mount -t erofs -o ro{devices} /dev/vda /newroot || echo KILN-EROFS-MOUNT-FAILED\n\
         /bin/busybox umount /proc\n\
         /bin/busybox mount --move /dev /newroot/dev 2>/dev/null || /bin/busybox umount /dev\n\
         exec /bin/busybox switch_root /newroot /init\n"
    );
    std::fs::write(tree.join("init"), script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tree.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let image = dir.join("loader.cpio.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio -o -H newc --quiet | gzip -1 > {}",
            tree.display(),
            image.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "cpio (.ci/run installs it)");
    image
}

#[test]
fn pulled_image_boots_from_an_erofs_root() {
    let env = env();
    let kiln = Kiln::new();
    let reference = format!("{}/boot:1", env.registry);
    let disk = kiln.dir.path().join("root.erofs");
    kiln.run(&["pull", "--insecure", "-q", "--rootfs", "erofs", &reference])
        .ok();
    kiln.run(&[
        "rootfs",
        "--format",
        "erofs",
        &reference,
        "-o",
        disk.to_str().unwrap(),
    ])
    .ok();
    let loader = erofs_loader(kiln.dir.path(), 0);
    let console = boot(&loader, &[&disk], false, "");
    assert!(
        !console.contains("KILN-EROFS-MOUNT-FAILED"),
        "the EROFS root did not mount:\n{console}"
    );
    assert!(
        console.contains("KILN-BOOT-OK from-the-image"),
        "EROFS root boot:\n{console}"
    );
}

#[test]
fn pulled_image_boots_from_a_layered_erofs_root() {
    let env = env();
    let kiln = Kiln::new();
    let reference = format!("{}/boot:1", env.registry);
    kiln.run(&["pull", "--insecure", "-q", &reference]).ok();
    let paths = kiln
        .run(&["rootfs", "--format", "erofs", "--layered", &reference])
        .ok()
        .stdout;
    // The store's files, attached read-only: the metadata image, then
    // each layer file.
    let disks: Vec<&Path> = paths.lines().map(Path::new).collect();
    assert!(disks.len() >= 2, "{paths}");
    let loader = erofs_loader(kiln.dir.path(), disks.len() - 1);
    let console = boot(&loader, &disks, false, "");
    assert!(
        !console.contains("KILN-EROFS-MOUNT-FAILED"),
        "the layered EROFS root did not mount:\n{console}"
    );
    assert!(
        console.contains("KILN-BOOT-OK from-the-image"),
        "layered EROFS root boot:\n{console}"
    );
}
