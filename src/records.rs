//! What each idoverlay mount is made of, for people and tools: the overlay
//! options in the mount table name the kernel's handles (`/proc/…/fd/N`,
//! names inside clones), not the directories a rootfs uses. So when asked
//! ([`crate::Overlay::keep_record`], which the CLI and the mount helper
//! do), a small record of the mount is written into the state dir once the
//! overlay is attached, and `idoverlay show` / `idoverlay list` read it.
//!
//! Invariants:
//! * **One record per mount, named by the kernel's id for it**:
//!   `mounts/u<id>.json` with the unique mount id (6.8+, never reused in a
//!   boot), else `mounts/m<id>.json` with mountinfo's id, which the kernel
//!   reuses: such a record counts only while that id is an overlay mounted
//!   at the recorded target, as seen from the root the record was made
//!   from.
//! * **Written atomically** (without a name until whole, see
//!   `state::write_atomically`; gc removes what a kill leaves) in the
//!   state tmpfs (root-only, idoverlay's own, see `state`), read with a
//!   bound, never through a symlink.
//! * **Pruned only when provably stale**: a record whose mount is gone from
//!   the mount namespace it was made in, looked at from that namespace, is
//!   removed by `list`, and by `idoverlay umount` for the mount it took
//!   down. A record of another mount namespace is left alone (its mounts
//!   cannot be seen from here). Mount points are named relative to the
//!   caller's root (statmount, mountinfo), so a chroot sees other paths or
//!   none: a unique id `statmount` still finds is alive wherever it is
//!   mounted, and a mountinfo id is judged by its path only from the very
//!   root the record was made from; from any other root it is neither
//!   listed nor removed.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::idmap::IdMap;
use crate::state::{boot_id, StateDirOnce};
use crate::strategy::Strategy;
use crate::sys;

/// The subdirectory of the state tmpfs that holds the records.
pub(crate) const DIR: &str = "mounts";
const FORMAT: &str = "idoverlay-mount";
const VERSION: u32 = 1;
/// A record of 500 long layer paths stays well below this.
const MAX: usize = 2 * 1024 * 1024;

/// What an idoverlay mount is made of: as [`crate::Mounted`] carries it,
/// and as `idoverlay show` prints it.
///
/// Paths are the real, absolute ones, as the mount namespace that made the
/// mount named them when it was made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountDescription {
    /// Where the overlay is attached.
    pub target: PathBuf,
    /// The lower layers, top-most first.
    pub layers: Vec<PathBuf>,
    /// The data-only layers, in order.
    #[serde(default)]
    pub data_layers: Vec<PathBuf>,
    /// The upper dir, for a writable overlay.
    pub upper: Option<PathBuf>,
    /// The work dir, with an upper dir.
    pub work: Option<PathBuf>,
    /// The uid map (`CONTAINER:HOST:SIZE`), when known: a user namespace
    /// given as a file has no map idoverlay can read unless it is
    /// `/proc/PID/ns/user`.
    #[serde(with = "map_text")]
    pub uidmap: Option<IdMap>,
    /// The gid map, when known.
    #[serde(with = "map_text")]
    pub gidmap: Option<IdMap>,
    /// The user namespace file the maps came from, when one was given.
    pub userns: Option<PathBuf>,
    /// Whether the upper dir is idmapped too.
    pub idmap_upper: bool,
    /// The strategy that assembled it.
    pub strategy: Strategy,
    /// The kernel's id for the mount: the unique mount id (6.8+) when
    /// `unique_mount_id`, else mountinfo's (which the kernel reuses).
    /// Known when the mount was attached by fd, checked after mounting
    /// (with an upper) or recorded; `None` for a read-only overlay mounted
    /// straight at its target without a record (finding it again would
    /// cost the mount a few more syscalls).
    pub mount_id: Option<u64>,
    /// Whether `mount_id` is the unique mount id.
    pub unique_mount_id: bool,
}

