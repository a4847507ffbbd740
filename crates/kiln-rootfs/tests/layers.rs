//! Layer application: OCI semantics and a corpus of hostile layers.

mod support;
use support::Rng;

use kiln_rootfs::{
    Kind, ObjectDir, RootfsError, Tree, apply_layer, layer_pipe, parse_layer, write_cpio,
};

/// A layer tar built entry by entry; raw names bypass the tar crate's own
/// path checks, so hostile names reach kiln exactly as an attacker wrote them.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }

    fn header(name: &[u8], kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut header = tar::Header::new_ustar();
        header.as_ustar_mut().unwrap().name[..name.len()].copy_from_slice(name);
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        header
    }

    fn file(mut self, name: &str, content: &[u8], mode: u32, owner: (u64, u64)) -> Layer {
        let mut header = Layer::header(
            name.as_bytes(),
            tar::EntryType::Regular,
            content.len() as u64,
            mode,
        );
        header.set_uid(owner.0);
        header.set_gid(owner.1);
        header.set_cksum();
        self.0.append(&header, content).unwrap();
        self
    }

    fn dir(mut self, name: &str, mode: u32) -> Layer {
        self.0
            .append(
                &Layer::header(name.as_bytes(), tar::EntryType::Directory, 0, mode),
                &[][..],
            )
            .unwrap();
        self
    }

    fn link(mut self, kind: tar::EntryType, name: &str, target: &str) -> Layer {
        let mut header = Layer::header(name.as_bytes(), kind, 0, 0o777);
        header.as_ustar_mut().unwrap().linkname[..target.len()].copy_from_slice(target.as_bytes());
        header.set_cksum();
        self.0.append(&header, &[][..]).unwrap();
        self
    }

    fn device(mut self, name: &str, kind: tar::EntryType, major: u32, minor: u32) -> Layer {
        let mut header = Layer::header(name.as_bytes(), kind, 0, 0o600);
        header.set_device_major(major).unwrap();
        header.set_device_minor(minor).unwrap();
        header.set_cksum();
        self.0.append(&header, &[][..]).unwrap();
        self
    }

    fn xattr_file(mut self, name: &str, key: &str, value: &[u8]) -> Layer {
        let record = |k: &str, v: &[u8]| {
            let body_len = 1 + k.len() + 1 + v.len() + 1;
            let mut total = body_len + body_len.to_string().len();
            if (total).to_string().len() != body_len.to_string().len() {
                total += 1;
            }
            let mut r = format!("{total} {k}=").into_bytes();
            r.extend_from_slice(v);
            r.push(b'\n');
            r
        };
        let pax = record(&format!("SCHILY.xattr.{key}"), value);
        self.0
            .append(
                &Layer::header(
                    b"PaxHeaders/x",
                    tar::EntryType::XHeader,
                    pax.len() as u64,
                    0o644,
                ),
                &pax[..],
            )
            .unwrap();
        self.file(name, b"capable", 0o755, (0, 0))
    }

    /// A file whose name (PAX `path`) is longer than a ustar header holds.
    fn long_name(mut self, name: &str) -> Layer {
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        self.0.append_data(&mut header, name, &b"x"[..]).unwrap();
        self
    }

    /// A symlink whose target is longer than a ustar header holds.
    fn long_symlink(mut self, name: &str, target: &str) -> Layer {
        let mut header = tar::Header::new_gnu();
        header.set_size(0);
        header.set_mode(0o777);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Symlink);
        self.0.append_link(&mut header, name, target).unwrap();
        self
    }

    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn build(layers: Vec<Vec<u8>>) -> (tempfile::TempDir, Tree, ObjectDir, Result<(), RootfsError>) {
    let dir = tempfile::tempdir().unwrap();
    let objects = ObjectDir::open(&dir.path().join("objects")).unwrap();
    let mut tree = Tree::new();
    let mut result = Ok(());
    for (index, layer) in layers.into_iter().enumerate() {
        result = apply_layer(&mut tree, index, &layer[..], &objects);
        if result.is_err() {
            break;
        }
    }
    (dir, tree, objects, result)
}

