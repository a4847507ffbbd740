//! Checksum catalogs (`catalog`): JSON over HTTP and TOML on disk, against
//! `FakeFiles`.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::support::Kiln;
use super::support::bundles::{ARCH, ext4_rootfs, gzip, kernel, pseudo_random, sha512_hex};
use super::support::fakes::{FakeFiles, sha256_hex};
use super::{
    assert_file, assert_nothing_installed, avail, corrupt_in_place, field_set, images, inspect,
    installed, path_of, references,
};

const CATALOG: &str = "/v1/catalog.json";
const HELLO_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1";
const WORLD_BOOT_ARGS: &str = "console=ttyS0 quiet world=1";

/// A catalog served over HTTP at [`CATALOG`]: `hello` (kernel by relative
/// URL with sha256 and size, rootfs by absolute URL with sha512, initrd) and
/// `world` (per-architecture boot_args, no initrd).
struct Catalog {
    files: FakeFiles,
    hello_kernel: Vec<u8>,
    hello_rootfs: Vec<u8>,
    hello_initrd: Vec<u8>,
    world_kernel: Vec<u8>,
    world_rootfs: Vec<u8>,
}

impl Catalog {
    fn serve() -> Catalog {
        let catalog = Catalog {
            files: FakeFiles::start(),
            hello_kernel: kernel(2),
            hello_rootfs: ext4_rootfs("hello", "hello\n"),
            hello_initrd: gzip(&pseudo_random(3, 32 * 1024)),
            world_kernel: kernel(4),
            world_rootfs: ext4_rootfs("world", "world\n"),
        };
        let files = &catalog.files;
        files.put("/v1/hello/vmlinux", catalog.hello_kernel.clone());
        files.put("/cdn/hello.ext4", catalog.hello_rootfs.clone());
        files.put("/v1/hello/initrd.img", catalog.hello_initrd.clone());
        files.put("/v1/world/vmlinux", catalog.world_kernel.clone());
        files.put("/v1/world/rootfs.ext4", catalog.world_rootfs.clone());
        catalog.publish(&catalog.json());
        catalog
    }

    fn json(&self) -> Value {
        json!({
            "version": 1,
            "images": {
                "hello": {
                    "description": "busybox hello world",
                    "version": "1.0",
                    "boot_args": HELLO_BOOT_ARGS,
                    "architectures": {
                        ARCH: {
                            "kernel": {
                                "url": "hello/vmlinux",
                                "sha256": sha256_hex(&self.hello_kernel),
                                "size": self.hello_kernel.len()
                            },
                            "rootfs": {
                                "url": self.files.url("/cdn/hello.ext4"),
                                "sha512": sha512_hex(&self.hello_rootfs)
                            },
                            "initrd": {
                                "url": "hello/initrd.img",
                                "sha256": sha256_hex(&self.hello_initrd)
                            }
                        }
                    }
                },
                "world": {
                    "version": "2.0",
                    "boot_args": "console=ttyS0",
                    "architectures": {
                        ARCH: {
                            "kernel": {
                                "url": "world/vmlinux",
                                "sha512": sha512_hex(&self.world_kernel)
                            },
                            "rootfs": {
                                "url": "world/rootfs.ext4",
                                "sha256": sha256_hex(&self.world_rootfs),
                                "size": self.world_rootfs.len()
                            },
                            "boot_args": WORLD_BOOT_ARGS
                        }
                    }
                }
            }
        })
    }

    fn publish(&self, catalog: &Value) {
        self.files
            .put(CATALOG, serde_json::to_vec_pretty(catalog).unwrap());
    }

    fn url(&self) -> String {
        self.files.url(CATALOG)
    }

    /// GETs of the image files (not of the catalog).
    fn file_downloads(&self) -> [usize; 5] {
        [
            "/v1/hello/vmlinux",
            "/cdn/hello.ext4",
            "/v1/hello/initrd.img",
            "/v1/world/vmlinux",
            "/v1/world/rootfs.ext4",
        ]
        .map(|path| self.files.downloads(path))
    }
}

fn use_catalog(kiln: &Kiln, name: &str, url: &str) {
    kiln.run(&["sources", "add", name, url, "--type", "catalog"])
        .ok();
}