/// Maps as text in the JSON: `"0:100000:65536"`, or null.
mod map_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::idmap::IdMap;

    pub fn serialize<S: Serializer>(map: &Option<IdMap>, s: S) -> Result<S::Ok, S::Error> {
        match map {
            Some(map) => s.serialize_str(&map.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IdMap>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| text.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[derive(Serialize, Deserialize)]
struct Record {
    format: String,
    version: u32,
    boot_id: String,
    /// The mount namespace the mount was made in (its inode).
    mount_ns: u64,
    /// The root of the process that made it, which the recorded paths are
    /// relative to; `None` in a record of an older idoverlay.
    #[serde(default)]
    root: Option<RootId>,
    /// That namespace's 64-bit id (6.7+), which `statmount` can look into
    /// from another namespace (6.11+), and which tells when it is gone.
    #[serde(default)]
    mount_ns_id: Option<u64>,
    mount: MountDescription,
}

/// A process's root directory: the mount it is reached through and the
/// inode. Two callers with the same one see the same mount point paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct RootId {
    /// mountinfo's id of the mount (the unique one needs no root).
    mount_id: u64,
    dev_major: u32,
    dev_minor: u32,
    ino: u64,
}

/// The calling thread's root, when the kernel says which mount it is.
fn this_root() -> Option<RootId> {
    let fd = sys::open_dir_path(sys::cwd(), Path::new("/")).ok()?;
    let st = sys::stat_fd(fd.as_fd()).ok()?;
    Some(RootId {
        mount_id: st.mnt_id?,
        dev_major: st.dev.0,
        dev_minor: st.dev.1,
        ino: st.ino,
    })
}

/// What can be told of the mount a record names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    /// It is there: listed, found.
    Live,
    /// Provably gone from this mount namespace: its record may be removed.
    Gone,
    /// Cannot be told from here: neither listed nor removed.
    Unknown,
}

/// The record's file name for a mount id.
fn file_name(id: u64, unique: bool) -> String {
    format!("{}{id}.json", if unique { 'u' } else { 'm' })
}

/// Whether the mount of a record made in another mount namespace is gone
/// with certainty: its unique id is in that namespace no more, or the
/// namespace itself is gone (both asked of `statmount` by the namespace's
/// id, 6.11+). Such records would otherwise stay until the boot ends, one
/// page of the small state tmpfs each.
fn gone_from_its_namespace(record: &Record) -> bool {
    match (record.mount.mount_id, record.mount_ns_id) {
        (Some(id), Some(ns)) if record.mount.unique_mount_id => {
            sys::mount_exists_in(id, Some(ns)) == Some(false)
        }
        _ => false,
    }
}

/// This thread's mount namespace (its nsfs inode).
fn this_mount_ns() -> Option<u64> {
    this_mount_ns_ids().map(|(inode, _)| inode)
}

/// This thread's mount namespace: its nsfs inode, and its 64-bit id when
/// the kernel has one (6.7+), from one open of the namespace file.
pub(crate) fn this_mount_ns_ids() -> Option<(u64, Option<u64>)> {
    let fd = sys::open_read(sys::cwd(), Path::new("/proc/thread-self/ns/mnt")).ok()?;
    let inode = sys::stat_fd(fd.as_fd()).ok()?.ino;
    Some((inode, sys::mount_namespace_id(fd.as_fd())))
}

/// The kernel's id for the mount whose root `fd` is: the unique one when
/// the kernel has it.
pub(crate) fn mount_id_of(fd: std::os::fd::BorrowedFd<'_>) -> Option<(u64, bool)> {
    if let Some(id) = sys::stat_fd_unique_mnt_id(fd) {
        return Some((id, true));
    }
    sys::stat_fd(fd).ok()?.mnt_id.map(|id| (id, false))
}

/// Writes the record of `mount` (its `mount_id` set), replacing any record
/// of that id, in the mount namespace of the calling thread.
pub(crate) fn write(state: &StateDirOnce, mount: &MountDescription) -> Result<()> {
    let (Some(id), Some(boot), Some((ns, ns_id))) =
        (mount.mount_id, boot_id(), this_mount_ns_ids())
    else {
        return Ok(());
    };
    let state_dir = state.path();
    let state = state.get_or_create()?;
    let failed = |e| Error::os("keep the record of the mount in", Some(state_dir), e);
    let dir = crate::state::subdir(state, DIR).map_err(failed)?;
    let bytes = serde_json::to_vec(&Record {
        format: FORMAT.into(),
        version: VERSION,
        boot_id: boot.to_string(),
        mount_ns: ns,
        root: this_root(),
        mount_ns_id: ns_id,
        mount: mount.clone(),
    })
    .map_err(|e| {
        Error::invalid_path("target", &mount.target, format!("cannot be recorded ({e})"))
    })?;
    crate::state::write_atomically(dir.as_fd(), &file_name(id, mount.unique_mount_id), &bytes)
        .map(drop)
        .map_err(failed)
}

/// The mount table as this thread sees it, and the root it sees it from
/// (its paths are relative to that root): read once, when first needed.
struct Seen {
    root: Option<RootId>,
    table: Option<Vec<crate::mountinfo::MountEntry>>,
}

impl Seen {
    fn now() -> Seen {
        // The root first: a table read from it names paths from it.
        let root = this_root();
        Seen {
            root,
            table: crate::mountinfo::read_self().ok(),
        }
    }
}

/// Whether the mount a record names is still there, seen from this mount
/// namespace. A unique id (never reused within a boot) is alive while
/// `statmount` finds it, whatever path it shows at (relative to the
/// caller's root: another one in a chroot, or none). A mountinfo id, which
/// the kernel reuses, is judged by the mount table (`by_table`).
fn liveness(
    mount: &MountDescription,
    made_from: Option<RootId>,
    seen: &mut Option<Seen>,
) -> Liveness {
    let Some(id) = mount.mount_id else {
        return Liveness::Unknown;
    };
    if mount.unique_mount_id {
        return match sys::mount_exists(id) {
            Some(true) => Liveness::Live,
            Some(false) => Liveness::Gone,
            None => Liveness::Unknown,
        };
    }
    by_table(mount, id, made_from, seen.get_or_insert_with(Seen::now))
}

/// A mountinfo id's record: alive while that id is an overlay at the
/// recorded target, gone when not, but only from the very root the record
/// was made from. From another root the same mount shows at another path
/// or not at all, and nothing can be told.
fn by_table(mount: &MountDescription, id: u64, made_from: Option<RootId>, seen: &Seen) -> Liveness {
    let Some(table) = &seen.table else {
        return Liveness::Unknown;
    };
    if made_from.is_none() || seen.root != made_from {
        return Liveness::Unknown;
    }
    if table
        .iter()
        .any(|m| m.mount_id == id && m.fs_type == "overlay" && m.mount_point == mount.target)
    {
        Liveness::Live
    } else {
        Liveness::Gone
    }
}

/// One record, read and checked (this boot's, whole).
fn read(dir: std::os::fd::BorrowedFd<'_>, name: &str) -> Option<Record> {
    let bytes = crate::file::read_small(dir, Path::new(name), MAX, false).ok()?;
    let record: Record = serde_json::from_slice(&bytes).ok()?;
    let whole = record.format == FORMAT
        && record.version == VERSION
        && Some(record.boot_id.as_str()) == boot_id().as_deref()
        && record
            .mount
            .mount_id
            .is_some_and(|id| name == file_name(id, record.mount.unique_mount_id));
    whole.then_some(record)
}

/// The idoverlay mounts of the calling thread's mount namespace, by
/// target; records of mounts that are gone are removed. Nothing is read or
/// created when the state dir does not exist.
///
/// ```no_run
/// for m in idoverlay::records::list(idoverlay::gc::DEFAULT_STATE_DIR)? {
///     println!("{} ({} layers)", m.target.display(), m.layers.len());
/// }
/// # Ok::<(), idoverlay::Error>(())
/// ```
pub fn list(state_dir: impl AsRef<Path>) -> Result<Vec<MountDescription>> {
    let state_dir = state_dir.as_ref();
    let Some(dir) = Records::new(state_dir).dir()? else {
        return Ok(Vec::new());
    };
    let names = sys::dir_entries(dir.as_fd())
        .map_err(|e| Error::os("read the records in", Some(state_dir), e))?;
    let ns = this_mount_ns();
    let mut seen = None;
    let mut mounts = Vec::new();
    for name in names {
        let Some(name) = name.to_str().filter(|n| n.ends_with(".json")) else {
            continue;
        };
        let Some(record) = read(dir.as_fd(), name) else {
            continue;
        };
        if Some(record.mount_ns) != ns {
            if gone_from_its_namespace(&record) {
                let _ = sys::unlink(dir.as_fd(), Path::new(name));
            }
            continue;
        }
        match liveness(&record.mount, record.root, &mut seen) {
            Liveness::Live => mounts.push(record.mount),
            Liveness::Gone => {
                let _ = sys::unlink(dir.as_fd(), Path::new(name));
            }
            Liveness::Unknown => {}
        }
    }
    mounts.sort_by(|a, b| a.target.cmp(&b.target));
    Ok(mounts)
}

/// The record of the overlay mounted at `target` (its root, not followed
/// through a symlink), or `None` when idoverlay keeps none for it.
pub fn find(
    state_dir: impl AsRef<Path>,
    target: impl AsRef<Path>,
) -> Result<Option<MountDescription>> {
    Records::new(state_dir.as_ref()).find(target)
}

/// Removes the record of `mount` if that mount is gone (e.g. after
/// unmounting it); a mount still there keeps its record.
pub fn forget_if_gone(state_dir: impl AsRef<Path>, mount: &MountDescription) -> Result<()> {
    Records::new(state_dir.as_ref()).forget_if_gone(mount)
}

/// The records of one state dir, for a caller that looks a record up and
/// later removes it (as `idoverlay umount` does): the state dir is walked
/// from `/` and checked once, when first needed, and both calls use that
/// fd. Nothing is created. Make one per operation: it keeps the state dir
/// it opened first, so a long-lived one would not see a state tmpfs
/// mounted there after the one it opened was taken away.
///
/// ```no_run
/// let records = idoverlay::records::Records::new(idoverlay::gc::DEFAULT_STATE_DIR);
/// let record = records.find("/c1/rootfs")?;
/// idoverlay::unmount_overlay("/c1/rootfs", false)?;
/// if let Some(record) = record {
///     records.forget_if_gone(&record)?;
/// }
/// # Ok::<(), idoverlay::Error>(())
/// ```
#[derive(Debug)]
pub struct Records {
    state: StateDirOnce,
}

impl Records {
    /// The records kept in `state_dir` (not opened yet).
    pub fn new(state_dir: impl Into<PathBuf>) -> Records {
        Records {
            state: StateDirOnce::new(state_dir),
        }
    }

    /// The records' directory in the state dir, when there is one.
    fn dir(&self) -> Result<Option<std::os::fd::OwnedFd>> {
        let Some(state) = self.state.existing()? else {
            return Ok(None);
        };
        Ok(sys::open_dir_beneath(state.fd.as_fd(), Path::new(DIR)).ok())
    }

    /// The record of the overlay mounted at `target` (its root, not
    /// followed through a symlink), or `None` when idoverlay keeps none
    /// for it.
    pub fn find(&self, target: impl AsRef<Path>) -> Result<Option<MountDescription>> {
        let target = target.as_ref();
        let normal = crate::path::normalize(target)
            .map_err(|r| Error::invalid_path("target", target, r.reason()))?;
        let fd = sys::open_dir_path(sys::cwd(), &normal).map_err(|e| {
            Error::invalid_path("target", target, format!("cannot be opened ({e})"))
        })?;
        let st = sys::stat_fd(fd.as_fd()).map_err(|e| Error::os("inspect", Some(target), e))?;
        if st.mount_root == Some(false) {
            return Err(Error::invalid_path(
                "target",
                target,
                "is not a mount point",
            ));
        }
        let Some((id, unique)) = mount_id_of(fd.as_fd()) else {
            return Ok(None);
        };
        let Some(dir) = self.dir()? else {
            return Ok(None);
        };
        let Some(record) = read(dir.as_fd(), &file_name(id, unique)) else {
            return Ok(None);
        };
        let mut seen = None;
        Ok((Some(record.mount_ns) == this_mount_ns()
            && liveness(&record.mount, record.root, &mut seen) == Liveness::Live)
            .then_some(record.mount))
    }

    /// Removes the record of `mount` if that mount is gone (e.g. after
    /// unmounting it); a mount still there keeps its record, and so does
    /// one whose fate cannot be told from here (another mount namespace's,
    /// or a reusable id recorded from another root).
    pub fn forget_if_gone(&self, mount: &MountDescription) -> Result<()> {
        let Some(id) = mount.mount_id else {
            return Ok(());
        };
        let Some(dir) = self.dir()? else {
            return Ok(());
        };
        let name = file_name(id, mount.unique_mount_id);
        // Judged as the record itself says it was made.
        let Some(record) = read(dir.as_fd(), &name) else {
            return Ok(());
        };
        let mut seen = None;
        if Some(record.mount_ns) != this_mount_ns()
            || liveness(&record.mount, record.root, &mut seen) != Liveness::Gone
        {
            return Ok(());
        }
        match sys::unlink(dir.as_fd(), Path::new(&name)) {
            Ok(()) => Ok(()),
            Err(e) if e.errno == libc::ENOENT => Ok(()),
            Err(e) => Err(Error::os(
                "remove the record of the mount at",
                Some(&mount.target),
                e,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_round_trip_with_maps_as_text() {
        let m = MountDescription {
            target: "/c/rootfs".into(),
            layers: vec!["/l/2".into(), "/l/1".into()],
            data_layers: vec![],
            upper: Some("/c/upper".into()),
            work: Some("/c/work".into()),
            uidmap: Some("0:100000:65536,65536:300000:1000".parse().unwrap()),
            gidmap: Some("0:100000:65536".parse().unwrap()),
            userns: None,
            idmap_upper: false,
            strategy: Strategy::Detached,
            mount_id: Some(7),
            unique_mount_id: true,
        };
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["uidmap"], "0:100000:65536,65536:300000:1000");
        assert_eq!(json["strategy"], "detached");
        let back: MountDescription = serde_json::from_value(json).unwrap();
        assert_eq!(back, m);
        assert_eq!(file_name(7, true), "u7.json");
        assert_eq!(file_name(7, false), "m7.json");
    }

    fn entry(id: u64, fs_type: &str, at: &str) -> crate::mountinfo::MountEntry {
        crate::mountinfo::MountEntry {
            mount_id: id,
            parent_id: 1,
            device: "0:1".into(),
            root: "/".into(),
            mount_point: at.into(),
            mount_options: "rw".into(),
            fs_type: fs_type.into(),
            source: "overlay".into(),
            super_options: String::new(),
        }
    }

    #[test]
    fn reusable_ids_are_judged_only_from_the_root_they_were_recorded_from() {
        let root = |mount_id| RootId {
            mount_id,
            dev_major: 0,
            dev_minor: 20,
            ino: 256,
        };
        let m = MountDescription {
            target: "/c/rootfs".into(),
            mount_id: Some(42),
            unique_mount_id: false,
            ..Default::default()
        };
        let seen = |r: Option<RootId>, table: Vec<crate::mountinfo::MountEntry>| Seen {
            root: r,
            table: Some(table),
        };
        let here = seen(Some(root(1)), vec![entry(42, "overlay", "/c/rootfs")]);
        assert_eq!(by_table(&m, 42, Some(root(1)), &here), Liveness::Live);
        // From the same root: another fs at the id, the id elsewhere, or
        // no such id at all is proof enough.
        for t in [
            vec![entry(42, "tmpfs", "/c/rootfs")],
            vec![entry(42, "overlay", "/elsewhere")],
            vec![entry(7, "overlay", "/c/rootfs")],
        ] {
            assert_eq!(
                by_table(&m, 42, Some(root(1)), &seen(Some(root(1)), t)),
                Liveness::Gone
            );
        }
        // From another root (a chroot: the same mount at another path, or
        // hidden), a root unknown on either side, or no table: unknown.
        let chroot = seen(Some(root(9)), vec![entry(42, "overlay", "/rootfs")]);
        assert_eq!(by_table(&m, 42, Some(root(1)), &chroot), Liveness::Unknown);
        let hidden = seen(Some(root(9)), vec![]);
        assert_eq!(by_table(&m, 42, Some(root(1)), &hidden), Liveness::Unknown);
        assert_eq!(by_table(&m, 42, None, &here), Liveness::Unknown);
        assert_eq!(
            by_table(&m, 42, Some(root(1)), &seen(None, vec![])),
            Liveness::Unknown
        );
        let unread = Seen {
            root: Some(root(1)),
            table: None,
        };
        assert_eq!(by_table(&m, 42, Some(root(1)), &unread), Liveness::Unknown);
    }

    #[test]
    fn a_unique_id_is_alive_wherever_statmount_finds_it() {
        let fd = sys::open_dir_path(sys::cwd(), Path::new("/proc")).unwrap();
        let Some(id) = sys::stat_fd_unique_mnt_id(fd.as_fd()) else {
            return; // before 6.8
        };
        let proc_mount = MountDescription {
            target: "/not/where/it/is".into(),
            mount_id: Some(id),
            unique_mount_id: true,
            ..Default::default()
        };
        assert_eq!(liveness(&proc_mount, None, &mut None), Liveness::Live);
        // Unique ids count up from the first and are never reused.
        let never = MountDescription {
            mount_id: Some(u64::MAX - 1),
            ..proc_mount
        };
        assert_eq!(liveness(&never, None, &mut None), Liveness::Gone);
    }
}
