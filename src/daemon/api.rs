//! The HTTP control and status API and `/metrics` (axum on its own thread and
//! tokio runtime; never a shard thread).
//!
//! Layer: control plane. Every handler runs the daemon call on tokio's
//! blocking pool: daemon operations wait for shards (add, pause, remove) and
//! take locks, and must not stall the runtime that serves other requests.
//!
//! Routes (JSON unless noted; errors are `{"error": "..."}` with a 4xx/5xx):
//! * `POST /api/v1/auth/login` — `{"username", "password"}` → a session
//!   cookie ([`auth::SESSION_COOKIE`]); `POST /api/v1/auth/logout`
//! * `GET  /api/v1/status` — the daemon ([`super::StatusView`])
//! * `GET  /api/v1/torrents` — every torrent ([`super::TorrentView`])
//! * `POST /api/v1/torrents` — add: `Content-Type: application/json` with
//!   `{"path": "/x.torrent", "download_dir": "...", "paused": false}`, or
//!   `Content-Type: application/x-bittorrent` with the .torrent bytes
//!   (`?download_dir=&paused=` as query); any other type is 415 → 201
//!   `{"info_hash", "name"}`; 409 when already there
//! * `GET  /api/v1/torrents/{info_hash}`, `DELETE` (stop and forget; data kept)
//! * `POST /api/v1/torrents/{info_hash}/pause`, `.../resume`
//! * `POST /api/v1/torrents/{info_hash}/limits` — `{"upload_rate": "1M",
//!   "download_rate": 0}` (bytes per second or sizes like `512K`; 0 = none;
//!   a missing key keeps its value), remembered across restarts
//! * `POST /api/v1/limits` — the same for the whole process, until restart
//! * `GET  /metrics` — Prometheus text ([`super::metrics`])
//!
//! Every request passes [`guard`] first: the `Host` check (DNS rebinding),
//! the `Origin`/`Referer` check on state-changing requests (CSRF), then
//! authentication (the token in `<state_dir>/api.token` as `Authorization:
//! Bearer`, or a login session cookie); see [`super::auth`] and
//! docs/security.md. No CORS header is ever sent, so no other site's page can
//! read a reply.
//!
//! Server limits (config `[api]`): a request head must arrive within
//! `header_read_timeout_secs` (hyper's timer, which also runs while a
//! keep-alive connection waits for its next request, so idle connections
//! close after it too); a request must be answered within
//! `request_timeout_secs`; at most `max_connections` connections (more are
//! closed at accept); bodies at most [`JSON_BODY_MAX_BYTES`] (a .torrent
//! upload: the metainfo limit); heads at most [`HEAD_MAX_BYTES`]. Each
//! connection is its own task, so a slow client holds only its own slot.

use super::auth::{self, ApiAccess, Refusal, RequestFacts, Sessions};
use super::registry::Source;
use super::{Daemon, DaemonError};
use crate::metainfo::{InfoHash, METAINFO_FILE_MAX_BYTES};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest JSON request body.
pub const JSON_BODY_MAX_BYTES: usize = 64 * 1024;
/// Largest request head (request line and headers) hyper buffers.
pub const HEAD_MAX_BYTES: usize = 64 * 1024;
/// Most headers in a request.
pub const HEADERS_MAX: usize = 100;
/// Pause after a failed accept (EMFILE) before the next one.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// What every request is checked against, shared by the middleware and the
/// login handlers.
pub struct Guard {
    pub access: ApiAccess,
    /// Logins run one at a time: each costs a PBKDF2 hash, so a flood of
    /// guesses takes at most one core and queues behind itself.
    login_lock: tokio::sync::Mutex<()>,
    request_timeout: Duration,
}

