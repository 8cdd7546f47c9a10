//! A subset of qBittorrent's Web API v2 under `/api/v2/`, so tools that
//! speak only that (Sonarr, Radarr, autobrr, qbit_manage, Flood, VueTorrent)
//! can drive ringbit. What is supported, partial and missing:
//! docs/qbittorrent-api.md.
//!
//! Layer: control plane, beside [`super::api`], whose [`super::api::Guard`]
//! runs first for every request (Host and Origin checks, then the `SID`
//! session cookie or the API token; unauthenticated calls get 403 as
//! qBittorrent answers them). Handlers read [`super::TorrentView`]s and call
//! the same [`Daemon`] methods as the ringbit API, on the blocking pool.
//! Categories, tags and share limits live in [`super::labels`];
//! `sync/maindata`'s change tracking in [`super::qbt_sync`].
//!
//! Version (`[api] qbittorrent_version`): 4 (default) reports qBittorrent
//! `v4.6.7`, Web API `2.9.3`, and the 4.x state names (`pausedUP`); 5 reports
//! `v5.0.4`, Web API `2.11.2`, and the 5.x names (`stoppedUP`). Clients gate
//! the endpoint names on it (`pause`/`resume` before 5, `stop`/`start`
//! after); both are served either way.
//!
//! Limits: a `hashes` list holds at most [`HASHES_MAX`] entries; form bodies
//! at most [`FORM_BODY_MAX_BYTES`]; a `torrents/add` at most
//! [`ADD_BODY_MAX_BYTES`], [`ADD_TORRENTS_MAX`] files and as many `urls`.
//! Errors are a 4xx status with `{"error": "reason"}`.

use super::api::{login_session, ApiError, Guard};
use super::labels::{self, LabelChange, LabelStore};
use super::qbt_sync::{Fields, Snapshot, SyncTable};
use super::registry::{Labels, Source, LIMIT_GLOBAL};
use super::share::{self, GlobalShare, ShareAction};
use super::{lock, AddExtra, Daemon, DaemonError, TorrentView};
use crate::metainfo::{InfoHash, Metainfo};
use axum::body::Bytes;
use axum::extract::multipart::Multipart;
use axum::extract::{DefaultBodyLimit, FromRef, FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// qBittorrent's session cookie.
pub const SID_COOKIE: &str = "SID";
/// The login path (open to unauthenticated requests).
pub const LOGIN_PATH: &str = "/api/v2/auth/login";
/// Most entries in a `hashes` parameter.
pub const HASHES_MAX: usize = 10_000;
/// Largest form body (a `hashes` list of [`HASHES_MAX`] fits).
pub const FORM_BODY_MAX_BYTES: usize = 512 * 1024;
/// Largest `torrents/add` request (every .torrent of it together).
pub const ADD_BODY_MAX_BYTES: usize = crate::metainfo::METAINFO_FILE_MAX_BYTES as usize;
/// Most .torrent files, and most `urls`, in one `torrents/add`.
pub const ADD_TORRENTS_MAX: usize = 1000;
/// Largest text field of a `torrents/add` form.
const ADD_TEXT_FIELD_MAX_BYTES: usize = 64 * 1024;
/// Granularity of `seeding_time` in torrent rows (see [`torrent_row`]).
const SEEDING_TIME_STEP_SECS: u64 = 60;
/// qBittorrent's "infinite" ETA (100 days).
const ETA_INFINITE_SECS: u64 = 8_640_000;

/// The versions we answer as, by `[api] qbittorrent_version`.
pub fn versions(major: u8) -> (&'static str, &'static str) {
    if major >= 5 {
        ("v5.0.4", "2.11.2")
    } else {
        ("v4.6.7", "2.9.3")
    }
}

/// The state of the `/api/v2` routes.
#[derive(Clone)]
pub struct Qbt {
    daemon: Arc<Daemon>,
    sync: Arc<Mutex<SyncTable>>,
    major: u8,
}

impl FromRef<Qbt> for Arc<Daemon> {
    fn from_ref(q: &Qbt) -> Arc<Daemon> {
        q.daemon.clone()
    }
}

/// The `/api/v2` routes.
pub fn router(daemon: Arc<Daemon>, guard: Arc<Guard>) -> Router {
    let major = daemon.config().api.qbittorrent_version;
    let start_rid = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64);
    let state = Qbt { daemon, sync: Arc::new(Mutex::new(SyncTable::new(start_rid))), major };
    let auth = Router::new()
        .route(LOGIN_PATH, post(login))
        .route("/api/v2/auth/logout", post(logout))
        .with_state(guard);
    let t = |name: &str| format!("/api/v2/torrents/{name}");
    let mut torrents = Router::new();
    for (name, op) in [
        ("pause", Op::Pause),
        ("stop", Op::Pause),
        ("resume", Op::Resume),
        ("start", Op::Resume),
        ("recheck", Op::Recheck),
        ("reannounce", Op::Reannounce),
    ] {
        torrents =
            torrents.route(&t(name), post(move |s: State<Qbt>, p: Params| each_op(s, p, op)));
    }
    for name in ["topPrio", "bottomPrio", "increasePrio", "decreasePrio"] {
        torrents = torrents.route(&t(name), post(queueing_off));
    }
    Router::new()
        .route("/api/v2/app/version", get(version))
        .route("/api/v2/app/webapiVersion", get(webapi_version))
        .route("/api/v2/app/buildInfo", get(build_info))
        .route("/api/v2/app/defaultSavePath", get(default_save_path))
        .route("/api/v2/app/preferences", get(preferences))
        .route("/api/v2/app/setPreferences", post(set_preferences))
        .route("/api/v2/transfer/info", get(transfer_info))
        .route("/api/v2/sync/maindata", get(maindata).post(maindata))
        .route("/api/v2/torrents/info", get(info).post(info))
        .route("/api/v2/torrents/properties", get(properties).post(properties))
        .route("/api/v2/torrents/files", get(files).post(files))
        .route("/api/v2/torrents/trackers", get(trackers).post(trackers))
        .route("/api/v2/torrents/pieceStates", get(piece_states).post(piece_states))
        .route("/api/v2/torrents/delete", post(delete))
        .route("/api/v2/torrents/categories", get(categories).post(categories))
        .route("/api/v2/torrents/createCategory", post(create_category))
        .route("/api/v2/torrents/editCategory", post(edit_category))
        .route("/api/v2/torrents/removeCategories", post(remove_categories))
        .route("/api/v2/torrents/setCategory", post(set_category))
        .route("/api/v2/torrents/tags", get(tags).post(tags))
        .route("/api/v2/torrents/createTags", post(create_tags))
        .route("/api/v2/torrents/deleteTags", post(delete_tags))
        .route("/api/v2/torrents/addTags", post(add_tags))
        .route("/api/v2/torrents/removeTags", post(remove_tags))
        .route("/api/v2/torrents/setShareLimits", post(set_share_limits))
        .route("/api/v2/torrents/setForceStart", post(set_force_start))
        .route("/api/v2/torrents/setSuperSeeding", post(set_super_seeding))
        .route("/api/v2/sync/torrentPeers", get(torrent_peers).post(torrent_peers))
        .route("/api/v2/torrents/setUploadLimit", post(set_upload_limit))
        .route("/api/v2/torrents/setDownloadLimit", post(set_download_limit))
        .route("/api/v2/torrents/uploadLimit", post(upload_limit))
        .route("/api/v2/torrents/downloadLimit", post(download_limit))
        .route("/api/v2/torrents/add", post(add).layer(DefaultBodyLimit::max(ADD_BODY_MAX_BYTES)))
        .merge(torrents)
        .layer(DefaultBodyLimit::max(FORM_BODY_MAX_BYTES))
        .with_state(state)
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

/// A request's query and form parameters.
pub struct Params(HashMap<String, String>);

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Params, ApiError> {
        let query = request.uri().query().map(str::to_owned);
        let headers = request.headers().clone();
        let body = Bytes::from_request(request, state).await.map_err(|e| {
            ApiError(e.status(), format!("cannot read the form: {}", e.body_text()))
        })?;
        Ok(Params(params(query.as_deref(), &headers, &body)))
    }
}

