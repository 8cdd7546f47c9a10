//! The HTTP control and status API and `/metrics` (axum on its own thread and
//! tokio runtime; never a shard thread).
//!
//! Layer: control plane. Every handler runs the daemon call on tokio's
//! blocking pool: daemon operations wait for shards (add, pause, remove) and
//! take locks, and must not stall the runtime that serves other requests.
//!
//! Routes (JSON unless noted; errors are `{"error": "..."}` with a 4xx/5xx):
//! * `GET  /api/v1/status` — the daemon ([`super::StatusView`])
//! * `GET  /api/v1/torrents` — every torrent ([`super::TorrentView`])
//! * `POST /api/v1/torrents` — add: a JSON body `{"path": "/x.torrent",
//!   "download_dir": "...", "paused": false}` or the raw .torrent bytes
//!   (any other content type; `?download_dir=&paused=` as query) → 201
//!   `{"info_hash", "name"}`; 409 when already there
//! * `GET  /api/v1/torrents/{info_hash}`, `DELETE` (stop and forget; data kept)
//! * `POST /api/v1/torrents/{info_hash}/pause`, `.../resume`
//! * `POST /api/v1/torrents/{info_hash}/limits` — `{"upload_rate": "1M",
//!   "download_rate": 0}` (bytes per second or sizes like `512K`; 0 = none;
//!   a missing key keeps its value), remembered across restarts
//! * `POST /api/v1/limits` — the same for the whole process, until restart
//! * `GET  /metrics` — Prometheus text ([`super::metrics`])
//!
//! No authentication: the API listens on 127.0.0.1 by default. Binding it
//! elsewhere logs a warning; put a reverse proxy with authentication in
//! front of it if it must be reachable from other hosts.

use super::registry::Source;
use super::{Daemon, DaemonError};
use crate::metainfo::{InfoHash, METAINFO_FILE_MAX_BYTES};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Starts the API thread; returns the address it listens on (the configured
/// one, with the port filled in when it was 0).
pub fn start(daemon: Arc<Daemon>) -> Result<SocketAddr, DaemonError> {
    let addr = daemon.config().api_listen;
    let api_error = |source| DaemonError::Api { addr, source };
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the control API has no authentication and listens beyond loopback");
    }
    let listener = std::net::TcpListener::bind(addr).map_err(api_error)?;
    listener.set_nonblocking(true).map_err(api_error)?;
    let bound = listener.local_addr().map_err(api_error)?;
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(api_error)?;
    let stop = daemon.stop_receiver();
    let app = router(daemon.clone());
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
            if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                tracing::error!(%error, "control API stopped");
            }
        });
    })?;
    Ok(bound)
}

/// The routes over `daemon`.
pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/torrents", get(list).post(add))
        .route("/api/v1/torrents/{info_hash}", get(one).delete(remove))
        .route("/api/v1/torrents/{info_hash}/pause", post(pause))
        .route("/api/v1/torrents/{info_hash}/resume", post(resume))
        .route("/api/v1/torrents/{info_hash}/limits", post(torrent_limits))
        .route("/api/v1/limits", post(process_limits))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(METAINFO_FILE_MAX_BYTES as usize))
        .with_state(daemon)
}

/// An API error as HTTP.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<DaemonError> for ApiError {
    fn from(error: DaemonError) -> ApiError {
        let code = match &error {
            DaemonError::BadTorrent(_) | DaemonError::ReadTorrent { .. } => StatusCode::BAD_REQUEST,
            DaemonError::Duplicate(_) => StatusCode::CONFLICT,
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
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let added = if is_json {
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
    } else {
        let bytes = body.to_vec();
        blocking(move || {
            Ok(daemon.add_torrent(bytes, query.download_dir, Source::Api, query.paused)?)
        })
        .await?
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
    body: Bytes,
) -> ApiResult<Response> {
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

async fn process_limits(State(daemon): State<Arc<Daemon>>, body: Bytes) -> ApiResult<Response> {
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
