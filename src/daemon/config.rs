//! The daemon's TOML configuration file: what it may contain, its defaults,
//! and its translation into the engine's [`Config`].
//!
//! Layer: plain data plus one file read ([`DaemonConfig::load`]). Unknown keys
//! are errors (a typo must not silently fall back to a default). Relative
//! paths are taken relative to the config file's directory, so a unit file
//! can point at a config anywhere.

use crate::config::{parse_size, Config};
use crate::storage::{Backend, FILE_IDLE_CLOSE_SECS};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Largest config file read (it is a handful of keys).
pub const CONFIG_FILE_MAX_BYTES: u64 = 1024 * 1024;

/// Torrents one daemon holds at most by default.
pub const MAX_TORRENTS_DEFAULT: usize = 100_000;

/// Default address of the control API: loopback only.
pub const API_LISTEN_DEFAULT: &str = "127.0.0.1:9091";

/// Why the config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is larger than {CONFIG_FILE_MAX_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid { path: PathBuf, key: &'static str, message: String },
}

/// A rate or size: an integer number of bytes or a string like `"10M"`.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

/// The file as written (see `docs/daemon.md` for every key).
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: PathBuf,
    download_dir: PathBuf,
    #[serde(default)]
    watch_dir: Option<PathBuf>,
    #[serde(default)]
    watch_interval_secs: Option<u64>,
    #[serde(default)]
    listen_port: Option<u16>,
    #[serde(default)]
    bind: Vec<IpAddr>,
    #[serde(default)]
    shards: Option<usize>,
    #[serde(default)]
    api_listen: Option<SocketAddr>,
    #[serde(default)]
    trackers: Option<bool>,
    #[serde(default)]
    dht: Option<bool>,
    #[serde(default)]
    dht_bootstrap: Option<Vec<String>>,
    #[serde(default)]
    dht_read_only: Option<bool>,
    #[serde(default)]
    reannounce_secs: Option<u32>,
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    resume_save_interval_secs: Option<u64>,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_torrents: Option<usize>,
    max_peers_per_torrent: Option<usize>,
    max_peers_total: Option<usize>,
    upload_slots: Option<usize>,
    upload_rate: Option<SizeValue>,
    download_rate: Option<SizeValue>,
    file_idle_close_secs: Option<u64>,
}

/// The daemon's settings, validated, paths absolute.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Engine settings (port, shards, peer limits, rate limits).
    pub engine: Config,
    /// IPs the peer listener binds (empty: every IPv4 and IPv6 address).
    pub bind: Vec<IpAddr>,
    /// Resume files and the registry of torrents (`torrents/`).
    pub state_dir: PathBuf,
    /// Where new torrents' data goes.
    pub download_dir: PathBuf,
    /// .torrent files appearing here are added; removing one stops its torrent.
    pub watch_dir: Option<PathBuf>,
    pub watch_interval_secs: u64,
    /// The HTTP control API and `/metrics` (default 127.0.0.1:9091).
    pub api_listen: SocketAddr,
    /// Announce to trackers (default true).
    pub trackers: bool,
    /// Use the mainline DHT (default true; never for private torrents).
    pub dht: bool,
    /// DHT routers (`HOST:PORT`; default: `net::dht::default_bootstrap()`).
    pub dht_bootstrap: Vec<String>,
    /// Query the DHT only (BEP 43), never answer or announce.
    pub dht_read_only: bool,
    /// Announce every N seconds whatever the tracker's interval.
    pub reannounce_secs: Option<u32>,
    pub backend: Backend,
    /// Write resume state of changed torrents this often (default 300 s).
    pub resume_save_interval_secs: u64,
    pub max_torrents: usize,
    /// Close a data file (pwrite backend) unused this long (default
    /// [`FILE_IDLE_CLOSE_SECS`]).
    pub file_idle_close_secs: u64,
}

