//! Image references as docker understands them.
//!
//! `alpine` means `docker.io/library/alpine:latest`; a first component with a
//! `.` or a `:` or equal to `localhost` is a registry host; `@sha256:...` pins
//! a digest. A parse error names the part that is wrong.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// The registry docker assumes when a reference names none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// Where the default registry's API actually lives.
pub const DEFAULT_REGISTRY_API_HOST: &str = "registry-1.docker.io";
const MAX_NAME_LENGTH: usize = 255;
const MAX_TAG_LENGTH: usize = 128;

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Empty input.
    #[error("image reference is empty")]
    Empty,
    /// The registry host part is malformed.
    #[error("invalid image reference {reference:?}: registry host {host:?} is malformed")]
    Registry { reference: String, host: String },
    /// The repository path is malformed.
    #[error("invalid image reference {reference:?}: repository {repository:?} {reason}")]
    Repository {
        reference: String,
        repository: String,
        reason: &'static str,
    },
    /// The tag is malformed.
    #[error(
        "invalid image reference {reference:?}: tag {tag:?} is malformed (letters, digits, '_', '.', '-', at most 128, not starting with '.' or '-')"
    )]
    Tag { reference: String, tag: String },
    /// The digest is malformed.
    #[error("invalid image reference {reference:?}: {source}")]
    Digest {
        reference: String,
        #[source]
        source: DigestError,
    },
}

/// A fully qualified image reference: registry, repository, and tag and/or digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// The registry host (with port if any), e.g. `docker.io` or `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host that serves the registry API (docker.io's lives elsewhere).
    pub fn api_host(&self) -> &str {
        if self.registry == DEFAULT_REGISTRY {
            DEFAULT_REGISTRY_API_HOST
        } else {
            &self.registry
        }
    }

    /// The repository path, e.g. `library/alpine`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if the reference has one.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What to ask the registry for: the digest if pinned, else the tag.
    pub fn manifest_selector(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository pinned to `digest` (no tag).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// Builds a reference from validated parts.
    pub fn new(
        registry: &str,
        repository: &str,
        tag: Option<&str>,
        digest: Option<Digest>,
    ) -> Result<Reference, ReferenceError> {
        let mut text = format!("{registry}/{repository}");
        if let Some(tag) = tag {
            text.push(':');
            text.push_str(tag);
        }
        if let Some(digest) = &digest {
            text.push('@');
            text.push_str(&digest.to_string());
        }
        text.parse()
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(text: &str) -> Result<Reference, ReferenceError> {
        if text.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let reference = text.to_string();
        let (name_and_tag, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                let digest = digest
                    .parse::<Digest>()
                    .map_err(|source| ReferenceError::Digest {
                        reference: reference.clone(),
                        source,
                    })?;
                (rest, Some(digest))
            }
            None => (text, None),
        };
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(colon) => {
                let colon = last_slash + colon;
                (&name_and_tag[..colon], Some(&name_and_tag[colon + 1..]))
            }
            None => (name_and_tag, None),
        };
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            return Err(ReferenceError::Tag {
                reference,
                tag: tag.to_string(),
            });
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" || registry == DEFAULT_REGISTRY_API_HOST {
            DEFAULT_REGISTRY.to_string()
        } else {
            registry
        };
        if !valid_registry(&registry) {
            return Err(ReferenceError::Registry {
                reference,
                host: registry,
            });
        }
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if let Some(reason) = repository_problem(&repository) {
            return Err(ReferenceError::Repository {
                reference,
                repository,
                reason,
            });
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

fn valid_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    match bytes.next() {
        Some(first) if first.is_ascii_alphanumeric() || first == b'_' => {}
        _ => return false,
    }
    tag.len() <= MAX_TAG_LENGTH
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn valid_registry(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        // [IPv6]:port
        let Some((address, after)) = rest.split_once(']') else {
            return false;
        };
        if address.is_empty() || !address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        return after.is_empty() || after.strip_prefix(':').is_some_and(valid_port);
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    if let Some(port) = port
        && !valid_port(port)
    {
        return false;
    }
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn valid_port(port: &str) -> bool {
    !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u32>().is_ok_and(|p| p <= 65535)
}

fn repository_problem(repository: &str) -> Option<&'static str> {
    if repository.is_empty() {
        return Some("is empty");
    }
    if repository.len() > MAX_NAME_LENGTH {
        return Some("is longer than 255 characters");
    }
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some("must be lowercase");
    }
    for component in repository.split('/') {
        if !valid_path_component(component) {
            return Some(
                "has a malformed path component (lowercase letters, digits and single separators '.', '_', '__', '-')",
            );
        }
    }
    None
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = separator == "."
            || separator == "_"
            || separator == "__"
            || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn normalizes_like_docker() {
        let cases = [
            ("alpine", "docker.io/library/alpine:latest"),
            ("alpine:3.20", "docker.io/library/alpine:3.20"),
            ("library/alpine", "docker.io/library/alpine:latest"),
            ("user/app:v1", "docker.io/user/app:v1"),
            (
                "index.docker.io/library/alpine",
                "docker.io/library/alpine:latest",
            ),
            ("ghcr.io/org/app:1.0", "ghcr.io/org/app:1.0"),
            ("localhost/app", "localhost/app:latest"),
            ("localhost:5000/a/b/c:t", "localhost:5000/a/b/c:t"),
            ("127.0.0.1:5000/busybox:1", "127.0.0.1:5000/busybox:1"),
            ("[::1]:5000/busybox:1", "[::1]:5000/busybox:1"),
        ];
        for (input, expected) in cases {
            let reference: Reference = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(reference.to_string(), expected, "{input}");
        }
    }

    #[test]
    fn digests_pin_without_a_default_tag() {
        let reference: Reference = format!("alpine@{DIGEST}").parse().unwrap();
        assert_eq!(reference.tag(), None);
        assert_eq!(reference.manifest_selector(), DIGEST);
        let both: Reference = format!("alpine:3@{DIGEST}").parse().unwrap();
        assert_eq!(both.tag(), Some("3"));
        assert_eq!(both.digest().unwrap().to_string(), DIGEST);
    }

    #[test]
    fn api_host_of_docker_hub() {
        let reference: Reference = "alpine".parse().unwrap();
        assert_eq!(reference.api_host(), "registry-1.docker.io");
        let reference: Reference = "127.0.0.1:5000/x".parse().unwrap();
        assert_eq!(reference.api_host(), "127.0.0.1:5000");
    }

    #[test]
    fn errors_name_the_bad_part() {
        let cases = [
            ("", "empty"),
            ("Alpine", "must be lowercase"),
            ("alpine:bad tag", "tag \"bad tag\""),
            ("alpine:-x", "tag \"-x\""),
            ("alpine@sha256:zz", "malformed hex"),
            ("alpine@md5:aa", "unsupported algorithm"),
            ("a..b/x", "registry host"),
            ("reg-.io/x", "registry host \"reg-.io\""),
            ("host:99999/x", "registry host"),
            ("ghcr.io/a//b", "malformed path component"),
            ("ghcr.io/a-/b", "malformed path component"),
        ];
        for (input, expected) in cases {
            let error = input.parse::<Reference>().unwrap_err().to_string();
            assert!(error.contains(expected), "{input:?}: {error}");
        }
    }
}
