//! `kiln push` against real registries (docker-registry on 127.0.0.1:
//! plain, basic auth, TLS with a private CA), with skopeo as the peer that
//! says what the registry really holds, and a second store as "another
//! host" that pulls it back.

mod support;

use std::path::Path;
use std::process::Command;

use support::{Kiln, env, registry_digest, skopeo_inspect};

/// A repository name no other test (or earlier run) used.
fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// What must survive a push and a pull back: digests of manifest, config
/// and layers, and the platform.
fn identity(kiln: &Kiln, reference: &str) -> serde_json::Value {
    let inspected = kiln
        .run(&["inspect", reference, "--format", "json"])
        .ok()
        .json();
    let image = &inspected[0];
    serde_json::json!({
        "manifest": image["manifest_digest"],
        "media_type": image["media_type"],
        "config": image["config_digest"],
        "platform": image["platform"],
        "layers": image["layers"].as_array().map(|layers| layers
            .iter()
            .map(|l| serde_json::json!([l["digest"], l["diff_id"], l["size"], l["media_type"]]))
            .collect::<Vec<_>>()),
        "source": image["source"].as_object().map(|source| {
            let mut source = source.clone();
            source.remove("paths");
            if let Some(files) = source.get_mut("files").and_then(|f| f.as_array_mut()) {
                for file in files {
                    file.as_object_mut().unwrap().remove("path");
                }
            }
            source
        }),
    })
}

/// `kiln rootfs IMAGE ARGS... --json --insecure`, which must succeed.
fn rootfs_json(kiln: &Kiln, image: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["rootfs", image];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--json", "--insecure"]);
    kiln.run(&all).ok().json()
}

