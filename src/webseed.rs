//! Web seeds (BEP 19, `url-list`): whole pieces fetched with HTTP range
//! requests.
//!
//! Layer: pure core (sans-IO). This module turns a piece into the HTTP range
//! requests that fetch it ([`PieceFetch`]), checks each response head and
//! body against what was asked for, assembles the piece, and keeps each web
//! seed's record ([`WebSeed`]: redirects learned, failures, back-off,
//! disabled). The driver (`net::webseed_http`) only moves bytes: it sends
//! the request [`PieceFetch::current`] names, feeds the reply's head to
//! [`PieceFetch::on_head`] and its body to [`PieceFetch::on_body`]. The
//! torrent core (`torrent::webseed`) decides when a web seed fetches and
//! hands the assembled piece to the same hash/write path as peer pieces.
//!
//! URLs (BEP 19): for a multi-file torrent the file `name/dir/file` of web
//! seed `http://host/path/` is `http://host/path/name/dir/file` (a `/` is
//! added when the URL lacks one), each element percent-encoded; for a
//! single-file torrent a URL ending in `/` gets the name appended, any other
//! URL is the file itself.
//!
//! Invariants:
//! * pad files (BEP 47) are never requested: their bytes are zeros in the
//!   piece buffer from the start;
//! * a reply is accepted only when it carries exactly the requested range:
//!   `206` with a matching `Content-Range`, or `200` for a request of a whole
//!   file; a body longer than the range fails at the first byte too many, a
//!   shorter one at its end, so a hostile server costs at most the range's
//!   bytes and never panics;
//! * redirects are followed per request, at most [`MAX_WEB_SEED_REDIRECTS`]
//!   in a row, only to `http`/`https`; the target is remembered per file
//!   (at most [`MAX_REDIRECTED_FILES`] per web seed) so later pieces of that
//!   file go there at once;
//! * a web seed whose data failed the hash [`MAX_WEB_SEED_BAD_PIECES`]
//!   times, or whose requests failed [`MAX_WEB_SEED_HTTP_ERRORS`] times in a
//!   row, is disabled for the rest of the run, with the reason kept.

use crate::layout::Layout;
use crate::metainfo::Info;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use url::Url;

/// Web seeds used per torrent at most (the first ones of `url-list`).
pub const MAX_WEB_SEEDS_PER_TORRENT: usize = 8;

/// Longest web seed URL accepted, in bytes (also bounds redirect targets).
pub const MAX_WEB_SEED_URL_LEN: usize = 2048;

/// Redirects followed for one request before it fails.
pub const MAX_WEB_SEED_REDIRECTS: u32 = 5;

/// Redirect targets remembered per web seed (one per file at most).
pub const MAX_REDIRECTED_FILES: usize = 1024;

/// A web seed whose data failed the hash this many times is disabled.
pub const MAX_WEB_SEED_BAD_PIECES: u32 = 3;

/// A web seed whose requests failed this many times in a row (HTTP errors,
/// refused connections, wrong replies) is disabled.
pub const MAX_WEB_SEED_HTTP_ERRORS: u32 = 8;

/// Pieces one web seed fetches at once at most (one connection each): a
/// second piece in flight hides the round trip between two pieces.
pub const WEB_SEED_PIECES_IN_FLIGHT: usize = 2;

/// Wait after a failed request before the web seed is asked again; doubles
/// with each failure in a row up to [`WEB_SEED_RETRY_MAX`].
pub const WEB_SEED_RETRY_MIN: Duration = Duration::from_secs(2);

/// Longest wait between retries of a failing web seed.
pub const WEB_SEED_RETRY_MAX: Duration = Duration::from_secs(300);

/// Below this many peers unchoking us, web seeds fetch any piece (rarest
/// first); at or above it, only pieces no connected peer has.
pub const WEB_SEED_PEER_THRESHOLD_DEFAULT: usize = 4;

