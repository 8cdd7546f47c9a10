//! Turning a magnet link into a torrent for `ringbit download`: the saved
//! .torrent beside the resume state when an earlier run fetched it, else a
//! metadata fetch (BEP 9) from the magnet's peers, `--peer` and its trackers.
//!
//! Layer: edge. The session started for the fetch is handed back, so the
//! download goes on with the same listener, trackers and peers.

use super::engine_args::EngineArgs;
use crate::magnet::{torrent_file_bytes_with_web_seeds, Magnet};
use crate::metainfo::Metainfo;
use crate::session::{FetchStatus, Session};
use crate::shard::metadata::METADATA_UNKNOWN_LEFT_BYTES;
use crate::storage::resume;
use anyhow::Context;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the fetch is polled.
const FETCH_POLL: Duration = Duration::from_millis(10);

/// Seconds between "fetching metadata" lines when nothing changed.
const FETCH_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// The torrent behind a magnet link, and the session that fetched it.
pub struct Resolved {
    pub metainfo: Arc<Metainfo>,
    /// The session that fetched the metadata (`None`: loaded from disk).
    pub session: Option<Session>,
    /// Peers the fetch learned (dial them first).
    pub peers: Vec<SocketAddr>,
}

/// The magnet link in a `download` argument, if it is one.
pub fn magnet_argument(arg: &Path) -> Option<&str> {
    arg.to_str().filter(|s| s.get(..7).is_some_and(|p| p.eq_ignore_ascii_case("magnet:")))
}

/// Resolves `uri`: the saved .torrent when there is one, else a fetch that
/// runs until the metadata arrives or `stop` is set (then `Ok(None)`).
pub fn resolve(
    uri: &str,
    state_dir: &Path,
    engine: &EngineArgs,
    stop: &AtomicBool,
) -> anyhow::Result<Option<Resolved>> {
    let magnet = Magnet::parse(uri)?;
    let mut magnet_peers = Vec::new();
    for pe in &magnet.peers {
        match pe.to_socket_addrs() {
            Ok(addrs) => magnet_peers.extend(addrs),
            Err(e) => eprintln!("ringbit: warning: magnet peer {pe:?}: {e}"),
        }
    }
    let saved = resume::torrent_path(state_dir, magnet.info_hash);
    if saved.exists() {
        match Metainfo::from_file(&saved) {
            Ok(m) if m.info_hash == magnet.info_hash => {
                tracing::info!(path = %saved.display(), "metadata from an earlier fetch");
                let metainfo = Arc::new(m);
                return Ok(Some(Resolved { metainfo, session: None, peers: magnet_peers }));
            }
            Ok(_) => eprintln!(
                "ringbit: warning: {} is for another torrent; fetching the metadata again",
                saved.display()
            ),
            Err(e) => {
                eprintln!("ringbit: warning: {}: {e}; fetching the metadata again", saved.display())
            }
        }
    }
    let mut peers = engine.peers()?;
    peers.extend(magnet_peers);
    let trackers: Vec<Vec<String>> = magnet.trackers.iter().map(|t| vec![t.clone()]).collect();
    let mut options = engine.session_options()?;
    if let Some(dht) = options.dht.as_mut() {
        dht.state_dir = Some(state_dir.to_path_buf());
    }
    let session = Session::start(options)?;
    let left = magnet.exact_length.unwrap_or(METADATA_UNKNOWN_LEFT_BYTES);
    let status = session.fetch_metadata(magnet.info_hash, trackers, peers, left)?;
    let name = magnet.display_name.clone().unwrap_or_else(|| magnet.info_hash.to_hex());
    let Some(info_bytes) = wait(&name, &status, stop) else {
        session.cancel_fetch(magnet.info_hash);
        session.shutdown();
        return Ok(None);
    };
    let bytes = torrent_file_bytes_with_web_seeds(&info_bytes, &magnet.trackers, &magnet.web_seeds);
    let metainfo =
        Metainfo::from_bytes(&bytes).context("fetched metadata is not a valid torrent")?;
    anyhow::ensure!(
        metainfo.info_hash == magnet.info_hash,
        "fetched metadata has info hash {}, not {}",
        metainfo.info_hash,
        magnet.info_hash
    );
    if let Err(e) = resume::save_torrent(state_dir, magnet.info_hash, &bytes) {
        eprintln!("ringbit: warning: cannot save the fetched torrent: {e}");
    }
    eprintln!(
        "{}: metadata received ({} bytes, {} pieces)",
        metainfo.info.name,
        info_bytes.len(),
        metainfo.info.piece_count()
    );
    let peers = status.sources();
    Ok(Some(Resolved { metainfo: Arc::new(metainfo), session: Some(session), peers }))
}

/// Shows "fetching metadata (N peers)" until the metadata arrives or `stop`.
fn wait(name: &str, status: &FetchStatus, stop: &AtomicBool) -> Option<Vec<u8>> {
    let mut shown: Option<usize> = None;
    let mut last_line = Instant::now();
    loop {
        if let Some(metadata) = status.take_metadata() {
            return Some(metadata);
        }
        if stop.load(Ordering::Relaxed) || status.done.load(Ordering::Acquire) {
            return status.take_metadata();
        }
        let peers = status.peers.load(Ordering::Relaxed);
        if shown != Some(peers) || last_line.elapsed() >= FETCH_LOG_INTERVAL {
            eprintln!("{name}: fetching metadata ({peers} peers)");
            shown = Some(peers);
            last_line = Instant::now();
        }
        std::thread::sleep(FETCH_POLL);
    }
}
