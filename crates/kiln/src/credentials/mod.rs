//! Registry credentials: `login`, `logout`, `registries`, and the chain of
//! providers every registry request asks, in this order (documented in
//! `docs/credentials.md`):
//!
//! 1. credentials given to the call ([`crate::PullOptions::credentials`], `--creds`);
//! 2. kiln's own store (`kiln login`: `auth.json` beside the config file,
//!    passwords in the OS keyring or in that file);
//! 3. kiln's config file (`[registries."HOST"]` with `password_env` or
//!    `password_file`);
//! 4. docker's `config.json` and credential helpers (identity tokens included);
//! 5. anonymous.
//!
//! The first level that has credentials for the host wins, even if the
//! registry then refuses them. No error, listing or log ever holds a secret.

mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use kiln_oci::{
    ChainedCredentials, ClientOptions, Credential, CredentialProvider, DockerConfig, LoginCheck,
    OciError, RegistryClient,
};
use kiln_sources::Config;
use kiln_types::ErrorKind;
use serde::Serialize;

pub use store::{AUTH_FILE_VERSION, StoreChoice, StoreKind};
use store::{AuthStore, StoredEntry};

use crate::Manager;
use crate::error::{Error, Result};

/// A failure of kiln's credential handling. Messages name hosts, files,
/// variables and user names, never a password or token.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// A credentials file that group or others can read.
    #[error("credentials file {} can be read by group or others (mode {mode:o})", path.display())]
    NotPrivate { path: PathBuf, mode: u32 },
    /// `auth.json` cannot be read or written.
    #[error("credentials file {}: {detail}", path.display())]
    File { path: PathBuf, detail: String },
    /// The keyring failed for a host.
    #[error("keyring entry for {host}: {detail}")]
    Keyring { host: String, detail: String },
    /// The keyring was asked for and none answers.
    #[error("no keyring is available: {detail}")]
    KeyringUnavailable { detail: String },
    /// A config `password_env` names a variable that is not set.
    #[error("config password_env {variable} is not set")]
    MissingVariable { host: String, variable: String },
    /// A config `password_file` cannot be read.
    #[error("config password_file {}: {detail}", path.display())]
    PasswordFile {
        host: String,
        path: PathBuf,
        detail: String,
    },
    /// The config file cannot be read.
    #[error("{detail}")]
    Config { detail: String },
    /// Not a registry host.
    #[error("{host:?} is not a registry host (host[:port])")]
    InvalidHost { host: String },
    /// A user name kiln cannot send.
    #[error("a user name must not be empty or contain ':'")]
    InvalidUsername,
    /// `logout` of a host kiln's store does not hold.
    #[error("not logged in to {host} with kiln")]
    NotLoggedIn {
        host: String,
        /// Where the host's credentials come from instead.
        elsewhere: Vec<String>,
    },
    /// The registry refused the credentials at login.
    #[error("registry {host} refused the login of {username}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    LoginRefused {
        host: String,
        username: String,
        message: Option<String>,
    },
}

