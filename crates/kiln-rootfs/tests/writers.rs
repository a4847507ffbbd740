//! kiln's own ext4 and EROFS writers on the shapes small fixture images do
//! not reach: a directory of thousands of entries (many directory blocks),
//! symlinks on both sides of the 60-byte inline limit, a device number
//! beyond 8 bits, xattrs too large for an inode, and a file large enough to
//! cross five block groups (an extent tree with a leaf block). The images
//! are checked by the filesystems' own tools (`e2fsck -fn`, `fsck.erofs`),
//! read back through them (`debugfs rdump`, `fsck.erofs --extract`) and
//! through the kernel (a read-only loop mount: the suite runs as root).

mod support;
use support::Rng;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use kiln_rootfs::tree::{DirEntry, InodeId, ROOT};
use kiln_rootfs::{Inode, Kind, ObjectDir, Tree, write_erofs, write_ext4};

const BIG: u64 = 560 << 20;

fn add(tree: &mut Tree, parent: InodeId, name: &str, inode: Inode) -> InodeId {
    let id = tree.add(inode);
    let Kind::Directory(entries) = &mut tree.inodes[parent].kind else {
        panic!("not a directory")
    };
    entries.insert(
        name.as_bytes().to_vec(),
        DirEntry {
            inode: id,
            layer: 0,
        },
    );
    id
}

fn inode(kind: Kind) -> Inode {
    Inode {
        kind,
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        mtime: 1_700_000_000,
        xattrs: BTreeMap::new(),
    }
}

/// A byte pattern that differs at every offset class, so a misplaced block shows.
struct Pattern(u64);

impl Read for Pattern {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        for byte in buffer.iter_mut() {
            *byte = ((self.0 / 4096) as u8) ^ (self.0 as u8);
            self.0 += 1;
        }
        Ok(buffer.len())
    }
}

