//! The store under stress: kill -9 and resume, concurrent pulls, prune
//! during a pull, corruption found by fsck, rmi and prune semantics.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::proxy::Proxy;
use support::{Kiln, env, skopeo_inspect, wait_for};

fn layers(reference: &str) -> Vec<(String, u64)> {
    let manifest = skopeo_inspect(reference, true);
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn kill_9_mid_pull_then_resume_fetches_fewer_bytes() {
    let env = env();
    let big = format!("{}/big:1", env.registry);
    let all_layers = layers(&big);
    let (largest, size) = all_layers.iter().max_by_key(|(_, s)| *s).cloned().unwrap();
    assert!(size > 10_000_000, "fixture big:1 has a large layer");
    let proxy = Proxy::start(&env.registry);
    proxy.throttle(Some(4_000_000));
    let kiln = Kiln::new();
    let reference = format!("{}/big:1", proxy.host());
    let mut child = kiln
        .command(&["pull", "--insecure", "-q", &reference])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let hex = largest.trim_start_matches("sha256:").to_string();
    wait_for(
        || {
            kiln.partial_files()
                .iter()
                .any(|(p, n)| p.to_string_lossy().contains(&hex) && *n > 3_000_000)
        },
        "a partial download",
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let partial = kiln
        .partial_files()
        .into_iter()
        .find(|(p, _)| p.to_string_lossy().contains(&hex))
        .unwrap()
        .1;
    assert!(partial > 0 && partial < size);
    assert!(!kiln.blob_path(&largest).exists());

    // The store is consistent after the kill: fsck finds nothing wrong.
    kiln.run(&["fsck"]).ok();

    proxy.throttle(None);
    let sent_before = proxy.bytes_for(&largest);
    let run = kiln.run(&["pull", "--insecure", &reference]).ok();
    assert!(run.stderr.contains("resuming at"), "{}", run.stderr);
    let fetched_again = proxy.bytes_for(&largest) - sent_before;
    assert!(
        fetched_again < size,
        "resumed: fetched {fetched_again} of {size} bytes"
    );
    assert!(
        fetched_again <= size - partial + 1024 * 1024,
        "only the missing part (+ slack): {fetched_again} vs {}",
        size - partial
    );
    assert!(
        proxy.requests().iter().any(|r| r.path.contains(&hex)
            && r.range.as_deref().is_some_and(|v| v.starts_with("bytes=")))
    );
    assert!(kiln.partial_files().is_empty());
    kiln.run(&["fsck"]).ok();
    proxy.stop();
}

#[test]
fn two_concurrent_pulls_download_each_blob_once() {
    let env = env();
    let proxy = Proxy::start(&env.registry);
    proxy.throttle(Some(20_000_000));
    let kiln = Kiln::new();
    let reference = format!("{}/big:1", proxy.host());
    let spawn = || {
        kiln.command(&["pull", "--insecure", "-q", &reference])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (spawn(), spawn());
    let (first, second) = (
        first.wait_with_output().unwrap(),
        second.wait_with_output().unwrap(),
    );
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(first.stdout, second.stdout);
    for (digest, size) in layers(&format!("{}/big:1", env.registry)) {
        assert_eq!(
            proxy.bytes_for(&digest),
            size,
            "layer {digest} fetched exactly once"
        );
    }
    let images = kiln.run(&["images", "--format", "json"]).ok().json();
    assert_eq!(images.as_array().unwrap().len(), 1);
    kiln.run(&["fsck"]).ok();
    proxy.stop();
}

#[test]
fn prune_during_a_pull_never_breaks_it() {
    let env = env();
    let proxy = Proxy::start(&env.registry);
    proxy.throttle(Some(8_000_000));
    let kiln = Kiln::new();
    let reference = format!("{}/big:1", proxy.host());
    let child = kiln
        .command(&["pull", "--insecure", "-q", &reference])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut prunes = 0;
    wait_for(
        || !kiln.partial_files().is_empty(),
        "the pull to start writing",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        // The pull's blobs are referenced by no image yet: only its lease keeps them.
        let run = kiln.run(&["prune", "--yes"]).ok();
        prunes += 1;
        assert!(run.stdout.contains("Removed"), "{}", run.stdout);
        if kiln.partial_files().is_empty() && prunes > 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "pull survived {prunes} prunes: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        prunes >= 3,
        "prune ran while the pull was in progress ({prunes} times)"
    );
    let images = kiln.run(&["images", "--format", "json"]).ok().json();
    assert!(
        images
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["reference"] == reference.as_str())
    );
    kiln.run(&["fsck"]).ok();
    // Now prune --all removes it, and everything it had.
    let pruned = kiln
        .run(&["prune", "--all", "--yes", "--format", "json"])
        .ok()
        .json();
    assert_eq!(pruned["images_removed"].as_array().unwrap().len(), 1);
    assert!(kiln.blob_files().is_empty());
    proxy.stop();
}

#[test]
fn fsck_finds_corruption_and_repair_leads_to_a_clean_repull() {
    let env = env();
    let kiln = Kiln::new();
    let reference = format!("{}/busybox:multi", env.registry);
    kiln.run(&["pull", "--insecure", "-q", &reference]).ok();
    let clean = kiln.run(&["fsck", "--format", "json"]).ok().json();
    assert_eq!(clean["problems"].as_array().unwrap().len(), 0);
    assert_eq!(clean["blobs_checked"], 5);

    let (layer, _) = layers(&reference)[1].clone();
    let path = kiln.blob_path(&layer);
    kiln.damage_blob(&layer);

    let found = kiln.run(&["fsck"]).fails(1);
    assert!(
        found.stdout.contains(&format!("corrupt_blob: {layer}")),
        "{}",
        found.stdout
    );
    assert!(found.stderr.contains("hint:"), "{}", found.stderr);

    let repaired = kiln
        .run(&["fsck", "--repair", "--format", "json"])
        .fails(1)
        .json();
    assert!(
        repaired["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["kind"] == "corrupt_blob" && p["repaired"].is_string())
    );
    assert!(!path.exists(), "quarantined");
    assert_eq!(
        std::fs::read_dir(kiln.root().join("content-v1/quarantine"))
            .unwrap()
            .count(),
        1
    );
    let images = kiln.run(&["images", "--format", "json"]).ok().json();
    assert_eq!(images[0]["complete"], false);

    let again = kiln.run(&["pull", "--insecure", &reference]).ok();
    assert!(
        again
            .stderr
            .contains(&format!("{}: downloading", &layer[7..19])),
        "only the lost layer is fetched: {}",
        again.stderr
    );
    kiln.run(&["fsck"]).ok();
    let images = kiln.run(&["images", "--format", "json"]).ok().json();
    assert_eq!(images[0]["complete"], true);
}

#[test]
fn rmi_keeps_shared_layers_and_refuses_what_it_cannot_find() {
    let env = env();
    let kiln = Kiln::new();
    let busybox = format!("{}/busybox:1", env.registry);
    let shared = format!("{}/shared:1", env.registry);
    kiln.run(&["pull", "--insecure", "-q", &busybox]).ok();
    kiln.run(&["pull", "--insecure", "-q", &shared]).ok();
    let base_layer = layers(&busybox)[0].0.clone();
    let own_layer = layers(&shared)[1].0.clone();

    let run = kiln.run(&["rmi", &shared]).ok();
    assert!(
        run.stdout.contains(&format!("Untagged: {shared}")),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("Deleted: sha256:"), "{}", run.stdout);
    assert!(
        kiln.blob_path(&base_layer).exists(),
        "the shared layer stays"
    );
    assert!(!kiln.blob_path(&own_layer).exists(), "its own layer goes");
    kiln.run(&["fsck"]).ok();
    kiln.run(&["pull", "--insecure", "--policy", "never", &busybox])
        .ok();

    let missing = kiln.run(&["rmi", &shared]).fails(1);
    assert!(missing.stderr.contains("no image"), "{}", missing.stderr);

    // By digest prefix.
    let digest = kiln.run(&["images", "-q"]).ok().stdout.trim().to_string();
    kiln.run(&["rmi", &digest[7..19]]).ok();
    assert!(kiln.blob_files().is_empty(), "{:?}", kiln.blob_files());
    assert_eq!(
        kiln.run(&["images", "--format", "json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn removing_by_digest_with_several_names_needs_force() {
    let env = env();
    let kiln = Kiln::new();
    let busybox = format!("{}/busybox:1", env.registry);
    let digest = kiln
        .run(&["pull", "--insecure", "-q", &busybox])
        .ok()
        .stdout
        .trim()
        .to_string();
    kiln.run(&[
        "pull",
        "--insecure",
        "-q",
        &format!("{}/busybox@{digest}", env.registry),
    ])
    .ok();
    // Pull the same manifest under a second name.
    let alias = format!("alias-{}", std::process::id());
    support::skopeo_copy(&busybox, &format!("{}/{alias}:1", env.registry));
    kiln.run(&[
        "pull",
        "--insecure",
        "-q",
        &format!("{}/{alias}:1", env.registry),
    ])
    .ok();
    let refused = kiln.run(&["rmi", &digest]).fails(1);
    assert!(refused.stderr.contains("names"), "{}", refused.stderr);
    let forced = kiln.run(&["rmi", "--force", &digest]).ok();
    assert!(forced.stdout.contains("Deleted:"), "{}", forced.stdout);
    assert!(kiln.blob_files().is_empty());
}

#[test]
fn listings_survive_a_closed_pipe_and_speak_json() {
    let env = env();
    let kiln = Kiln::new();
    for tag in ["1", "multi", "zstd"] {
        kiln.run(&[
            "pull",
            "--insecure",
            "-q",
            &format!("{}/busybox:{tag}", env.registry),
        ])
        .ok();
    }
    let mut child = kiln
        .command(&["images"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away at once
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "a broken pipe exits 0: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let images = kiln.run(&["images", "--format", "json"]).ok().json();
    let first = &images[0];
    for field in [
        "reference",
        "manifest_digest",
        "platform",
        "layers",
        "size",
        "created",
        "last_used_at",
    ] {
        assert!(
            first.get(field).is_some(),
            "images JSON has {field}: {first}"
        );
    }
    let dry = kiln
        .run(&["prune", "--dry-run", "--all", "--format", "json"])
        .ok()
        .json();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["images_removed"].as_array().unwrap().len(), 3);
    assert_eq!(
        kiln.run(&["images", "-q"]).ok().stdout.lines().count(),
        3,
        "dry run removed nothing"
    );
    let refused = kiln.run(&["prune"]).fails(1);
    assert!(refused.stderr.contains("--yes"), "{}", refused.stderr);
}

/// A tmpfs of a given size mounted for one test (tests run as root, as
/// `.ci/run` does), unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &std::path::Path, megabytes: u64) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(status.success(), "mount -t tmpfs (the tests run as root)");
        SmallDisk(at.to_path_buf())
    }

    fn resize(&self, megabytes: u64) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={megabytes}m")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remount to {megabytes} MB");
    }

    fn used_megabytes(&self) -> u64 {
        let output = std::process::Command::new("df")
            .args(["--output=used", "-B1M"])
            .arg(&self.0)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// What a full disk must give: one `error:` line naming it, a hint, a
/// non-zero exit.
fn assert_disk_full(run: &support::Run) {
    run.assert_one_error();
    assert!(
        run.stderr.contains("No space left on device"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("hint: free disk space (try `kiln prune`) and run the command again"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_full_disk_fails_cleanly_and_the_next_run_with_room_succeeds() {
    let env = env();
    let kiln = Kiln::new();
    let reference = format!("{}/big:1", env.registry);
    let disk = SmallDisk::mount(&kiln.root(), 40);

    // The pull: 75 MB of layers into 40 MB.
    let full = kiln.run(&["pull", "--insecure", "-q", &reference]).fails(1);
    assert_disk_full(&full);
    assert!(
        full.stderr.contains("content-v1/ingest/sha256-"),
        "the error names the file: {}",
        full.stderr
    );
    assert_eq!(
        kiln.run(&["images", "-q"]).ok().stdout,
        "",
        "nothing recorded"
    );
    kiln.run(&["fsck"]).ok();
    // The partial downloads, which filled the disk, are gone with the pull:
    // the room is back without waiting a day for prune to see them as
    // abandoned.
    assert!(
        disk.used_megabytes() < 5,
        "{} MB still used",
        disk.used_megabytes()
    );
    // The same with the root filesystem built while pulling; a layer that
    // happened to finish before the disk filled stays as a blob nothing
    // uses, which the hint's prune removes.
    let full = kiln
        .run(&["pull", "--insecure", "-q", "--rootfs", "erofs", &reference])
        .fails(1);
    assert_disk_full(&full);
    assert!(kiln.no_scratch(), "no scratch left");
    kiln.run(&["prune", "--yes"]).ok();
    assert!(disk.used_megabytes() < 5, "{} MB", disk.used_megabytes());
    disk.resize(400);
    kiln.run(&["pull", "--insecure", "-q", &reference]).ok();
    kiln.run(&["fsck"]).ok();

    // A conversion: an EROFS of 75 MB of contents (scratch and image) into
    // 40 MB of room.
    disk.resize(disk.used_megabytes() + 40);
    let full = kiln
        .run(&["rootfs", "--format", "erofs", &reference])
        .fails(1);
    assert_disk_full(&full);
    assert!(
        full.stderr.contains("content-v1/ingest/.work-"),
        "the error names the file: {}",
        full.stderr
    );
    assert!(kiln.no_scratch(), "no scratch left");
    let details = kiln
        .run(&["inspect", &reference, "--format", "json"])
        .ok()
        .json();
    assert_eq!(details[0]["rootfs"], serde_json::json!([]), "no artifact");
    kiln.run(&["fsck"]).ok();
    disk.resize(400);
    kiln.run(&["rootfs", "--format", "erofs", &reference]).ok();
    kiln.run(&["fsck"]).ok();

    // save -o onto the full disk: the archive's place is named, the hint is
    // about it (not the store), and no file is left.
    disk.resize(disk.used_megabytes() + 20);
    let before: Vec<_> = std::fs::read_dir(kiln.root())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let target = kiln.root().join("out.tar");
    let full = kiln
        .run(&["save", "-q", &reference, "-o", target.to_str().unwrap()])
        .fails(1);
    assert!(
        full.stderr
            .starts_with(&format!("error: cannot write {}\n", target.display())),
        "{}",
        full.stderr
    );
    assert!(
        full.stderr.contains("No space left on device"),
        "{}",
        full.stderr
    );
    assert!(
        full.stderr
            .contains("hint: free space where the archive goes"),
        "{}",
        full.stderr
    );
    let after: Vec<_> = std::fs::read_dir(kiln.root())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "no archive and no temporary file left");
    kiln.run(&["fsck"]).ok();
}

/// The conversion scratch directories (`ingest/.work-*.tmp`) in the store.
fn scratch_dirs(kiln: &Kiln) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(kiln.root().join("content-v1/ingest"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(".work-") && name.ends_with(".tmp")
        })
        .collect()
}

#[test]
fn prune_clears_a_killed_conversion_at_once_and_never_a_live_one() {
    let env = env();
    let kiln = Kiln::new();
    let reference = format!("{}/big:1", env.registry);
    kiln.run(&["pull", "--insecure", "-q", &reference]).ok();

    let mut child = kiln
        .command(&["rootfs", "--format", "ext4", &reference])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Stopped once it is unpacking (its catalog writes, the leases on the
    // layers, are done by then: a process frozen inside a write would
    // hold the catalog's lock).
    wait_for(
        || {
            scratch_dirs(&kiln).iter().any(|dir| {
                std::fs::metadata(dir.join("objects/pack")).is_ok_and(|m| m.len() > 1_000_000)
            })
        },
        "a conversion unpacking",
    );
    let pid = child.id().to_string();
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    };
    // Stopped, it is still alive: however old its scratch gets, a prune
    // leaves it alone.
    signal("STOP");
    std::thread::sleep(Duration::from_secs(6));
    kiln.run(&["prune", "--yes"]).ok();
    let scratch = scratch_dirs(&kiln);
    assert_eq!(scratch.len(), 1, "a live conversion keeps its scratch");

    // Killed, its scratch goes with the next prune, not a day later.
    signal("KILL");
    child.wait().unwrap();
    std::thread::sleep(Duration::from_secs(6));
    kiln.run(&["prune", "--yes"]).ok();
    assert_eq!(scratch_dirs(&kiln), Vec::<std::path::PathBuf>::new());
    assert!(!scratch[0].exists());

    // Nothing else was touched: the store checks out and converts again.
    kiln.run(&["fsck"]).ok();
    kiln.run(&["rootfs", "--format", "ext4", &reference]).ok();
}