impl CredentialError {
    /// The category of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CredentialError::NotPrivate { .. } | CredentialError::PasswordFile { .. } => {
                ErrorKind::PermissionDenied
            }
            CredentialError::File { .. } => ErrorKind::FailedPrecondition,
            CredentialError::Keyring { .. } | CredentialError::KeyringUnavailable { .. } => {
                ErrorKind::Unavailable
            }
            CredentialError::MissingVariable { .. }
            | CredentialError::Config { .. }
            | CredentialError::InvalidHost { .. }
            | CredentialError::InvalidUsername => ErrorKind::InvalidArgument,
            CredentialError::NotLoggedIn { .. } => ErrorKind::NotFound,
            CredentialError::LoginRefused { .. } => ErrorKind::PermissionDenied,
        }
    }

    /// A suggestion for the user.
    pub fn hint(&self) -> Option<String> {
        match self {
            CredentialError::NotPrivate { path, .. } => Some(format!("chmod 600 {}", path.display())),
            CredentialError::PasswordFile { path, detail, .. } if detail.contains("group or others") => {
                Some(format!("chmod 600 {}", path.display()))
            }
            CredentialError::PasswordFile { .. } => Some("check password_file in kiln's config file".into()),
            CredentialError::File { .. } => Some("fix or remove the file (then `kiln login` again)".into()),
            CredentialError::Keyring { .. } => Some("unlock the keyring (gnome-keyring, KWallet), or log in again with KILN_CREDENTIAL_STORE=file".into()),
            CredentialError::KeyringUnavailable { .. } => Some("start a Secret Service (gnome-keyring, KWallet) on the session D-Bus, or set KILN_CREDENTIAL_STORE=file to keep the password in a mode 0600 file".into()),
            CredentialError::MissingVariable { variable, .. } => Some(format!("export {variable}=PASSWORD, or change the registry's entry in kiln's config file")),
            CredentialError::Config { .. } => Some("fix kiln's config file (docs/credentials.md)".into()),
            CredentialError::InvalidUsername => Some("pass the user name with -u USER".into()),
            CredentialError::InvalidHost { .. } => Some("give the registry as docker does: ghcr.io, docker.io, 127.0.0.1:5000".into()),
            CredentialError::NotLoggedIn { elsewhere, .. } if !elsewhere.is_empty() => Some(format!(
                "its credentials come from {}, which `kiln logout` does not change", elsewhere.join(", ")
            )),
            CredentialError::NotLoggedIn { .. } => Some("`kiln registries` lists the hosts kiln has credentials for".into()),
            CredentialError::LoginRefused { .. } => Some("check the user name and password (or token); nothing was stored".into()),
        }
    }

    /// As the error a credential provider returns.
    fn for_provider(self, host: &str) -> OciError {
        OciError::CredentialSource {
            host: host.to_string(),
            kind: self.kind(),
            hint: self.hint(),
            source: Box::new(self),
        }
    }
}

/// The registry a name means: `https://` and a trailing path dropped,
/// lowercase, Docker Hub's names (`index.docker.io`, `registry-1.docker.io`)
/// as `docker.io`.
pub fn normalize_host(text: &str) -> String {
    let text = text.trim();
    let text = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .unwrap_or(text);
    let host = text.split('/').next().unwrap_or(text).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.docker.io" => "docker.io".into(),
        _ => host,
    }
}

fn validate_host(host: &str) -> std::result::Result<(), CredentialError> {
    let valid = !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:[]_".contains(c))
        && !host.starts_with(['-', '.', ':']);
    if valid {
        Ok(())
    } else {
        Err(CredentialError::InvalidHost {
            host: host.to_string(),
        })
    }
}

/// The host serving a registry's API (Docker Hub's lives elsewhere).
fn api_host(host: &str) -> &str {
    if host == "docker.io" {
        "registry-1.docker.io"
    } else {
        host
    }
}

/// How to log in.
#[derive(Debug, Clone, Default)]
pub struct LoginOptions {
    /// Reach the registry over plain HTTP or unverified TLS.
    pub insecure: bool,
    /// Extra CA certificates (PEM) for TLS.
    pub ca_certs: Vec<PathBuf>,
    /// Where to keep the password (default: the keyring when one answers,
    /// else `auth.json`).
    pub store: StoreChoice,
}

/// The outcome of a login.
#[derive(Debug, Clone, Serialize)]
pub struct LoginOutcome {
    /// Normalised host.
    pub host: String,
    /// User name stored.
    pub username: String,
    /// Where the credentials went (`kiln login (keyring)`, `kiln login (FILE)`).
    pub source: String,
    /// False when the registry asks for no credentials (they were stored unchecked).
    pub verified: bool,
    /// Why no keyring was used when `auto` fell back to the file.
    pub keyring_fallback: Option<String>,
}

/// One host kiln has credentials for, and where they come from. Never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistryCredentials {
    /// Normalised host.
    pub host: String,
    /// User name, when the source tells it without running anything.
    pub username: Option<String>,
    /// Where they come from: `kiln login (keyring)`, `kiln login (FILE)`,
    /// `config password_env VAR`, `config password_file PATH`,
    /// `docker config.json`, `docker credential helper NAME`.
    pub source: String,
    /// Whether these are the ones used (the first source in resolution
    /// order for the host); false when a higher level shadows them.
    pub in_use: bool,
}

