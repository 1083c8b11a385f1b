//! Snapshot metadata in redb, an embedded transactional store.
//!
//! One table maps a snapshot's key (containerd's name for it) to its
//! [`Record`] as JSON; another holds the next directory id. Each change is
//! one redb write transaction, durable when `commit` returns, so a crash
//! leaves either the old or the new state. A directory id is taken from the
//! counter in the transaction that adds the snapshot: when that commit is
//! lost to a crash, the id may be handed out again, and its directory (an
//! orphan) is removed at the next start, before anything is served.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_ID: &str = "next_id";

/// A snapshot's kind, as in containerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Writable, from Prepare.
    Active,
    /// Read-only, from View.
    View,
    /// Committed: a parent for others, never mounted itself.
    Committed,
}

/// What the store keeps for one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Directory id: the snapshot lives in `snapshots/<id>`.
    pub id: u64,
    /// Its kind.
    pub kind: Kind,
    /// Key of the parent (a committed snapshot), or empty.
    pub parent: String,
    /// containerd's labels.
    pub labels: BTreeMap<String, String>,
    /// When it was made.
    pub created: SystemTime,
    /// When it last changed.
    pub updated: SystemTime,
    /// Bytes used, as counted at Commit (committed snapshots only).
    pub size: i64,
    /// Inodes used, as counted at Commit.
    pub inodes: i64,
}

/// Most ancestors a snapshot can have: overlayfs stacks at most 500 lower
/// layers (`OVL_MAX_STACK`). Prepare and View refuse a deeper snapshot, so
/// a longer chain read from the store is a loop.
pub const MAX_PARENTS: usize = 500;

/// The metadata store.
pub struct Store {
    db: Database,
}

fn decode(bytes: &[u8]) -> Result<Record> {
    Ok(serde_json::from_slice(bytes)?)
}

/// A record's place in its chain alone: what the children check reads of
/// every record, and the parent walk of every ancestor (each Mounts call
/// of a 50-layer container walks 50). serde skips the other fields without
/// building them (labels, times): the children check among 2,000
/// snapshots takes 2.3 ms instead of 3.3 ms (under the store lock).
#[derive(Deserialize)]
struct Link<'a> {
    id: u64,
    #[serde(borrow)]
    parent: std::borrow::Cow<'a, str>,
}

fn decode_link(bytes: &[u8]) -> Result<Link<'_>> {
    Ok(serde_json::from_slice(bytes)?)
}

/// Where a new store is made before it gets its name.
fn temp_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".new");
    name.into()
}

/// Unlinks the file `path` (one file, never a directory), if it is there.
fn remove_if_there(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("removing", path, e)),
    }
}

fn opening(path: &Path, e: redb::DatabaseError) -> Error {
    Error::Store(format!(
        "opening {}: {e}; is another idoverlay-snapshotter using this root? \
         If not, the file is damaged: move it aside (its snapshots are then lost)",
        path.display()
    ))
}

/// A write transaction: every change in it lands together at
/// [`Txn::commit`], or not at all when it is dropped.
pub struct Txn {
    txn: redb::WriteTransaction,
}