fn build(objects: &mut ObjectDir, big: bool) -> Tree {
    let mut tree = Tree::new();
    let many = add(&mut tree, ROOT, "many", {
        let mut dir = Inode::implicit_directory();
        dir.mode = 0o750;
        dir
    });
    for n in 0..3000 {
        let body = format!("file {n}\n");
        let content = objects
            .put(&mut body.as_bytes(), body.len() as u64)
            .unwrap();
        add(
            &mut tree,
            many,
            &format!("{n:0>5}-{}", "x".repeat(90)),
            inode(Kind::File(content)),
        );
    }
    add(
        &mut tree,
        ROOT,
        "short",
        inode(Kind::Symlink(vec![b's'; 59])),
    );
    add(
        &mut tree,
        ROOT,
        "edge",
        inode(Kind::Symlink(vec![b'e'; 60])),
    );
    add(
        &mut tree,
        ROOT,
        "long",
        inode(Kind::Symlink(vec![b'l'; 300])),
    );
    add(
        &mut tree,
        ROOT,
        "wide-device",
        inode(Kind::CharDevice {
            major: 300,
            minor: 70000,
        }),
    );
    let content = objects.put(&mut &b"attrs"[..], 5).unwrap();
    let mut attrs = inode(Kind::File(content));
    attrs.xattrs.insert(b"user.big".to_vec(), vec![b'v'; 1500]);
    attrs.xattrs.insert(
        b"security.capability".to_vec(),
        vec![1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    add(&mut tree, ROOT, "attrs", attrs);
    // Whole blocks plus a tail (EROFS packs the tail after the inode), owned
    // by a uid beyond 16 bits (an extended inode).
    let content = objects.put(&mut Pattern(0).take(9000), 9000).unwrap();
    let mut tail = inode(Kind::File(content));
    tail.uid = 70000;
    add(&mut tree, ROOT, "tail", tail);
    if big {
        let content = objects.put(&mut Pattern(0).take(BIG), BIG).unwrap();
        add(&mut tree, ROOT, "big", inode(Kind::File(content)));
    }
    tree
}

/// Checks the tree through the kernel: a read-only loop mount.
fn check_mounted(image: &Path, filesystem: &str, big: bool) {
    let target = tempfile::tempdir().unwrap();
    run(Command::new("mount")
        .args(["-t", filesystem, "-o", "loop,ro"])
        .arg(image)
        .arg(target.path()));
    let checked = std::panic::catch_unwind(|| {
        check_extracted(target.path(), big);
        use std::os::unix::fs::MetadataExt;
        let tail = std::fs::metadata(target.path().join("tail")).unwrap();
        assert_eq!((tail.uid(), tail.mtime()), (70000, 1_700_000_000));
        let many = std::fs::metadata(target.path().join("many")).unwrap();
        assert_eq!(
            (many.uid(), many.mode() & 0o7777, many.mtime()),
            (0, 0o750, 0)
        );
    });
    run(Command::new("umount").arg(target.path()));
    checked.unwrap();
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("the tool is installed");
    assert!(
        output.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn check_extracted(root: &Path, big: bool) {
    let many: Vec<_> = std::fs::read_dir(root.join("many")).unwrap().collect();
    assert_eq!(many.len(), 3000);
    let name = format!("{:0>5}-{}", 2999, "x".repeat(90));
    assert_eq!(
        std::fs::read_to_string(root.join("many").join(name)).unwrap(),
        "file 2999\n"
    );
    for (link, byte, length) in [("short", b's', 59), ("edge", b'e', 60), ("long", b'l', 300)] {
        let target = std::fs::read_link(root.join(link)).unwrap();
        assert_eq!(
            target.as_os_str().len(),
            length,
            "{link}: its target survives"
        );
        assert!(target.to_string_lossy().bytes().all(|b| b == byte));
    }
    assert_eq!(std::fs::read(root.join("attrs")).unwrap(), b"attrs");
    let mut expected = Vec::new();
    Pattern(0).take(9000).read_to_end(&mut expected).unwrap();
    assert!(
        std::fs::read(root.join("tail")).unwrap() == expected,
        "tail"
    );
    if big {
        let mut ours = std::fs::File::open(root.join("big")).unwrap();
        let mut expected = Pattern(0).take(BIG);
        let (mut a, mut b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        let mut offset = 0u64;
        loop {
            let n = ours.read(&mut a).unwrap();
            if n == 0 {
                break;
            }
            expected.read_exact(&mut b[..n]).unwrap();
            assert!(a[..n] == b[..n], "big differs near byte {offset}");
            offset += n as u64;
        }
        assert_eq!(offset, BIG);
    }
}

#[test]
fn ext4_with_large_directories_symlinks_devices_xattr_blocks_and_an_extent_tree() {
    let dir = tempfile::tempdir().unwrap();
    let mut objects = ObjectDir::open(&dir.path().join("objects")).unwrap();
    let tree = build(&mut objects, true);
    let image = dir.path().join("image.ext4");
    let (digest, size) = write_ext4(&tree, &objects, &image, None, b"test", None).unwrap();
    assert_eq!(std::fs::metadata(&image).unwrap().len(), size);
    assert!(size > BIG);
    assert!(digest.matches(&std::fs::read(&image).unwrap()));
    run(Command::new("e2fsck").arg("-fn").arg(&image));

    let stat = run(Command::new("debugfs")
        .arg("-R")
        .arg("stat /big")
        .arg(&image));
    assert!(
        stat.contains("(ETB0)"),
        "a file across five groups has an extent tree block: {stat}"
    );
    let device = run(Command::new("debugfs")
        .arg("-R")
        .arg("stat /wide-device")
        .arg(&image));
    assert!(
        device.contains("Device major/minor number: 300:70000"),
        "{device}"
    );
    let attrs = run(Command::new("debugfs")
        .arg("-R")
        .arg("ea_list /attrs")
        .arg(&image));
    assert!(attrs.contains("user.big"), "{attrs}");
    assert!(attrs.contains("security.capability"), "{attrs}");
    let owner = run(Command::new("debugfs")
        .arg("-R")
        .arg("stat /many")
        .arg(&image));
    assert!(owner.contains("Mode:  0750"), "{owner}");

    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", out.display()))
        .arg(&image));
    check_extracted(&out, true);
    check_mounted(&image, "ext4", true);

    // kiln's own ext4 reader (what `kiln snapshot` uses) sees the same tree.
    let reader = kiln_rootfs::Ext4Image::open(&image).unwrap();
    let root = reader.inode(2).unwrap();
    let names: Vec<(Vec<u8>, u32)> = reader.read_dir(&root).unwrap();
    let find = |name: &str| {
        let number = names.iter().find(|(n, _)| n == name.as_bytes()).unwrap().1;
        reader.inode(number).unwrap()
    };
    let big_inode = find("big");
    let mut content = reader.reader(&big_inode).unwrap();
    let mut expected = Pattern(0).take(BIG);
    let (mut a, mut b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = content.read(&mut a).unwrap();
        if n == 0 {
            break;
        }
        expected.read_exact(&mut b[..n]).unwrap();
        assert!(a[..n] == b[..n], "the reader follows the extent tree");
    }
    assert_eq!(find("wide-device").device(), (300, 70000));
    assert_eq!(reader.read_link(&find("long")).unwrap(), vec![b'l'; 300]);
    assert_eq!(reader.read_link(&find("short")).unwrap(), vec![b's'; 59]);
    let attrs = reader.xattrs(&find("attrs")).unwrap();
    assert_eq!(attrs[&b"user.big"[..]], vec![b'v'; 1500]);
    assert_eq!(find("tail").uid, 70000);
    let many = reader.read_dir(&find("many")).unwrap();
    assert_eq!(many.len(), 3000);

    // The same tree and identity give the same bytes.
    let again = dir.path().join("again.ext4");
    let (second, _) = write_ext4(&tree, &objects, &again, None, b"test", None).unwrap();
    assert_eq!(digest, second);

    // Mounted read-write, a directory the guest fills is indexed by the
    // kernel (dir_index), and the filesystem stays clean.
    let target = tempfile::tempdir().unwrap();
    run(Command::new("mount")
        .args(["-t", "ext4", "-o", "loop"])
        .arg(&again)
        .arg(target.path()));
    let filled = std::panic::catch_unwind(|| {
        let grown = target.path().join("grown");
        std::fs::create_dir(&grown).unwrap();
        for n in 0..2000 {
            std::fs::write(grown.join(format!("a-rather-long-file-name-{n:05}")), b"x").unwrap();
        }
    });
    run(Command::new("umount").arg(target.path()));
    filled.unwrap();
    run(Command::new("e2fsck").arg("-fn").arg(&again));
    let htree = run(Command::new("debugfs")
        .arg("-R")
        .arg("htree /grown")
        .arg(&again));
    assert!(
        htree.contains("Root node dump"),
        "an indexed directory: {htree}"
    );
}

#[test]
fn erofs_with_large_directories_symlinks_devices_and_large_xattrs() {
    let dir = tempfile::tempdir().unwrap();
    let mut objects = ObjectDir::open(&dir.path().join("objects")).unwrap();
    let tree = build(&mut objects, false);
    let image = dir.path().join("image.erofs");
    let (digest, _) = write_erofs(&tree, &objects, &image, b"test", None).unwrap();
    assert!(digest.matches(&std::fs::read(&image).unwrap()));
    let out = dir.path().join("out");
    run(Command::new("fsck.erofs")
        .arg(format!("--extract={}", out.display()))
        .arg("--no-preserve")
        .arg(&image));
    check_extracted(&out, false);
    check_mounted(&image, "erofs", false);
    let (second, _) =
        write_erofs(&tree, &objects, &dir.path().join("again"), b"test", None).unwrap();
    assert_eq!(
        digest, second,
        "the same tree and identity give the same bytes"
    );
}

/// The writers tell how far they are: (0, total) first, then growing
/// counts, then (total, total), where total is the image's size, holes
/// included (an ext4 image of 64 MiB holding 40 MiB).
#[test]
fn writers_tell_their_progress_from_zero_to_the_image_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut objects = ObjectDir::open(&dir.path().join("objects")).unwrap();
    let mut tree = build(&mut objects, false);
    let content = objects
        .put(&mut Pattern(0).take(40 << 20), 40 << 20)
        .unwrap();
    add(&mut tree, ROOT, "forty", inode(Kind::File(content)));
    for format in ["ext4", "erofs"] {
        let told = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(u64, u64)>::new()));
        let record = told.clone();
        let tell: kiln_rootfs::OnWritten =
            std::sync::Arc::new(move |done, total| record.lock().unwrap().push((done, total)));
        let output = dir.path().join(format);
        let (_, size) = match format {
            "ext4" => write_ext4(&tree, &objects, &output, Some(64 << 20), b"t", Some(tell)),
            _ => write_erofs(&tree, &objects, &output, b"t", Some(tell)),
        }
        .unwrap();
        let told = told.lock().unwrap().clone();
        assert_eq!(told.first(), Some(&(0, size)), "{format}: {told:?}");
        assert_eq!(told.last(), Some(&(size, size)), "{format}: {told:?}");
        assert!(told.len() >= 4, "{format}: told every few MiB: {told:?}");
        assert!(
            told.windows(2).all(|w| w[0].0 <= w[1].0 && w[1].1 == size),
            "{format}: {told:?}"
        );
    }
}

#[test]
fn a_size_too_small_is_an_error_naming_both_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let mut objects = ObjectDir::open(&dir.path().join("objects")).unwrap();
    let mut tree = build(&mut objects, false);
    let content = objects
        .put(&mut Pattern(0).take(40 << 20), 40 << 20)
        .unwrap();
    add(&mut tree, ROOT, "forty", inode(Kind::File(content)));
    for size in [32 << 20, 1 << 20] {
        let error = write_ext4(
            &tree,
            &objects,
            &dir.path().join("small"),
            Some(size),
            b"t",
            None,
        )
        .unwrap_err();
        assert!(error.to_string().contains("does not fit"), "{error}");
        assert!(error.hint().unwrap().contains("--size"));
    }
}

