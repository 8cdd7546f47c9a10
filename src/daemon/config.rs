//! The daemon's TOML configuration file: what it may contain, its defaults,
//! and its translation into the engine's [`Config`].
//!
//! Layer: plain data plus one file read ([`DaemonConfig::load`]). Unknown keys
//! are errors (a typo must not silently fall back to a default). Relative
//! paths are taken relative to the config file's directory, so a unit file
//! can point at a config anywhere.

use super::auth::{self, Credentials, PasswordHash};
use crate::config::{parse_size, Config};
use crate::storage::{Allocation, Backend, FILE_IDLE_CLOSE_SECS};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Largest config file read (it is a handful of keys).
pub const CONFIG_FILE_MAX_BYTES: u64 = 1024 * 1024;

/// Torrents one daemon holds at most by default.
pub const MAX_TORRENTS_DEFAULT: usize = 100_000;

/// Default address of the control API: loopback only.
pub const API_LISTEN_DEFAULT: &str = "127.0.0.1:9091";

/// A client must send a request's whole head within this long (also how
/// long an idle keep-alive connection is kept): a slow-loris client is cut
/// off after it.
pub const API_HEADER_READ_TIMEOUT_SECS_DEFAULT: u64 = 10;
/// A request (body read and handler) must finish within this long.
pub const API_REQUEST_TIMEOUT_SECS_DEFAULT: u64 = 120;
/// API connections open at once; more are closed at accept.
pub const API_MAX_CONNECTIONS_DEFAULT: usize = 256;
/// Names in `[api] hosts` / origins in `[api] origins` at most.
pub const API_NAMES_MAX: usize = 64;
/// Entries in `download_roots` at most.
pub const DOWNLOAD_ROOTS_MAX: usize = 64;

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
    allocation: Option<String>,
    direct_io: Option<bool>,
    io_driver: Option<String>,
    #[serde(default)]
    resume_save_interval_secs: Option<u64>,
    #[serde(default)]
    download_roots: Vec<PathBuf>,
    encryption: Option<String>,
    utp: Option<String>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    api: RawApi,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
struct RawApi {
    auth: Option<bool>,
    username: Option<String>,
    password: Option<String>,
    password_hash: Option<String>,
    session_ttl_secs: Option<u64>,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    origins: Vec<String>,
    #[serde(default)]
    metrics_public: bool,
    header_read_timeout_secs: Option<u64>,
    request_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    qbittorrent_version: Option<u8>,
}

/// The control API's access and server settings (`[api]`).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Require the token or a login session (default true; `false` is
    /// refused unless `api_listen` is a loopback address).
    pub auth: bool,
    /// Username and password for `/api/v1/auth/login` (and the
    /// qBittorrent-compatible login).
    pub credentials: Option<Credentials>,
    pub session_ttl_secs: u64,
    /// Host names accepted in `Host` besides IP literals and `localhost`.
    pub hosts: Vec<String>,
    /// Origins (`https://name[:port]`) accepted on state-changing requests
    /// besides the API's own.
    pub origins: Vec<String>,
    /// Serve `/metrics` without credentials.
    pub metrics_public: bool,
    pub header_read_timeout_secs: u64,
    pub request_timeout_secs: u64,
    pub max_connections: usize,
    /// The qBittorrent major version `/api/v2` answers as: 4 (`v4.6.7`,
    /// states `pausedUP`) or 5 (`v5.0.4`, states `stoppedUP`).
    pub qbittorrent_version: u8,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            auth: true,
            credentials: None,
            session_ttl_secs: auth::SESSION_TTL_SECS_DEFAULT,
            hosts: Vec::new(),
            origins: Vec::new(),
            metrics_public: false,
            header_read_timeout_secs: API_HEADER_READ_TIMEOUT_SECS_DEFAULT,
            request_timeout_secs: API_REQUEST_TIMEOUT_SECS_DEFAULT,
            max_connections: API_MAX_CONNECTIONS_DEFAULT,
            qbittorrent_version: 4,
        }
    }
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
    /// Directories an API client may put data in, and read .torrent files
    /// from (with the watch dir); default `[download_dir]`.
    pub download_roots: Vec<PathBuf>,
    /// .torrent files appearing here are added; removing one stops its torrent.
    pub watch_dir: Option<PathBuf>,
    pub watch_interval_secs: u64,
    /// The HTTP control API and `/metrics` (default 127.0.0.1:9091).
    pub api_listen: SocketAddr,
    pub api: ApiConfig,
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
    /// How data files are reserved: `full` (fallocate, default) or `sparse`
    /// (for filesystems without fallocate: NFSv3, some FUSE).
    pub allocation: Allocation,
    /// io_uring backend: write pieces with O_DIRECT where aligned (default
    /// true; off by itself on filesystems that refuse it).
    pub direct_io: bool,
    /// Write resume state of changed torrents this often (default 300 s).
    pub resume_save_interval_secs: u64,
    pub max_torrents: usize,
    /// Close a data file (pwrite and io_uring backends) unused this long (default
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
        if let Some(name) = &raw.io_driver {
            engine.io_driver = name.parse().map_err(|m| invalid("io_driver", m))?;
        }
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
        if let Some(policy) = &raw.encryption {
            engine.encryption = policy.parse().map_err(|m| invalid("encryption", m))?;
        }
        if let Some(policy) = &raw.utp {
            engine.utp = policy.parse().map_err(|m| invalid("utp", m))?;
        }
        let backend = match raw.backend {
            Some(name) => name.parse::<Backend>().map_err(|m| invalid("backend", m))?,
            None => Backend::default(),
        };
        let allocation = match raw.allocation {
            Some(name) => name.parse::<Allocation>().map_err(|m| invalid("allocation", m))?,
            None => Allocation::default(),
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
        let api = api_config(raw.api, api_listen).map_err(|(key, m)| invalid(key, m))?;
        let download_dir = base.join(raw.download_dir);
        if raw.download_roots.len() > DOWNLOAD_ROOTS_MAX {
            return Err(invalid("download_roots", format!("more than {DOWNLOAD_ROOTS_MAX}")));
        }
        let download_roots = if raw.download_roots.is_empty() {
            vec![download_dir.clone()]
        } else {
            raw.download_roots.iter().map(|r| base.join(r)).collect()
        };
        Ok(DaemonConfig {
            engine,
            bind: raw.bind,
            state_dir: base.join(raw.state_dir),
            download_dir,
            download_roots,
            watch_dir: raw.watch_dir.map(|w| base.join(w)),
            watch_interval_secs,
            api_listen,
            api,
            trackers: raw.trackers.unwrap_or(true),
            dht: raw.dht.unwrap_or(true),
            dht_bootstrap: raw.dht_bootstrap.unwrap_or_else(crate::net::dht::default_bootstrap),
            dht_read_only: raw.dht_read_only.unwrap_or(false),
            reannounce_secs: raw.reannounce_secs,
            backend,
            allocation,
            direct_io: raw.direct_io.unwrap_or(true),
            resume_save_interval_secs,
            max_torrents,
            file_idle_close_secs,
        })
    }
}

