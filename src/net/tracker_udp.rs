//! UDP tracker transport (BEP 15, BEP 41).
//!
//! Layer: driver. Owns the exchange with a UDP tracker: DNS resolution, one
//! connected socket per request (so only the tracker's datagrams arrive),
//! connection ids cached per tracker address for
//! [`CONNECTION_ID_LIFETIME_SECS`], transaction ids chosen at random and
//! checked (a datagram with another id is dropped and counted), and the BEP 15
//! retransmission schedule `base_timeout_ms * 2^n` for `n = 0..=max_retries`.
//! Packet layouts are the pure `tracker::udp`'s.
//!
//! Runs on the tracker subsystem's ordinary tokio runtime, never on a shard.

use crate::metainfo::InfoHash;
use crate::tracker::udp::{
    self, PeerFamily, UdpError, UdpReply, CONNECTION_ID_LIFETIME_SECS, MAX_REPLY_DATAGRAM_BYTES,
};
use crate::tracker::{AnnounceReply, AnnounceRequest, ScrapeStats};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// BEP 15: the first timeout is 15 s, doubled per retransmission.
pub const UDP_BASE_TIMEOUT_MS_DEFAULT: u64 = 15_000;
/// BEP 15: retransmit up to n = 8 (the last wait is 15 * 2^8 s).
pub const UDP_MAX_RETRIES_DEFAULT: u32 = 8;
/// Most tracker addresses whose connection id is cached.
pub const MAX_CACHED_CONNECTIONS: usize = 1024;

/// The retransmission schedule (BEP 15 by default; tests shorten it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpRetryConfig {
    /// Wait for a reply to the first transmission.
    pub base_timeout_ms: u64,
    /// Retransmissions after the first send; each doubles the wait.
    pub max_retries: u32,
}

impl Default for UdpRetryConfig {
    fn default() -> Self {
        UdpRetryConfig {
            base_timeout_ms: UDP_BASE_TIMEOUT_MS_DEFAULT,
            max_retries: UDP_MAX_RETRIES_DEFAULT,
        }
    }
}

impl UdpRetryConfig {
    /// The wait after transmission `n` (0-based).
    pub fn timeout(&self, n: u32) -> Duration {
        Duration::from_millis(self.base_timeout_ms.saturating_mul(1u64 << n.min(20)))
    }

    /// The longest a whole exchange can take: the sum of every wait.
    pub fn total(&self) -> Duration {
        (0..=self.max_retries).map(|n| self.timeout(n)).sum()
    }
}

/// Why a UDP tracker request failed.
#[derive(Debug, thiserror::Error)]
pub enum UdpTrackerError {
    #[error("could not resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("UDP socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error("no reply after {sends} sends over {waited_ms} ms{}", wrong_transaction_hint(*wrong_transaction_ids))]
    NoReply { sends: u32, waited_ms: u64, wrong_transaction_ids: u32 },
    #[error("tracker error: {0}")]
    Tracker(String),
    #[error("{0}")]
    Malformed(#[from] UdpError),
    #[error("unexpected reply: expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: &'static str },
    #[error("scrape reply has no entry for this torrent")]
    NotInScrape,
}

fn wrong_transaction_hint(count: u32) -> String {
    if count == 0 {
        String::new()
    } else {
        format!(" ({count} datagrams with a wrong transaction id were dropped)")
    }
}

fn reply_name(reply: &UdpReply) -> &'static str {
    match reply {
        UdpReply::Connect { .. } => "connect",
        UdpReply::Announce { .. } => "announce",
        UdpReply::Scrape { .. } => "scrape",
        UdpReply::Error { .. } => "error",
    }
}

/// The UDP tracker client: the connection-id cache and the retry schedule.
/// Cheap to clone (the cache is shared).
#[derive(Clone, Debug)]
pub struct UdpTracker {
    retry: UdpRetryConfig,
    connections: Arc<Mutex<HashMap<SocketAddr, (u64, Instant)>>>,
}

/// One request in progress against one tracker address.
struct Exchange {
    socket: UdpSocket,
    addr: SocketAddr,
    family: PeerFamily,
    receive: Vec<u8>,
    send: Vec<u8>,
    /// Transmissions so far, across connect and the request itself: the
    /// schedule's `n`.
    sends: u32,
    waited: Duration,
    wrong_transaction_ids: u32,
}

