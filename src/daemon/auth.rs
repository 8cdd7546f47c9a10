//! Who may use the control API, and the checks that keep browsers from using
//! it on an attacker's behalf: the API token, the optional username and
//! password, login sessions (cookies), and the `Host` / `Origin` checks.
//!
//! Layer: control plane, beside [`super::api`]. The checks are pure functions
//! over header text (unit-tested below); the only I/O is reading or creating
//! the token file ([`load_or_create_token`]).
//!
//! Invariants:
//! * secrets are compared in constant time (`subtle`): the token byte by
//!   byte, the password as a PBKDF2-HMAC-SHA256 hash with a random salt (the
//!   config never needs to hold the password itself: `password_hash`);
//! * a session id is 256 random bits from the OS; the store holds at most
//!   [`SESSIONS_MAX`] sessions, each valid for `session_ttl_secs` after login;
//! * the token file is created with mode 0600 and never rewritten once it
//!   exists; a group- or world-readable one is tightened at start;
//! * every header value looked at is bounded ([`HEADER_VALUE_MAX_BYTES`]).
//!
//! The session store is shared with the qBittorrent-compatible API (issue
//! 16): its `/api/v2/auth/login` calls [`ApiAccess::login`] and sets the id
//! as cookie `SID` instead of [`SESSION_COOKIE`].

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The API token file in the state dir.
pub const TOKEN_FILE: &str = "api.token";
/// Random bytes in a token or session id (hex: twice as many characters).
pub const SECRET_BYTES: usize = 32;
/// Login sessions held at most; the oldest is dropped for a new one.
pub const SESSIONS_MAX: usize = 1024;
/// How long a login session lasts by default.
pub const SESSION_TTL_SECS_DEFAULT: u64 = 24 * 3600;
/// PBKDF2 rounds of a password hash made by ringbit (OWASP 2023 asks
/// 600,000 for SHA-256; a login then costs ~0.2 s of one core here, and
/// logins run one at a time, see `api`).
pub const PASSWORD_ROUNDS_DEFAULT: u32 = 600_000;
/// Fewest rounds accepted in a configured `password_hash`.
pub const PASSWORD_ROUNDS_MIN: u32 = 10_000;
/// Most rounds accepted (a typo must not make every login take minutes).
pub const PASSWORD_ROUNDS_MAX: u32 = 10_000_000;
/// Longest username or password accepted at login.
pub const CREDENTIAL_MAX_BYTES: usize = 1024;
/// Longest `Host`, `Origin`, `Referer`, `Cookie` or `Authorization` value looked at.
pub const HEADER_VALUE_MAX_BYTES: usize = 8192;
/// The session cookie of the ringbit API.
pub const SESSION_COOKIE: &str = "ringbit_sid";

/// Why the API's credentials cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("API token file {}: {op}: {source}", path.display())]
    TokenFile { path: PathBuf, op: &'static str, source: std::io::Error },
    #[error("API token file {} does not hold a {}-digit hex token (delete it to make a new one)", path.display(), SECRET_BYTES * 2)]
    BadTokenFile { path: PathBuf },
    #[error("password_hash: {0} (make one with `ringbit daemon --hash-password`)")]
    BadPasswordHash(String),
}

/// A new random secret (token or session id) as lowercase hex.
pub fn new_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    data_encoding::HEXLOWER.encode(&bytes)
}

/// Reads `<state_dir>/api.token`, creating it (mode 0600) with a new random
/// token when absent.
pub fn load_or_create_token(state_dir: &Path) -> Result<String, AuthError> {
    let path = state_dir.join(TOKEN_FILE);
    let error = |op, source| AuthError::TokenFile { path: path.clone(), op, source };
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
        Ok(mut file) => {
            let token = new_secret();
            file.write_all(format!("{token}\n").as_bytes()).map_err(|e| error("write", e))?;
            file.sync_all().map_err(|e| error("fsync", e))?;
            tracing::info!(path = %path.display(), "created the API token");
            return Ok(token);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(error("create", e)),
    }
    let meta = std::fs::metadata(&path).map_err(|e| error("stat", e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "the API token file was readable by others: now 0600");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| error("chmod", e))?;
    }
    if meta.len() > 256 {
        return Err(AuthError::BadTokenFile { path });
    }
    let text = std::fs::read_to_string(&path).map_err(|e| error("read", e))?;
    let token = text.trim();
    let hex = token.len() == SECRET_BYTES * 2 && token.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex {
        return Err(AuthError::BadTokenFile { path });
    }
    Ok(token.to_ascii_lowercase())
}

