//! Image servers (`imgapi`): SmartOS IMGAPI listing, filters, pulls, origin
//! chains, validation, concurrency and local installs, against `FakeImgapi`.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use super::support::Kiln;
use super::support::bundles::{
    imgapi_copy, imgapi_image, pseudo_random, sha1_hex, test_uuid, with_field, with_file_field,
};
use super::support::fakes::{FakeImgapi, IMGAPI_MAX_LIMIT, ImgapiImage, sha256_hex};
use super::{
    assert_file, assert_nothing_installed, avail, field_set, images, inspect, mentions_word,
    references, to_run,
};

/// Points the `smartos` source at the fake (the built-in one is removed first).
fn use_imgapi(kiln: &Kiln, imgapi: &FakeImgapi) {
    kiln.run(&["sources", "rm", "smartos"]).ok();
    kiln.run(&[
        "sources",
        "add",
        "smartos",
        &imgapi.url(),
        "--type",
        "imgapi",
    ])
    .ok();
}

fn uuid_set(entries: &[Value]) -> BTreeSet<String> {
    field_set(entries, "uuid")
}

#[test]
fn update_pages_through_the_image_server_and_avail_reads_the_cache() {
    let imgapi = FakeImgapi::start();
    let template = imgapi_image(1, "base-64", "15.2.0", b"base-64 dataset");
    imgapi.add(template.clone());
    imgapi.add(imgapi_image(2, "minimal-64", "15.2.0", b"minimal dataset"));
    imgapi.add(imgapi_image(3, "base-64", "15.3.0", b"base-64 15.3"));
    let kiln = Kiln::new();
    use_imgapi(&kiln, &imgapi);

    // No cache yet: avail runs the update first.
    let listed = avail(&kiln, "smartos", &[]);
    assert_eq!(uuid_set(&listed), imgapi.uuids().into_iter().collect());
    assert!(kiln.root().join("sources-v1/smartos/images.json").exists());
    let first = imgapi.list_requests();
    let limit: usize = first[0]
        .param("limit")
        .unwrap_or_else(|| panic!("kiln sends limit: {:?}", first[0]))
        .parse()
        .unwrap();
    let page = limit.clamp(1, IMGAPI_MAX_LIMIT);

    // More than two of kiln's pages.
    for n in 0..(2 * page as u64 + 1) {
        imgapi.add(imgapi_copy(
            &template,
            100 + n,
            &format!("bulk-{n}"),
            "1.0.0",
        ));
    }
    let all = imgapi.uuids();
    assert_eq!(
        uuid_set(&avail(&kiln, "smartos", &[])).len(),
        3,
        "avail reads the cached list"
    );

    let before = imgapi.list_requests().len();
    kiln.run(&["update", "smartos"]).ok();
    let pages = imgapi.list_requests()[before..].to_vec();
    let mut position = 0;
    for (i, request) in pages.iter().enumerate() {
        if i > 0 {
            assert_eq!(
                request.param("marker").as_deref(),
                Some(all[position - 1].as_str()),
                "page {i} starts after the last UUID of the page before"
            );
        }
        let limit: usize = request.param("limit").unwrap().parse().unwrap();
        position += limit.min(IMGAPI_MAX_LIMIT).min(all.len() - position);
    }
    assert_eq!(position, all.len(), "every page was fetched: {pages:?}");
    assert!(pages.len() >= 3, "{} pages", pages.len());

    let listed = avail(&kiln, "smartos", &[]);
    assert_eq!(listed.len(), all.len());
    assert_eq!(uuid_set(&listed), all.into_iter().collect());
}

/// base-64 ×2, base-multiarch-lts, minimal-64 and a private linux image.
fn filter_fixture(imgapi: &FakeImgapi) -> Vec<(String, String)> {
    let images = [
        imgapi_image(1, "base-64", "15.2.0", b"1"),
        imgapi_image(2, "base-64", "15.3.0", b"2"),
        imgapi_image(3, "base-multiarch-lts", "16.1.0", b"3"),
        imgapi_image(4, "minimal-64", "15.2.0", b"4"),
        with_field(
            with_field(
                with_field(
                    imgapi_image(5, "ubuntu-base", "20.04", b"5"),
                    "os",
                    json!("linux"),
                ),
                "type",
                json!("other"),
            ),
            "public",
            json!(false),
        ),
    ];
    let mut pairs = Vec::new();
    for image in images {
        pairs.push((image.uuid(), image.name()));
        imgapi.add(image);
    }
    pairs
}

