//! `kiln load` and `kiln save`: round trips through a fresh store, skopeo as
//! the peer both ways (docker-archive: and oci-archive:), multi-platform OCI
//! layouts, and hostile or broken archives that must leave nothing behind.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use support::{Kiln, env};

/// `$KILN_TEST_ENV_DIR/digests.json`: what the registry serves for each fixture.
fn digests() -> Value {
    let dir =
        std::env::var("KILN_TEST_ENV_DIR").expect("KILN_TEST_ENV_DIR (run .ci/testenv.sh up)");
    serde_json::from_slice(&std::fs::read(Path::new(&dir).join("digests.json")).unwrap()).unwrap()
}

fn fixtures() -> PathBuf {
    PathBuf::from(
        std::env::var("KILN_TEST_FIXTURES").expect("KILN_TEST_FIXTURES (run .ci/testenv.sh up)"),
    )
}

/// Manifest digest, config digest, and (layer digest, diff_id) pairs.
fn identity(kiln: &Kiln, reference: &str) -> (String, String, Vec<(String, String)>) {
    let details = kiln
        .run(&["inspect", reference, "--format", "json"])
        .ok()
        .json();
    let image = &details[0];
    let layers = image["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_string(),
                l["diff_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (
        image["manifest_digest"].as_str().unwrap().to_string(),
        image["config_digest"].as_str().unwrap().to_string(),
        layers,
    )
}

fn expected_identity(fixture: &Value) -> (String, String, Vec<(String, String)>) {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    (
        fixture["digest"].as_str().unwrap().to_string(),
        fixture["config"].as_str().unwrap().to_string(),
        strings(&fixture["layers"])
            .into_iter()
            .zip(strings(&fixture["diff_ids"]))
            .collect(),
    )
}

fn skopeo(args: &[&str]) {
    let output = Command::new("skopeo")
        .args(args)
        .output()
        .expect("skopeo is installed (.ci/run installs it)");
    assert!(
        output.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn sh(script: &str) {
    let status = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .status()
        .unwrap();
    assert!(status.success(), "{script}");
}

/// The store holds no image and, after `prune`, no blob and no partial file.
fn assert_store_empty(kiln: &Kiln) {
    let images = kiln.run(&["images", "--format", "json"]).ok().json();
    assert_eq!(images, serde_json::json!([]), "no image recorded");
    kiln.run(&["prune", "--yes"]).ok();
    assert!(
        kiln.blob_files().is_empty(),
        "blobs left: {:?}",
        kiln.blob_files()
    );
    assert!(kiln.partial_files().is_empty(), "partial files left");
}

#[test]
fn save_then_load_keeps_every_digest() {
    let env = env();
    let digests = digests();
    let source = Kiln::new();
    let tags = [
        "busybox:1",
        "busybox:multi",
        "busybox:zstd",
        "busybox:plain",
    ];
    let references: Vec<String> = tags
        .iter()
        .map(|t| format!("{}/{t}", env.registry))
        .collect();
    for reference in &references {
        source.run(&["pull", "-q", "--insecure", reference]).ok();
    }
    let work = tempfile::tempdir().unwrap();
    for format in ["docker", "oci"] {
        let archive = work.path().join(format!("all-{format}.tar"));
        let mut args = vec!["save", "--format", format, "-o", archive.to_str().unwrap()];
        args.extend(references.iter().map(String::as_str));
        let run = source.run(&args).ok();
        assert!(run.stdout.is_empty(), "nothing on stdout with -o");
        // The base layer is shared by busybox:1 and busybox:multi: written once.
        let listing = Command::new("tar")
            .arg("tf")
            .arg(&archive)
            .output()
            .unwrap();
        let listing = String::from_utf8(listing.stdout).unwrap();
        let mut entries: Vec<&str> = listing.lines().collect();
        let total = entries.len();
        entries.sort();
        entries.dedup();
        assert_eq!(entries.len(), total, "no entry twice: {listing}");
        assert_eq!(
            listing.contains("manifest.json"),
            format == "docker",
            "{listing}"
        );

        let target = Kiln::new();
        let run = target.run(&["load", "-i", archive.to_str().unwrap()]).ok();
        assert_eq!(
            run.stdout.lines().count(),
            tags.len(),
            "one digest per image: {}",
            run.stdout
        );
        for (tag, reference) in tags.iter().zip(&references) {
            let loaded = identity(&target, reference);
            assert_eq!(loaded, identity(&source, reference), "{format} {tag}");
            assert_eq!(
                loaded,
                expected_identity(&digests[tag]),
                "{format} {tag} as the registry serves it"
            );
        }
        // What was loaded is usable: a root filesystem builds from it.
        target
            .run(&["rootfs", &references[1], "--format", "initramfs", "--json"])
            .ok();
    }

    // stdout and stdin: `kiln save REF | kiln load`.
    let piped = work.path().join("piped.tar");
    let status = source
        .command(&["save", "-q", &references[2]])
        .stdout(std::fs::File::create(&piped).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let target = Kiln::new();
    let output = target
        .command(&["load", "-q"])
        .stdin(std::fs::File::open(&piped).unwrap())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.stderr.is_empty(), "-q prints nothing on stderr");
    assert_eq!(
        identity(&target, &references[2]),
        identity(&source, &references[2])
    );

    // A gzip-compressed archive (`docker save | gzip`) loads too, and -t names it.
    sh(&format!("gzip -c {0} > {0}.gz", piped.display()));
    let target = Kiln::new();
    target
        .run(&[
            "load",
            "-i",
            &format!("{}.gz", piped.display()),
            "-t",
            "localhost/renamed:1",
        ])
        .ok();
    let (manifest, ..) = identity(&target, "localhost/renamed:1");
    assert_eq!(manifest, identity(&source, &references[2]).0);
    target.run(&["inspect", &references[2]]).fails(1);

    // An archive naming its image by a bare tag (the OCI convention for
    // ref.name): loaded unnamed, with a note; listed, saved and removed by digest.
    let oci = work.path().join("all-oci.tar");
    let bare = work.path().join("bare-tag.tar");
    rewrite(
        &oci,
        &bare,
        "if m.name == 'index.json':\n    import json\n    d = json.loads(data)\n    for x in d['manifests']: x['annotations'] = {'org.opencontainers.image.ref.name': '1.0'}\n    data = json.dumps(d).encode()",
    );
    let target = Kiln::new();
    let run = target.run(&["load", "-i", bare.to_str().unwrap()]).ok();
    assert!(
        run.stderr
            .contains("note: the archive names this image only by the tag \"1.0\""),
        "{}",
        run.stderr
    );
    let images = target.run(&["images", "--format", "json"]).ok().json();
    assert_eq!(images.as_array().unwrap().len(), tags.len());
    assert!(
        images
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["reference"].is_null()),
        "{images}"
    );
    let digest = identity(&source, &references[1]).0;
    let again = work.path().join("by-digest.tar");
    target
        .run(&["save", "-q", &digest, "-o", again.to_str().unwrap()])
        .ok();
    target.run(&["rmi", &digest]).ok();
    let other = Kiln::new();
    other
        .run(&["load", "-q", "-i", again.to_str().unwrap()])
        .ok();
    assert_eq!(identity(&other, &digest), identity(&source, &references[1]));
}

#[test]
fn skopeo_reads_what_kiln_saves() {
    let env = env();
    let digests = digests();
    let kiln = Kiln::new();
    let reference = format!("{}/busybox:multi", env.registry);
    kiln.run(&["pull", "-q", "--insecure", &reference]).ok();
    let expected = expected_identity(&digests["busybox:multi"]);
    let work = tempfile::tempdir().unwrap();

    // docker format → skopeo docker-archive: → dir: (skopeo keeps the config
    // as it is there; converting to oci: would re-serialize it): same config,
    // and the layers skopeo decompressed are the diff_ids.
    let docker = work.path().join("docker.tar");
    kiln.run(&["save", "-q", &reference, "-o", docker.to_str().unwrap()])
        .ok();
    let copied = work.path().join("from-docker");
    skopeo(&[
        "copy",
        "--quiet",
        &format!("docker-archive:{}", docker.display()),
        &format!("dir:{}", copied.display()),
    ]);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(copied.join("manifest.json")).unwrap()).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    assert_eq!(config_digest, expected.1, "config digest unchanged");
    let config: Value = serde_json::from_slice(
        &std::fs::read(copied.join(config_digest.trim_start_matches("sha256:"))).unwrap(),
    )
    .unwrap();
    let expected_diff_ids: Vec<String> = expected.2.iter().map(|(_, d)| d.clone()).collect();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(strings(&config["rootfs"]["diff_ids"]), expected_diff_ids);
    let layers: Vec<Value> = manifest["layers"].as_array().unwrap().clone();
    let layer_digests: Vec<String> = layers
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        layer_digests, expected_diff_ids,
        "skopeo's uncompressed layers"
    );

    // Both formats → skopeo oci-archive: by the full name: the same manifest digest.
    for format in ["docker", "oci"] {
        let archive = work.path().join(format!("{format}-oci.tar"));
        kiln.run(&[
            "save",
            "-q",
            "--format",
            format,
            &reference,
            "-o",
            archive.to_str().unwrap(),
        ])
        .ok();
        let layout = work.path().join(format!("from-oci-{format}"));
        skopeo(&[
            "copy",
            "--quiet",
            &format!("oci-archive:{}:{reference}", archive.display()),
            &format!("oci:{}:y", layout.display()),
        ]);
        let index: Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        assert_eq!(
            index["manifests"][0]["digest"].as_str().unwrap(),
            expected.0,
            "{format}"
        );
    }
}