/// Constant-time equality of two secrets (the length is not secret: tokens
/// and session ids have a fixed one).
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// A salted PBKDF2-HMAC-SHA256 password hash, written
/// `pbkdf2-sha256$<rounds>$<salt hex>$<hash hex>`.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    rounds: u32,
    salt: [u8; 16],
    hash: [u8; 32],
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PasswordHash({} rounds)", self.rounds)
    }
}

impl PasswordHash {
    /// Hashes `password` with a new random salt.
    pub fn new(password: &str, rounds: u32) -> PasswordHash {
        use rand::RngCore;
        let mut salt = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let hash = derive(password.as_bytes(), &salt, rounds);
        PasswordHash { rounds, salt, hash }
    }

    /// Parses the written form.
    pub fn parse(text: &str) -> Result<PasswordHash, AuthError> {
        let bad = |m: &str| AuthError::BadPasswordHash(m.to_string());
        let parts: Vec<&str> = text.trim().split('$').collect();
        let [scheme, rounds, salt, hash] = parts[..] else {
            return Err(bad("expected pbkdf2-sha256$ROUNDS$SALT$HASH"));
        };
        if scheme != "pbkdf2-sha256" {
            return Err(bad("only pbkdf2-sha256 is supported"));
        }
        let rounds: u32 = rounds.parse().map_err(|_| bad("rounds is not a number"))?;
        if !(PASSWORD_ROUNDS_MIN..=PASSWORD_ROUNDS_MAX).contains(&rounds) {
            return Err(AuthError::BadPasswordHash(format!(
                "rounds must be between {PASSWORD_ROUNDS_MIN} and {PASSWORD_ROUNDS_MAX}"
            )));
        }
        let decode = |s: &str| data_encoding::HEXLOWER_PERMISSIVE.decode(s.as_bytes()).ok();
        let salt = decode(salt)
            .and_then(|v| <[u8; 16]>::try_from(v).ok())
            .ok_or_else(|| bad("salt is not 32 hex digits"))?;
        let hash = decode(hash)
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or_else(|| bad("hash is not 64 hex digits"))?;
        Ok(PasswordHash { rounds, salt, hash })
    }

    /// True when `candidate` is the password (constant-time compare).
    pub fn verify(&self, candidate: &str) -> bool {
        if candidate.len() > CREDENTIAL_MAX_BYTES {
            return false;
        }
        let got = derive(candidate.as_bytes(), &self.salt, self.rounds);
        secrets_equal(&got, &self.hash)
    }
}

impl std::fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex = data_encoding::HEXLOWER;
        write!(
            f,
            "pbkdf2-sha256${}${}${}",
            self.rounds,
            hex.encode(&self.salt),
            hex.encode(&self.hash)
        )
    }
}

fn derive(password: &[u8], salt: &[u8], rounds: u32) -> [u8; 32] {
    pbkdf2::pbkdf2_hmac_array::<sha2::Sha256, 32>(password, salt, rounds)
}

/// The configured username and password.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub username: String,
    pub password: PasswordHash,
}

impl Credentials {
    /// True when both match. The password is always hashed, so a wrong
    /// username costs as long as a wrong password.
    pub fn check(&self, username: &str, password: &str) -> bool {
        let password_ok = self.password.verify(password);
        let user_ok = username.len() == self.username.len()
            && secrets_equal(username.as_bytes(), self.username.as_bytes());
        password_ok & user_ok
    }
}

/// Login sessions: id → expiry, bounded.
pub struct Sessions {
    ttl: Duration,
    map: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Sessions {
        Sessions { ttl, map: Mutex::new(HashMap::new()) }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new session valid until `now + ttl`. Expired sessions are dropped
    /// first; at [`SESSIONS_MAX`] the one closest to expiry goes.
    pub fn create(&self, now: Instant) -> String {
        let id = new_secret();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, expiry| *expiry > now);
        if map.len() >= SESSIONS_MAX {
            if let Some(oldest) = map.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), now + self.ttl);
        id
    }

    /// True when `id` is a session that has not expired at `now`.
    pub fn valid(&self, id: &str, now: Instant) -> bool {
        if id.len() != SECRET_BYTES * 2 {
            return false;
        }
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id).is_some_and(|expiry| *expiry > now)
    }

    /// Ends a session (logout).
    pub fn remove(&self, id: &str) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The access policy of the API, built from the config at start.