impl Params {
    fn get(&self, key: &str) -> Option<&String> {
        self.0.get(key)
    }

    fn required(&self, key: &str) -> Result<&String, ApiError> {
        self.0.get(key).ok_or_else(|| bad(format!("{key} is required")))
    }

    fn number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, ApiError> {
        self.0
            .get(key)
            .filter(|v| !v.is_empty())
            .map(|v| v.trim().parse::<T>().map_err(|_| bad(format!("{key}={v:?} is not a number"))))
            .transpose()
    }
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

async fn login(State(guard): State<Arc<Guard>>, p: Params) -> Response {
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

async fn version(State(q): State<Qbt>) -> Response {
    versions(q.major).0.into_response()
}

async fn webapi_version(State(q): State<Qbt>) -> Response {
    versions(q.major).1.into_response()
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
    let share = daemon.labels().share;
    Json(json!({
        "save_path": config.download_dir,
        "temp_path_enabled": false,
        "temp_path": "",
        "listen_port": daemon.listen_port(),
        "random_port": false,
        "upnp": false,
        "max_ratio_enabled": share.ratio_enabled,
        "max_ratio": share.ratio,
        "max_ratio_act": share.action.to_qbt(),
        "max_seeding_time_enabled": share.seeding_time_enabled,
        "max_seeding_time": share.seeding_time_mins,
        "max_inactive_seeding_time_enabled": false,
        "max_inactive_seeding_time": -1,
        "queueing_enabled": false,
        "max_active_downloads": -1,
        "max_active_uploads": -1,
        "max_active_torrents": -1,
        "dht": config.dht,
        "pex": true,
        "lsd": false,
        "encryption": 0,
        "up_limit": up,
        "dl_limit": down,
        "alt_up_limit": 0,
        "alt_dl_limit": 0,
        "max_connec": config.engine.max_peers_total,
        "max_connec_per_torrent": config.engine.max_peers_per_torrent,
        "max_uploads": config.engine.upload_slots,
        "max_uploads_per_torrent": config.engine.upload_slots,
        "auto_tmm_enabled": false,
        "start_paused_enabled": false,
        "add_stopped_enabled": false,
        "create_subfolder_enabled": true,
        "torrent_content_layout": "Original",
        "web_ui_port": config.api_listen.port(),
        "locale": "en",
    }))
}

/// `app/setPreferences`: form field `json`. Share limits (`max_ratio*`,
/// `max_seeding_time*`) are kept across restarts; `up_limit`/`dl_limit`
/// (bytes per second, 0 or less = none) until the next restart; other
/// fields are ignored, as qBittorrent ignores unknown ones.
async fn set_preferences(
    State(daemon): State<Arc<Daemon>>,
    p: Params,
) -> Result<Response, ApiError> {
    let text_json = p.get("json").ok_or_else(|| bad("json is required".into()))?;
    let prefs: Map<String, Value> = serde_json::from_str(text_json)
        .map_err(|e| bad(format!("json is not a JSON object: {e}")))?;
    let mut share = daemon.labels().share;
    let number = |key: &str| -> Result<Option<f64>, ApiError> {
        match prefs.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| bad(format!("{key} is not a number"))),
        }
    };
    let boolean = |key: &str| -> Result<Option<bool>, ApiError> {
        match prefs.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| bad(format!("{key} is not a boolean"))),
        }
    };
    if let Some(v) = boolean("max_ratio_enabled")? {
        share.ratio_enabled = v;
    }
    if let Some(v) = number("max_ratio")? {
        // qBittorrent stores a negative ratio as "disabled".
        if v < 0.0 {
            share.ratio_enabled = false;
        } else {
            share.ratio = share::check_ratio_limit(v).map_err(bad)?;
        }
    }
    if let Some(v) = boolean("max_seeding_time_enabled")? {
        share.seeding_time_enabled = v;
    }
    if let Some(v) = number("max_seeding_time")? {
        if v < 0.0 {
            share.seeding_time_enabled = false;
        } else {
            share.seeding_time_mins = share::check_seeding_time_limit(v as i64).map_err(bad)?;
        }
    }
    if let Some(v) = number("max_ratio_act")? {
        share.action = ShareAction::from_qbt(v as i64).map_err(bad)?;
    }
    let rate = |key: &str| -> Result<Option<u64>, ApiError> {
        Ok(number(key)?.map(|v| if v <= 0.0 { 0 } else { v as u64 }))
    };
    let (up, down) = (rate("up_limit")?, rate("dl_limit")?);
    blocking(move || {
        daemon.set_global_share(share)?;
        if up.is_some() || down.is_some() {
            let (old_up, old_down) = daemon.process_limits();
            daemon.set_process_limits(up.unwrap_or(old_up), down.unwrap_or(old_down));
        }
        Ok(())
    })
    .await?;
    Ok(text(""))
}

