//! The snapshotter's directories, laid out like containerd's overlayfs
//! snapshotter:
//!
//! ```text
//! ROOT/metadata.redb        the store (see store.rs)
//! ROOT/snapshots/ID/fs      a snapshot's files (the upper dir while active)
//! ROOT/snapshots/ID/work    overlay's work dir (active snapshots)
//! ROOT/snapshots/new-…      being made: not yet a snapshot
//! ROOT/snapshots/rm-ID      being removed
//! ROOT/mounts/ID            where an idmapped snapshot's overlay is attached
//! ```
//!
//! Every call here works on fds of `snapshots/` and `mounts/` opened once
//! at start; names are single components, resolved beneath those fds.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::remove::{self, RemoveError};
use crate::sys;

/// Most names read from `snapshots/` or `mounts/` at once.
const MAX_ENTRIES: usize = 1 << 20;

/// Most hard-linked inodes [`Storage::usage`] remembers (some 50 MB); a
/// snapshot with more has the rest counted at each of their names.
const MAX_LINKED: usize = 1 << 20;

/// The snapshotter's root directory and its two subdirectories.
pub struct Storage {
    root: PathBuf,
    snapshots: OwnedFd,
    mounts: OwnedFd,
}

/// Prefix of a snapshot directory being made.
pub const NEW_PREFIX: &str = "new-";
/// Prefix of a snapshot directory being removed.
pub const RM_PREFIX: &str = "rm-";

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn absolute(root: &Path) -> Result<()> {
    match root.is_absolute() {
        true => Ok(()),
        false => Err(Error::InvalidArgument(format!(
            "--root {} is relative; give an absolute path",
            root.display()
        ))),
    }
}

fn ensure_dir(path: &Path) -> Result<()> {
    match std::fs::DirBuilder::new().mode_0700().create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io("creating", path, e)),
    }
}

trait Mode0700 {
    fn mode_0700(&mut self) -> &mut Self;
}
impl Mode0700 for std::fs::DirBuilder {
    fn mode_0700(&mut self) -> &mut Self {
        use std::os::unix::fs::DirBuilderExt;
        self.mode(0o700)
    }
}

