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
/// Most GNU sparse extension blocks one entry may have (1 MiB of them):
/// the parser keeps ~1.3 KB of memory per block.
const MAX_SPARSE_BLOCKS: u64 = 2048;

/// What the next bytes of the stream are.
enum Expect {
    /// A header block (or the zero blocks at the end).
    Header,
    /// GNU sparse extension blocks (`blocks` seen), then `data` bytes of data.
    SparseBlocks { data: u64, blocks: u64 },
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
                        self.pax_size = pax_size(records);
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

    /// One block, read the way the tar crate reads it (`Archive::entries`
    /// in tar 0.4): its own header parsing, extension headers recognised
    /// only with ustar or GNU magic, a pending PAX `size` record for the
    /// next entry it hands on, GNU sparse extension blocks while their flag
    /// is 1.
    fn on_block(&mut self, block: &[u8]) -> std::io::Result<()> {
        if let Expect::SparseBlocks { data, blocks } = self.expect {
            if blocks >= MAX_SPARSE_BLOCKS {
                return Err(refusal(format!(
                    "a sparse file with more than {MAX_SPARSE_BLOCKS} extension blocks"
                )));
            }
            self.expect = if block[504] == 1 {
                Expect::SparseBlocks {
                    data,
                    blocks: blocks + 1,
                }
            } else {
                self.data_left = data;
                Expect::Header
            };
            return Ok(());
        }
        if block.iter().all(|b| *b == 0) {
            return Ok(()); // the end: the parser stops at the first zero block
        }
        let header = tar::Header::from_byte_slice(block);
        let Ok(mut size) = header.entry_size() else {
            // The parser fails at this header too.
            self.lost = true;
            return Ok(());
        };
        let kind = header.entry_type();
        let recognized = header.as_gnu().is_some() || header.as_ustar().is_some();
        let extension =
            kind.is_gnu_longname() || kind.is_gnu_longlink() || kind.is_pax_local_extensions();
        let held = recognized && extension;
        if held {
            // Read into memory whole by the parser.
            if size > MAX_EXTENSION_HEADER {
                return Err(refusal(format!(
                    "an extension header (PAX records or a long name) of {size} bytes, more \
                     than the {MAX_EXTENSION_HEADER} kiln reads"
                )));
            }
            if kind.is_pax_local_extensions() {
                self.pax = (size > 0).then(|| (Vec::with_capacity(size as usize), size));
            }
        } else {
            // An entry the parser hands on: it takes the pending PAX
            // records, whose `size` stands for its own unless it is an
            // extension header itself.
            if let Some(pax_size) = self.pax_size.take()
                && !extension
                && !kind.is_pax_global_extensions()
            {
                size = pax_size;
            }
        }
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        let sparse = kind.is_gnu_sparse() && header.as_gnu().is_some_and(|gnu| gnu.is_extended());
        if sparse && !held {
            self.expect = Expect::SparseBlocks {
                data: padded,
                blocks: 0,
            };
        } else {
            self.data_left = padded;
        }
        Ok(())
    }
}

fn refusal(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// A PAX record set's `size`, as the tar parser reads it: records up to the
/// first malformed one.
fn pax_size(records: &[u8]) -> Option<u64> {
    for record in tar::PaxExtensions::new(records) {
        let record = record.ok()?;
        if record.key() == Ok("size") {
            return record.value().ok()?.parse().ok();
        }
    }
    None
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

    /// Size fields written oddly but read by the tar parser, and a PAX
    /// `size` a global header takes: the guard reads them as the parser
    /// does, and stays in step.
    #[test]
    fn odd_headers_the_parser_reads_keep_the_guard_in_step() {
        let reseal = |bytes: &mut [u8], at: usize| {
            bytes[at + 148..at + 156].fill(b' ');
            let sum: u32 = bytes[at..at + 512].iter().map(|b| u32::from(*b)).sum();
            bytes[at + 148..at + 156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        };
        // Octal cut at a NUL, then bytes that are not text.
        let mut octal = layer(&[("a", 1000)], None);
        octal[124..136].copy_from_slice(b"0001750\0\xff\xfe\x01\x02");
        reseal(&mut octal, 0);
        // Base-256 with a first byte other than 0x80 (the parser reads the last 8).
        let mut wide = layer(&[("a", 1000)], None);
        wide[124..136].copy_from_slice(&[0x81, 9, 9, 9, 0, 0, 0, 0, 0, 0, 0x03, 0xe8]);
        reseal(&mut wide, 0);
        for bytes in [octal, wide] {
            let mut archive = tar::Archive::new(&bytes[..]);
            let size = archive.entries().unwrap().next().unwrap().unwrap().size();
            assert_eq!(size, 1000, "the parser reads it");
            let refused = pass(&then_oversize(bytes)).unwrap_err().to_string();
            assert!(refused.contains("extension header"), "{refused}");
        }
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
}
