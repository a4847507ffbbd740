//! Registry credentials and the `WWW-Authenticate` challenge.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::error::{OciError, Result};

/// A secret for one registry. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// User name and password (or access token used as a password).
    Basic {
        /// User name.
        username: String,
        /// Password or token.
        password: String,
    },
    /// An OAuth2 refresh token (docker's `identitytoken`).
    IdentityToken(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

/// Where credentials come from. Asked only when a registry demands them.
pub trait CredentialProvider: Send + Sync {
    /// Credentials for `registry` (host[:port], `docker.io` for Docker Hub).
    fn credentials(&self, registry: &str) -> Result<Option<Credential>>;
}

/// No credentials: anonymous access only.
#[derive(Debug, Default)]
pub struct Anonymous;

impl CredentialProvider for Anonymous {
    fn credentials(&self, _registry: &str) -> Result<Option<Credential>> {
        Ok(None)
    }
}

/// Fixed credentials per registry (given to a call).
#[derive(Debug, Default, Clone)]
pub struct StaticCredentials(pub HashMap<String, Credential>);

impl CredentialProvider for StaticCredentials {
    fn credentials(&self, registry: &str) -> Result<Option<Credential>> {
        Ok(self.0.get(registry).cloned())
    }
}

/// Docker's `config.json` (`$DOCKER_CONFIG` or `~/.docker`), including
/// `credHelpers`, `credsStore` and identity tokens.
#[derive(Debug, Default)]
pub struct DockerConfig;

impl CredentialProvider for DockerConfig {
    fn credentials(&self, registry: &str) -> Result<Option<Credential>> {
        let keys: Vec<String> = if registry == "docker.io" {
            vec![
                "https://index.docker.io/v1/".into(),
                "index.docker.io".into(),
                "docker.io".into(),
                "registry-1.docker.io".into(),
            ]
        } else {
            vec![
                registry.to_string(),
                format!("https://{registry}"),
                format!("http://{registry}"),
            ]
        };
        use docker_credential::CredentialRetrievalError as E;
        for key in keys {
            match docker_credential::get_credential(&key) {
                Ok(docker_credential::DockerCredential::UsernamePassword(username, password)) => {
                    return Ok(Some(Credential::Basic { username, password }));
                }
                Ok(docker_credential::DockerCredential::IdentityToken(token)) => {
                    return Ok(Some(Credential::IdentityToken(token)));
                }
                Err(E::NoCredentialConfigured) => continue,
                Err(E::ConfigNotFound | E::ConfigReadError) => return Ok(None),
                // A helper that has nothing for this host (docker's helpers
                // say "credentials not found"): anonymous, as docker does.
                Err(E::HelperFailure { stdout, stderr, .. })
                    if format!("{stdout}{stderr}")
                        .to_ascii_lowercase()
                        .contains("credentials not found") =>
                {
                    continue;
                }
                // Only the helper's name: its output may hold anything.
                Err(E::HelperFailure { helper, .. }) => {
                    return Err(OciError::Credentials {
                        host: registry.to_string(),
                        detail: format!("docker credential helper {helper} failed"),
                    });
                }
                Err(error) => {
                    return Err(OciError::Credentials {
                        host: registry.to_string(),
                        detail: format!("docker config.json: {error}"),
                    });
                }
            }
        }
        Ok(None)
    }
}

/// Providers asked in order; the first that has credentials wins.
#[derive(Default, Clone)]
pub struct ChainedCredentials(pub Vec<Arc<dyn CredentialProvider>>);

impl CredentialProvider for ChainedCredentials {
    fn credentials(&self, registry: &str) -> Result<Option<Credential>> {
        for provider in &self.0 {
            if let Some(credential) = provider.credentials(registry)? {
                return Ok(Some(credential));
            }
        }
        Ok(None)
    }
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=...`
    Basic,
    /// `Bearer realm=...,service=...,scope=...`
    Bearer {
        /// Token endpoint.
        realm: String,
        /// Service name to ask a token for.
        service: Option<String>,
        /// Scope the registry asked for.
        scope: Option<String>,
    },
}

impl Challenge {
    /// The first challenge of a response's `WWW-Authenticate` headers that
    /// kiln speaks.
    pub fn of(headers: &reqwest::header::HeaderMap) -> Option<Challenge> {
        headers
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(Challenge::parse)
            .next()
    }

    /// Parses a header value; `None` for schemes kiln does not speak.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header
            .split_once(char::is_whitespace)
            .unwrap_or((header, ""));
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => Some(Challenge::Basic),
            "bearer" => {
                let parameters = parse_parameters(rest);
                Some(Challenge::Bearer {
                    realm: parameters.get("realm")?.clone(),
                    service: parameters.get("service").cloned(),
                    scope: parameters.get("scope").cloned(),
                })
            }
            _ => None,
        }
    }
}

/// `key="value", key=value` pairs; quoted values may hold commas.
fn parse_parameters(text: &str) -> HashMap<String, String> {
    let mut result = HashMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        result.insert(key, value);
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let header = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#;
        assert_eq!(
            Challenge::parse(header),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull,push".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            Challenge::parse("Bearer realm=http://x/token"),
            Some(Challenge::Bearer {
                realm: "http://x/token".into(),
                service: None,
                scope: None
            })
        );
        assert_eq!(Challenge::parse("Negotiate abc"), None);
        assert_eq!(
            Challenge::parse("Bearer service=x"),
            None,
            "a bearer challenge needs a realm"
        );
    }

    #[test]
    fn debug_never_shows_secrets() {
        let credential = Credential::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{credential:?}").contains("hunter2"));
        assert!(!format!("{:?}", Credential::IdentityToken("tok123".into())).contains("tok123"));
    }
}