#[test]
fn the_default_ext4_size_holds_more_inodes_than_one_group_can() {
    let dir = tempfile::tempdir().unwrap();
    let objects = ObjectDir::open(&dir.path().join("objects")).unwrap();
    let mut tree = Tree::new();
    for d in 0..70 {
        let directory = add(
            &mut tree,
            ROOT,
            &format!("d{d}"),
            Inode::implicit_directory(),
        );
        for f in 0..1000 {
            let content = objects.put(&mut std::io::empty(), 0).unwrap();
            add(
                &mut tree,
                directory,
                &format!("f{f}"),
                inode(Kind::File(content)),
            );
        }
    }
    let image = dir.path().join("many.ext4");
    write_ext4(&tree, &objects, &image, None, b"many", None).unwrap();
    run(Command::new("e2fsck").arg("-fn").arg(&image));
    let reader = kiln_rootfs::Ext4Image::open(&image).unwrap();
    let root = reader.inode(2).unwrap();
    assert_eq!(
        reader.read_dir(&root).unwrap().len(),
        71,
        "70 directories and lost+found"
    );
}

/// A sandbox's disk is untrusted: kiln's ext4 reader refuses a directory
/// linked into itself and a directory claiming an absurd size, with errors,
/// instead of looping or exhausting memory.
#[test]
fn the_ext4_reader_refuses_cycles_and_absurd_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let objects = ObjectDir::open(&dir.path().join("objects")).unwrap();
    let mut tree = Tree::new();
    let d = add(&mut tree, ROOT, "d", Inode::implicit_directory());
    let content = objects.put(&mut &b"x"[..], 1).unwrap();
    add(&mut tree, d, "file", inode(Kind::File(content)));
    let debugfs = |image: &Path, request: &str| {
        run(Command::new("debugfs")
            .arg("-w")
            .arg("-R")
            .arg(request)
            .arg(image));
    };
    let diff = |image: &Path| {
        let view = kiln_rootfs::Ext4Image::open(image).unwrap();
        kiln_rootfs::write_diff_layer(&tree, &objects, &view, std::io::sink())
    };

    let looped = dir.path().join("loop.ext4");
    write_ext4(&tree, &objects, &looped, None, b"t", None).unwrap();
    assert_eq!(diff(&looped).unwrap().changed, 0, "an unchanged disk");
    debugfs(&looped, "ln / /d/up");
    let error = diff(&looped).unwrap_err().to_string();
    assert!(error.contains("ancestors"), "{error}");

    let huge = dir.path().join("huge.ext4");
    write_ext4(&tree, &objects, &huge, None, b"t", None).unwrap();
    debugfs(&huge, "sif /d size 0x7fffffffffff");
    let error = diff(&huge).unwrap_err().to_string();
    assert!(error.contains("claims"), "{error}");
}