/// [`build`] the way `kiln pull --rootfs` reads layers: each written into a
/// [`layer_pipe`] in small pieces by another thread (as a download's
/// decompression does), parsed from the pipe, then applied in order. The
/// writer must never hang, even when the parser stops early.
fn build_piped(layers: Vec<Vec<u8>>) -> Result<Tree, RootfsError> {
    let dir = tempfile::tempdir().unwrap();
    let objects = ObjectDir::open(&dir.path().join("objects")).unwrap();
    let mut tree = Tree::new();
    let parsed: Vec<_> = layers
        .into_iter()
        .enumerate()
        .map(|(index, layer)| {
            let (mut pipe, reader) = layer_pipe();
            let writer = std::thread::spawn(move || {
                use std::io::Write;
                for piece in layer.chunks(1000) {
                    if pipe.write_all(piece).is_err() {
                        return; // the parser is done with this layer
                    }
                }
            });
            let parsed = parse_layer(index, reader, &objects);
            writer.join().expect("the writer ends");
            parsed
        })
        .collect();
    for layer in parsed {
        layer.apply(&mut tree)?;
    }
    Ok(tree)
}

fn find(tree: &Tree, path: &str) -> Option<usize> {
    tree.walk()
        .into_iter()
        .find(|(p, _)| p.join(&b'/') == path.as_bytes())
        .map(|(_, i)| i)
}

fn paths(tree: &Tree) -> Vec<String> {
    tree.walk()
        .into_iter()
        .skip(1)
        .map(|(p, _)| String::from_utf8_lossy(&p.join(&b'/')).into_owned())
        .collect()
}

#[test]
fn whiteouts_opaque_directories_and_links_follow_the_oci_spec() {
    let base = Layer::new()
        .dir("etc/", 0o755)
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644, (0, 0))
        .file("etc/shadow", b"secret", 0o600, (0, 42))
        .dir("data/dir/", 0o750)
        .file("data/dir/x", b"x", 0o644, (0, 0))
        .file("data/dir/y", b"y", 0o644, (0, 0))
        .file("bin/tool", b"#!/bin/sh\n", 0o4755, (0, 0))
        .dir("tmp/", 0o1777)
        .device("dev/null", tar::EntryType::Char, 1, 3)
        .device("dev/sda", tar::EntryType::Block, 8, 0)
        .link(tar::EntryType::Fifo, "run/fifo", "")
        .bytes();
    let upper = Layer::new()
        .file("etc/.wh.shadow", b"", 0o644, (0, 0))
        .file("data/dir/.wh..wh..opq", b"", 0o644, (0, 0))
        .file("data/dir/z", b"z", 0o644, (1000, 1000))
        .link(tar::EntryType::Link, "bin/tool-link", "bin/tool")
        .link(tar::EntryType::Symlink, "bin/sh", "/bin/tool")
        .xattr_file("bin/ping", "security.capability", b"\x01\x00\x00\x02")
        .bytes();
    let (_dir, tree, objects, result) = build(vec![base, upper]);
    result.unwrap();
    let all = paths(&tree);
    assert!(
        !all.contains(&"etc/shadow".to_string()),
        "whiteout removed it: {all:?}"
    );
    assert!(all.contains(&"etc/passwd".to_string()));
    assert!(
        !all.contains(&"data/dir/x".to_string()) && !all.contains(&"data/dir/y".to_string()),
        "opaque dir hides lower entries"
    );
    let z = &tree.inodes[find(&tree, "data/dir/z").unwrap()];
    assert_eq!((z.uid, z.gid), (1000, 1000));
    assert_eq!(
        tree.inodes[find(&tree, "data/dir").unwrap()].mode,
        0o750,
        "the opaque dir keeps its metadata"
    );
    assert_eq!(
        find(&tree, "bin/tool"),
        find(&tree, "bin/tool-link"),
        "a hardlink shares the inode"
    );
    assert_eq!(tree.inodes[find(&tree, "bin/tool").unwrap()].mode, 0o4755);
    assert_eq!(tree.inodes[find(&tree, "tmp").unwrap()].mode, 0o1777);
    assert_eq!(
        tree.inodes[find(&tree, "dev/null").unwrap()].kind,
        Kind::CharDevice { major: 1, minor: 3 }
    );
    assert_eq!(
        tree.inodes[find(&tree, "dev/sda").unwrap()].kind,
        Kind::BlockDevice { major: 8, minor: 0 }
    );
    assert_eq!(
        tree.inodes[find(&tree, "run/fifo").unwrap()].kind,
        Kind::Fifo
    );
    assert_eq!(
        tree.inodes[find(&tree, "bin/sh").unwrap()].kind,
        Kind::Symlink(b"/bin/tool".to_vec())
    );
    let ping = &tree.inodes[find(&tree, "bin/ping").unwrap()];
    assert_eq!(
        ping.xattrs
            .get(&b"security.capability"[..])
            .map(Vec::as_slice),
        Some(&b"\x01\x00\x00\x02"[..])
    );
    assert_eq!(tree.link_counts()[find(&tree, "bin/tool").unwrap()], 2);

    // The cpio carries the same tree.
    let mut cpio = Vec::new();
    write_cpio(&tree, &objects, &mut cpio).unwrap();
    let text = String::from_utf8_lossy(&cpio);
    assert!(text.starts_with("070701"));
    assert!(text.contains("bin/tool-link") && text.contains("TRAILER!!!"));
    assert!(!text.contains("etc/shadow"));
}