fn server_state(status: &super::StatusView, dht_nodes: usize) -> Fields {
    let ratio = share::ratio(status.uploaded, status.downloaded, 0);
    vec![
        ("dl_info_speed", json!(status.download_rate)),
        ("dl_info_data", json!(status.downloaded)),
        ("up_info_speed", json!(status.upload_rate)),
        ("up_info_data", json!(status.uploaded)),
        ("dl_rate_limit", json!(status.download_rate_limit)),
        ("up_rate_limit", json!(status.upload_rate_limit)),
        ("alltime_dl", json!(status.downloaded)),
        ("alltime_ul", json!(status.uploaded)),
        ("total_peer_connections", json!(status.peers)),
        ("dht_nodes", json!(dht_nodes)),
        ("connection_status", json!("connected")),
        ("queueing", json!(false)),
        ("use_alt_speed_limits", json!(false)),
        ("refresh_interval", json!(1500)),
        ("global_ratio", json!(format!("{ratio:.2}"))),
    ]
}

async fn transfer_info(State(daemon): State<Arc<Daemon>>) -> Result<Json<Value>, ApiError> {
    let fields = blocking(move || {
        let nodes =
            daemon.dht_report().map_or(0, |r| (r.stats.nodes_v4 + r.stats.nodes_v6) as usize);
        Ok(server_state(&daemon.status(), nodes))
    })
    .await?;
    let map: Map<String, Value> =
        fields.into_iter().take(10).map(|(k, v)| (k.to_string(), v)).collect();
    Ok(Json(Value::Object(map)))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

/// What the rows depend on besides the torrent.
pub struct RowContext {
    /// qBittorrent major version reported (state names).
    pub major: u8,
    pub share: GlobalShare,
}

/// qBittorrent's state string of a torrent (4.x or 5.x names by `major`).
pub fn qbt_state(view: &TorrentView, major: u8) -> &'static str {
    let complete = view.piece_count > 0 && view.have_pieces == view.piece_count;
    match view.state {
        "metadata" => "metaDL",
        "queued" if complete => "queuedUP",
        "queued" => "queuedDL",
        "checking" if complete => "checkingUP",
        "checking" => "checkingDL",
        "paused" if complete && major >= 5 => "stoppedUP",
        "paused" if major >= 5 => "stoppedDL",
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
    let state = qbt_state(view, 4);
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

/// A torrent's ratio (over all its runs).
fn view_ratio(view: &TorrentView) -> f64 {
    let done = (view.size as f64 * view.progress) as u64;
    share::ratio(view.totals.uploaded, view.totals.downloaded, done)
}

/// One torrent's fields, in a fixed order (`torrents/info` and
/// `sync/maindata`).
pub fn torrent_row(view: &TorrentView, context: &RowContext) -> Fields {
    let complete = view.piece_count > 0 && view.have_pieces == view.piece_count;
    let done = (view.size as f64 * view.progress) as u64;
    let left = view.size.saturating_sub(done);
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
    let labels = &view.labels;
    let (max_ratio, max_secs) = share::effective_limits(labels, &context.share);
    let completed_at =
        if view.totals.completed_at > 0 { view.totals.completed_at as i64 } else { -1 };
    let tags: Vec<&str> = labels.tags.iter().map(String::as_str).collect();
    // Whole minutes (share limits count minutes): a second-by-second value
    // would put every seeding torrent in every incremental `sync/maindata`
    // (800 KB a poll at 10,000 torrents); this way an idle one changes once a
    // minute.
    let seeding_time = view.totals.seeding_secs / SEEDING_TIME_STEP_SECS * SEEDING_TIME_STEP_SECS;
    vec![
        ("hash", json!(view.info_hash)),
        ("infohash_v1", json!(view.info_hash)),
        ("infohash_v2", json!("")),
        ("name", json!(view.name)),
        ("size", json!(view.size)),
        ("total_size", json!(view.size)),
        ("progress", json!(view.progress)),
        ("dlspeed", json!(view.download_rate)),
        ("upspeed", json!(view.upload_rate)),
        ("eta", json!(eta)),
        ("state", json!(qbt_state(view, context.major))),
        ("category", json!(labels.category)),
        ("tags", json!(tags.join(", "))),
        ("save_path", json!(save_path)),
        ("download_path", json!("")),
        ("content_path", json!(content_path)),
        ("ratio", json!(view_ratio(view))),
        ("num_seeds", json!(0)),
        ("num_leechs", json!(view.peers)),
        ("num_complete", json!(seeds)),
        ("num_incomplete", json!(leechers)),
        ("added_on", json!(view.added_at)),
        ("completion_on", json!(completed_at)),
        ("amount_left", json!(left)),
        ("completed", json!(done)),
        ("downloaded", json!(view.totals.downloaded)),
        ("uploaded", json!(view.totals.uploaded)),
        ("downloaded_session", json!(view.downloaded)),
        ("uploaded_session", json!(view.uploaded)),
        ("dl_limit", json!(limit(view.download_rate_limit))),
        ("up_limit", json!(limit(view.upload_rate_limit))),
        ("seeding_time", json!(seeding_time)),
        ("time_active", json!(seeding_time)),
        ("last_activity", json!(0)),
        ("seen_complete", json!(completed_at)),
        ("max_ratio", json!(max_ratio.unwrap_or(-1.0))),
        ("max_seeding_time", json!(max_secs.map_or(-1, |s| (s / 60) as i64))),
        ("max_inactive_seeding_time", json!(-1)),
        ("ratio_limit", json!(labels.ratio_limit)),
        ("seeding_time_limit", json!(labels.seeding_time_limit_mins)),
        ("inactive_seeding_time_limit", json!(LIMIT_GLOBAL)),
        ("priority", json!(0)),
        ("force_start", json!(false)),
        ("super_seeding", json!(false)),
        ("seq_dl", json!(false)),
        ("f_l_piece_prio", json!(false)),
        ("auto_tmm", json!(false)),
        ("availability", json!(-1)),
        ("tracker", json!(tracker)),
        ("trackers_count", json!(view.trackers.len())),
        ("magnet_uri", json!(format!("magnet:?xt=urn:btih:{}", view.info_hash))),
        ("private", json!(false)),
        ("has_metadata", json!(view.state != "metadata")),
    ]
}

/// One torrent as `torrents/info` shows it.
pub fn torrent_json(view: &TorrentView, context: &RowContext) -> Map<String, Value> {
    torrent_row(view, context).into_iter().map(|(k, v)| (k.to_string(), v)).collect()
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

/// Every torrent the qBittorrent API shows: the registered ones and the
/// magnet links still fetching their metadata.
fn all_views(daemon: &Daemon) -> Vec<TorrentView> {
    let mut views = daemon.torrents();
    views.extend(daemon.pending_magnet_views());
    views
}

fn row_context(q: &Qbt) -> RowContext {
    RowContext { major: q.major, share: q.daemon.labels().share }
}

async fn info(State(q): State<Qbt>, p: Params) -> Result<Json<Value>, ApiError> {
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
    // Present and empty: those without a category (tag).
    let category = p.get("category").cloned();
    let tag = p.get("tag").cloned();
    let rows = blocking(move || {
        let context = row_context(&q);
        let views = all_views(&q.daemon);
        Ok(views
            .iter()
            .filter(|v| category.as_ref().is_none_or(|c| v.labels.category == *c))
            .filter(|v| {
                tag.as_ref().is_none_or(|t| {
                    if t.is_empty() {
                        v.labels.tags.is_empty()
                    } else {
                        v.labels.tags.contains(t)
                    }
                })
            })
            .filter(|v| wanted.as_ref().is_none_or(|w| w.iter().any(|h| h.to_hex() == v.info_hash)))
            .filter(|v| filter_matches(&filter, v).unwrap_or(false))
            .map(|v| torrent_json(v, &context))
            .collect::<Vec<_>>())
    })
    .await?;
    let mut rows = rows;
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

/// `sync/maindata?rid=N`: see [`super::qbt_sync`].
async fn maindata(State(q): State<Qbt>, p: Params) -> Result<Json<Value>, ApiError> {
    let rid = p.number::<u64>("rid")?.unwrap_or(0);
    let answer = blocking(move || {
        let context = row_context(&q);
        let views = all_views(&q.daemon);
        let labels = q.daemon.labels();
        let nodes =
            q.daemon.dht_report().map_or(0, |r| (r.stats.nodes_v4 + r.stats.nodes_v6) as usize);
        let snapshot = Snapshot {
            torrents: views
                .iter()
                .map(|v| (v.info_hash.clone(), torrent_row(v, &context)))
                .collect(),
            categories: category_rows(&labels),
            tags: labels.tags.iter().cloned().collect(),
            server_state: server_state(&q.daemon.status(), nodes),
        };
        Ok(lock(&q.sync).answer(rid, snapshot))
    })
    .await?;
    Ok(Json(Value::Object(answer)))
}

fn category_rows(labels: &LabelStore) -> Vec<(String, Fields)> {
    labels
        .categories
        .iter()
        .map(|(name, c)| {
            (name.clone(), vec![("name", json!(name)), ("savePath", json!(c.save_path))])
        })
        .collect()
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
        source: Source::Api,
        added_at: 0,
        rechecked_pieces: 0,
        upload_rate_limit: 0,
        download_rate_limit: 0,
        error: None,
        trackers: Vec::new(),
        labels: Labels::default(),
        totals: Default::default(),
        piece_length: 0,
    }
}

/// The torrents a `hashes` parameter names (all of them for `all`); unknown
/// hashes are skipped, as qBittorrent does.
fn targets(daemon: &Daemon, p: &Params) -> Result<Vec<InfoHash>, ApiError> {
    let text = p.get("hashes").ok_or_else(|| bad("hashes is required".into()))?;
    let wanted = parse_hashes(text).map_err(bad)?;
    let known: BTreeSet<InfoHash> =
        all_views(daemon).iter().filter_map(|v| InfoHash::from_hex(&v.info_hash)).collect();
    Ok(match wanted {
        None => known.into_iter().collect(),
        Some(list) => list.into_iter().filter(|h| known.contains(h)).collect(),
    })
}

/// An operation on each torrent of `hashes`.
#[derive(Clone, Copy)]
enum Op {
    Pause,
    Resume,
    Recheck,
    Reannounce,
}

async fn each_op(State(q): State<Qbt>, p: Params, op: Op) -> Result<Response, ApiError> {
    let f: fn(&Daemon, InfoHash) -> Result<(), DaemonError> = match op {
        Op::Pause => Daemon::pause,
        Op::Resume => Daemon::resume,
        Op::Recheck => Daemon::recheck,
        Op::Reannounce => Daemon::reannounce,
    };
    each(q.daemon.clone(), p, f).await
}

async fn each(
    daemon: Arc<Daemon>,
    p: Params,
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

async fn queueing_off() -> ApiError {
    ApiError(StatusCode::CONFLICT, "Torrent queueing must be enabled".into())
}

async fn delete(State(daemon): State<Arc<Daemon>>, p: Params) -> Result<Response, ApiError> {
    let with_files = p.get("deleteFiles").is_some_and(|v| flag(v));
    if with_files {
        each(daemon, p, Daemon::remove_with_data).await
    } else {
        each(daemon, p, Daemon::remove).await
    }
}

/// The one torrent a `hash` parameter names: 404 when unknown, as
/// qBittorrent answers.
fn one_view(daemon: &Daemon, p: &Params) -> Result<TorrentView, ApiError> {
    let text = p.get("hash").ok_or_else(|| bad("hash is required".into()))?;
    let hash = InfoHash::from_hex(text)
        .ok_or_else(|| bad(format!("{text:?} is not a 40-digit hex info hash")))?;
    all_views(daemon)
        .into_iter()
        .find(|v| v.info_hash == hash.to_hex())
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no torrent {hash}")))
}

async fn properties(State(q): State<Qbt>, p: Params) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        let view = one_view(&q.daemon, &p)?;
        let context = row_context(&q);
        let row = torrent_json(&view, &context);
        let now = super::unix_now();
        let seeds: u32 = view.trackers.iter().filter_map(|t| t.seeders).max().unwrap_or(0);
        let leechers: u32 = view.trackers.iter().filter_map(|t| t.leechers).max().unwrap_or(0);
        let reannounce = view
            .trackers
            .iter()
            .filter_map(|t| t.next_announce_in_secs)
            .fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.min(s))))
            .map_or(0, |s| s as u64);
        Ok(Json(json!({
            "hash": view.info_hash,
            "infohash_v1": view.info_hash,
            "infohash_v2": "",
            "name": view.name,
            "save_path": row["save_path"],
            "download_path": "",
            "creation_date": -1,
            "piece_size": view.piece_length,
            "comment": "",
            "created_by": "",
            "total_wasted": 0,
            "total_uploaded": view.totals.uploaded,
            "total_uploaded_session": view.uploaded,
            "total_downloaded": view.totals.downloaded,
            "total_downloaded_session": view.downloaded,
            "up_limit": row["up_limit"],
            "dl_limit": row["dl_limit"],
            "time_elapsed": now.saturating_sub(view.added_at),
            "seeding_time": view.totals.seeding_secs,
            "nb_connections": view.peers,
            "nb_connections_limit": q.daemon.config().engine.max_peers_per_torrent,
            "share_ratio": row["ratio"],
            "addition_date": view.added_at,
            "completion_date": row["completion_on"],
            "last_seen": row["completion_on"],
            "dl_speed": view.download_rate,
            "dl_speed_avg": 0,
            "up_speed": view.upload_rate,
            "up_speed_avg": 0,
            "eta": row["eta"],
            "peers": view.peers,
            "peers_total": leechers,
            "seeds": 0,
            "seeds_total": seeds,
            "pieces_have": view.have_pieces,
            "pieces_num": view.piece_count,
            "reannounce": reannounce,
            "total_size": view.size,
            "isPrivate": false,
            "is_private": false,
            "has_metadata": view.state != "metadata",
        })))
    })
    .await
}