/// A root whose xattrs do not fit before the first block ends moves to the
/// next block; the superblock must name where it is.
#[test]
fn an_erofs_root_with_large_xattrs_mounts() {
    let dir = tempfile::tempdir().unwrap();
    let objects = ObjectDir::open(&dir.path().join("objects")).unwrap();
    let mut tree = Tree::new();
    tree.inodes[ROOT]
        .xattrs
        .insert(b"user.signature".to_vec(), vec![b's'; 2950]);
    let content = objects.put(&mut &b"hello"[..], 5).unwrap();
    add(&mut tree, ROOT, "file", inode(Kind::File(content)));
    let image = dir.path().join("root.erofs");
    write_erofs(&tree, &objects, &image, b"t", None).unwrap();
    run(Command::new("fsck.erofs").arg(&image));
    let target = tempfile::tempdir().unwrap();
    run(Command::new("mount")
        .args(["-t", "erofs", "-o", "loop,ro"])
        .arg(&image)
        .arg(target.path()));
    let read = std::fs::read(target.path().join("file"));
    run(Command::new("umount").arg(target.path()));
    assert_eq!(read.unwrap(), b"hello");
}

#[test]
fn a_layer_data_file_is_laid_out_as_planned_and_named_in_the_device_table() {
    let dir = tempfile::tempdir().unwrap();
    let objects = ObjectDir::open(&dir.path().join("objects")).unwrap();
    // Contents under a block stay out; the others go block-aligned, in order.
    let sizes = [100u64, 4096, 9000, 5, 12288, 4097];
    let contents: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(n, &size)| {
            objects
                .put(&mut Pattern(n as u64 * 7919).take(size), size)
                .unwrap()
        })
        .collect();
    let (placed, blocks) = kiln_rootfs::plan_layer_data(&contents).unwrap().unwrap();
    let output = dir.path().join("layer");
    let (digest, size, written) = kiln_rootfs::write_layer_data(&contents, &objects, &output, None)
        .unwrap()
        .unwrap();
    assert_eq!(written, placed, "the plan is what is written");
    assert_eq!(size, blocks * 4096);
    let bytes = std::fs::read(&output).unwrap();
    assert_eq!(digest, kiln_types::Digest::sha256_of(&bytes));
    // 4096 → block 0, 9000 → blocks 1-3, 12288 → 4-6, 4097 → 7-8.
    let expected: Vec<(u64, u32)> = vec![(4096, 0), (9000, 1), (12288, 4), (4097, 7)];
    for (content, &(want_size, block)) in contents.iter().filter(|c| c.size >= 4096).zip(&expected)
    {
        assert_eq!(content.size, want_size);
        assert_eq!(placed[&content.offset], block);
        let at = block as usize * 4096;
        assert_eq!(
            bytes[at..at + content.size as usize],
            objects.read(content).unwrap()[..]
        );
    }
    assert_eq!(blocks, 9);
    assert!(
        contents
            .iter()
            .filter(|c| c.size < 4096)
            .all(|c| !placed.contains_key(&c.offset))
    );
    // Nothing of a block or more: no file.
    let small = [contents[0].clone(), contents[3].clone()];
    assert!(kiln_rootfs::plan_layer_data(&small).unwrap().is_none());
    assert!(
        kiln_rootfs::write_layer_data(&small, &objects, &dir.path().join("none"), None)
            .unwrap()
            .is_none()
    );

    // The metadata image's device table names the file.
    let mut tree = Tree::new();
    add(
        &mut tree,
        ROOT,
        "big",
        inode(Kind::File(contents[2].clone())),
    );
    let device = kiln_rootfs::LayerDevice {
        tag: digest.hex().to_string(),
        blocks: blocks as u32,
        placed,
    };
    let metadata = dir.path().join("metadata.erofs");
    kiln_rootfs::write_erofs_layered(&tree, &objects, &metadata, b"test", &[device], None).unwrap();
    assert_eq!(
        kiln_rootfs::erofs_device_tags(&metadata).unwrap(),
        [digest.hex().to_string()]
    );
    assert_eq!(
        kiln_rootfs::erofs_device_tags(&dir.path().join("flat.erofs")).ok(),
        None
    );
    let flat = dir.path().join("flat.erofs");
    write_erofs(&tree, &objects, &flat, b"test", None).unwrap();
    assert!(kiln_rootfs::erofs_device_tags(&flat).unwrap().is_empty());
}