#[test]
fn kiln_loads_what_skopeo_writes() {
    let env = env();
    let digests = digests();
    let work = tempfile::tempdir().unwrap();
    let expected = expected_identity(&digests["busybox:multi"]);

    // docker-archive: uncompressed layers, no registry manifest, legacy links.
    let docker = work.path().join("skopeo-docker.tar");
    skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{}/busybox:multi", env.registry),
        &format!("docker-archive:{}:busybox:multi", docker.display()),
    ]);
    let kiln = Kiln::new();
    kiln.run(&["load", "-i", docker.to_str().unwrap()]).ok();
    let (_, config, layers) = identity(&kiln, "docker.io/library/busybox:multi");
    assert_eq!(config, expected.1, "the config is kept byte for byte");
    let diff_ids: Vec<&String> = layers.iter().map(|(_, d)| d).collect();
    assert_eq!(
        diff_ids,
        expected.2.iter().map(|(_, d)| d).collect::<Vec<_>>()
    );
    let details = kiln
        .run(&["inspect", "busybox:multi", "--format", "json"])
        .ok()
        .json();
    assert_eq!(
        details[0]["media_type"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert!(
        details[0]["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["media_type"] == "application/vnd.oci.image.layer.v1.tar")
    );
    kiln.run(&["rootfs", "busybox:multi", "--format", "ext4", "--json"])
        .ok();

    // oci-archive: the registry's manifest, byte for byte.
    let oci = work.path().join("skopeo-oci.tar");
    skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{}/busybox:multi", env.registry),
        &format!("oci-archive:{}:busybox:oci", oci.display()),
    ]);
    let kiln = Kiln::new();
    kiln.run(&["load", "-i", oci.to_str().unwrap()]).ok();
    assert_eq!(identity(&kiln, "docker.io/library/busybox:oci"), expected);
}

