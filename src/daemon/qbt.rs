//! A subset of qBittorrent's Web API v2 under `/api/v2/`, so tools that
//! speak only that (Sonarr, Radarr, autobrr, qbit_manage, web UIs) can
//! drive ringbit. What is supported, partial and missing:
//! docs/qbittorrent-api.md.
//!
//! Layer: control plane, beside [`super::api`], whose [`super::api::Guard`]
//! runs first for every request (Host and Origin checks, then the `SID`
//! session cookie or the API token; unauthenticated calls get 403 as
//! qBittorrent answers them). Handlers read [`super::TorrentView`]s and call
//! the same [`Daemon`] methods as the ringbit API, on the blocking pool.
//!
//! Version: we report qBittorrent `v4.6.7`, Web API `2.9.3`: clients then use
//! the 4.x names (`pause`/`resume`, states `pausedUP`/`pausedDL`), which
//! every client still speaks.
//!
//! Limits: a `hashes` list holds at most [`HASHES_MAX`] entries; form bodies
//! are bounded by the API's JSON body limit.

use super::api::{login_session, ApiError, Guard};
use super::{Daemon, DaemonError, TorrentView};
use crate::metainfo::InfoHash;
use axum::body::Bytes;
use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// The qBittorrent version we answer as (see the module docs).
pub const QBT_VERSION: &str = "v4.6.7";
/// The Web API version of [`QBT_VERSION`].
pub const WEBAPI_VERSION: &str = "2.9.3";
/// qBittorrent's session cookie.
pub const SID_COOKIE: &str = "SID";
/// The login path (open to unauthenticated requests).
pub const LOGIN_PATH: &str = "/api/v2/auth/login";
/// Most entries in a `hashes` parameter.
pub const HASHES_MAX: usize = 10_000;
/// Largest `torrents/add` request (every .torrent of it together).
pub const ADD_BODY_MAX_BYTES: usize = crate::metainfo::METAINFO_FILE_MAX_BYTES as usize;
/// Most .torrent files in one `torrents/add`.
pub const ADD_TORRENTS_MAX: usize = 1000;
/// Largest text field of a `torrents/add` form.
const ADD_TEXT_FIELD_MAX_BYTES: usize = 64 * 1024;
/// qBittorrent's "infinite" ETA (100 days).
const ETA_INFINITE_SECS: u64 = 8_640_000;

/// The `/api/v2` routes.
pub fn router(daemon: Arc<Daemon>, guard: Arc<Guard>) -> Router {
    let auth = Router::new()
        .route(LOGIN_PATH, post(login))
        .route("/api/v2/auth/logout", post(logout))
        .with_state(guard);
    Router::new()
        .route("/api/v2/app/version", get(version))
        .route("/api/v2/app/webapiVersion", get(webapi_version))
        .route("/api/v2/app/buildInfo", get(build_info))
        .route("/api/v2/app/defaultSavePath", get(default_save_path))
        .route("/api/v2/app/preferences", get(preferences))
        .route("/api/v2/transfer/info", get(transfer_info))
        .route("/api/v2/torrents/info", get(info).post(info))
        .route("/api/v2/torrents/categories", get(categories))
        .route("/api/v2/torrents/tags", get(tags))
        .route("/api/v2/torrents/pause", post(pause))
        .route("/api/v2/torrents/stop", post(pause))
        .route("/api/v2/torrents/resume", post(resume))
        .route("/api/v2/torrents/start", post(resume))
        .route("/api/v2/torrents/delete", post(delete))
        .route("/api/v2/torrents/add", post(add).layer(DefaultBodyLimit::max(ADD_BODY_MAX_BYTES)))
        .with_state(daemon)
        .merge(auth)
}

