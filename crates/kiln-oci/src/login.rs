//! Checking credentials against a registry, as `docker login` does: `GET
//! /v2/`, then answer its challenge (Basic, or Bearer through the token
//! endpoint with `service` and `account` and no scope).

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};

use crate::auth::{Challenge, Credential};
use crate::client::{RegistryClient, basic, registry_message};
use crate::error::{OciError, Result};
use crate::http::{describe, read_limited, send_following};

/// What a login check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginCheck {
    /// The registry accepted the credentials.
    Accepted,
    /// The registry asks for no credentials at all (they were not checked).
    NoAuthRequired,
}

impl RegistryClient {
    /// Checks `username` and `password` against the registry at `host`
    /// (host[:port] of its API). A refusal is [`OciError::Denied`] with
    /// status 401 or 403; no error ever holds the password.
    pub async fn check_login(
        &self,
        host: &str,
        username: &str,
        password: &str,
    ) -> Result<LoginCheck> {
        let what = format!("the login of {username}");
        let response = self.get_base(host, None).await?;
        if response.status().is_success() {
            return Ok(LoginCheck::NoAuthRequired);
        }
        if response.status() != StatusCode::UNAUTHORIZED {
            return Err(unexpected(host, &what, response).await);
        }
        // Only the registry's own challenge gets the password: not one from
        // a host a redirect led to.
        let own_origin = Url::parse(&format!("{}://{host}/", self.scheme(host)))
            .is_ok_and(|base| base.origin() == response.url().origin());
        if !own_origin {
            return Err(OciError::Denied {
                host: host.to_string(),
                status: 401,
                what,
                message: Some("the challenge came from another host after a redirect".into()),
            });
        }
        let challenge = Challenge::of(response.headers());
        let authorization = match challenge {
            Some(Challenge::Basic) => basic(username, password),
            Some(Challenge::Bearer { realm, service, .. }) => {
                let token = self
                    .login_token(host, &realm, service.as_deref(), username, password)
                    .await?;
                crate::client::bearer(host, &realm, &token)?
            }
            None => {
                return Err(OciError::Denied {
                    host: host.to_string(),
                    status: 401,
                    what,
                    message: Some("no usable WWW-Authenticate challenge".into()),
                });
            }
        };
        let response = self.get_base(host, Some(&authorization)).await?;
        match response.status() {
            status if status.is_success() => Ok(LoginCheck::Accepted),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(OciError::Denied {
                host: host.to_string(),
                status: response.status().as_u16(),
                what,
                message: Some("credentials refused".into()),
            }),
            _ => Err(unexpected(host, &what, response).await),
        }
    }

    /// `GET /v2/` on `host`, falling back to plain HTTP for an insecure
    /// registry that does not speak TLS.
    async fn get_base(
        &self,
        host: &str,
        authorization: Option<&HeaderValue>,
    ) -> Result<reqwest::Response> {
        let insecure = self.is_insecure(host);
        let client = self.http(insecure)?;
        let mut scheme = self.scheme(host);
        loop {
            let url = Url::parse(&format!("{scheme}://{host}/v2/"))
                .map_err(|e| OciError::Client(format!("bad URL for {host}: {e}")))?;
            match send_following(client, &Method::GET, url, &HeaderMap::new(), authorization).await
            {
                Ok(response) => {
                    self.remember_scheme(host, scheme);
                    return Ok(response);
                }
                Err(_) if insecure && scheme == "https" => scheme = "http",
                Err(error) => {
                    return Err(OciError::Unreachable {
                        host: host.to_string(),
                        detail: describe(&error),
                    });
                }
            }
        }
    }

    /// A token for no scope, as `docker login` asks, to prove the
    /// credentials: the registry client's own token request, with a
    /// refusal named as the login's.
    async fn login_token(
        &self,
        host: &str,
        realm: &str,
        service: Option<&str>,
        username: &str,
        password: &str,
    ) -> Result<String> {
        let credential = Credential::Basic {
            username: username.to_string(),
            password: password.to_string(),
        };
        self.fetch_token(host, realm, service, "", Some(&credential))
            .await
            .map_err(|error| match error {
                // fetch_token already says the credentials were refused.
                OciError::Denied {
                    host,
                    status,
                    message,
                    ..
                } => OciError::Denied {
                    host,
                    status,
                    what: format!("the login of {username}"),
                    message,
                },
                other => other,
            })
    }
}

async fn unexpected(host: &str, what: &str, response: reqwest::Response) -> OciError {
    let status = response.status().as_u16();
    let message = read_limited(response, 16 << 10)
        .await
        .ok()
        .and_then(|body| registry_message(&body));
    OciError::Status {
        host: host.to_string(),
        status,
        what: what.to_string(),
        message,
    }
}