#[test]
fn a_catalog_over_http_pulls_verified_files_with_initrd_and_boot_args() {
    let catalog = Catalog::serve();
    let kiln = Kiln::new();
    use_catalog(&kiln, "mycat", &catalog.url());

    let listed = avail(&kiln, "mycat", &[]);
    assert_eq!(
        field_set(&listed, "name"),
        BTreeSet::from(["hello".to_string(), "world".to_string()])
    );
    assert!(!installed(&listed, "hello") && !installed(&listed, "world"));

    kiln.run(&["pull", "mycat://hello"]).ok();
    let listed = avail(&kiln, "mycat", &[]);
    assert!(installed(&listed, "hello") && !installed(&listed, "world"));

    let image = inspect(&kiln, "mycat://hello");
    assert_eq!(image["kind"], "catalog", "{image}");
    let source = &image["source"];
    assert_file(&source["paths"]["kernel"], &catalog.hello_kernel, "kernel");
    assert_file(&source["paths"]["rootfs"], &catalog.hello_rootfs, "rootfs");
    assert_file(&source["paths"]["initrd"], &catalog.hello_initrd, "initrd");
    assert_eq!(source["boot_args"], HELLO_BOOT_ARGS);
    let names = references(&kiln);
    assert!(
        names
            .iter()
            .any(|r| r == "mycat://hello" || r == "mycat://hello@1.0"),
        "{names:?}"
    );
    assert!(
        images(&kiln).iter().all(|i| i["kind"] == "catalog"),
        "{:?}",
        images(&kiln)
    );

    let before = catalog.file_downloads();
    kiln.run(&["pull", "mycat://hello"]).ok();
    assert_eq!(
        catalog.file_downloads(),
        before,
        "an installed image transfers nothing"
    );

    kiln.run(&["pull", "mycat://world"]).ok();
    let world = inspect(&kiln, "mycat://world");
    assert_file(
        &world["source"]["paths"]["kernel"],
        &catalog.world_kernel,
        "kernel",
    );
    assert_file(
        &world["source"]["paths"]["rootfs"],
        &catalog.world_rootfs,
        "rootfs",
    );
    assert!(
        world["source"]["paths"]["initrd"].is_null(),
        "world has no initrd: {world}"
    );
    assert_eq!(
        world["source"]["boot_args"], WORLD_BOOT_ARGS,
        "the architecture's boot_args override the image's"
    );
    kiln.run(&["fsck"]).ok();
}

#[test]
fn a_local_toml_catalog_resolves_relative_urls_beside_itself() {
    let files = FakeFiles::start();
    let kernel_bytes = kernel(5);
    let rootfs_bytes = ext4_rootfs("local", "local\n");
    files.put("/images/local.ext4", rootfs_bytes.clone());
    let kiln = Kiln::new();
    let dir = kiln.dir.path().join("catalogs");
    std::fs::create_dir_all(dir.join("files")).unwrap();
    std::fs::write(dir.join("files/vmlinux"), &kernel_bytes).unwrap();
    let toml = format!(
        r#"version = 1

[images.hello]
description = "a local catalog"
version = "1.0"
boot_args = "{HELLO_BOOT_ARGS}"

[images.hello.architectures.{ARCH}.kernel]
url = "files/vmlinux"
sha256 = "{}"
size = {}

[images.hello.architectures.{ARCH}.rootfs]
url = "{}"
sha512 = "{}"
"#,
        sha256_hex(&kernel_bytes),
        kernel_bytes.len(),
        files.url("/images/local.ext4"),
        sha512_hex(&rootfs_bytes)
    );
    let path = dir.join("catalog.toml");
    std::fs::write(&path, toml).unwrap();
    use_catalog(&kiln, "localcat", path.to_str().unwrap());

    let listed = avail(&kiln, "localcat", &[]);
    assert_eq!(
        field_set(&listed, "name"),
        BTreeSet::from(["hello".to_string()])
    );
    kiln.run(&["pull", "localcat://hello"]).ok();
    let image = inspect(&kiln, "localcat://hello");
    assert_eq!(image["kind"], "catalog");
    assert_file(&image["source"]["paths"]["kernel"], &kernel_bytes, "kernel");
    assert_file(&image["source"]["paths"]["rootfs"], &rootfs_bytes, "rootfs");
    assert_eq!(image["source"]["boot_args"], HELLO_BOOT_ARGS);
    assert!(installed(&avail(&kiln, "localcat", &[]), "hello"));
}

#[test]
fn pulling_a_name_a_catalog_lacks_lists_what_it_has() {
    let catalog = Catalog::serve();
    let kiln = Kiln::new();
    use_catalog(&kiln, "mycat", &catalog.url());
    let unknown = kiln.run(&["pull", "mycat://nope"]).fails(1);
    assert!(
        unknown.stderr.contains("nope")
            && unknown.stderr.contains("hello")
            && unknown.stderr.contains("world"),
        "names what is available: {}",
        unknown.stderr
    );
    let empty = kiln.run(&["pull", "mycat://"]).fails(1);
    assert!(empty.stderr.contains("hello"), "{}", empty.stderr);
    let no_source = kiln.run(&["pull", "nosuch://hello"]).fails(1);
    assert!(no_source.stderr.contains("nosuch"), "{}", no_source.stderr);
    assert_eq!(catalog.file_downloads(), [0; 5]);
    assert_nothing_installed(&kiln, "mycat");
}