/// Bytes of the span `[start, end)` that lie in verified pieces.
fn have_bytes(have: &crate::bitfield::Bitfield, piece_length: u64, start: u64, end: u64) -> u64 {
    if end <= start || piece_length == 0 {
        return 0;
    }
    let (first, last) = (start / piece_length, (end - 1) / piece_length);
    (first..=last)
        .filter(|i| have.get(*i as u32))
        .map(|i| {
            let (a, b) = (i * piece_length, (i + 1) * piece_length);
            b.min(end) - a.max(start)
        })
        .sum()
}

async fn files(State(daemon): State<Arc<Daemon>>, p: Params) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        let view = one_view(&daemon, &p)?;
        let Some(hash) = InfoHash::from_hex(&view.info_hash) else { return Ok(Json(json!([]))) };
        let (Some(metainfo), Some(have)) = (daemon.metainfo(hash), daemon.have_pieces(hash)) else {
            return Ok(Json(json!([]))); // fetching its metadata
        };
        let info = &metainfo.info;
        let piece_length = info.piece_length as u64;
        let rows: Vec<Value> = info
            .files
            .iter()
            .filter(|f| !f.pad)
            .enumerate()
            .map(|(index, f)| {
                let end = f.offset + f.length;
                let got = have_bytes(&have, piece_length, f.offset, end);
                let progress = if f.length == 0 { 1.0 } else { got as f64 / f.length as f64 };
                let last = if f.length == 0 { f.offset } else { end - 1 };
                json!({
                    "index": index,
                    "name": f.path.join("/"),
                    "size": f.length,
                    "progress": progress,
                    "priority": 1,
                    "is_seed": progress >= 1.0,
                    "piece_range": [f.offset / piece_length.max(1), last / piece_length.max(1)],
                    "availability": -1,
                })
            })
            .collect();
        Ok(Json(Value::Array(rows)))
    })
    .await
}

