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
//! Registry credentials (documented in `docs/credentials.md`): a user name
//! and where the password is, never the password itself:
//!
//! ```toml
//! [registries."ghcr.io"]
//! username = "me"
//! password_env = "GHCR_TOKEN"        # or password_file = "/run/secrets/ghcr"
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

/// Credentials for one registry: a user name and where its password is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// User name.
    pub username: String,
    /// Environment variable holding the password (or token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// File holding the password (or token); must not be readable by group
    /// or others. A trailing newline is not part of the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<std::path::PathBuf>,
}

/// Whether a `password_env` value is more likely a token than a variable
/// name: a known token prefix, or longer than any sensible name.
fn looks_like_a_secret(value: &str) -> bool {
    const PREFIXES: [&str; 8] = [
        "ghp_",
        "gho_",
        "ghs_",
        "ghu_",
        "github_pat_",
        "glpat-",
        "dckr_pat_",
        "hf_",
    ];
    value.len() > 64 || PREFIXES.iter().any(|p| value.starts_with(p))
}

impl RegistryConfig {
    /// Checks that exactly one password source is named.
    pub fn validate(&self, host: &str) -> std::result::Result<(), String> {
        if self.username.is_empty() {
            return Err(format!("registry {host}: username is empty"));
        }
        match (&self.password_env, &self.password_file) {
            (Some(_), Some(_)) => Err(format!(
                "registry {host}: give password_env or password_file, not both"
            )),
            (None, None) => Err(format!(
                "registry {host}: give password_env or password_file"
            )),
            // A secret pasted where a variable name goes is never echoed.
            (Some(variable), None) if looks_like_a_secret(variable) => Err(format!(
                "registry {host}: password_env looks like a token, not the name of an environment variable (put the token in a variable and name the variable)"
            )),
            (Some(variable), None)
                if variable.is_empty()
                    || !variable
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                Err(format!(
                    "registry {host}: password_env {variable:?} is not an environment variable name"
                ))
            }
            (None, Some(path)) if path.as_os_str().is_empty() => {
                Err(format!("registry {host}: password_file is empty"))
            }
            _ => Ok(()),
        }
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
    /// Registry credentials by host (`docs/credentials.md`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registries: BTreeMap<String, RegistryConfig>,
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
            registries: BTreeMap::new(),
        }
    }

    /// Reads the config file at `path`: the built-in sources when there is
    /// no such file.
    pub fn load(path: &std::path::Path) -> Result<Config> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, &path.display().to_string()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Config::builtin()),
            Err(error) => Err(SourceError::Config {
                path: path.display().to_string(),
                detail: error.to_string(),
            }),
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
        for (host, registry) in &config.registries {
            registry.validate(host).map_err(error)?;
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
    fn registries_round_trip() {
        let text = "version = 1\n[registries.\"127.0.0.1:5000\"]\nusername = \"u\"\npassword_env = \"KILN_X\"\n[registries.\"ghcr.io\"]\nusername = \"v\"\npassword_file = \"/run/p\"\n";
        let config = Config::parse(text, "c.toml").unwrap();
        assert_eq!(config.registries.len(), 2);
        assert_eq!(
            config.registries["127.0.0.1:5000"].password_env.as_deref(),
            Some("KILN_X")
        );
        assert_eq!(Config::parse(&config.to_toml(), "c.toml").unwrap(), config);
        assert!(!Config::builtin().to_toml().contains("registries"));
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
            (
                "version = 1\n[registries.\"r.io\"]\nusername = \"u\"\npassword = \"p\"\n",
                "password",
            ),
            (
                "version = 1\n[registries.\"r.io\"]\nusername = \"u\"\n",
                "password_env or password_file",
            ),
            (
                "version = 1\n[registries.\"r.io\"]\nusername = \"u\"\npassword_env = \"A\"\npassword_file = \"/f\"\n",
                "not both",
            ),
            (
                "version = 1\n[registries.\"r.io\"]\nusername = \"u\"\npassword_env = \"A-B\"\n",
                "A-B",
            ),
        ];
        for (text, expected) in cases {
            let error = Config::parse(text, "c.toml").unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(error.contains("c.toml"), "{error}");
        }
    }

    #[test]
    fn a_token_pasted_as_password_env_is_refused_without_being_shown() {
        for token in ["ghp_abcdefghijklmnopqrstuvwxyz0123456789", &"x".repeat(80)] {
            let text = format!(
                "version = 1\n[registries.\"r.io\"]\nusername = \"u\"\npassword_env = \"{token}\"\n"
            );
            let error = Config::parse(&text, "c.toml").unwrap_err().to_string();
            assert!(error.contains("looks like a token"), "{error}");
            assert!(!error.contains(token), "the token is not echoed: {error}");
        }
    }
}
