//! Deleting a snapshot's directory tree: the one recursive delete of the
//! snapshotter.
//!
//! The tree is walked by fd only. Each directory is opened relative to its
//! parent's fd with `openat2(RESOLVE_BENEATH | RESOLVE_NO_XDEV |
//! RESOLVE_NO_SYMLINKS)`, so the walk never follows a symlink (a symlink is
//! an entry, unlinked as itself) and never enters a mount: a directory that
//! is a mount point (a bind mount someone planted, a still-mounted layer)
//! makes the kernel answer `EXDEV`, and the removal stops there and reports
//! it, leaving that directory and its parents in place. A mount placed on a
//! directory after it was opened does not matter either: the fd keeps
//! naming the directory underneath, and `rmdir` of a mount point fails.
//! This is what containerd 2.0's `os.RemoveAll` of a temp dir lacked when
//! an unmount had failed (containerd#10704).
//!
//! A walk holds one fd per level, at most [`MAX_DEPTH`]. A tree deeper than
//! that (a container can make one in its rootfs with `mkdir d; cd d` in a
//! loop) is still removed whole: the directory at that depth is moved up
//! into the tree's top directory (`renameat2` by fds, never across a mount:
//! a mount point answers `EBUSY`) and removed from there later.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use crate::sys;

/// The most levels a walk holds an fd for: a few Removes at once stay far
/// from the fd limit. [`remove_tree`] moves deeper directories up; the
/// mount check ([`mount_points`]) leaves deeper trees to the mount table.
pub const MAX_DEPTH: usize = 256;

/// Entries read from one directory at a time; a directory with more is read
/// again after these are gone.
const BATCH: usize = 4096;

/// Why a tree was not removed (entirely).
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// Something is mounted inside the tree: it was not entered.
    #[error("{} is a mount point inside a snapshot being removed; it was left alone (and so were its parents). Unmount it, then remove again", .0.display())]
    MountBeneath(PathBuf),
    /// A syscall failed.
    #[error("removing {}: {source}", path.display())]
    Io {
        /// The entry, relative to the directory the removal started in.
        path: PathBuf,
        /// What the kernel said.
        source: io::Error,
    },
}

impl RemoveError {
    /// Whether the walk found no directory `top` to start in (`ENOENT`
    /// opening it): nothing there to remove or to look into.
    pub fn is_missing_top(&self, top: &OsStr) -> bool {
        matches!(self, RemoveError::Io { path, source }
            if source.raw_os_error() == Some(libc::ENOENT) && path.as_os_str() == top)
    }
}

struct Frame {
    fd: OwnedFd,
    /// Name of this directory in its parent.
    name: OsString,
    /// Entries still to handle.
    pending: Vec<OsString>,
}

fn path_of(stack: &[Frame], top: &OsStr, leaf: Option<&OsStr>) -> PathBuf {
    let mut p = PathBuf::from(top);
    for f in stack.iter().skip(1) {
        p.push(&f.name);
    }
    if let Some(leaf) = leaf {
        p.push(leaf);
    }
    p
}

fn open(dir: BorrowedFd<'_>, rel: &OsStr, path: PathBuf) -> Result<OwnedFd, RemoveError> {
    match sys::open_dir_beneath(dir, rel) {
        Ok(fd) => Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => Err(RemoveError::MountBeneath(path)),
        Err(source) => Err(RemoveError::Io { path, source }),
    }
}

fn read(
    fd: &OwnedFd,
    limit: usize,
    path: impl FnOnce() -> PathBuf,
) -> Result<Vec<OsString>, RemoveError> {
    sys::read_names(fd.as_fd(), limit).map_err(|source| RemoveError::Io {
        path: path(),
        source,
    })
}

/// Most names one directory may hold for [`mount_points`] to vouch for it.
const CHECK_NAMES: usize = 1 << 20;

/// Most entries [`mount_points`] looks at: ~3 µs each, so about what reading
/// the mount table of a node with 10,000 mounts costs (25 ms); a bigger
/// tree (an image layer) is cheaper to check against the table.
pub const CHECK_ENTRIES: usize = 10_000;

