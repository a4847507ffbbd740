//! Layer blobs: the diff_id (digest of the uncompressed tar), computed while
//! the compressed bytes stream past. The uncompressed bytes can also be
//! handed on (a "tee"), so a layer is unpacked from the same decompression
//! that checks it (`kiln pull --rootfs`).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use bytes::Bytes;
use kiln_types::media_type::Compression;
use kiln_types::{Algorithm, Digest, Hasher};

/// Where the uncompressed bytes of a layer are handed on, in order. Its
/// write errors are its own business: the diff_id goes on regardless.
pub type Tee = Box<dyn Write + Send>;

/// Hashes and counts what is written to it (and hands it to the tee).
struct Counting {
    hasher: Hasher,
    size: u64,
    tee: Option<Tee>,
}

impl Write for Counting {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        if let Some(tee) = self.tee.as_mut()
            && tee.write_all(bytes).is_err()
        {
            self.tee = None;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Decoder {
    Plain(Box<Counting>),
    Gzip(Box<flate2::write::MultiGzDecoder<Counting>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, Counting>>),
}

/// Computes a layer's diff_id from its compressed bytes, fed in order.
pub struct DiffIdHasher {
    decoder: Decoder,
}

impl DiffIdHasher {
    /// A hasher for a layer compressed with `compression`.
    pub fn new(compression: Compression) -> std::io::Result<DiffIdHasher> {
        DiffIdHasher::with_tee(compression, None)
    }

    /// A hasher that also writes the uncompressed bytes to `tee`.
    pub fn with_tee(compression: Compression, tee: Option<Tee>) -> std::io::Result<DiffIdHasher> {
        let sink = Counting {
            hasher: Hasher::new(Algorithm::Sha256),
            size: 0,
            tee,
        };
        let decoder = match compression {
            Compression::None => Decoder::Plain(Box::new(sink)),
            Compression::Gzip => Decoder::Gzip(Box::new(flate2::write::MultiGzDecoder::new(sink))),
            Compression::Zstd => Decoder::Zstd(Box::new(zstd::stream::write::Decoder::new(sink)?)),
        };
        Ok(DiffIdHasher { decoder })
    }

    /// Feeds compressed bytes.
    pub fn update(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.decoder {
            Decoder::Plain(sink) => sink.write_all(bytes),
            Decoder::Gzip(decoder) => decoder.write_all(bytes),
            Decoder::Zstd(decoder) => decoder.write_all(bytes),
        }
    }

    /// The diff_id and uncompressed size of a whole compressed layer read
    /// from `reader` (a stored blob); the uncompressed bytes also go to
    /// `tee` when given.
    pub fn of_reader(
        mut reader: impl std::io::Read,
        compression: Compression,
        tee: Option<Tee>,
    ) -> std::io::Result<(Digest, u64)> {
        let mut hasher = DiffIdHasher::with_tee(compression, tee)?;
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buffer)?;
            if n == 0 {
                return hasher.finish();
            }
            hasher.update(&buffer[..n])?;
        }
    }

    /// The diff_id and the uncompressed size.
    pub fn finish(self) -> std::io::Result<(Digest, u64)> {
        let sink = match self.decoder {
            Decoder::Plain(sink) => *sink,
            Decoder::Gzip(decoder) => decoder.finish()?,
            Decoder::Zstd(mut decoder) => {
                decoder.flush()?;
                decoder.into_inner()
            }
        };
        Ok((sink.hasher.finish(), sink.size))
    }
}

/// A [`DiffIdHasher`] on its own thread, so decompression overlaps the
/// download and the compressed-digest hashing (the pipelined variant).
pub struct DiffIdWorker {
    sender: Option<SyncSender<Bytes>>,
    thread: Option<JoinHandle<std::io::Result<(Digest, u64)>>>,
    /// Set when the result is no longer wanted: queued chunks are dropped
    /// unread (a decompression bomb is not worked through on the way out).
    cancelled: Arc<AtomicBool>,
}

impl DiffIdWorker {
    /// Starts the worker thread.
    pub fn spawn(compression: Compression) -> std::io::Result<DiffIdWorker> {
        DiffIdWorker::spawn_with_tee(compression, None)
    }

    /// Starts the worker thread, which also writes the uncompressed bytes to `tee`.
    pub fn spawn_with_tee(
        compression: Compression,
        tee: Option<Tee>,
    ) -> std::io::Result<DiffIdWorker> {
        let mut hasher = DiffIdHasher::with_tee(compression, tee)?;
        let (sender, receiver): (SyncSender<Bytes>, Receiver<Bytes>) = sync_channel(16);
        let cancelled = Arc::new(AtomicBool::new(false));
        let stop = cancelled.clone();
        let thread = std::thread::Builder::new()
            .name("kiln-diff-id".into())
            .spawn(move || {
                let mut failure = None;
                for chunk in receiver {
                    if failure.is_none() && stop.load(Ordering::Relaxed) {
                        failure = Some(std::io::Error::other("cancelled"));
                    }
                    if failure.is_none()
                        && let Err(error) = hasher.update(&chunk)
                    {
                        failure = Some(error);
                    }
                }
                match failure {
                    Some(error) => Err(error),
                    None => hasher.finish(),
                }
            })?;
        Ok(DiffIdWorker {
            sender: Some(sender),
            thread: Some(thread),
            cancelled,
        })
    }

