//! Categories, tags and share limits of the qBittorrent API: the global
//! tables (every category with its save path, every tag, the global share
//! limits) in `<state_dir>/labels.json`, each torrent's own in its registry
//! sidecar ([`super::registry::Labels`]); the share thread that enforces the
//! limits ([`Daemon::share_tick`], rules in [`super::share`]) and the totals
//! it keeps (`totals.json`).
//!
//! Layer: driver (control plane; never on a shard). Every change runs under
//! the daemon's `ops` lock, so two API calls never write a sidecar or
//! `labels.json` out of order.
//!
//! Invariants: at most [`CATEGORIES_MAX`] categories, [`TAGS_MAX`] tags,
//! names at most [`LABEL_NAME_MAX_BYTES`]; a torrent's category is "" or one
//! of the categories; its tags are all known tags (deleting a category or a
//! tag takes it off every torrent).

use super::registry::{Labels, Totals};
use super::share::{self, GlobalShare, ShareAction};
use super::{lock, roots, unix_now, Daemon, DaemonError, EntryState};
use crate::metainfo::InfoHash;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Most categories.
pub const CATEGORIES_MAX: usize = 1000;
/// Most tags (in the daemon, and so on one torrent).
pub const TAGS_MAX: usize = 1000;
/// Longest category or tag name.
pub const LABEL_NAME_MAX_BYTES: usize = 255;
/// How often share limits are checked and seeding time counted.
pub const SHARE_TICK: Duration = Duration::from_secs(1);

/// Why a label operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("{0}")]
    Invalid(String),
    #[error("category {0:?} already exists")]
    CategoryExists(String),
    #[error("category {0:?} does not exist")]
    NoSuchCategory(String),
    #[error("more than {max} {what}")]
    TooMany { what: &'static str, max: usize },
}

/// A category.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Category {
    /// Where its torrents go when added without a save path ("" = the
    /// default download dir).
    pub save_path: String,
}

/// `labels.json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(default)]
pub struct LabelStore {
    pub categories: BTreeMap<String, Category>,
    pub tags: BTreeSet<String>,
    pub share: GlobalShare,
}

/// Checks a category name as qBittorrent does: non-empty, no leading or
/// trailing `/`, no empty or `.`/`..` part between slashes, no control bytes.
pub fn check_category(name: &str) -> Result<(), LabelError> {
    let bad = |why: &str| Err(LabelError::Invalid(format!("category name {name:?}: {why}")));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > LABEL_NAME_MAX_BYTES {
        return bad("too long");
    }
    if name.chars().any(char::is_control) || name.contains('\\') {
        return bad("control character or backslash");
    }
    if name.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        return bad("empty, `.` or `..` part");
    }
    Ok(())
}

/// Checks a tag name: non-empty once trimmed, no comma, no control bytes.
pub fn check_tag(name: &str) -> Result<(), LabelError> {
    let bad = |why: &str| Err(LabelError::Invalid(format!("tag {name:?}: {why}")));
    if name.trim().is_empty() {
        return bad("empty");
    }
    if name.len() > LABEL_NAME_MAX_BYTES {
        return bad("too long");
    }
    if name.contains(',') || name.chars().any(char::is_control) {
        return bad("comma or control character");
    }
    Ok(())
}

/// The tags of a comma-separated list (trimmed, empty parts skipped),
/// checked; at most [`TAGS_MAX`].
pub fn parse_tags(list: &str) -> Result<BTreeSet<String>, LabelError> {
    let mut tags = BTreeSet::new();
    for tag in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        check_tag(tag)?;
        if tags.len() >= TAGS_MAX {
            return Err(LabelError::TooMany { what: "tags", max: TAGS_MAX });
        }
        tags.insert(tag.to_string());
    }
    Ok(tags)
}

impl LabelStore {
    /// Adds `tags` to the known tags (checked against [`TAGS_MAX`]).
    pub fn add_tags(&mut self, tags: &BTreeSet<String>) -> Result<bool, LabelError> {
        let new = tags.difference(&self.tags).count();
        if self.tags.len() + new > TAGS_MAX {
            return Err(LabelError::TooMany { what: "tags", max: TAGS_MAX });
        }
        self.tags.extend(tags.iter().cloned());
        Ok(new > 0)
    }
}