/// Why a web seed URL or one of its replies was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WebSeedError {
    #[error("web seed URL is longer than {MAX_WEB_SEED_URL_LEN} bytes")]
    UrlTooLong,
    #[error("web seed URL is not valid: {0}")]
    BadUrl(String),
    #[error("web seed URL scheme {0:?} is not http or https")]
    Scheme(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("redirect without a usable Location: {0}")]
    BadRedirect(String),
    #[error("more than {MAX_WEB_SEED_REDIRECTS} redirects")]
    TooManyRedirects,
    #[error("server ignored the Range header (200 for a part of the file)")]
    RangeIgnored,
    #[error("Content-Range {got:?} does not match the requested bytes {first}-{last}")]
    ContentRange { got: String, first: u64, last: u64 },
    #[error("Content-Length {got} for a range of {expected} bytes")]
    ContentLength { got: u64, expected: u32 },
    #[error("body longer than the {expected} bytes requested")]
    TooMuchData { expected: u32 },
    #[error("body of {got} bytes for a range of {expected}")]
    ShortBody { got: u32, expected: u32 },
    #[error("HTTP request failed: {0}")]
    Transport(String),
}

/// Parses and checks a web seed URL: `http` or `https`, at most
/// [`MAX_WEB_SEED_URL_LEN`] bytes, and able to hold a path.
pub fn parse_web_seed_url(text: &str) -> Result<Url, WebSeedError> {
    if text.len() > MAX_WEB_SEED_URL_LEN {
        return Err(WebSeedError::UrlTooLong);
    }
    let url = Url::parse(text.trim()).map_err(|e| WebSeedError::BadUrl(e.to_string()))?;
    check_url(url)
}

fn check_url(url: Url) -> Result<Url, WebSeedError> {
    if url.as_str().len() > MAX_WEB_SEED_URL_LEN {
        return Err(WebSeedError::UrlTooLong);
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(WebSeedError::Scheme(url.scheme().to_string()));
    }
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(WebSeedError::BadUrl("no host or path".into()));
    }
    Ok(url)
}

/// The URL of file `file_index` of `info` on the web seed at `base` (see
/// the module docs for BEP 19's mapping). `url` percent-encodes each path
/// element (spaces, `%`, `?`, `#` and non-ASCII included).
pub fn file_url(base: &Url, info: &Info, file_index: usize) -> Result<Url, WebSeedError> {
    let file = info
        .files
        .get(file_index)
        .ok_or_else(|| WebSeedError::BadUrl(format!("file {file_index} is not in the torrent")))?;
    let mut url = base.clone();
    let ends_with_slash = base.path().ends_with('/');
    if info.multi_file || ends_with_slash {
        let mut segments =
            url.path_segments_mut().map_err(|()| WebSeedError::BadUrl("no path".into()))?;
        // `http://h/a/` has a last empty segment; `http://h/a` does not: in
        // both cases the elements go after `a`.
        segments.pop_if_empty();
        if info.multi_file {
            // `path` starts with the torrent's name.
            segments.extend(file.path.iter());
        } else {
            segments.push(&info.name);
        }
    }
    check_url(url)
}

/// One HTTP range request of a piece: bytes of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeRequest {
    pub file_index: usize,
    /// Offset of the first byte in the file.
    pub file_offset: u64,
    /// Length of the whole file (a `200` reply is accepted only for a
    /// request of all of it).
    pub file_length: u64,
    /// Where the bytes go in the piece.
    pub piece_offset: u32,
    /// Bytes requested (never 0).
    pub len: u32,
}

impl RangeRequest {
    /// The last byte's offset in the file (HTTP ranges are inclusive).
    pub fn last(&self) -> u64 {
        self.file_offset + u64::from(self.len) - 1
    }

    /// The `Range` header value.
    pub fn range_header(&self) -> String {
        format!("bytes={}-{}", self.file_offset, self.last())
    }
}

/// The range requests that fetch `piece`: one per file the piece touches,
/// pad files left out.
pub fn plan_piece(layout: &Layout, piece: u32) -> Vec<RangeRequest> {
    layout
        .piece_spans(piece)
        .filter(|span| !span.pad)
        .map(|span| RangeRequest {
            file_index: span.file_index,
            file_offset: span.file_offset,
            file_length: layout.file_length(span.file_index),
            piece_offset: span.piece_offset,
            len: span.len,
        })
        .collect()
}

