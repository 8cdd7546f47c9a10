//! `sync/maindata` change tracking for the qBittorrent API: clients (Flood,
//! VueTorrent, qbit_manage) poll with the `rid` of their last answer and get
//! only what changed since, or everything (`full_update`) when that `rid`
//! is unknown.
//!
//! Layer: pure (no clock, no daemon): the handler builds a [`Snapshot`] of
//! every row and field now and [`SyncTable::answer`] diffs it.
//!
//! How: one table for all clients. Each row (torrent, category, tag, the
//! server state) keeps, per field, a 64-bit hash of the value last seen and
//! the `rid` at which it last changed: 16 bytes per field, no copy of any
//! value and nothing per `rid` or per client. A poll that sees a change
//! takes the next `rid`; a client at `rid` r gets the fields changed after
//! r. Removed rows are remembered in a ring of at most [`SYNC_REMOVED_MAX`]
//! per table; a client older than the oldest removal the ring forgot, older
//! than the table (a restart: `rid`s start at the Unix time in ms, so they
//! grow across restarts), or ahead of it gets a `full_update`.
//!
//! Bounds: memory is rows × fields × 16 bytes plus the removal rings; an
//! answer holds at most every row once (rows are bounded by
//! `limits.max_torrents`, [`super::labels::CATEGORIES_MAX`],
//! [`super::labels::TAGS_MAX`]).

use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};

/// Removals remembered per table (older clients get a full update).
pub const SYNC_REMOVED_MAX: usize = 10_000;