async fn trackers(State(daemon): State<Arc<Daemon>>, p: Params) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        let view = one_view(&daemon, &p)?;
        let dht = if daemon.config().dht { 2 } else { 0 };
        let pseudo = |url: &str, status: u8| {
            json!({"url": url, "status": status, "tier": -1, "num_peers": 0, "num_seeds": 0,
                   "num_leeches": 0, "num_downloaded": 0, "msg": ""})
        };
        let mut rows =
            vec![pseudo("** [DHT] **", dht), pseudo("** [PeX] **", 2), pseudo("** [LSD] **", 0)];
        for t in &view.trackers {
            // qBittorrent: 1 not contacted, 2 working, 3 updating, 4 not working.
            let status = match t.status {
                "ok" => 2,
                "updating" => 3,
                "failed" => 4,
                _ => 1,
            };
            let count = |n: Option<u32>| n.map_or(-1, i64::from);
            rows.push(json!({
                "url": t.url,
                "status": status,
                "tier": t.tier,
                "num_peers": t.peers.map_or(-1, |n| n as i64),
                "num_seeds": count(t.seeders),
                "num_leeches": count(t.leechers),
                "num_downloaded": -1,
                "msg": t.message.clone().unwrap_or_default(),
            }));
        }
        Ok(Json(Value::Array(rows)))
    })
    .await
}

