//! The flow a microVM user runs: pull → rootfs → boot. QEMU (`-M microvm`)
//! with Debian's kernel boots the initramfs, and the ext4 disk as the root
//! device (through Debian's initrd, which loads virtio-blk and ext4), to the
//! marker the image's /init prints. TCG only: /dev/kvm exists on the CI
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

/// Boots and returns the console output.
fn boot(initrd: &Path, disk: Option<&Path>, append: &str) -> String {
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
    if let Some(disk) = disk {
        command.arg("-drive").arg(format!(
            "id=root,file={},format=raw,if=none",
            disk.display()
        ));
        command.args(["-device", "virtio-blk-device,drive=root"]);
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
    let console = boot(&initramfs, None, "");
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
        Some(&disk),
        "root=/dev/vda rw init=/init",
    );
    assert!(
        console.contains("KILN-BOOT-OK from-the-image"),
        "ext4 root boot:\n{console}"
    );
}