/// The fields of one row, in a fixed order.
pub type Fields = Vec<(&'static str, Value)>;

/// Everything a full answer would hold, as of now.
#[derive(Default)]
pub struct Snapshot {
    pub torrents: Vec<(String, Fields)>,
    pub categories: Vec<(String, Fields)>,
    pub tags: Vec<String>,
    pub server_state: Fields,
}

struct Row {
    /// The rid at which it appeared.
    created: u64,
    /// Per field: hash of the value, rid at which it last changed.
    fields: Vec<(u64, u64)>,
}

struct Table {
    rows: HashMap<String, Row>,
    /// [`SYNC_REMOVED_MAX`] (smaller in tests).
    removed_max: usize,
    removed: VecDeque<(u64, String)>,
    /// A client below this rid missed a removal no longer remembered.
    floor: u64,
}

impl Table {
    fn new(removed_max: usize) -> Table {
        Table { rows: HashMap::new(), removed_max, removed: VecDeque::new(), floor: 0 }
    }

    /// Brings the table to `rows` at `rid`; true when anything changed.
    fn update(&mut self, rows: &[(String, Fields)], rid: u64) -> bool {
        let mut changed = false;
        for (key, fields) in rows {
            match self.rows.get_mut(key) {
                Some(row) if row.fields.len() == fields.len() => {
                    for (slot, (_, value)) in row.fields.iter_mut().zip(fields) {
                        let h = value_hash(value);
                        if slot.0 != h {
                            *slot = (h, rid);
                            changed = true;
                        }
                    }
                }
                _ => {
                    let fields = fields.iter().map(|(_, v)| (value_hash(v), rid)).collect();
                    self.rows.insert(key.clone(), Row { created: rid, fields });
                    changed = true;
                }
            }
        }
        if self.rows.len() != rows.len() || changed {
            let present: HashSet<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
            let gone: Vec<String> =
                self.rows.keys().filter(|k| !present.contains(k.as_str())).cloned().collect();
            for key in gone {
                self.rows.remove(&key);
                self.removed.push_back((rid, key));
                changed = true;
                if self.removed.len() > self.removed_max {
                    if let Some((forgot, _)) = self.removed.pop_front() {
                        self.floor = self.floor.max(forgot);
                    }
                }
            }
        }
        changed
    }

    /// The fields of `key` changed after `since` (all of them when `full`).
    fn changed(
        &self,
        key: &str,
        fields: &Fields,
        since: u64,
        full: bool,
    ) -> Option<Map<String, Value>> {
        let row = self.rows.get(key)?;
        let mut out = Map::new();
        for ((name, value), (_, rid)) in fields.iter().zip(&row.fields) {
            if full || *rid > since {
                out.insert((*name).to_string(), value.clone());
            }
        }
        (!out.is_empty()).then_some(out)
    }

    fn removed_since(&self, since: u64) -> Vec<Value> {
        self.removed
            .iter()
            .filter(|(rid, key)| *rid > since && !self.rows.contains_key(key))
            .map(|(_, key)| Value::String(key.clone()))
            .collect()
    }
}

/// The change tracker behind `sync/maindata`.
pub struct SyncTable {
    rid: u64,
    /// The first rid of this table (clients below it come from an earlier run).
    start_rid: u64,
    torrents: Table,
    categories: Table,
    tags: Table,
    server: Table,
}

impl SyncTable {
    /// A table whose rids start after `start_rid` (the Unix time in ms).
    pub fn new(start_rid: u64) -> SyncTable {
        SyncTable::with_removed_max(start_rid, SYNC_REMOVED_MAX)
    }

    fn with_removed_max(start_rid: u64, removed_max: usize) -> SyncTable {
        SyncTable {
            rid: start_rid,
            start_rid,
            torrents: Table::new(removed_max),
            categories: Table::new(removed_max),
            tags: Table::new(removed_max),
            server: Table::new(removed_max),
        }
    }

    /// The rid the next answer carries when nothing changes.
    pub fn rid(&self) -> u64 {
        self.rid
    }

    /// Updates the table to `now` and answers a client at `client_rid`.
    pub fn answer(&mut self, client_rid: u64, now: Snapshot) -> Map<String, Value> {
        let next = self.rid + 1;
        let tag_rows: Vec<(String, Fields)> =
            now.tags.iter().map(|t| (t.clone(), Vec::new())).collect();
        let server_rows = vec![(String::new(), now.server_state)];
        let mut changed = self.torrents.update(&now.torrents, next);
        changed |= self.categories.update(&now.categories, next);
        changed |= self.tags.update(&tag_rows, next);
        changed |= self.server.update(&server_rows, next);
        if changed {
            self.rid = next;
        }
        let floor = [&self.torrents, &self.categories, &self.tags, &self.server]
            .iter()
            .map(|t| t.floor)
            .max()
            .unwrap_or(0);
        let full = client_rid == 0
            || client_rid > self.rid
            || client_rid < self.start_rid
            || client_rid < floor;
        let since = if full { 0 } else { client_rid };
        let mut out = Map::new();
        out.insert("rid".into(), self.rid.into());
        if full {
            out.insert("full_update".into(), true.into());
        }
        let mut torrents = Map::new();
        for (key, fields) in &now.torrents {
            if let Some(changed) = self.torrents.changed(key, fields, since, full) {
                torrents.insert(key.clone(), Value::Object(changed));
            }
        }
        if full || !torrents.is_empty() {
            out.insert("torrents".into(), Value::Object(torrents));
        }
        let mut categories = Map::new();
        for (key, fields) in &now.categories {
            // A changed category is sent whole, as qBittorrent does.
            if self.categories.changed(key, fields, since, full).is_some() {
                let whole = self.categories.changed(key, fields, 0, true).unwrap_or_default();
                categories.insert(key.clone(), Value::Object(whole));
            }
        }
        if full || !categories.is_empty() {
            out.insert("categories".into(), Value::Object(categories));
        }
        let new_tags: Vec<Value> = tag_rows
            .iter()
            .filter(|(key, _)| {
                full || self.tags.rows.get(key).is_some_and(|row| row.created > since)
            })
            .map(|(key, _)| Value::String(key.clone()))
            .collect();
        if full || !new_tags.is_empty() {
            out.insert("tags".into(), Value::Array(new_tags));
        }
        if let Some(server) = self.server.changed("", &server_rows[0].1, since, full) {
            out.insert("server_state".into(), Value::Object(server));
        }
        if !full {
            for (name, table) in [
                ("torrents_removed", &self.torrents),
                ("categories_removed", &self.categories),
                ("tags_removed", &self.tags),
            ] {
                let removed = table.removed_since(since);
                if !removed.is_empty() {
                    out.insert(name.into(), Value::Array(removed));
                }
            }
        }
        out
    }
}

/// A hash of a JSON value (numbers by their f64 bits; 64 bits make a missed
/// change, two different values with one hash, practically impossible).
fn value_hash(value: &Value) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    hash_into(value, &mut hasher);
    hasher.finish()
}

