//! HTTP pieces shared by every kiln client (registries here, release
//! servers, catalogs and image servers in `kiln-sources`): redirects that
//! never carry credentials to another origin, one-line transport errors, and
//! bounded body reads.

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, LOCATION};
use reqwest::{Method, StatusCode, Url};

/// Most redirects followed for one request.
pub const MAX_REDIRECTS: usize = 10;

/// Sends one request, following redirects by hand so that `authorization`
/// goes only to the origin of `url`: a redirect to another host, port or
/// scheme is followed without it.
pub async fn send_following(
    client: &reqwest::Client,
    method: &Method,
    url: Url,
    headers: &HeaderMap,
    authorization: Option<&HeaderValue>,
) -> std::result::Result<reqwest::Response, reqwest::Error> {
    let origin = url.origin();
    let mut url = url;
    let mut method = method.clone();
    for _ in 0..MAX_REDIRECTS {
        let mut request = client
            .request(method.clone(), url.clone())
            .headers(headers.clone());
        if let Some(value) = authorization
            && url.origin() == origin
        {
            request = request.header(AUTHORIZATION, value.clone());
        }
        let response = request.send().await?;
        if !response.status().is_redirection() {
            return Ok(response);
        }
        let Some(next) = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| url.join(l).ok())
        else {
            return Ok(response);
        };
        if response.status() == StatusCode::SEE_OTHER {
            method = Method::GET;
        }
        url = next;
    }
    client
        .request(method, url)
        .headers(headers.clone())
        .send()
        .await
}

/// A one-line description of a transport error, with its cause chain.
pub fn describe(error: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

pub async fn read_limited(
    mut response: reqwest::Response,
    limit: u64,
) -> std::result::Result<Bytes, String> {
    if response
        .content_length()
        .is_some_and(|length| length > limit)
    {
        return Err(format!("larger than {limit} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
        body.extend_from_slice(&chunk);
        if body.len() as u64 > limit {
            return Err(format!("larger than {limit} bytes"));
        }
    }
    Ok(Bytes::from(body))
}

/// What reading the next piece of a resumable download gave.
pub enum BodyRead {
    /// More bytes (already past what a restarted response repeats).
    Data(Bytes),
    /// The body ended where it should.
    End,
    /// The connection failed or the body ended early: open again with a
    /// `Range` from [`ResumableBody::position`] after a backoff.
    Failed(String),
}

/// The part of a resumable download that every kiln client shares: the
/// open response, the position reached, the bytes a response that ignored
/// `Range` repeats, and consecutive failures. The owner opens responses
/// (with its own auth and errors) and hands them to [`ResumableBody::opened`].
#[derive(Default)]
pub struct ResumableBody {
    response: Option<reqwest::Response>,
    position: u64,
    skip: u64,
    failures: u32,
}

impl ResumableBody {
    /// A download that already has `position` bytes.
    pub fn starting_at(position: u64) -> ResumableBody {
        ResumableBody {
            position,
            ..ResumableBody::default()
        }
    }

    /// Bytes delivered so far (the starting position included).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Whether a response is open.
    pub fn is_open(&self) -> bool {
        self.response.is_some()
    }

    /// Takes a new response: `206` continues at the position; anything else
    /// (a `200` that ignored the range) starts over and repeats the bytes
    /// already delivered, which are dropped.
    pub fn opened(&mut self, response: reqwest::Response) {
        self.skip = if response.status() == StatusCode::PARTIAL_CONTENT {
            0
        } else {
            self.position
        };
        self.response = Some(response);
    }

    /// Reads on. `expected`: the size the body must reach (a clean end
    /// before it is a failure); `None` when any clean end is the end.
    pub async fn read(&mut self, expected: Option<u64>) -> BodyRead {
        loop {
            let Some(response) = self.response.as_mut() else {
                return BodyRead::End;
            };
            match response.chunk().await {
                Ok(Some(mut bytes)) => {
                    if self.skip > 0 {
                        let drop = self.skip.min(bytes.len() as u64) as usize;
                        let _ = bytes.split_to(drop);
                        self.skip -= drop as u64;
                    }
                    if bytes.is_empty() {
                        continue;
                    }
                    self.position += bytes.len() as u64;
                    self.failures = 0;
                    return BodyRead::Data(bytes);
                }
                Ok(None) => {
                    self.response = None;
                    return match expected {
                        Some(size) if self.position < size => BodyRead::Failed(format!(
                            "body ended early at byte {} of {size}",
                            self.position
                        )),
                        _ => BodyRead::End,
                    };
                }
                Err(error) => {
                    self.response = None;
                    // Without the URL: it may carry a signature.
                    return BodyRead::Failed(describe(&error.without_url()));
                }
            }
        }
    }

    /// Counts a failure and waits out the backoff before the next attempt;
    /// `Err(attempts)` when the policy allows no more.
    pub async fn back_off(
        &mut self,
        policy: &crate::RetryPolicy,
        observer: &dyn crate::RetryObserver,
        what: &str,
        failure: &str,
    ) -> std::result::Result<(), u32> {
        self.failures += 1;
        if self.failures >= policy.max_attempts {
            return Err(self.failures);
        }
        let delay = policy.backoff(self.failures);
        observer.retrying(what, self.failures + 1, delay, failure);
        tokio::time::sleep(delay).await;
        Ok(())
    }
}
