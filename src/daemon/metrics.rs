//! Prometheus `/metrics`: the daemon's state as counters and gauges, per
//! daemon, per shard, per torrent and per tracker URL, encoded with
//! `prometheus-client` (OpenMetrics text).
//!
//! Layer: control plane (runs on the API thread, reads the atomics the shards
//! publish; never touches a shard). Built fresh at every scrape from one
//! snapshot, so the numbers of one scrape agree with each other.
//!
//! Per-shard values are the sums over the torrents the shard holds now:
//! removing a torrent lowers its shard's byte counters, which Prometheus
//! treats as a counter reset.

use super::Daemon;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

type Labels = Vec<(&'static str, String)>;

fn counter_family(
    registry: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, family.clone()),
        None => registry.register(name, help, family.clone()),
    }
    family
}

fn gauge_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The OpenMetrics text of the daemon's current state.
pub fn render(daemon: &Daemon) -> String {
    let status = daemon.status();
    let torrents = daemon.torrents();
    let mut registry = Registry::default();

    let by_state = gauge_family(&mut registry, "ringbit_torrents", "Torrents by state");
    for (state, n) in &status.by_state {
        by_state.get_or_create(&vec![("state", state.to_string())]).set(*n as i64);
    }
    let uptime = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    uptime.set(status.uptime_secs);
    registry.register_with_unit(
        "ringbit_uptime",
        "Seconds since the daemon started",
        Unit::Seconds,
        uptime,
    );
    let startup = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    startup.set(status.startup.seconds.unwrap_or(f64::NAN));
    registry.register_with_unit(
        "ringbit_startup",
        "Seconds the registered torrents took to load at start (NaN while loading)",
        Unit::Seconds,
        startup,
    );
    let driver = gauge_family(
        &mut registry,
        "ringbit_io_driver",
        "The I/O driver the shards run (1 for the one in use)",
    );
    driver.get_or_create(&vec![("driver", status.io_driver.to_string())]).set(1);
    let rechecked = Gauge::<i64>::default();
    rechecked.set(gauge(status.startup.rechecked_pieces));
    registry.register(
        "ringbit_startup_rechecked_pieces",
        "Pieces hashed while loading at start (0 when every resume state was trusted)",
        rechecked,
    );

    let flush_failures = Counter::<u64>::default();
    flush_failures.inc_by(status.flush_failures);
    registry.register(
        "ringbit_storage_flush_failures",
        "Storage flushes (fdatasync) that failed; each stopped its torrent and left its unflushed pieces out of resume state",
        flush_failures,
    );

    // Per shard.
    let shard_torrents =
        gauge_family(&mut registry, "ringbit_shard_torrents", "Torrents running on each shard");
    let shard_peers =
        gauge_family(&mut registry, "ringbit_shard_peers", "Connected peers on each shard");
    let shard_up = counter_family(
        &mut registry,
        "ringbit_shard_uploaded",
        "Bytes uploaded by the torrents on each shard",
        Some(Unit::Bytes),
    );
    let shard_down = counter_family(
        &mut registry,
        "ringbit_shard_downloaded",
        "Bytes downloaded by the torrents on each shard",
        Some(Unit::Bytes),
    );
    let shard_up_rate = gauge_family(
        &mut registry,
        "ringbit_shard_upload_rate_bytes_per_second",
        "Upload rate of each shard",
    );
    let shard_down_rate = gauge_family(
        &mut registry,
        "ringbit_shard_download_rate_bytes_per_second",
        "Download rate of each shard",
    );
    for shard in 0..status.shards {
        let labels = vec![("shard", shard.to_string())];
        shard_torrents.get_or_create(&labels).set(0);
        shard_peers.get_or_create(&labels).set(0);
        let _ = shard_up.get_or_create(&labels);
        let _ = shard_down.get_or_create(&labels);
        shard_up_rate.get_or_create(&labels).set(0);
        shard_down_rate.get_or_create(&labels).set(0);
    }

    // Per shard: memory budgets (bytes in use and the limit).
    let memory_used = gauge_family(
        &mut registry,
        "ringbit_shard_memory_used_bytes",
        "Bytes each shard's torrents hold, by budget (piece_buffers, send_buffers)",
    );
    let memory_limit = gauge_family(
        &mut registry,
        "ringbit_shard_memory_limit_bytes",
        "Each shard's byte budget, by budget (piece_buffers, send_buffers)",
    );
    for (shard, memory) in daemon.shard_memory().iter().enumerate() {
        for (budget, b) in [("piece_buffers", &memory.pieces), ("send_buffers", &memory.send)] {
            let labels = vec![("shard", shard.to_string()), ("budget", budget.to_string())];
            memory_used.get_or_create(&labels).set(gauge(b.used_bytes()));
            memory_limit.get_or_create(&labels).set(gauge(b.limit_bytes()));
        }
    }

    // File descriptors: how the limit was shared out, and what is open.
    if let Some(fds) = daemon.fd_budget() {
        let shares = gauge_family(
            &mut registry,
            "ringbit_fd_budget",
            "How RLIMIT_NOFILE was shared out at start (nofile, reserve, peers, half_open, data_files)",
        );
        for (share, n) in [
            ("nofile", fds.nofile),
            ("reserve", fds.reserve),
            ("peers", fds.peers as u64),
            ("half_open", fds.half_open as u64),
            ("data_files", fds.data_files as u64),
        ] {
            shares.get_or_create(&vec![("share", share.to_string())]).set(gauge(n));
        }
    }
    let data_files = Gauge::<i64>::default();
    data_files.set(gauge(crate::storage::open_files::open_files() as u64));
    registry.register("ringbit_open_data_files", "Data-file descriptors open now", data_files);
    if let Some(n) = crate::net::peer_io::open_fds() {
        let fds = Gauge::<i64>::default();
        fds.set(gauge(n as u64));
        registry.register("ringbit_open_fds", "File descriptors the process has open", fds);
    }

    // Per torrent.
    let t_up = counter_family(
        &mut registry,
        "ringbit_torrent_uploaded",
        "Bytes uploaded",
        Some(Unit::Bytes),
    );
    let t_down = counter_family(
        &mut registry,
        "ringbit_torrent_downloaded",
        "Bytes downloaded",
        Some(Unit::Bytes),
    );
    let t_peers = gauge_family(&mut registry, "ringbit_torrent_peers", "Connected peers");
    let t_have = gauge_family(&mut registry, "ringbit_torrent_have_pieces", "Verified pieces");
    let t_pieces = gauge_family(&mut registry, "ringbit_torrent_pieces", "Pieces in the torrent");
    let t_up_rate =
        gauge_family(&mut registry, "ringbit_torrent_upload_rate_bytes_per_second", "Upload rate");
    let t_down_rate = gauge_family(
        &mut registry,
        "ringbit_torrent_download_rate_bytes_per_second",
        "Download rate",
    );
    for t in &torrents {
        let labels = vec![("info_hash", t.info_hash.clone()), ("name", t.name.clone())];
        t_up.get_or_create(&labels).inc_by(t.uploaded);
        t_down.get_or_create(&labels).inc_by(t.downloaded);
        t_peers.get_or_create(&labels).set(t.peers as i64);
        t_have.get_or_create(&labels).set(t.have_pieces as i64);
        t_pieces.get_or_create(&labels).set(t.piece_count as i64);
        t_up_rate.get_or_create(&labels).set(gauge(t.upload_rate));
        t_down_rate.get_or_create(&labels).set(gauge(t.download_rate));
        if matches!(t.state, "downloading" | "seeding") {
            let shard = vec![("shard", t.shard.to_string())];
            shard_torrents.get_or_create(&shard).inc();
            shard_peers.get_or_create(&shard).inc_by(t.peers as i64);
            shard_up.get_or_create(&shard).inc_by(t.uploaded);
            shard_down.get_or_create(&shard).inc_by(t.downloaded);
            shard_up_rate.get_or_create(&shard).inc_by(gauge(t.upload_rate));
            shard_down_rate.get_or_create(&shard).inc_by(gauge(t.download_rate));
        }
    }

    // Per tracker URL.
    let announces = counter_family(
        &mut registry,
        "ringbit_tracker_announces",
        "Announces by tracker and result",
        None,
    );
    let received = counter_family(
        &mut registry,
        "ringbit_tracker_peers_received",
        "Peers in tracker replies",
        None,
    );
    for (url, c) in daemon.tracker_counters() {
        announces
            .get_or_create(&vec![("url", url.clone()), ("result", "ok".into())])
            .inc_by(c.announces_ok);
        announces
            .get_or_create(&vec![("url", url.clone()), ("result", "failed".into())])
            .inc_by(c.announces_failed);
        received.get_or_create(&vec![("url", url)]).inc_by(c.peers_received);
    }

    // The DHT.
    if let Some(dht) = daemon.dht_report() {
        let stats = &dht.stats;
        let nodes = gauge_family(&mut registry, "ringbit_dht_nodes", "DHT routing table nodes");
        nodes.get_or_create(&vec![("table", "ipv4".into())]).set(gauge(stats.nodes_v4));
        nodes.get_or_create(&vec![("table", "ipv6".into())]).set(gauge(stats.nodes_v6));
        let queries = counter_family(&mut registry, "ringbit_dht_queries", "DHT queries", None);
        queries.get_or_create(&vec![("direction", "in".into())]).inc_by(stats.queries_in);
        queries.get_or_create(&vec![("direction", "out".into())]).inc_by(stats.queries_out);
        let found = counter_family(
            &mut registry,
            "ringbit_dht_peers_found",
            "Peers found by DHT lookups (before removing our own address)",
            None,
        );
        found.get_or_create(&Vec::new()).inc_by(stats.peers_found);
        let dropped =
            counter_family(&mut registry, "ringbit_dht_dropped", "DHT datagrams dropped", None);
        for (reason, n) in [
            ("rate_limited", stats.dropped_rate_limited),
            ("malformed", stats.dropped_malformed),
            ("unmatched", stats.dropped_unmatched),
            ("queue_full", stats.dropped_queue_full),
        ] {
            dropped.get_or_create(&vec![("reason", reason.into())]).inc_by(n);
        }
        let timeouts =
            counter_family(&mut registry, "ringbit_dht_timeouts", "DHT queries unanswered", None);
        timeouts.get_or_create(&Vec::new()).inc_by(stats.timeouts);
        let stored = gauge_family(
            &mut registry,
            "ringbit_dht_stored_peers",
            "Peers other nodes announced to us",
        );
        stored.get_or_create(&Vec::new()).set(gauge(stats.stored_peers));
        let torrents_announced =
            gauge_family(&mut registry, "ringbit_dht_torrents", "Torrents announced on the DHT");
        torrents_announced.get_or_create(&Vec::new()).set(gauge(stats.torrents));
    }

    let mut out = String::with_capacity(256 + torrents.len() * 1024);
    encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}
