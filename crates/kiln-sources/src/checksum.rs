//! Published checksums and the hashers that check them while bytes stream.

use kiln_types::{Digest, Hasher};
use sha1::Digest as _;

/// A checksum a source published for a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    /// SHA-1, lowercase hex (IMGAPI).
    Sha1(String),
    /// SHA-256, lowercase hex.
    Sha256(String),
    /// SHA-512, lowercase hex.
    Sha512(String),
}

impl Checksum {
    /// Parses lowercase or uppercase hex of the right length for `algorithm`
    /// (`sha1`, `sha256`, `sha512`).
    pub fn parse(algorithm: &str, hex_text: &str) -> Result<Checksum, String> {
        let hex_text = hex_text.trim().to_ascii_lowercase();
        let (length, make): (usize, fn(String) -> Checksum) = match algorithm {
            "sha1" => (40, Checksum::Sha1),
            "sha256" => (64, Checksum::Sha256),
            "sha512" => (128, Checksum::Sha512),
            other => return Err(format!("unknown checksum algorithm {other:?}")),
        };
        if hex_text.len() != length || !hex_text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "{algorithm} checksum {hex_text:?} is not {length} hex digits"
            ));
        }
        Ok(make(hex_text))
    }

    /// A `sha256:…`/`sha512:…` digest as a checksum.
    pub fn of_digest(digest: &Digest) -> Checksum {
        match digest.algorithm().as_str() {
            "sha512" => Checksum::Sha512(digest.hex().to_string()),
            _ => Checksum::Sha256(digest.hex().to_string()),
        }
    }

    /// `sha1`, `sha256` or `sha512`.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Checksum::Sha1(_) => "sha1",
            Checksum::Sha256(_) => "sha256",
            Checksum::Sha512(_) => "sha512",
        }
    }

    /// The hex value.
    pub fn hex(&self) -> &str {
        match self {
            Checksum::Sha1(hex) | Checksum::Sha256(hex) | Checksum::Sha512(hex) => hex,
        }
    }
}

/// Hashes a stream once for the store (SHA-256) and for every published
/// checksum at the same time.
pub struct MultiHasher {
    sha256: Hasher,
    sha1: Option<sha1::Sha1>,
    sha512: Option<Hasher>,
    size: u64,
}

/// What [`MultiHasher::finish`] computed.
#[derive(Debug, Clone)]
pub struct Hashes {
    /// The store's digest of the bytes.
    pub sha256: Digest,
    /// SHA-1 hex, when asked for.
    pub sha1: Option<String>,
    /// SHA-512 hex, when asked for.
    pub sha512: Option<String>,
    /// Bytes hashed.
    pub size: u64,
}

impl MultiHasher {
    /// A hasher computing SHA-256 plus whatever `checksums` need.
    pub fn new(checksums: &[Checksum]) -> MultiHasher {
        let wants = |algorithm: &str| checksums.iter().any(|c| c.algorithm() == algorithm);
        MultiHasher {
            sha256: Hasher::new(kiln_types::Algorithm::Sha256),
            sha1: wants("sha1").then(sha1::Sha1::new),
            sha512: wants("sha512").then(|| Hasher::new(kiln_types::Algorithm::Sha512)),
            size: 0,
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        if let Some(hasher) = &mut self.sha1 {
            hasher.update(bytes);
        }
        if let Some(hasher) = &mut self.sha512 {
            hasher.update(bytes);
        }
        self.size += bytes.len() as u64;
    }

    /// The digests.
    pub fn finish(self) -> Hashes {
        Hashes {
            sha256: self.sha256.finish(),
            sha1: self.sha1.map(|h| hex::encode(h.finalize())),
            sha512: self.sha512.map(|h| h.finish().hex().to_string()),
            size: self.size,
        }
    }
}

impl Hashes {
    /// Checks every published checksum; `what` names the file in the error.
    pub fn verify(&self, what: &str, checksums: &[Checksum]) -> crate::Result<()> {
        for checksum in checksums {
            let actual = match checksum {
                Checksum::Sha1(_) => self.sha1.clone(),
                Checksum::Sha256(_) => Some(self.sha256.hex().to_string()),
                Checksum::Sha512(_) => self.sha512.clone(),
            }
            .unwrap_or_default();
            if actual != checksum.hex() {
                return Err(crate::SourceError::ChecksumMismatch {
                    what: what.to_string(),
                    algorithm: checksum.algorithm(),
                    expected: checksum.hex().to_string(),
                    actual,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_verifies_every_algorithm() {
        let checksums = [
            Checksum::parse("sha1", "A9993E364706816ABA3E25717850C26C9CD0D89D").unwrap(),
            Checksum::parse(
                "sha256",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            )
            .unwrap(),
            Checksum::parse("sha512", "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f").unwrap(),
        ];
        let mut hasher = MultiHasher::new(&checksums);
        hasher.update(b"a");
        hasher.update(b"bc");
        let hashes = hasher.finish();
        assert_eq!(hashes.size, 3);
        hashes.verify("abc", &checksums).unwrap();
        let wrong = [Checksum::Sha1("0".repeat(40))];
        let error = hashes.verify("file x", &wrong).unwrap_err().to_string();
        assert!(
            error.contains("file x") && error.contains("sha1"),
            "{error}"
        );
    }

    #[test]
    fn refuses_malformed_checksums() {
        assert!(Checksum::parse("sha256", "abc").is_err());
        assert!(Checksum::parse("md5", "00").is_err());
        assert!(Checksum::parse("sha1", &"g".repeat(40)).is_err());
    }
}
