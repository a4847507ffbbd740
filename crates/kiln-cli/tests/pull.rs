//! `kiln pull` against real registries (docker-registry on 127.0.0.1), with
//! skopeo as the peer that says what the registry really serves.

mod support;

use support::proxy::{Fault, Proxy};
use support::{Kiln, env, registry_digest, skopeo_inspect};

fn layer_digests(reference: &str) -> Vec<String> {
    let manifest = skopeo_inspect(reference, true);
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn pull_by_tag_then_by_digest_stores_exactly_what_the_registry_serves() {
    let env = env();
    let kiln = Kiln::new();
    let reference = format!("{}/busybox:multi", env.registry);
    let expected = registry_digest(&reference);

    let run = kiln.run(&["pull", "--insecure", &reference]).ok();
    assert_eq!(
        run.stdout.trim(),
        expected,
        "stdout carries the manifest digest"
    );
    assert!(
        run.stderr.contains("downloading"),
        "progress lines on a non-terminal: {}",
        run.stderr
    );

    // Every blob on disk hashes to its name and matches the registry's layers.
    let layers = layer_digests(&reference);
    assert_eq!(layers.len(), 3);
    for layer in &layers {
        assert!(kiln.blob_path(layer).exists(), "layer {layer} stored");
    }
    for file in kiln.blob_files() {
        let bytes = std::fs::read(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let output = std::process::Command::new("sha256sum")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&output.stdout).starts_with(&name),
            "{name} hashes to its name ({} bytes)",
            bytes.len()
        );
        assert!(
            std::fs::metadata(&file).unwrap().permissions().readonly(),
            "{name} is read-only"
        );
    }

    // inspect: diff_ids equal the config's rootfs.diff_ids as skopeo reads them.
    let config = skopeo_inspect(&reference, false);
    let inspect = kiln
        .run(&["inspect", "--format", "json", &reference])
        .ok()
        .json();
    let image = &inspect[0];
    assert_eq!(image["manifest_digest"], expected.as_str());
    let diff_ids: Vec<&str> = image["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["diff_id"].as_str().unwrap())
        .collect();
    let peer_layers: Vec<&str> = config["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(
        peer_layers,
        layers.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(diff_ids.len(), 3);
    let raw_config = std::process::Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            "--config",
            "--raw",
            &format!("docker://{reference}"),
        ])
        .output()
        .unwrap();
    let raw_config: serde_json::Value = serde_json::from_slice(&raw_config.stdout).unwrap();
    let peer_diff_ids: Vec<&str> = raw_config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(diff_ids, peer_diff_ids);
    assert_eq!(image["platform"], "linux/amd64");

    // By digest: the same image, served from the store without the network.
    let by_digest = format!("{}/busybox@{expected}", env.registry);
    let again = kiln.run(&["pull", "--insecure", &by_digest]).ok();
    assert_eq!(again.stdout.trim(), expected);
    assert!(
        again.stderr.contains("already in the store"),
        "{}",
        again.stderr
    );

    // By digest into a fresh store: downloaded and verified.
    let fresh = Kiln::new();
    let run = fresh.run(&["pull", "--insecure", "-q", &by_digest]).ok();
    assert_eq!(run.stdout.trim(), expected);
    assert_eq!(run.stderr, "", "-q prints nothing on stderr");
    let images = fresh.run(&["images", "--format", "json"]).ok().json();
    assert_eq!(images[0]["reference"], by_digest.as_str());
    fresh.run(&["fsck"]).ok();
}

