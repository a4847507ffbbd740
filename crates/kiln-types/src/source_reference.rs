//! Names of images from configured non-OCI sources: `SOURCE://NAME[@VERSION]`.

use std::fmt;
use std::str::FromStr;

/// A malformed source reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceReferenceError {
    /// No `://`.
    #[error("{input:?} is not a source reference (SOURCE://NAME[@VERSION])")]
    NotSourceReference { input: String },
    /// The source part is not a valid source name.
    #[error("invalid source reference {input:?}: {reason}")]
    Source { input: String, reason: String },
    /// The name or version part is malformed.
    #[error("invalid source reference {input:?}: {reason}")]
    Name { input: String, reason: String },
}

/// An image of a configured source: `sbx://v0.1.0`, `mycat://hello`,
/// `smartos://base-64@15.2.0`, `smartos://5c7d0d24-…`.
///
/// The name may be empty (`mycat://`): the source then answers with what it
/// has, so the error can list it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SourceReference {
    source: String,
    name: String,
    version: Option<String>,
}

/// Checks a source name: lowercase letters, digits, `-`, `_`, `.`, starting
/// with a letter or digit, at most 64 characters.
pub fn validate_source_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the source name is empty".into());
    }
    if name.len() > 64 {
        return Err("the source name is longer than 64 characters".into());
    }
    let first = name.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(format!(
            "source name {name:?} must start with a lowercase letter or a digit"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(*c)))
    {
        return Err(format!(
            "source name {name:?} has {bad:?} (allowed: lowercase letters, digits, '-', '_', '.')"
        ));
    }
    Ok(())
}

fn validate_part(part: &str, what: &str) -> Result<(), String> {
    if part.len() > 256 {
        return Err(format!("the {what} is longer than 256 characters"));
    }
    if let Some(bad) = part
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || "/\\@:".contains(*c))
    {
        return Err(format!("the {what} {part:?} contains {bad:?}"));
    }
    if part == "." || part == ".." {
        return Err(format!("the {what} cannot be {part:?}"));
    }
    Ok(())
}

impl SourceReference {
    /// Whether `input` is meant as a source reference (has `://`).
    pub fn looks_like(input: &str) -> bool {
        input.contains("://")
    }

    /// A reference from its parts (validated).
    pub fn new(
        source: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<SourceReference, SourceReferenceError> {
        let text = match version {
            Some(version) => format!("{source}://{name}@{version}"),
            None => format!("{source}://{name}"),
        };
        text.parse()
    }

    /// The configured source's name.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The image name (a release tag, a catalog entry, an imgapi name or UUID).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version, when given.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }
}

impl FromStr for SourceReference {
    type Err = SourceReferenceError;

    fn from_str(input: &str) -> Result<SourceReference, SourceReferenceError> {
        let Some((source, rest)) = input.split_once("://") else {
            return Err(SourceReferenceError::NotSourceReference {
                input: input.to_string(),
            });
        };
        validate_source_name(source).map_err(|reason| SourceReferenceError::Source {
            input: input.to_string(),
            reason,
        })?;
        let (name, version) = match rest.split_once('@') {
            Some((name, version)) => (name, Some(version)),
            None => (rest, None),
        };
        let name_error = |reason| SourceReferenceError::Name {
            input: input.to_string(),
            reason,
        };
        validate_part(name, "name").map_err(name_error)?;
        if let Some(version) = version {
            if version.is_empty() {
                return Err(name_error("the version after '@' is empty".into()));
            }
            if name.is_empty() {
                return Err(name_error("a version needs a name before '@'".into()));
            }
            validate_part(version, "version").map_err(name_error)?;
        }
        Ok(SourceReference {
            source: source.to_string(),
            name: name.to_string(),
            version: version.map(str::to_string),
        })
    }
}

impl fmt::Display for SourceReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.source, self.name)?;
        if let Some(version) = &self.version {
            write!(f, "@{version}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let cases = [
            ("sbx://v0.1.0", "sbx", "v0.1.0", None),
            ("mycat://hello", "mycat", "hello", None),
            (
                "smartos://base-64@15.2.0",
                "smartos",
                "base-64",
                Some("15.2.0"),
            ),
            (
                "smartos://5c7d0d24-3475-11e5-8e67-27953a8b237e",
                "smartos",
                "5c7d0d24-3475-11e5-8e67-27953a8b237e",
                None,
            ),
            ("mycat://", "mycat", "", None),
        ];
        for (input, source, name, version) in cases {
            let parsed: SourceReference = input.parse().unwrap();
            assert_eq!(parsed.source(), source, "{input}");
            assert_eq!(parsed.name(), name, "{input}");
            assert_eq!(parsed.version(), version, "{input}");
            assert_eq!(parsed.to_string(), input);
        }
    }

    #[test]
    fn rejects_malformed_ones() {
        for input in [
            "alpine:3.20",
            "Sbx://v1",
            "://v1",
            "a/b://x",
            "sbx://a/b",
            "sbx://..",
            "sbx://x@",
            "sbx://@1.0",
            "sbx://x y",
        ] {
            assert!(input.parse::<SourceReference>().is_err(), "{input}");
        }
    }

    #[test]
    fn no_oci_reference_looks_like_one() {
        for oci in ["alpine", "localhost:5000/a/b:c", "repo@sha256:abcd"] {
            assert!(!SourceReference::looks_like(oci));
        }
    }
}