/// Level 1: credentials given to one call.
struct CallCredentials(Arc<dyn CredentialProvider>);

impl CredentialProvider for CallCredentials {
    fn credentials(&self, registry: &str) -> kiln_oci::Result<Option<Credential>> {
        self.0.credentials(registry)
    }
}

/// Level 2: kiln's own store (`kiln login`).
struct KilnStore(AuthStore);

impl KilnStore {
    fn describe(&self, kind: StoreKind) -> String {
        match kind {
            StoreKind::Keyring => "kiln login (keyring)".into(),
            StoreKind::File => format!("kiln login ({})", self.0.path().display()),
        }
    }

    fn list(&self) -> std::result::Result<Vec<RegistryCredentials>, CredentialError> {
        Ok(self
            .0
            .load()?
            .registries
            .into_iter()
            .map(|(host, entry)| RegistryCredentials {
                host: normalize_host(&host),
                username: Some(entry.username),
                source: self.describe(entry.store),
                in_use: false,
            })
            .collect())
    }
}

impl CredentialProvider for KilnStore {
    fn credentials(&self, registry: &str) -> kiln_oci::Result<Option<Credential>> {
        let host = normalize_host(registry);
        let file = self.0.load().map_err(|e| e.for_provider(&host))?;
        let Some((key, entry)) = file
            .registries
            .iter()
            .find(|(key, _)| normalize_host(key) == host)
        else {
            return Ok(None);
        };
        let password = self
            .0
            .password(key, entry)
            .map_err(|e| e.for_provider(&host))?;
        Ok(Some(Credential::Basic {
            username: entry.username.clone(),
            password,
        }))
    }
}

/// Level 3: kiln's config file (`[registries."HOST"]`).
struct ConfigCredentials {
    path: PathBuf,
}

impl ConfigCredentials {
    fn load(&self) -> std::result::Result<Config, CredentialError> {
        Config::load(&self.path).map_err(|e| CredentialError::Config {
            detail: e.to_string(),
        })
    }

    /// A relative `password_file` is relative to the config file's directory.
    fn resolve(&self, path: &Path) -> PathBuf {
        match self.path.parent() {
            Some(directory) if path.is_relative() => directory.join(path),
            _ => path.to_path_buf(),
        }
    }

    fn list(&self) -> std::result::Result<Vec<RegistryCredentials>, CredentialError> {
        Ok(self
            .load()?
            .registries
            .into_iter()
            .map(|(host, entry)| RegistryCredentials {
                host: normalize_host(&host),
                source: match (&entry.password_env, &entry.password_file) {
                    (Some(variable), _) => format!("config password_env {variable}"),
                    (None, Some(path)) => {
                        format!("config password_file {}", self.resolve(path).display())
                    }
                    (None, None) => "config".into(),
                },
                username: Some(entry.username),
                in_use: false,
            })
            .collect())
    }

    fn lookup(&self, host: &str) -> std::result::Result<Option<Credential>, CredentialError> {
        let config = self.load()?;
        let Some(entry) = config
            .registries
            .iter()
            .find(|(key, _)| normalize_host(key) == host)
            .map(|(_, entry)| entry)
        else {
            return Ok(None);
        };
        let password = match (&entry.password_env, &entry.password_file) {
            (Some(variable), _) => std::env::var(variable)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| CredentialError::MissingVariable {
                    host: host.to_string(),
                    variable: variable.clone(),
                })?,
            (None, Some(path)) => read_password_file(host, &self.resolve(path))?,
            (None, None) => return Ok(None),
        };
        Ok(Some(Credential::Basic {
            username: entry.username.clone(),
            password,
        }))
    }
}