/// What the driver does after a reply's head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// Read the body into [`PieceFetch::on_body`], then call
    /// [`PieceFetch::end_body`].
    Body,
    /// A redirect was accepted: send [`PieceFetch::current`] again (its URL
    /// changed); discard this body.
    Redirect,
}

/// The HTTP request the driver sends next.
#[derive(Clone, Copy, Debug)]
pub struct HttpRange<'a> {
    pub url: &'a Url,
    pub request: RangeRequest,
}

/// One piece being fetched from one web seed: its range requests in order,
/// the one in progress, and the piece buffer they fill.
#[derive(PartialEq, Eq)]
pub struct PieceFetch {
    piece: u32,
    data: Vec<u8>,
    requests: Vec<RangeRequest>,
    /// URL of each request's file (redirect targets already applied).
    urls: Vec<Url>,
    /// Index of the request in progress.
    next: usize,
    /// Redirects followed by the request in progress.
    redirects: u32,
    /// Body bytes of the request in progress so far.
    received: u32,
    /// Redirect targets learned: (file, url).
    learned: Vec<(usize, Url)>,
}

impl std::fmt::Debug for PieceFetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PieceFetch")
            .field("piece", &self.piece)
            .field("len", &self.data.len())
            .field("requests", &self.requests.len())
            .field("next", &self.next)
            .finish()
    }
}

impl PieceFetch {
    /// The fetch of `piece` from `seed` into `buffer` (resized to the piece's
    /// size and zeroed, so pad bytes are zeros).
    pub fn new(
        seed: &WebSeed,
        info: &Info,
        layout: &Layout,
        piece: u32,
        mut buffer: Vec<u8>,
    ) -> Result<PieceFetch, WebSeedError> {
        let requests = plan_piece(layout, piece);
        let urls = requests
            .iter()
            .map(|r| match seed.redirects.get(&r.file_index) {
                Some(url) => Ok(url.clone()),
                None => file_url(&seed.base, info, r.file_index),
            })
            .collect::<Result<Vec<Url>, WebSeedError>>()?;
        buffer.clear();
        buffer.resize(layout.piece_size(piece) as usize, 0);
        Ok(PieceFetch {
            piece,
            data: buffer,
            requests,
            urls,
            next: 0,
            redirects: 0,
            received: 0,
            learned: Vec::new(),
        })
    }

    pub fn piece(&self) -> u32 {
        self.piece
    }

