//! Reading the files idoverlay is given (an OCI runtime config, a saved
//! probe report, a namespace file) and its own (state records): a file is
//! opened for reading only once a handle (`O_PATH`) on it has shown it is
//! what was asked for, and then through that handle, never again by its
//! name; and never more is read than a bound. A path can name `/dev/zero`,
//! a FIFO with no writer, a file that keeps growing, or a device whose
//! driver acts on `open` alone (a watchdog arms, a tape rewinds), and the
//! name can be swapped for one of those between two syscalls.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use crate::error::{display_path, Error};
use crate::sys;

/// Why a file was not read.
#[derive(Debug)]
pub(crate) enum Unreadable {
    /// Not a regular file: what it is instead ("a FIFO").
    NotRegular(&'static str),
    /// A regular file, but not a namespace file.
    NotNamespace,
    /// Its name led to another file when it was opened again.
    Replaced,
    /// Larger than the bound.
    TooBig { max: usize },
    /// The open, stat or read failed.
    Os(sys::SysError),
}

impl Unreadable {
    /// The refusal as a sentence that follows the path in a message.
    pub(crate) fn reason(&self) -> String {
        self.reason_wanting("a regular file")
    }

    /// [`Unreadable::reason`], where the file should have been `wanted`
    /// ("a mount namespace").
    pub(crate) fn reason_wanting(&self, wanted: &str) -> String {
        match self {
            Unreadable::NotRegular(kind) => format!("is {kind}, not {wanted}"),
            Unreadable::NotNamespace => format!("is not {wanted}"),
            Unreadable::Replaced => {
                "was replaced by another file while it was opened; try again".to_string()
            }
            Unreadable::TooBig { max } => {
                format!(
                    "is larger than {} KiB; this is not the file meant",
                    max / 1024
                )
            }
            Unreadable::Os(e) if e.errno == libc::ENOENT => "does not exist".to_string(),
            Unreadable::Os(e) => format!("cannot be read ({e})"),
        }
    }

    /// As an [`Error::InvalidInput`] about `what` at `path`.
    pub(crate) fn into_error(self, what: &str, path: &Path) -> Error {
        let reason = self.reason();
        let source = match self {
            Unreadable::Os(e) => Some(e),
            _ => None,
        };
        Error::from(crate::error::Repr::InvalidInput {
            what: what.to_string(),
            input: display_path(path),
            reason,
            path: Some(path.to_path_buf()),
            source,
        })
    }
}

/// What a file must be before it is opened for reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A regular file.
    Regular,
    /// A namespace file: `/proc/PID/ns/*`, or a bind mount of one.
    Namespace,
}

/// `NSFS_MAGIC`.
const NSFS_MAGIC: u64 = 0x6e73_6673;

/// The file at `path` (relative to `dir`) opened for reading once it is
/// known to be of `kind`, with what it was found to be. With `follow`, a
/// symlink in the last component is followed (for files a caller names,
/// such as a runtime's config); without, it is refused (idoverlay's own
/// files).
///
/// The open for reading goes through the handle's magic link in a checked
/// `/proc` (checked at each open: no fd is kept for the process), so it opens the file that was checked even when the name has
/// been swapped since. Without a proc filesystem at `/proc` the name is
/// opened again and must lead to the same file, which refuses a swap but
/// only after the other file's open.
pub(crate) fn open_checked(
    dir: BorrowedFd<'_>,
    path: &Path,
    follow: bool,
    kind: Kind,
) -> Result<(OwnedFd, sys::Stat), Unreadable> {
    let handle = sys::open_handle(dir, path, follow).map_err(Unreadable::Os)?;
    let st = sys::stat_fd(handle.as_fd()).map_err(Unreadable::Os)?;
    if st.mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Unreadable::NotRegular(st.kind()));
    }
    if kind == Kind::Namespace
        && sys::fs_magic(handle.as_fd()).map_err(Unreadable::Os)? != NSFS_MAGIC
    {
        return Err(Unreadable::NotNamespace);
    }
    if let Ok(Some(proc)) = crate::procfs::open_root() {
        let fd = sys::reopen_read(proc.as_fd(), handle.as_fd()).map_err(Unreadable::Os)?;
        return Ok((fd, st));
    }
    let fd = sys::open_read_nonblocking(dir, path, follow).map_err(Unreadable::Os)?;
    let again = sys::stat_fd(fd.as_fd()).map_err(Unreadable::Os)?;
    if !again.same_inode(&st) {
        return Err(Unreadable::Replaced);
    }
    Ok((fd, st))
}

/// The contents of the regular file at `path` (relative to `dir`), at most
/// `max` bytes; `follow` as for [`open_checked`].
pub(crate) fn read_small(
    dir: BorrowedFd<'_>,
    path: &Path,
    max: usize,
    follow: bool,
) -> Result<Vec<u8>, Unreadable> {
    let (fd, st) = open_checked(dir, path, follow, Kind::Regular)?;
    if st.size > max as u64 {
        return Err(Unreadable::TooBig { max });
    }
    let bytes = sys::read_at_most(fd.as_fd(), max).map_err(Unreadable::Os)?;
    if bytes.len() > max {
        return Err(Unreadable::TooBig { max });
    }
    Ok(bytes)
}