#[test]
fn a_catalog_outside_its_schema_is_refused() {
    let catalog = Catalog::serve();
    let good = catalog.json();
    let hello_kernel = format!("/images/hello/architectures/{ARCH}/kernel");
    let cases: Vec<(&str, Box<dyn Fn(&mut Value) + '_>, Option<&str>)> = vec![
        (
            "unknown image field",
            Box::new(|c: &mut Value| c["images"]["hello"]["colour"] = json!("red")),
            Some("colour"),
        ),
        (
            "unknown file field",
            Box::new(|c: &mut Value| c.pointer_mut(&hello_kernel).unwrap()["md5"] = json!("00")),
            Some("md5"),
        ),
        (
            "both sha256 and sha512",
            Box::new(|c: &mut Value| {
                c.pointer_mut(&hello_kernel).unwrap()["sha512"] = json!("0".repeat(128))
            }),
            None,
        ),
        (
            "no checksum",
            Box::new(|c: &mut Value| {
                c.pointer_mut(&hello_kernel)
                    .unwrap()
                    .as_object_mut()
                    .unwrap()
                    .remove("sha256");
            }),
            None,
        ),
        (
            "unknown top-level field",
            Box::new(|c: &mut Value| c["mirrors"] = json!([])),
            Some("mirrors"),
        ),
    ];
    for (what, edit, named) in &cases {
        let mut broken = good.clone();
        edit(&mut broken);
        catalog.publish(&broken);
        let kiln = Kiln::new();
        use_catalog(&kiln, "mycat", &catalog.url());
        let run = kiln.run(&["pull", "mycat://hello"]).fails(1);
        if let Some(field) = named {
            assert!(run.stderr.contains(field), "{what}: {}", run.stderr);
        }
        assert_nothing_installed(&kiln, "mycat");
    }
}

#[test]
fn a_catalog_checksum_or_size_mismatch_installs_nothing() {
    let catalog = Catalog::serve();
    let good = catalog.json();
    let hello = format!("/images/hello/architectures/{ARCH}");
    let cases: [(&str, &str, Value, &str); 4] = [
        ("kernel", "sha256", json!("0".repeat(64)), "sha256"),
        ("rootfs", "sha512", json!("0".repeat(128)), "sha512"),
        ("initrd", "sha256", json!(sha256_hex(b"other")), "sha256"),
        (
            "kernel",
            "size",
            json!(catalog.hello_kernel.len() + 1),
            "size",
        ),
    ];
    for (role, key, value, mentioned) in cases {
        let mut broken = good.clone();
        broken.pointer_mut(&format!("{hello}/{role}")).unwrap()[key] = value;
        catalog.publish(&broken);
        let kiln = Kiln::new();
        use_catalog(&kiln, "mycat", &catalog.url());
        let run = kiln.run(&["pull", "mycat://hello"]).fails(1);
        assert!(
            run.stderr.to_lowercase().contains(mentioned),
            "{role} {key}: {}",
            run.stderr
        );
        assert_nothing_installed(&kiln, "mycat");
        assert!(!installed(&avail(&kiln, "mycat", &[]), "hello"));
    }
}

#[test]
fn a_cached_file_changed_on_disk_is_noticed_and_downloaded_again() {
    let catalog = Catalog::serve();
    let kiln = Kiln::new();
    use_catalog(&kiln, "mycat", &catalog.url());
    kiln.run(&["pull", "mycat://hello"]).ok();
    let rootfs = path_of(&inspect(&kiln, "mycat://hello")["source"]["paths"]["rootfs"]);
    assert!(installed(&avail(&kiln, "mycat", &[]), "hello"));

    corrupt_in_place(&rootfs);
    assert!(
        !installed(&avail(&kiln, "mycat", &[]), "hello"),
        "a changed file is re-hashed and the image is not cached any more"
    );
    let quarantine = kiln.root().join("content-v1/quarantine");
    assert!(
        std::fs::read_dir(&quarantine).is_ok_and(|mut d| d.next().is_some()),
        "the bad file went to {}",
        quarantine.display()
    );

    let kernel_before = catalog.files.downloads("/v1/hello/vmlinux");
    let rootfs_before = catalog.files.downloads("/cdn/hello.ext4");
    kiln.run(&["pull", "mycat://hello"]).ok();
    assert_eq!(
        catalog.files.downloads("/cdn/hello.ext4"),
        rootfs_before + 1,
        "the rootfs is downloaded again"
    );
    assert_eq!(
        catalog.files.downloads("/v1/hello/vmlinux"),
        kernel_before,
        "the intact kernel is not"
    );
    let image = inspect(&kiln, "mycat://hello");
    assert_file(
        &image["source"]["paths"]["rootfs"],
        &catalog.hello_rootfs,
        "rootfs",
    );
    assert!(installed(&avail(&kiln, "mycat", &[]), "hello"));
    kiln.run(&["fsck"]).ok();
}

#[test]
fn fsck_finds_a_source_file_corrupted_in_place() {
    let catalog = Catalog::serve();
    let kiln = Kiln::new();
    use_catalog(&kiln, "mycat", &catalog.url());
    kiln.run(&["pull", "mycat://hello"]).ok();
    kiln.run(&["fsck"]).ok();
    let kernel_path = path_of(&inspect(&kiln, "mycat://hello")["source"]["paths"]["kernel"]);
    corrupt_in_place(&kernel_path);
    let found = kiln.run(&["fsck"]).fails(1);
    let digest = format!("sha256:{}", sha256_hex(&catalog.hello_kernel));
    assert!(
        found.stdout.contains(&format!("corrupt_blob: {digest}")),
        "{}",
        found.stdout
    );
}
