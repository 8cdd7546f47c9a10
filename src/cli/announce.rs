//! `ringbit announce`: announce once to every tracker of a torrent or magnet
//! and print each tracker's answer.
//!
//! Layer: edge. Builds the request and the transports of
//! `net::trackers`, announces `started` to every tracker concurrently (each
//! bounded by `--timeout-secs`), prints the results, then announces `stopped`
//! to the trackers that answered so we do not linger in their swarms (unless
//! `--no-stopped`). `--scrape` also scrapes every tracker after the announce. Exit 0 when at least one tracker answered, 1 otherwise.

use crate::magnet::Magnet;
use crate::metainfo::{InfoHash, Metainfo};
use crate::net::tracker_udp::{
    UdpRetryConfig, UDP_BASE_TIMEOUT_MS_DEFAULT, UDP_MAX_RETRIES_DEFAULT,
};
use crate::net::trackers::{generate_peer_id, is_own_address, AnnounceError, Transports};
use crate::tracker::{AnnounceReply, AnnounceRequest, Event};
use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

/// `left` announced for a magnet without `xl`: the size is unknown, and 0
/// would tell the tracker we are a seeder.
const MAGNET_LEFT_BYTES_DEFAULT: u64 = 16 * 1024;

/// Arguments of `ringbit announce`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A .torrent file or a magnet link.
    pub torrent: String,
    /// The listening port announced.
    #[arg(long, default_value_t = 6881)]
    pub port: u16,
    /// Peers asked for.
    #[arg(long, default_value_t = 50)]
    pub numwant: u32,
    /// Bound on each tracker's announce, in seconds.
    #[arg(long, default_value_t = 20)]
    pub timeout_secs: u64,
    /// Bytes left to download announced (default: the torrent's size).
    #[arg(long)]
    pub left: Option<u64>,
    /// Do not announce `stopped` afterwards (the trackers keep listing us).
    #[arg(long)]
    pub no_stopped: bool,
    /// Also scrape each tracker (after the announce) and print its totals.
    #[arg(long)]
    pub scrape: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// UDP trackers: wait before the first retransmission (doubles each time).
    #[arg(long, hide = true, default_value_t = UDP_BASE_TIMEOUT_MS_DEFAULT)]
    pub udp_timeout_ms: u64,
    /// UDP trackers: retransmissions before giving up.
    #[arg(long, hide = true, default_value_t = UDP_MAX_RETRIES_DEFAULT)]
    pub udp_retries: u32,
}

struct Target {
    info_hash: InfoHash,
    tiers: Vec<Vec<String>>,
    left: u64,
}

fn load(target: &str) -> anyhow::Result<Target> {
    if target.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("magnet:")) {
        let magnet = Magnet::parse(target).context("parsing the magnet link")?;
        return Ok(Target {
            info_hash: magnet.info_hash,
            tiers: magnet.trackers.into_iter().map(|t| vec![t]).collect(),
            left: magnet.exact_length.unwrap_or(MAGNET_LEFT_BYTES_DEFAULT),
        });
    }
    let metainfo =
        Metainfo::from_file(Path::new(target)).with_context(|| format!("reading {target}"))?;
    Ok(Target {
        info_hash: metainfo.info_hash,
        tiers: metainfo.tracker_tiers(),
        left: metainfo.info.total_length,
    })
}

/// One tracker's line in the output.
#[derive(serde::Serialize)]
struct TrackerResult {
    url: String,
    tier: usize,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    peers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seeders: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leechers: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval_secs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_interval_secs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scrape: Option<ScrapeResult>,
}

/// A tracker's scrape totals, or why the scrape failed.
#[derive(serde::Serialize)]
struct ScrapeResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    seeders: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completed: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leechers: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(serde::Serialize)]
struct Report {
    info_hash: String,
    port: u16,
    trackers: Vec<TrackerResult>,
}

impl ScrapeResult {
    fn none() -> ScrapeResult {
        ScrapeResult { seeders: None, completed: None, leechers: None, error: None }
    }
}

fn result_of(
    url: String,
    tier: usize,
    outcome: Result<AnnounceReply, AnnounceError>,
    port: u16,
) -> TrackerResult {
    match outcome {
        Ok(reply) => {
            let peers: Vec<SocketAddr> =
                reply.peers.iter().copied().filter(|p| !is_own_address(p, port, &[])).collect();
            TrackerResult {
                url,
                tier,
                ok: true,
                error: None,
                peers: peers.iter().map(SocketAddr::to_string).collect(),
                seeders: reply.seeders,
                leechers: reply.leechers,
                interval_secs: Some(reply.interval_secs),
                min_interval_secs: reply.min_interval_secs,
                warning: reply.warning,
                scrape: None,
            }
        }
        Err(error) => TrackerResult {
            url,
            tier,
            ok: false,
            error: Some(error.to_string()),
            peers: Vec::new(),
            seeders: None,
            leechers: None,
            interval_secs: None,
            min_interval_secs: None,
            warning: None,
            scrape: None,
        },
    }
}