/// `kiln push ARGS... --format json`, which must succeed.
fn push_json(kiln: &Kiln, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["push"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--format", "json"]);
    kiln.run(&all).ok().json()
}

fn skopeo_raw(reference: &str, extra: &[&str]) -> serde_json::Value {
    let output = Command::new("skopeo")
        .args(["inspect", "--raw"])
        .args(extra)
        .arg(format!("docker://{reference}"))
        .output()
        .expect("skopeo is installed");
    assert!(
        output.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn push_to_another_repository_mounts_then_skips_and_keeps_every_digest() {
    let env = env();
    let kiln = Kiln::new();
    let source = format!("{}/busybox:multi", env.registry);
    kiln.run(&["pull", "-q", "--insecure", &source]).ok();
    let destination = format!("{}/{}:copy", env.registry, unique("push"));

    let pushed = push_json(&kiln, &["--insecure", &source, &destination]);
    // Same registry, another repository: every blob is mounted, none sent.
    assert_eq!(pushed["mounted"], 4, "{pushed}");
    assert_eq!(pushed["uploaded"], 0, "{pushed}");
    assert_eq!(pushed["bytes_uploaded"], 0, "{pushed}");
    assert_eq!(
        pushed["manifest_digest"].as_str().unwrap(),
        registry_digest(&source)
    );
    assert_eq!(registry_digest(&destination), registry_digest(&source));
    assert_eq!(
        skopeo_inspect(&destination, true),
        skopeo_inspect(&source, true),
        "the registry serves the same manifest"
    );

    // A second push finds every blob there (HEAD) and sends nothing.
    let again = push_json(&kiln, &["--insecure", &source, &destination]);
    assert_eq!(again["existing"], 4, "{again}");
    assert_eq!(again["uploaded"], 0);
    assert_eq!(again["mounted"], 0);

    // Plain output: progress on stderr, the digest on stdout.
    let plain = kiln
        .run(&["push", "--insecure", &source, &destination])
        .ok();
    assert_eq!(plain.stdout.trim(), registry_digest(&source));
    assert!(
        plain.stderr.contains("already on the registry"),
        "{}",
        plain.stderr
    );
}

#[test]
fn push_to_an_authenticated_registry_then_pull_back_on_a_fresh_store_is_identical() {
    let env = env();
    let kiln = Kiln::new();
    let source = format!("{}/big:1", env.registry);
    kiln.run(&["pull", "-q", "--insecure", &source]).ok();
    let destination = format!("{}/{}:1", env.auth_registry, unique("big"));

    // Without credentials the registry refuses, with a hint, and exit 1.
    let denied = kiln
        .run(&["push", "--insecure", &source, &destination])
        .fails(1);
    assert!(
        denied.stderr.contains("error:") && denied.stderr.contains("refused"),
        "{}",
        denied.stderr
    );
    assert!(denied.stderr.contains("hint:"), "{}", denied.stderr);

    kiln.docker_login(&env.auth_registry, &env.auth_user, &env.auth_password);
    let pushed = push_json(&kiln, &["--insecure", &source, &destination]);
    assert_eq!(pushed["uploaded"], 5, "config and four layers: {pushed}");
    assert!(pushed["bytes_uploaded"].as_u64().unwrap() > 75_000_000);
    assert!(
        !serde_json::to_string(&pushed)
            .unwrap()
            .contains(&env.auth_password)
    );

    let other_host = Kiln::new();
    other_host.docker_login(&env.auth_registry, &env.auth_user, &env.auth_password);
    other_host
        .run(&["pull", "-q", "--insecure", &destination])
        .ok();
    assert_eq!(
        identity(&other_host, &destination),
        identity(&kiln, &source),
        "manifest, config, layers and diff_ids survive push and pull"
    );
    other_host.run(&["fsck"]).ok();
}

#[test]
fn chunked_upload_over_tls_with_a_private_ca() {
    let env = env();
    let kiln = Kiln::new();
    let source = format!("{}/big:1", env.registry);
    kiln.run(&["pull", "-q", "--insecure", &source]).ok();
    let destination = format!("{}/{}:1", env.tls_registry, unique("chunked"));
    let ca = env.ca.to_str().unwrap();

    // The private CA is not trusted by default.
    let untrusted = kiln.run(&["push", &source, &destination]).fails(1);
    assert!(
        untrusted.stderr.contains("--ca-certs"),
        "{}",
        untrusted.stderr
    );

    // 25 MB layers in 4 MiB PATCH requests.
    let pushed = push_json(
        &kiln,
        &[
            "--ca-certs",
            ca,
            "--chunk-size",
            "4M",
            &source,
            &destination,
        ],
    );
    assert_eq!(pushed["uploaded"], 5, "{pushed}");
    let manifest = skopeo_raw(
        &destination,
        &[
            "--cert-dir",
            env.ca.parent().unwrap().join("certs.d").to_str().unwrap(),
        ],
    );
    assert_eq!(manifest, skopeo_inspect(&source, true));

    let other_host = Kiln::new();
    other_host
        .run(&["pull", "-q", "--ca-certs", ca, &destination])
        .ok();
    assert_eq!(
        identity(&other_host, &destination),
        identity(&kiln, &source)
    );
    other_host.run(&["fsck"]).ok();
}

#[test]
fn push_names_what_is_wrong() {
    let env = env();
    let kiln = Kiln::new();
    let missing = kiln
        .run(&[
            "push",
            "--insecure",
            &format!("{}/nothing:here", env.registry),
        ])
        .fails(1);
    assert!(
        missing.stderr.contains("no image") && missing.stderr.contains("kiln images"),
        "{}",
        missing.stderr
    );
    let malformed = kiln.run(&["push", "UPPER/Case::x"]).fails(1);
    assert!(malformed.stderr.contains("error:"), "{}", malformed.stderr);

    // A registry that is not there: a one-line error naming it.
    let source = format!("{}/busybox:1", env.registry);
    kiln.run(&["pull", "-q", "--insecure", &source]).ok();
    // Without a destination, only the image's own registry name is used:
    // never a digest prefix read as a Docker Hub repository.
    let digest = kiln.run(&["images", "-q"]).ok().stdout;
    let prefix = &digest.trim().trim_start_matches("sha256:")[..12];
    let guessed = kiln.run(&["push", "--insecure", prefix]).fails(1);
    assert!(
        guessed.stderr.contains("no registry name") && guessed.stderr.contains("hint:"),
        "{}",
        guessed.stderr
    );
    let own = push_json(&kiln, &["--insecure", &source]);
    assert_eq!(own["reference"], source.as_str());
    assert_eq!(own["existing"], 2, "{own}");

    let unreachable = kiln
        .run(&["push", "--insecure", &source, "127.0.0.1:9/nowhere:1"])
        .fails(1);
    assert!(
        unreachable.stderr.contains("127.0.0.1:9"),
        "{}",
        unreachable.stderr
    );
}

/// A checksum catalog on local files: a kernel and an ext4 root filesystem.
fn catalog_source(kiln: &Kiln, dir: &Path) {
    let kernel = dir.join("vmlinux");
    std::fs::write(&kernel, vec![0x5au8; 300_000]).unwrap();
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("hello"), "hello from the catalog\n").unwrap();
    let rootfs = dir.join("root.ext4");
    let status = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&tree)
        .arg(&rootfs)
        .arg("4M")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("mke2fs is installed");
    assert!(status.success());
    let sha = |path: &Path| {
        let output = Command::new("sha256sum").arg(path).output().unwrap();
        String::from_utf8(output.stdout).unwrap()[..64].to_string()
    };
    let catalog = serde_json::json!({
        "version": 1,
        "images": {"hello": {"version": "1.0", "boot_args": "console=ttyS0",
            "architectures": {"x86_64": {
                "kernel": {"url": "vmlinux", "sha256": sha(&kernel)},
                "rootfs": {"url": "root.ext4", "sha256": sha(&rootfs), "size": 4194304}
            }}}}
    });
    let path = dir.join("catalog.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&catalog).unwrap()).unwrap();
    kiln.run(&[
        "sources",
        "add",
        "mycat",
        path.to_str().unwrap(),
        "--type",
        "catalog",
    ])
    .ok();
}

#[test]
fn a_source_image_travels_as_an_oci_artifact_into_the_identical_catalog_entry() {
    let env = env();
    let kiln = Kiln::new();
    catalog_source(&kiln, kiln.dir.path());
    kiln.run(&["pull", "-q", "mycat://hello"]).ok();
    let destination = format!("{}/{}:1.0", env.registry, unique("vm/hello"));

    // A source image has no registry name of its own.
    let nowhere = kiln.run(&["push", "mycat://hello"]).fails(1);
    assert!(nowhere.stderr.contains("hint:"), "{}", nowhere.stderr);

    let pushed = push_json(&kiln, &["--insecure", "mycat://hello", &destination]);
    assert_eq!(
        pushed["artifact_type"],
        "application/vnd.kiln.source-image.v1+json"
    );
    assert_eq!(
        pushed["uploaded"], 4,
        "record + manifest.json + kernel + rootfs"
    );

    // What the registry holds: an OCI 1.1 artifact manifest.
    let manifest = skopeo_inspect(&destination, true);
    assert_eq!(
        manifest["artifactType"],
        "application/vnd.kiln.source-image.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.kiln.source-image.v1+json"
    );
    let original = identity(&kiln, "mycat://hello");
    assert_eq!(manifest["config"]["digest"], original["manifest"]);
    let media_types: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    assert!(media_types.contains(&"application/vnd.kiln.kernel"));
    assert!(media_types.contains(&"application/vnd.kiln.rootfs.ext4"));

    // Another host pulls it by its registry name: the same image, known by
    // its source name too, with its files usable.
    let other_host = Kiln::new();
    other_host
        .run(&["pull", "-q", "--insecure", &destination])
        .ok();
    assert_eq!(identity(&other_host, &destination), original);
    assert_eq!(identity(&other_host, "mycat://hello"), original);
    let disk = other_host
        .run(&["rootfs", "mycat://hello", "--format", "ext4", "--json"])
        .ok()
        .json();
    let fsck = Command::new("e2fsck")
        .args(["-fn", disk["path"].as_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    other_host.run(&["fsck"]).ok();

    // A second pull is a cache hit.
    let again = other_host
        .run(&["pull", "--insecure", &destination, "--format", "json"])
        .ok()
        .json();
    assert_eq!(again["cached"], true);
    // Asking the registry whether the tag moved finds the same artifact.
    let always = other_host
        .run(&[
            "pull",
            "--insecure",
            "--policy",
            "always",
            &destination,
            "--format",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(always["cached"], true, "{always}");
}

#[test]
fn a_pushed_rootfs_referrer_replaces_conversion_on_another_host() {
    let env = env();
    let kiln = Kiln::new();
    let source = format!("{}/busybox:multi", env.registry);
    kiln.run(&["pull", "-q", "--insecure", &source]).ok();
    let destination = format!("{}/{}:1", env.registry, unique("withrootfs"));

    let pushed = push_json(
        &kiln,
        &["--insecure", "--rootfs", "ext4", &source, &destination],
    );
    let referrer = &pushed["referrer"];
    assert_eq!(referrer["subject"], pushed["manifest_digest"]);
    assert_eq!(
        referrer["artifact_type"],
        "application/vnd.kiln.rootfs.ext4.v1"
    );
    // docker-registry 2.8 has no referrers API: the tag schema is used.
    assert_eq!(referrer["tag_schema"], true);
    let subject = pushed["manifest_digest"].as_str().unwrap();
    let tag = subject.replace(':', "-");
    let repository = destination.rsplit_once(':').unwrap().0;
    let index = skopeo_inspect(&format!("{repository}:{tag}"), true);
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(index["manifests"][0]["digest"], referrer["digest"]);
    let artifact = skopeo_inspect(
        &format!("{repository}@{}", referrer["digest"].as_str().unwrap()),
        true,
    );
    assert_eq!(artifact["subject"]["digest"], subject);
    assert_eq!(artifact["layers"][0]["digest"], referrer["rootfs"]);

    // An erofs referrer joins the same index.
    kiln.run(&[
        "push",
        "-q",
        "--insecure",
        "--rootfs",
        "erofs",
        &source,
        &destination,
    ])
    .ok();
    let index = skopeo_inspect(&format!("{repository}:{tag}"), true);
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2, "{index}");

    // Another host: pull, then `rootfs` downloads the referrer instead of
    // converting, and gets the very same file.
    let other_host = Kiln::new();
    other_host
        .run(&["pull", "-q", "--insecure", &destination])
        .ok();
    let built = rootfs_json(&other_host, &destination, &["--format", "ext4"]);
    assert_eq!(built["from_referrer"], true, "{built}");
    assert_eq!(built["digest"], referrer["rootfs"]);
    let fsck = Command::new("e2fsck")
        .args(["-fn", built["path"].as_str().unwrap()])
        .output()
        .unwrap();
    assert!(fsck.status.success());
    // Next time it is in the store.
    let again = rootfs_json(&other_host, &destination, &["--format", "ext4"]);
    assert_eq!(again["cached"], true);
    assert_eq!(again["from_referrer"], false);

    // Options must match: a sized ext4 is not what was published, so it
    // is converted here; --no-referrers converts too.
    let sized = rootfs_json(
        &other_host,
        &destination,
        &["--format", "ext4", "--size", "64M"],
    );
    assert_eq!(sized["from_referrer"], false);
    let third_host = Kiln::new();
    third_host
        .run(&["pull", "-q", "--insecure", &destination])
        .ok();
    let local = rootfs_json(
        &third_host,
        &destination,
        &["--format", "erofs", "--no-referrers"],
    );
    assert_eq!(local["from_referrer"], false);
    third_host.run(&["fsck"]).ok();
}

#[test]
fn an_imgapi_image_pulled_back_keeps_its_uuid_names_and_manifest() {
    let env = env();
    let kiln = Kiln::new();
    let dir = kiln.dir.path().join("local");
    std::fs::create_dir_all(&dir).unwrap();
    let image = support::bundles::imgapi_image(7, "base-64", "15.2.0", b"a dataset to share");
    let manifest = dir.join("image.json");
    let file = dir.join("image.gz");
    std::fs::write(&manifest, serde_json::to_vec(&image.manifest).unwrap()).unwrap();
    std::fs::write(&file, &image.file).unwrap();
    kiln.run(&[
        "install",
        "-m",
        manifest.to_str().unwrap(),
        "-f",
        file.to_str().unwrap(),
    ])
    .ok();
    let by_uuid = format!("local://{}", image.uuid());
    let destination = format!("{}/{}:15.2.0", env.registry, unique("imgapi/base-64"));
    let pushed = push_json(&kiln, &["--insecure", &by_uuid, &destination]);
    assert_eq!(
        pushed["artifact_type"],
        "application/vnd.kiln.source-image.v1+json"
    );

    let other_host = Kiln::new();
    other_host
        .run(&["pull", "-q", "--insecure", &destination])
        .ok();
    let original = identity(&kiln, &by_uuid);
    assert_eq!(identity(&other_host, &by_uuid), original);
    assert_eq!(
        identity(&other_host, "local://base-64@15.2.0"),
        original,
        "known by UUID and by name@version, as `install` names it"
    );
    assert_eq!(original["source"]["uuid"], image.uuid().as_str());
    assert!(original["source"]["manifest"].is_object(), "{original}");
    other_host.run(&["fsck"]).ok();
}

#[test]
fn push_through_token_auth_with_call_credentials_never_shows_the_password() {
    let env = env();
    let kiln = Kiln::new();
    let source = format!("{}/busybox:multi", env.registry);
    kiln.run(&["pull", "-q", "--insecure", &source]).ok();
    let destination = format!("{}/{}:1", env.token_registry, unique("token"));
    let creds = format!("{}:{}", env.auth_user, env.auth_password);
    let wrong = format!("{}:not-{}", env.auth_user, env.auth_password);

    let mut outputs = Vec::new();
    // Anonymous: the token server grants no push.
    let anonymous = kiln
        .run(&["push", "--insecure", &source, &destination])
        .fails(1);
    assert!(anonymous.stderr.contains("hint:"), "{}", anonymous.stderr);
    outputs.push(anonymous);
    // Wrong password: refused by the token server.
    let refused = kiln
        .run(&[
            "push",
            "--insecure",
            "--creds",
            &wrong,
            &source,
            &destination,
        ])
        .fails(1);
    assert!(refused.stderr.contains("refused"), "{}", refused.stderr);
    outputs.push(refused);
    // Right password given to the call: a token with push scope.
    let pushed = kiln
        .run(&[
            "push",
            "--insecure",
            "--creds",
            &creds,
            &source,
            &destination,
            "--format",
            "json",
        ])
        .ok();
    assert_eq!(pushed.json()["uploaded"], 4, "{}", pushed.stdout);
    outputs.push(pushed);

    // Another host pulls it back with a stored login.
    let other_host = Kiln::new();
    let mut login = other_host.command(&[
        "login",
        "--insecure",
        &env.token_registry,
        "-u",
        &env.auth_user,
        "--password-stdin",
    ]);
    login.stdin(std::process::Stdio::piped());
    let mut child = login
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{}", env.auth_password).unwrap();
    }
    let login = child.wait_with_output().unwrap();
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    other_host
        .run(&["pull", "-q", "--insecure", &destination])
        .ok();
    assert_eq!(
        identity(&other_host, &destination),
        identity(&kiln, &source)
    );

    for run in &outputs {
        for text in [&run.stdout, &run.stderr] {
            assert!(
                !text.contains(&env.auth_password) && !text.contains("not-kilnpass"),
                "a password in the output: {text}"
            );
        }
    }
    for text in [&login.stdout, &login.stderr] {
        assert!(!String::from_utf8_lossy(text).contains(&env.auth_password));
    }
}

#[test]
fn on_a_registry_with_the_referrers_api_no_tag_schema_is_written() {
    let env = env();
    let proxy = support::proxy::Proxy::start(&env.registry);
    proxy.referrers_api();
    let kiln = Kiln::new();
    let source = format!("{}/busybox:multi", env.registry);
    kiln.run(&["pull", "-q", "--insecure", &source]).ok();
    let repository = unique("api");
    let destination = format!("{}/{repository}:1", proxy.host());

    let pushed = push_json(
        &kiln,
        &["--insecure", "--rootfs", "ext4", &source, &destination],
    );
    let referrer = &pushed["referrer"];
    assert_eq!(referrer["tag_schema"], false, "{pushed}");
    // The registry behind the proxy has no referrers tag for it.
    let tag = pushed["manifest_digest"]
        .as_str()
        .unwrap()
        .replace(':', "-");
    let listed = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}/{repository}:{tag}", env.registry))
        .output()
        .unwrap();
    assert!(!listed.status.success(), "no tag schema index was written");

    // Another host finds it through the referrers API.
    let other_host = Kiln::new();
    other_host
        .run(&["pull", "-q", "--insecure", &destination])
        .ok();
    let built = rootfs_json(&other_host, &destination, &["--format", "ext4"]);
    assert_eq!(built["from_referrer"], true, "{built}");
    assert_eq!(built["digest"], referrer["rootfs"]);
    assert!(
        proxy
            .requests()
            .iter()
            .any(|r| r.method == "GET" && r.path.contains("/referrers/")),
        "the referrers API was asked"
    );
    // An erofs lookup finds no erofs referrer (artifactType filter) and converts.
    let erofs = rootfs_json(&other_host, &destination, &["--format", "erofs"]);
    assert_eq!(erofs["from_referrer"], false);
    proxy.stop();
}

#[test]
fn a_concurrent_update_of_the_referrers_tag_is_read_again_not_lost() {
    let env = env();
    let proxy = support::proxy::Proxy::start(&env.registry);
    let kiln = Kiln::new();
    let source = format!("{}/busybox:multi", env.registry);
    kiln.run(&["pull", "-q", "--insecure", &source]).ok();
    let repository = unique("ifmatch");
    let destination = format!("{}/{repository}:1", proxy.host());
    // The first write of the referrers tag finds it changed (412).
    proxy.add_rule(
        "/manifests/sha256-",
        Some("PUT"),
        support::proxy::Fault::Status(412, vec![]),
        1,
    );
    let pushed = push_json(
        &kiln,
        &["--insecure", "--rootfs", "ext4", &source, &destination],
    );
    assert_eq!(pushed["referrer"]["tag_schema"], true);
    let puts = proxy
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/manifests/sha256-"))
        .count();
    assert_eq!(puts, 2, "written again after the 412");
    let tag = pushed["manifest_digest"]
        .as_str()
        .unwrap()
        .replace(':', "-");
    let index = skopeo_inspect(&format!("{}/{repository}:{tag}", env.registry), true);
    assert_eq!(
        index["manifests"][0]["digest"],
        pushed["referrer"]["digest"]
    );
    proxy.stop();
}