/// A password file's content, its trailing newline dropped; refused when
/// group or others can read it.
fn read_password_file(host: &str, path: &Path) -> std::result::Result<String, CredentialError> {
    let error = |detail: String| CredentialError::PasswordFile {
        host: host.to_string(),
        path: path.to_path_buf(),
        detail,
    };
    let text = match store::read_private(path) {
        Ok(Some(text)) => text,
        Ok(None) => return Err(error("no such file".into())),
        Err(CredentialError::NotPrivate { mode, .. }) => {
            return Err(error(format!(
                "can be read by group or others (mode {mode:o})"
            )));
        }
        Err(CredentialError::File { detail, .. }) => return Err(error(detail)),
        Err(other) => return Err(other),
    };
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    if text.is_empty() {
        return Err(error("the file is empty".into()));
    }
    Ok(text.to_string())
}

impl CredentialProvider for ConfigCredentials {
    fn credentials(&self, registry: &str) -> kiln_oci::Result<Option<Credential>> {
        let host = normalize_host(registry);
        self.lookup(&host).map_err(|e| e.for_provider(&host))
    }
}

/// Level 4, described for `registries`: what docker's config.json names,
/// read without running any helper.
fn docker_entries() -> Vec<RegistryCredentials> {
    let directory = std::env::var_os("DOCKER_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| PathBuf::from(home).join(".docker"))
        });
    let Some(directory) = directory else {
        return Vec::new();
    };
    let Ok(text) = std::fs::read_to_string(directory.join("config.json")) else {
        return Vec::new();
    };
    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct DockerFile {
        #[serde(default)]
        auths: std::collections::BTreeMap<String, DockerAuth>,
        #[serde(default)]
        cred_helpers: std::collections::BTreeMap<String, String>,
        #[serde(default)]
        creds_store: Option<String>,
    }
    #[derive(serde::Deserialize, Default)]
    struct DockerAuth {
        auth: Option<String>,
        username: Option<String>,
        identitytoken: Option<String>,
    }
    let Ok(file) = serde_json::from_str::<DockerFile>(&text) else {
        return Vec::new();
    };
    let mut entries = Vec::new();
    for (host, helper) in &file.cred_helpers {
        entries.push(RegistryCredentials {
            host: normalize_host(host),
            username: None,
            source: format!("docker credential helper {helper}"),
            in_use: false,
        });
    }
    for (key, auth) in &file.auths {
        let host = normalize_host(key);
        if file.cred_helpers.keys().any(|h| normalize_host(h) == host) {
            continue;
        }
        let username = auth.username.clone().or_else(|| {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.auth.as_deref()?.trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (user, _) = text.split_once(':')?;
            (!user.is_empty()).then(|| user.to_string())
        });
        let has_secret = auth.auth.is_some() || auth.identitytoken.is_some();
        let source = match (&file.creds_store, has_secret) {
            (_, true) if auth.identitytoken.is_some() => {
                "docker config.json (identity token)".into()
            }
            (_, true) => "docker config.json".into(),
            (Some(helper), false) => format!("docker credential helper {helper}"),
            (None, false) => continue,
        };
        entries.push(RegistryCredentials {
            host,
            username,
            source,
            in_use: false,
        });
    }
    entries
}

impl Manager {
    /// kiln's credential store: `auth.json` in the directory of the config file.
    pub fn auth_path(&self) -> PathBuf {
        self.config_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join("auth.json")
    }

    fn auth_store(&self) -> AuthStore {
        AuthStore::new(self.auth_path())
    }

    /// Every credential provider, in resolution order: `call` (credentials
    /// given to this call), kiln's store, kiln's config, docker's config.
    /// The first that has credentials for a host wins; none → anonymous.
    pub fn credential_chain(
        &self,
        call: Option<Arc<dyn CredentialProvider>>,
    ) -> ChainedCredentials {
        let mut providers: Vec<Arc<dyn CredentialProvider>> = Vec::new();
        if let Some(call) = call {
            providers.push(Arc::new(CallCredentials(call)));
        }
        providers.push(Arc::new(KilnStore(self.auth_store())));
        providers.push(Arc::new(ConfigCredentials {
            path: self.config_path.clone(),
        }));
        providers.push(Arc::new(DockerConfig));
        ChainedCredentials(providers)
    }