async fn piece_states(
    State(daemon): State<Arc<Daemon>>,
    p: Params,
) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        let view = one_view(&daemon, &p)?;
        let have = InfoHash::from_hex(&view.info_hash).and_then(|h| daemon.have_pieces(h));
        let states: Vec<u8> = match have {
            Some(have) => (0..have.len()).map(|i| if have.get(i) { 2 } else { 0 }).collect(),
            None => Vec::new(),
        };
        Ok(Json(json!(states)))
    })
    .await
}

async fn categories(State(daemon): State<Arc<Daemon>>) -> Json<Value> {
    let labels = daemon.labels();
    let map: Map<String, Value> = category_rows(&labels)
        .into_iter()
        .map(|(name, fields)| {
            let object: Map<String, Value> =
                fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            (name, Value::Object(object))
        })
        .collect();
    Json(Value::Object(map))
}

async fn create_category(
    State(daemon): State<Arc<Daemon>>,
    p: Params,
) -> Result<Response, ApiError> {
    let name = p.required("category")?.clone();
    let path = p.get("savePath").cloned().unwrap_or_default();
    blocking(move || Ok(daemon.create_category(&name, &path)?)).await?;
    Ok(text(""))
}

async fn edit_category(State(daemon): State<Arc<Daemon>>, p: Params) -> Result<Response, ApiError> {
    let name = p.required("category")?.clone();
    let path = p.get("savePath").cloned().unwrap_or_default();
    blocking(move || Ok(daemon.edit_category(&name, &path)?)).await?;
    Ok(text(""))
}

async fn remove_categories(
    State(daemon): State<Arc<Daemon>>,
    p: Params,
) -> Result<Response, ApiError> {
    let names: Vec<String> = p
        .required("categories")?
        .split('\n')
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    if names.len() > labels::CATEGORIES_MAX {
        return Err(bad(format!("more than {} categories", labels::CATEGORIES_MAX)));
    }
    blocking(move || Ok(daemon.remove_categories(&names)?)).await?;
    Ok(text(""))
}

async fn relabel(
    daemon: Arc<Daemon>,
    p: Params,
    change: impl FnOnce(&Daemon, &[InfoHash]) -> Result<(), DaemonError> + Send + 'static,
) -> Result<Response, ApiError> {
    blocking(move || {
        let hashes = targets(&daemon, &p)?;
        Ok(change(&daemon, &hashes)?)
    })
    .await?;
    Ok(text(""))
}

async fn set_category(State(daemon): State<Arc<Daemon>>, p: Params) -> Result<Response, ApiError> {
    let name = p.required("category")?.clone();
    if !name.is_empty() {
        labels::check_category(&name).map_err(|e| bad(e.to_string()))?;
    }
    relabel(daemon, p, move |d, h| d.relabel(h, LabelChange::Category(&name))).await
}

fn tag_list(p: &Params, key: &str) -> Result<BTreeSet<String>, ApiError> {
    labels::parse_tags(p.get(key).map_or("", String::as_str)).map_err(|e| bad(e.to_string()))
}

async fn tags(State(daemon): State<Arc<Daemon>>) -> Json<Value> {
    Json(json!(daemon.labels().tags))
}

async fn create_tags(State(daemon): State<Arc<Daemon>>, p: Params) -> Result<Response, ApiError> {
    let tags = tag_list(&p, "tags")?;
    blocking(move || Ok(daemon.create_tags(&tags)?)).await?;
    Ok(text(""))
}

async fn delete_tags(State(daemon): State<Arc<Daemon>>, p: Params) -> Result<Response, ApiError> {
    let tags = tag_list(&p, "tags")?;
    blocking(move || Ok(daemon.delete_tags(&tags)?)).await?;
    Ok(text(""))
}

async fn add_tags(State(daemon): State<Arc<Daemon>>, p: Params) -> Result<Response, ApiError> {
    let tags = tag_list(&p, "tags")?;
    relabel(daemon, p, move |d, h| d.relabel(h, LabelChange::AddTags(&tags))).await
}

async fn remove_tags(State(daemon): State<Arc<Daemon>>, p: Params) -> Result<Response, ApiError> {
    let tags = tag_list(&p, "tags")?;
    relabel(daemon, p, move |d, h| {
        let which = (!tags.is_empty()).then_some(&tags);
        d.relabel(h, LabelChange::RemoveTags(which))
    })
    .await
}

async fn set_share_limits(
    State(daemon): State<Arc<Daemon>>,
    p: Params,
) -> Result<Response, ApiError> {
    let ratio =
        p.number::<f64>("ratioLimit")?.ok_or_else(|| bad("ratioLimit is required".into()))?;
    let mins = p
        .number::<i64>("seedingTimeLimit")?
        .ok_or_else(|| bad("seedingTimeLimit is required".into()))?;
    share::check_ratio_limit(ratio).map_err(bad)?;
    share::check_seeding_time_limit(mins).map_err(bad)?;
    relabel(daemon, p, move |d, h| {
        d.relabel(h, LabelChange::ShareLimits { ratio, seeding_time_mins: mins })
    })
    .await
}

/// `setForceStart`: there is no queue, so forcing a start is a resume;
/// `value=false` changes nothing.
async fn set_force_start(
    State(daemon): State<Arc<Daemon>>,
    p: Params,
) -> Result<Response, ApiError> {
    if p.get("value").is_some_and(|v| flag(v)) {
        each(daemon, p, Daemon::resume).await
    } else {
        blocking(move || targets(&daemon, &p).map(|_| ())).await?;
        Ok(text(""))
    }
}

/// `setSuperSeeding`: `value=false` is what every torrent is (nothing
/// changes); `true` is refused, ringbit has no super seeding. Flood sends
/// `false` after each add.
async fn set_super_seeding(
    State(daemon): State<Arc<Daemon>>,
    p: Params,
) -> Result<Response, ApiError> {
    if p.get("value").is_some_and(|v| flag(v)) {
        return Err(bad("super seeding is not supported".into()));
    }
    blocking(move || targets(&daemon, &p).map(|_| ())).await?;
    Ok(text(""))
}

/// `sync/torrentPeers`: the torrent must exist (404 otherwise); its peers
/// are not listed (always a full, empty answer).
async fn torrent_peers(
    State(daemon): State<Arc<Daemon>>,
    p: Params,
) -> Result<Json<Value>, ApiError> {
    blocking(move || one_view(&daemon, &p)).await?;
    Ok(Json(json!({"rid": 1, "full_update": true, "show_flags": true, "peers": {}})))
}

