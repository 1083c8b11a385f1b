//! The snapshotter's operations, blocking, on the store and the
//! directories together.
//!
//! Two kinds of lock. The store lock is held for every step that changes the
//! store and `snapshots/` together (short: a transaction, a mkdir, a
//! rename), so they never move apart under concurrent requests (containerd's
//! own snapshotters hold their bolt write transaction the same way). The
//! slow steps that concern one snapshot only — assembling or taking down its
//! overlay, deleting its tree — run outside it, under that snapshot's busy
//! mark, which Remove, Commit and a re-assembly wait for. Lock order: a busy
//! mark, then the store lock. The one exception never waits: Prepare marks
//! its new id under the store lock, before the record is committed (no one
//! else can know that id yet; marked after the commit, a Remove of the key
//! could take the mark in between and both would wait for ever). A Commit
//! also reserves its name (under the store lock, held only to reserve)
//! before it takes its overlay down; a Commit or Prepare of a name being
//! given waits for that reservation holding no lock, so `AlreadyExists`
//! means the name exists. Reads take no lock: redb gives each read a
//! consistent snapshot.
//!
//! Crash consistency comes from the order of steps: `snapshots/new-…` is
//! made → renamed to `snapshots/ID` → the record is committed (durably).
//! Removal goes the other way: the record is deleted (durably) →
//! `snapshots/ID` is renamed to `rm-ID` → removed. A kill between any two
//! steps leaves a directory that no record names; [`Snapshots::cleanup`],
//! run at every start, removes exactly those (and only directories of the
//! names the snapshotter itself makes).

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::sync::{Condvar, Mutex};
use std::time::SystemTime;

use containerd_snapshots::api::types::Mount;

use crate::error::{Error, Result};
use crate::filter::Filters;
use crate::labels::{self, Maps};
use crate::log;
use crate::mounts::{self, OverlayOptions};
use crate::storage::{Storage, NEW_PREFIX, RM_PREFIX};
use crate::store::{Kind, Record, Store, MAX_PARENTS};

/// The snapshotter: its directories, its store and the lock that keeps
/// them together.
pub struct Snapshots {
    storage: Storage,
    store: Store,
    lock: Mutex<()>,
    opts: OverlayOptions,
    /// Ids whose overlay or tree is being worked on outside the store lock.
    busy: Mutex<HashSet<u64>>,
    idle: Condvar,
    /// Names a Commit is giving a snapshot: reserved (under the store
    /// lock) before it takes the overlay down, so that of two Commits to
    /// one name the one refused is refused before it changes anything.
    /// A Commit or Prepare of a name being given waits for that Commit:
    /// AlreadyExists only once the name is there (containerd's unpack
    /// takes it to mean the layer exists, and builds on it).
    naming: Mutex<HashSet<String>>,
    /// Notified when a name leaves `naming`.
    named: Condvar,
}

/// A name reserved by a Commit, released when dropped.
struct Naming<'a> {
    snapshots: &'a Snapshots,
    name: String,
}

impl Drop for Naming<'_> {
    fn drop(&mut self) {
        self.snapshots.names_being_given().remove(&self.name);
        self.snapshots.named.notify_all();
    }
}

/// A snapshot's busy mark, cleared when dropped.
struct Busy<'a> {
    snapshots: &'a Snapshots,
    id: u64,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut busy = self
            .snapshots
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        busy.remove(&self.id);
        self.snapshots.idle.notify_all();
    }
}

/// What a cleanup did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanupReport {
    /// Directories in `snapshots/` that no record named, removed.
    pub removed_dirs: Vec<String>,
    /// Directories that could not be removed, and why.
    pub kept_dirs: Vec<String>,
    /// idmapped overlays found attached for their active snapshot.
    pub found_mounts: Vec<u64>,
    /// Mounts under `mounts/` that belonged to no snapshot, taken down.
    pub removed_mounts: Vec<u64>,
}