#[test]
fn hostile_layers_are_refused_with_the_layer_and_entry_named() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dot-dot",
            Layer::new().file("../escape", b"x", 0o644, (0, 0)).bytes(),
            "'..'",
        ),
        (
            "dot-dot inside",
            Layer::new().file("a/../../b", b"x", 0o644, (0, 0)).bytes(),
            "'..'",
        ),
        (
            "a symlink loop on the path",
            Layer::new()
                .link(tar::EntryType::Symlink, "a", "b")
                .link(tar::EntryType::Symlink, "b", "a")
                .file("a/x", b"x", 0o644, (0, 0))
                .bytes(),
            "more than 40 symlinks",
        ),
        (
            "a name longer than Linux allows",
            Layer::new().long_name(&"n".repeat(300)).bytes(),
            "a name longer than 255 bytes",
        ),
        (
            "a symlink target longer than Linux allows",
            Layer::new()
                .long_symlink("s", &format!("a/{}", "b/".repeat(3000)))
                .bytes(),
            "symlink target longer than 4095 bytes",
        ),
        (
            "an empty symlink on the path",
            Layer::new()
                .link(tar::EntryType::Symlink, "e", "")
                .file("e/x", b"x", 0o644, (0, 0))
                .bytes(),
            "symlink without a target",
        ),
        (
            "write under a file",
            Layer::new()
                .file("a", b"x", 0o644, (0, 0))
                .file("a/b", b"y", 0o644, (0, 0))
                .bytes(),
            "not a directory",
        ),
        (
            "hardlink escape",
            Layer::new()
                .link(tar::EntryType::Link, "x", "../../etc/passwd")
                .bytes(),
            "'..'",
        ),
        (
            "hardlink to nothing",
            Layer::new()
                .link(tar::EntryType::Link, "x", "missing")
                .bytes(),
            "does not exist",
        ),
        (
            "hardlink to a directory",
            Layer::new()
                .dir("d/", 0o755)
                .link(tar::EntryType::Link, "x", "d")
                .bytes(),
            "hardlink to a directory",
        ),
        (
            "whiteout of ..",
            Layer::new().file(".wh..", b"", 0o644, (0, 0)).bytes(),
            "whiteout of an invalid name",
        ),
        (
            "whiteout of nothing",
            Layer::new().file("a/.wh.", b"", 0o644, (0, 0)).bytes(),
            "whiteout of an invalid name",
        ),
        (
            "root as a file",
            Layer::new().file("./", b"", 0o644, (0, 0)).bytes(),
            "root",
        ),
    ];
    for (name, layer, expected) in cases {
        let layers = vec![Layer::new().dir("ok/", 0o755).bytes(), layer];
        let piped = build_piped(layers.clone()).expect_err(name).to_string();
        let (dir, _tree, _objects, result) = build(layers);
        let error = result.expect_err(name).to_string();
        assert_eq!(piped, error, "{name}: the same error through a pipe");
        assert!(error.starts_with("layer 1, entry "), "{name}: {error}");
        assert!(error.contains(expected), "{name}: {error}");
        // Nothing but content objects was written, and only inside the target.
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            assert_eq!(entry.unwrap().file_name(), "objects", "{name}");
        }
    }
}