enum Wait {
    Reply(UdpReply),
    TimedOut,
}

impl UdpTracker {
    pub fn new(retry: UdpRetryConfig) -> UdpTracker {
        UdpTracker { retry, connections: Arc::new(Mutex::new(HashMap::new())) }
    }

    pub fn retry(&self) -> UdpRetryConfig {
        self.retry
    }

    /// One announce to `udp://host:port/path_query`.
    pub async fn announce(
        &self,
        host: &str,
        port: u16,
        path_query: &str,
        request: &AnnounceRequest,
    ) -> Result<AnnounceReply, UdpTrackerError> {
        let mut exchange = self.open(host, port).await?;
        let url_data = path_query.as_bytes();
        loop {
            let connection_id = self.connection_id(&mut exchange).await?;
            let transaction_id: u32 = rand::random();
            udp::encode_announce(
                &mut exchange.send,
                connection_id,
                transaction_id,
                request,
                url_data,
            )?;
            match self.send_and_wait(&mut exchange, transaction_id).await? {
                Wait::TimedOut => continue,
                Wait::Reply(UdpReply::Announce { reply, .. }) => return Ok(reply),
                Wait::Reply(UdpReply::Error { message, .. }) => {
                    // An expired connection id is the common cause: forget it.
                    self.forget(exchange.addr);
                    return Err(UdpTrackerError::Tracker(message));
                }
                Wait::Reply(other) => {
                    return Err(UdpTrackerError::Unexpected {
                        expected: "announce",
                        got: reply_name(&other),
                    })
                }
            }
        }
    }

    /// Scrapes one torrent.
    pub async fn scrape(
        &self,
        host: &str,
        port: u16,
        info_hash: &InfoHash,
    ) -> Result<ScrapeStats, UdpTrackerError> {
        let mut exchange = self.open(host, port).await?;
        loop {
            let connection_id = self.connection_id(&mut exchange).await?;
            let transaction_id: u32 = rand::random();
            udp::encode_scrape(&mut exchange.send, connection_id, transaction_id, &[*info_hash])?;
            match self.send_and_wait(&mut exchange, transaction_id).await? {
                Wait::TimedOut => continue,
                Wait::Reply(UdpReply::Scrape { stats, .. }) => {
                    return stats.first().copied().ok_or(UdpTrackerError::NotInScrape)
                }
                Wait::Reply(UdpReply::Error { message, .. }) => {
                    self.forget(exchange.addr);
                    return Err(UdpTrackerError::Tracker(message));
                }
                Wait::Reply(other) => {
                    return Err(UdpTrackerError::Unexpected {
                        expected: "scrape",
                        got: reply_name(&other),
                    })
                }
            }
        }
    }