impl Storage {
    /// Creates (root-only, 0700) and opens `root`, `root/snapshots` and
    /// `root/mounts`. `root` must be absolute; it is canonicalized once so
    /// that paths handed to containerd and found in mountinfo agree.
    pub fn open(root: &Path) -> Result<Storage> {
        absolute(root)?;
        if let Some(parent) = root.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io("creating", parent, e))?;
        }
        ensure_dir(root)?;
        Storage::open_dirs(root, true)
    }

    /// Opens an existing root and its `snapshots/` and `mounts/`, creating
    /// nothing: what `check` reads, which must not make a root where a
    /// mistyped `--root` points (and then find it consistent).
    pub fn open_existing(root: &Path) -> Result<Storage> {
        absolute(root)?;
        Storage::open_dirs(root, false)
    }

    fn open_dirs(root: &Path, create: bool) -> Result<Storage> {
        let missing = |what: String| {
            Error::InvalidArgument(format!(
                "--root {}: {what}: not an idoverlay-snapshotter root (is --root right?)",
                root.display()
            ))
        };
        let root = match root.canonicalize() {
            Ok(root) => root,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(missing("does not exist".into()))
            }
            Err(e) => return Err(Error::io("resolving", root, e)),
        };
        let root_fd = sys::open_dir_abs(&root).map_err(|e| Error::io("opening", &root, e))?;
        let sub = |name: &str| -> Result<OwnedFd> {
            if create {
                match sys::mkdir(root_fd.as_fd(), name, 0o700) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(Error::io("creating", root.join(name), e)),
                }
            }
            sys::open_dir_beneath(root_fd.as_fd(), name).map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) => missing(format!("it has no {name}/")),
                _ => Error::io("opening", root.join(name), e),
            })
        };
        let snapshots = sub("snapshots")?;
        let mounts = sub("mounts")?;
        Ok(Storage {
            root,
            snapshots,
            mounts,
        })
    }

    /// The (canonical) root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `ROOT/snapshots/ID`.
    pub fn snapshot_path(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    /// `ROOT/snapshots/ID/fs`: the snapshot's files, the upper dir while active.
    pub fn upper_path(&self, id: u64) -> PathBuf {
        self.snapshot_path(id).join("fs")
    }

    /// `ROOT/snapshots/ID/work`.
    pub fn work_path(&self, id: u64) -> PathBuf {
        self.snapshot_path(id).join("work")
    }

    /// `ROOT/mounts/ID`: where an idmapped snapshot's overlay is attached.
    pub fn mount_path(&self, id: u64) -> PathBuf {
        self.root.join("mounts").join(id.to_string())
    }

    /// Makes `snapshots/new-…` with `fs` (0755) and, for snapshots that get
    /// an overlay, `work` (0711), as containerd does. Returns its name.
    pub fn new_dir(&self, with_work: bool) -> Result<OsString> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "{NEW_PREFIX}{}-{}-{nanos}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.root.join("snapshots").join(&name);
        sys::mkdir(self.snapshots.as_fd(), &name, 0o700)
            .map_err(|e| Error::io("creating", &path, e))?;
        let dir = sys::open_dir_beneath(self.snapshots.as_fd(), &name)
            .map_err(|e| Error::io("opening", &path, e))?;
        let mut subs = vec![("fs", 0o755)];
        if with_work {
            subs.push(("work", 0o711));
        }
        for (sub, mode) in subs {
            let p = path.join(sub);
            sys::mkdir(dir.as_fd(), sub, mode).map_err(|e| Error::io("creating", &p, e))?;
            let fd =
                sys::open_dir_beneath(dir.as_fd(), sub).map_err(|e| Error::io("opening", &p, e))?;
            sys::chmod(fd.as_fd(), mode).map_err(|e| Error::io("chmod", &p, e))?;
        }
        Ok(name.into())
    }

    /// Opens `snapshots/NAME/fs`.
    fn open_fs(&self, name: &OsStr) -> Result<OwnedFd> {
        let rel = Path::new(name).join("fs");
        sys::open_dir_beneath(self.snapshots.as_fd(), &rel)
            .map_err(|e| Error::io("opening", self.root.join("snapshots").join(&rel), e))
    }

    /// Makes `snapshots/NAME/fs` owned by `uid:gid` (the container's root
    /// for an idmapped snapshot, the parent's owner otherwise).
    pub fn chown_fs(&self, name: &OsStr, uid: u32, gid: u32) -> Result<()> {
        let fd = self.open_fs(name)?;
        sys::chown(fd.as_fd(), uid, gid).map_err(|e| {
            Error::io(
                "chown",
                self.root.join("snapshots").join(name).join("fs"),
                e,
            )
        })
    }

    /// Owner of snapshot `id`'s `fs`.
    pub fn fs_owner(&self, id: u64) -> Result<(u32, u32)> {
        let fd = self.open_fs(OsStr::new(&id.to_string()))?;
        sys::owner(fd.as_fd()).map_err(|e| Error::io("stat", self.upper_path(id), e))
    }

    /// Renames `snapshots/TEMP` to `snapshots/ID`, never over an existing
    /// entry.
    pub fn publish(&self, temp: &OsStr, id: u64) -> Result<()> {
        sys::rename_noreplace(self.snapshots.as_fd(), temp, OsStr::new(&id.to_string()))
            .map_err(|e| Error::io("renaming into place", self.snapshot_path(id), e))
    }

    /// Removes `snapshots/NAME` (a `new-…` or `rm-…` leftover, or a
    /// directory just renamed to `rm-…`) by fd; see remove.rs.
    pub fn remove_entry(&self, name: &OsStr) -> Result<(), RemoveError> {
        remove::remove_tree(self.snapshots.as_fd(), name)
    }

    /// Takes snapshot directory `name` (an id, or a `new-` name) out of
    /// the way by renaming it to `rm-…`, then removes that. Returns the
    /// removal name when the rename worked.
    pub fn remove_dir(&self, name: &OsStr) -> Result<()> {
        if name.as_encoded_bytes().starts_with(RM_PREFIX.as_bytes()) {
            // Out of the way already (a removal an earlier run did not
            // finish): renaming it again would only grow its name. Gone
            // (the Remove that made it finished first): done.
            return match self.remove_entry(name) {
                Err(e) if e.is_missing_top(name) => Ok(()),
                done => Ok(done?),
            };
        }
        let base = name.to_string_lossy();
        let base = base.strip_prefix(RM_PREFIX).unwrap_or(&base).to_string();
        let mut rm = None;
        for n in 0..1000u32 {
            let candidate = if n == 0 {
                format!("{RM_PREFIX}{base}")
            } else {
                format!("{RM_PREFIX}{base}.{n}")
            };
            match sys::rename_noreplace(self.snapshots.as_fd(), name, OsStr::new(&candidate)) {
                Ok(()) => {
                    rm = Some(candidate);
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                Err(e) => {
                    return Err(Error::io(
                        "renaming for removal",
                        self.root.join("snapshots").join(name),
                        e,
                    ))
                }
            }
        }
        let rm = rm.ok_or_else(|| {
            Error::FailedPrecondition(format!("no free removal name for snapshots/{base}"))
        })?;
        self.remove_entry(OsStr::new(&rm))?;
        Ok(())
    }

    /// Names in `snapshots/`.
    pub fn snapshot_entries(&self) -> Result<Vec<OsString>> {
        sys::read_names(self.snapshots.as_fd(), MAX_ENTRIES)
            .map_err(|e| Error::io("reading", self.root.join("snapshots"), e))
    }

    /// Names in `mounts/`.
    pub fn mount_entries(&self) -> Result<Vec<OsString>> {
        sys::read_names(self.mounts.as_fd(), MAX_ENTRIES)
            .map_err(|e| Error::io("reading", self.root.join("mounts"), e))
    }

    /// Makes `mounts/ID` (0700) if missing.
    pub fn make_mount_point(&self, id: u64) -> Result<()> {
        match sys::mkdir(self.mounts.as_fd(), id.to_string(), 0o700) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(Error::io("creating", self.mount_path(id), e)),
        }
    }

    /// What is at `mounts/ID`: `None` when nothing is there, else whether
    /// a mount is (statx `STATX_ATTR_MOUNT_ROOT`) and whether it is an
    /// overlay. Three syscalls instead of reading all of mountinfo.
    pub fn mount_point_state(&self, id: u64) -> Result<Option<(bool, bool)>> {
        let path = self.mount_path(id);
        let fd = match sys::open_mount_point(self.mounts.as_fd(), OsStr::new(&id.to_string())) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(Error::io("opening", path, e)),
        };
        let mounted = sys::is_mount_root(fd.as_fd()).map_err(|e| Error::io("statx", &path, e))?;
        let overlay = sys::is_overlay(fd.as_fd()).map_err(|e| Error::io("statfs", &path, e))?;
        Ok(Some((mounted, mounted && overlay)))
    }

    /// Removes the empty directory `mounts/NAME` (never a mount point: the
    /// kernel refuses).
    pub fn remove_mount_point(&self, name: &OsStr) -> Result<()> {
        match sys::rmdir(self.mounts.as_fd(), name) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(Error::io(
                "removing",
                self.root.join("mounts").join(name),
                e,
            )),
        }
    }

    /// Mount points in snapshot directory `id` (or on it), found by walking
    /// the directory by fd (see [`remove::mount_points`]); from this
    /// thread's mount table when the walk cannot vouch for the tree or the
    /// tree is big. The walk's cost follows the snapshot's entries (a
    /// container's holds a few), the table's the node's mounts: 25 ms per
    /// removal with 10,000 mounts (docs/performance.md).
    pub fn mounts_in_snapshot(&self, id: u64) -> Result<Vec<PathBuf>> {
        let name = id.to_string();
        match remove::mount_points(self.snapshots.as_fd(), OsStr::new(&name)) {
            Ok(Some(found)) => Ok(found
                .into_iter()
                .map(|rel| self.root.join("snapshots").join(rel))
                .collect()),
            Ok(None) => self.mounts_beneath(&self.snapshot_path(id)),
            // No directory (an operator's rm, a disk repaired): nothing is
            // mounted in it, and the record can go.
            Err(e) if e.is_missing_top(OsStr::new(&name)) => Ok(Vec::new()),
            Err(RemoveError::Io { path, source }) => Err(Error::io(
                "looking for mounts in",
                self.root.join("snapshots").join(path),
                source,
            )),
            Err(e) => Err(Error::FailedPrecondition(e.to_string())),
        }
    }

    /// Mount points at or beneath `path`, from this thread's mountinfo.
    pub fn mounts_beneath(&self, path: &Path) -> Result<Vec<PathBuf>> {
        let table = std::fs::read("/proc/thread-self/mountinfo")
            .map_err(|e| Error::io("reading", "/proc/thread-self/mountinfo", e))?;
        Ok(table
            .split(|b| *b == b'\n')
            .filter_map(|line| line.split(|b| *b == b' ').nth(4))
            .map(unescape_mount_point)
            .filter(|p| p.starts_with(path))
            .collect())
    }

    /// Bytes (allocated blocks) and inodes under snapshot `id`'s `fs`, each
    /// inode once however many hard links name it (containerd's count; past
    /// 2^20 (`MAX_LINKED`) linked inodes a linked file counts at each name: too
    /// much rather than too little, as an eviction by disk use needs),
    /// walked by fd without crossing a mount or following a symlink, every
    /// name of every directory (read a few KiB at a time, never collected:
    /// a directory of millions of names is counted whole in bounded
    /// memory), to any depth: the deepest [`remove::MAX_DEPTH`] levels
    /// hold their fds; a level above them gives its fd up, keeping its
    /// position, and is opened again through `..` of its child when the
    /// walk comes back to it, checked to be the same directory (device and
    /// inode), else the walk stops with an error rather than count another
    /// tree.
    pub fn usage(&self, id: u64) -> Result<(i64, i64)> {
        struct Level {
            names: Option<sys::Names>,
            /// Device and inode, taken when the fd is given up.
            identity: Option<(u64, u64)>,
            /// Where to go on reading it: after the name last read.
            position: i64,
        }
        let top = self.open_fs(OsStr::new(&id.to_string()))?;
        let path = self.upper_path(id);
        let io = |what: &'static str| {
            let path = &path;
            move |e| Error::io(what, path, e)
        };
        // The top directory's own blocks count too, as in containerd's
        // walk (which starts at the root).
        let mut size = sys::entry_usage(top.as_fd(), OsStr::new("."))
            .map_err(io("measuring"))?
            .bytes;
        let mut inodes = 1i64;
        // Inodes with more than one link, counted at their first name.
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![Level {
            names: Some(sys::Names::new(top).map_err(io("reading"))?),
            identity: None,
            position: 0,
        }];
        while let Some(level) = stack.last_mut() {
            let names = level.names.as_mut().expect("the level walked holds its fd");
            let Some((name, position)) = names.next_name().map_err(io("reading"))? else {
                let done = stack.pop().expect("non-empty stack");
                if let Some(parent) = stack.last_mut().filter(|p| p.names.is_none()) {
                    let child = done.names.expect("the level walked holds its fd");
                    let fd = sys::open_parent(child.fd()).map_err(io("reopening"))?;
                    if Some(sys::identity(fd.as_fd()).map_err(io("reopening"))?) != parent.identity
                    {
                        return Err(Error::io(
                            "measuring",
                            &path,
                            std::io::Error::other("a directory was moved while it was measured"),
                        ));
                    }
                    let mut names = sys::Names::new(fd).map_err(io("reopening"))?;
                    names.seek(parent.position).map_err(io("reopening"))?;
                    parent.names = Some(names);
                }
                continue;
            };
            level.position = position;
            let dir = names.fd();
            // Another mount's root is not this snapshot's to count, nor is
            // an entry gone meanwhile.
            let entry = match sys::entry_usage(dir, &name) {
                Ok(e) if e.kind == sys::Kind::MountPoint => continue,
                Err(_) => continue,
                Ok(e) => e,
            };
            if let Some(inode) = entry.linked {
                if seen.contains(&inode) {
                    continue;
                }
                if seen.len() < MAX_LINKED {
                    seen.insert(inode);
                }
            }
            inodes += 1;
            size = size.saturating_add(entry.bytes);
            if entry.kind != sys::Kind::Dir {
                continue;
            }
            // A mount point (EXDEV) or a vanished entry is skipped.
            let Ok(fd) = sys::open_dir_beneath(dir, &name) else {
                continue;
            };
            stack.push(Level {
                names: Some(sys::Names::new(fd).map_err(io("reading"))?),
                identity: None,
                position: 0,
            });
            if let Some(above) = stack.len().checked_sub(remove::MAX_DEPTH + 1) {
                let level = &mut stack[above];
                if let Some(names) = level.names.take() {
                    level.identity = Some(sys::identity(names.fd()).map_err(io("measuring"))?);
                }
            }
        }
        Ok((size, inodes))
    }
}

/// A mountinfo path field with the kernel's octal escapes (`\040` for a
/// space, and tab, newline, backslash) undone.
fn unescape_mount_point(field: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field.get(i + 1..i + 4).filter(|d| {
            field[i] == b'\\' && d[0] <= b'3' && d.iter().all(|c| (b'0'..=b'7').contains(c))
        });
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(
            super::unescape_mount_point(br"/a\040b\011c\134d"),
            std::path::Path::new("/a b\tc\\d")
        );
    }
}
