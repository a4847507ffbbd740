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
