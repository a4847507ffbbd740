//! Platforms (`os/arch[/variant]`) and how an index entry is chosen for one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a string is not a platform.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {0:?}: expected os/arch[/variant], e.g. linux/amd64 or linux/arm64/v8")]
pub struct PlatformError(pub String);

/// An image platform as OCI indexes describe it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// CPU architecture in GOARCH spelling, e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// CPU variant, e.g. `v8` for arm64, `v7` for arm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of the machine kiln runs on (guests are Linux).
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "riscv64" => ("riscv64", None),
            "s390x" => ("s390x", None),
            other => (other, None),
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(str::to_string),
        }
    }

    /// The variant with architecture defaults filled in (arm64 means v8).
    fn normalized_variant(&self) -> Option<&str> {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            ("arm64", None) => Some("v8"),
            (_, variant) => variant,
        }
    }

    /// Whether an image published for `candidate` runs on this platform.
    /// A platform without a variant accepts any variant of its architecture.
    pub fn accepts(&self, candidate: &Platform) -> bool {
        if self.os != candidate.os || self.architecture != candidate.architecture {
            return false;
        }
        match self.variant {
            None => true,
            Some(_) => self.normalized_variant() == candidate.normalized_variant(),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(text: &str) -> Result<Platform, PlatformError> {
        let parts: Vec<&str> = text.split('/').collect();
        let valid_part = |part: &str| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|part| valid_part(part)) {
            return Err(PlatformError(text.to_string()));
        }
        let architecture = match parts[1] {
            "x86_64" | "x86-64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        Ok(Platform {
            os: parts[0].to_lowercase(),
            architecture: architecture.to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for text in [
            "linux/amd64",
            "linux/arm64/v8",
            "linux/arm/v7",
            "windows/amd64",
        ] {
            assert_eq!(text.parse::<Platform>().unwrap().to_string(), text);
        }
        assert_eq!(
            "linux/x86_64".parse::<Platform>().unwrap().to_string(),
            "linux/amd64"
        );
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/amd 64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }

    #[test]
    fn matching_rules() {
        let p = |s: &str| s.parse::<Platform>().unwrap();
        assert!(p("linux/amd64").accepts(&p("linux/amd64")));
        assert!(!p("linux/amd64").accepts(&p("linux/arm64")));
        assert!(p("linux/arm64/v8").accepts(&p("linux/arm64")));
        assert!(p("linux/arm64").accepts(&p("linux/arm64/v8")));
        assert!(!p("linux/arm/v7").accepts(&p("linux/arm/v6")));
        assert!(p("linux/arm").accepts(&p("linux/arm/v6")));
    }
}
