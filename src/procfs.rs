//! The process's `/proc` must be the proc filesystem.
//!
//! idoverlay hands the kernel names like `/proc/thread-self/fd/N/REL` (a
//! layer inside its clone, the upper and work dirs before 6.13, a target
//! to unmount by name): the kernel resolves them through the caller's root.
//! A `/proc` that is any other directory (a chroot into an image whose
//! `/proc` is the image's own) would make those names lead wherever its
//! author pointed them, to directories nobody checked or idmapped. So its
//! `/proc` is checked once per request: the root of a proc mount, whose
//! `thread-self` the kernel alone makes. No `/proc` at all is left to the
//! names' own failures (ENOENT), which the fd forms fall back from.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use crate::error::{Error, Result};
use crate::sys;

/// `PROC_SUPER_MAGIC`.
const PROC_SUPER_MAGIC: u64 = 0x9fa0;
/// The inode number of procfs' root directory (`PROC_ROOT_INO`).
const PROC_ROOT_INO: u64 = 1;

/// Refuses a `/proc` that is not the root of a proc filesystem.
pub(crate) fn check() -> Result<()> {
    open_root().map(drop)
}

/// The process's `/proc`, checked to be the root of a proc filesystem;
/// `None` when there is no `/proc`.
pub(crate) fn open_root() -> Result<Option<OwnedFd>> {
    let proc = Path::new("/proc");
    let fd = match sys::open_dir_path(sys::cwd(), proc) {
        Ok(fd) => fd,
        Err(e) if e.errno == libc::ENOENT => return Ok(None),
        Err(e) => return Err(Error::os("open", Some(proc), e)),
    };
    let magic = sys::fs_magic(fd.as_fd()).map_err(|e| Error::os("inspect", Some(proc), e))?;
    let st = sys::stat_fd(fd.as_fd()).map_err(|e| Error::os("inspect", Some(proc), e))?;
    if magic == PROC_SUPER_MAGIC && st.ino == PROC_ROOT_INO {
        return Ok(Some(fd));
    }
    Err(Error::invalid_path(
        "/proc",
        proc,
        format!(
            "is not the proc filesystem's root (filesystem magic {magic:#x}, inode {}): \
             idoverlay names its fds to the kernel through /proc/thread-self, which would \
             lead elsewhere; mount proc there (mount -t proc proc /proc) in this root",
            st.ino
        ),
    ))
}

/// `/proc/NAME` (`locks`, `PID/stat`), from a checked proc root, at most
/// `max` bytes of it: `None` without one, or when it cannot be read.
pub(crate) fn read(name: &str, max: usize) -> Option<Vec<u8>> {
    let root = open_root().ok()??;
    let fd = sys::open_read_nonblocking(root.as_fd(), Path::new(name), false).ok()?;
    let mut bytes = sys::read_at_most(fd.as_fd(), max).ok()?;
    bytes.truncate(max);
    Some(bytes)
}