/// A path through a symlink goes where the symlink points inside the root,
/// as containerd and umoci apply it (a usrmerge `lib -> usr/lib` base under
/// a layer that writes `lib/...`): an absolute target starts at the root,
/// `..` stops there, hardlink targets and whiteouts resolve the same way,
/// and the entry itself replaces a symlink of its own name.
#[test]
fn symlinks_on_the_way_are_followed_inside_the_root() {
    let base = Layer::new()
        .dir("usr/lib/", 0o755)
        .file("usr/lib/old", b"old", 0o644, (0, 0))
        .link(tar::EntryType::Symlink, "lib", "usr/lib")
        .link(tar::EntryType::Symlink, "etc", "/host/etc")
        .link(tar::EntryType::Symlink, "up", "../../..")
        .link(tar::EntryType::Symlink, "hop", "lib")
        .link(tar::EntryType::Symlink, "replaced", "usr/lib/old")
        .bytes();
    let upper = Layer::new()
        .file("lib/added", b"added", 0o644, (0, 0))
        .file("lib/.wh.old", b"", 0o644, (0, 0))
        .file("hop/sub/deeper", b"deeper", 0o600, (0, 0))
        .file("etc/passwd", b"root", 0o644, (0, 0))
        .file("up/escaped", b"stays inside", 0o644, (0, 0))
        .link(tar::EntryType::Link, "hard", "lib/added")
        .file("replaced", b"a file now", 0o644, (0, 0))
        .bytes();
    let layers = vec![base, upper];
    let piped = build_piped(layers.clone()).unwrap();
    let (dir, tree, objects, result) = build(layers);
    result.unwrap();
    assert_eq!(paths(&tree), paths(&piped), "the same tree through a pipe");
    let all = paths(&tree);
    for expected in [
        "usr/lib/added",
        "usr/lib/sub/deeper",
        "host/etc/passwd",
        "escaped",
        "hard",
    ] {
        assert!(all.contains(&expected.to_string()), "{expected}: {all:?}");
    }
    assert!(
        !all.contains(&"usr/lib/old".to_string()),
        "whiteout through lib: {all:?}"
    );
    for link in ["lib", "etc", "up", "hop"] {
        assert!(
            matches!(
                tree.inodes[find(&tree, link).unwrap()].kind,
                Kind::Symlink(_)
            ),
            "{link} stays a symlink"
        );
    }
    assert_eq!(
        find(&tree, "hard"),
        find(&tree, "usr/lib/added"),
        "one inode"
    );
    let replaced = &tree.inodes[find(&tree, "replaced").unwrap()];
    let Kind::File(content) = &replaced.kind else {
        panic!("the entry replaces the symlink of its name, not what it points to")
    };
    assert_eq!(objects.read(content).unwrap(), b"a file now");
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        assert_eq!(entry.unwrap().file_name(), "objects");
    }
}

/// A name of 255 bytes, the most Linux allows, is removed by its whiteout,
/// whose own name is 4 bytes longer.
#[test]
fn a_whiteout_of_the_longest_name_applies() {
    let name = "n".repeat(255);
    let base = Layer::new().long_name(&format!("d/{name}")).bytes();
    let upper = Layer::new().long_name(&format!("d/.wh.{name}")).bytes();
    let (_dir, tree, _objects, result) = build(vec![base.clone()]);
    result.unwrap();
    assert!(paths(&tree).contains(&format!("d/{name}")));
    let (_dir, tree, _objects, result) = build(vec![base, upper]);
    result.unwrap();
    assert_eq!(paths(&tree), ["d"]);
}