impl Guard {
    /// The policy from the daemon's config and token.
    pub fn new(config: &super::config::DaemonConfig, token: String) -> Guard {
        let api = &config.api;
        Guard {
            access: ApiAccess {
                auth_required: api.auth,
                token,
                credentials: api.credentials.clone(),
                sessions: Sessions::new(Duration::from_secs(api.session_ttl_secs)),
                hosts: api.hosts.clone(),
                origins: api.origins.clone(),
                metrics_public: api.metrics_public,
            },
            login_lock: tokio::sync::Mutex::new(()),
            request_timeout: Duration::from_secs(api.request_timeout_secs),
        }
    }
}

/// Starts the API thread; returns the address it listens on (the configured
/// one, with the port filled in when it was 0). Creates the API token file
/// on first start.
pub fn start(daemon: Arc<Daemon>) -> Result<SocketAddr, DaemonError> {
    let config = daemon.config();
    let addr = config.api_listen;
    let api_error = |source| DaemonError::Api { addr, source };
    // The config refuses this already; a second look costs nothing.
    if !config.api.auth && !addr.ip().is_loopback() {
        return Err(DaemonError::Api {
            addr,
            source: std::io::Error::other("no authentication on a non-loopback address"),
        });
    }
    let token = auth::load_or_create_token(&config.state_dir)?;
    let guard = Arc::new(Guard::new(config, token));
    let limits = ServerLimits {
        header_read_timeout: Duration::from_secs(config.api.header_read_timeout_secs),
        max_connections: config.api.max_connections,
    };
    let listener = std::net::TcpListener::bind(addr).map_err(api_error)?;
    listener.set_nonblocking(true).map_err(api_error)?;
    let bound = listener.local_addr().map_err(api_error)?;
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(api_error)?;
    let stop = daemon.stop_receiver();
    let app = router(daemon.clone(), guard);
    daemon.spawn("ringbit-api", move || {
        runtime.block_on(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(error) => {
                    tracing::error!(%error, "control API cannot listen");
                    return;
                }
            };
            let shutdown = async move {
                let _ = tokio::task::spawn_blocking(move || stop.recv()).await;
            };
            serve(listener, app, limits, shutdown).await;
        });
    })?;
    Ok(bound)
}

/// Connection-level limits of [`serve`].
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

/// Accepts connections until `shutdown` resolves, each served by its own
/// task under `limits`; open connections are dropped with the runtime.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ServerLimits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(HEAD_MAX_BYTES)
        .max_headers(HEADERS_MAX);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "control API cannot accept");
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, max = limits.max_connections, "API connection refused: api.max_connections open");
            continue;
        };
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "API connection ended");
            }
            drop(slot);
        });
    }
}

/// The routes over `daemon`, behind `guard`.
pub fn router(daemon: Arc<Daemon>, guard: Arc<Guard>) -> Router {
    let torrent_upload_max = METAINFO_FILE_MAX_BYTES as usize;
    let daemon_for_qbt = daemon.clone();
    let api = Router::new()
        .route("/api/v1/status", get(status))
        .route(
            "/api/v1/torrents",
            get(list).post(add).layer(DefaultBodyLimit::max(torrent_upload_max)),
        )
        .route("/api/v1/torrents/{info_hash}", get(one).delete(remove))
        .route("/api/v1/torrents/{info_hash}/pause", post(pause))
        .route("/api/v1/torrents/{info_hash}/resume", post(resume))
        .route("/api/v1/torrents/{info_hash}/limits", post(torrent_limits))
        .route("/api/v1/limits", post(process_limits))
        .route("/metrics", get(metrics))
        .with_state(daemon);
    let login = Router::new()
        .route(LOGIN_PATH, post(login))
        .route("/api/v1/auth/logout", post(logout))
        .with_state(guard.clone());
    let qbt = super::qbt::router(daemon_for_qbt, guard.clone());
    api.merge(login)
        .merge(qbt)
        .layer(axum::middleware::from_fn_with_state(guard, check))
        .layer(DefaultBodyLimit::max(JSON_BODY_MAX_BYTES))
}

/// The login path (open to unauthenticated requests).
const LOGIN_PATH: &str = "/api/v1/auth/login";