#[test]
fn avail_shows_the_chosen_columns_and_applies_every_filter() {
    let imgapi = FakeImgapi::start();
    let pairs = filter_fixture(&imgapi);
    let uuid = |n: usize| pairs[n - 1].0.clone();
    let kiln = Kiln::new();
    use_imgapi(&kiln, &imgapi);
    kiln.run(&["update"]).ok();

    let table = kiln.run(&["avail", "smartos", "-o", "uuid,name"]).ok();
    let mut lines = table.stdout.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_uppercase)
        .collect();
    assert_eq!(header, ["UUID", "NAME"], "{}", table.stdout);
    let rows: BTreeSet<(String, String)> = lines
        .map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(cells.len(), 2, "two columns: {line:?}");
            (cells[0].to_string(), cells[1].to_string())
        })
        .collect();
    assert_eq!(rows, pairs.iter().cloned().collect());

    let cases: [(&[&str], &[usize]); 8] = [
        (&["name=base-64"], &[1, 2]),
        (&["name=~base"], &[1, 2, 3, 5]),
        (&["name=~base", "os=smartos"], &[1, 2, 3]),
        (&["os=linux"], &[5]),
        (&["public=false"], &[5]),
        (&["public=true"], &[1, 2, 3, 4]),
        (&["disabled=false"], &[1, 2, 3, 4, 5]),
        (&["disabled=true"], &[]),
    ];
    for (filters, expected) in cases {
        let selected = uuid_set(&avail(&kiln, "smartos", filters));
        let expected: BTreeSet<String> = expected.iter().map(|n| uuid(*n)).collect();
        assert_eq!(selected, expected, "{filters:?}");
    }
}

#[test]
fn pull_by_uuid_and_by_name_at_version_keeps_the_file_as_published() {
    let imgapi = FakeImgapi::start();
    let minimal = imgapi_image(1, "minimal-64", "15.2.0", b"minimal dataset");
    let base_old = imgapi_image(2, "base-64", "15.2.0", b"base 15.2.0 first build");
    let base_new = imgapi_image(3, "base-64", "15.2.0", b"base 15.2.0 rebuilt");
    let base_next = imgapi_image(4, "base-64", "15.3.0", b"base 15.3.0");
    for image in [&minimal, &base_old, &base_new, &base_next] {
        imgapi.add(image.clone());
    }
    let kiln = Kiln::new();
    use_imgapi(&kiln, &imgapi);

    let by_uuid = format!("smartos://{}", minimal.uuid());
    kiln.run(&["pull", &by_uuid]).ok();
    let image = inspect(&kiln, &by_uuid);
    assert_eq!(image["kind"], "imgapi", "{image}");
    assert_eq!(image["source"]["uuid"], minimal.uuid().as_str());
    assert_eq!(image["source"]["compression"], "gzip");
    assert_file(&image["source"]["paths"]["file"], &minimal.file, "file");
    let names = image["references"].as_array().unwrap();
    for name in [by_uuid.clone(), "smartos://minimal-64@15.2.0".to_string()] {
        assert!(
            names.iter().any(|n| *n == name.as_str()),
            "{name} in {names:?}"
        );
    }

    kiln.run(&["pull", "smartos://base-64@15.2.0"]).ok();
    let image = inspect(&kiln, "smartos://base-64@15.2.0");
    assert_eq!(
        image["source"]["uuid"],
        base_new.uuid().as_str(),
        "the newest image of that name and version"
    );
    assert_file(&image["source"]["paths"]["file"], &base_new.file, "file");
    assert_eq!(imgapi.file_requests(&base_old.uuid()), 0);

    kiln.run(&["pull", "smartos://base-64"]).ok();
    let next_name = format!("smartos://{}", base_next.uuid());
    let names = references(&kiln);
    assert!(
        names.contains(&next_name),
        "smartos://base-64 is the newest image of that name, {}: {names:?}",
        base_next.uuid()
    );
    let image = inspect(&kiln, &next_name);
    assert_file(&image["source"]["paths"]["file"], &base_next.file, "file");
    let listed = avail(&kiln, "smartos", &[]);
    for (image, expected) in [
        (&minimal, true),
        (&base_old, false),
        (&base_new, true),
        (&base_next, true),
    ] {
        let entry = listed
            .iter()
            .find(|e| e["uuid"] == image.uuid().as_str())
            .unwrap();
        assert_eq!(entry["installed"], expected, "{entry}");
    }
    kiln.run(&["fsck"]).ok();
}