#[test]
fn every_layer_compression_and_manifest_format_pulls() {
    let env = env();
    let kiln = Kiln::new();
    for (tag, layer_type, manifest_type) in [
        (
            "1",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.manifest.v1+json",
        ),
        (
            "zstd",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.oci.image.manifest.v1+json",
        ),
        (
            "plain",
            "application/vnd.oci.image.layer.v1.tar",
            "application/vnd.oci.image.manifest.v1+json",
        ),
        (
            "docker",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.docker.distribution.manifest.v2+json",
        ),
    ] {
        let reference = format!("{}/busybox:{tag}", env.registry);
        kiln.run(&["pull", "--insecure", "-q", &reference]).ok();
        let image = &kiln
            .run(&["inspect", "--format", "json", &reference])
            .ok()
            .json()[0];
        assert_eq!(image["media_type"], manifest_type, "{tag}");
        for layer in image["layers"].as_array().unwrap() {
            assert_eq!(layer["media_type"], layer_type, "{tag}");
            assert!(layer["diff_id"].as_str().unwrap().starts_with("sha256:"));
        }
        let config = &image["config"];
        assert_eq!(config["Cmd"][0], "/bin/sh", "{tag}: config read");
    }
    // The zstd and plain variants have the same content as busybox:multi: the same diff_ids.
    let diff_ids = |tag: &str| -> Vec<serde_json::Value> {
        let image = &kiln
            .run(&[
                "inspect",
                "--format",
                "json",
                &format!("{}/busybox:{tag}", env.registry),
            ])
            .ok()
            .json()[0];
        image["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["diff_id"].clone())
            .collect()
    };
    kiln.run(&[
        "pull",
        "--insecure",
        "-q",
        &format!("{}/busybox:multi", env.registry),
    ])
    .ok();
    assert_eq!(diff_ids("zstd"), diff_ids("multi"));
    assert_eq!(diff_ids("plain"), diff_ids("multi"));
    let images = kiln.run(&["images"]).ok();
    assert!(images.stdout.starts_with("REFERENCE"), "{}", images.stdout);
    assert_eq!(images.stdout.lines().count(), 6, "{}", images.stdout);
}

#[test]
fn platform_selection_from_an_index() {
    let env = env();
    let kiln = Kiln::new();
    let reference = format!("{}/multiarch:1", env.registry);
    let index = skopeo_inspect(&reference, true);
    let arm = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == "arm64")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let amd = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == "amd64")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();

    let run = kiln
        .run(&[
            "pull",
            "--insecure",
            "--platform",
            "linux/arm64",
            &reference,
        ])
        .ok();
    assert_eq!(run.stdout.trim(), arm);
    let run = kiln.run(&["pull", "--insecure", &reference]).ok();
    assert_eq!(run.stdout.trim(), amd, "the host platform by default");

    // Both platforms side by side under one name.
    let images = kiln.run(&["images", "--format", "json"]).ok().json();
    let mut platforms: Vec<&str> = images
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["platform"].as_str().unwrap())
        .collect();
    platforms.sort();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64/v8"]);
    let index_digest = registry_digest(&reference);
    assert!(
        images
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["index_digest"] == index_digest.as_str())
    );
    let inspect = kiln
        .run(&[
            "inspect",
            "--platform",
            "linux/arm64",
            "--format",
            "json",
            &reference,
        ])
        .ok()
        .json();
    assert_eq!(inspect.as_array().unwrap().len(), 1);
    assert_eq!(inspect[0]["manifest_digest"], arm.as_str());

    // A cached platform answers without the network; a missing one names the choices.
    kiln.run(&[
        "pull",
        "--insecure",
        "--platform",
        "linux/arm64",
        "--policy",
        "never",
        &reference,
    ])
    .ok();
    let missing = kiln
        .run(&[
            "pull",
            "--insecure",
            "--platform",
            "linux/s390x",
            &reference,
        ])
        .fails(1);
    assert!(
        missing.stderr.contains("no image for platform linux/s390x"),
        "{}",
        missing.stderr
    );
    assert!(
        missing.stderr.contains("linux/amd64") && missing.stderr.contains("linux/arm64"),
        "{}",
        missing.stderr
    );
    assert!(missing.stderr.contains("hint:"), "{}", missing.stderr);
    let bad = kiln
        .run(&["pull", "--platform", "linux", &reference])
        .fails(1);
    assert!(
        bad.stderr.contains("invalid platform \"linux\""),
        "{}",
        bad.stderr
    );
}