fn hash_into(value: &Value, hasher: &mut impl Hasher) {
    match value {
        Value::Null => 0u8.hash(hasher),
        Value::Bool(b) => (1u8, *b).hash(hasher),
        Value::Number(n) => {
            2u8.hash(hasher);
            match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => i.hash(hasher),
                (_, Some(u)) => u.hash(hasher),
                _ => n.as_f64().unwrap_or(0.0).to_bits().hash(hasher),
            }
        }
        Value::String(s) => (3u8, s).hash(hasher),
        Value::Array(items) => {
            (4u8, items.len()).hash(hasher);
            items.iter().for_each(|v| hash_into(v, hasher));
        }
        Value::Object(map) => {
            (5u8, map.len()).hash(hasher);
            for (k, v) in map {
                k.hash(hasher);
                hash_into(v, hasher);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn torrent(hash: &str, progress: f64, state: &str) -> (String, Fields) {
        (
            hash.to_string(),
            vec![
                ("name", json!(format!("n-{hash}"))),
                ("progress", json!(progress)),
                ("state", json!(state)),
            ],
        )
    }

    fn snapshot(torrents: Vec<(String, Fields)>, tags: &[&str]) -> Snapshot {
        Snapshot {
            torrents,
            categories: vec![(
                "tv".into(),
                vec![("name", json!("tv")), ("savePath", json!("/d/tv"))],
            )],
            tags: tags.iter().map(|t| t.to_string()).collect(),
            server_state: vec![("dl_info_speed", json!(0))],
        }
    }

    #[test]
    fn incremental_answers_hold_only_changes() {
        let mut table = SyncTable::new(1000);
        let full = table.answer(
            0,
            snapshot(vec![torrent("a", 0.0, "metaDL"), torrent("b", 1.0, "stalledUP")], &["x"]),
        );
        assert_eq!(full["full_update"], true);
        assert_eq!(full["torrents"]["a"]["name"], "n-a");
        assert_eq!(full["categories"]["tv"]["savePath"], "/d/tv");
        assert_eq!(full["tags"], json!(["x"]));
        assert_eq!(full["server_state"]["dl_info_speed"], 0);
        let rid = full["rid"].as_u64().unwrap();
        assert_eq!(rid, 1001);

        // Nothing changed: same rid, nothing but the rid.
        let same = table.answer(
            rid,
            snapshot(vec![torrent("a", 0.0, "metaDL"), torrent("b", 1.0, "stalledUP")], &["x"]),
        );
        assert_eq!(same, json!({"rid": rid}).as_object().unwrap().clone());

        // One field of one torrent, a new torrent, a removed one, a new tag.
        let next = table.answer(
            rid,
            snapshot(
                vec![torrent("a", 0.5, "metaDL"), torrent("c", 0.0, "stalledDL")],
                &["x", "y"],
            ),
        );
        let rid2 = next["rid"].as_u64().unwrap();
        assert_eq!(rid2, rid + 1);
        assert!(next.get("full_update").is_none());
        assert_eq!(
            next["torrents"],
            json!({"a": {"progress": 0.5}, "c": {"name": "n-c", "progress": 0.0, "state": "stalledDL"}})
        );
        assert_eq!(next["torrents_removed"], json!(["b"]));
        assert_eq!(next["tags"], json!(["y"]));
        assert!(next.get("categories").is_none() && next.get("server_state").is_none());

        // A client two answers behind gets both steps merged.
        let behind = table.answer(
            rid - 1 + 1,
            snapshot(vec![torrent("a", 0.5, "metaDL"), torrent("c", 0.0, "stalledDL")], &["y"]),
        );
        assert_eq!(behind["tags_removed"], json!(["x"]));
        assert_eq!(behind["torrents_removed"], json!(["b"]));
        // Unknown rids: older than the table (a restart), or ahead of it.
        for stale in [5, 999, behind["rid"].as_u64().unwrap() + 7] {
            let again = table.answer(stale, snapshot(vec![torrent("a", 0.5, "metaDL")], &["y"]));
            assert_eq!(again["full_update"], true, "{stale}");
            assert_eq!(again["torrents"].as_object().unwrap().len(), 1);
        }
    }

    #[test]
    fn a_forgotten_removal_forces_a_full_update() {
        let max = 50;
        let mut table = SyncTable::with_removed_max(1, max);
        let rows: Vec<_> = (0..max + 2).map(|i| torrent(&format!("{i}"), 0.0, "x")).collect();
        let first = table.answer(0, Snapshot { torrents: rows, ..Snapshot::default() });
        let old = first["rid"].as_u64().unwrap();
        // Remove them one poll at a time: the ring forgets the first removals.
        let mut rid = old;
        let mut left: Vec<_> = (0..max + 2).map(|i| torrent(&format!("{i}"), 0.0, "x")).collect();
        while left.len() > 1 {
            left.remove(0);
            let a = table.answer(rid, Snapshot { torrents: left.clone(), ..Snapshot::default() });
            rid = a["rid"].as_u64().unwrap();
            assert!(a.get("full_update").is_none());
        }
        let stale = table.answer(old, Snapshot { torrents: left.clone(), ..Snapshot::default() });
        assert_eq!(stale["full_update"], true);
        let fresh = table.answer(rid - 1, Snapshot { torrents: left, ..Snapshot::default() });
        assert!(fresh.get("full_update").is_none());
        assert_eq!(fresh["torrents_removed"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn values_hash_by_content() {
        assert_eq!(value_hash(&json!({"a": [1, "x"]})), value_hash(&json!({"a": [1, "x"]})));
        assert_ne!(value_hash(&json!(1)), value_hash(&json!(2)));
        assert_ne!(value_hash(&json!(0.5)), value_hash(&json!(0.25)));
        assert_ne!(value_hash(&json!("1")), value_hash(&json!(1)));
    }
}