#[test]
fn an_origin_chain_is_installed_ancestors_first_and_protects_them() {
    let imgapi = FakeImgapi::start();
    let a = imgapi_image(1, "base-64", "15.2.0", b"generation a");
    let b = with_field(
        imgapi_image(2, "base-64-dev", "15.2.1", b"generation b"),
        "origin",
        json!(a.uuid()),
    );
    let c = with_field(
        imgapi_image(3, "app", "1.0.0", b"generation c"),
        "origin",
        json!(b.uuid()),
    );
    for image in [&a, &b, &c] {
        imgapi.add(image.clone());
    }
    let kiln = Kiln::new();
    use_imgapi(&kiln, &imgapi);

    kiln.run(&["pull", &format!("smartos://{}", c.uuid())]).ok();
    let installed: Vec<Value> = images(&kiln)
        .into_iter()
        .filter(|i| i["kind"] == "imgapi")
        .collect();
    let digests: BTreeSet<String> = installed
        .iter()
        .map(|i| i["manifest_digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(digests.len(), 3, "A, B and C: {installed:?}");
    for image in [&a, &b, &c] {
        assert_eq!(imgapi.file_requests(&image.uuid()), 1, "{}", image.name());
        let details = inspect(&kiln, &format!("smartos://{}", image.uuid()));
        assert_file(&details["source"]["paths"]["file"], &image.file, "file");
    }
    kiln.run(&["pull", &format!("smartos://{}", c.uuid())]).ok();
    for image in [&a, &b, &c] {
        assert_eq!(
            imgapi.file_requests(&image.uuid()),
            1,
            "nothing fetched again"
        );
    }

    let a_name = format!("smartos://{}", a.uuid());
    let refused = kiln.run(&["rmi", &a_name]).fails(1);
    assert!(
        refused.stderr.contains(&b.uuid()),
        "names the dependent image: {}",
        refused.stderr
    );
    assert!(references(&kiln).contains(&a_name));
    kiln.run(&["rmi", "--force", &a_name]).ok();
    assert!(!references(&kiln).contains(&a_name));
    kiln.run(&["fsck"]).ok();
}

#[test]
fn imgapi_manifests_and_files_are_validated() {
    let good = imgapi_image(1, "base-64", "15.2.0", b"base dataset");
    let size = good.manifest["files"][0]["size"].as_u64().unwrap();
    // (what, image, stderr mentions, whether the file may be fetched)
    let cases: Vec<(&str, ImgapiImage, &str, bool)> = vec![
        (
            "no os",
            with_field(good.clone(), "os", Value::Null),
            "os",
            false,
        ),
        (
            "no sha1",
            with_file_field(good.clone(), "sha1", Value::Null),
            "sha1",
            false,
        ),
        (
            "no files",
            with_field(good.clone(), "files", json!([])),
            "files",
            false,
        ),
        (
            "sha1 mismatch",
            with_file_field(good.clone(), "sha1", json!(sha1_hex(b"other"))),
            "sha1",
            true,
        ),
        (
            "sha256 mismatch",
            with_file_field(good.clone(), "sha256", json!(sha256_hex(b"other"))),
            "sha256",
            true,
        ),
        (
            "size mismatch",
            with_file_field(good.clone(), "size", json!(size + 1)),
            "size",
            true,
        ),
    ];
    for (what, image, mentioned, may_fetch) in cases {
        let imgapi = FakeImgapi::start();
        imgapi.add(image.clone());
        let kiln = Kiln::new();
        use_imgapi(&kiln, &imgapi);
        let run = kiln
            .run(&["pull", &format!("smartos://{}", image.uuid())])
            .fails(1);
        let stderr = run.stderr.to_lowercase().replace("sha-", "sha");
        // A two-letter field must stand as a word (`os` is in `smartos://`).
        let named = if mentioned.len() <= 2 {
            mentions_word(&stderr, mentioned)
        } else {
            stderr.contains(mentioned)
        };
        assert!(named, "{what}: {}", run.stderr);
        if !may_fetch {
            assert_eq!(
                imgapi.file_requests(&image.uuid()),
                0,
                "{what}: refused before downloading"
            );
        }
        assert_nothing_installed(&kiln, "smartos");
    }

    let imgapi = FakeImgapi::start();
    imgapi.add(good.clone());
    let kiln = Kiln::new();
    use_imgapi(&kiln, &imgapi);
    let missing = test_uuid(99);
    let run = kiln
        .run(&["pull", &format!("smartos://{missing}")])
        .fails(1);
    assert!(
        run.stderr.to_lowercase().contains("not found") && run.stderr.contains(&missing),
        "{}",
        run.stderr
    );
    assert_nothing_installed(&kiln, "smartos");
}

#[test]
fn concurrent_pulls_of_one_image_fetch_its_file_once() {
    let imgapi = FakeImgapi::start();
    let image = imgapi_image(1, "base-64", "15.2.0", &pseudo_random(7, 256 * 1024));
    imgapi.add(image.clone());
    imgapi.set_file_delay(Some(Duration::from_secs(1)));
    let kiln = Kiln::new();
    use_imgapi(&kiln, &imgapi);
    let reference = format!("smartos://{}", image.uuid());
    let spawn = || {
        kiln.command(&["pull", "-q", &reference])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (spawn(), spawn());
    let (first, second) = (
        to_run(first.wait_with_output().unwrap()),
        to_run(second.wait_with_output().unwrap()),
    );
    first.ok();
    second.ok();
    assert_eq!(imgapi.file_requests(&image.uuid()), 1, "fetched once");
    let installed: Vec<Value> = images(&kiln)
        .into_iter()
        .filter(|i| i["kind"] == "imgapi")
        .collect();
    let digests: BTreeSet<&str> = installed
        .iter()
        .map(|i| i["manifest_digest"].as_str().unwrap())
        .collect();
    assert_eq!(digests.len(), 1, "{installed:?}");
    let details = inspect(&kiln, &reference);
    assert_file(&details["source"]["paths"]["file"], &image.file, "file");
    kiln.run(&["fsck"]).ok();
}

#[test]
fn install_takes_an_image_from_local_files() {
    let kiln = Kiln::new();
    let dir = kiln.dir.path().join("local");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, image: &ImgapiImage| {
        let manifest = dir.join(format!("{name}.json"));
        let file = dir.join(format!("{name}.gz"));
        std::fs::write(&manifest, serde_json::to_vec(&image.manifest).unwrap()).unwrap();
        std::fs::write(&file, &image.file).unwrap();
        (
            manifest.to_str().unwrap().to_string(),
            file.to_str().unwrap().to_string(),
        )
    };

    let image = imgapi_image(1, "base-64", "15.2.0", b"a local dataset");
    let (manifest, file) = write("good", &image);
    kiln.run(&["install", "-m", &manifest, "-f", &file]).ok();
    let names = references(&kiln);
    for name in [
        format!("local://{}", image.uuid()),
        "local://base-64@15.2.0".to_string(),
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    let details = inspect(&kiln, &format!("local://{}", image.uuid()));
    assert_eq!(details["kind"], "imgapi");
    assert_eq!(details["source"]["uuid"], image.uuid().as_str());
    assert_file(&details["source"]["paths"]["file"], &image.file, "file");

    let other = imgapi_image(2, "minimal-64", "15.2.0", b"another local dataset");
    let (manifest, file) = write("other", &other);
    kiln.run(&["install", "-m", &manifest, "-f", &file, "--source", "mysrc"])
        .ok();
    assert!(references(&kiln).contains(&format!("mysrc://{}", other.uuid())));

    let bad = with_file_field(
        imgapi_image(3, "bad", "1.0.0", b"bad"),
        "sha1",
        json!(sha1_hex(b"something else")),
    );
    let (manifest, file) = write("bad", &bad);
    kiln.run(&["install", "-m", &manifest, "-f", &file])
        .fails(1);
    assert!(!references(&kiln).contains(&format!("local://{}", bad.uuid())));

    let orphan = with_field(
        imgapi_image(4, "child", "1.0.0", b"child"),
        "origin",
        json!(test_uuid(98)),
    );
    let (manifest, file) = write("orphan", &orphan);
    let run = kiln
        .run(&["install", "-m", &manifest, "-f", &file])
        .fails(1);
    assert!(
        run.stderr.contains(&test_uuid(98)),
        "names the missing origin: {}",
        run.stderr
    );
    assert!(!references(&kiln).contains(&format!("local://{}", orphan.uuid())));
    kiln.run(&["fsck"]).ok();
}