#[test]
fn basic_auth_from_docker_config() {
    let env = env();
    let kiln = Kiln::new();
    let reference = format!("{}/busybox:1", env.auth_registry);
    let denied = kiln.run(&["pull", "--insecure", &reference]).fails(1);
    assert!(
        denied.stderr.contains("refused access"),
        "{}",
        denied.stderr
    );
    assert!(
        denied.stderr.contains("hint:") && denied.stderr.contains("login"),
        "{}",
        denied.stderr
    );

    kiln.docker_login(&env.auth_registry, &env.auth_user, "wrong-password");
    let wrong = kiln.run(&["pull", "--insecure", &reference]).fails(1);
    assert!(
        !wrong.stderr.contains("wrong-password"),
        "secrets never printed"
    );

    kiln.docker_login(&env.auth_registry, &env.auth_user, &env.auth_password);
    let run = kiln.run(&["pull", "--insecure", &reference]).ok();
    assert!(!run.stderr.contains(&env.auth_password) && !run.stdout.contains(&env.auth_password));
    assert_eq!(
        run.stdout.trim(),
        registry_digest(&format!("{}/busybox:1", env.registry)),
        "same image as on the open registry"
    );
}

#[test]
fn bearer_token_flow_and_no_credentials_across_redirects() {
    let env = env();
    let proxy = Proxy::start(&env.registry);
    proxy.require_bearer(Some(("tokenuser", "tokenpass")));
    proxy.redirect_blobs();
    let kiln = Kiln::new();
    let reference = format!("{}/busybox:1", proxy.host());

    let denied = kiln.run(&["pull", "--insecure", &reference]).fails(1);
    assert!(
        denied.stderr.contains("credentials required"),
        "{}",
        denied.stderr
    );

    kiln.docker_login(&proxy.host(), "tokenuser", "tokenpass");
    kiln.run(&["pull", "--insecure", &reference]).ok();
    let requests = proxy.requests();
    assert!(requests.iter().any(|r| {
        r.path.starts_with("/token")
            && r.authorization
                .as_deref()
                .is_some_and(|a| a.starts_with("Basic "))
    }));
    let registry_side: Vec<_> = requests
        .iter()
        .filter(|r| r.port == proxy.address.port() && r.path.contains("/manifests/"))
        .collect();
    assert!(
        registry_side
            .iter()
            .any(|r| r.authorization.as_deref() == Some("Bearer kiln-test-token-7f3a"))
    );
    let storage_side: Vec<_> = requests
        .iter()
        .filter(|r| r.port == proxy.storage_address.port())
        .collect();
    assert!(
        !storage_side.is_empty(),
        "blobs were fetched from the redirect target"
    );
    for request in storage_side {
        assert_eq!(
            request.authorization, None,
            "Authorization must not follow a redirect to {}",
            request.path
        );
    }
    proxy.stop();
}