/// Whether a snapshot gets an idmapped overlay of its own: map labels and
/// at least one layer beneath (without one, containerd's plain bind of the
/// empty, root-owned `fs` is all there is).
fn idmapped(record: &Record, parents: &[u64]) -> Result<Option<Maps>> {
    if record.kind == Kind::Committed || parents.is_empty() {
        return Ok(None);
    }
    labels::maps(&record.labels)
}

impl Snapshots {
    /// Opens the snapshotter's root (creating it), its store, and cleans up
    /// after a previous run (see [`Snapshots::cleanup`]).
    pub fn open(root: &std::path::Path) -> Result<(Snapshots, CleanupReport)> {
        let storage = Storage::open(root)?;
        let store = Store::open(&storage.root().join("metadata.redb"))?;
        let snapshots = Snapshots {
            storage,
            store,
            lock: Mutex::new(()),
            opts: OverlayOptions::detect(),
            busy: Mutex::new(HashSet::new()),
            idle: Condvar::new(),
            naming: Mutex::new(HashSet::new()),
            named: Condvar::new(),
        };
        let report = snapshots.cleanup()?;
        Ok((snapshots, report))
    }

    /// The directories.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding the lock left nothing half-done that the
        // next start's cleanup would not also handle.
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `id` busy, waiting while someone else has it marked.
    fn mark_busy(&self, id: u64) -> Busy<'_> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        while busy.contains(&id) {
            busy = self.idle.wait(busy).unwrap_or_else(|p| p.into_inner());
        }
        busy.insert(id);
        Busy {
            snapshots: self,
            id,
        }
    }

    fn names_being_given(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.naming.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `name` for a Commit: AlreadyExists when a snapshot has it;
    /// while another Commit is giving it, waits for that one first (holding
    /// no lock; that Commit needs only the store lock to finish).
    fn reserve_name(&self, name: &str) -> Result<Naming<'_>> {
        loop {
            {
                // Under the store lock, as Prepare's check of its key.
                let _guard = self.locked();
                if self.store.get(name)?.is_some() {
                    return Err(Error::AlreadyExists(name.to_string()));
                }
                if self.names_being_given().insert(name.to_string()) {
                    return Ok(Naming {
                        snapshots: self,
                        name: name.to_string(),
                    });
                }
            }
            // Another Commit is giving it: AlreadyExists only once it has.
            self.wait_name_given(name);
        }
    }

    /// Waits until no Commit is giving `name`.
    fn wait_name_given(&self, name: &str) {
        let mut naming = self.names_being_given();
        while naming.contains(name) {
            naming = self.named.wait(naming).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn is_busy(&self, id: u64) -> bool {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }

    /// The record of `key` with its busy mark held, read again once the
    /// mark is ours (the key may have gone, or been reused, meanwhile).
    fn claim(&self, key: &str) -> Result<(Record, Vec<u64>, Busy<'_>)> {
        loop {
            let (record, _) = self.store.with_parents(key)?;
            let busy = self.mark_busy(record.id);
            let (again, parents) = self.store.with_parents(key)?;
            if again.id == record.id {
                return Ok((again, parents, busy));
            }
        }
    }

    /// Prepare (`kind` Active) or View: a new snapshot on `parent`, and the
    /// mounts to use it through.
    pub fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let now = SystemTime::now();
        let mut record = Record {
            id: 0,
            kind,
            parent: parent.to_string(),
            labels,
            created: now,
            updated: now,
            size: 0,
            inodes: 0,
        };
        labels::check_sizes(&record.labels)?;
        let maps = labels::maps(&record.labels)?;
        if key.is_empty() {
            return Err(Error::InvalidArgument("snapshot key is empty".into()));
        }
        let guard = loop {
            let guard = self.locked();
            if self.store.get(key)?.is_some() {
                return Err(Error::AlreadyExists(key.to_string()));
            }
            if !self.names_being_given().contains(key) {
                break guard;
            }
            drop(guard);
            self.wait_name_given(key);
        };
        let parents = if parent.is_empty() {
            Vec::new()
        } else {
            let (p, mut ids) = self.store.with_parents(parent).map_err(|e| match e {
                Error::NotFound(_) => Error::NotFound(format!("parent {parent}")),
                e => e,
            })?;
            // containerd's own storage says InvalidArgument here.
            if p.kind != Kind::Committed {
                return Err(Error::InvalidArgument(format!(
                    "parent {parent} is not a committed snapshot"
                )));
            }
            ids.insert(0, p.id);
            if ids.len() > MAX_PARENTS {
                return Err(Error::FailedPrecondition(format!(
                    "a snapshot on {parent} would stack {} layers, more than overlayfs \
                     allows ({MAX_PARENTS}); use an image with fewer layers",
                    ids.len()
                )));
            }
            ids
        };
        let overlay = maps.is_some() && !parents.is_empty();
        let txn = self.store.write()?;
        record.id = txn.allocate_id()?;
        let id = record.id;
        // The new snapshot's busy mark (free: the id is new) is taken
        // before its record is visible: a Remove or Commit of the key that
        // came between the commit and the mark would hold the mark and
        // wait for the store lock held here, while this waited for the mark.
        let busy = self.mark_busy(id);
        let temp = self.storage.new_dir(kind == Kind::Active || overlay)?;
        let made = (|| -> Result<()> {
            // The upper's root belongs to the container's root (mapped), or
            // to whoever owns the parent's root (containerd does the same).
            if let Some(m) = &maps {
                self.storage.chown_fs(&temp, m.root_uid, m.root_gid)?;
            } else if let Some(top) = parents.first() {
                let (uid, gid) = self.storage.fs_owner(*top)?;
                self.storage.chown_fs(&temp, uid, gid)?;
            }
            Ok(())
        })();
        if let Err(e) = made {
            self.discard(&temp);
            return Err(e);
        }
        if let Err(e) = self.storage.publish(&temp, id) {
            self.discard(&temp);
            return Err(e);
        }
        let committed = txn.create(key, &record).and_then(|()| txn.commit());
        if let Err(e) = committed {
            self.discard(OsStr::new(&id.to_string()));
            return Err(e);
        }
        if !overlay {
            return Ok(mounts::plain(&self.storage, id, kind, &parents, &self.opts));
        }
        // The overlay is assembled outside the store lock, under the new
        // snapshot's busy mark, so other snapshots' requests go on meanwhile.
        drop(guard);
        let maps = maps.expect("overlay implies maps");
        match mounts::assemble(&self.storage, id, kind, &parents, &maps, &self.opts) {
            Ok(strategy) => {
                log::info(&format!(
                    "{key}: idmapped overlay of {} layers ({strategy}) at {}",
                    parents.len(),
                    self.storage.mount_path(id).display()
                ));
                drop(busy);
                Ok(mounts::idmapped_bind(&self.storage, id, kind))
            }
            Err(e) => {
                // Undo: nothing of a failed Prepare stays.
                let _guard = self.locked();
                let undo = self.store.write().and_then(|txn| {
                    txn.remove(key)?;
                    txn.commit()
                });
                match undo {
                    Ok(()) => {
                        let _ = mounts::take_down(&self.storage, id);
                        self.discard(OsStr::new(&id.to_string()));
                    }
                    Err(u) => log::warn(&format!("undoing {key}: {u}")),
                }
                Err(e)
            }
        }
    }

    /// Removes a directory of `snapshots/` that is no snapshot (any more);
    /// a failure is reported and left for the next cleanup.
    fn discard(&self, name: &OsStr) {
        if let Err(e) = self.storage.remove_dir(name) {
            log::warn(&format!(
                "removing {}: {e}",
                self.storage.root().join("snapshots").join(name).display()
            ));
        }
    }

    /// The mounts of an active snapshot or view. An idmapped snapshot
    /// whose overlay is gone (after a reboot) gets it assembled again.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let (record, parents) = self.store.with_parents(key)?;
        if record.kind == Kind::Committed {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key} is committed; only active snapshots and views have mounts"
            )));
        }
        let Some(maps) = idmapped(&record, &parents)? else {
            return Ok(mounts::plain(
                &self.storage,
                record.id,
                record.kind,
                &parents,
                &self.opts,
            ));
        };
        if !mounts::attached(&self.storage, record.id)? {
            // Under its busy mark: a Remove or Commit waits, and what it
            // reads again says whether the snapshot is still there.
            let (again, parents, _busy) = self.claim(key)?;
            if again.id != record.id {
                return Err(Error::NotFound(key.to_string()));
            }
            if !mounts::attached(&self.storage, record.id)? {
                let strategy = mounts::assemble(
                    &self.storage,
                    record.id,
                    record.kind,
                    &parents,
                    &maps,
                    &self.opts,
                )?;
                log::notice(&format!(
                    "{key}: idmapped overlay assembled again ({strategy})"
                ));
            }
        }
        Ok(mounts::idmapped_bind(&self.storage, record.id, record.kind))
    }

    /// Commits active snapshot `key` as `name`. An idmapped snapshot's
    /// overlay is taken down first: a committed snapshot is never mounted.
    pub fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<()> {
        labels::check_sizes(&labels)?;
        let (record, parents, _busy) = self.claim(key)?;
        if record.kind != Kind::Active {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key} is not active; only active snapshots can be committed"
            )));
        }
        if name.is_empty() {
            return Err(Error::InvalidArgument("commit name is empty".into()));
        }
        let _naming = self.reserve_name(name)?;
        // Under the busy mark only: the overlay goes, the tree is counted.
        if idmapped(&record, &parents)?.is_some() {
            mounts::take_down(&self.storage, record.id)?;
        }
        let (size, inodes) = self.storage.usage(record.id)?;
        let _guard = self.locked();
        let txn = self.store.write()?;
        if txn.get(name)?.is_some() {
            return Err(Error::AlreadyExists(name.to_string()));
        }
        txn.remove(key)?;
        let now = SystemTime::now();
        txn.create(
            name,
            &Record {
                id: record.id,
                kind: Kind::Committed,
                parent: record.parent,
                labels,
                created: now,
                updated: now,
                size,
                inodes,
            },
        )?;
        txn.commit()
    }

    /// Removes snapshot `key`: its overlay, its record, its directory.
    /// Refused while it has children or anything is mounted inside its
    /// directory (that mount is reported, and nothing is deleted).
    pub fn remove(&self, key: &str) -> Result<()> {
        let (record, parents, _busy) = self.claim(key)?;
        let dir = self.storage.snapshot_path(record.id);
        let name = OsStr::new(&record.id.to_string()).to_os_string();
        // Under the busy mark only, as in commit: the walk for mounts and
        // an unmount (which syncs the upper's filesystem) need no store.
        // Under its lock they made the removals of 8 containers at once
        // wait for each other.
        // Only an active snapshot or a view has an overlay to take down,
        // and neither can be a parent (prepare takes committed parents
        // only), so txn.remove below cannot refuse one for its children.
        let beneath = self.storage.mounts_in_snapshot(record.id)?;
        if !beneath.is_empty() {
            let list: Vec<String> = beneath.iter().map(|p| p.display().to_string()).collect();
            log::warn(&format!(
                "refusing to remove snapshot {key}: mounted inside it: {}",
                list.join(", ")
            ));
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key} not removed: something is mounted inside {}: {}; unmount it first",
                dir.display(),
                list.join(", ")
            )));
        }
        if idmapped(&record, &parents)?.is_some() {
            mounts::take_down(&self.storage, record.id)?;
        }
        {
            let _guard = self.locked();
            let txn = self.store.write()?;
            txn.remove(key)?;
            txn.commit()?;
        }
        // The record is gone: from here a failure only leaves a directory
        // for the next cleanup, which the error reports. The tree is deleted
        // outside the store lock, under the busy mark (cleanup skips it).
        self.storage.remove_dir(&name).inspect_err(|e| {
            log::warn(&format!("snapshot {key} removed, its directory not: {e}"));
        })
    }

    /// The record of `key`.
    pub fn stat(&self, key: &str) -> Result<Record> {
        self.store
            .get(key)?
            .ok_or_else(|| Error::NotFound(key.to_string()))
    }

    /// Updates `key`'s labels: all of them (no field paths, or `labels`),
    /// or the ones named `labels.KEY`. The map labels of an active snapshot
    /// or view are fixed: its overlay was assembled with them.
    pub fn update(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
        fieldpaths: &[String],
    ) -> Result<Record> {
        let _guard = self.locked();
        let txn = self.store.write()?;
        let mut record = txn
            .get(key)?
            .ok_or_else(|| Error::NotFound(key.to_string()))?;
        let mut new = record.labels.clone();
        if fieldpaths.is_empty() || fieldpaths.iter().any(|f| f == "labels") {
            new = labels.clone();
        }
        for path in fieldpaths.iter().filter(|f| f.as_str() != "labels") {
            let Some(label) = path.strip_prefix("labels.") else {
                return Err(Error::InvalidArgument(format!(
                    "cannot update field {path:?} of snapshot {key}; only labels can change"
                )));
            };
            match labels.get(label) {
                Some(v) => new.insert(label.to_string(), v.clone()),
                None => new.remove(label),
            };
        }
        labels::check_sizes(&new)?;
        if record.kind != Kind::Committed {
            for l in [labels::UID_MAPPING, labels::GID_MAPPING] {
                if new.get(l) != record.labels.get(l) {
                    return Err(Error::FailedPrecondition(format!(
                        "label {l} of snapshot {key} cannot change while it is in use"
                    )));
                }
            }
        }
        record.labels = new;
        record.updated = SystemTime::now();
        txn.put(key, &record)?;
        txn.commit()?;
        Ok(record)
    }

    /// Bytes and inodes of `key` itself: counted now for an active
    /// snapshot, as counted at Commit otherwise.
    pub fn usage(&self, key: &str) -> Result<(i64, i64)> {
        let record = self.stat(key)?;
        if record.kind == Kind::Active {
            // Usage takes no busy mark: a Remove may delete the tree while
            // it is counted, and then the snapshot is not found.
            self.storage
                .usage(record.id)
                .map_err(|e| match self.store.get(key) {
                    Ok(Some(now)) if now.id == record.id => e,
                    _ => Error::NotFound(key.to_string()),
                })
        } else {
            Ok((record.size, record.inodes))
        }
    }

    /// Every snapshot matching `filters`.
    pub fn list(&self, filters: &[String]) -> Result<Vec<(String, Record)>> {
        let filters = Filters::parse(filters)?;
        Ok(self
            .store
            .all()?
            .into_iter()
            .filter(|(k, r)| filters.matches(k, r))
            .collect())
    }

    /// Removes what no record names: directories in `snapshots/` (only ids
    /// and the `new-`/`rm-` names this snapshotter makes; anything else is
    /// reported and left), and mounts in `mounts/` that belong to no active
    /// idmapped snapshot. Run at start and for containerd's Cleanup.
    pub fn cleanup(&self) -> Result<CleanupReport> {
        let _guard = self.locked();
        let mut report = CleanupReport::default();
        let all = self.store.all()?;
        let ids: HashSet<u64> = all.iter().map(|(_, r)| r.id).collect();
        for name in self.storage.snapshot_entries()? {
            let s = name.to_string_lossy().to_string();
            // ID, rm-ID or rm-ID.N of a snapshot a Remove is deleting right
            // now (its record already gone): that Remove finishes it.
            let removing = s
                .strip_prefix(RM_PREFIX)
                .unwrap_or(&s)
                .split('.')
                .next()
                .and_then(|r| r.parse::<u64>().ok());
            if removing.is_some_and(|id| !ids.contains(&id) && self.is_busy(id)) {
                continue;
            }
            let ours = match s.parse::<u64>() {
                Ok(id) if ids.contains(&id) => continue,
                Ok(_) => true,
                Err(_) => s.starts_with(NEW_PREFIX) || s.starts_with(RM_PREFIX),
            };
            if !ours {
                log::warn(&format!(
                    "{} is not a name this snapshotter makes; left alone",
                    self.storage.root().join("snapshots").join(&name).display()
                ));
                continue;
            }
            match self.storage.remove_dir(&name) {
                Ok(()) => report.removed_dirs.push(s),
                Err(e) => {
                    log::warn(&format!("cleanup: {e}"));
                    report.kept_dirs.push(format!("{s}: {e}"));
                }
            }
        }
        // Which snapshots own an overlay: only whether they have a parent
        // matters, not the whole chain.
        let keep: HashSet<u64> = all
            .iter()
            .filter(|(_, r)| {
                let parents: &[u64] = if r.parent.is_empty() { &[] } else { &[0] };
                matches!(idmapped(r, parents), Ok(Some(_)))
            })
            .map(|(_, r)| r.id)
            .collect();
        for name in self.storage.mount_entries()? {
            let Ok(id) = name.to_string_lossy().parse::<u64>() else {
                log::warn(&format!(
                    "{} is not a name this snapshotter makes; left alone",
                    self.storage.root().join("mounts").join(&name).display()
                ));
                continue;
            };
            if keep.contains(&id) {
                match mounts::attached(&self.storage, id) {
                    Ok(true) => report.found_mounts.push(id),
                    Ok(false) => {}
                    Err(e) => log::warn(&format!("mounts/{id}: {e}")),
                }
                continue;
            }
            let was_mounted = !self
                .storage
                .mounts_beneath(&self.storage.mount_path(id))?
                .is_empty();
            match mounts::take_down(&self.storage, id) {
                Ok(()) if was_mounted => report.removed_mounts.push(id),
                Ok(()) => {}
                Err(e) => log::warn(&format!("cleanup of mounts/{id}: {e}")),
            }
        }
        Ok(report)
    }
}

