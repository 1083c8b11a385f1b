//! Every system call idoverlay makes, as thin typed wrappers, by family:
//! files and directories (`fs`), mounts (`mount`), namespaces and the
//! user-namespace helper (`ns`), credentials (`cred`), threads (`thread`).
//! No policy lives here: what to open, when to lend a working directory or
//! which capability to ask for is decided by the modules above.
//!
//! This is the only module allowed `unsafe` (as in libpathrs, where
//! `syscalls.rs` plays this role; the crate root denies it everywhere
//! else). Each wrapper returns a [`SysError`] that names the syscall and the
//! arguments it was given, so an error read at 3 a.m. says exactly what the
//! kernel refused. The argument text is built only when a call fails: the
//! success path allocates nothing for it.
//!
//! Most calls go through rustix; `mount_setattr`, `statmount`, the
//! user-namespace helper's `clone`, `kcmp`, capabilities and a few ioctls
//! are not in rustix and use `libc` directly.

use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use rustix::io::Errno;

mod cred;
mod fs;
mod mount;
mod ns;
pub mod thread;

pub use cred::*;
pub use fs::*;
pub use mount::*;
pub use ns::*;

/// A system call that failed: which one, with which arguments, and the errno.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysError {
    /// The syscall's name, e.g. `open_tree`.
    pub syscall: &'static str,
    /// The arguments as given, rendered for people.
    pub args: String,
    /// The raw errno value.
    pub errno: i32,
}

impl SysError {
    /// The errno's symbolic name, e.g. `EINVAL`.
    pub fn errno_name(&self) -> &'static str {
        errno_name(self.errno)
    }
}

impl fmt::Display for SysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}({}): {} ({})",
            self.syscall,
            self.args,
            errno_description(self.errno),
            errno_name(self.errno)
        )
    }
}

impl std::error::Error for SysError {}

/// Result of a wrapper in this module.
pub type SysResult<T> = Result<T, SysError>;

pub(crate) fn fail<A: FnOnce() -> String>(
    syscall: &'static str,
    args: A,
) -> impl FnOnce(Errno) -> SysError {
    move |e| SysError {
        syscall,
        args: args(),
        errno: e.raw_os_error(),
    }
}

/// How an fd shows up in error messages.
pub(crate) fn fd_arg(fd: BorrowedFd<'_>) -> String {
    let raw = fd.as_raw_fd();
    if raw == libc::AT_FDCWD {
        "AT_FDCWD".to_string()
    } else {
        format!("fd {raw}")
    }
}

pub(crate) fn path_arg(path: &Path) -> String {
    format!("{:?}", path.as_os_str())
}

/// The running kernel's release (`uname -r`): one `uname(2)`, where
/// reading `/proc/sys/kernel/osrelease` (the same string) costs an open, a
/// stat, two reads and a close on procfs.
pub(crate) fn kernel_release() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}

/// The fd that stands for the current directory in `*at` calls.
pub fn cwd() -> BorrowedFd<'static> {
    rustix::fs::CWD
}

/// Symbolic name of an errno value (`EINVAL`), `E?` plus the number when unknown.
pub fn errno_name(errno: i32) -> &'static str {
    macro_rules! names {
        ($($name:ident),* $(,)?) => {
            match errno {
                $(libc::$name => stringify!($name),)*
                _ => "E?",
            }
        };
    }
    names!(
        EPERM,
        ENOENT,
        ESRCH,
        EINTR,
        EIO,
        ENXIO,
        E2BIG,
        ENOEXEC,
        EBADF,
        ECHILD,
        EAGAIN,
        ENOMEM,
        EACCES,
        EFAULT,
        ENOTBLK,
        EBUSY,
        EEXIST,
        EXDEV,
        ENODEV,
        ENOTDIR,
        EISDIR,
        EINVAL,
        ENFILE,
        EMFILE,
        ENOTTY,
        ETXTBSY,
        EFBIG,
        ENOSPC,
        ESPIPE,
        EROFS,
        EMLINK,
        EPIPE,
        EDOM,
        ERANGE,
        EDEADLK,
        ENAMETOOLONG,
        ENOLCK,
        ENOSYS,
        ENOTEMPTY,
        ELOOP,
        ENOMSG,
        ENODATA,
        ENOLINK,
        EOVERFLOW,
        EBADFD,
        EUSERS,
        ESTALE,
        EDQUOT,
        EOPNOTSUPP,
        ECANCELED,
        EOWNERDEAD,
        ENOKEY,
        EKEYREVOKED,
    )
}

/// The C library's description of an errno value ("Invalid argument").
pub fn errno_description(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    // std appends " (os error N)"; the name follows in our own format instead.
    match text.rfind(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// The calling thread's `errno` after a raw `libc` call that failed.
pub(crate) fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}