/// A header's value as text, if present, UTF-8 and not too long.
fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= auth::HEADER_VALUE_MAX_BYTES)
}

/// The facts of a request the access checks read.
pub fn request_facts<'a>(headers: &'a HeaderMap, method: &Method) -> RequestFacts<'a> {
    RequestFacts {
        host: header_text(headers, header::HOST),
        origin: header_text(headers, header::ORIGIN),
        referer: header_text(headers, header::REFERER),
        authorization: header_text(headers, header::AUTHORIZATION),
        cookie: header_text(headers, header::COOKIE),
        changes_state: !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS),
    }
}

/// A refused request as HTTP: 403 for where it came from, 401 (with a
/// `WWW-Authenticate` challenge) for missing credentials.
pub fn refusal_response(refusal: &Refusal) -> Response {
    let code = match refusal {
        Refusal::Host(_) | Refusal::Origin(_) => StatusCode::FORBIDDEN,
        Refusal::Unauthenticated => StatusCode::UNAUTHORIZED,
    };
    let mut response = ApiError(code, refusal.to_string()).into_response();
    if code == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"ringbit\""));
    }
    response
}

/// The middleware in front of every route: where the request comes from,
/// who sends it, and how long it may take.
async fn check(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let facts = request_facts(request.headers(), request.method());
    if let Err(refusal) = guard.access.check_origin(&facts) {
        tracing::debug!(%refusal, "API request refused");
        return refusal_response(&refusal);
    }
    let path = request.uri().path();
    // The qBittorrent-compatible API: its own cookie name, and 403 for no
    // credentials (what qBittorrent answers, and what Sonarr reads as "this
    // API exists").
    let qbt = path.starts_with("/api/v2/");
    let open = path == LOGIN_PATH
        || path == "/api/v1/auth/logout"
        || path == super::qbt::LOGIN_PATH
        || path == "/api/v2/auth/logout"
        || (path == "/metrics" && guard.access.metrics_public);
    let cookie = if qbt { super::qbt::SID_COOKIE } else { auth::SESSION_COOKIE };
    if !open && !guard.access.authenticated(&facts, cookie, Instant::now()) {
        if qbt {
            return (StatusCode::FORBIDDEN, "Forbidden").into_response();
        }
        return refusal_response(&Refusal::Unauthenticated);
    }
    match tokio::time::timeout(guard.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request not done within {:?} (api.request_timeout_secs)",
                guard.request_timeout
            ),
        )
        .into_response(),
    }
}

/// True when the request's content type is `wanted` (parameters ignored).
fn content_type_is(headers: &HeaderMap, wanted: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(wanted))
}