/// What `idoverlay-snapshotter check` finds: the store, the directories
/// and the mounts side by side, without changing anything.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CheckReport {
    /// Snapshots in the store: key, directory id, kind.
    pub snapshots: Vec<(String, u64, String)>,
    /// Overlays attached at `mounts/ID`.
    pub attached: Vec<u64>,
    /// Every way the three disagree (empty when consistent).
    pub problems: Vec<String>,
}

/// Opens `root` without creating or cleaning anything and reports whether
/// the store, `snapshots/` and `mounts/` agree. Needs the snapshotter stopped (the
/// store is locked while it runs).
pub fn check(root: &std::path::Path) -> Result<CheckReport> {
    let storage = Storage::open_existing(root)?;
    let store = Store::open_existing(&storage.root().join("metadata.redb"))?;
    let mut report = CheckReport::default();
    let all = store.all()?;
    let mut ids = HashSet::new();
    let mut overlays = HashSet::new();
    for (key, record) in &all {
        ids.insert(record.id);
        report
            .snapshots
            .push((key.clone(), record.id, format!("{:?}", record.kind)));
        match store.with_parents(key) {
            Ok((_, parents)) => {
                if matches!(idmapped(record, &parents), Ok(Some(_))) {
                    overlays.insert(record.id);
                }
            }
            Err(e) => report.problems.push(format!("{key}: {e}")),
        }
    }
    let mut dirs = HashSet::new();
    for name in storage.snapshot_entries()? {
        let s = name.to_string_lossy().to_string();
        match s.parse::<u64>() {
            Ok(id) if ids.contains(&id) => {
                dirs.insert(id);
            }
            Ok(_) => report
                .problems
                .push(format!("snapshots/{s}: no snapshot has this directory")),
            Err(_) => report.problems.push(format!("snapshots/{s}: leftover")),
        }
    }
    for (key, record) in &all {
        if !dirs.contains(&record.id) {
            report.problems.push(format!(
                "{key}: its directory snapshots/{} is missing; removing the snapshot \
                 takes its record away",
                record.id
            ));
        }
    }
    for name in storage.mount_entries()? {
        let s = name.to_string_lossy().to_string();
        let Ok(id) = s.parse::<u64>() else {
            report.problems.push(format!("mounts/{s}: leftover"));
            continue;
        };
        let attached = mounts::attached(&storage, id)?;
        if attached {
            report.attached.push(id);
        }
        if !overlays.contains(&id) {
            report.problems.push(format!(
                "mounts/{s}: no active idmapped snapshot has this id{}",
                if attached {
                    " (an overlay is attached)"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(report)
}