/// Every mount point inside the directory `name` in `parent` (or `name`
/// itself), relative to `parent`: what [`remove_tree`] would stop at, found
/// before it deletes anything, by the same walk by fd (no symlink followed,
/// no mount entered). Its cost follows the tree's size, not the mount
/// table's: a container's snapshot holds a few entries, a node thousands of
/// mounts. `Ok(None)` when this walk cannot vouch for the tree or would
/// cost more than the table: deeper than [`MAX_DEPTH`], more than
/// [`CHECK_ENTRIES`] entries or a directory of more than a million names,
/// or a kernel that does not tell a mount root (`STATX_ATTR_MOUNT_ROOT`,
/// before 5.8).
///
/// A mount made after an entry was looked at is not seen, as with a read of
/// the mount table; [`remove_tree`] stops at it.
pub fn mount_points(parent: impl AsFd, name: &OsStr) -> Result<Option<Vec<PathBuf>>, RemoveError> {
    let top = PathBuf::from(name);
    let root = match open(parent.as_fd(), name, top.clone()) {
        Err(RemoveError::MountBeneath(p)) => return Ok(Some(vec![p])),
        other => other?,
    };
    match sys::is_mount_root(root.as_fd()) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => return Ok(None),
        Err(source) => return Err(RemoveError::Io { path: top, source }),
        Ok(_) => {}
    }
    let names = |fd: &OwnedFd, path: &PathBuf| -> Result<Option<Vec<OsString>>, RemoveError> {
        let names = read(fd, CHECK_NAMES, || path.clone())?;
        Ok((names.len() < CHECK_NAMES).then_some(names))
    };
    let Some(pending) = names(&root, &top)? else {
        return Ok(None);
    };
    let mut found = Vec::new();
    let mut seen = 0;
    // Depth-first, one fd per level; each entry's path kept beside it.
    let mut stack = vec![(root, top, pending)];
    while let Some(last) = stack.len().checked_sub(1) {
        let Some(entry) = stack[last].2.pop() else {
            stack.pop();
            continue;
        };
        seen += 1;
        if seen > CHECK_ENTRIES {
            return Ok(None);
        }
        let path = stack[last].1.join(&entry);
        let dir = stack[last].0.as_fd();
        match sys::entry_kind(dir, &entry) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(source) => return Err(RemoveError::Io { path, source }),
            Ok(sys::Kind::MountPoint) => found.push(path),
            Ok(sys::Kind::Other) => {}
            Ok(sys::Kind::Dir) => {
                if stack.len() >= MAX_DEPTH {
                    return Ok(None);
                }
                match open(dir, &entry, path.clone()) {
                    Ok(fd) => {
                        let Some(pending) = names(&fd, &path)? else {
                            return Ok(None);
                        };
                        stack.push((fd, path, pending));
                    }
                    // Mounted on since its statx.
                    Err(RemoveError::MountBeneath(p)) => found.push(p),
                    // Gone, or swapped for a file or a symlink since
                    // (a mount on it would have answered EXDEV first):
                    // nothing mounted on this name now.
                    Err(RemoveError::Io { source, .. })
                        if matches!(
                            source.raw_os_error(),
                            Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                        ) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(Some(found))
}

/// What to do after looking at one entry.
enum Step {
    Next,
    Retry(OsString),
    Descend(Frame),
}

/// Removes the directory `name` (one component) inside `parent`, with
/// everything in it. Fails, leaving what it could not remove, when a
/// mount point or anything else stops it.
pub fn remove_tree(parent: impl AsFd, name: &OsStr) -> Result<(), RemoveError> {
    let parent = parent.as_fd();
    let top = name;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(name);
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(RemoveError::Io {
            path: PathBuf::from(name),
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        });
    }
    let root = open(parent, name, PathBuf::from(name))?;
    let pending = read(&root, BATCH, || PathBuf::from(name))?;
    let mut stack = vec![Frame {
        fd: root,
        name: name.to_os_string(),
        pending,
    }];
    let mut moved_up = 0u64;
    while let Some(last) = stack.len().checked_sub(1) {
        let Some(entry) = stack[last].pending.pop() else {
            // Read again: a directory longer than one batch, or entries
            // created meanwhile. Only an empty directory is removed.
            let again = read(&stack[last].fd, BATCH, || path_of(&stack, top, None))?;
            if !again.is_empty() {
                stack[last].pending = again;
                continue;
            }
            let done = stack.pop().expect("non-empty stack");
            let path = path_of(&stack, top, Some(&done.name));
            drop(done.fd);
            let dir = stack.last().map_or(parent, |f| f.fd.as_fd());
            match sys::rmdir(dir, &done.name) {
                Ok(()) => {}
                // The kernel refuses to remove a mount point.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    return Err(RemoveError::MountBeneath(path))
                }
                Err(source) => return Err(RemoveError::Io { path, source }),
            }
            continue;
        };
        let path = path_of(&stack, top, Some(&entry));
        let step = {
            let dir = stack[last].fd.as_fd();
            match sys::entry_kind(dir, &entry) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Step::Next,
                Err(source) => return Err(RemoveError::Io { path, source }),
                Ok(sys::Kind::MountPoint) => return Err(RemoveError::MountBeneath(path)),
                Ok(sys::Kind::Other) => match sys::unlink(dir, &entry) {
                    Ok(()) => Step::Next,
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Step::Next,
                    // Swapped for a directory between stat and unlink.
                    Err(e) if e.raw_os_error() == Some(libc::EISDIR) => Step::Retry(entry),
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        return Err(RemoveError::MountBeneath(path))
                    }
                    Err(source) => return Err(RemoveError::Io { path, source }),
                },
                Ok(sys::Kind::Dir) if stack.len() >= MAX_DEPTH => {
                    // Up into the top directory, which reads its entries
                    // again once it has handled these: removed from there.
                    let top_dir = stack[0].fd.as_fd();
                    loop {
                        moved_up += 1;
                        let to = OsString::from(format!(".deep-{moved_up}"));
                        match sys::move_noreplace(dir, &entry, top_dir, &to) {
                            Ok(()) => break Step::Next,
                            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break Step::Next,
                            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                                return Err(RemoveError::MountBeneath(path))
                            }
                            Err(source) => return Err(RemoveError::Io { path, source }),
                        }
                    }
                }
                Ok(sys::Kind::Dir) => {
                    let fd = open(dir, &entry, path.clone())?;
                    let pending = read(&fd, BATCH, || path)?;
                    Step::Descend(Frame {
                        fd,
                        name: entry,
                        pending,
                    })
                }
            }
        };
        match step {
            Step::Next => {}
            Step::Retry(entry) => stack[last].pending.push(entry),
            Step::Descend(frame) => stack.push(frame),
        }
    }
    Ok(())
}
