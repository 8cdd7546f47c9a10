//! HTTP and HTTPS tracker transport (reqwest over rustls, no OpenSSL).
//!
//! Layer: driver. Owns one pooled HTTP client for every HTTP tracker of the
//! process: redirects limited to [`MAX_HTTP_REDIRECTS`], every request bounded
//! by a timeout, bodies read up to
//! [`crate::tracker::http::MAX_HTTP_REPLY_BYTES`]. URL building and reply
//! parsing are the pure `tracker::http`'s; this module only moves bytes.
//!
//! Runs on the tracker subsystem's ordinary tokio runtime, never on a shard.

use crate::metainfo::InfoHash;
use crate::tracker::http::{self, HttpReplyError, MAX_HTTP_REPLY_BYTES};
use crate::tracker::{AnnounceReply, AnnounceRequest, ScrapeStats};
use std::time::Duration;

/// Redirects followed before a request fails (a redirect loop ends here).
pub const MAX_HTTP_REDIRECTS: usize = 5;

/// Default bound on one HTTP request, connect to last body byte.
pub const HTTP_TIMEOUT_MS_DEFAULT: u64 = 30_000;

/// Bound on the TCP + TLS connect alone.
pub const HTTP_CONNECT_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// Idle connections kept per tracker host: none. Announces are minutes
/// apart, and trackers such as opentracker close the connection after each
/// reply, so a pooled connection would only race with that close (a request
/// sent on it fails with "connection closed before message completed").
const POOL_IDLE_PER_HOST: usize = 0;

/// `User-Agent` sent to trackers.
pub const USER_AGENT: &str = concat!("ringbit/", env!("CARGO_PKG_VERSION"));

/// Why an HTTP tracker request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpTrackerError {
    #[error("could not build the HTTP client: {0}")]
    Client(String),
    #[error("HTTP request timed out after {0} ms")]
    Timeout(u64),
    #[error("HTTP request failed: {0}")]
    Request(String),
    #[error("HTTP status {status}{}", body_hint.as_deref().map(|h| format!(": {h}")).unwrap_or_default())]
    Status { status: u16, body_hint: Option<String> },
    #[error("reply body is larger than {MAX_HTTP_REPLY_BYTES} bytes")]
    TooLarge,
    #[error("{0}")]
    Reply(#[from] HttpReplyError),
    #[error("tracker URL has no scrape convention (BEP 48)")]
    NoScrape,
}

/// The HTTP tracker client. Cheap to clone (shares TLS configuration and DNS).
#[derive(Clone, Debug)]
pub struct HttpTracker {
    client: reqwest::Client,
    timeout_ms: u64,
}

impl HttpTracker {
    /// A client whose requests each end within `timeout_ms`.
    pub fn new(timeout_ms: u64) -> Result<HttpTracker, HttpTrackerError> {
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::limited(MAX_HTTP_REDIRECTS))
            .timeout(Duration::from_millis(timeout_ms))
            .connect_timeout(Duration::from_millis(timeout_ms.min(HTTP_CONNECT_TIMEOUT_MS_DEFAULT)))
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
            .build()
            .map_err(|e| HttpTrackerError::Client(describe(&e)))?;
        Ok(HttpTracker { client, timeout_ms })
    }

    /// One announce to the tracker at `base_url`.
    pub async fn announce(
        &self,
        base_url: &str,
        request: &AnnounceRequest,
    ) -> Result<AnnounceReply, HttpTrackerError> {
        let body = self.get(&http::announce_url(base_url, request)).await?;
        Ok(http::parse_announce_reply(&body)?)
    }

    /// Scrapes one torrent through the scrape URL derived from `announce_url`.
    pub async fn scrape(
        &self,
        announce_url: &str,
        info_hash: &InfoHash,
    ) -> Result<ScrapeStats, HttpTrackerError> {
        let base = http::scrape_url(announce_url).ok_or(HttpTrackerError::NoScrape)?;
        let body = self.get(&http::scrape_request_url(&base, &[*info_hash])).await?;
        Ok(http::parse_scrape_reply(&body, info_hash)?)
    }

    /// GETs `url` and returns the body of a 2xx reply. A non-2xx reply that
    /// carries a bencoded `failure reason` reports that reason.
    async fn get(&self, url: &str) -> Result<Vec<u8>, HttpTrackerError> {
        let mut response = self.client.get(url).send().await.map_err(|e| self.error(e))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.error(e))? {
            if body.len() + chunk.len() > MAX_HTTP_REPLY_BYTES {
                return Err(HttpTrackerError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            if let Err(HttpReplyError::Failure(reason)) = http::parse_announce_reply(&body) {
                return Err(HttpReplyError::Failure(reason).into());
            }
            let hint = status.canonical_reason().map(str::to_string);
            return Err(HttpTrackerError::Status { status: status.as_u16(), body_hint: hint });
        }
        Ok(body)
    }

    fn error(&self, error: reqwest::Error) -> HttpTrackerError {
        if error.is_timeout() {
            HttpTrackerError::Timeout(self.timeout_ms)
        } else {
            HttpTrackerError::Request(describe(&error))
        }
    }
}

/// The error and its causes on one line, without the request URL (it holds
/// our peer id and is long).
fn describe(error: &reqwest::Error) -> String {
    let mut text = text_without_url(error);
    let mut source = std::error::Error::source(error);
    let mut depth = 0;
    while let Some(cause) = source {
        // Causes repeat their parent's text sometimes; keep the chain short.
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
        depth += 1;
        if depth >= 4 {
            break;
        }
    }
    text
}

/// `reqwest::Error`'s own text without the URL part.
fn text_without_url(error: &reqwest::Error) -> String {
    let text = error.to_string();
    match text.find(" for url (") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}