/// An output that refuses more than `left` bytes: a diff of a small disk
/// that streams gigabytes is a failure the test reports as an error.
struct Capped {
    left: u64,
}

impl std::io::Write for Capped {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = bytes.len() as u64;
        if n > self.left {
            return Err(std::io::Error::other("more output than the disk holds"));
        }
        self.left -= n;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A sandbox's disk is untrusted input to `kiln snapshot`, which reads it
/// with kiln's own ext4 reader. Seeded random damage to the metadata of a
/// real image (superblock, group descriptors, bitmaps, inodes, directory,
/// extent and xattr blocks: every block that is not all zeros) must give an
/// error or a diff, and never a panic or a hang.
#[test]
fn randomly_damaged_ext4_disks_give_an_error_or_a_diff_never_a_panic_or_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let objects = ObjectDir::open(&dir.path().join("objects")).unwrap();
    let mut tree = Tree::new();
    let etc = add(&mut tree, ROOT, "etc", Inode::implicit_directory());
    for n in 0..40 {
        let body = format!("line {n}\n").repeat(n * 20);
        let content = objects
            .put(&mut body.as_bytes(), body.len() as u64)
            .unwrap();
        add(
            &mut tree,
            etc,
            &format!("file-{n}"),
            inode(Kind::File(content)),
        );
    }
    let nested = add(&mut tree, etc, "nested", Inode::implicit_directory());
    add(
        &mut tree,
        nested,
        "short",
        inode(Kind::Symlink(b"../file-1".to_vec())),
    );
    add(
        &mut tree,
        nested,
        "long",
        inode(Kind::Symlink(vec![b'l'; 300])),
    );
    add(
        &mut tree,
        ROOT,
        "null",
        inode(Kind::CharDevice { major: 1, minor: 3 }),
    );
    let content = objects.put(&mut &b"attrs"[..], 5).unwrap();
    let mut attrs = inode(Kind::File(content));
    attrs.xattrs.insert(b"user.big".to_vec(), vec![b'v'; 1500]);
    attrs.xattrs.insert(b"user.small".to_vec(), b"s".to_vec());
    let linked = add(&mut tree, ROOT, "attrs", attrs);
    let Kind::Directory(entries) = &mut tree.inodes[nested].kind else {
        panic!()
    };
    entries.insert(
        b"hardlink".to_vec(),
        DirEntry {
            inode: linked,
            layer: 0,
        },
    );
    let content = objects.put(&mut Pattern(0).take(300_000), 300_000).unwrap();
    add(&mut tree, ROOT, "large", inode(Kind::File(content)));