#[test]
fn a_parser_that_stops_early_does_not_hold_up_the_writer() {
    // The first header is garbage, so parsing stops there; 20 MB follow
    // that nobody reads, more than the pipe holds.
    let mut layer = b"not a tar header".repeat(32);
    layer.extend(vec![7u8; 20 << 20]);
    let error = build_piped(vec![layer]).unwrap_err().to_string();
    assert!(error.starts_with("layer 0"), "{error}");
}

#[test]
fn truncated_absurd_and_garbage_layers_fail_cleanly() {
    // A header that promises a terabyte, followed by a few bytes.
    let mut huge = Layer::header(b"big", tar::EntryType::Regular, 1 << 40, 0o644)
        .as_bytes()
        .to_vec();
    huge.extend_from_slice(&[7u8; 1024]);
    let piped = build_piped(vec![huge.clone()]).unwrap_err().to_string();
    let (_dir, _tree, _objects, result) = build(vec![huge]);
    let error = result.unwrap_err().to_string();
    assert_eq!(piped, error, "the same error through a pipe");
    assert!(
        error.contains("layer 0")
            && (error.contains("truncated") || error.contains("malformed tar")),
        "{error}"
    );

    // PAX records the tar parser would read into memory whole: 2 MiB here,
    // gigabytes from a small gzip in an attack.
    let bloated = Layer::new()
        .file("before", b"x", 0o644, (0, 0))
        .xattr_file("after", "user.huge", &vec![b'v'; 2 << 20])
        .bytes();
    let piped = build_piped(vec![bloated.clone()]).unwrap_err().to_string();
    let (_dir, _tree, _objects, result) = build(vec![bloated]);
    let error = result.unwrap_err().to_string();
    assert_eq!(piped, error, "the same error through a pipe");
    assert!(
        error.starts_with("layer 0: malformed tar: an extension header"),
        "{error}"
    );

    let (_dir, _tree, _objects, result) = build(vec![
        b"this is not a tar archive at all, just some text that goes on".repeat(20),
    ]);
    assert!(
        result.unwrap_err().to_string().starts_with("layer 0"),
        "garbage is an error, not a panic"
    );
}

#[test]
fn absolute_paths_and_duplicates_are_neutralised() {
    let layer = Layer::new()
        .file("/etc/hostname", b"first", 0o644, (0, 0))
        .file("./etc/hostname", b"second", 0o600, (0, 0))
        .bytes();
    let (_dir, tree, objects, result) = build(vec![layer]);
    result.unwrap();
    assert_eq!(paths(&tree), ["etc", "etc/hostname"]);
    let inode = &tree.inodes[find(&tree, "etc/hostname").unwrap()];
    assert_eq!(inode.mode, 0o600, "the later entry wins");
    let Kind::File(content) = &inode.kind else {
        panic!()
    };
    assert_eq!(objects.read(content).unwrap(), b"second");
}