    async fn open(&self, host: &str, port: u16) -> Result<Exchange, UdpTrackerError> {
        let addr = resolve(host, port).await?;
        let local: SocketAddr = match addr {
            SocketAddr::V4(_) => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).into(),
            SocketAddr::V6(_) => (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0).into(),
        };
        let socket = UdpSocket::bind(local).await?;
        socket.connect(addr).await?;
        Ok(Exchange {
            socket,
            addr,
            family: if addr.is_ipv6() { PeerFamily::V6 } else { PeerFamily::V4 },
            receive: vec![0u8; MAX_REPLY_DATAGRAM_BYTES],
            send: Vec::with_capacity(udp::ANNOUNCE_REQUEST_BYTES + 64),
            sends: 0,
            waited: Duration::ZERO,
            wrong_transaction_ids: 0,
        })
    }

    /// A fresh connection id for the exchange's tracker: cached, or obtained
    /// by a connect round trip (which counts against the retry schedule).
    async fn connection_id(&self, exchange: &mut Exchange) -> Result<u64, UdpTrackerError> {
        loop {
            if let Some(id) = self.cached(exchange.addr) {
                return Ok(id);
            }
            let transaction_id: u32 = rand::random();
            exchange.send.clear();
            exchange.send.extend_from_slice(&udp::encode_connect(transaction_id));
            match self.send_and_wait(exchange, transaction_id).await? {
                Wait::TimedOut => continue,
                Wait::Reply(UdpReply::Connect { connection_id, .. }) => {
                    self.remember(exchange.addr, connection_id);
                    return Ok(connection_id);
                }
                Wait::Reply(UdpReply::Error { message, .. }) => {
                    return Err(UdpTrackerError::Tracker(message))
                }
                Wait::Reply(other) => {
                    return Err(UdpTrackerError::Unexpected {
                        expected: "connect",
                        got: reply_name(&other),
                    })
                }
            }
        }
    }

    /// Sends `exchange.send` and waits the schedule's timeout for a reply
    /// with `transaction_id`. Fails once the schedule is used up.
    async fn send_and_wait(
        &self,
        exchange: &mut Exchange,
        transaction_id: u32,
    ) -> Result<Wait, UdpTrackerError> {
        if exchange.sends > self.retry.max_retries {
            return Err(UdpTrackerError::NoReply {
                sends: exchange.sends,
                waited_ms: exchange.waited.as_millis() as u64,
                wrong_transaction_ids: exchange.wrong_transaction_ids,
            });
        }
        let timeout = self.retry.timeout(exchange.sends);
        exchange.sends += 1;
        exchange.socket.send(&exchange.send).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let received =
                tokio::time::timeout_at(deadline, exchange.socket.recv(&mut exchange.receive))
                    .await;
            let len = match received {
                Err(_elapsed) => {
                    exchange.waited += timeout;
                    return Ok(Wait::TimedOut);
                }
                // ICMP port unreachable surfaces here as ECONNREFUSED on a
                // connected socket: the tracker is not listening.
                Ok(Err(e)) => return Err(UdpTrackerError::Io(e)),
                Ok(Ok(len)) => len,
            };
            let datagram = &exchange.receive[..len];
            match udp::decode_reply(datagram, exchange.family) {
                Ok(reply) if reply.transaction_id() == transaction_id => {
                    return Ok(Wait::Reply(reply))
                }
                Err(UdpError::AnnounceRefused { transaction_id: id }) if id == transaction_id => {
                    return Err(UdpError::AnnounceRefused { transaction_id: id }.into())
                }
                Ok(_) | Err(UdpError::AnnounceRefused { .. }) => {
                    exchange.wrong_transaction_ids += 1;
                }
                // A datagram too short to carry our id cannot be matched;
                // anything else malformed from the tracker's address is fatal.
                Err(error) => {
                    if len >= 8 && datagram[4..8] != transaction_id.to_be_bytes() {
                        exchange.wrong_transaction_ids += 1;
                    } else {
                        return Err(error.into());
                    }
                }
            }
        }
    }

    fn cached(&self, addr: SocketAddr) -> Option<u64> {
        let map = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&addr)
            .filter(|(_, at)| at.elapsed() < Duration::from_secs(CONNECTION_ID_LIFETIME_SECS))
            .map(|(id, _)| *id)
    }

    fn remember(&self, addr: SocketAddr, connection_id: u64) {
        let mut map = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_CACHED_CONNECTIONS {
            let lifetime = Duration::from_secs(CONNECTION_ID_LIFETIME_SECS);
            map.retain(|_, (_, at)| at.elapsed() < lifetime);
            if map.len() >= MAX_CACHED_CONNECTIONS {
                map.clear();
            }
        }
        map.insert(addr, (connection_id, Instant::now()));
    }

    fn forget(&self, addr: SocketAddr) {
        self.connections.lock().unwrap_or_else(|p| p.into_inner()).remove(&addr);
    }
}

/// The first address `host` resolves to.
async fn resolve(host: &str, port: u16) -> Result<SocketAddr, UdpTrackerError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| UdpTrackerError::Resolve { host: host.to_string(), reason: e.to_string() })?;
    addrs.next().ok_or_else(|| UdpTrackerError::Resolve {
        host: host.to_string(),
        reason: "no addresses".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_is_bep15() {
        let retry = UdpRetryConfig::default();
        assert_eq!(retry.timeout(0), Duration::from_secs(15));
        assert_eq!(retry.timeout(8), Duration::from_secs(15 * 256));
        assert_eq!(retry.total(), Duration::from_secs(15 * 511));
    }
}