pub struct ApiAccess {
    /// `false` only with `[api] auth = false` on a loopback address.
    pub auth_required: bool,
    pub token: String,
    pub credentials: Option<Credentials>,
    pub sessions: Sessions,
    /// Host names accepted beside IP literals (always `localhost`).
    pub hosts: Vec<String>,
    /// Origins accepted beside the request's own (`scheme://host[:port]`).
    pub origins: Vec<String>,
    /// `/metrics` without credentials (`[api] metrics_public = true`).
    pub metrics_public: bool,
}

/// Why a request was refused before it reached a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `Host`, or one that is not an IP literal or a configured name:
    /// a DNS rebinding attempt or a misconfigured proxy (403).
    Host(String),
    /// A state-changing request from another origin (403).
    Origin(String),
    /// No valid token or session (401).
    Unauthenticated,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Host(host) => write!(
                f,
                "Host {host:?} is not an IP address or a name in [api] hosts (DNS rebinding guard)"
            ),
            Refusal::Origin(origin) => write!(
                f,
                "a state-changing request from origin {origin:?} is refused (not this API's origin nor in [api] origins)"
            ),
            Refusal::Unauthenticated => write!(
                f,
                "authentication required: send `Authorization: Bearer <token>` (the token is in <state_dir>/api.token) or log in"
            ),
        }
    }
}

/// The request headers the checks read (each `None` when absent, not UTF-8
/// or longer than [`HEADER_VALUE_MAX_BYTES`]).
#[derive(Default, Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub host: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub referer: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub cookie: Option<&'a str>,
    /// Anything but GET, HEAD and OPTIONS.
    pub changes_state: bool,
}

impl ApiAccess {
    /// Checks where a request comes from: `Host`, then (state-changing
    /// requests) `Origin` / `Referer`. Runs before authentication and for
    /// every path.
    pub fn check_origin(&self, req: &RequestFacts) -> Result<(), Refusal> {
        let host = req.host.unwrap_or("");
        if !host_allowed(host, &self.hosts) {
            return Err(Refusal::Host(host.chars().take(200).collect()));
        }
        if req.changes_state {
            let origin = match (req.origin, req.referer) {
                (Some(origin), _) => Some(origin),
                (None, Some(referer)) => Some(referer_origin(referer).unwrap_or(referer)),
                (None, None) => None,
            };
            // No Origin and no Referer: not a browser (browsers send Origin
            // on every cross-site POST, PUT and DELETE).
            if let Some(origin) = origin {
                if !origin_allowed(origin, host, &self.origins) {
                    return Err(Refusal::Origin(origin.chars().take(200).collect()));
                }
            }
        }
        Ok(())
    }

    /// True when the request carries the token or a live session cookie
    /// named `cookie_name` (or auth is off).
    pub fn authenticated(&self, req: &RequestFacts, cookie_name: &str, now: Instant) -> bool {
        if !self.auth_required {
            return true;
        }
        if let Some(token) = req.authorization.and_then(bearer_token) {
            if secrets_equal(token.as_bytes(), self.token.as_bytes()) {
                return true;
            }
        }
        req.cookie
            .and_then(|c| cookie_value(c, cookie_name))
            .is_some_and(|id| self.sessions.valid(id, now))
    }

    /// Checks a username and password; a new session id when they match.
    /// `None` also when no credentials are configured.
    pub fn login(&self, username: &str, password: &str, now: Instant) -> Option<String> {
        let credentials = self.credentials.as_ref()?;
        if username.len() > CREDENTIAL_MAX_BYTES || password.len() > CREDENTIAL_MAX_BYTES {
            return None;
        }
        credentials.check(username, password).then(|| self.sessions.create(now))
    }
}

/// The host part of a `Host` header value (`name`, `name:port`, `1.2.3.4:80`,
/// `[::1]:80`), or `None` when malformed.
pub fn host_name(host: &str) -> Option<&str> {
    if host.is_empty() || host.len() > HEADER_VALUE_MAX_BYTES {
        return None;
    }
    if let Some(rest) = host.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return Some(inside);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if is_port(port) && !name.contains(':') => Some(name),
        Some(_) => None,
        None => Some(host),
    }
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.parse::<u16>().is_ok()
}