/// Layers are read through in parallel (in any order) and applied in order:
/// the error reported is the first one a plain walk meets, and a layer's
/// read error comes after the entries before it are applied.
#[test]
fn layers_parsed_out_of_order_fail_like_a_plain_walk() {
    let dir = tempfile::tempdir().unwrap();
    let objects = ObjectDir::open(&dir.path().join("objects")).unwrap();
    let base = Layer::new()
        .file("etc/hostname", b"base", 0o644, (0, 0))
        .bytes();
    let bad_link = Layer::new()
        .file("ok-before", b"x", 0o644, (0, 0))
        .link(tar::EntryType::Link, "hard", "missing")
        .bytes();
    let mut truncated = Layer::new()
        .file("big", &[7u8; 5000], 0o644, (0, 0))
        .bytes();
    truncated.truncate(1024);

    // Parsed last first, as a fast worker may.
    let third = kiln_rootfs::parse_layer(2, &truncated[..], &objects);
    let second = kiln_rootfs::parse_layer(1, &bad_link[..], &objects);
    let first = kiln_rootfs::parse_layer(0, &base[..], &objects);
    let mut tree = Tree::new();
    first.apply(&mut tree).unwrap();
    let error = second.apply(&mut tree).unwrap_err().to_string();
    assert!(
        error.starts_with("layer 1, entry \"hard\"") && error.contains("does not exist"),
        "{error}"
    );
    assert!(
        tree.entries(0).unwrap().contains_key(&b"ok-before"[..]),
        "entries before the bad one are applied"
    );
    let error = third.apply(&mut tree).unwrap_err().to_string();
    assert!(error.starts_with("layer 2"), "{error}");
}

/// The offsets of the tar headers in `layer` (blocks whose checksum holds).
fn header_offsets(layer: &[u8]) -> Vec<usize> {
    (0..layer.len() / 512)
        .map(|block| block * 512)
        .filter(|&at| {
            let header = &layer[at..at + 512];
            let stored = std::str::from_utf8(&header[148..156])
                .ok()
                .and_then(|text| u32::from_str_radix(text.trim_matches([' ', '\0']), 8).ok());
            let sum: u32 = header
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        u32::from(*b)
                    }
                })
                .sum();
            header.iter().any(|b| *b != 0) && stored == Some(sum)
        })
        .collect()
}

