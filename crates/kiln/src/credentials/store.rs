//! kiln's own credential store: `auth.json` beside kiln's config file, with
//! the passwords either in that file (mode 0600) or in the OS keyring
//! (Secret Service over D-Bus).
//!
//! ```json
//! {"version": 1, "registries": {
//!   "ghcr.io": {"username": "me", "store": "keyring"},
//!   "127.0.0.1:5000": {"username": "me", "store": "file", "password": "..."}}}
//! ```
//!
//! The file is created with mode 0600 (never wider, not even for a moment),
//! replaced atomically (temp file, fsync, rename, fsync of the directory)
//! under an exclusive lock on `.auth.json.lock`, re-read once the lock is
//! held. A file that group or others can read is refused.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kiln_store::lock::{LockFile, LockMode};
use serde::{Deserialize, Serialize};

use super::CredentialError;

/// The `auth.json` schema version this kiln reads and writes.
pub const AUTH_FILE_VERSION: u32 = 1;

/// The keyring service name kiln's entries are filed under (user: the host).
const KEYRING_SERVICE: &str = "kiln";

/// Where a stored password is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In `auth.json` itself.
    File,
    /// In the OS keyring.
    Keyring,
}

/// Which store `kiln login` writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreChoice {
    /// The keyring when one answers, else the file.
    #[default]
    Auto,
    /// The file.
    File,
    /// The keyring (an error when none answers).
    Keyring,
}

/// One host's entry.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredEntry {
    /// User name.
    pub username: String,
    /// Where the password is.
    pub store: StoreKind,
    /// The password (file store only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl fmt::Debug for StoredEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredEntry")
            .field("username", &self.username)
            .field("store", &self.store)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// Schema version.
    pub version: u32,
    /// Entries by normalised host.
    #[serde(default)]
    pub registries: BTreeMap<String, StoredEntry>,
}

impl Default for AuthFile {
    fn default() -> AuthFile {
        AuthFile {
            version: AUTH_FILE_VERSION,
            registries: BTreeMap::new(),
        }
    }
}

impl AuthFile {
    /// Parses the file's text; errors name `path` and never quote the text.
    pub fn parse(text: &str, path: &Path) -> Result<AuthFile, CredentialError> {
        let error = |detail: String| CredentialError::File {
            path: path.to_path_buf(),
            detail,
        };
        // serde_json's messages quote no values for these types, but the
        // position is all a user needs: never echo the file's content.
        let file: AuthFile = serde_json::from_str(text).map_err(|e| {
            error(format!(
                "malformed (line {}, column {}): {}",
                e.line(),
                e.column(),
                describe_json_error(&e)
            ))
        })?;
        if file.version != AUTH_FILE_VERSION {
            return Err(error(format!(
                "version {} is not supported (this kiln reads version {AUTH_FILE_VERSION}); upgrade kiln",
                file.version
            )));
        }
        for (host, entry) in &file.registries {
            match (entry.store, &entry.password) {
                (StoreKind::File, None) => {
                    return Err(error(format!("entry {host} has no password")));
                }
                (StoreKind::Keyring, Some(_)) => {
                    return Err(error(format!(
                        "entry {host} is in the keyring but also holds a password"
                    )));
                }
                _ => {}
            }
        }
        Ok(file)
    }
}

/// The category of a JSON error, without the text serde_json may quote.
fn describe_json_error(error: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match error.classify() {
        Category::Io => "read error",
        Category::Syntax => "not JSON",
        Category::Data => "unexpected keys or values",
        Category::Eof => "ends early",
    }
}

/// Refuses a file that group or others can read or write, or that
/// another user owns.
pub fn check_private(path: &Path, metadata: &std::fs::Metadata) -> Result<(), CredentialError> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let user = unsafe { libc::geteuid() };
    if metadata.uid() != user {
        return Err(CredentialError::File {
            path: path.to_path_buf(),
            detail: format!(
                "owned by user {}, not by you ({user}); kiln reads only your own credentials",
                metadata.uid()
            ),
        });
    }
    if metadata.permissions().mode() & 0o077 != 0 {
        return Err(CredentialError::NotPrivate {
            path: path.to_path_buf(),
            mode: metadata.permissions().mode() & 0o777,
        });
    }
    Ok(())
}

/// Reads `path` after checking its mode; `None` when it does not exist.
pub fn read_private(path: &Path) -> Result<Option<String>, CredentialError> {
    let io_error = |e: std::io::Error| CredentialError::File {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(e)),
    };
    // The mode of the opened file, not of whatever the path names later.
    check_private(path, &file.metadata().map_err(io_error)?)?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut &file, &mut text).map_err(io_error)?;
    Ok(Some(text))
}

/// kiln's store at `path` (`auth.json`).
#[derive(Debug, Clone)]
pub struct AuthStore {
    path: PathBuf,
}