/// A rate limit parameter: bytes per second, 0 or less = none.
fn rate_limit(p: &Params, key: &str) -> Result<u64, ApiError> {
    Ok(p.number::<i64>(key)?.ok_or_else(|| bad(format!("{key} is required")))?.max(0) as u64)
}

async fn set_limit(daemon: Arc<Daemon>, p: Params, upload: bool) -> Result<Response, ApiError> {
    let limit = rate_limit(&p, "limit")?;
    each(daemon, p, move |d, h| {
        let view = d.torrent(h).ok_or(DaemonError::NotFound(h))?;
        if upload {
            d.set_torrent_limits(h, limit, view.download_rate_limit)
        } else {
            d.set_torrent_limits(h, view.upload_rate_limit, limit)
        }
    })
    .await
}

async fn set_upload_limit(
    State(daemon): State<Arc<Daemon>>,
    p: Params,
) -> Result<Response, ApiError> {
    set_limit(daemon, p, true).await
}

async fn set_download_limit(
    State(daemon): State<Arc<Daemon>>,
    p: Params,
) -> Result<Response, ApiError> {
    set_limit(daemon, p, false).await
}

async fn get_limits(daemon: Arc<Daemon>, p: Params, upload: bool) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        let mut out = Map::new();
        for h in targets(&daemon, &p)? {
            if let Some(v) = daemon.torrent(h) {
                let limit = if upload { v.upload_rate_limit } else { v.download_rate_limit };
                out.insert(v.info_hash, json!(limit));
            }
        }
        Ok(Json(Value::Object(out)))
    })
    .await
}

async fn upload_limit(
    State(daemon): State<Arc<Daemon>>,
    p: Params,
) -> Result<Json<Value>, ApiError> {
    get_limits(daemon, p, true).await
}

async fn download_limit(
    State(daemon): State<Arc<Daemon>>,
    p: Params,
) -> Result<Json<Value>, ApiError> {
    get_limits(daemon, p, false).await
}

/// How a torrent's files are laid out under its save path
/// (`contentLayout`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ContentLayout {
    Original,
    Subfolder,
    NoSubfolder,
}

impl ContentLayout {
    /// qBittorrent's reading: `Subfolder` and `NoSubfolder` by name,
    /// anything else `Original` (Flood sends `contentLayout=undefined`).
    pub fn parse(text: &str) -> ContentLayout {
        match text {
            "Subfolder" => ContentLayout::Subfolder,
            "NoSubfolder" => ContentLayout::NoSubfolder,
            _ => ContentLayout::Original,
        }
    }

    /// The directory a torrent goes to under `save_path`: a single-file
    /// torrent in `Subfolder` gets a folder named after it (without its
    /// extension); a multi-file torrent in `NoSubfolder` would need its top
    /// folder stripped, which ringbit's layout does not do.
    pub fn dir(
        self,
        save_path: &std::path::Path,
        info: &crate::metainfo::Info,
    ) -> Result<PathBuf, String> {
        match self {
            ContentLayout::Subfolder if !info.multi_file => {
                let stem = std::path::Path::new(&info.name)
                    .file_stem()
                    .map_or_else(|| info.name.clone(), |s| s.to_string_lossy().into_owned());
                Ok(save_path.join(stem))
            }
            ContentLayout::NoSubfolder if info.multi_file => Err(
                "contentLayout NoSubfolder for a multi-file torrent is not supported (its files \
                 keep their top folder): use Original"
                    .into(),
            ),
            _ => Ok(save_path.to_path_buf()),
        }
    }
}

/// One item of `urls`, as something [`Daemon::add_torrent_with`] takes: a
/// magnet link, or a bare 40-digit info hash (made a magnet link).
pub fn url_item(url: &str) -> Result<Vec<u8>, String> {
    if url.len() >= 7 && url[..7].eq_ignore_ascii_case("magnet:") {
        return Ok(url.as_bytes().to_vec());
    }
    if InfoHash::from_hex(url).is_some() {
        return Ok(format!("magnet:?xt=urn:btih:{url}").into_bytes());
    }
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Err(format!(
            "{url:?}: .torrent URLs are not fetched (the daemon never downloads from hosts an API \
             client names); upload the .torrent file or give a magnet link"
        ));
    }
    Err(format!("{url:?} is not a magnet link or an info hash"))
}

/// Reads a multipart `torrents/add` form: the .torrent files and the text
/// fields.
async fn read_multipart(
    mut multipart: Multipart,
) -> Result<(Vec<Vec<u8>>, HashMap<String, String>), ApiError> {
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
    Ok((torrents, fields))
}