impl Store {
    /// Opens (or creates) the store file. redb checks and, after a crash,
    /// repairs it here.
    ///
    /// A new store is made whole under a temporary name (`PATH.new`) and
    /// only then linked to `path`: a kill during redb's first writes left a
    /// file at `path` that no later start could open ("invalid data").
    /// Now `path` is either absent (start over) or a store that was
    /// complete and synced.
    pub fn open(path: &Path) -> Result<Store> {
        let temp = temp_path(path);
        let db = match std::fs::symlink_metadata(path) {
            Ok(_) => Database::create(path).map_err(|e| opening(path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match Self::create_new(path, &temp)? {
                    Some(db) => db,
                    // Another start linked its store first.
                    None => Database::create(path).map_err(|e| opening(path, e))?,
                }
            }
            Err(e) => return Err(Error::io("looking at", path, e)),
        };
        let txn = db.begin_write()?;
        txn.open_table(SNAPSHOTS)?;
        txn.open_table(META)?;
        txn.commit()?;
        // A kill between the link and the unlink leaves the temporary name
        // of a store that is now at `path` (or the torn file of a kill
        // before the link): either way not the store.
        remove_if_there(&temp)?;
        Ok(Store { db })
    }

    /// Opens the existing store file, creating nothing (for `check`); redb
    /// repairs it after a crash, as a start would.
    pub fn open_existing(path: &Path) -> Result<Store> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::InvalidArgument(format!(
                    "{}: no store there: no snapshotter has started on this root yet \
                     (is --root right?)",
                    path.display()
                )))
            }
            Err(e) => return Err(Error::io("looking at", path, e)),
        }
        let db = Database::open(path).map_err(|e| opening(path, e))?;
        Ok(Store { db })
    }

    /// A store made at `temp`, synced, and linked to `path` (never over an
    /// existing file; `None` if one appeared), the directory synced.
    fn create_new(path: &Path, temp: &Path) -> Result<Option<Database>> {
        // One start (or `check`) at a time makes the store: a second one
        // would remove the first's `temp` below while it is being written,
        // and the first then link the second's file, or serve from an
        // unlinked one whose records the next start would not find (and
        // whose directories it would remove). Whoever does not get the
        // lock would fail on the store anyway ("already open").
        let dir = path.parent().unwrap_or(Path::new("."));
        let dir_fd = std::fs::File::open(dir).map_err(|e| Error::io("opening", dir, e))?;
        match rustix::fs::flock(
            &dir_fd,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        ) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(Error::Store(format!(
                    "{}: another idoverlay-snapshotter (or its check) is making the store \
                     there; run one at a time on a root",
                    dir.display()
                )))
            }
            Err(e) => return Err(Error::io("locking", dir, e.into())),
        }
        if std::fs::symlink_metadata(path).is_ok() {
            // Another start linked its store before this one got the lock.
            return Ok(None);
        }
        // Left by a start killed before its link: never the store.
        remove_if_there(temp)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(temp)
            .map_err(|e| Error::io("creating", temp, e))?;
        let db = Database::builder()
            .create_file(file)
            .map_err(|e| opening(temp, e))?;
        // redb syncs the file at each commit: the tables exist on disk
        // before the store has a name.
        let txn = db.begin_write()?;
        txn.open_table(SNAPSHOTS)?;
        txn.open_table(META)?;
        txn.commit()?;
        match std::fs::hard_link(temp, path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                drop(db);
                remove_if_there(temp)?;
                return Ok(None);
            }
            Err(e) => return Err(Error::io("linking the new store to", path, e)),
        }
        dir_fd
            .sync_all()
            .map_err(|e| Error::io("syncing", dir, e))?;
        Ok(Some(db))
    }

    /// The record of `key`.
    pub fn get(&self, key: &str) -> Result<Option<Record>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        let value = table.get(key)?;
        value.map(|v| decode(v.value())).transpose()
    }

    /// Every snapshot, ordered by key.
    pub fn all(&self) -> Result<Vec<(String, Record)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_string(), decode(v.value())?));
        }
        Ok(out)
    }

    /// The record of `key` and the directory ids of its ancestors, nearest
    /// first (overlay's `lowerdir` order), read in one snapshot of the store.
    pub fn with_parents(&self, key: &str) -> Result<(Record, Vec<u64>)> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        let record = table
            .get(key)?
            .map(|v| decode(v.value()))
            .transpose()?
            .ok_or_else(|| Error::NotFound(key.to_string()))?;
        let mut ids = Vec::new();
        let mut parent = record.parent.clone();
        while !parent.is_empty() {
            let value = table.get(parent.as_str())?.ok_or_else(|| {
                Error::Store(format!("snapshot {key}: ancestor {parent} is missing"))
            })?;
            let link = decode_link(value.value())?;
            ids.push(link.id);
            if ids.len() > MAX_PARENTS {
                return Err(Error::Store(format!("snapshot {key}: parent chain loops")));
            }
            parent = link.parent.into_owned();
        }
        Ok((record, ids))
    }

    /// Takes the next directory id, durably.
    pub fn allocate_id(&self) -> Result<u64> {
        let txn = self.db.begin_write()?;
        let id = {
            let mut meta = txn.open_table(META)?;
            let id = meta.get(NEXT_ID)?.map_or(1, |v| v.value());
            meta.insert(NEXT_ID, id + 1)?;
            id
        };
        txn.commit()?;
        Ok(id)
    }

    /// Starts a write transaction.
    pub fn write(&self) -> Result<Txn> {
        Ok(Txn {
            txn: self.db.begin_write()?,
        })
    }
}

impl Txn {
    /// The record of `key`, as this transaction sees it.
    pub fn get(&self, key: &str) -> Result<Option<Record>> {
        let table = self.txn.open_table(SNAPSHOTS)?;
        let value = table.get(key)?;
        value.map(|v| decode(v.value())).transpose()
    }

