//! A guard in front of the tar parser: it follows the stream's tar
//! structure (headers, data, padding, GNU sparse extension blocks) as the
//! bytes pass, and stops a layer whose extension header (a PAX record set,
//! a GNU long name or long link) is larger than [`MAX_EXTENSION_HEADER`].
//! The tar crate reads those into memory whole, so without the guard a
//! small gzip layer that declares gigabytes of PAX records exhausts the
//! host's memory.

use std::io::Read;

/// Largest extension header (PAX records, GNU long name or link) a layer
/// may carry: real ones hold a path, a link target and a few xattrs.
pub const MAX_EXTENSION_HEADER: u64 = 1 << 20;

const BLOCK: usize = 512;

/// What the next bytes of the stream are.
enum Expect {
    /// A header block (or the zero blocks at the end).
    Header,
    /// GNU sparse extension blocks, then `data` bytes of data.
    SparseBlocks { data: u64 },
}

pub(crate) struct TarGuard<R> {
    inner: R,
    expect: Expect,
    /// The block being collected (a header or a sparse extension block).
    block: Vec<u8>,
    /// Data and padding bytes still to pass before the next block.
    data_left: u64,
    /// A PAX header's records being collected, and how many bytes remain.
    pax: Option<(Vec<u8>, u64)>,
    /// The `size` record of the last PAX header, for the next entry.
    pax_size: Option<u64>,
    /// The structure could not be followed (an unparsable header): the
    /// tar parser reports that itself, the guard steps aside.
    lost: bool,
    /// Refusal to return at the next read (the bytes before the bad header
    /// were returned first, so the parser fails at that header).
    refused: Option<std::io::Error>,
}

impl<R: Read> TarGuard<R> {
    pub(crate) fn new(inner: R) -> TarGuard<R> {
        TarGuard {
            inner,
            expect: Expect::Header,
            block: Vec::with_capacity(BLOCK),
            data_left: 0,
            pax: None,
            pax_size: None,
            lost: false,
            refused: None,
        }
    }

    /// Follows `bytes`; on a refusal, how many of them come before the
    /// block at fault.
    fn follow(&mut self, mut bytes: &[u8]) -> Result<(), (usize, std::io::Error)> {
        let total = bytes.len();
        while !bytes.is_empty() && !self.lost {
            if self.data_left > 0 {
                let n = (self.data_left.min(bytes.len() as u64)) as usize;
                if let Some((records, remaining)) = &mut self.pax {
                    let take = (*remaining).min(n as u64) as usize;
                    records.extend_from_slice(&bytes[..take]);
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        self.pax_size = tar::PaxExtensions::new(records)
                            .flatten()
                            .find(|r| r.key_bytes() == b"size")
                            .and_then(|r| std::str::from_utf8(r.value_bytes()).ok()?.parse().ok());
                        self.pax = None;
                    }
                }
                self.data_left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            // Where the block began in these bytes (0: in an earlier read).
            let start = (total - bytes.len()).saturating_sub(self.block.len());
            let n = (BLOCK - self.block.len()).min(bytes.len());
            self.block.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.block.len() == BLOCK {
                let block = std::mem::take(&mut self.block);
                self.on_block(&block).map_err(|e| (start.min(total), e))?;
                self.block = block;
                self.block.clear();
            }
        }
        Ok(())
    }

    fn on_block(&mut self, block: &[u8]) -> std::io::Result<()> {
        if let Expect::SparseBlocks { data } = self.expect {
            // Each extension block says at byte 504 whether another follows.
            if block[504] == 0 {
                self.expect = Expect::Header;
                self.data_left = data;
            }
            return Ok(());
        }
        if block.iter().all(|b| *b == 0) {
            return Ok(()); // the end-of-archive blocks
        }
        let Some(mut size) = header_size(&block[124..136]) else {
            self.lost = true;
            return Ok(());
        };
        let kind = block[156];
        let extension = matches!(kind, b'x' | b'g' | b'L' | b'K');
        if extension {
            if size > MAX_EXTENSION_HEADER {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "an extension header (PAX records or a long name) of {size} bytes, more \
                         than the {MAX_EXTENSION_HEADER} kiln reads"
                    ),
                ));
            }
            if kind == b'x' {
                self.pax = (size > 0).then(|| (Vec::with_capacity(size as usize), size));
            }
        } else if let Some(pax_size) = self.pax_size.take() {
            size = pax_size;
        }
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        if kind == b'S' && block[482] != 0 {
            self.expect = Expect::SparseBlocks { data: padded };
        } else {
            self.data_left = padded;
        }
        Ok(())
    }
}