/// `torrents/add`: multipart (`torrents` files and text fields) or a plain
/// form (`urls` only). Everything is checked before anything is added:
/// `savepath` must resolve under the download roots (403), categories, tags,
/// limits and `contentLayout` must be valid, `urls` must be magnet links or
/// info hashes (400). Then `Ok.` when at least one torrent was added,
/// `Fails.` when none (invalid or already there).
async fn add(State(daemon): State<Arc<Daemon>>, request: Request) -> Result<Response, ApiError> {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let (torrents, fields) = if multipart {
        let form = Multipart::from_request(request, &()).await.map_err(|e| {
            bad(format!("torrents/add: malformed multipart/form-data: {}", e.body_text()))
        })?;
        read_multipart(form).await?
    } else {
        let Params(fields) = Params::from_request(request, &()).await?;
        (Vec::new(), fields)
    };
    let p = Params(fields);
    let urls: Vec<&str> = p
        .get("urls")
        .map(|u| u.split('\n').map(str::trim).filter(|u| !u.is_empty()).collect())
        .unwrap_or_default();
    if urls.len() > ADD_TORRENTS_MAX {
        return Err(bad(format!("more than {ADD_TORRENTS_MAX} urls in one request")));
    }
    let mut items = torrents;
    for url in urls {
        items.push(url_item(url).map_err(bad)?);
    }
    if items.is_empty() {
        return Err(bad("no torrents file and no urls in the form".into()));
    }
    let paused = ["paused", "stopped"].iter().any(|k| p.get(k).is_some_and(|v| flag(v)));
    let category = p.get("category").cloned().unwrap_or_default();
    if !category.is_empty() {
        labels::check_category(&category).map_err(|e| bad(e.to_string()))?;
    }
    let tags = tag_list(&p, "tags")?;
    let ratio = p.number::<f64>("ratioLimit")?.unwrap_or(LIMIT_GLOBAL as f64);
    let mins = p.number::<i64>("seedingTimeLimit")?.unwrap_or(LIMIT_GLOBAL);
    share::check_ratio_limit(ratio).map_err(bad)?;
    share::check_seeding_time_limit(mins).map_err(bad)?;
    let up = p.number::<i64>("upLimit")?.unwrap_or(0).max(0) as u64;
    let down = p.number::<i64>("dlLimit")?.unwrap_or(0).max(0) as u64;
    let layout = ContentLayout::parse(p.get("contentLayout").map_or("", String::as_str));
    let save_path = p.get("savepath").filter(|s| !s.is_empty()).map(PathBuf::from);
    let extra = AddExtra {
        labels: Labels {
            category: category.clone(),
            tags: tags.clone(),
            ratio_limit: ratio,
            seeding_time_limit_mins: mins,
        },
        upload_rate_limit: up,
        download_rate_limit: down,
    };
    let added = blocking(move || {
        // The save path: given, else the category's, else the default.
        let category_path = daemon
            .labels()
            .categories
            .get(&category)
            .map(|c| c.save_path.clone())
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let base =
            save_path.or(category_path).unwrap_or_else(|| daemon.config().download_dir.clone());
        let base = daemon.resolve_save_path(&base)?;
        let mut planned = Vec::with_capacity(items.len());
        for bytes in items {
            let dir = match Metainfo::from_bytes(&bytes) {
                Ok(m) => layout.dir(&base, &m.info).map_err(bad)?,
                Err(_) => base.clone(), // a magnet, or refused below
            };
            planned.push((bytes, dir));
        }
        if !category.is_empty() && !daemon.labels().categories.contains_key(&category) {
            match daemon.create_category(&category, "") {
                Ok(()) | Err(DaemonError::Label(labels::LabelError::CategoryExists(_))) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !tags.is_empty() {
            daemon.create_tags(&tags)?;
        }
        let mut added = 0;
        for (bytes, dir) in planned {
            match daemon.add_torrent_with(bytes, Some(dir), Source::Api, paused, extra.clone()) {
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

    fn qbt_state4(view: &TorrentView) -> &'static str {
        qbt_state(view, 4)
    }

    fn context() -> RowContext {
        RowContext { major: 4, share: GlobalShare::default() }
    }

    #[test]
    fn states_follow_the_reported_version() {
        assert_eq!(qbt_state(&view("paused", 4, 0, 0), 5), "stoppedUP");
        assert_eq!(qbt_state(&view("paused", 2, 0, 0), 5), "stoppedDL");
        assert_eq!(qbt_state(&view("seeding", 4, 0, 0), 5), "stalledUP");
        assert_eq!(qbt_state(&view("metadata", 0, 0, 0), 4), "metaDL");
        assert_eq!(versions(4), ("v4.6.7", "2.9.3"));
        assert_eq!(versions(5).0, "v5.0.4");
    }

    #[test]
    fn urls_layouts_and_file_progress() {
        assert!(url_item("magnet:?xt=urn:btih:abc").is_ok());
        let h = "ab".repeat(20);
        assert_eq!(url_item(&h).unwrap(), format!("magnet:?xt=urn:btih:{h}").into_bytes());
        assert!(url_item("https://example.org/x.torrent").unwrap_err().contains("not fetched"));
        assert!(url_item("ftp://x").is_err() && url_item("").is_err());
        assert_eq!(ContentLayout::parse("undefined"), ContentLayout::Original);
        assert_eq!(ContentLayout::parse("Subfolder"), ContentLayout::Subfolder);
        let single = crate::metainfo::Metainfo::from_bytes(
            format!(
                "d4:infod6:lengthi5e4:name9:movie.mkv12:piece lengthi16384e6:pieces20:{}ee",
                "a".repeat(20)
            )
            .as_bytes(),
        )
        .unwrap();
        let base = std::path::Path::new("/d");
        assert_eq!(ContentLayout::Subfolder.dir(base, &single.info).unwrap(), base.join("movie"));
        assert_eq!(ContentLayout::NoSubfolder.dir(base, &single.info).unwrap(), base);
        assert_eq!(ContentLayout::Original.dir(base, &single.info).unwrap(), base);
        let mut have = crate::bitfield::Bitfield::new(4);
        have.set(1);
        assert_eq!(have_bytes(&have, 10, 5, 25), 10); // piece 1 = [10, 20)
        assert_eq!(have_bytes(&have, 10, 12, 15), 3);
        assert_eq!(have_bytes(&have, 10, 0, 10), 0);
        assert_eq!(have_bytes(&have, 10, 7, 7), 0);
    }

    #[test]
    fn states_use_qbittorrent_4_names() {
        assert_eq!(qbt_state4(&view("seeding", 4, 0, 0)), "stalledUP");
        assert_eq!(qbt_state4(&view("seeding", 4, 10, 0)), "uploading");
        assert_eq!(qbt_state4(&view("downloading", 1, 0, 10)), "downloading");
        assert_eq!(qbt_state4(&view("downloading", 1, 0, 0)), "stalledDL");
        assert_eq!(qbt_state4(&view("paused", 4, 0, 0)), "pausedUP");
        assert_eq!(qbt_state4(&view("paused", 2, 0, 0)), "pausedDL");
        assert_eq!(qbt_state4(&view("checking", 0, 0, 0)), "checkingDL");
        assert_eq!(qbt_state4(&view("queued", 4, 0, 0)), "queuedUP");
        assert_eq!(qbt_state4(&view("error", 4, 0, 0)), "error");
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
        let row = torrent_json(&view("seeding", 4, 0, 0), &context());
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
