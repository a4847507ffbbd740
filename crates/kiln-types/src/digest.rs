//! Content digests (`sha256:<64 hex>`, `sha512:<128 hex>`) and a streaming hasher.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;

/// A digest algorithm kiln accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256, the algorithm of nearly every published image.
    Sha256,
    /// SHA-512, allowed by the OCI image spec.
    Sha512,
}

impl Algorithm {
    /// The name used in digest strings.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// No `algorithm:` prefix.
    #[error("digest {0:?} has no algorithm prefix (expected sha256:<hex>)")]
    MissingAlgorithm(String),
    /// An algorithm kiln does not know.
    #[error("digest {0:?} uses unsupported algorithm {1:?} (kiln accepts sha256 and sha512)")]
    UnsupportedAlgorithm(String, String),
    /// Hex part of the wrong length or with non-lowercase-hex characters.
    #[error("digest {0:?} has a malformed hex part (expected {1} lowercase hex characters)")]
    MalformedHex(String, usize),
}

/// A validated content digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// The SHA-256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        let mut hasher = Hasher::new(Algorithm::Sha256);
        hasher.update(bytes);
        hasher.finish()
    }

    /// The digest of `bytes` with `algorithm`.
    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let mut hasher = Hasher::new(algorithm);
        hasher.update(bytes);
        hasher.finish()
    }

    /// The algorithm part.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex part.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex characters, as `docker images` shows them.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }

    /// Whether `bytes` hash to this digest.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        Digest::of(self.algorithm, bytes) == *self
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(text: &str) -> Result<Digest, DigestError> {
        let Some((algorithm, hex)) = text.split_once(':') else {
            return Err(DigestError::MissingAlgorithm(text.to_string()));
        };
        let algorithm = match algorithm {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => {
                return Err(DigestError::UnsupportedAlgorithm(
                    text.to_string(),
                    other.to_string(),
                ));
            }
        };
        let valid = hex.len() == algorithm.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(DigestError::MalformedHex(
                text.to_string(),
                algorithm.hex_len(),
            ));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A streaming hasher that produces a [`Digest`].
#[derive(Clone)]
pub enum Hasher {
    /// SHA-256 state.
    Sha256(sha2::Sha256),
    /// SHA-512 state.
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// A fresh hasher for `algorithm`.
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    /// Feeds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(state) => state.update(bytes),
            Hasher::Sha512(state) => state.update(bytes),
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(state) => (Algorithm::Sha256, hex::encode(state.finalize())),
            Hasher::Sha512(state) => (Algorithm::Sha512, hex::encode(state.finalize())),
        };
        Digest { algorithm, hex }
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hasher::Sha256(_) => f.write_str("Hasher(sha256)"),
            Hasher::Sha512(_) => f.write_str("Hasher(sha512)"),
        }
    }
}

impl std::io::Write for Hasher {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        let text = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let digest: Digest = text.parse().unwrap();
        assert_eq!(digest.to_string(), text);
        assert_eq!(digest.short(), "2cf24dba5fb0");
        assert_eq!(digest, Digest::sha256_of(b"hello"));
        assert!(digest.matches(b"hello"));
        assert!(!digest.matches(b"hello!"));
    }

    #[test]
    fn sha512_is_accepted() {
        let digest = Digest::of(Algorithm::Sha512, b"x");
        let again: Digest = digest.to_string().parse().unwrap();
        assert_eq!(again.algorithm(), Algorithm::Sha512);
    }

    #[test]
    fn rejects_malformed_digests() {
        let cases = [
            ("2cf24dba", "no algorithm prefix"),
            ("md5:abcd", "unsupported algorithm"),
            ("sha256:ABCDEF", "malformed hex"),
            (
                "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b982",
                "malformed hex",
            ),
            (
                "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
                "malformed hex",
            ),
        ];
        for (input, expected) in cases {
            let error = input.parse::<Digest>().unwrap_err().to_string();
            assert!(error.contains(expected), "{input}: {error}");
        }
    }
}