    let image = dir.path().join("disk.ext4");
    write_ext4(&tree, &objects, &image, None, b"t", None).unwrap();
    let pristine = std::fs::read(&image).unwrap();
    // Damage goes where the reader looks: the superblock and the group
    // descriptors, the inode of every path, the xattr block, and the
    // directories' blocks (`debugfs` says where each is).
    let block = 1024usize << u32::from_le_bytes(pristine[1048..1052].try_into().unwrap());
    let mut targets = vec![(1024, 1024), (block.max(2048), 64)];
    let mut requests = String::new();
    for (path, id) in tree.walk() {
        let path = String::from_utf8(path.join(&b'/')).unwrap();
        requests.push_str(&format!("imap /{path}\nstat /{path}\n"));
        if matches!(tree.inodes[id].kind, Kind::Directory(_)) {
            let listed = run(Command::new("debugfs")
                .arg("-R")
                .arg(format!("blocks /{path}"))
                .arg(&image));
            for number in listed
                .split_whitespace()
                .filter_map(|w| w.parse::<usize>().ok())
            {
                targets.push((number * block, block));
            }
        }
    }
    let script = dir.path().join("requests");
    std::fs::write(&script, requests).unwrap();
    let listed = run(Command::new("debugfs").arg("-f").arg(&script).arg(&image));
    for line in listed.lines().map(str::trim) {
        if let Some(place) = line.strip_prefix("located at block ") {
            let (number, offset) = place.split_once(", offset 0x").unwrap();
            let at = number.parse::<usize>().unwrap() * block
                + usize::from_str_radix(offset, 16).unwrap();
            targets.push((at, 256));
        } else if let Some(acl) = line.strip_prefix("File ACL: ") {
            let number: usize = acl.split_whitespace().next().unwrap().parse().unwrap();
            if number != 0 {
                targets.push((number * block, block));
            }
        }
    }
    assert!(targets.len() > 50, "{targets:?}");
    let cap = 4 * pristine.len() as u64;
    let (tree, objects) = (std::sync::Arc::new(tree), std::sync::Arc::new(objects));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();