    /// Takes the next directory id; it is used up once this transaction
    /// commits, and free again if it does not.
    pub fn allocate_id(&self) -> Result<u64> {
        let mut meta = self.txn.open_table(META)?;
        let id = meta.get(NEXT_ID)?.map_or(1, |v| v.value());
        meta.insert(NEXT_ID, id + 1)?;
        Ok(id)
    }

    /// Writes `record` under `key`.
    pub fn put(&self, key: &str, record: &Record) -> Result<()> {
        let bytes = serde_json::to_vec(record)?;
        let mut table = self.txn.open_table(SNAPSHOTS)?;
        table.insert(key, bytes.as_slice())?;
        Ok(())
    }

    /// Adds a new snapshot: `key` must be free and `parent` empty or a
    /// committed snapshot.
    pub fn create(&self, key: &str, record: &Record) -> Result<()> {
        if key.is_empty() {
            return Err(Error::InvalidArgument("snapshot key is empty".into()));
        }
        if self.get(key)?.is_some() {
            return Err(Error::AlreadyExists(key.to_string()));
        }
        if !record.parent.is_empty() {
            match self.get(&record.parent)? {
                None => return Err(Error::NotFound(format!("parent {}", record.parent))),
                Some(p) if p.kind != Kind::Committed => {
                    return Err(Error::InvalidArgument(format!(
                        "parent {} is not a committed snapshot",
                        record.parent
                    )))
                }
                Some(_) => {}
            }
        }
        self.put(key, record)
    }

    /// Deletes `key`, refusing while another snapshot has it as parent.
    pub fn remove(&self, key: &str) -> Result<Record> {
        let record = self
            .get(key)?
            .ok_or_else(|| Error::NotFound(key.to_string()))?;
        // Only a committed snapshot can be a parent (`create` takes no
        // other), so the removal of a container's active snapshot, the
        // common one, reads no other record.
        if record.kind == Kind::Committed {
            let table = self.txn.open_table(SNAPSHOTS)?;
            for item in table.iter()? {
                let (k, v) = item?;
                if decode_link(v.value())?.parent == key {
                    return Err(Error::FailedPrecondition(format!(
                        "cannot remove snapshot {key}: {} has it as parent",
                        k.value()
                    )));
                }
            }
        }
        let mut table = self.txn.open_table(SNAPSHOTS)?;
        table.remove(key)?;
        Ok(record)
    }

    /// Makes it all durable.
    pub fn commit(self) -> Result<()> {
        self.txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, kind: Kind, parent: &str) -> Record {
        let now = SystemTime::now();
        Record {
            id,
            kind,
            parent: parent.into(),
            labels: BTreeMap::new(),
            created: now,
            updated: now,
            size: 0,
            inodes: 0,
        }
    }

    fn store() -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "idoverlay-snapshotter-store-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metadata.redb");
        let _ = std::fs::remove_file(&path);
        (Store::open(&path).unwrap(), path)
    }

    #[test]
    fn ids_rules_and_durability() {
        let (s, path) = store();
        assert_eq!(s.allocate_id().unwrap(), 1);
        assert_eq!(s.allocate_id().unwrap(), 2);
        let t = s.write().unwrap();
        t.create("c1", &record(1, Kind::Committed, "")).unwrap();
        t.create("a1", &record(2, Kind::Active, "c1")).unwrap();
        assert!(matches!(
            t.create("a1", &record(3, Kind::Active, "")),
            Err(Error::AlreadyExists(_))
        ));
        // An active parent: InvalidArgument, as containerd's storage.
        assert!(matches!(
            t.create("a2", &record(3, Kind::Active, "a1")),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            t.create("a3", &record(3, Kind::Active, "nope")),
            Err(Error::NotFound(_))
        ));
        t.commit().unwrap();
        let t = s.write().unwrap();
        assert!(matches!(t.remove("c1"), Err(Error::FailedPrecondition(_))));
        drop(t);
        assert_eq!(s.with_parents("a1").unwrap().1, vec![1]);
        // A transaction dropped without commit changes nothing.
        let t = s.write().unwrap();
        t.remove("a1").unwrap();
        drop(t);
        drop(s);
        let s = Store::open(&path).unwrap();
        assert!(s.get("a1").unwrap().is_some());
        assert_eq!(s.allocate_id().unwrap(), 3, "the counter survives a reopen");
        assert_eq!(s.all().unwrap().len(), 2);
        drop(s);
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_dir(path.parent().unwrap()).unwrap();
    }
}