/// True when the `Host` header names an IP literal, `localhost`, or one of
/// `names` (ASCII case-insensitive). A DNS rebinding attack reaches us under
/// the attacker's name, which is none of these.
pub fn host_allowed(host: &str, names: &[String]) -> bool {
    let Some(name) = host_name(host) else { return false };
    let name = name.strip_suffix('.').unwrap_or(name);
    name.parse::<IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// The origin (`scheme://host[:port]`) of a URL such as a `Referer`.
pub fn referer_origin(url: &str) -> Option<&str> {
    let scheme_end = url.find("://")?;
    let rest = &url[scheme_end + 3..];
    let end = rest.find(['/', '?', '#']).map_or(url.len(), |i| scheme_end + 3 + i);
    Some(&url[..end])
}

/// True when `origin` is this API's own origin (`http://` or `https://`
/// followed by exactly the request's `Host`) or one of `extra`. The opaque
/// origin `null` (sandboxed frames, file: pages) is never accepted.
pub fn origin_allowed(origin: &str, host: &str, extra: &[String]) -> bool {
    if origin.len() > HEADER_VALUE_MAX_BYTES {
        return false;
    }
    let origin = origin.trim_end_matches('/');
    if extra.iter().any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin)) {
        return true;
    }
    let authority = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(|a| !host.is_empty() && a.eq_ignore_ascii_case(host))
}

/// The token of an `Authorization: Bearer <token>` value.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"'))
    })
}