/// What the torrents' labels and limits are changed to.
pub enum LabelChange<'a> {
    Category(&'a str),
    AddTags(&'a BTreeSet<String>),
    /// `None`: every tag.
    RemoveTags(Option<&'a BTreeSet<String>>),
    ShareLimits {
        ratio: f64,
        seeding_time_mins: i64,
    },
}

impl Daemon {
    /// Loads `labels.json` (a corrupt file is logged and replaced by empty
    /// tables: labels never stop the daemon from starting).
    pub(super) fn load_labels(registry: &super::Registry) -> LabelStore {
        match registry.load_labels() {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                tracing::error!(%error, "labels.json unreadable; categories and tags start empty");
                LabelStore::default()
            }),
            Ok(None) => LabelStore::default(),
            Err(error) => {
                tracing::error!(%error, "labels.json unreadable; categories and tags start empty");
                LabelStore::default()
            }
        }
    }

    /// The categories, tags and global share limits.
    pub fn labels(&self) -> LabelStore {
        lock(&self.labels).clone()
    }

    /// Changes the global tables with `f` and saves them (under `ops`).
    fn change_labels<R>(
        &self,
        f: impl FnOnce(&mut LabelStore) -> Result<R, LabelError>,
    ) -> Result<R, DaemonError> {
        let mut labels = lock(&self.labels);
        let mut changed = labels.clone();
        let result = f(&mut changed)?;
        if changed != *labels {
            let json = serde_json::to_vec_pretty(&changed).expect("plain data serializes");
            self.registry.save_labels(&json)?;
            *labels = changed;
        }
        Ok(result)
    }

    /// A save path for a category: "" or a directory under the roots.
    fn category_path(&self, save_path: &str) -> Result<String, DaemonError> {
        if save_path.is_empty() {
            return Ok(String::new());
        }
        let resolved = roots::resolve_under(&PathBuf::from(save_path), &self.roots)?;
        Ok(resolved.display().to_string())
    }

    /// Resolves an API client's save path under the download roots
    /// (nothing is created).
    pub fn resolve_save_path(&self, path: &std::path::Path) -> Result<PathBuf, DaemonError> {
        Ok(roots::resolve_under(path, &self.roots)?)
    }

    pub fn create_category(&self, name: &str, save_path: &str) -> Result<(), DaemonError> {
        check_category(name)?;
        let save_path = self.category_path(save_path)?;
        let _ops = lock(&self.ops);
        self.change_labels(|l| {
            if l.categories.contains_key(name) {
                return Err(LabelError::CategoryExists(name.into()));
            }
            if l.categories.len() >= CATEGORIES_MAX {
                return Err(LabelError::TooMany { what: "categories", max: CATEGORIES_MAX });
            }
            l.categories.insert(name.into(), Category { save_path });
            Ok(())
        })
    }

    pub fn edit_category(&self, name: &str, save_path: &str) -> Result<(), DaemonError> {
        let save_path = self.category_path(save_path)?;
        let _ops = lock(&self.ops);
        self.change_labels(|l| match l.categories.get_mut(name) {
            Some(c) => {
                c.save_path = save_path;
                Ok(())
            }
            None => Err(LabelError::NoSuchCategory(name.into())),
        })
    }

    /// Removes categories (unknown names skipped); their torrents get none.
    pub fn remove_categories(&self, names: &[String]) -> Result<(), DaemonError> {
        let _ops = lock(&self.ops);
        self.change_labels(|l| {
            for name in names {
                l.categories.remove(name);
            }
            Ok(())
        })?;
        let names: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        self.relabel_where(
            |labels| names.contains(labels.category.as_str()),
            |labels| labels.category.clear(),
        )
    }

    pub fn create_tags(&self, tags: &BTreeSet<String>) -> Result<(), DaemonError> {
        let _ops = lock(&self.ops);
        self.change_labels(|l| l.add_tags(tags).map(|_| ()))
    }

    /// Deletes tags (unknown ones skipped) and takes them off every torrent.
    pub fn delete_tags(&self, tags: &BTreeSet<String>) -> Result<(), DaemonError> {
        let _ops = lock(&self.ops);
        self.change_labels(|l| {
            l.tags.retain(|t| !tags.contains(t));
            Ok(())
        })?;
        self.relabel_where(
            |labels| !labels.tags.is_disjoint(tags),
            |labels| labels.tags.retain(|t| !tags.contains(t)),
        )
    }

    /// Sets the global share limits.
    pub fn set_global_share(&self, share: GlobalShare) -> Result<(), DaemonError> {
        let _ops = lock(&self.ops);
        self.change_labels(|l| {
            l.share = share;
            Ok(())
        })
    }

    /// Rewrites the sidecar of every torrent whose labels match `select`
    /// (caller holds `ops`).
    fn relabel_where(
        &self,
        select: impl Fn(&Labels) -> bool,
        change: impl Fn(&mut Labels),
    ) -> Result<(), DaemonError> {
        let metas: Vec<_> = {
            let mut torrents = lock(&self.torrents);
            torrents
                .iter_mut()
                .filter(|(_, e)| select(&e.meta.labels))
                .map(|(h, e)| {
                    change(&mut e.meta.labels);
                    (*h, e.meta.clone())
                })
                .collect()
        };
        for (info_hash, meta) in metas {
            self.registry.update(info_hash, &meta)?;
        }
        Ok(())
    }

    /// Changes the labels or share limits of `hashes` (unknown ones
    /// skipped). A category must exist; new tags are created.
    pub fn relabel(&self, hashes: &[InfoHash], change: LabelChange<'_>) -> Result<(), DaemonError> {
        let _ops = lock(&self.ops);
        match &change {
            LabelChange::Category(name)
                if !name.is_empty() && !lock(&self.labels).categories.contains_key(*name) =>
            {
                return Err(LabelError::NoSuchCategory(name.to_string()).into());
            }
            LabelChange::AddTags(tags) => self.change_labels(|l| l.add_tags(tags).map(|_| ()))?,
            LabelChange::ShareLimits { ratio, seeding_time_mins } => {
                share::check_ratio_limit(*ratio).map_err(LabelError::Invalid)?;
                share::check_seeding_time_limit(*seeding_time_mins).map_err(LabelError::Invalid)?;
            }
            _ => {}
        }
        for info_hash in hashes {
            let meta = {
                let mut torrents = lock(&self.torrents);
                let Some(entry) = torrents.get_mut(info_hash) else { continue };
                let labels = &mut entry.meta.labels;
                let before = labels.clone();
                match &change {
                    LabelChange::Category(name) => labels.category = name.to_string(),
                    LabelChange::AddTags(tags) => labels.tags.extend(tags.iter().cloned()),
                    LabelChange::RemoveTags(None) => labels.tags.clear(),
                    LabelChange::RemoveTags(Some(tags)) => {
                        labels.tags.retain(|t| !tags.contains(t))
                    }
                    LabelChange::ShareLimits { ratio, seeding_time_mins } => {
                        labels.ratio_limit = *ratio;
                        labels.seeding_time_limit_mins = *seeding_time_mins;
                    }
                }
                if *labels == before {
                    continue;
                }
                entry.meta.clone()
            };
            self.registry.update(*info_hash, &meta)?;
        }
        Ok(())
    }

    /// The share thread: counts seeding time and enforces share limits
    /// every [`SHARE_TICK`]; saves the totals with the resume saver.
    pub(super) fn run_share_limits(self: std::sync::Arc<Self>) {
        while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
            self.stop_receiver.recv_timeout(SHARE_TICK)
        {
            self.share_tick(Instant::now());
        }
    }

    /// One share-limit pass at `now`: returns the torrents whose limit was
    /// reached (already stopped or removed as the global action says).
    pub fn share_tick(&self, now: Instant) -> Vec<InfoHash> {
        let global = lock(&self.labels).share.clone();
        let unix = unix_now();
        let mut reached = Vec::new();
        {
            let mut torrents = lock(&self.torrents);
            for (info_hash, entry) in torrents.iter_mut() {
                let run = match &entry.state {
                    EntryState::Running(status) if status.error().is_none() => Some(status),
                    _ => None,
                };
                let complete = run.is_some_and(|s| {
                    s.have_pieces.load(Ordering::Relaxed) == s.piece_count && s.piece_count > 0
                });
                entry.share.observe(now, complete, unix);
                let Some(status) = run.filter(|_| complete) else { continue };
                let totals = entry.share.with_run(
                    status.counters.uploaded.load(Ordering::Relaxed),
                    status.counters.downloaded.load(Ordering::Relaxed),
                );
                let size = entry.metainfo.info.total_length;
                let ratio = share::ratio(totals.uploaded, totals.downloaded, size);
                if share::limit_reached(ratio, totals.seeding_secs, &entry.meta.labels, &global) {
                    reached.push(*info_hash);
                }
            }
        }
        for info_hash in &reached {
            let result = match global.action {
                ShareAction::Stop => self.pause(*info_hash),
                ShareAction::Remove => self.remove(*info_hash),
                ShareAction::RemoveWithFiles => self.remove_with_data(*info_hash),
            };
            match result {
                Ok(()) => {
                    tracing::info!(%info_hash, action = ?global.action, "share limit reached")
                }
                Err(error) => tracing::warn!(%info_hash, %error, "share limit action failed"),
            }
        }
        reached
    }

    /// Every torrent's totals now (the current runs' counters included).
    pub(super) fn totals_now(&self) -> BTreeMap<String, Totals> {
        lock(&self.torrents)
            .iter()
            .map(|(h, e)| {
                let totals = match &e.state {
                    EntryState::Running(s) => e.share.with_run(
                        s.counters.uploaded.load(Ordering::Relaxed),
                        s.counters.downloaded.load(Ordering::Relaxed),
                    ),
                    _ => e.share.totals,
                };
                (h.to_hex(), totals)
            })
            .collect()
    }

    /// Writes `totals.json` when it changed since the last write.
    pub(super) fn save_totals(&self) {
        let totals = self.totals_now();
        let mut saved = lock(&self.saved_totals);
        if *saved == totals {
            return;
        }
        match self.registry.save_totals(&totals) {
            Ok(()) => *saved = totals,
            Err(error) => tracing::warn!(%error, "cannot save totals.json"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["tv", "tv/sonarr", "Movies 4K", "ünï"] {
            assert!(check_category(good).is_ok(), "{good}");
        }
        for bad in ["", "/tv", "tv/", "a//b", "a/../b", "..", "a\nb", "a\\b"] {
            assert!(check_category(bad).is_err(), "{bad:?}");
        }
        assert!(check_category(&"x".repeat(LABEL_NAME_MAX_BYTES + 1)).is_err());
        assert!(check_tag("x,y").is_err() && check_tag("  ").is_err() && check_tag("ok").is_ok());
        let tags = parse_tags(" a, b,,a ,").unwrap();
        assert_eq!(tags.into_iter().collect::<Vec<_>>(), ["a", "b"]);
        let many: Vec<String> = (0..=TAGS_MAX).map(|i| format!("t{i}")).collect();
        assert!(matches!(parse_tags(&many.join(",")), Err(LabelError::TooMany { .. })));
    }

    #[test]
    fn the_tag_table_is_bounded() {
        let mut store = LabelStore::default();
        let first: BTreeSet<String> = (0..TAGS_MAX).map(|i| format!("t{i}")).collect();
        assert!(store.add_tags(&first).unwrap());
        assert!(!store.add_tags(&first).unwrap(), "nothing new");
        assert!(store.add_tags(&["one more".to_string()].into()).is_err());
        assert_eq!(store.tags.len(), TAGS_MAX);
        let json = serde_json::to_vec(&store).unwrap();
        assert_eq!(serde_json::from_slice::<LabelStore>(&json).unwrap(), store);
        assert_eq!(serde_json::from_slice::<LabelStore>(b"{}").unwrap(), LabelStore::default());
    }
}
