//! kiln's config file: the named image sources.
//!
//! Format (TOML, `version = 1`), documented for users in `docs/sources.md`:
//!
//! ```toml
//! version = 1
//!
//! [sources.sbx]
//! type = "github-release"
//! url = "https://api.github.com"
//! repo = "slok/sbx-images"
//! vmm_repo = "firecracker-microvm/firecracker"
//! # token_env = "GITHUB_TOKEN"
//!
//! [sources.smartos]
//! type = "imgapi"
//! url = "https://images.smartos.org"
//! ```
//!
//! While the file does not exist the built-in defaults apply; once written
//! it lists every source, so removing a default sticks. Unknown keys are
//! refused.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use kiln_types::validate_source_name;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SourceError};

/// The config file schema version this kiln reads and writes.
pub const CONFIG_VERSION: u32 = 1;

/// Where firecracker releases come from by default.
pub const DEFAULT_VMM_REPO: &str = "firecracker-microvm/firecracker";

/// The kind of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceType {
    /// Release bundles published as GitHub release assets.
    GithubRelease,
    /// A checksum catalog file.
    Catalog,
    /// An IMGAPI image server.
    Imgapi,
}

impl SourceType {
    /// The name used in the config file and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceType::GithubRelease => "github-release",
            SourceType::Catalog => "catalog",
            SourceType::Imgapi => "imgapi",
        }
    }

    /// `images.kind` of images from this kind of source.
    pub fn image_kind(self) -> &'static str {
        match self {
            SourceType::GithubRelease => "release-bundle",
            SourceType::Catalog => "catalog",
            SourceType::Imgapi => "imgapi",
        }
    }
}

impl fmt::Display for SourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SourceType {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<SourceType, String> {
        match text {
            "github-release" => Ok(SourceType::GithubRelease),
            "catalog" => Ok(SourceType::Catalog),
            "imgapi" => Ok(SourceType::Imgapi),
            other => Err(format!(
                "unknown source type {other:?} (github-release, catalog, imgapi)"
            )),
        }
    }
}

/// One configured source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// What kind of source.
    #[serde(rename = "type")]
    pub source_type: SourceType,
    /// Base URL (API base, catalog location, image server).
    pub url: String,
    /// `OWNER/NAME` of the GitHub repository (github-release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// `OWNER/NAME` of the repository releasing the VMM (github-release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_repo: Option<String>,
    /// Environment variable holding an API token (github-release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
}

impl SourceConfig {
    /// Checks the fields that the type needs.
    pub fn validate(&self, name: &str) -> std::result::Result<(), String> {
        validate_source_name(name)?;
        if self.url.trim().is_empty() {
            return Err(format!("source {name}: url is empty"));
        }
        if self.source_type != SourceType::Catalog
            && !(self.url.starts_with("http://") || self.url.starts_with("https://"))
        {
            return Err(format!(
                "source {name}: url {:?} must start with http:// or https://",
                self.url
            ));
        }
        let check_repo = |field: &str, value: &str| -> std::result::Result<(), String> {
            let parts: Vec<&str> = value.split('/').collect();
            let valid = |part: &str| {
                !part.is_empty()
                    && part != "."
                    && part != ".."
                    && part
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            };
            if parts.len() != 2 || !parts.iter().all(|p| valid(p)) {
                return Err(format!(
                    "source {name}: {field} {value:?} is not OWNER/NAME"
                ));
            }
            Ok(())
        };
        match self.source_type {
            SourceType::GithubRelease => {
                let repo = self.repo.as_deref().ok_or_else(|| {
                    format!(
                        "source {name}: a github-release source needs a repo (--repo OWNER/NAME)"
                    )
                })?;
                check_repo("repo", repo)?;
                if let Some(vmm) = &self.vmm_repo {
                    check_repo("vmm_repo", vmm)?;
                }
            }
            SourceType::Catalog | SourceType::Imgapi => {
                if self.repo.is_some() || self.vmm_repo.is_some() {
                    return Err(format!(
                        "source {name}: repo and vmm_repo are for github-release sources only"
                    ));
                }
            }
        }
        if let Some(variable) = &self.token_env
            && (variable.is_empty()
                || !variable
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            return Err(format!(
                "source {name}: token_env {variable:?} is not an environment variable name"
            ));
        }
        Ok(())
    }