    let cases = support::damage_cases(2000);
    let mut refused = 0;
    for seed in 0..cases {
        use std::os::unix::fs::FileExt;
        let mut rng = Rng(seed);
        let mut damaged = Vec::new();
        for _ in 0..=rng.below(4) {
            let (start, length) = targets[rng.below(targets.len())];
            let at = start + rng.below(length - 4);
            let mut value = pristine[at..at + 4].to_vec();
            match rng.below(3) {
                0 => value[0] = rng.next() as u8,
                // A count, size or block number gone wild or gone.
                1 => {
                    value = [0u32, 1, 0xffff_ffff, 0x7fff_ffff][rng.below(4)]
                        .to_le_bytes()
                        .to_vec()
                }
                _ => value[0] ^= 1 << rng.below(8),
            }
            file.write_all_at(&value, at as u64).unwrap();
            damaged.push(at);
        }
        let (done, outcome) = std::sync::mpsc::channel();
        let (tree, objects, image) = (tree.clone(), objects.clone(), image.clone());
        std::thread::spawn(move || {
            let result = std::panic::catch_unwind(|| {
                let view = kiln_rootfs::Ext4Image::open(&image)?;
                kiln_rootfs::write_diff_layer(&tree, &objects, &view, Capped { left: cap })
                    .map_err(std::io::Error::other)
            });
            let _ = done.send(result.map(|r| r.map_err(|e| e.to_string())));
        });
        match outcome.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err(error))) => {
                refused += 1;
                assert!(
                    !error.contains("more output than the disk holds"),
                    "seed {seed}: a diff of a {} byte disk ran past {cap} bytes",
                    pristine.len()
                );
            }
            Ok(Err(_)) => panic!("seed {seed}: the ext4 reader panicked"),
            Err(_) => panic!("seed {seed}: the ext4 reader hung (30 s)"),
        }
        for at in damaged.into_iter().rev() {
            file.write_all_at(&pristine[at..at + 4], at as u64).unwrap();
        }
    }
    eprintln!("{refused} of {cases} damaged disks refused");
    assert!(refused > 0, "the damage reaches the reader's checks");
}