    /// Checks `username` and `password` against `host`'s registry, then
    /// stores them (keyring or `auth.json`). A refusal stores nothing.
    pub async fn login(
        &self,
        host: &str,
        username: &str,
        password: &str,
        options: &LoginOptions,
    ) -> Result<LoginOutcome> {
        let host = normalize_host(host);
        validate_host(&host)?;
        if username.is_empty() || username.contains(':') {
            return Err(CredentialError::InvalidUsername.into());
        }
        let api = api_host(&host).to_string();
        let client = RegistryClient::new(ClientOptions {
            insecure_registries: if options.insecure {
                vec![api.clone()]
            } else {
                Vec::new()
            },
            ca_certs: options.ca_certs.clone(),
            ..ClientOptions::default()
        });
        client.check_ca_certs()?;
        let check = match client.check_login(&api, username, password).await {
            Ok(check) => check,
            Err(OciError::Denied { message, .. }) => {
                return Err(CredentialError::LoginRefused {
                    host,
                    username: username.to_string(),
                    message,
                }
                .into());
            }
            Err(error) => return Err(error.into()),
        };
        let (kind, fallback) = store::choose_store(options.store)?;
        let auth = self.auth_store();
        // The keyring changes under the file's lock too, so two logins at
        // once never pair one's user name with the other's password.
        let keyring = auth.clone();
        let written = auth.edit(|file| {
            if kind == StoreKind::Keyring {
                keyring.keyring_set(&host, password)?;
            }
            let previous = file.registries.insert(
                host.clone(),
                StoredEntry {
                    username: username.to_string(),
                    store: kind,
                    password: (kind == StoreKind::File).then(|| password.to_string()),
                },
            );
            if previous.is_some_and(|p| p.store == StoreKind::Keyring) && kind == StoreKind::File {
                // The password moved to the file: leave no stale copy behind.
                let _ = keyring.keyring_delete(&host);
            }
            Ok(())
        });
        if let Err(error) = written {
            if kind == StoreKind::Keyring {
                // The file was not written: take the password back out.
                let _ = auth.keyring_delete(&host);
            }
            return Err(error.into());
        }
        Ok(LoginOutcome {
            source: KilnStore(auth).describe(kind),
            host,
            username: username.to_string(),
            verified: check == LoginCheck::Accepted,
            keyring_fallback: fallback,
        })
    }

    /// Forgets what `kiln login` stored for `host` (file entry and keyring
    /// entry). False when kiln's store had nothing for it.
    pub fn logout(&self, host: &str) -> Result<bool> {
        let host = normalize_host(host);
        validate_host(&host)?;
        let auth = self.auth_store();
        let keyring = auth.clone();
        let removed = auth.edit(|file| {
            let key = file
                .registries
                .keys()
                .find(|key| normalize_host(key) == host)
                .cloned();
            let Some(key) = key else {
                return Ok(false);
            };
            match file.registries.get(&key).map(|entry| entry.store) {
                // The secret goes first: an entry is forgotten only once
                // its keyring copy is gone (a locked keyring fails the
                // logout, which can be tried again).
                Some(StoreKind::Keyring) => keyring.keyring_delete(&host)?,
                // A file entry: a keyring copy from an older login is
                // removed where a keyring answers.
                _ => {
                    let _ = keyring.keyring_delete(&host);
                }
            }
            file.registries.remove(&key);
            Ok(true)
        })?;
        Ok(removed)
    }

    /// The error for a logout of a host kiln's store does not hold, naming
    /// where its credentials come from instead.
    pub fn not_logged_in(&self, host: &str) -> Error {
        let host = normalize_host(host);
        let elsewhere = self
            .registries()
            .map(|all| {
                all.into_iter()
                    .filter(|r| r.host == host)
                    .map(|r| r.source)
                    .collect()
            })
            .unwrap_or_default();
        CredentialError::NotLoggedIn { host, elsewhere }.into()
    }