#[test]
fn multi_platform_layouts_and_names() {
    let digests = digests();
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("multiarch.tar");
    sh(&format!(
        "tar -C {} -cf {} .",
        fixtures().join("multiarch").display(),
        archive.display()
    ));
    let archive = archive.to_str().unwrap();
    let platforms = &digests["multiarch:1"]["manifests"];

    // --platform picks from the nested index and skips the other image.
    let kiln = Kiln::new();
    kiln.run(&["load", "-i", archive, "--platform", "linux/arm64"])
        .ok();
    let details = kiln
        .run(&["inspect", "multiarch", "--format", "json"])
        .ok()
        .json();
    assert!(
        details[0]["platform"]
            .as_str()
            .unwrap()
            .starts_with("linux/arm64"),
        "{details}"
    );
    assert_eq!(
        details[0]["manifest_digest"],
        platforms["linux/arm64/v8"]["digest"]
    );
    let images = kiln.run(&["images", "--format", "json"]).ok().json();
    assert!(
        images
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["platform"].as_str().unwrap().starts_with("linux/arm64")),
        "{images}"
    );

    // `-t` names the first image the platform filter keeps.
    let tagged = Kiln::new();
    tagged
        .run(&[
            "load",
            "-i",
            archive,
            "--platform",
            "linux/arm64",
            "-t",
            "localhost/mine:1",
        ])
        .ok();
    let mine = tagged
        .run(&["inspect", "localhost/mine:1", "--format", "json"])
        .ok()
        .json();
    assert_eq!(
        mine[0]["manifest_digest"],
        platforms["linux/arm64/v8"]["digest"]
    );
    // A name may pin an index the image was listed through: in a layout
    // that lists the manifest directly and through the index, and in one
    // that lists only the index.
    let both = Kiln::new();
    both.run(&[
        "load",
        "-q",
        "-i",
        archive,
        "--platform",
        "linux/arm64",
        "-t",
        &format!(
            "localhost/pinned@{}",
            digests["multiarch:1"]["digest"].as_str().unwrap()
        ),
    ])
    .ok();
    let only_index = work.path().join("only-index");
    sh(&format!(
        "cp -r {src} {dst} && jq '.manifests |= map(select(.mediaType | test(\"index\")))' {src}/index.json > {dst}/index.json && tar -C {dst} -cf {dst}.tar .",
        src = fixtures().join("multiarch").display(),
        dst = only_index.display()
    ));
    let pinned = format!(
        "localhost/pinned@{}",
        digests["multiarch:1"]["digest"].as_str().unwrap()
    );
    let by_index = Kiln::new();
    by_index
        .run(&[
            "load",
            "-q",
            "-i",
            &format!("{}.tar", only_index.display()),
            "--platform",
            "linux/arm64",
            "-t",
            &pinned,
        ])
        .ok();
    assert_eq!(
        by_index
            .run(&["inspect", &pinned, "--format", "json"])
            .ok()
            .json()[0]["manifest_digest"],
        platforms["linux/arm64/v8"]["digest"]
    );

    // Without --platform: the host's from the index, every plain image.
    let kiln = Kiln::new();
    kiln.run(&["load", "-i", archive]).ok();
    let details = kiln
        .run(&["inspect", "multiarch", "--format", "json"])
        .ok()
        .json();
    assert_eq!(
        details[0]["manifest_digest"],
        platforms["linux/amd64"]["digest"]
    );

    let kiln = Kiln::new();
    let run = kiln
        .run(&["load", "-i", archive, "--platform", "linux/s390x"])
        .fails(1);
    assert!(run.stderr.contains("linux/s390x"), "{}", run.stderr);
    assert_store_empty(&kiln);
}