/// Recomputes the checksum of the header at `at`, so a damaged field gets
/// past the checksum and reaches the parser.
fn reseal(layer: &mut [u8], at: usize) {
    layer[at + 148..at + 156].fill(b' ');
    let sum: u32 = layer[at..at + 512].iter().map(|b| u32::from(*b)).sum();
    layer[at + 148..at + 156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// One seeded damage to a layer: flipped bytes anywhere, a header field
/// overwritten (with the checksum made right again), a cut, or a block
/// repeated.
fn damage(layer: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = layer.to_vec();
    let headers = header_offsets(layer);
    match rng.below(5) {
        0 => {
            for _ in 0..=rng.below(8) {
                let at = rng.below(out.len());
                out[at] = rng.next() as u8;
            }
        }
        1 | 2 => {
            let header = headers[rng.below(headers.len())];
            // Fields: name, mode, uid, gid, size, mtime, type, linkname,
            // magic, owner names, device numbers, prefix.
            let at = header + rng.below(500);
            let fill = match rng.below(4) {
                0 => rng.next() as u8,
                1 => b'7',
                2 => b'/',
                _ => 0,
            };
            let end = (at + 1 + rng.below(12)).min(header + 500);
            for (offset, byte) in out.iter_mut().enumerate().take(end).skip(at) {
                if !(148..156).contains(&(offset - header)) {
                    *byte = fill;
                }
            }
            reseal(&mut out, header);
        }
        3 => out.truncate(rng.below(out.len())),
        _ => {
            let block = rng.below(out.len() / 512) * 512;
            let copy = out[block..block + 512].to_vec();
            let to = rng.below(out.len() / 512) * 512;
            out.splice(to..to, copy);
        }
    }
    out
}

/// What a tree's paths must be, whatever the layers said: names that are
/// one component each, never empty, `.` or `..`, nor holding a `/` or NUL.
fn check_names(tree: &Tree, case: &str) {
    for (path, _) in tree.walk().into_iter().skip(1) {
        for name in &path {
            assert!(
                !name.is_empty()
                    && name != b"."
                    && name != b".."
                    && !name.contains(&b'/')
                    && !name.contains(&0),
                "{case}: the name {:?} got into the tree",
                String::from_utf8_lossy(name)
            );
        }
    }
}

/// Seeded random damage to layers that exercise every entry kind (PAX
/// records and xattrs, hardlinks, symlinks, devices, fifos, whiteouts and
/// an opaque directory): each damaged layer is refused with an error naming
/// its layer, or gives a tree of valid names that every writer can write;
/// never a panic. The pipe that `kiln pull --rootfs` parses through gives
/// the same answer as a plain read.
#[test]
fn randomly_damaged_layers_are_refused_or_give_a_valid_tree_never_a_panic() {
    let big: Vec<u8> = (0..3000u32).map(|n| (n * 7) as u8).collect();
    let base = Layer::new()
        .dir("etc/", 0o755)
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644, (0, 0))
        .file("etc/big", &big, 0o600, (7, 42))
        .dir("data/dir/", 0o750)
        .file("data/dir/x", b"x", 0o644, (0, 0))
        .file("bin/tool", b"#!/bin/sh\n", 0o4755, (0, 0))
        .device("dev/null", tar::EntryType::Char, 1, 3)
        .link(tar::EntryType::Fifo, "run/fifo", "")
        .dir("usr/lib/", 0o755)
        .file("usr/lib/old", b"old", 0o644, (0, 0))
        .link(tar::EntryType::Symlink, "lib", "usr/lib")
        .link(tar::EntryType::Symlink, "abs", "/usr/lib")
        .bytes();
    let upper = Layer::new()
        .file("lib/added", b"through a symlink", 0o644, (0, 0))
        .file("abs/.wh.old", b"", 0o644, (0, 0))
        .link(tar::EntryType::Link, "lib/hard", "abs/added")
        .file("etc/.wh.passwd", b"", 0o644, (0, 0))
        .file("data/dir/.wh..wh..opq", b"", 0o644, (0, 0))
        .file("data/dir/z", &big[..700], 0o644, (1000, 1000))
        .link(tar::EntryType::Link, "bin/tool-link", "bin/tool")
        .link(tar::EntryType::Symlink, "bin/sh", "/bin/tool")
        .xattr_file("bin/ping", "security.capability", b"\x01\x00\x00\x02")
        .bytes();
    let cases = support::damage_cases(600);
    let mut refused = 0;
    for seed in 0..cases {
        let mut rng = Rng(seed);
        let which = rng.below(2);
        let mut layers = vec![base.clone(), upper.clone()];
        layers[which] = damage(&layers[which], &mut rng);
        let case = format!("seed {seed} (layer {which} damaged)");
        let outcome = std::panic::catch_unwind(|| {
            let (dir, tree, objects, result) = build(layers.clone());
            let piped = build_piped(layers.clone());
            match (&result, &piped) {
                (Err(error), Err(again)) => {
                    let error = error.to_string();
                    assert_eq!(
                        error,
                        again.to_string(),
                        "{case}: the same error through a pipe"
                    );
                    assert!(error.starts_with("layer "), "{case}: {error}");
                }
                (Ok(()), Ok(again)) => assert_eq!(paths(&tree), paths(again), "{case}"),
                _ => panic!(
                    "{case}: a plain read gave {result:?}, the pipe {:?}",
                    piped.err()
                ),
            }
            // Nothing but content objects was written, and only inside the target.
            for entry in std::fs::read_dir(dir.path()).unwrap() {
                assert_eq!(entry.unwrap().file_name(), "objects", "{case}");
            }
            if result.is_err() {
                return false;
            }
            check_names(&tree, &case);
            write_cpio(&tree, &objects, &mut std::io::sink()).expect(&case);
            if seed % 6 == 0 {
                kiln_rootfs::write_erofs(&tree, &objects, &dir.path().join("e"), b"t", None)
                    .expect(&case);
                kiln_rootfs::write_ext4(&tree, &objects, &dir.path().join("x"), None, b"t", None)
                    .expect(&case);
            }
            true
        });
        match outcome {
            Ok(written) => refused += usize::from(!written),
            Err(_) => panic!("{case} panicked"),
        }
    }
    // The damage reaches the parser's checks, and some of it passes them.
    eprintln!("{refused} of {cases} damaged layers refused");
    assert!(
        refused > cases as usize / 10 && refused < cases as usize * 9 / 10,
        "{refused} of {cases} refused"
    );
}