    /// Queues compressed bytes (blocks when the worker is behind).
    pub fn update(&self, bytes: Bytes) -> std::io::Result<()> {
        match &self.sender {
            Some(sender) => sender
                .send(bytes)
                .map_err(|_| std::io::Error::other("diff_id worker stopped")),
            None => Err(std::io::Error::other("diff_id worker finished")),
        }
    }

    /// Waits for the worker: diff_id and uncompressed size.
    pub fn finish(mut self) -> std::io::Result<(Digest, u64)> {
        drop(self.sender.take());
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            _ => Err(std::io::Error::other("diff_id worker panicked")),
        }
    }
}

impl Drop for DiffIdWorker {
    fn drop(&mut self) {
        // Dropped without `finish`: nobody wants the diff_id any more.
        self.cancelled.store(true, Ordering::Relaxed);
        drop(self.sender.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Where a layer's compressed bytes go to get its diff_id: decompressed on
/// the writing thread (`Inline`) or on a thread of its own (`Worker`).
pub enum DiffIdSink {
    /// Same thread as the caller.
    Inline(Box<DiffIdHasher>),
    /// A dedicated thread.
    Worker(DiffIdWorker),
}

impl DiffIdSink {
    /// A sink for `compression`; `pipelined` picks the worker thread.
    pub fn new(compression: Compression, pipelined: bool) -> std::io::Result<DiffIdSink> {
        DiffIdSink::with_tee(compression, pipelined, None)
    }

    /// [`DiffIdSink::new`], also writing the uncompressed bytes to `tee`.
    pub fn with_tee(
        compression: Compression,
        pipelined: bool,
        tee: Option<Tee>,
    ) -> std::io::Result<DiffIdSink> {
        Ok(if pipelined {
            DiffIdSink::Worker(DiffIdWorker::spawn_with_tee(compression, tee)?)
        } else {
            DiffIdSink::Inline(Box::new(DiffIdHasher::with_tee(compression, tee)?))
        })
    }

    /// Feeds compressed bytes.
    pub fn update(&mut self, bytes: Bytes) -> std::io::Result<()> {
        match self {
            DiffIdSink::Inline(hasher) => hasher.update(&bytes),
            DiffIdSink::Worker(worker) => worker.update(bytes),
        }
    }

    /// The diff_id and the uncompressed size.
    pub fn finish(self) -> std::io::Result<(Digest, u64)> {
        match self {
            DiffIdSink::Inline(hasher) => hasher.finish(),
            DiffIdSink::Worker(worker) => worker.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_like() -> Vec<u8> {
        (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    #[test]
    fn diff_id_is_the_same_whatever_the_compression() {
        let plain = tar_like();
        let expected = Digest::sha256_of(&plain);
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(&plain).unwrap();
        let gzip = gzip.finish().unwrap();
        let zstd = zstd::encode_all(&plain[..], 1).unwrap();
        for (compression, bytes) in [
            (Compression::None, &plain),
            (Compression::Gzip, &gzip),
            (Compression::Zstd, &zstd),
        ] {
            let mut hasher = DiffIdHasher::new(compression).unwrap();
            for chunk in bytes.chunks(7777) {
                hasher.update(chunk).unwrap();
            }
            assert_eq!(
                hasher.finish().unwrap(),
                (expected.clone(), plain.len() as u64),
                "{compression:?}"
            );
            let worker = DiffIdWorker::spawn(compression).unwrap();
            for chunk in bytes.chunks(10_000) {
                worker.update(Bytes::copy_from_slice(chunk)).unwrap();
            }
            assert_eq!(
                worker.finish().unwrap().0,
                expected,
                "{compression:?} on a worker"
            );
        }
    }

    /// Collects what a tee is handed.
    #[derive(Clone, Default)]
    struct Collect(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Collect {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_tee_gets_exactly_the_uncompressed_stream() {
        let plain = tar_like();
        let zstd = zstd::encode_all(&plain[..], 1).unwrap();
        for pipelined in [false, true] {
            let tee = Collect::default();
            let mut sink =
                DiffIdSink::with_tee(Compression::Zstd, pipelined, Some(Box::new(tee.clone())))
                    .unwrap();
            for chunk in zstd.chunks(5000) {
                sink.update(Bytes::copy_from_slice(chunk)).unwrap();
            }
            let (digest, size) = sink.finish().unwrap();
            assert_eq!(digest, Digest::sha256_of(&plain));
            assert_eq!(size, plain.len() as u64);
            assert!(*tee.0.lock().unwrap() == plain, "pipelined: {pipelined}");
        }
    }

    #[test]
    fn a_failing_tee_does_not_stop_the_diff_id() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("gone"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let plain = tar_like();
        let mut hasher = DiffIdHasher::with_tee(Compression::None, Some(Box::new(Broken))).unwrap();
        hasher.update(&plain).unwrap();
        assert_eq!(hasher.finish().unwrap().0, Digest::sha256_of(&plain));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut hasher = DiffIdHasher::new(Compression::Gzip).unwrap();
        let result = hasher
            .update(b"this is not gzip at all")
            .and_then(|_| hasher.finish().map(|_| ()));
        assert!(result.is_err());
    }
}
