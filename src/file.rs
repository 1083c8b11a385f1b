//! Reading the files idoverlay is given (an OCI runtime config, a saved
//! probe report) and its own (state records): regular files only, opened so
//! that a FIFO cannot block the open, and never more than a bound — a path
//! can name `/dev/zero`, a FIFO with no writer, or a file that keeps
//! growing.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use crate::error::{display_path, Error};
use crate::sys;

/// Why a file was not read.
#[derive(Debug)]
pub(crate) enum Unreadable {
    /// Not a regular file: what it is instead ("a FIFO").
    NotRegular(&'static str),
    /// Larger than the bound.
    TooBig { max: usize },
    /// The open, stat or read failed.
    Os(sys::SysError),
}

impl Unreadable {
    /// The refusal as a sentence that follows the path in a message.
    pub(crate) fn reason(&self) -> String {
        match self {
            Unreadable::NotRegular(kind) => format!("is {kind}, not a regular file"),
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

/// The contents of the regular file at `path` (relative to `dir`), at most
/// `max` bytes. With `follow`, a symlink in the last component is followed
/// (for files a caller names, such as a runtime's config); without, it is
/// refused (idoverlay's own files).
pub(crate) fn read_small(
    dir: BorrowedFd<'_>,
    path: &Path,
    max: usize,
    follow: bool,
) -> Result<Vec<u8>, Unreadable> {
    let fd = sys::open_read_nonblocking(dir, path, follow).map_err(|e| match e.errno {
        libc::ELOOP if !follow => Unreadable::NotRegular("a symlink"),
        _ => Unreadable::Os(e),
    })?;
    let st = sys::stat_fd(fd.as_fd()).map_err(Unreadable::Os)?;
    if st.mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Unreadable::NotRegular(st.kind()));
    }
    if st.size > max as u64 {
        return Err(Unreadable::TooBig { max });
    }
    let bytes = sys::read_at_most(fd.as_fd(), max).map_err(Unreadable::Os)?;
    if bytes.len() > max {
        return Err(Unreadable::TooBig { max });
    }
    Ok(bytes)
}