#[test]
fn save_to_a_terminal_or_of_nothing_is_refused() {
    let env = env();
    let kiln = Kiln::new();
    let reference = format!("{}/busybox:1", env.registry);
    kiln.run(&["pull", "-q", "--insecure", &reference]).ok();
    // A pseudo-terminal on stdout (util-linux `script`).
    let command = format!(
        "{} --root {} save {reference}",
        env!("CARGO_BIN_EXE_kiln"),
        kiln.root().display()
    );
    let output = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux) is installed");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("stdout is a terminal"), "{text}");
    assert!(
        text.contains("hint: use -o FILE or redirect stdout"),
        "{text}"
    );

    // A failed save leaves no file, not even a temporary one.
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("out.tar");
    let run = kiln
        .run(&[
            "save",
            &reference,
            "localhost/nothing:1",
            "-o",
            target.to_str().unwrap(),
        ])
        .fails(1);
    assert!(run.stderr.contains("no image"), "{}", run.stderr);
    assert_eq!(
        std::fs::read_dir(work.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

#[test]
fn save_refuses_a_blob_damaged_on_disk() {
    let env = env();
    let kiln = Kiln::new();
    let reference = format!("{}/busybox:multi", env.registry);
    kiln.run(&["pull", "-q", "--insecure", &reference]).ok();
    let (_, _, layers) = identity(&kiln, &reference);
    kiln.damage_blob(&layers[1].0);

    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("out.tar");
    let run = kiln
        .run(&["save", &reference, "-o", target.to_str().unwrap()])
        .fails(1);
    assert!(
        run.stderr.contains(&format!(
            "error: blob {} in the store is corrupt",
            layers[1].0
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("hint: run `kiln fsck --repair`"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_dir(work.path()).unwrap().count(),
        0,
        "no archive, not even a temporary file"
    );
    // To stdout the archive stops at the damaged blob: nothing after it.
    let piped = kiln.run(&["save", &reference]).fails(1);
    assert!(piped.stderr.contains("is corrupt"), "{}", piped.stderr);
}

/// Rewrites a tar with python's tarfile: `edit` is python code run for each
/// member `m` with its bytes `data`; it may `continue` (drop it), change
/// `data`, or append extra members to `extra` (name, bytes).
fn rewrite(source: &Path, target: &Path, edit: &str) {
    let script = format!(
        r#"
import io, sys, tarfile
src = tarfile.open(sys.argv[1]); out = tarfile.open(sys.argv[2], "w", format=tarfile.GNU_FORMAT)
extra = []
for m in src.getmembers():
    data = src.extractfile(m).read() if m.isfile() else None
{edit}
    if data is not None: m.size = len(data); out.addfile(m, io.BytesIO(data))
    else: out.addfile(m)
for name, data in extra:
    info = tarfile.TarInfo(name); info.size = len(data); out.addfile(info, io.BytesIO(data))
out.close()
"#,
        edit = edit
            .lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let status = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(source)
        .arg(target)
        .status()
        .unwrap();
    assert!(status.success());
}

/// busybox:multi pulled into a store and saved (`kiln save -o`): the
/// directory holding the archive, and its path.
fn saved_multi() -> (tempfile::TempDir, PathBuf) {
    let env = env();
    let source = Kiln::new();
    let reference = format!("{}/busybox:multi", env.registry);
    source.run(&["pull", "-q", "--insecure", &reference]).ok();
    let work = tempfile::tempdir().unwrap();
    let good = work.path().join("good.tar");
    source
        .run(&["save", "-q", &reference, "-o", good.to_str().unwrap()])
        .ok();
    (work, good)
}

#[test]
fn bad_archives_are_refused_and_leave_nothing() {
    let digests = digests();
    let (work, good) = saved_multi();
    let layer = digests["busybox:multi"]["layers"][0]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "missing-blob",
            format!("if m.name.endswith('{layer}'): continue"),
            "which is not in the archive",
        ),
        (
            "wrong-digest",
            format!(
                "if m.name.endswith('{layer}'): data = data[:100] + bytes([data[100] ^ 1]) + data[101:]"
            ),
            "does not match its digest",
        ),
        (
            "dotdot",
            "if m.name == 'oci-layout': extra.append(('../evil', b'x'))".into(),
            "unsafe path",
        ),
        (
            "absolute",
            "if m.name == 'oci-layout': extra.append(('/etc/evil', b'x'))".into(),
            "absolute path",
        ),
        (
            "huge-manifest",
            "if m.name == 'manifest.json': data = data + b' ' * (5 << 20)".into(),
            "larger than the 4194304-byte limit",
        ),
        (
            "link-as-blob",
            "if m.name == 'oci-layout':\n    i = tarfile.TarInfo('blobs/sha256/' + '0' * 64); i.type = tarfile.SYMTYPE; i.linkname = '../../oci-layout'; out.addfile(i)".into(),
            "a link where a blob must be",
        ),
        (
            "link-and-file",
            "if m.name == 'oci-layout':\n    i = tarfile.TarInfo('oci-layout'); i.type = tarfile.SYMTYPE; i.linkname = 'index.json'; out.addfile(i)".into(),
            "appears twice",
        ),
        (
            "huge-long-name",
            "if m.name == 'oci-layout': extra.append(('x/' + 'a' * 70000, b'x'))".into(),
            "an extension header",
        ),
        (
            "control-character",
            "if m.name == 'oci-layout': extra.append(('evil\\x1b[2Jname', b'x'))".into(),
            "control character",
        ),
    ];
    for (name, edit, message) in cases {
        let bad = work.path().join(format!("{name}.tar"));
        rewrite(&good, &bad, &edit);
        let kiln = Kiln::new();
        let run = kiln.run(&["load", "-i", bad.to_str().unwrap()]).fails(1);
        let error = run
            .stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_default();
        assert!(error.contains(message), "{name}: {}", run.stderr);
        assert!(
            error.contains(bad.to_str().unwrap()),
            "{name}: names the archive: {error}"
        );
        assert_store_empty(&kiln);
    }

    // A name that pins a digest the image does not have.
    let pinned = format!("localhost/pinned@sha256:{}", "b".repeat(64));
    let kiln = Kiln::new();
    let run = kiln
        .run(&["load", "-q", "-i", good.to_str().unwrap(), "-t", &pinned])
        .fails(1);
    run.assert_one_error();
    assert!(run.stderr.contains("pins another digest"), "{}", run.stderr);
    assert_store_empty(&kiln);

    // A link that leaves the archive (python writes it raw).
    let linked = work.path().join("link.tar");
    let status = Command::new("python3")
        .arg("-c")
        .arg("import sys, tarfile\nout = tarfile.open(sys.argv[1], 'w')\ni = tarfile.TarInfo('layer.tar'); i.type = tarfile.SYMTYPE; i.linkname = '../../etc/passwd'\nout.addfile(i); out.close()")
        .arg(&linked)
        .status()
        .unwrap();
    assert!(status.success());
    let kiln = Kiln::new();
    let run = kiln.run(&["load", "-i", linked.to_str().unwrap()]).fails(1);
    assert!(run.stderr.contains("outside the archive"), "{}", run.stderr);
    assert_store_empty(&kiln);

    // Cut in the middle of a layer.
    let truncated = work.path().join("truncated.tar");
    let size = std::fs::metadata(&good).unwrap().len();
    std::fs::write(
        &truncated,
        &std::fs::read(&good).unwrap()[..(size / 2) as usize],
    )
    .unwrap();
    let kiln = Kiln::new();
    let run = kiln
        .run(&["load", "-i", truncated.to_str().unwrap()])
        .fails(1);
    assert!(run.stderr.contains("truncated"), "{}", run.stderr);
    assert_store_empty(&kiln);

    // Not a tar at all, and nothing at all.
    let random = work.path().join("random.bin");
    sh(&format!(
        "head -c 100000 /dev/urandom > {}",
        random.display()
    ));
    let kiln = Kiln::new();
    let run = kiln.run(&["load", "-i", random.to_str().unwrap()]).fails(1);
    assert!(run.stderr.contains("not a tar archive"), "{}", run.stderr);
    assert_eq!(
        run.stderr.lines().count(),
        2,
        "one error line and a hint: {}",
        run.stderr
    );
    assert_store_empty(&kiln);
    let empty = work.path().join("empty.tar");
    std::fs::write(&empty, b"").unwrap();
    let run = kiln.run(&["load", "-i", empty.to_str().unwrap()]).fails(1);
    assert!(run.stderr.contains("empty"), "{}", run.stderr);
    let output = kiln
        .command(&["load"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("stdin: the input is empty"));
    assert_store_empty(&kiln);
}

/// podman, with its own storage in a temporary directory (vfs: no mounts).
fn podman(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("podman")
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args(["--storage-driver", "vfs"])
        .args(args)
        .output()
        .expect("podman is installed (.ci/run installs it)");
    assert!(
        output.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn podman_loads_what_kiln_saves_and_kiln_loads_what_podman_saves() {
    let env = env();
    let digests = digests();
    let expected = expected_identity(&digests["busybox:multi"]);
    let reference = format!("{}/busybox:multi", env.registry);
    let kiln = Kiln::new();
    kiln.run(&["pull", "-q", "--insecure", &reference]).ok();
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("kiln.tar");
    kiln.run(&["save", "-q", &reference, "-o", archive.to_str().unwrap()])
        .ok();

    let storage = work.path().join("podman");
    podman(&storage, &["load", "-q", "-i", archive.to_str().unwrap()]);
    let inspect: Value =
        serde_json::from_str(&podman(&storage, &["image", "inspect", &reference])).unwrap();
    assert_eq!(
        format!("sha256:{}", inspect[0]["Id"].as_str().unwrap()),
        expected.1,
        "podman's image ID is the config digest"
    );
    let diff_ids: Vec<String> = inspect[0]["RootFS"]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        diff_ids,
        expected
            .2
            .iter()
            .map(|(_, d)| d.clone())
            .collect::<Vec<_>>()
    );

    let back = work.path().join("podman.tar");
    podman(
        &storage,
        &[
            "save",
            "-q",
            "--format",
            "docker-archive",
            "-o",
            back.to_str().unwrap(),
            &reference,
        ],
    );
    let again = Kiln::new();
    again
        .run(&["load", "-q", "-i", back.to_str().unwrap()])
        .ok();
    let (_, config, layers) = identity(&again, &reference);
    assert_eq!(config, expected.1);
    assert_eq!(
        layers.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(),
        expected
            .2
            .iter()
            .map(|(_, d)| d.clone())
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_load_killed_halfway_leaves_a_consistent_store_and_the_next_load_works() {
    use std::io::Write;
    let env = env();
    let source = Kiln::new();
    let reference = format!("{}/big:1", env.registry);
    source.run(&["pull", "-q", "--insecure", &reference]).ok();
    let archive = source.dir.path().join("big.tar");
    source
        .run(&["save", "-q", &reference, "-o", archive.to_str().unwrap()])
        .ok();
    let bytes = std::fs::read(&archive).unwrap();

    // Feed half of the archive through a pipe, then kill -9 the loader
    // while it waits for the rest.
    let kiln = Kiln::new();
    let mut child = kiln
        .command(&["load", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&bytes[..bytes.len() / 2]).unwrap();
    stdin.flush().unwrap();
    support::wait_for(
        || !kiln.blob_files().is_empty() || !kiln.partial_files().is_empty(),
        "the load to write part of the archive",
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);

    // Nothing is recorded, every blob on disk is whole, and prune clears
    // what the dead load left.
    let images = kiln.run(&["images", "--format", "json"]).ok().json();
    assert_eq!(images, serde_json::json!([]), "no image from a killed load");
    kiln.run(&["fsck"]).ok();
    kiln.run(&["prune", "--yes"]).ok();
    assert!(
        kiln.blob_files().is_empty(),
        "the dead load's lease expired and its blobs went: {:?}",
        kiln.blob_files()
    );
    kiln.run(&["fsck"]).ok();

    // The same load, whole, succeeds and gives the pulled image.
    kiln.run(&["load", "-q", "-i", archive.to_str().unwrap()])
        .ok();
    assert_eq!(identity(&kiln, &reference), identity(&source, &reference));
    kiln.run(&["fsck"]).ok();
}

/// The members of a tar archive: (header offset, name, data offset, size).
fn tar_members(archive: &[u8]) -> Vec<(usize, String, usize, usize)> {
    let mut members = Vec::new();
    let mut at = 0;
    while at + 512 <= archive.len() && archive[at..at + 512].iter().any(|b| *b != 0) {
        let header = &archive[at..at + 512];
        let name = String::from_utf8_lossy(&header[..100])
            .trim_end_matches('\0')
            .to_string();
        let size = std::str::from_utf8(&header[124..136])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim_matches([' ', '\0']), 8).ok())
            .expect("an octal size");
        members.push((at, name, at + 512, size));
        at += 512 + size.next_multiple_of(512);
    }
    members
}

/// Seeded damage to a saved archive where a broken archive differs from a
/// good one in ways digests do not catch first: tar header fields (with the
/// checksum made right again) and the small JSON members (`index.json`,
/// `manifest.json`, `oci-layout`, manifests and configs). Every load either
/// succeeds or fails with exit 1 and one error line, never a crash; a
/// failed load records no image and leaves nothing after `prune`; `fsck`
/// passes either way.
#[test]
fn randomly_damaged_archives_load_or_fail_cleanly() {
    let (work, good) = saved_multi();
    let pristine = std::fs::read(&good).unwrap();
    let members = tar_members(&pristine);
    let small: Vec<_> = members
        .iter()
        .filter(|(_, _, _, size)| (1..64 << 10).contains(size))
        .collect();
    assert!(small.len() >= 4, "{members:?}");

    let cases = std::env::var("KILN_DAMAGE_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100u64);
    let (mut loaded, mut refused) = (0, 0);
    for seed in 0..cases {
        // splitmix64 steps: a failing case names its seed.
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) as usize
        };
        let mut damaged = pristine.clone();
        let what;
        if next() % 3 == 0 {
            let (header, name, _, _) = &members[next() % members.len()];
            let at = header + next() % 500;
            if (148..156).contains(&(at - header)) {
                continue;
            }
            damaged[at] = [b'0', b'7', b'/', 0, b'.', next() as u8][next() % 6];
            damaged[header + 148..header + 156].fill(b' ');
            let sum: u32 = damaged[*header..header + 512]
                .iter()
                .map(|b| u32::from(*b))
                .sum();
            damaged[header + 148..header + 156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            what = format!("the header of {name}, byte {}", at - header);
        } else {
            let (_, name, data, size) = small[next() % small.len()];
            let at = data + next() % size;
            // A digit for another keeps the JSON valid; other bytes break it.
            damaged[at] = if damaged[at].is_ascii_digit() && next() % 2 == 0 {
                b'0' + (next() % 10) as u8
            } else {
                [b'"', b'{', b'-', b'a', next() as u8][next() % 5]
            };
            what = format!("{name}, byte {}", at - data);
        }
        let case = format!("seed {seed} ({what})");
        let path = work.path().join("damaged.tar");
        std::fs::write(&path, &damaged).unwrap();
        let kiln = Kiln::new();
        let run = kiln.run(&["load", "-q", "-i", path.to_str().unwrap()]);
        match run.status {
            0 => loaded += 1,
            1 => {
                refused += 1;
                run.assert_one_error();
                assert_store_empty(&kiln);
            }
            other => panic!("{case}: exit {other}\n{}", run.stderr),
        }
        let fsck = kiln.run(&["fsck"]);
        assert_eq!(
            fsck.status, 0,
            "{case}: fsck after the load: {}",
            fsck.stderr
        );
    }
    eprintln!("{loaded} damaged archives loaded, {refused} refused");
    assert!(refused > 0, "the damage reaches the loader's checks");
}