/// Query and form parameters together (the form wins), as qBittorrent takes
/// either.
fn params(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> HashMap<String, String> {
    let mut out: HashMap<String, String> =
        url::form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned().collect();
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if form {
        out.extend(url::form_urlencoded::parse(body).into_owned());
    }
    out
}

/// A boolean parameter: `true` in any case (Python clients send `True`) or `1`.
fn flag(value: &str) -> bool {
    value.eq_ignore_ascii_case("true") || value == "1"
}

fn text(body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=UTF-8")], body).into_response()
}

fn bad(message: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message)
}

async fn login(
    State(guard): State<Arc<Guard>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = params(query.as_deref(), &headers, &body);
    let (Some(username), Some(password)) = (p.get("username"), p.get("password")) else {
        return text("Fails.");
    };
    match login_session(&guard, username.clone(), password.clone()).await {
        Some(id) => {
            let cookie = super::auth::session_cookie(SID_COOKIE, &id, guard.access.sessions.ttl());
            let mut response = text("Ok.");
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        None => text("Fails."),
    }
}

async fn logout(State(guard): State<Arc<Guard>>, headers: HeaderMap) -> Response {
    let cookie = headers.get(header::COOKIE).and_then(|v| v.to_str().ok());
    if let Some(id) = cookie.and_then(|c| super::auth::cookie_value(c, SID_COOKIE)) {
        guard.access.sessions.remove(id);
    }
    text("")
}

async fn version() -> Response {
    text(QBT_VERSION)
}

async fn webapi_version() -> Response {
    text(WEBAPI_VERSION)
}

async fn build_info() -> Json<Value> {
    Json(json!({
        "qt": "", "libtorrent": concat!("ringbit ", env!("CARGO_PKG_VERSION")),
        "boost": "", "openssl": "", "zlib": "", "bitness": 64,
    }))
}

async fn default_save_path(State(daemon): State<Arc<Daemon>>) -> Response {
    daemon.config().download_dir.display().to_string().into_response()
}

async fn preferences(State(daemon): State<Arc<Daemon>>) -> Json<Value> {
    let config = daemon.config();
    let (up, down) = daemon.process_limits();
    Json(json!({
        "save_path": config.download_dir,
        "temp_path_enabled": false,
        "temp_path": "",
        "listen_port": daemon.listen_port(),
        "max_ratio_enabled": false,
        "max_ratio": -1,
        "max_ratio_act": 0,
        "max_seeding_time_enabled": false,
        "max_seeding_time": -1,
        "queueing_enabled": false,
        "max_active_downloads": -1,
        "max_active_uploads": -1,
        "max_active_torrents": -1,
        "dht": false,
        "pex": false,
        "lsd": false,
        "encryption": 0,
        "up_limit": up,
        "dl_limit": down,
        "max_connec": config.engine.max_peers_total,
        "max_connec_per_torrent": config.engine.max_peers_per_torrent,
        "max_uploads_per_torrent": config.engine.upload_slots,
        "auto_tmm_enabled": false,
        "start_paused_enabled": false,
        "create_subfolder_enabled": true,
        "web_ui_port": config.api_listen.port(),
        "locale": "en",
    }))
}

async fn transfer_info(State(daemon): State<Arc<Daemon>>) -> Result<Json<Value>, ApiError> {
    let status = blocking(move || Ok(daemon.status())).await?;
    Ok(Json(json!({
        "dl_info_speed": status.download_rate,
        "dl_info_data": status.downloaded,
        "up_info_speed": status.upload_rate,
        "up_info_data": status.uploaded,
        "dl_rate_limit": status.download_rate_limit,
        "up_rate_limit": status.upload_rate_limit,
        "dht_nodes": 0,
        "connection_status": "connected",
    })))
}

async fn categories() -> Json<Value> {
    Json(json!({}))
}

async fn tags() -> Json<Value> {
    Json(json!([]))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

/// qBittorrent's state string (4.x names) of a torrent.
pub fn qbt_state(view: &TorrentView) -> &'static str {
    let complete = view.piece_count > 0 && view.have_pieces == view.piece_count;
    match view.state {
        "queued" if complete => "queuedUP",
        "queued" => "queuedDL",
        "checking" if complete => "checkingUP",
        "checking" => "checkingDL",
        "paused" if complete => "pausedUP",
        "paused" => "pausedDL",
        "error" => "error",
        "seeding" if view.upload_rate > 0 => "uploading",
        "seeding" => "stalledUP",
        _ if view.download_rate > 0 => "downloading",
        _ => "stalledDL",
    }
}

/// True when `view` passes qBittorrent's `filter`.
pub fn filter_matches(filter: &str, view: &TorrentView) -> Result<bool, String> {
    let state = qbt_state(view);
    let complete = state.ends_with("UP") || state == "uploading";
    let paused = view.state == "paused";
    Ok(match filter {
        "all" => true,
        "downloading" => !complete && !paused && view.state != "error",
        "seeding" => complete && !paused && view.state != "error",
        "completed" => complete,
        "paused" | "stopped" => paused,
        "resumed" | "running" => !paused,
        "active" => view.download_rate > 0 || view.upload_rate > 0,
        "inactive" => view.download_rate == 0 && view.upload_rate == 0,
        "stalled" => state.starts_with("stalled"),
        "stalled_uploading" => state == "stalledUP",
        "stalled_downloading" => state == "stalledDL",
        "checking" => state.starts_with("checking"),
        "moving" => false,
        "errored" => state == "error",
        other => return Err(format!("unknown filter {other:?}")),
    })
}

/// One torrent as `torrents/info` shows it.
pub fn torrent_json(view: &TorrentView) -> Map<String, Value> {
    let complete = view.piece_count > 0 && view.have_pieces == view.piece_count;
    let done = (view.size as f64 * view.progress) as u64;
    let left = view.size.saturating_sub(done);
    let ratio = if view.downloaded > 0 {
        view.uploaded as f64 / view.downloaded as f64
    } else if complete && view.size > 0 {
        view.uploaded as f64 / view.size as f64
    } else {
        0.0
    };
    let eta = match left.checked_div(view.download_rate) {
        Some(secs) if !complete => secs.min(ETA_INFINITE_SECS),
        _ => ETA_INFINITE_SECS,
    };
    let save_path = view.download_dir.display().to_string();
    let content_path = view.download_dir.join(&view.name).display().to_string();
    let tracker = view.trackers.iter().find(|t| t.status == "ok").map_or("", |t| t.url.as_str());
    let seeds: u32 = view.trackers.iter().filter_map(|t| t.seeders).max().unwrap_or(0);
    let leechers: u32 = view.trackers.iter().filter_map(|t| t.leechers).max().unwrap_or(0);
    let limit = |n: u64| if n == 0 { -1 } else { n as i64 };
    let value = json!({
        "hash": view.info_hash,
        "infohash_v1": view.info_hash,
        "infohash_v2": "",
        "name": view.name,
        "size": view.size,
        "total_size": view.size,
        "progress": view.progress,
        "dlspeed": view.download_rate,
        "upspeed": view.upload_rate,
        "eta": eta,
        "state": qbt_state(view),
        "category": "",
        "tags": "",
        "save_path": save_path,
        "download_path": "",
        "content_path": content_path,
        "ratio": ratio,
        "num_seeds": 0,
        "num_leechs": view.peers,
        "num_complete": seeds,
        "num_incomplete": leechers,
        "added_on": view.added_at,
        "completion_on": if complete { view.added_at as i64 } else { -1 },
        "amount_left": left,
    });
    let more = json!({
        "completed": done,
        "downloaded": view.downloaded,
        "uploaded": view.uploaded,
        "downloaded_session": view.downloaded,
        "uploaded_session": view.uploaded,
        "dl_limit": limit(view.download_rate_limit),
        "up_limit": limit(view.upload_rate_limit),
        "seeding_time": 0,
        "time_active": 0,
        "last_activity": 0,
        "seen_complete": if complete { view.added_at as i64 } else { -1 },
        "max_ratio": -1,
        "max_seeding_time": -1,
        "ratio_limit": -2,
        "seeding_time_limit": -2,
        "priority": 0,
        "force_start": false,
        "super_seeding": false,
        "seq_dl": false,
        "f_l_piece_prio": false,
        "auto_tmm": false,
        "availability": -1,
        "tracker": tracker,
        "trackers_count": view.trackers.len(),
        "magnet_uri": format!("magnet:?xt=urn:btih:{}", view.info_hash),
        "private": false,
    });
    let mut map = match value {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    if let Value::Object(more) = more {
        map.extend(more);
    }
    map
}

/// The hashes named by a `hashes` parameter (`h1|h2|...`, or `all` → `None`).
pub fn parse_hashes(text: &str) -> Result<Option<Vec<InfoHash>>, String> {
    if text == "all" {
        return Ok(None);
    }
    let parts: Vec<&str> = text.split('|').filter(|p| !p.is_empty()).collect();
    if parts.len() > HASHES_MAX {
        return Err(format!("more than {HASHES_MAX} hashes"));
    }
    parts
        .iter()
        .map(|p| {
            InfoHash::from_hex(p).ok_or_else(|| format!("{p:?} is not a 40-digit hex info hash"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

async fn info(
    State(daemon): State<Arc<Daemon>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let p = params(query.as_deref(), &headers, &body);
    let wanted = match p.get("hashes") {
        Some(h) => parse_hashes(h).map_err(bad)?,
        None => None,
    };
    let filter = p.get("filter").cloned().unwrap_or_else(|| "all".into());
    filter_matches(&filter, &dummy_view()).map_err(bad)?;
    let number = |key: &str| -> Result<Option<i64>, ApiError> {
        p.get(key)
            .map(|v| v.parse::<i64>().map_err(|_| bad(format!("{key}={v:?} is not a number"))))
            .transpose()
    };
    let limit = number("limit")?;
    let offset = number("offset")?.unwrap_or(0);
    let reverse = p.get("reverse").is_some_and(|v| flag(v));
    let sort = p.get("sort").cloned();
    // Categories and tags are not kept yet: every torrent has none.
    let category_ok = p.get("category").is_none_or(|c| c.is_empty());
    let tag_ok = p.get("tag").is_none_or(|t| t.is_empty());
    let views = blocking(move || Ok(daemon.torrents())).await?;
    let mut rows: Vec<Map<String, Value>> = views
        .iter()
        .filter(|_| category_ok && tag_ok)
        .filter(|v| wanted.as_ref().is_none_or(|w| w.iter().any(|h| h.to_hex() == v.info_hash)))
        .filter(|v| filter_matches(&filter, v).unwrap_or(false))
        .map(torrent_json)
        .collect();
    if let Some(key) = sort {
        rows.sort_by(|a, b| compare(a.get(&key), b.get(&key)));
    }
    if reverse {
        rows.reverse();
    }
    let len = rows.len() as i64;
    let start = if offset < 0 { (len + offset).max(0) } else { offset.min(len) } as usize;
    let rows: Vec<Value> = rows
        .into_iter()
        .skip(start)
        .take(limit.filter(|l| *l > 0).map_or(usize::MAX, |l| l as usize))
        .map(Value::Object)
        .collect();
    Ok(Json(Value::Array(rows)))
}

/// Orders JSON values: numbers by value, strings by text, missing first.
fn compare(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => {
            x.as_f64().unwrap_or(0.0).total_cmp(&y.as_f64().unwrap_or(0.0))
        }
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
        _ => std::cmp::Ordering::Equal,
    }
}

/// A view used only to validate a filter name.
fn dummy_view() -> TorrentView {
    TorrentView {
        info_hash: String::new(),
        name: String::new(),
        state: "queued",
        size: 0,
        piece_count: 0,
        have_pieces: 0,
        progress: 0.0,
        downloaded: 0,
        uploaded: 0,
        download_rate: 0,
        upload_rate: 0,
        peers: 0,
        shard: 0,
        download_dir: Default::default(),
        source: super::registry::Source::Api,
        added_at: 0,
        rechecked_pieces: 0,
        upload_rate_limit: 0,
        download_rate_limit: 0,
        error: None,
        trackers: Vec::new(),
    }
}

/// The torrents a `hashes` parameter names (all of them for `all`); unknown
/// hashes are skipped, as qBittorrent does.
fn targets(daemon: &Daemon, p: &HashMap<String, String>) -> Result<Vec<InfoHash>, ApiError> {
    let text = p.get("hashes").ok_or_else(|| bad("hashes is required".into()))?;
    let known: Vec<InfoHash> =
        daemon.torrents().iter().filter_map(|v| InfoHash::from_hex(&v.info_hash)).collect();
    Ok(match parse_hashes(text).map_err(bad)? {
        None => known,
        Some(list) => list.into_iter().filter(|h| known.contains(h)).collect(),
    })
}

async fn each(
    daemon: Arc<Daemon>,
    p: HashMap<String, String>,
    op: impl Fn(&Daemon, InfoHash) -> Result<(), DaemonError> + Send + 'static,
) -> Result<Response, ApiError> {
    blocking(move || {
        for h in targets(&daemon, &p)? {
            match op(&daemon, h) {
                Ok(()) | Err(DaemonError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    })
    .await?;
    Ok(text(""))
}

async fn pause(
    State(daemon): State<Arc<Daemon>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    each(daemon, params(query.as_deref(), &headers, &body), Daemon::pause).await
}

async fn resume(
    State(daemon): State<Arc<Daemon>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    each(daemon, params(query.as_deref(), &headers, &body), Daemon::resume).await
}

async fn delete(
    State(daemon): State<Arc<Daemon>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = params(query.as_deref(), &headers, &body);
    let with_files = p.get("deleteFiles").is_some_and(|v| flag(v));
    if with_files {
        each(daemon, p, Daemon::remove_with_data).await
    } else {
        each(daemon, p, Daemon::remove).await
    }
}

/// `torrents/add`: multipart `torrents` files with `savepath` (under the
/// download roots), `paused`/`stopped`. `Ok.` when at least one was added,
/// `Fails.` when none (bad or duplicate), 403 for a save path outside the
/// roots, 400 for what is not supported (`urls`) or malformed.
async fn add(
    State(daemon): State<Arc<Daemon>>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let mut multipart =
        multipart.map_err(|e| bad(format!("torrents/add needs multipart/form-data: {e}")))?;
    let mut torrents: Vec<Vec<u8>> = Vec::new();
    let mut fields: HashMap<String, String> = HashMap::new();
    loop {
        let field =
            multipart.next_field().await.map_err(|e| bad(format!("malformed multipart: {e}")))?;
        let Some(field) = field else { break };
        let name = field.name().unwrap_or("").to_string();
        let is_file = field.file_name().is_some();
        let bytes = field.bytes().await.map_err(|e| bad(format!("malformed multipart: {e}")))?;
        if name == "torrents" || is_file {
            if torrents.len() >= ADD_TORRENTS_MAX {
                return Err(bad(format!("more than {ADD_TORRENTS_MAX} torrents in one request")));
            }
            torrents.push(bytes.to_vec());
        } else {
            if bytes.len() > ADD_TEXT_FIELD_MAX_BYTES {
                return Err(bad(format!(
                    "field {name:?} is longer than {ADD_TEXT_FIELD_MAX_BYTES} bytes"
                )));
            }
            fields.insert(name, String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    if fields.get("urls").is_some_and(|u| !u.trim().is_empty()) {
        return Err(bad(
            "urls (links and magnets) are not supported yet: upload the .torrent file".into(),
        ));
    }
    if torrents.is_empty() {
        return Err(bad("no torrents file in the form".into()));
    }
    let paused = ["paused", "stopped"].iter().any(|k| fields.get(*k).is_some_and(|v| flag(v)));
    let save_path = fields.get("savepath").filter(|p| !p.is_empty()).map(std::path::PathBuf::from);
    let added = blocking(move || {
        let mut added = 0;
        for bytes in torrents {
            match daemon.add_torrent(bytes, save_path.clone(), super::registry::Source::Api, paused)
            {
                Ok(_) => added += 1,
                Err(error @ DaemonError::Roots(_)) => return Err(error.into()),
                Err(error) => tracing::info!(%error, "torrents/add: not added"),
            }
        }
        Ok(added)
    })
    .await?;
    Ok(text(if added > 0 { "Ok." } else { "Fails." }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: &'static str, have: u32, up: u64, down: u64) -> TorrentView {
        TorrentView {
            state,
            piece_count: 4,
            have_pieces: have,
            upload_rate: up,
            download_rate: down,
            size: 4000,
            progress: have as f64 / 4.0,
            name: "n".into(),
            info_hash: "ab".repeat(20),
            ..dummy_view()
        }
    }

    #[test]
    fn states_use_qbittorrent_4_names() {
        assert_eq!(qbt_state(&view("seeding", 4, 0, 0)), "stalledUP");
        assert_eq!(qbt_state(&view("seeding", 4, 10, 0)), "uploading");
        assert_eq!(qbt_state(&view("downloading", 1, 0, 10)), "downloading");
        assert_eq!(qbt_state(&view("downloading", 1, 0, 0)), "stalledDL");
        assert_eq!(qbt_state(&view("paused", 4, 0, 0)), "pausedUP");
        assert_eq!(qbt_state(&view("paused", 2, 0, 0)), "pausedDL");
        assert_eq!(qbt_state(&view("checking", 0, 0, 0)), "checkingDL");
        assert_eq!(qbt_state(&view("queued", 4, 0, 0)), "queuedUP");
        assert_eq!(qbt_state(&view("error", 4, 0, 0)), "error");
    }

    #[test]
    fn filters_and_hashes() {
        let seeding = view("seeding", 4, 0, 0);
        let paused = view("paused", 2, 0, 0);
        assert!(filter_matches("seeding", &seeding).unwrap());
        assert!(filter_matches("completed", &seeding).unwrap());
        assert!(!filter_matches("downloading", &seeding).unwrap());
        assert!(filter_matches("paused", &paused).unwrap());
        assert!(filter_matches("stopped", &paused).unwrap());
        assert!(!filter_matches("resumed", &paused).unwrap());
        assert!(filter_matches("stalled_uploading", &seeding).unwrap());
        assert!(filter_matches("bogus", &seeding).is_err());
        assert_eq!(parse_hashes("all").unwrap(), None);
        let h = "ab".repeat(20);
        assert_eq!(parse_hashes(&format!("{h}|{h}")).unwrap().unwrap().len(), 2);
        assert!(parse_hashes("xyz").is_err());
        assert!(flag("True") && flag("true") && flag("1") && !flag("false") && !flag("0"));
        let huge = vec![h.as_str(); HASHES_MAX + 1].join("|");
        assert!(parse_hashes(&huge).unwrap_err().contains("more than"));
    }

    #[test]
    fn torrent_fields_clients_read() {
        let row = torrent_json(&view("seeding", 4, 0, 0));
        for key in [
            "hash",
            "name",
            "size",
            "progress",
            "dlspeed",
            "upspeed",
            "eta",
            "state",
            "category",
            "tags",
            "save_path",
            "content_path",
            "ratio",
            "num_seeds",
            "num_leechs",
            "added_on",
            "completion_on",
            "amount_left",
            "seeding_time",
        ] {
            assert!(row.contains_key(key), "{key}");
        }
        assert_eq!(row["amount_left"], 0);
        assert_eq!(row["eta"], ETA_INFINITE_SECS);
    }
}