impl AuthStore {
    /// The store whose file is `path`.
    pub fn new(path: PathBuf) -> AuthStore {
        AuthStore { path }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's entries (empty when it does not exist).
    pub fn load(&self) -> Result<AuthFile, CredentialError> {
        match read_private(&self.path)? {
            Some(text) => AuthFile::parse(&text, &self.path),
            None => Ok(AuthFile::default()),
        }
    }

    /// Changes the file under its lock, re-read after the lock is taken.
    pub fn edit<T>(
        &self,
        change: impl FnOnce(&mut AuthFile) -> Result<T, CredentialError>,
    ) -> Result<T, CredentialError> {
        let io_error = |e: std::io::Error| CredentialError::File {
            path: self.path.clone(),
            detail: e.to_string(),
        };
        let directory = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs_err::create_dir_all(directory).map_err(io_error)?;
        let _lock = LockFile::acquire(&directory.join(".auth.json.lock"), LockMode::Exclusive)
            .map_err(io_error)?;
        // A writer killed between its temp file and the rename left the
        // temp file (mode 0600) behind: nobody else writes them while we
        // hold the lock.
        kiln_store::fsutil::remove_stale_temps(&self.path);
        let mut file = self.load()?;
        let result = change(&mut file)?;
        let text = serde_json::to_string_pretty(&file)
            .map_err(|e| io_error(std::io::Error::other(e.to_string())))?;
        // Mode 0600 from the moment the file exists.
        kiln_store::fsutil::write_atomic_with(&self.path, 0o600, |file| {
            file.write_all(format!("{text}\n").as_bytes())
        })
        .map_err(io_error)?;
        Ok(result)
    }

    /// The password of `host`'s entry (from the file or the keyring).
    pub fn password(&self, host: &str, entry: &StoredEntry) -> Result<String, CredentialError> {
        match (entry.store, &entry.password) {
            (StoreKind::File, Some(password)) => Ok(password.clone()),
            (StoreKind::File, None) => Err(CredentialError::File {
                path: self.path.clone(),
                detail: format!("entry {host} has no password"),
            }),
            (StoreKind::Keyring, _) => keyring_get(host, &self.keyring_account(host)),
        }
    }

    /// The keyring account of `host` for this file: two config files
    /// (two `auth.json`) never share or overwrite each other's entries.
    pub fn keyring_account(&self, host: &str) -> String {
        format!("{host} ({})", self.path.display())
    }

    /// Stores `host`'s password in the keyring under this file's account.
    pub fn keyring_set(&self, host: &str, password: &str) -> Result<(), CredentialError> {
        keyring_set(host, &self.keyring_account(host), password)
    }

    /// Deletes `host`'s keyring entry of this file (none is fine).
    pub fn keyring_delete(&self, host: &str) -> Result<(), CredentialError> {
        keyring_delete(host, &self.keyring_account(host))
    }
}

/// A keyring error as one line (never a secret: `BadEncoding` holds the
/// bytes, `Ambiguous` the entries; neither is shown).
fn keyring_detail(error: &keyring::Error) -> String {
    match error {
        keyring::Error::BadEncoding(_) => "the stored password is not UTF-8".into(),
        keyring::Error::Ambiguous(items) => format!("{} keyring entries match", items.len()),
        keyring::Error::NoEntry => "no keyring entry".into(),
        keyring::Error::PlatformFailure(e) | keyring::Error::NoStorageAccess(e) => {
            e.to_string().lines().next().unwrap_or_default().to_string()
        }
        other => other.to_string(),
    }
}

fn keyring_entry(host: &str, account: &str) -> Result<keyring::Entry, CredentialError> {
    keyring::Entry::new(KEYRING_SERVICE, account).map_err(|e| CredentialError::Keyring {
        host: host.to_string(),
        detail: keyring_detail(&e),
    })
}

/// Whether a keyring answers: a session D-Bus and a Secret Service on it.
pub fn keyring_probe() -> Result<(), String> {
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none_or(|v| v.is_empty()) {
        return Err("DBUS_SESSION_BUS_ADDRESS is not set (no session D-Bus)".into());
    }
    let entry =
        keyring::Entry::new(KEYRING_SERVICE, "kiln-probe").map_err(|e| keyring_detail(&e))?;
    match entry.get_password() {
        Ok(_) | Err(keyring::Error::NoEntry) => Ok(()),
        Err(error) => Err(keyring_detail(&error)),
    }
}

/// Picks the store a login writes to, and why `auto` fell back to the file
/// when it did.
pub fn choose_store(choice: StoreChoice) -> Result<(StoreKind, Option<String>), CredentialError> {
    match choice {
        StoreChoice::File => Ok((StoreKind::File, None)),
        StoreChoice::Keyring => keyring_probe()
            .map(|()| (StoreKind::Keyring, None))
            .map_err(|detail| CredentialError::KeyringUnavailable { detail }),
        StoreChoice::Auto => Ok(match keyring_probe() {
            Ok(()) => (StoreKind::Keyring, None),
            Err(reason) => (StoreKind::File, Some(reason)),
        }),
    }
}

fn keyring_set(host: &str, account: &str, password: &str) -> Result<(), CredentialError> {
    keyring_entry(host, account)?
        .set_password(password)
        .map_err(|e| CredentialError::Keyring {
            host: host.to_string(),
            detail: keyring_detail(&e),
        })
}

fn keyring_get(host: &str, account: &str) -> Result<String, CredentialError> {
    keyring_entry(host, account)?
        .get_password()
        .map_err(|e| CredentialError::Keyring {
            host: host.to_string(),
            detail: keyring_detail(&e),
        })
}

fn keyring_delete(host: &str, account: &str) -> Result<(), CredentialError> {
    match keyring_entry(host, account)?.delete_credential() {
        Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
        Err(e) => Err(CredentialError::Keyring {
            host: host.to_string(),
            detail: keyring_detail(&e),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cr3t-pa55";

    #[test]
    fn parses_and_refuses_auth_files() {
        let path = Path::new("/x/auth.json");
        let good = format!(
            r#"{{"version":1,"registries":{{"r.io":{{"username":"u","store":"file","password":"{SECRET}"}},"k.io":{{"username":"v","store":"keyring"}}}}}}"#
        );
        let file = AuthFile::parse(&good, path).unwrap();
        assert_eq!(file.registries["r.io"].password.as_deref(), Some(SECRET));
        assert_eq!(file.registries["k.io"].store, StoreKind::Keyring);
        assert!(!format!("{file:?}").contains(SECRET), "Debug redacts");
        let cases = [
            (r#"{"version":2,"registries":{}}"#.to_string(), "version 2"),
            (
                format!(
                    r#"{{"version":1,"registries":{{"r.io":{{"username":"u","store":"file","pasword":"{SECRET}"}}}}}}"#
                ),
                "unexpected keys",
            ),
            (
                r#"{"version":1,"registries":{"r.io":{"username":"u","store":"file"}}}"#.into(),
                "no password",
            ),
            (
                format!(
                    r#"{{"version":1,"registries":{{"r.io":{{"username":"u","store":"keyring","password":"{SECRET}"}}}}}}"#
                ),
                "also holds a password",
            ),
            (
                format!(
                    r#"{{"version":1,"registries":{{"r.io":{{"username":"u","store":"vault","password":"{SECRET}"}}}}}}"#
                ),
                "unexpected keys",
            ),
            (format!("{{\"version\":1, {SECRET}"), "not JSON"),
        ];
        for (text, expected) in cases {
            let error = AuthFile::parse(&text, path).unwrap_err();
            let shown = format!("{error} {error:?}");
            assert!(shown.contains(expected), "{text}: {shown}");
            assert!(shown.contains("/x/auth.json"), "{shown}");
            assert!(
                !shown.contains(SECRET),
                "an error quoted the secret: {shown}"
            );
        }
    }

    #[test]
    fn round_trips_and_writes_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let store = AuthStore::new(dir.path().join("conf/auth.json"));
        assert!(store.load().unwrap().registries.is_empty());
        store
            .edit(|file| {
                file.registries.insert(
                    "r.io".into(),
                    StoredEntry {
                        username: "u".into(),
                        store: StoreKind::File,
                        password: Some(SECRET.into()),
                    },
                );
                Ok(())
            })
            .unwrap();
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = store.load().unwrap();
        assert_eq!(
            store.password("r.io", &loaded.registries["r.io"]).unwrap(),
            SECRET
        );
    }

    #[test]
    fn refuses_files_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        std::fs::write(&path, r#"{"version":1,"registries":{}}"#).unwrap();
        for mode in [0o640, 0o604, 0o660, 0o644, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let error = AuthStore::new(path.clone()).load().unwrap_err();
            assert!(
                matches!(error, CredentialError::NotPrivate { .. }),
                "{mode:o}"
            );
            let hint = error.hint().unwrap();
            assert_eq!(hint, format!("chmod 600 {}", path.display()));
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            AuthStore::new(path.clone()).load().unwrap();
        }
    }

    #[test]
    fn keyring_without_a_bus_is_unavailable() {
        if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none() {
            assert!(keyring_probe().is_err());
            assert!(matches!(
                choose_store(StoreChoice::Keyring),
                Err(CredentialError::KeyringUnavailable { .. })
            ));
            assert_eq!(choose_store(StoreChoice::Auto).unwrap().0, StoreKind::File);
        }
        assert_eq!(
            choose_store(StoreChoice::File).unwrap(),
            (StoreKind::File, None)
        );
    }
}