    /// Every host kiln has credentials for, with where they come from, in
    /// resolution order per host (`in_use` marks the one used). Never a secret.
    pub fn registries(&self) -> Result<Vec<RegistryCredentials>> {
        let mut all = KilnStore(self.auth_store()).list()?;
        all.extend(
            ConfigCredentials {
                path: self.config_path.clone(),
            }
            .list()?,
        );
        all.extend(docker_entries());
        // Stable sort: resolution order stays within each host.
        all.sort_by(|a, b| a.host.cmp(&b.host));
        let mut previous: Option<String> = None;
        for entry in &mut all {
            entry.in_use = previous.as_deref() != Some(entry.host.as_str());
            previous = Some(entry.host.clone());
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "pa55-w0rd-xyz";

    #[test]
    fn normalizes_hosts() {
        for (text, expected) in [
            ("docker.io", "docker.io"),
            ("index.docker.io", "docker.io"),
            ("registry-1.docker.io", "docker.io"),
            ("https://index.docker.io/v1/", "docker.io"),
            ("https://GHCR.io/", "ghcr.io"),
            ("http://127.0.0.1:5000", "127.0.0.1:5000"),
            ("127.0.0.1:5000/", "127.0.0.1:5000"),
        ] {
            assert_eq!(normalize_host(text), expected, "{text}");
        }
        assert!(validate_host("ghcr.io").is_ok());
        assert!(validate_host("").is_err());
        assert!(validate_host("a b").is_err());
    }

    #[test]
    fn errors_never_show_secrets() {
        let errors = [
            CredentialError::NotPrivate {
                path: "/c/auth.json".into(),
                mode: 0o644,
            },
            CredentialError::MissingVariable {
                host: "r.io".into(),
                variable: "KILN_X".into(),
            },
            CredentialError::PasswordFile {
                host: "r.io".into(),
                path: "/c/p".into(),
                detail: "can be read by group or others (mode 644)".into(),
            },
            CredentialError::LoginRefused {
                host: "r.io".into(),
                username: "u".into(),
                message: Some("credentials refused".into()),
            },
        ];
        for error in errors {
            let provider_error = CredentialError::Config {
                detail: error.to_string(),
            }
            .for_provider("r.io");
            let shown = format!(
                "{error} {error:?} {:?} {provider_error} {provider_error:?}",
                error.hint()
            );
            assert!(!shown.contains(SECRET), "{shown}");
        }
    }

    #[test]
    fn password_files_trim_one_newline_and_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        std::fs::write(&path, format!("{SECRET}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_password_file("r.io", &path).unwrap(), SECRET);
        std::fs::write(&path, format!("{SECRET}\r\n")).unwrap();
        assert_eq!(read_password_file("r.io", &path).unwrap(), SECRET);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let error = read_password_file("r.io", &path).unwrap_err();
        assert_eq!(
            error.hint().unwrap(),
            format!("chmod 600 {}", path.display())
        );
        assert!(!format!("{error} {error:?}").contains(SECRET));
    }

    #[test]
    fn config_levels_resolve_and_report_missing_variables() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            "version = 1\n[registries.\"r.io\"]\nusername = \"u\"\npassword_env = \"KILN_UNIT_TEST_SURELY_UNSET\"\n[registries.\"https://index.docker.io/v1/\"]\nusername = \"d\"\npassword_file = \"pw\"\n",
        )
        .unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, SECRET).unwrap();
        std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let provider = ConfigCredentials { path: config };
        let error = provider.credentials("r.io").unwrap_err();
        assert!(
            error.to_string().contains("KILN_UNIT_TEST_SURELY_UNSET"),
            "{error}"
        );
        assert_eq!(error.kind(), ErrorKind::InvalidArgument);
        assert_eq!(
            provider.credentials("docker.io").unwrap(),
            Some(Credential::Basic {
                username: "d".into(),
                password: SECRET.into()
            })
        );
        assert_eq!(provider.credentials("other.io").unwrap(), None);
        let listed = provider.list().unwrap();
        assert!(
            listed
                .iter()
                .any(|r| r.host == "docker.io" && r.source.starts_with("config password_file"))
        );
        assert!(!format!("{listed:?}").contains(SECRET));
    }
}