impl DaemonConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<DaemonConfig, ConfigError> {
        let meta = std::fs::metadata(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        if meta.len() > CONFIG_FILE_MAX_BYTES {
            return Err(ConfigError::TooLarge { path: path.to_path_buf() });
        }
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = std::path::absolute(&base).unwrap_or(base);
        DaemonConfig::parse(&text, &base, path)
    }

    /// Parses config text; relative paths are joined to `base`; `origin`
    /// names the file in errors.
    pub fn parse(text: &str, base: &Path, origin: &Path) -> Result<DaemonConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: origin.to_path_buf(),
            key,
            message,
        };
        let defaults = Config::default();
        let mut engine = Config {
            listen_port: raw.listen_port.unwrap_or(defaults.listen_port),
            state_dir: None,
            ..defaults.clone()
        };
        if let Some(shards) = raw.shards {
            if shards == 0 || shards > 1024 {
                return Err(invalid("shards", format!("{shards} is not between 1 and 1024")));
            }
            engine.shards = shards;
        }
        let limits = raw.limits;
        if let Some(n) = limits.max_peers_per_torrent {
            if n == 0 {
                return Err(invalid("limits.max_peers_per_torrent", "must be at least 1".into()));
            }
            engine.max_peers_per_torrent = n;
        }
        if let Some(n) = limits.max_peers_total {
            if n == 0 {
                return Err(invalid("limits.max_peers_total", "must be at least 1".into()));
            }
            engine.max_peers_total = n;
        }
        if let Some(n) = limits.upload_slots {
            if n == 0 || n > crate::choker::MAX_UPLOAD_SLOTS {
                return Err(invalid(
                    "limits.upload_slots",
                    format!("{n} is not between 1 and {}", crate::choker::MAX_UPLOAD_SLOTS),
                ));
            }
            engine.upload_slots = n;
        }
        engine.upload_rate_limit_bytes_per_s =
            size(limits.upload_rate.as_ref()).map_err(|m| invalid("limits.upload_rate", m))?;
        engine.download_rate_limit_bytes_per_s =
            size(limits.download_rate.as_ref()).map_err(|m| invalid("limits.download_rate", m))?;
        let backend = match raw.backend {
            Some(name) => name.parse::<Backend>().map_err(|m| invalid("backend", m))?,
            None => Backend::default(),
        };
        let max_torrents = limits.max_torrents.unwrap_or(MAX_TORRENTS_DEFAULT);
        if max_torrents == 0 {
            return Err(invalid("limits.max_torrents", "must be at least 1".into()));
        }
        if raw.reannounce_secs == Some(0) {
            return Err(invalid("reannounce_secs", "must be at least 1".into()));
        }
        let watch_interval_secs = raw.watch_interval_secs.unwrap_or(2);
        if watch_interval_secs == 0 {
            return Err(invalid("watch_interval_secs", "must be at least 1".into()));
        }
        let resume_save_interval_secs = raw.resume_save_interval_secs.unwrap_or(300);
        if resume_save_interval_secs == 0 {
            return Err(invalid("resume_save_interval_secs", "must be at least 1".into()));
        }
        let file_idle_close_secs = limits.file_idle_close_secs.unwrap_or(FILE_IDLE_CLOSE_SECS);
        if file_idle_close_secs == 0 {
            return Err(invalid("limits.file_idle_close_secs", "must be at least 1".into()));
        }
        let api_listen = raw.api_listen.unwrap_or_else(|| API_LISTEN_DEFAULT.parse().unwrap());
        Ok(DaemonConfig {
            engine,
            bind: raw.bind,
            state_dir: base.join(raw.state_dir),
            download_dir: base.join(raw.download_dir),
            watch_dir: raw.watch_dir.map(|w| base.join(w)),
            watch_interval_secs,
            api_listen,
            trackers: raw.trackers.unwrap_or(true),
            dht: raw.dht.unwrap_or(true),
            dht_bootstrap: raw.dht_bootstrap.unwrap_or_else(crate::net::dht::default_bootstrap),
            dht_read_only: raw.dht_read_only.unwrap_or(false),
            reannounce_secs: raw.reannounce_secs,
            backend,
            resume_save_interval_secs,
            max_torrents,
            file_idle_close_secs,
        })
    }
}