    /// The VMM repository (default: firecracker's).
    pub fn vmm_repo(&self) -> &str {
        self.vmm_repo.as_deref().unwrap_or(DEFAULT_VMM_REPO)
    }
}

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Schema version of the file.
    pub version: u32,
    /// Sources by name.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
}

impl Default for Config {
    fn default() -> Config {
        Config::builtin()
    }
}

impl Config {
    /// The built-in sources: `sbx` (GitHub releases of slok/sbx-images) and
    /// `smartos` (the SmartOS image server).
    pub fn builtin() -> Config {
        let mut sources = BTreeMap::new();
        sources.insert(
            "sbx".to_string(),
            SourceConfig {
                source_type: SourceType::GithubRelease,
                url: "https://api.github.com".into(),
                repo: Some("slok/sbx-images".into()),
                vmm_repo: Some(DEFAULT_VMM_REPO.into()),
                token_env: None,
            },
        );
        sources.insert(
            "smartos".to_string(),
            SourceConfig {
                source_type: SourceType::Imgapi,
                url: "https://images.smartos.org".into(),
                repo: None,
                vmm_repo: None,
                token_env: None,
            },
        );
        Config {
            version: CONFIG_VERSION,
            sources,
        }
    }

    /// Parses a config file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Config> {
        let error = |detail: String| SourceError::Config {
            path: path.to_string(),
            detail,
        };
        let config: Config = toml::from_str(text).map_err(|e| {
            let place = e
                .span()
                .map(|span| {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: ")
                })
                .unwrap_or_default();
            error(format!("{place}{}", e.message()))
        })?;
        if config.version != CONFIG_VERSION {
            return Err(error(format!(
                "version {} is not supported (this kiln reads version {CONFIG_VERSION}); upgrade kiln",
                config.version
            )));
        }
        for (name, source) in &config.sources {
            source.validate(name).map_err(error)?;
        }
        Ok(config)
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string_pretty(self).unwrap_or_default();
        format!(
            "# kiln configuration (see docs/sources.md); `version` is this file's schema version.\n{body}"
        )
    }

    /// The source named `name`.
    pub fn source(&self, name: &str) -> Option<&SourceConfig> {
        self.sources.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_round_trips_through_toml() {
        let config = Config::builtin();
        let text = config.to_toml();
        assert_eq!(Config::parse(&text, "c.toml").unwrap(), config);
        assert!(text.contains("[sources.sbx]"), "{text}");
    }

    #[test]
    fn refuses_bad_files_naming_the_line() {
        let cases = [
            (
                "version = 1\n[sources.x]\ntype = \"imgapi\"\nurl = \"http://a\"\ncolour = 1\n",
                "colour",
            ),
            ("version = 2\n", "version 2"),
            (
                "version = 1\n[sources.x]\ntype = \"github-release\"\nurl = \"http://a\"\n",
                "repo",
            ),
            (
                "version = 1\n[sources.x]\ntype = \"ftp\"\nurl = \"http://a\"\n",
                "ftp",
            ),
            (
                "version = 1\n[sources.\"A/B\"]\ntype = \"imgapi\"\nurl = \"http://a\"\n",
                "A/B",
            ),
            (
                "version = 1\n[sources.x]\ntype = \"imgapi\"\nurl = \"file:///a\"\n",
                "http",
            ),
            ("version = [\n", "line"),
        ];
        for (text, expected) in cases {
            let error = Config::parse(text, "c.toml").unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(error.contains("c.toml"), "{error}");
        }
    }
}