/// The `Set-Cookie` value for a new session: HttpOnly (no script reads it),
/// SameSite=Strict (no other site's page sends it), path `/`.
pub fn session_cookie(name: &str, id: &str, ttl: Duration) -> String {
    format!("{name}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}", ttl.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> ApiAccess {
        ApiAccess {
            auth_required: true,
            token: "ab".repeat(32),
            credentials: Some(Credentials {
                username: "admin".into(),
                password: PasswordHash::new("hunter2", PASSWORD_ROUNDS_MIN),
            }),
            sessions: Sessions::new(Duration::from_secs(60)),
            hosts: vec!["seedbox.example".into()],
            origins: vec!["https://ui.example".into()],
            metrics_public: false,
        }
    }

    #[test]
    fn host_check_takes_ip_literals_localhost_and_configured_names() {
        let names = vec!["Seedbox.Example".to_string()];
        for ok in [
            "127.0.0.1",
            "127.0.0.1:9091",
            "[::1]:9091",
            "[::1]",
            "10.1.2.3:80",
            "localhost:9091",
            "LOCALHOST",
            "seedbox.example:443",
            "seedbox.example.",
        ] {
            assert!(host_allowed(ok, &names), "{ok}");
        }
        for bad in [
            "",
            "attacker.example",
            "attacker.example:9091",
            "127.0.0.1.attacker.example",
            "localhost.attacker.example",
            "seedbox.example:99999",
            "seedbox.example:",
            "[::1",
            "[::1]x",
            "::1",
            "127.0.0.1:80:80",
            "seedbox.example@attacker.example",
        ] {
            assert!(!host_allowed(bad, &names), "{bad}");
        }
        assert!(!host_allowed(&"a".repeat(HEADER_VALUE_MAX_BYTES + 1), &names));
    }

    #[test]
    fn origin_check_takes_only_the_same_origin_or_configured_ones() {
        let extra = vec!["https://ui.example".to_string()];
        assert!(origin_allowed("http://127.0.0.1:9091", "127.0.0.1:9091", &extra));
        assert!(origin_allowed("https://LOCALHOST:9091", "localhost:9091", &extra));
        assert!(origin_allowed("https://ui.example/", "127.0.0.1:9091", &extra));
        for bad in [
            "null",
            "http://attacker.example",
            "http://127.0.0.1:9092",
            "http://127.0.0.1",
            "ftp://127.0.0.1:9091",
            "http://127.0.0.1:9091.attacker.example",
            "",
        ] {
            assert!(!origin_allowed(bad, "127.0.0.1:9091", &extra), "{bad}");
        }
        assert!(!origin_allowed("http://", "", &extra));
        assert_eq!(referer_origin("http://a.example:1/x?y#z"), Some("http://a.example:1"));
        assert_eq!(referer_origin("https://a.example"), Some("https://a.example"));
        assert_eq!(referer_origin("garbage"), None);
    }

    #[test]
    fn state_changing_requests_need_a_matching_origin_or_none() {
        let a = access();
        let mut req = RequestFacts {
            host: Some("127.0.0.1:9091"),
            changes_state: true,
            ..RequestFacts::default()
        };
        assert_eq!(a.check_origin(&req), Ok(()), "no Origin: not a browser");
        req.origin = Some("http://attacker.example");
        assert!(matches!(a.check_origin(&req), Err(Refusal::Origin(_))));
        req.origin = None;
        req.referer = Some("http://attacker.example/page.html");
        assert!(matches!(a.check_origin(&req), Err(Refusal::Origin(_))));
        req.referer = Some("http://127.0.0.1:9091/ui/");
        assert_eq!(a.check_origin(&req), Ok(()));
        // A read is not checked for origin (no CORS header lets a page read it).
        req.changes_state = false;
        req.origin = Some("http://attacker.example");
        assert_eq!(a.check_origin(&req), Ok(()));
        req.host = Some("attacker.example:9091");
        assert!(matches!(a.check_origin(&req), Err(Refusal::Host(_))));
        req.host = None;
        assert!(matches!(a.check_origin(&req), Err(Refusal::Host(_))));
    }

    #[test]
    fn token_compare_and_bearer_parsing() {
        let a = access();
        let now = Instant::now();
        let token = format!("Bearer {}", "ab".repeat(32));
        let req = |auth: Option<&'static str>| RequestFacts {
            authorization: auth,
            ..RequestFacts::default()
        };
        let token: &'static str = Box::leak(token.into_boxed_str());
        assert!(a.authenticated(&req(Some(token)), SESSION_COOKIE, now));
        assert!(!a.authenticated(&req(None), SESSION_COOKIE, now));
        let wrong: &'static str =
            Box::leak(format!("Bearer {}", "ab".repeat(31) + "ac").into_boxed_str());
        assert!(!a.authenticated(&req(Some(wrong)), SESSION_COOKIE, now));
        assert!(!a.authenticated(&req(Some("Bearer ")), SESSION_COOKIE, now));
        assert!(!a.authenticated(&req(Some("Basic YWRtaW46aHVudGVyMg==")), SESSION_COOKIE, now));
        assert!(!a.authenticated(&req(Some("Bearer abab")), SESSION_COOKIE, now));
        assert!(secrets_equal(b"abc", b"abc"));
        assert!(!secrets_equal(b"abc", b"abd"));
        assert!(!secrets_equal(b"abc", b"abcd"));
        assert_eq!(bearer_token("bearer  xyz "), Some("xyz"));
    }

    #[test]
    fn login_sessions_expire_and_are_bounded() {
        let a = access();
        let now = Instant::now();
        assert_eq!(a.login("admin", "wrong", now), None);
        assert_eq!(a.login("root", "hunter2", now), None);
        let id = a.login("admin", "hunter2", now).expect("right credentials");
        let cookie = format!("other=1; {SESSION_COOKIE}={id}");
        let facts = RequestFacts { cookie: Some(&cookie), ..RequestFacts::default() };
        assert!(a.authenticated(&facts, SESSION_COOKIE, now));
        assert!(!a.authenticated(&facts, "SID", now), "another cookie name");
        assert!(!a.authenticated(&facts, SESSION_COOKIE, now + Duration::from_secs(61)));
        a.sessions.remove(&id);
        assert!(!a.authenticated(&facts, SESSION_COOKIE, now));
        for _ in 0..SESSIONS_MAX + 10 {
            a.sessions.create(now);
        }
        assert_eq!(a.sessions.len(), SESSIONS_MAX);
        // Expired ones make room first.
        a.sessions.create(now + Duration::from_secs(120));
        assert_eq!(a.sessions.len(), 1);
    }

    #[test]
    fn password_hash_round_trips_and_rejects_nonsense() {
        let hash = PasswordHash::new("pässword", PASSWORD_ROUNDS_MIN);
        let parsed = PasswordHash::parse(&hash.to_string()).unwrap();
        assert_eq!(parsed, hash);
        assert!(parsed.verify("pässword"));
        assert!(!parsed.verify("password"));
        assert!(!parsed.verify(&"x".repeat(CREDENTIAL_MAX_BYTES + 1)));
        for bad in [
            "",
            "plain",
            "md5$1$00$00",
            "pbkdf2-sha256$10$00112233445566778899aabbccddeeff$".to_string().as_str(),
            "pbkdf2-sha256$100000$0011$00",
            "pbkdf2-sha256$x$00112233445566778899aabbccddeeff$00",
        ] {
            assert!(PasswordHash::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cookies_and_token_file() {
        assert_eq!(cookie_value("a=1; SID=xyz; b=2", "SID"), Some("xyz"));
        assert_eq!(cookie_value("SIDX=1", "SID"), None);
        let c = session_cookie("SID", "abc", Duration::from_secs(60));
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Max-Age=60")
        );

        let dir = tempfile::tempdir().unwrap();
        let token = load_or_create_token(dir.path()).unwrap();
        assert_eq!(token.len(), SECRET_BYTES * 2);
        let path = dir.path().join(TOKEN_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create_token(dir.path()).unwrap(), token, "kept across starts");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load_or_create_token(dir.path()).unwrap(), token);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&path, "short\n").unwrap();
        assert!(matches!(load_or_create_token(dir.path()), Err(AuthError::BadTokenFile { .. })));
    }
}