/// `None` = unlimited (0).
fn size(value: Option<&SizeValue>) -> Result<u64, String> {
    match value {
        None => Ok(0),
        Some(SizeValue::Bytes(n)) => Ok(*n),
        Some(SizeValue::Text(text)) => {
            parse_size(text).ok_or_else(|| format!("{text:?} is not a size like 10M or 512K"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DaemonConfig, ConfigError> {
        DaemonConfig::parse(text, Path::new("/etc/ringbit"), Path::new("daemon.toml"))
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = parse("state_dir = \"/var/lib/ringbit\"\ndownload_dir = \"data\"\n").unwrap();
        assert_eq!(c.state_dir, Path::new("/var/lib/ringbit"));
        assert_eq!(c.download_dir, Path::new("/etc/ringbit/data"));
        assert_eq!(c.api_listen, API_LISTEN_DEFAULT.parse().unwrap());
        assert_eq!(c.engine.listen_port, 6881);
        assert!(c.trackers);
        assert_eq!(c.engine.upload_rate_limit_bytes_per_s, 0);
        assert_eq!(c.watch_dir, None);
        assert_eq!(c.file_idle_close_secs, FILE_IDLE_CLOSE_SECS);
    }

    #[test]
    fn every_key() {
        let c = parse(
            r#"
            state_dir = "state"
            download_dir = "/srv/data"
            watch_dir = "/srv/watch"
            watch_interval_secs = 5
            listen_port = 51413
            bind = ["127.0.0.1"]
            shards = 2
            api_listen = "127.0.0.1:0"
            trackers = false
            reannounce_secs = 60
            backend = "mmap"
            resume_save_interval_secs = 60
            [limits]
            max_torrents = 20000
            max_peers_per_torrent = 40
            max_peers_total = 5000
            upload_slots = 4
            upload_rate = "10M"
            download_rate = 1000000
            file_idle_close_secs = 5
            "#,
        )
        .unwrap();
        assert_eq!(c.engine.shards, 2);
        assert_eq!(c.engine.listen_port, 51413);
        assert_eq!(c.engine.upload_rate_limit_bytes_per_s, 10 << 20);
        assert_eq!(c.engine.download_rate_limit_bytes_per_s, 1_000_000);
        assert_eq!(c.engine.upload_slots, 4);
        assert_eq!(c.max_torrents, 20000);
        assert_eq!(c.backend, Backend::Mmap);
        assert_eq!(c.watch_dir.as_deref(), Some(Path::new("/srv/watch")));
        assert!(!c.trackers);
        assert_eq!(c.file_idle_close_secs, 5);
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            ("state_dir = \"s\"\n", "download_dir"),
            ("state_dir = \"s\"\ndownload_dir = \"d\"\nlisten_prot = 1\n", "listen_prot"),
            ("state_dir = \"s\"\ndownload_dir = \"d\"\nshards = 0\n", "shards"),
            (
                "state_dir = \"s\"\ndownload_dir = \"d\"\n[limits]\nupload_rate = \"fast\"\n",
                "upload_rate",
            ),
            ("state_dir = \"s\"\ndownload_dir = \"d\"\nbackend = \"floppy\"\n", "backend"),
            (
                "state_dir = \"s\"\ndownload_dir = \"d\"\n[limits]\nfile_idle_close_secs = 0\n",
                "file_idle_close_secs",
            ),
            ("state_dir = \"s\"\ndownload_dir = \"d\"\napi_listen = \"localhost\"\n", "api_listen"),
        ];
        for (text, key) in cases {
            let error = parse(text).unwrap_err().to_string();
            assert!(error.contains(key), "{error} should name {key}");
        }
    }
}
