//! kiln's root filesystem builder: the layers of an image applied in order
//! into an in-memory [`Tree`] (whiteouts, hardlinks across layers, symlinks,
//! devices, fifos, setuid/setgid/sticky, ownership, mtimes, xattrs), then
//! written as what a microVM boots. Writers are pure functions of the tree:
//! ownership and device nodes come from the tar headers, never from what the
//! host filesystem allows, so the output is the same for root and for an
//! ordinary user.
//!
//! Outputs: initramfs (gzip newc cpio), ext4 and EROFS. The ext4 and EROFS
//! writers are kiln's own (no mke2fs, mkfs.erofs or fakeroot): they lay the
//! image out in memory, then write it front to back in one pass that also
//! hashes it, copying file contents straight from the object directory.
//!
//! ```no_run
//! use kiln_rootfs::{ObjectDir, Tree, apply_layer, write_initramfs};
//!
//! let objects = ObjectDir::open("/tmp/objects".as_ref()).unwrap();
//! let mut tree = Tree::new();
//! let layer = std::fs::File::open("layer.tar").unwrap();
//! apply_layer(&mut tree, 0, layer, &objects).unwrap();
//! write_initramfs(&tree, &objects, std::fs::File::create("initramfs.img").unwrap()).unwrap();
//! ```

mod apply;
mod diff;
mod emit;
mod erofs;
mod error;
mod ext4;
mod ext4read;
mod guard;
mod initramfs;
pub mod objects;
mod ondisk;
pub mod tree;

pub use apply::{
    LayerPipe, MAX_LAYER_ENTRIES, ParsedLayer, ReadAhead, apply_layer, layer_pipe, layer_reader,
    layer_reader_ahead, parse_layer, parse_layer_unless, read_layers_with_contents,
};
pub use diff::{DiffStats, FsView, Stat, write_diff_layer};
pub use emit::OnWritten;
pub use erofs::{
    LayerDevice, erofs_device_tags, plan_layer_data, write_erofs, write_erofs_layered,
    write_layer_data,
};
pub use error::{Result, RootfsError};
pub use ext4::{default_ext4_size, write_ext4};
pub use ext4read::{Ext4Image, Ext4Inode, Ext4Reader};
pub use initramfs::{write_cpio, write_initramfs};
pub use objects::{ContentRef, ObjectDir, ObjectReader};
pub use tree::{Inode, Kind, Tree};