#[test]
fn tls_is_verified_by_default_and_accepts_a_private_ca() {
    let env = env();
    let kiln = Kiln::new();
    let reference = format!("{}/busybox:1", env.tls_registry);
    let refused = kiln.run(&["pull", &reference]).fails(1);
    assert!(
        refused.stderr.contains("cannot reach registry"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("--ca-certs"),
        "hint names the fix: {}",
        refused.stderr
    );

    kiln.run(&["pull", "--ca-certs", env.ca.to_str().unwrap(), &reference])
        .ok();
    let other = Kiln::new();
    other.run(&["pull", "--insecure", &reference]).ok();

    let missing_ca = Kiln::new()
        .run(&["pull", "--ca-certs", "/nonexistent/ca.pem", &reference])
        .fails(1);
    assert!(
        missing_ca.stderr.contains("/nonexistent/ca.pem"),
        "{}",
        missing_ca.stderr
    );
}

#[test]
fn shared_layers_are_downloaded_and_stored_once() {
    let env = env();
    let proxy = Proxy::start(&env.registry);
    let kiln = Kiln::new();
    kiln.run(&[
        "pull",
        "--insecure",
        "-q",
        &format!("{}/busybox:1", proxy.host()),
    ])
    .ok();
    let base = layer_digests(&format!("{}/busybox:1", env.registry));
    let shared = layer_digests(&format!("{}/shared:1", env.registry));
    assert_eq!(
        base[0], shared[0],
        "fixture: shared:1 reuses busybox:1's layer"
    );
    let before = proxy.bytes_for(&base[0]);
    assert!(before > 0);
    let blobs_before = kiln.blob_files().len();

    let run = kiln
        .run(&["pull", "--insecure", &format!("{}/shared:1", proxy.host())])
        .ok();
    assert!(
        run.stderr.contains("already in the store"),
        "{}",
        run.stderr
    );
    assert_eq!(
        proxy.bytes_for(&base[0]),
        before,
        "the shared layer was not fetched again"
    );
    assert!(proxy.bytes_for(&shared[1]) > 0);
    // New: its manifest, config and one layer.
    assert_eq!(kiln.blob_files().len(), blobs_before + 3);
    proxy.stop();
}

#[test]
fn transient_faults_are_survived() {
    let env = env();
    let reference_of = |proxy: &Proxy| format!("{}/busybox:multi", proxy.host());
    let layers = layer_digests(&format!("{}/busybox:multi", env.registry));
    let expected = registry_digest(&format!("{}/busybox:multi", env.registry));
    let faults: Vec<(&str, Fault, usize)> = vec![
        ("500 twice", Fault::Status(500, vec![]), 2),
        ("503 on the manifest", Fault::Status(503, vec![]), 1),
        (
            "429 with Retry-After",
            Fault::Status(429, vec![("Retry-After".into(), "1".into())]),
            1,
        ),
        ("connection reset mid-body", Fault::ResetAfter(20_000), 2),
        ("truncated body", Fault::Truncate(30_000), 1),
        ("bad bytes once", Fault::Corrupt, 1),
    ];
    for (name, fault, times) in faults {
        let proxy = Proxy::start(&env.registry);
        let target = if name.contains("manifest") {
            "/manifests/".to_string()
        } else {
            layers[0].clone()
        };
        proxy.add_rule(&target, Some("GET"), fault, times);
        let kiln = Kiln::new();
        let run = kiln.run(&["pull", "--insecure", &reference_of(&proxy)]);
        let run = run.ok();
        assert_eq!(run.stdout.trim(), expected, "{name}");
        assert!(
            run.stderr.contains("retrying"),
            "{name}: retries are reported: {}",
            run.stderr
        );
        if name.contains("Retry-After") {
            assert!(
                run.stderr.contains("in 1.0s"),
                "{name}: Retry-After honoured: {}",
                run.stderr
            );
        }
        if name.contains("reset") || name.contains("truncated") {
            assert!(
                proxy.requests().iter().any(|r| r.range.is_some()),
                "{name}: resumed with a Range request"
            );
        }
        kiln.run(&["fsck"]).ok();
        proxy.stop();
    }
}

#[test]
fn bad_bytes_are_never_committed() {
    let env = env();
    let proxy = Proxy::start(&env.registry);
    let layers = layer_digests(&format!("{}/busybox:multi", env.registry));
    proxy.add_rule(&layers[1], Some("GET"), Fault::Corrupt, usize::MAX);
    let kiln = Kiln::new();
    let run = kiln
        .run(&[
            "pull",
            "--insecure",
            &format!("{}/busybox:multi", proxy.host()),
        ])
        .fails(1);
    assert!(run.stderr.contains("digest mismatch"), "{}", run.stderr);
    assert!(
        !kiln.blob_path(&layers[1]).exists(),
        "the corrupt layer is not in the store"
    );
    assert!(kiln.partial_files().iter().all(|(p, _)| {
        !p.to_string_lossy()
            .contains(layers[1].trim_start_matches("sha256:"))
    }));
    let images = kiln.run(&["images", "--format", "json"]).ok().json();
    assert_eq!(images.as_array().unwrap().len(), 0, "no image recorded");
    kiln.run(&["fsck"]).ok();
    proxy.stop();
}

#[test]
fn unreachable_registry_and_bad_references_fail_cleanly() {
    let kiln = Kiln::new();
    let run = kiln
        .run(&["pull", "--insecure", "127.0.0.1:9/nothing:1"])
        .fails(1);
    assert!(
        run.stderr
            .contains("\nerror: cannot reach registry 127.0.0.1:9"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("retrying manifest 127.0.0.1:9/nothing:1"),
        "connection errors are retried: {}",
        run.stderr
    );
    for (reference, part) in [
        ("Busybox", "must be lowercase"),
        ("busybox:bad tag!", "tag"),
        ("busybox@sha256:123", "malformed hex"),
    ] {
        let run = kiln.run(&["pull", reference]).fails(1);
        assert!(run.stderr.contains(part), "{reference}: {}", run.stderr);
    }
    let env = env();
    let missing = kiln
        .run(&[
            "pull",
            "--insecure",
            &format!("{}/does-not-exist:1", env.registry),
        ])
        .fails(1);
    assert!(missing.stderr.contains("not found"), "{}", missing.stderr);
    assert!(kiln.blob_files().is_empty());
}

#[test]
fn pull_policies() {
    let env = env();
    let kiln = Kiln::new();
    let proxy = Proxy::start(&env.registry);
    let repository = format!("moving-{}", std::process::id());
    support::skopeo_copy(
        &format!("{}/busybox:1", env.registry),
        &format!("{}/{repository}:1", env.registry),
    );
    let reference = format!("{}/{repository}:1", proxy.host());

    let never = kiln
        .run(&["pull", "--insecure", "--policy", "never", &reference])
        .fails(1);
    assert!(
        never.stderr.contains("pull policy is `never`"),
        "{}",
        never.stderr
    );
    let first = kiln
        .run(&["pull", "--insecure", "-q", &reference])
        .ok()
        .stdout;

    // Missing: served from the store with no request at all, even with the registry gone.
    let before = proxy.requests().len();
    let cached = kiln
        .run(&["pull", "--insecure", "-q", &reference])
        .ok()
        .stdout;
    assert_eq!(cached, first);
    assert_eq!(
        proxy.requests().len(),
        before,
        "a cached pull makes no request"
    );

    // Always: the tag moved, so the new image comes.
    support::skopeo_copy(
        &format!("{}/shared:1", env.registry),
        &format!("{}/{repository}:1", env.registry),
    );
    let moved = kiln
        .run(&["pull", "--insecure", "-q", "--policy", "always", &reference])
        .ok()
        .stdout;
    assert_ne!(moved, first);
    assert_eq!(
        moved.trim(),
        registry_digest(&format!("{}/shared:1", env.registry))
    );
    // Always with no change: a HEAD request only.
    let before = proxy.requests().len();
    kiln.run(&["pull", "--insecure", "-q", "--policy", "always", &reference])
        .ok();
    let new: Vec<_> = proxy.requests().into_iter().skip(before).collect();
    assert!(new.iter().all(|r| r.method == "HEAD"), "{new:?}");

    // The old image lost its name: prune removes it.
    let images = kiln.run(&["images", "--format", "json"]).ok().json();
    assert!(
        images
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["reference"].is_null())
    );
    let pruned = kiln
        .run(&["prune", "--yes", "--format", "json"])
        .ok()
        .json();
    assert_eq!(pruned["images_removed"].as_array().unwrap().len(), 1);
    assert_eq!(pruned["images_removed"][0], first.trim());

    proxy.stop();
    let offline = kiln.run(&["pull", "--insecure", "-q", &reference]).ok();
    assert_eq!(offline.stdout, moved, "works offline");

    // --force downloads again.
    let proxy2 = Proxy::start(&env.registry);
    let forced = kiln
        .run(&[
            "pull",
            "--insecure",
            "-q",
            "--force",
            &format!("{}/{repository}:1", proxy2.host()),
        ])
        .ok();
    assert_eq!(forced.stdout, moved);
    let layers = layer_digests(&format!("{}/shared:1", env.registry));
    assert!(
        proxy2.bytes_for(&layers[0]) > 0,
        "--force fetched the layer again"
    );
    proxy2.stop();
}

/// `pull --rootfs` through the same faults: a resumed download replays its
/// partial file into the unpacking, a corrupt download is unpacked again
/// from scratch, and the result is still exactly the image `kiln rootfs`
/// builds; a download that never checks out leaves no image, artifact or
/// scratch behind.
#[test]
fn pull_rootfs_survives_faults_and_fails_cleanly() {
    let env = env();
    let direct = format!("{}/busybox:multi", env.registry);
    let layers = layer_digests(&direct);
    let reference = Kiln::new();
    reference.run(&["pull", "--insecure", "-q", &direct]).ok();
    let expected = reference
        .run(&["rootfs", "--format", "ext4", "--json", &direct])
        .ok()
        .json()["digest"]
        .clone();
    for (name, fault) in [
        ("connection reset mid-body", Fault::ResetAfter(20_000)),
        ("bad bytes once", Fault::Corrupt),
    ] {
        let proxy = Proxy::start(&env.registry);
        proxy.add_rule(&layers[0], Some("GET"), fault, 1);
        let kiln = Kiln::new();
        let pulled = kiln
            .run(&[
                "pull",
                "--insecure",
                "--format",
                "json",
                "--rootfs",
                "ext4",
                &format!("{}/busybox:multi", proxy.host()),
            ])
            .ok()
            .json();
        assert_eq!(pulled["rootfs"][0]["digest"], expected, "{name}");
        assert_eq!(
            pulled["rootfs"][0]["unpacked_while_pulling"], true,
            "{name}"
        );
        if name.contains("reset") {
            assert!(
                proxy.requests().iter().any(|r| r.range.is_some()),
                "{name}: resumed with a Range request"
            );
        }
        assert!(kiln.no_scratch(), "{name}: no scratch left");
        kiln.run(&["fsck"]).ok();
        proxy.stop();
    }

    let proxy = Proxy::start(&env.registry);
    proxy.add_rule(&layers[1], Some("GET"), Fault::Corrupt, usize::MAX);
    let kiln = Kiln::new();
    // One layer at a time, so the base layer is committed before the
    // corrupt one fails the pull.
    let run = kiln
        .run(&[
            "pull",
            "--insecure",
            "--concurrency",
            "1",
            "--rootfs",
            "ext4",
            "--rootfs",
            "erofs",
            &format!("{}/busybox:multi", proxy.host()),
        ])
        .fails(1);
    assert!(run.stderr.contains("digest mismatch"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "no digest, no path: {}", run.stdout);
    let images = kiln.run(&["images", "--format", "json"]).ok().json();
    assert_eq!(images.as_array().unwrap().len(), 0, "no image recorded");
    assert!(kiln.no_scratch(), "a failed pull leaves no scratch");
    kiln.run(&["fsck"]).ok();
    proxy.stop();

    // The layers that did check out stay in the store, without a recorded
    // diff_id: the next pull reads each once for its diff_id and its tree.
    assert!(kiln.blob_path(&layers[0]).exists());
    let pulled = kiln
        .run(&[
            "pull",
            "--insecure",
            "--format",
            "json",
            "--rootfs",
            "ext4",
            &direct,
        ])
        .ok()
        .json();
    assert_eq!(pulled["rootfs"][0]["digest"], expected);
    assert_eq!(pulled["rootfs"][0]["unpacked_while_pulling"], true);
}