/// 415 unless the body is JSON: the content types a cross-site form can
/// send without a CORS preflight (text/plain, form encodings) never reach a
/// handler that changes state.
fn require_json(headers: &HeaderMap) -> ApiResult<()> {
    if content_type_is(headers, "application/json") {
        return Ok(());
    }
    Err(ApiError(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send Content-Type: application/json".into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    username: String,
    password: String,
}

async fn login(
    State(guard): State<Arc<Guard>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    require_json(&headers)?;
    let request: Login = serde_json::from_slice(&body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")))?;
    if guard.access.credentials.is_none() {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "no username and password are configured ([api] username, password_hash)".into(),
        ));
    }
    let session = login_session(&guard, request.username, request.password).await;
    let Some(id) = session else {
        return Err(ApiError(StatusCode::UNAUTHORIZED, "wrong username or password".into()));
    };
    let cookie = auth::session_cookie(auth::SESSION_COOKIE, &id, guard.access.sessions.ttl());
    let mut response = Json(serde_json::json!({ "ok": true })).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// Checks credentials (one login at a time, on the blocking pool: a PBKDF2
/// hash costs milliseconds of CPU); a new session id when they match.
pub async fn login_session(
    guard: &Arc<Guard>,
    username: String,
    password: String,
) -> Option<String> {
    let _one_at_a_time = guard.login_lock.lock().await;
    let g = guard.clone();
    tokio::task::spawn_blocking(move || g.access.login(&username, &password, Instant::now()))
        .await
        .ok()
        .flatten()
}

async fn logout(State(guard): State<Arc<Guard>>, headers: HeaderMap) -> Response {
    if let Some(id) = header_text(&headers, header::COOKIE)
        .and_then(|c| auth::cookie_value(c, auth::SESSION_COOKIE))
    {
        guard.access.sessions.remove(id);
    }
    let mut response = Json(serde_json::json!({ "ok": true })).into_response();
    let expired =
        format!("{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0", auth::SESSION_COOKIE);
    if let Ok(value) = HeaderValue::from_str(&expired) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// An API error as HTTP.
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<DaemonError> for ApiError {
    fn from(error: DaemonError) -> ApiError {
        let code = match &error {
            DaemonError::BadTorrent(_) | DaemonError::ReadTorrent { .. } => StatusCode::BAD_REQUEST,
            DaemonError::Roots(super::roots::RootsError::Outside { .. }) => StatusCode::FORBIDDEN,
            DaemonError::Roots(_) => StatusCode::BAD_REQUEST,
            DaemonError::Duplicate(_) => StatusCode::CONFLICT,
            DaemonError::Label(
                super::labels::LabelError::CategoryExists(_)
                | super::labels::LabelError::NoSuchCategory(_),
            ) => StatusCode::CONFLICT,
            DaemonError::Label(_) => StatusCode::BAD_REQUEST,
            DaemonError::NotFound(_) => StatusCode::NOT_FOUND,
            DaemonError::TooMany(_) | DaemonError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, error.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Runs a daemon call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

fn parse_hash(text: &str) -> ApiResult<InfoHash> {
    InfoHash::from_hex(text).ok_or_else(|| {
        ApiError(StatusCode::BAD_REQUEST, format!("{text:?} is not a 40-digit hex info hash"))
    })
}

async fn status(State(daemon): State<Arc<Daemon>>) -> ApiResult<Response> {
    blocking(move || Ok(Json(daemon.status()).into_response())).await
}

async fn list(State(daemon): State<Arc<Daemon>>) -> ApiResult<Response> {
    blocking(move || Ok(Json(daemon.torrents()).into_response())).await
}

async fn one(
    State(daemon): State<Arc<Daemon>>,
    Path(info_hash): Path<String>,
) -> ApiResult<Response> {
    let info_hash = parse_hash(&info_hash)?;
    blocking(move || match daemon.torrent(info_hash) {
        Some(view) => Ok(Json(view).into_response()),
        None => Err(DaemonError::NotFound(info_hash).into()),
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddByPath {
    path: PathBuf,
    #[serde(default)]
    download_dir: Option<PathBuf>,
    #[serde(default)]
    paused: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AddQuery {
    #[serde(default)]
    download_dir: Option<PathBuf>,
    #[serde(default)]
    paused: bool,
}

async fn add(
    State(daemon): State<Arc<Daemon>>,
    Query(query): Query<AddQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let added = if content_type_is(&headers, "application/json") {
        let request: AddByPath = serde_json::from_slice(&body)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")))?;
        if !request.path.is_absolute() {
            return Err(ApiError(StatusCode::BAD_REQUEST, "path must be absolute".into()));
        }
        blocking(move || {
            Ok(daemon.add_torrent_file(
                &request.path,
                request.download_dir,
                Source::Api,
                request.paused,
            )?)
        })
        .await?
    } else if content_type_is(&headers, "application/x-bittorrent") {
        let bytes = body.to_vec();
        blocking(move || {
            Ok(daemon.add_torrent(bytes, query.download_dir, Source::Api, query.paused)?)
        })
        .await?
    } else {
        // text/plain, form encodings and no type at all are what a page on
        // another site can POST without a CORS preflight.
        return Err(ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send Content-Type: application/json ({\"path\": ...}) or application/x-bittorrent (the .torrent bytes)".into(),
        ));
    };
    let (info_hash, name) = added;
    let body = serde_json::json!({ "info_hash": info_hash.to_hex(), "name": name });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Runs `op` on one torrent; the reply is `{key: info_hash}`.
async fn torrent_action(
    daemon: Arc<Daemon>,
    info_hash: &str,
    key: &'static str,
    op: fn(&Daemon, InfoHash) -> Result<(), DaemonError>,
) -> ApiResult<Response> {
    let info_hash = parse_hash(info_hash)?;
    blocking(move || Ok(op(&daemon, info_hash)?)).await?;
    Ok(Json(serde_json::json!({ key: info_hash.to_hex() })).into_response())
}

async fn remove(
    State(daemon): State<Arc<Daemon>>,
    Path(hash): Path<String>,
) -> ApiResult<Response> {
    torrent_action(daemon, &hash, "removed", Daemon::remove).await
}

async fn pause(State(daemon): State<Arc<Daemon>>, Path(hash): Path<String>) -> ApiResult<Response> {
    torrent_action(daemon, &hash, "paused", Daemon::pause).await
}

async fn resume(
    State(daemon): State<Arc<Daemon>>,
    Path(hash): Path<String>,
) -> ApiResult<Response> {
    torrent_action(daemon, &hash, "resumed", Daemon::resume).await
}

/// A rate in a limits request: bytes per second or a size like "10M".
#[derive(Deserialize)]
#[serde(untagged)]
enum Rate {
    Bytes(u64),
    Text(String),
}

impl Rate {
    fn bytes_per_s(&self) -> ApiResult<u64> {
        match self {
            Rate::Bytes(n) => Ok(*n),
            Rate::Text(text) => crate::config::parse_size(text).ok_or_else(|| {
                ApiError(StatusCode::BAD_REQUEST, format!("{text:?} is not a rate like 10M"))
            }),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Limits {
    #[serde(default)]
    upload_rate: Option<Rate>,
    #[serde(default)]
    download_rate: Option<Rate>,
}

impl Limits {
    /// The new (upload, download) given the current ones.
    fn apply(&self, current: (u64, u64)) -> ApiResult<(u64, u64)> {
        let up = match &self.upload_rate {
            Some(rate) => rate.bytes_per_s()?,
            None => current.0,
        };
        let down = match &self.download_rate {
            Some(rate) => rate.bytes_per_s()?,
            None => current.1,
        };
        Ok((up, down))
    }
}

fn parse_limits(body: &[u8]) -> ApiResult<Limits> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")))
}

async fn torrent_limits(
    State(daemon): State<Arc<Daemon>>,
    Path(info_hash): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    require_json(&headers)?;
    let info_hash = parse_hash(&info_hash)?;
    let limits = parse_limits(&body)?;
    let view = blocking(move || {
        let view = daemon.torrent(info_hash).ok_or(DaemonError::NotFound(info_hash))?;
        let (up, down) = limits.apply((view.upload_rate_limit, view.download_rate_limit))?;
        daemon.set_torrent_limits(info_hash, up, down)?;
        Ok(daemon.torrent(info_hash))
    })
    .await?;
    Ok(Json(view).into_response())
}

async fn process_limits(
    State(daemon): State<Arc<Daemon>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    require_json(&headers)?;
    let limits = parse_limits(&body)?;
    let (up, down) = blocking(move || {
        let (up, down) = limits.apply(daemon.process_limits())?;
        daemon.set_process_limits(up, down);
        Ok(daemon.process_limits())
    })
    .await?;
    Ok(Json(serde_json::json!({ "upload_rate_limit": up, "download_rate_limit": down }))
        .into_response())
}

async fn metrics(State(daemon): State<Arc<Daemon>>) -> ApiResult<Response> {
    blocking(move || {
        let text = super::metrics::render(&daemon);
        Ok((
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            text,
        )
            .into_response())
    })
    .await
}
