//! Web seed transport (BEP 19): runs a [`PieceFetch`]'s HTTP range requests.
//!
//! Layer: driver. Uses the project's one HTTP stack (reqwest over rustls,
//! as `tracker_http`), on the shard's own runtime (tokio-uring runs on a
//! tokio current-thread runtime, so reqwest's sockets and timers work
//! there; nothing blocks: DNS goes to tokio's blocking pool). One client per
//! shard thread, built at the first web seed, keeps connections alive
//! between pieces. Redirects are *not* followed by reqwest: the core follows
//! them per file ([`PieceFetch::on_head`]), capped. Every read is bounded by
//! a timeout, and the body is handed to the core chunk by chunk, which
//! refuses the first byte past the range.
//!
//! Download rate limits apply: before each chunk of at most one block
//! ([`BLOCK_LEN`]) is accepted, `take_tokens` must grant its length (the
//! torrent's and the process's buckets); while it does not, the body is not
//! read, so TCP pushes back on the server.

use crate::webseed::{Head, PieceFetch, WebSeedError};
use crate::wire::BLOCK_LEN;
use reqwest::header::{CONTENT_RANGE, LOCATION, RANGE};
use std::cell::RefCell;
use std::time::Duration;

/// Bound on the connect (TCP + TLS) to a web seed.
pub const WEB_SEED_CONNECT_TIMEOUT_MS: u64 = 10_000;

/// Bound on each wait for the reply's head or the next body bytes.
pub const WEB_SEED_READ_TIMEOUT_MS: u64 = 30_000;

/// Idle connections kept per web seed host (per shard).
const POOL_IDLE_PER_HOST: usize = 4;

thread_local! {
    /// This shard's client (a shard is one thread).
    static CLIENT: RefCell<Option<reqwest::Client>> = const { RefCell::new(None) };
}

fn client() -> Result<reqwest::Client, WebSeedError> {
    CLIENT.with(|slot| {
        let mut slot = slot.borrow_mut();
        if let Some(client) = &*slot {
            return Ok(client.clone());
        }
        let client = reqwest::Client::builder()
            .user_agent(super::tracker_http::USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_millis(WEB_SEED_CONNECT_TIMEOUT_MS))
            .read_timeout(Duration::from_millis(WEB_SEED_READ_TIMEOUT_MS))
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
            .build()
            .map_err(|e| WebSeedError::Transport(e.to_string()))?;
        *slot = Some(client.clone());
        Ok(client)
    })
}

/// The answer to a request for download tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tokens {
    Granted,
    /// Ask again after this long.
    Wait(Duration),
    /// The torrent stopped: abandon the fetch.
    Stop,
}

fn transport(error: reqwest::Error) -> WebSeedError {
    let mut text = error.to_string();
    if let Some(at) = text.find(" for url (") {
        text.truncate(at);
    }
    if let Some(cause) = std::error::Error::source(&error) {
        text.push_str(": ");
        text.push_str(&cause.to_string());
    }
    WebSeedError::Transport(text)
}

/// Runs every request of `fetch` until the piece is complete or one fails.
/// `take_tokens(bytes)` grants download tokens, says how long to wait
/// before asking again, or stops the fetch.
pub async fn fetch_piece(
    fetch: &mut PieceFetch,
    mut take_tokens: impl FnMut(u64) -> Tokens,
) -> Result<(), WebSeedError> {
    let client = client()?;
    while let Some(current) = fetch.current() {
        let request = current.request;
        let mut response = client
            .get(current.url.clone())
            .header(RANGE, request.range_header())
            .send()
            .await
            .map_err(transport)?;
        let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok());
        let location = header(LOCATION).map(str::to_string);
        let content_range = header(CONTENT_RANGE).map(str::to_string);
        let head = fetch.on_head(
            response.status().as_u16(),
            location.as_deref(),
            content_range.as_deref(),
            response.content_length(),
        )?;
        if head == Head::Redirect {
            continue;
        }
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            for part in chunk.chunks(BLOCK_LEN as usize) {
                loop {
                    match take_tokens(part.len() as u64) {
                        Tokens::Granted => break,
                        Tokens::Wait(wait) => tokio::time::sleep(wait).await,
                        Tokens::Stop => {
                            return Err(WebSeedError::Transport("torrent stopped".into()))
                        }
                    }
                }
                fetch.on_body(part)?;
            }
        }
        fetch.end_body()?;
    }
    Ok(())
}