/// A header's size field: octal digits, or GNU's base-256 (high bit set).
fn header_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        if field[0] != 0x80 || field[1..4].iter().any(|b| *b != 0) {
            return None; // negative, or beyond 2^64
        }
        return Some(
            field[4..]
                .iter()
                .fold(0u64, |n, b| (n << 8) | u64::from(*b)),
        );
    }
    let text = std::str::from_utf8(field).ok()?;
    let digits = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(digits, 8).ok()
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if let Some(error) = self.refused.take() {
            return Err(error);
        }
        let n = self.inner.read(buffer)?;
        match self.follow(&buffer[..n]) {
            Ok(()) => Ok(n),
            Err((0, error)) => Err(error),
            Err((before, error)) => {
                self.refused = Some(error);
                self.lost = true;
                Ok(before)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        // Small reads, so blocks straddle them.
        let mut guard = TarGuard::new(bytes);
        let mut buffer = [0u8; 700];
        loop {
            let n = guard.read(&mut buffer)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buffer[..n]);
        }
    }

    fn layer(entries: &[(&str, usize)], pax: Option<usize>) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        if let Some(size) = pax {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(tar::EntryType::XHeader);
            let record = format!(
                "{} comment={}\n",
                size,
                "c".repeat(size - 10 - size.to_string().len())
            );
            assert_eq!(record.len(), size);
            header.set_size(size as u64);
            header.set_path("PaxHeaders/x").unwrap();
            header.set_cksum();
            builder.append(&header, record.as_bytes()).unwrap();
        }
        for (name, size) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(*size as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, &vec![7u8; *size][..])
                .unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn a_normal_layer_passes_unchanged() {
        let bytes = layer(
            &[("a", 10), ("b", 5000), (&"long/".repeat(40), 1)],
            Some(2000),
        );
        assert_eq!(pass(&bytes).unwrap(), bytes);
    }

    #[test]
    fn an_extension_header_past_the_limit_is_refused_at_its_header() {
        let bytes = layer(&[("a", 600)], Some(MAX_EXTENSION_HEADER as usize + 100));
        let error = pass(&bytes).unwrap_err().to_string();
        assert!(error.contains("extension header"), "{error}");
        // Through the tar parser: a read error at that header, after the
        // bytes before it were passed.
        let small = layer(&[("first", 100)], None);
        let mut joined = small[..small.len() - 1024].to_vec();
        joined.extend_from_slice(&bytes);
        let mut archive = tar::Archive::new(TarGuard::new(&joined[..]));
        let mut entries = archive.entries().unwrap();
        let first = entries.next().unwrap().unwrap();
        assert_eq!(first.path().unwrap().to_str(), Some("first"));
        drop(first);
        let refused = entries.next().unwrap().err().unwrap().to_string();
        assert!(refused.contains("extension header"), "{refused}");
    }

    /// An oversize extension header at the end of `bytes` (its end blocks cut).
    fn then_oversize(mut bytes: Vec<u8>) -> Vec<u8> {
        bytes.truncate(bytes.len() - 1024);
        bytes.extend(layer(&[], Some(MAX_EXTENSION_HEADER as usize + 1)));
        bytes
    }

    #[test]
    fn the_guard_keeps_in_step_over_every_kind_of_entry() {
        // Sizes around block boundaries, GNU long names, PAX records.
        let sizes = [0, 1, 511, 512, 513, 5000];
        let names: Vec<String> = (0..sizes.len())
            .map(|i| format!("{}{i}", "d/".repeat(if i % 2 == 0 { 1 } else { 80 })))
            .collect();
        let entries: Vec<(&str, usize)> = names.iter().map(String::as_str).zip(sizes).collect();
        let bytes = then_oversize(layer(&entries, Some(3000)));
        assert!(
            pass(&bytes)
                .unwrap_err()
                .to_string()
                .contains("extension header")
        );

        // A PAX `size` record stands for the header's (as for files of 8 GiB
        // and more, whose ustar field says 0).
        let mut builder = tar::Builder::new(Vec::new());
        let records = "13 size=1000\n";
        let mut pax = tar::Header::new_ustar();
        pax.set_entry_type(tar::EntryType::XHeader);
        pax.set_path("PaxHeaders/big").unwrap();
        pax.set_size(records.len() as u64);
        pax.set_cksum();
        builder.append(&pax, records.as_bytes()).unwrap();
        let mut file = tar::Header::new_ustar();
        file.set_path("big").unwrap();
        file.set_size(0);
        file.set_cksum();
        builder.append(&file, &[][..]).unwrap();
        let mut bytes = builder.into_inner().unwrap();
        // The 1000 bytes the PAX record promised (padded), then the end.
        bytes.truncate(bytes.len() - 1024);
        bytes.extend(vec![b'x'; 1000]);
        bytes.extend(vec![0u8; 24 + 1024]);
        let bytes = then_oversize(bytes);
        assert!(
            pass(&bytes)
                .unwrap_err()
                .to_string()
                .contains("extension header")
        );
    }

    #[test]
    fn sizes_parse_in_octal_and_base_256() {
        assert_eq!(header_size(b"00000001750\0"), Some(1000));
        assert_eq!(header_size(b"           \0"), Some(0));
        let mut wide = [0u8; 12];
        wide[0] = 0x80;
        wide[11] = 5;
        wide[10] = 1;
        assert_eq!(header_size(&wide), Some(261));
        assert_eq!(header_size(b"12x456789012"), None);
    }
}
