//! Small pieces every on-disk format here shares: little-endian fields,
//! Linux's device-number encoding, directory-entry file types, a volume
//! UUID from a digest, the xattr name indices of ext4 and EROFS.

use kiln_types::Digest;

use crate::tree::Kind;

pub(crate) fn put16(buffer: &mut [u8], at: usize, value: u16) {
    buffer[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn put32(buffer: &mut [u8], at: usize, value: u32) {
    buffer[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn put64(buffer: &mut [u8], at: usize, value: u64) {
    buffer[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

pub(crate) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// Linux's `new_encode_dev`.
pub(crate) fn encode_device(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// The file type byte of a directory entry (ext4 and EROFS share it).
pub(crate) fn dirent_type(kind: &Kind) -> u8 {
    match kind {
        Kind::File(_) => 1,
        Kind::Directory(_) => 2,
        Kind::CharDevice { .. } => 3,
        Kind::BlockDevice { .. } => 4,
        Kind::Fifo => 5,
        Kind::Symlink(_) => 7,
    }
}

/// A version-4-shaped UUID from the first bytes of a digest.
pub(crate) fn uuid_from(digest: &Digest) -> [u8; 16] {
    let hex = digest.hex();
    let mut uuid = [0u8; 16];
    for (index, byte) in uuid.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[index * 2..index * 2 + 2], 16).unwrap_or(0);
    }
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    uuid
}

/// The xattr name indices ext4 and EROFS share (the kernel's
/// `EXT4_XATTR_INDEX_*` and `EROFS_XATTR_INDEX_*`) and the prefix each
/// stands for; the POSIX ACLs (2, 3) are whole names.
const XATTR_INDICES: [(u8, &[u8]); 7] = [
    (1, b"user."),
    (2, b"system.posix_acl_access"),
    (3, b"system.posix_acl_default"),
    (4, b"trusted."),
    (6, b"security."),
    (7, b"system."),
    (8, b"system.richacl"),
];

/// A name as ext4 and EROFS store it: its index and the rest of the name.
/// `None` for a namespace kiln does not write (it writes user., trusted.,
/// security. and the POSIX ACLs).
pub(crate) fn xattr_split(name: &[u8]) -> Option<(u8, &[u8])> {
    XATTR_INDICES
        .iter()
        .filter(|(index, _)| matches!(index, 1 | 2 | 3 | 4 | 6))
        .find_map(|&(index, prefix)| match index {
            2 | 3 => (name == prefix).then_some((index, &name[name.len()..])),
            _ => name.strip_prefix(prefix).map(|rest| (index, rest)),
        })
}

/// The whole name a stored index and suffix stand for (`None`: an index
/// kiln does not know).
pub(crate) fn xattr_name(index: u8, suffix: &[u8]) -> Option<Vec<u8>> {
    XATTR_INDICES
        .iter()
        .find(|(known, _)| *known == index)
        .map(|(_, prefix)| [*prefix, suffix].concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_use_the_kernels_encoding() {
        assert_eq!(encode_device(1, 3), 0x103);
        assert_eq!(encode_device(7, 0x1234), 0x0120_0734);
    }

    #[test]
    fn xattr_names_split_and_join_back() {
        for name in [
            &b"user.a"[..],
            b"security.capability",
            b"system.posix_acl_access",
        ] {
            let (index, suffix) = xattr_split(name).unwrap();
            assert_eq!(xattr_name(index, suffix).unwrap(), name);
        }
        assert_eq!(xattr_split(b"trusted.x"), Some((4, &b"x"[..])));
        assert_eq!(xattr_split(b"system.posix_acl_accessX"), None);
        assert_eq!(xattr_split(b"system.other"), None);
        assert_eq!(xattr_name(5, b"x"), None);
    }
}