/// Validates `[api]`; errors name the key.
fn api_config(raw: RawApi, listen: SocketAddr) -> Result<ApiConfig, (&'static str, String)> {
    let defaults = ApiConfig::default();
    let auth = raw.auth.unwrap_or(true);
    if !auth && !listen.ip().is_loopback() {
        return Err((
            "api.auth",
            format!(
                "the API would listen on {listen} without authentication: anyone who can reach \
                 that address could add torrents and write files; keep auth = true (the default) \
                 or listen on 127.0.0.1"
            ),
        ));
    }
    let password = match (raw.password, raw.password_hash) {
        (Some(_), Some(_)) => {
            return Err(("api.password", "set password or password_hash, not both".into()))
        }
        // A password in the config is hashed at load so that login compares
        // hashes in constant time; its rounds only equalise timing (the
        // plain text is in the file anyway).
        (Some(plain), None) => Some(PasswordHash::new(&plain, auth::PASSWORD_ROUNDS_MIN)),
        (None, Some(hash)) => {
            Some(PasswordHash::parse(&hash).map_err(|e| ("api.password_hash", e.to_string()))?)
        }
        (None, None) => None,
    };
    let credentials = match (raw.username, password) {
        (Some(username), Some(password)) => {
            if username.is_empty() || username.len() > auth::CREDENTIAL_MAX_BYTES {
                return Err(("api.username", "must be 1 to 1024 bytes".into()));
            }
            Some(Credentials { username, password })
        }
        (None, None) => None,
        _ => return Err(("api.username", "username and password go together".into())),
    };
    let positive = |key: &'static str, value: Option<u64>, default: u64| match value {
        Some(0) => Err((key, "must be at least 1".to_string())),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    let session_ttl_secs =
        positive("api.session_ttl_secs", raw.session_ttl_secs, defaults.session_ttl_secs)?;
    let header_read_timeout_secs = positive(
        "api.header_read_timeout_secs",
        raw.header_read_timeout_secs,
        defaults.header_read_timeout_secs,
    )?;
    let request_timeout_secs = positive(
        "api.request_timeout_secs",
        raw.request_timeout_secs,
        defaults.request_timeout_secs,
    )?;
    let max_connections = match raw.max_connections {
        Some(0) => return Err(("api.max_connections", "must be at least 1".into())),
        Some(n) => n,
        None => defaults.max_connections,
    };
    let qbittorrent_version = match raw.qbittorrent_version {
        None => defaults.qbittorrent_version,
        Some(v @ (4 | 5)) => v,
        Some(_) => return Err(("api.qbittorrent_version", "must be 4 or 5".into())),
    };
    if raw.hosts.len() > API_NAMES_MAX || raw.origins.len() > API_NAMES_MAX {
        return Err(("api.hosts", format!("at most {API_NAMES_MAX} hosts and origins")));
    }
    if let Some(bad) =
        raw.origins.iter().find(|o| !(o.starts_with("http://") || o.starts_with("https://")))
    {
        return Err(("api.origins", format!("{bad:?} is not like https://name[:port]")));
    }
    Ok(ApiConfig {
        auth,
        credentials,
        session_ttl_secs,
        hosts: raw.hosts,
        origins: raw.origins,
        metrics_public: raw.metrics_public,
        header_read_timeout_secs,
        request_timeout_secs,
        max_connections,
        qbittorrent_version,
    })
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
        assert_eq!(
            c.download_roots,
            [Path::new("/etc/ringbit/data")],
            "download_dir is the default root"
        );
        assert!(c.api.auth && c.api.credentials.is_none() && !c.api.metrics_public);
        assert_eq!(c.allocation, Allocation::Full);
        assert_eq!(c.engine.encryption, crate::config::EncryptionPolicy::Prefer);
        let bad = "state_dir = \"s\"\ndownload_dir = \"d\"\nencryption = \"always\"\n";
        assert!(parse(bad).unwrap_err().to_string().contains("encryption"));
        assert_eq!(c.engine.utp, crate::config::UtpPolicy::PreferTcp);
        let bad = "state_dir = \"s\"\ndownload_dir = \"d\"\nutp = \"sometimes\"\n";
        assert!(parse(bad).unwrap_err().to_string().contains("utp"));
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
            allocation = "sparse"
            resume_save_interval_secs = 60
            download_roots = ["/srv/data", "more"]
            encryption = "require"
            utp = "only"
            [limits]
            max_torrents = 20000
            max_peers_per_torrent = 40
            max_peers_total = 5000
            upload_slots = 4
            upload_rate = "10M"
            download_rate = 1000000
            file_idle_close_secs = 5
            [api]
            username = "admin"
            password = "secret"
            session_ttl_secs = 60
            hosts = ["seedbox.example"]
            origins = ["https://seedbox.example"]
            metrics_public = true
            header_read_timeout_secs = 3
            request_timeout_secs = 30
            max_connections = 8
            "#,
        )
        .unwrap();
        assert_eq!(c.download_roots, [Path::new("/srv/data"), Path::new("/etc/ringbit/more")]);
        let credentials = c.api.credentials.as_ref().unwrap();
        assert!(credentials.check("admin", "secret") && !credentials.check("admin", "Secret"));
        assert_eq!(c.api.hosts, ["seedbox.example"]);
        assert!(c.api.auth && c.api.metrics_public);
        assert_eq!(
            (c.api.session_ttl_secs, c.api.header_read_timeout_secs, c.api.request_timeout_secs),
            (60, 3, 30)
        );
        assert_eq!(c.api.max_connections, 8);
        assert_eq!(c.engine.shards, 2);
        assert_eq!(c.engine.listen_port, 51413);
        assert_eq!(c.engine.upload_rate_limit_bytes_per_s, 10 << 20);
        assert_eq!(c.engine.download_rate_limit_bytes_per_s, 1_000_000);
        assert_eq!(c.engine.upload_slots, 4);
        assert_eq!(c.max_torrents, 20000);
        assert_eq!(c.backend, Backend::Mmap);
        assert_eq!(c.allocation, Allocation::Sparse);
        assert_eq!(c.watch_dir.as_deref(), Some(Path::new("/srv/watch")));
        assert!(!c.trackers);
        assert_eq!(c.file_idle_close_secs, 5);
        assert_eq!(c.engine.encryption, crate::config::EncryptionPolicy::Require);
        assert_eq!(c.engine.utp, crate::config::UtpPolicy::Only);
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
            ("state_dir = \"s\"\ndownload_dir = \"d\"\nallocation = \"some\"\n", "allocation"),
            (
                "state_dir = \"s\"\ndownload_dir = \"d\"\n[limits]\nfile_idle_close_secs = 0\n",
                "file_idle_close_secs",
            ),
            ("state_dir = \"s\"\ndownload_dir = \"d\"\napi_listen = \"localhost\"\n", "api_listen"),
            (
                "state_dir = \"s\"\ndownload_dir = \"d\"\napi_listen = \"0.0.0.0:9091\"\n[api]\nauth = false\n",
                "without authentication",
            ),
            ("state_dir = \"s\"\ndownload_dir = \"d\"\n[api]\nusername = \"u\"\n", "api.username"),
            (
                "state_dir = \"s\"\ndownload_dir = \"d\"\n[api]\nusername = \"u\"\npassword_hash = \"x\"\n",
                "api.password_hash",
            ),
            ("state_dir = \"s\"\ndownload_dir = \"d\"\n[api]\norigins = [\"evil\"]\n", "api.origins"),
            ("state_dir = \"s\"\ndownload_dir = \"d\"\n[api]\nmax_connections = 0\n", "max_connections"),
        ];
        for (text, key) in cases {
            let error = parse(text).unwrap_err().to_string();
            assert!(error.contains(key), "{error} should name {key}");
        }
    }
}