    /// The request to send now, or `None` when the piece is complete.
    pub fn current(&self) -> Option<HttpRange<'_>> {
        Some(HttpRange { url: self.urls.get(self.next)?, request: *self.requests.get(self.next)? })
    }

    /// The head of the reply to [`PieceFetch::current`]: its status and the
    /// `Location`, `Content-Range` and `Content-Length` headers.
    pub fn on_head(
        &mut self,
        status: u16,
        location: Option<&str>,
        content_range: Option<&str>,
        content_length: Option<u64>,
    ) -> Result<Head, WebSeedError> {
        let Some(request) = self.requests.get(self.next).copied() else {
            return Err(WebSeedError::Transport("no request in progress".into()));
        };
        self.received = 0;
        match status {
            301 | 302 | 303 | 307 | 308 => {
                self.redirects += 1;
                if self.redirects > MAX_WEB_SEED_REDIRECTS {
                    return Err(WebSeedError::TooManyRedirects);
                }
                let location =
                    location.ok_or_else(|| WebSeedError::BadRedirect("no Location".into()))?;
                if location.len() > MAX_WEB_SEED_URL_LEN {
                    return Err(WebSeedError::UrlTooLong);
                }
                let target = self.urls[self.next]
                    .join(location)
                    .map_err(|e| WebSeedError::BadRedirect(e.to_string()))?;
                let target = check_url(target)?;
                self.urls[self.next] = target.clone();
                self.learned.retain(|(f, _)| *f != request.file_index);
                self.learned.push((request.file_index, target));
                Ok(Head::Redirect)
            }
            206 => {
                let got = content_range.unwrap_or("");
                let mismatch = || WebSeedError::ContentRange {
                    got: got.chars().take(64).collect(),
                    first: request.file_offset,
                    last: request.last(),
                };
                match parse_content_range(got) {
                    Some((first, last, total))
                        if first == request.file_offset
                            && last == request.last()
                            && total.is_none_or(|t| t == request.file_length) => {}
                    _ => return Err(mismatch()),
                }
                self.check_length(content_length, request)?;
                Ok(Head::Body)
            }
            200 => {
                // The whole file: right only when that is what was asked.
                if request.file_offset != 0 || u64::from(request.len) != request.file_length {
                    return Err(WebSeedError::RangeIgnored);
                }
                self.check_length(content_length, request)?;
                Ok(Head::Body)
            }
            other => Err(WebSeedError::Status(other)),
        }
    }

    fn check_length(&self, length: Option<u64>, request: RangeRequest) -> Result<(), WebSeedError> {
        match length {
            Some(got) if got != u64::from(request.len) => {
                Err(WebSeedError::ContentLength { got, expected: request.len })
            }
            _ => Ok(()),
        }
    }

    /// Body bytes of the reply in progress, in order.
    pub fn on_body(&mut self, chunk: &[u8]) -> Result<(), WebSeedError> {
        let request = self.requests[self.next.min(self.requests.len().saturating_sub(1))];
        let room = request.len - self.received;
        if chunk.len() as u64 > u64::from(room) || self.next >= self.requests.len() {
            return Err(WebSeedError::TooMuchData { expected: request.len });
        }
        let at = request.piece_offset as usize + self.received as usize;
        self.data[at..at + chunk.len()].copy_from_slice(chunk);
        self.received += chunk.len() as u32;
        Ok(())
    }

    /// The body ended: the request must be complete. Moves on to the next
    /// request; returns whether the piece is complete.
    pub fn end_body(&mut self) -> Result<bool, WebSeedError> {
        let Some(request) = self.requests.get(self.next) else { return Ok(true) };
        if self.received != request.len {
            return Err(WebSeedError::ShortBody { got: self.received, expected: request.len });
        }
        self.next += 1;
        self.redirects = 0;
        self.received = 0;
        Ok(self.next == self.requests.len())
    }

    /// Whether every request is done.
    pub fn is_complete(&self) -> bool {
        self.next == self.requests.len()
    }

    /// The piece's data and the redirect targets learned on the way.
    pub fn finish(self) -> (u32, Vec<u8>, Vec<(usize, Url)>) {
        (self.piece, self.data, self.learned)
    }

    /// The buffer back, whatever state it is in (a failed fetch).
    pub fn into_buffer(self) -> Vec<u8> {
        self.data
    }
}

/// `bytes FIRST-LAST/TOTAL` (TOTAL may be `*`): `(first, last, total)`.
fn parse_content_range(text: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = text.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.trim().split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (first <= last).then_some((first, last, total))
}

/// What a web seed is doing, for status and the API.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WebSeedStatus {
    pub url: String,
    /// `active`, `backing off` or `disabled`.
    pub state: &'static str,
    pub downloaded_bytes: u64,
    pub bad_pieces: u32,
    pub pieces_in_flight: usize,
    /// Why it is disabled, or the last error.
    pub error: Option<String>,
}

/// One web seed of a torrent and its record.
#[derive(Debug)]
pub struct WebSeed {
    /// As written in the torrent.
    pub url_text: String,
    base: Url,
    /// Redirect targets learned per file.
    redirects: HashMap<usize, Url>,
    /// Pieces being fetched (at most [`WEB_SEED_PIECES_IN_FLIGHT`]).
    pub in_flight: Vec<u32>,
    pub bad_pieces: u32,
    /// Failed requests in a row.
    http_errors: u32,
    retry_at: Option<Instant>,
    pub disabled: Option<String>,
    last_error: Option<String>,
    pub downloaded_bytes: u64,
}