fn print_text(report: &Report) {
    println!("info hash {} (port {})", report.info_hash, report.port);
    for t in &report.trackers {
        println!("{} (tier {})", t.url, t.tier);
        if let Some(error) = &t.error {
            println!("  error: {error}");
            continue;
        }
        let count = |v: Option<u32>| v.map_or_else(|| "?".to_string(), |n| n.to_string());
        println!(
            "  ok: {} peers, {} seeders, {} leechers, interval {} s",
            t.peers.len(),
            count(t.seeders),
            count(t.leechers),
            count(t.interval_secs)
        );
        if let Some(warning) = &t.warning {
            println!("  warning: {warning}");
        }
        for peer in &t.peers {
            println!("  peer {peer}");
        }
        match &t.scrape {
            Some(ScrapeResult { error: Some(error), .. }) => println!("  scrape error: {error}"),
            Some(s) => println!(
                "  scrape: {} seeders, {} completed, {} leechers",
                count(s.seeders),
                count(s.completed),
                count(s.leechers)
            ),
            None => {}
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let target = load(&args.torrent)?;
    let mut urls: Vec<(String, usize)> = Vec::new();
    for (tier, trackers) in target.tiers.iter().enumerate() {
        for url in trackers {
            if !urls.iter().any(|(u, _)| u == url) {
                urls.push((url.clone(), tier));
            }
        }
    }
    if urls.is_empty() {
        anyhow::bail!("the torrent lists no trackers");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let timeout_ms = args.timeout_secs.saturating_mul(1000);
    let retry =
        UdpRetryConfig { base_timeout_ms: args.udp_timeout_ms, max_retries: args.udp_retries };
    let transports = {
        let _guard = runtime.enter();
        Transports::new(timeout_ms, retry).context("building the HTTP client")?
    };
    let request = AnnounceRequest {
        info_hash: target.info_hash,
        peer_id: generate_peer_id(),
        port: args.port,
        uploaded: 0,
        downloaded: 0,
        left: args.left.unwrap_or(target.left),
        event: Event::Started,
        numwant: Some(args.numwant),
        key: rand::random(),
        tracker_id: None,
        encryption: crate::mse::EncryptionPolicy::Prefer,
    };
    let outcomes = runtime.block_on(async {
        let tasks: Vec<_> = urls
            .iter()
            .map(|(url, _)| {
                let (transports, url, request) = (transports.clone(), url.clone(), request.clone());
                tokio::spawn(async move { transports.announce(&url, &request, timeout_ms).await })
            })
            .collect();
        let mut outcomes = Vec::with_capacity(tasks.len());
        for task in tasks {
            outcomes.push(task.await);
        }
        outcomes
    });
    let mut answered = Vec::new();
    let mut results = Vec::new();
    for ((url, tier), outcome) in urls.into_iter().zip(outcomes) {
        let outcome = outcome.map_err(|e| anyhow::anyhow!("announce task failed: {e}"))?;
        if let Ok(reply) = &outcome {
            answered.push((url.clone(), reply.tracker_id.clone()));
        }
        results.push(result_of(url, tier, outcome, args.port));
    }
    if args.scrape {
        let scrapes = runtime.block_on(async {
            let tasks: Vec<_> = results
                .iter()
                .map(|r| {
                    let (transports, url) = (transports.clone(), r.url.clone());
                    let info_hash = target.info_hash;
                    tokio::spawn(
                        async move { transports.scrape(&url, &info_hash, timeout_ms).await },
                    )
                })
                .collect();
            let mut scrapes = Vec::with_capacity(tasks.len());
            for task in tasks {
                scrapes.push(task.await);
            }
            scrapes
        });
        for (result, scrape) in results.iter_mut().zip(scrapes) {
            result.scrape = Some(match scrape {
                Ok(Ok(stats)) => ScrapeResult {
                    seeders: Some(stats.seeders),
                    completed: Some(stats.completed),
                    leechers: Some(stats.leechers),
                    error: None,
                },
                Ok(Err(error)) => {
                    ScrapeResult { error: Some(error.to_string()), ..ScrapeResult::none() }
                }
                Err(error) => ScrapeResult {
                    error: Some(format!("scrape task failed: {error}")),
                    ..ScrapeResult::none()
                },
            });
        }
    }
    let report =
        Report { info_hash: target.info_hash.to_hex(), port: args.port, trackers: results };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    if !args.no_stopped && !answered.is_empty() {
        runtime.block_on(async {
            let tasks: Vec<_> = answered
                .into_iter()
                .map(|(url, tracker_id)| {
                    let transports = transports.clone();
                    let request = AnnounceRequest {
                        event: Event::Stopped,
                        numwant: Some(0),
                        tracker_id,
                        ..request.clone()
                    };
                    tokio::spawn(async move {
                        if let Err(error) = transports.announce(&url, &request, timeout_ms).await {
                            tracing::warn!(%url, %error, "stopped announce failed");
                        }
                    })
                })
                .collect();
            for task in tasks {
                let _ = task.await;
            }
        });
    }
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    let any_ok = report.trackers.iter().any(|t| t.ok);
    Ok(if any_ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
