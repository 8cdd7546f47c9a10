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

async fn remove(
    State(daemon): State<Arc<Daemon>>,
    Path(info_hash): Path<String>,
) -> ApiResult<Response> {
    let info_hash = parse_hash(&info_hash)?;
    blocking(move || Ok(daemon.remove(info_hash)?)).await?;
    Ok(Json(serde_json::json!({ "removed": info_hash.to_hex() })).into_response())
}

async fn pause(
    State(daemon): State<Arc<Daemon>>,
    Path(info_hash): Path<String>,
) -> ApiResult<Response> {
    let info_hash = parse_hash(&info_hash)?;
    blocking(move || Ok(daemon.pause(info_hash)?)).await?;
    Ok(Json(serde_json::json!({ "paused": info_hash.to_hex() })).into_response())
}

async fn resume(
    State(daemon): State<Arc<Daemon>>,
    Path(info_hash): Path<String>,
) -> ApiResult<Response> {
    let info_hash = parse_hash(&info_hash)?;
    blocking(move || Ok(daemon.resume(info_hash)?)).await?;
    Ok(Json(serde_json::json!({ "resumed": info_hash.to_hex() })).into_response())
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