impl WebSeed {
    pub fn new(url_text: &str) -> Result<WebSeed, WebSeedError> {
        let base = parse_web_seed_url(url_text)?;
        Ok(WebSeed {
            url_text: url_text.to_string(),
            base,
            redirects: HashMap::new(),
            in_flight: Vec::new(),
            bad_pieces: 0,
            http_errors: 0,
            retry_at: None,
            disabled: None,
            last_error: None,
            downloaded_bytes: 0,
        })
    }

    /// Whether it may start fetching another piece now.
    pub fn may_fetch(&self, now: Instant) -> bool {
        self.disabled.is_none()
            && self.in_flight.len() < WEB_SEED_PIECES_IN_FLIGHT
            && self.retry_at.is_none_or(|at| now >= at)
            // After a failure, one request at a time until one succeeds.
            && (self.http_errors == 0 || self.in_flight.is_empty())
    }

    /// A fetch delivered its piece (not yet hashed): the failure streak
    /// ends, redirects learned are kept (bounded).
    pub fn fetch_done(&mut self, piece: u32, bytes: u64, learned: Vec<(usize, Url)>) {
        self.in_flight.retain(|&p| p != piece);
        self.http_errors = 0;
        self.retry_at = None;
        self.downloaded_bytes += bytes;
        for (file, url) in learned {
            if self.redirects.len() < MAX_REDIRECTED_FILES || self.redirects.contains_key(&file) {
                self.redirects.insert(file, url);
            }
        }
    }

    /// A fetch failed: back off, and disable after
    /// [`MAX_WEB_SEED_HTTP_ERRORS`] in a row. Returns the reason when this
    /// failure disabled it.
    pub fn fetch_failed(
        &mut self,
        piece: u32,
        error: &WebSeedError,
        now: Instant,
    ) -> Option<String> {
        self.in_flight.retain(|&p| p != piece);
        self.http_errors += 1;
        self.last_error = Some(error.to_string());
        let shift = (self.http_errors - 1).min(16);
        let wait = WEB_SEED_RETRY_MIN.saturating_mul(1 << shift).min(WEB_SEED_RETRY_MAX);
        self.retry_at = Some(now + wait);
        if self.http_errors >= MAX_WEB_SEED_HTTP_ERRORS && self.disabled.is_none() {
            let reason =
                format!("{} requests failed in a row, the last: {error}", self.http_errors);
            self.disabled = Some(reason.clone());
            return Some(reason);
        }
        None
    }

    /// A piece with its data failed the hash. Returns the reason when this
    /// failure disabled it.
    pub fn bad_piece(&mut self, piece: u32) -> Option<String> {
        self.bad_pieces += 1;
        self.last_error = Some(format!("piece {piece} failed its hash"));
        if self.bad_pieces >= MAX_WEB_SEED_BAD_PIECES && self.disabled.is_none() {
            let reason = format!("{} pieces of its data failed their hash", self.bad_pieces);
            self.disabled = Some(reason.clone());
            return Some(reason);
        }
        None
    }

    pub fn status(&self, now: Instant) -> WebSeedStatus {
        let state = if self.disabled.is_some() {
            "disabled"
        } else if self.retry_at.is_some_and(|at| now < at) {
            "backing off"
        } else {
            "active"
        };
        WebSeedStatus {
            url: self.url_text.clone(),
            state,
            downloaded_bytes: self.downloaded_bytes,
            bad_pieces: self.bad_pieces,
            pieces_in_flight: self.in_flight.len(),
            error: self.disabled.clone().or_else(|| self.last_error.clone()),
        }
    }
}

/// Which pieces a web seed may take now: the highest availability for the
/// picker ([`crate::picker::Picker::pick_whole_piece`]).
/// Few peers unchoking us (`unchoked_peers < threshold`, the only source
/// included): any piece, rarest first. Otherwise only pieces no connected
/// peer has (rare pieces), so web seeds and peers do not race.
pub fn availability_limit(unchoked_peers: usize, threshold: usize) -> u32 {
    if unchoked_peers < threshold {
        u32::MAX
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::FileEntry;

    fn info(multi: bool, files: &[(&[&str], u64, bool)], piece_length: u32) -> Info {
        let mut offset = 0;
        let entries: Vec<FileEntry> = files
            .iter()
            .map(|(path, length, pad)| {
                let e = FileEntry {
                    path: path.iter().map(|s| s.to_string()).collect(),
                    length: *length,
                    offset,
                    pad: *pad,
                };
                offset += length;
                e
            })
            .collect();
        let pieces = offset.div_ceil(u64::from(piece_length)) as usize;
        Info {
            name: files[0].0[0].to_string(),
            piece_length,
            pieces: vec![[0; 20]; pieces],
            files: entries,
            total_length: offset,
            private: false,
            multi_file: multi,
            source: None,
        }
    }

    fn seed(url: &str) -> WebSeed {
        WebSeed::new(url).expect("url")
    }

    #[test]
    fn urls_follow_bep_19() {
        let single = info(false, &[(&["a b.iso"], 100, false)], 64);
        let base = parse_web_seed_url("http://h:8/dir/").unwrap();
        assert_eq!(file_url(&base, &single, 0).unwrap().as_str(), "http://h:8/dir/a%20b.iso");
        let base = parse_web_seed_url("http://h:8/dir/file.iso?x=1").unwrap();
        assert_eq!(file_url(&base, &single, 0).unwrap().as_str(), "http://h:8/dir/file.iso?x=1");

        let multi = info(true, &[(&["T", "d", "x#?%.bin"], 10, false), (&["T", "é"], 5, false)], 8);
        for text in ["http://h/seed", "http://h/seed/"] {
            let base = parse_web_seed_url(text).unwrap();
            assert_eq!(
                file_url(&base, &multi, 0).unwrap().as_str(),
                "http://h/seed/T/d/x%23%3F%25.bin"
            );
            assert_eq!(file_url(&base, &multi, 1).unwrap().as_str(), "http://h/seed/T/%C3%A9");
        }
        let root = parse_web_seed_url("https://h").unwrap();
        assert_eq!(file_url(&root, &multi, 1).unwrap().as_str(), "https://h/T/%C3%A9");
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(matches!(parse_web_seed_url("ftp://h/x"), Err(WebSeedError::Scheme(_))));
        assert!(matches!(parse_web_seed_url("not a url"), Err(WebSeedError::BadUrl(_))));
        assert!(matches!(parse_web_seed_url("mailto:a@b"), Err(WebSeedError::Scheme(_))));
        let long = format!("http://h/{}", "a".repeat(MAX_WEB_SEED_URL_LEN));
        assert_eq!(parse_web_seed_url(&long), Err(WebSeedError::UrlTooLong));
    }

    #[test]
    fn pad_files_are_never_requested_and_read_as_zeros() {
        // a (10) | pad (6) | b (20), pieces of 16: piece 0 = a + pad.
        let i = info(
            true,
            &[(&["T", "a"], 10, false), (&["T", ".pad", "6"], 6, true), (&["T", "b"], 20, false)],
            16,
        );
        let layout = Layout::new(&i).unwrap();
        let plan = plan_piece(&layout, 0);
        assert_eq!(plan.len(), 1);
        assert_eq!((plan[0].file_index, plan[0].len, plan[0].file_length), (0, 10, 10));
        let s = seed("http://h/");
        let mut f = PieceFetch::new(&s, &i, &layout, 0, vec![7; 3]).unwrap();
        assert_eq!(f.current().unwrap().url.as_str(), "http://h/T/a");
        assert_eq!(f.on_head(200, None, None, Some(10)), Ok(Head::Body));
        f.on_body(&[1; 10]).unwrap();
        assert_eq!(f.end_body(), Ok(true));
        let (piece, data, _) = f.finish();
        assert_eq!(piece, 0);
        assert_eq!(data, [[1u8; 10].as_slice(), &[0; 6]].concat());
        // Piece 1 spans b only.
        let plan = plan_piece(&layout, 1);
        assert_eq!(
            plan,
            vec![RangeRequest {
                file_index: 2,
                file_offset: 0,
                file_length: 20,
                piece_offset: 0,
                len: 16
            }]
        );
    }

    /// A piece across two files: two ranges, assembled in place.
    #[test]
    fn a_piece_over_two_files_is_two_ranges() {
        let i = info(true, &[(&["T", "a"], 10, false), (&["T", "b"], 20, false)], 16);
        let layout = Layout::new(&i).unwrap();
        let mut f = PieceFetch::new(&seed("http://h/s"), &i, &layout, 0, Vec::new()).unwrap();
        let r = f.current().unwrap();
        assert_eq!(
            (r.url.as_str(), r.request.range_header()),
            ("http://h/s/T/a", "bytes=0-9".into())
        );
        assert_eq!(f.on_head(206, None, Some("bytes 0-9/10"), Some(10)), Ok(Head::Body));
        f.on_body(&[1; 4]).unwrap();
        f.on_body(&[2; 6]).unwrap();
        assert_eq!(f.end_body(), Ok(false));
        let r = f.current().unwrap();
        assert_eq!(
            (r.url.as_str(), r.request.range_header()),
            ("http://h/s/T/b", "bytes=0-5".into())
        );
        assert_eq!(f.on_head(206, None, Some("bytes 0-5/20"), None), Ok(Head::Body));
        f.on_body(&[3; 6]).unwrap();
        assert_eq!(f.end_body(), Ok(true));
        assert!(f.current().is_none());
        let (_, data, _) = f.finish();
        assert_eq!(data, [[1u8; 4].as_slice(), &[2; 6], &[3; 6]].concat());
    }

    #[test]
    fn hostile_replies_fail_cleanly() {
        let i = info(false, &[(&["f"], 100, false)], 32);
        let layout = Layout::new(&i).unwrap();
        let s = seed("http://h/f");
        let fetch = || PieceFetch::new(&s, &i, &layout, 1, Vec::new()).unwrap();
        // 200 for a part of the file: Range ignored.
        assert_eq!(fetch().on_head(200, None, None, Some(100)), Err(WebSeedError::RangeIgnored));
        // Wrong range, wrong total, garbage.
        for cr in ["bytes 0-31/100", "bytes 32-63/99", "bytes x", "", "bytes 63-32/100"] {
            assert!(matches!(
                fetch().on_head(206, None, Some(cr), None),
                Err(WebSeedError::ContentRange { .. })
            ));
        }
        assert_eq!(fetch().on_head(206, None, Some("bytes 32-63/*"), None), Ok(Head::Body));
        assert!(matches!(
            fetch().on_head(206, None, Some("bytes 32-63/100"), Some(1 << 40)),
            Err(WebSeedError::ContentLength { .. })
        ));
        assert_eq!(fetch().on_head(404, None, None, None), Err(WebSeedError::Status(404)));
        // Too much data: refused at the first byte past the range.
        let mut f = fetch();
        f.on_head(206, None, Some("bytes 32-63/100"), None).unwrap();
        f.on_body(&[0; 30]).unwrap();
        assert_eq!(f.on_body(&[0; 3]), Err(WebSeedError::TooMuchData { expected: 32 }));
        // Too little.
        let mut f = fetch();
        f.on_head(206, None, Some("bytes 32-63/100"), None).unwrap();
        f.on_body(&[0; 31]).unwrap();
        assert_eq!(f.end_body(), Err(WebSeedError::ShortBody { got: 31, expected: 32 }));
    }

    #[test]
    fn redirects_are_followed_capped_and_remembered_per_file() {
        let i = info(false, &[(&["f"], 100, false)], 32);
        let layout = Layout::new(&i).unwrap();
        let mut s = seed("http://h/f");
        let mut f = PieceFetch::new(&s, &i, &layout, 0, Vec::new()).unwrap();
        assert_eq!(f.on_head(302, Some("/mirror/f"), None, None), Ok(Head::Redirect));
        assert_eq!(f.current().unwrap().url.as_str(), "http://h/mirror/f");
        assert_eq!(f.on_head(301, Some("https://m2/f"), None, None), Ok(Head::Redirect));
        assert_eq!(f.on_head(206, None, Some("bytes 0-31/100"), None), Ok(Head::Body));
        f.on_body(&[5; 32]).unwrap();
        assert_eq!(f.end_body(), Ok(true));
        let (_, data, learned) = f.finish();
        s.fetch_done(0, data.len() as u64, learned);
        // The next piece of the file goes to the last target at once.
        let f = PieceFetch::new(&s, &i, &layout, 1, Vec::new()).unwrap();
        assert_eq!(f.current().unwrap().url.as_str(), "https://m2/f");

        let mut f = PieceFetch::new(&s, &i, &layout, 2, Vec::new()).unwrap();
        for _ in 0..MAX_WEB_SEED_REDIRECTS {
            assert_eq!(f.on_head(307, Some("http://loop/f"), None, None), Ok(Head::Redirect));
        }
        assert_eq!(
            f.on_head(307, Some("http://loop/f"), None, None),
            Err(WebSeedError::TooManyRedirects)
        );
        let mut f = PieceFetch::new(&s, &i, &layout, 2, Vec::new()).unwrap();
        assert!(matches!(f.on_head(302, None, None, None), Err(WebSeedError::BadRedirect(_))));
        assert!(matches!(
            f.on_head(302, Some("file:///etc/passwd"), None, None),
            Err(WebSeedError::Scheme(_))
        ));
    }

    #[test]
    fn failures_back_off_then_disable() {
        let t0 = Instant::now();
        let mut s = seed("http://h/f");
        assert!(s.may_fetch(t0));
        s.in_flight.push(3);
        let err = WebSeedError::Status(503);
        assert_eq!(s.fetch_failed(3, &err, t0), None);
        assert!(!s.may_fetch(t0));
        assert!(s.may_fetch(t0 + WEB_SEED_RETRY_MIN));
        let mut disabled = None;
        for n in 2..=MAX_WEB_SEED_HTTP_ERRORS {
            disabled = s.fetch_failed(3, &err, t0);
            assert_eq!(disabled.is_some(), n == MAX_WEB_SEED_HTTP_ERRORS);
        }
        assert!(disabled.unwrap().contains("503"));
        assert!(!s.may_fetch(t0 + WEB_SEED_RETRY_MAX * 2));
        assert_eq!(s.status(t0).state, "disabled");

        let mut s = seed("http://h/f");
        assert_eq!(s.bad_piece(1), None);
        assert_eq!(s.bad_piece(2), None);
        assert!(s.bad_piece(3).unwrap().contains("3 pieces"));
        assert!(!s.may_fetch(t0));
    }

    #[test]
    fn few_peers_take_any_piece_many_only_rare_ones() {
        assert_eq!(availability_limit(0, 4), u32::MAX);
        assert_eq!(availability_limit(3, 4), u32::MAX);
        assert_eq!(availability_limit(4, 4), 0);
    }

    proptest::proptest! {
        /// Whatever a server sends, the fetch never panics and never takes
        /// more bytes than the range.
        #[test]
        fn arbitrary_replies_never_panic(
            status in 100u16..600,
            cr in proptest::option::of("[ -~]{0,40}"),
            len in proptest::option::of(0u64..1000),
            chunks in proptest::collection::vec(0usize..80, 0..8),
        ) {
            let i = info(true, &[(&["T", "a"], 50, false), (&["T", "b"], 70, false)], 64);
            let layout = Layout::new(&i).unwrap();
            let s = seed("http://h/");
            let mut f = PieceFetch::new(&s, &i, &layout, 0, Vec::new()).unwrap();
            if let Ok(Head::Body) = f.on_head(status, Some("/x"), cr.as_deref(), len) {
                let mut total = 0;
                for c in chunks {
                    if f.on_body(&vec![1; c]).is_err() {
                        break;
                    }
                    total += c;
                }
                proptest::prop_assert!(total <= 50);
                let _ = f.end_body();
            }
        }
    }
}
