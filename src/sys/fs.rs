//! Files and directories: opening, inspecting, reading, creating, removing.

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, StatxFlags};
use rustix::io::Errno;

use super::{cwd, fail, fd_arg, path_arg, SysResult};

/// `openat(dirfd, path, O_PATH|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC)`: a handle on a
/// directory that never follows a symlink in the last component.
pub fn open_dir_path(dirfd: BorrowedFd<'_>, path: &Path) -> SysResult<OwnedFd> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(dirfd, path, flags, Mode::empty()).map_err(fail("openat", || {
        format!(
            "{}, {}, O_PATH|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC",
            fd_arg(dirfd),
            path_arg(path)
        )
    }))
}

/// [`open_dir_path`], or [`open_dir_read`] when `readable`.
pub fn open_dir_nofollow(dirfd: BorrowedFd<'_>, path: &Path, readable: bool) -> SysResult<OwnedFd> {
    match readable {
        true => open_dir_read(dirfd, path),
        false => open_dir_path(dirfd, path),
    }
}

/// `openat(dirfd, path, O_PATH|O_DIRECTORY|O_CLOEXEC)`: a directory,
/// following symlinks (for ancestors of layers, not layers themselves).
pub fn open_dir_path_follow(dirfd: BorrowedFd<'_>, path: &Path) -> SysResult<OwnedFd> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    rustix::fs::openat(dirfd, path, flags, Mode::empty()).map_err(fail("openat", || {
        format!(
            "{}, {}, O_PATH|O_DIRECTORY|O_CLOEXEC",
            fd_arg(dirfd),
            path_arg(path)
        )
    }))
}

/// `openat2(AT_FDCWD, path, O_PATH|O_DIRECTORY|O_CLOEXEC, RESOLVE_NO_SYMLINKS)`
/// (`O_RDONLY` instead of `O_PATH` when `readable`, for a directory whose
/// entries are read next): a directory reached without following any
/// symlink, so that its path as given (normalized) is its canonical path,
/// with no `readlink` of `/proc/thread-self/fd/N` needed to learn it.
pub fn open_dir_no_symlinks(path: &Path, readable: bool) -> SysResult<OwnedFd> {
    let access = if readable {
        OFlags::RDONLY
    } else {
        OFlags::PATH
    };
    let flags = access | OFlags::DIRECTORY | OFlags::CLOEXEC;
    rustix::fs::openat2(cwd(), path, flags, Mode::empty(), ResolveFlags::NO_SYMLINKS).map_err(fail(
        "openat2",
        || {
            format!(
                "AT_FDCWD, {}, {}|O_DIRECTORY|O_CLOEXEC, RESOLVE_NO_SYMLINKS",
                path_arg(path),
                if readable { "O_RDONLY" } else { "O_PATH" }
            )
        },
    ))
}

/// Where an fd points, as the kernel names it in this thread's mount
/// namespace (`readlink /proc/thread-self/fd/N`); `None` when /proc is not
/// there or the path is not reachable.
pub fn fd_path(fd: BorrowedFd<'_>) -> Option<std::path::PathBuf> {
    fd_path_via(cwd(), Path::new("/proc"), fd)
}

/// [`fd_path`] through `proc` (`dirfd` and a path to a procfs that shows
/// this thread, e.g. one opened before entering another mount namespace):
/// `readlinkat(proc, "thread-self/fd/N")`.
pub fn fd_path_via(
    dirfd: BorrowedFd<'_>,
    proc: &Path,
    fd: BorrowedFd<'_>,
) -> Option<std::path::PathBuf> {
    let link = proc.join(format!("thread-self/fd/{}", fd.as_raw_fd()));
    let target = rustix::fs::readlinkat(dirfd, &link, Vec::new()).ok()?;
    let path = std::path::PathBuf::from(OsStr::from_bytes(target.as_bytes()));
    path.is_absolute().then_some(path)
}

/// `readlinkat(dirfd, path)`: a symlink's target, as bytes.
pub fn read_link(dirfd: BorrowedFd<'_>, path: &Path) -> SysResult<Vec<u8>> {
    rustix::fs::readlinkat(dirfd, path, Vec::new())
        .map(|target| target.into_bytes())
        .map_err(fail("readlinkat", || {
            format!("{}, {}", fd_arg(dirfd), path_arg(path))
        }))
}

/// `openat(dirfd, path, O_RDONLY|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC)`: a directory
/// opened for reading (what `FSCONFIG_SET_FD` wants before 6.15).
pub fn open_dir_read(dirfd: BorrowedFd<'_>, path: &Path) -> SysResult<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(dirfd, path, flags, Mode::empty()).map_err(fail("openat", || {
        format!(
            "{}, {}, O_RDONLY|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC",
            fd_arg(dirfd),
            path_arg(path)
        )
    }))
}

/// `openat2(dirfd, path, O_PATH|O_DIRECTORY|O_CLOEXEC, RESOLVE_BENEATH|
/// RESOLVE_NO_SYMLINKS|RESOLVE_NO_XDEV|RESOLVE_NO_MAGICLINKS)`: a directory
/// strictly beneath `dirfd`, reached without a symlink or a mount crossing.
pub fn open_dir_beneath(dirfd: BorrowedFd<'_>, path: &Path) -> SysResult<OwnedFd> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH
        | ResolveFlags::NO_SYMLINKS
        | ResolveFlags::NO_XDEV
        | ResolveFlags::NO_MAGICLINKS;
    rustix::fs::openat2(dirfd, path, flags, Mode::empty(), resolve).map_err(fail("openat2", || {
        format!(
            "{}, {}, O_PATH|O_DIRECTORY|O_CLOEXEC, RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_XDEV|RESOLVE_NO_MAGICLINKS",
            fd_arg(dirfd),
            path_arg(path)
        )
    }))
}

/// `openat2(dirfd, path, O_PATH|O_DIRECTORY|O_CLOEXEC, RESOLVE_BENEATH|
/// RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS)`: a directory beneath `dirfd`
/// reached without any symlink; mount points may be crossed.
pub fn open_dir_beneath_crossing(dirfd: BorrowedFd<'_>, path: &Path) -> SysResult<OwnedFd> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    rustix::fs::openat2(dirfd, path, flags, Mode::empty(), resolve).map_err(fail("openat2", || {
        format!(
            "{}, {}, O_PATH|O_DIRECTORY|O_CLOEXEC, RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS",
            fd_arg(dirfd),
            path_arg(path)
        )
    }))
}

/// `openat(dirfd, path, O_RDONLY|O_CLOEXEC)` of a regular file.
pub fn open_read(dirfd: BorrowedFd<'_>, path: &Path) -> SysResult<OwnedFd> {
    rustix::fs::openat(dirfd, path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(fail("openat", || {
            format!("{}, {}, O_RDONLY|O_CLOEXEC", fd_arg(dirfd), path_arg(path))
        }))
}

/// `openat(dirfd, path, O_RDONLY|O_NONBLOCK|O_NOCTTY|O_CLOEXEC[|O_NOFOLLOW])`:
/// a file opened for reading that cannot block the open itself (a FIFO
/// with no writer) nor become a controlling terminal.
pub fn open_read_nonblocking(
    dirfd: BorrowedFd<'_>,
    path: &Path,
    follow: bool,
) -> SysResult<OwnedFd> {
    let mut flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    rustix::fs::openat(dirfd, path, flags, Mode::empty()).map_err(fail("openat", || {
        format!(
            "{}, {}, O_RDONLY|O_NONBLOCK|O_NOCTTY|O_CLOEXEC{}",
            fd_arg(dirfd),
            path_arg(path),
            if follow { "" } else { "|O_NOFOLLOW" }
        )
    }))
}

/// `openat(dirfd, path, O_PATH|O_CLOEXEC[|O_NOFOLLOW])`: a handle on any
/// file that opens nothing (a device's driver, a FIFO) and reads nothing;
/// with `O_NOFOLLOW`, a symlink in the last component is the handle's file.
pub fn open_handle(dirfd: BorrowedFd<'_>, path: &Path, follow: bool) -> SysResult<OwnedFd> {
    let mut flags = OFlags::PATH | OFlags::CLOEXEC;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    rustix::fs::openat(dirfd, path, flags, Mode::empty()).map_err(fail("openat", || {
        format!(
            "{}, {}, O_PATH|O_CLOEXEC{}",
            fd_arg(dirfd),
            path_arg(path),
            if follow { "" } else { "|O_NOFOLLOW" }
        )
    }))
}

/// `openat(proc, "thread-self/fd/N", O_RDONLY|O_NONBLOCK|O_NOCTTY|O_CLOEXEC)`:
/// the very file behind the handle `fd`, opened for reading, where `proc`
/// is the root of a proc filesystem (the magic link leads to the file
/// itself, whatever its name now leads to).
pub fn reopen_read(proc: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> SysResult<OwnedFd> {
    let name = format!("thread-self/fd/{}", fd.as_raw_fd());
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    rustix::fs::openat(proc, name.as_str(), flags, Mode::empty()).map_err(fail("openat", || {
        format!(
            "{}, {name:?}, O_RDONLY|O_NONBLOCK|O_NOCTTY|O_CLOEXEC",
            fd_arg(proc)
        )
    }))
}

/// A file handle as `name_to_handle_at` gives it: `struct file_handle`
/// (its length and type, then the handle's bytes).
pub struct FileHandle {
    buf: Vec<u8>,
}

/// `MAX_HANDLE_SZ`: the most bytes a handle holds.
const MAX_HANDLE_SZ: usize = 128;

/// `name_to_handle_at(fd, "", &handle, &mount_id, AT_EMPTY_PATH)`: a handle
/// on the file behind `fd`, which `open_by_handle_at` turns back into it
/// through any mount of its filesystem.
pub fn file_handle(fd: BorrowedFd<'_>) -> SysResult<FileHandle> {
    let mut buf = vec![0u8; 8 + MAX_HANDLE_SZ];
    buf[..4].copy_from_slice(&(MAX_HANDLE_SZ as u32).to_ne_bytes());
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `buf` is a `struct file_handle` with room for MAX_HANDLE_SZ
    // bytes (handle_bytes says so), and the path is an empty C string.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr(),
            &mut mount_id as *mut libc::c_int,
            libc::AT_EMPTY_PATH,
        )
    };
    if ret < 0 {
        return Err(super::SysError {
            syscall: "name_to_handle_at",
            args: format!("{}, \"\", AT_EMPTY_PATH", fd_arg(fd)),
            errno: super::last_errno(),
        });
    }
    let len = u32::from_ne_bytes(buf[..4].try_into().unwrap_or_default()) as usize;
    buf.truncate(8 + len.min(MAX_HANDLE_SZ));
    Ok(FileHandle { buf })
}

/// `open_by_handle_at(mount_fd, handle, O_PATH|O_DIRECTORY|O_CLOEXEC)`: the
/// directory `handle` names, on `mount_fd`'s mount (whose filesystem must
/// be the handle's: a handle means nothing on another). `mount_fd` is an
/// open file, not an `O_PATH` handle (`EBADF`).
pub fn open_dir_by_handle(mount_fd: BorrowedFd<'_>, handle: &FileHandle) -> SysResult<OwnedFd> {
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    let mut buf = handle.buf.clone();
    // SAFETY: `buf` is a whole `struct file_handle` as the kernel gave it;
    // the kernel returns a new fd or -1.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_raw_fd(),
            buf.as_mut_ptr(),
            flags,
        )
    };
    if ret < 0 {
        return Err(super::SysError {
            syscall: "open_by_handle_at",
            args: format!("{}, handle, O_PATH|O_DIRECTORY|O_CLOEXEC", fd_arg(mount_fd)),
            errno: super::last_errno(),
        });
    }
    // SAFETY: a new fd the kernel just gave us and nobody else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(ret as i32) })
}

/// `read(fd)` until end of file or `max + 1` bytes, whichever comes first
/// (so a caller can tell "more than `max`" from "exactly `max`").
pub fn read_at_most(fd: BorrowedFd<'_>, max: usize) -> SysResult<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() <= max {
        let want = (max + 1 - out.len()).min(buf.len());
        match rustix::io::read(fd, &mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(Errno::INTR) => {}
            Err(e) => return Err(fail("read", || fd_arg(fd))(e)),
        }
    }
    Ok(out)
}

/// `fcntl(fd, F_DUPFD_CLOEXEC)`: a second fd for the same open file.
pub fn dup(fd: BorrowedFd<'_>) -> SysResult<OwnedFd> {
    rustix::io::fcntl_dupfd_cloexec(fd, 3)
        .map_err(fail("fcntl", || format!("{}, F_DUPFD_CLOEXEC", fd_arg(fd))))
}

/// `renameat(dirfd, from, dirfd, to)`: replaces `to` atomically.
pub fn rename(dirfd: BorrowedFd<'_>, from: &Path, to: &Path) -> SysResult<()> {
    rustix::fs::renameat(dirfd, from, dirfd, to).map_err(fail("renameat", || {
        format!("{}, {}, {}", fd_arg(dirfd), path_arg(from), path_arg(to))
    }))
}

/// `flock(fd, LOCK_EX|LOCK_NB)`: `Ok(false)` when another open file
/// description holds a lock on the file.
pub fn try_lock_exclusive(fd: BorrowedFd<'_>) -> SysResult<bool> {
    match rustix::fs::flock(fd, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(fail("flock", || format!("{}, LOCK_EX|LOCK_NB", fd_arg(fd)))(e)),
    }
}

/// `flock(fd, LOCK_UN)`: gives a lock back before the fd closes.
pub fn unlock(fd: BorrowedFd<'_>) -> SysResult<()> {
    rustix::fs::flock(fd, rustix::fs::FlockOperation::Unlock)
        .map_err(fail("flock", || format!("{}, LOCK_UN", fd_arg(fd))))
}

/// `getrandom(8 bytes)`: a random number for names nobody can guess.
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty());
    u64::from_ne_bytes(bytes)
}

/// `fgetxattr(fd, name)`: whether the file `fd` is open on (for reading:
/// not `O_PATH`) carries the extended attribute `name` (`Ok(false)` for
/// `ENODATA`, and for filesystems without xattrs).
pub fn has_xattr(fd: BorrowedFd<'_>, name: &CStr) -> SysResult<bool> {
    let mut value = [0u8; 0];
    match rustix::fs::fgetxattr(fd, name, &mut value[..]) {
        Ok(_) | Err(Errno::RANGE) => Ok(true),
        Err(Errno::NODATA) | Err(Errno::OPNOTSUPP) => Ok(false),
        Err(e) => Err(fail("fgetxattr", || format!("{}, {name:?}, 0", fd_arg(fd)))(e)),
    }
}

/// `fgetxattr(fd, name)` of at most `max` bytes (`fd` open for reading):
/// `Ok(None)` when there is no such attribute (or the filesystem has no
/// xattrs); a longer value is an error (`ERANGE`).
pub fn get_xattr(fd: BorrowedFd<'_>, name: &CStr, max: usize) -> SysResult<Option<Vec<u8>>> {
    let mut value = vec![0u8; max];
    match rustix::fs::fgetxattr(fd, name, &mut value[..]) {
        Ok(len) => {
            value.truncate(len);
            Ok(Some(value))
        }
        Err(Errno::NODATA) | Err(Errno::OPNOTSUPP) => Ok(None),
        Err(e) => Err(fail("fgetxattr", || {
            format!("{}, {name:?}, {max}", fd_arg(fd))
        })(e)),
    }
}

/// How [`set_xattr`] may set an attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrSet {
    /// Only if it does not exist yet (`XATTR_CREATE`).
    Create,
    /// Only if it exists (`XATTR_REPLACE`).
    Replace,
}

/// `fsetxattr(fd, name, value, XATTR_CREATE|XATTR_REPLACE)` (`fd` open for
/// reading).
pub fn set_xattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8], how: XattrSet) -> SysResult<()> {
    let flags = match how {
        XattrSet::Create => rustix::fs::XattrFlags::CREATE,
        XattrSet::Replace => rustix::fs::XattrFlags::REPLACE,
    };
    rustix::fs::fsetxattr(fd, name, value, flags).map_err(fail("fsetxattr", || {
        format!(
            "{}, {name:?}, {} bytes, {}",
            fd_arg(fd),
            value.len(),
            match how {
                XattrSet::Create => "XATTR_CREATE",
                XattrSet::Replace => "XATTR_REPLACE",
            }
        )
    }))
}

/// `openat(AT_FDCWD, path, O_WRONLY|O_CLOEXEC)` of an existing file.
pub fn open_write(path: &Path) -> SysResult<OwnedFd> {
    rustix::fs::openat(cwd(), path, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(fail("openat", || {
            format!("AT_FDCWD, {}, O_WRONLY|O_CLOEXEC", path_arg(path))
        }))
}

/// `openat(dirfd, path, O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC, mode)`: a new file.
pub fn create_file(dirfd: BorrowedFd<'_>, path: &Path, mode: u32) -> SysResult<OwnedFd> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(dirfd, path, flags, Mode::from_raw_mode(mode)).map_err(fail(
        "openat",
        || {
            format!(
                "{}, {}, O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC, 0{mode:o}",
                fd_arg(dirfd),
                path_arg(path)
            )
        },
    ))
}

/// `openat(dirfd, ".", O_TMPFILE|O_WRONLY|O_CLOEXEC, mode)`: a new file of
/// `dirfd`'s filesystem with no name until [`link_fd`] or
/// [`link_proc_fd`] gives it one; gone with its last fd until then.
pub fn create_unnamed_file(dirfd: BorrowedFd<'_>, mode: u32) -> SysResult<OwnedFd> {
    let flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
    rustix::fs::openat(dirfd, ".", flags, Mode::from_raw_mode(mode)).map_err(fail("openat", || {
        format!(
            "{}, \".\", O_TMPFILE|O_WRONLY|O_CLOEXEC, 0{mode:o}",
            fd_arg(dirfd)
        )
    }))
}

/// `linkat(fd, "", dirfd, name, AT_EMPTY_PATH)`: gives `fd`'s file the
/// name `name` (EEXIST when taken). ENOENT without `CAP_DAC_READ_SEARCH`
/// before 6.10 (since, also for the file's opener).
pub fn link_fd(fd: BorrowedFd<'_>, dirfd: BorrowedFd<'_>, name: &Path) -> SysResult<()> {
    rustix::fs::linkat(fd, "", dirfd, name, AtFlags::EMPTY_PATH).map_err(fail("linkat", || {
        format!(
            "{}, \"\", {}, {}, AT_EMPTY_PATH",
            fd_arg(fd),
            fd_arg(dirfd),
            path_arg(name)
        )
    }))
}

/// `linkat(proc, "thread-self/fd/N", dirfd, name, AT_SYMLINK_FOLLOW)`:
/// gives `fd`'s file the name `name` through its magic link in the proc
/// root `proc`, which needs no capability.
pub fn link_proc_fd(
    proc: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    dirfd: BorrowedFd<'_>,
    name: &Path,
) -> SysResult<()> {
    let link = format!("thread-self/fd/{}", fd.as_raw_fd());
    rustix::fs::linkat(proc, link.as_str(), dirfd, name, AtFlags::SYMLINK_FOLLOW).map_err(fail(
        "linkat",
        || {
            format!(
                "{}, {link:?}, {}, {}, AT_SYMLINK_FOLLOW",
                fd_arg(proc),
                fd_arg(dirfd),
                path_arg(name)
            )
        },
    ))
}

/// What `statx` tells about a file, reduced to what idoverlay uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Device (major, minor) of the filesystem.
    pub dev: (u32, u32),
    /// Inode number.
    pub ino: u64,
    /// File type and permission bits (`st_mode`).
    pub mode: u32,
    /// Owner as stored, seen through the mount it was reached by.
    pub uid: u32,
    /// Group as stored, seen through the mount it was reached by.
    pub gid: u32,
    /// The id of the mount it was reached through (5.8+), if the kernel said.
    pub mnt_id: Option<u64>,
    /// Whether it is the root of a mount (5.8+), if the kernel said.
    pub mount_root: Option<bool>,
    /// Size in bytes.
    pub size: u64,
    /// The device a character or block device file stands for.
    pub rdev: (u32, u32),
}

impl Stat {
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    /// Whether this is a symlink.
    pub fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }

    /// The same inode on the same filesystem.
    pub fn same_inode(&self, other: &Stat) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }

    /// An overlay whiteout: a character device 0:0.
    pub fn is_whiteout(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFCHR && self.rdev == (0, 0)
    }

    /// A word for the file type, for messages ("a regular file").
    pub fn kind(&self) -> &'static str {
        match self.mode & libc::S_IFMT {
            libc::S_IFDIR => "a directory",
            libc::S_IFLNK => "a symlink",
            libc::S_IFREG => "a regular file",
            libc::S_IFIFO => "a FIFO",
            libc::S_IFSOCK => "a socket",
            libc::S_IFCHR => "a character device",
            libc::S_IFBLK => "a block device",
            _ => "an unknown file type",
        }
    }
}

fn statx_inner(dirfd: BorrowedFd<'_>, path: &Path, at: AtFlags, what: &str) -> SysResult<Stat> {
    let mask = StatxFlags::TYPE
        | StatxFlags::MODE
        | StatxFlags::UID
        | StatxFlags::GID
        | StatxFlags::INO
        | StatxFlags::SIZE
        | StatxFlags::MNT_ID;
    let st = rustix::fs::statx(dirfd, path, at, mask).map_err(fail("statx", || {
        format!(
            "{}, {}, {what}, STATX_TYPE|STATX_MODE|STATX_UID|STATX_GID|STATX_INO|STATX_SIZE|STATX_MNT_ID",
            fd_arg(dirfd),
            path_arg(path)
        )
    }))?;
    let mount_root = rustix::fs::StatxAttributes::MOUNT_ROOT;
    let mount_root_known = st.stx_attributes_mask.contains(mount_root);
    Ok(Stat {
        dev: (st.stx_dev_major, st.stx_dev_minor),
        ino: st.stx_ino,
        mode: u32::from(st.stx_mode),
        uid: st.stx_uid,
        gid: st.stx_gid,
        mnt_id: (st.stx_mask & libc::STATX_MNT_ID != 0).then_some(st.stx_mnt_id),
        mount_root: mount_root_known.then_some(st.stx_attributes.contains(mount_root)),
        size: st.stx_size,
        rdev: (st.stx_rdev_major, st.stx_rdev_minor),
    })
}

/// `statx(dirfd, path, AT_SYMLINK_NOFOLLOW, …)`.
pub fn stat_nofollow(dirfd: BorrowedFd<'_>, path: &Path) -> SysResult<Stat> {
    statx_inner(
        dirfd,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        "AT_SYMLINK_NOFOLLOW",
    )
}

/// `statx(dirfd, path, AT_SYMLINK_NOFOLLOW|AT_NO_AUTOMOUNT, …)`: as
/// [`stat_nofollow`], and a last component that is an automount point is
/// not mounted (for looking at a name only to word a message).
pub fn stat_nofollow_no_automount(dirfd: BorrowedFd<'_>, path: &Path) -> SysResult<Stat> {
    statx_inner(
        dirfd,
        path,
        AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT,
        "AT_SYMLINK_NOFOLLOW|AT_NO_AUTOMOUNT",
    )
}

/// `statx(fd, "", AT_EMPTY_PATH, …)`: the file an fd refers to.
pub fn stat_fd(fd: BorrowedFd<'_>) -> SysResult<Stat> {
    statx_inner(fd, Path::new(""), AtFlags::EMPTY_PATH, "AT_EMPTY_PATH")
}

/// `statx(fd, "", AT_EMPTY_PATH, STATX_MNT_ID_UNIQUE)`: the 64-bit mount
/// id that is never reused (6.8+); `None` on older kernels.
pub fn stat_fd_unique_mnt_id(fd: BorrowedFd<'_>) -> Option<u64> {
    unique_mnt_id(fd, Path::new(""), AtFlags::EMPTY_PATH)
}

/// [`stat_fd_unique_mnt_id`] of `path` in `dirfd`, its last component not
/// followed.
pub fn stat_unique_mnt_id_nofollow(dirfd: BorrowedFd<'_>, path: &Path) -> Option<u64> {
    unique_mnt_id(dirfd, path, AtFlags::SYMLINK_NOFOLLOW)
}

fn unique_mnt_id(dirfd: BorrowedFd<'_>, path: &Path, at: AtFlags) -> Option<u64> {
    const STATX_MNT_ID_UNIQUE: u32 = 0x4000;
    let mask = StatxFlags::from_bits_retain(STATX_MNT_ID_UNIQUE);
    let st = rustix::fs::statx(dirfd, path, at, mask).ok()?;
    (st.stx_mask & STATX_MNT_ID_UNIQUE != 0).then_some(st.stx_mnt_id)
}

/// `fstatfs(fd)`: the filesystem's magic number (`f_type`).
pub fn fs_magic(fd: BorrowedFd<'_>) -> SysResult<u64> {
    let st = rustix::fs::fstatfs(fd).map_err(fail("fstatfs", || fd_arg(fd)))?;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    Ok(st.f_type as u64)
}

/// `statfs(path)`: the magic number of the filesystem `path` is on.
pub fn fs_magic_at(path: &Path) -> SysResult<u64> {
    let st = rustix::fs::statfs(path).map_err(fail("statfs", || path_arg(path)))?;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    Ok(st.f_type as u64)
}

/// The names in a directory (without `.` and `..`), read through a fresh
/// `openat(fd, ".", O_RDONLY|O_DIRECTORY)` so an `O_PATH` handle works too.
pub fn dir_entries(dirfd: BorrowedFd<'_>) -> SysResult<Vec<std::ffi::OsString>> {
    let dir = open_dir_read(dirfd, Path::new("."))?;
    dir_entries_from(dir.as_fd())
}

/// The names in a directory (without `.` and `..`), read from `dir` itself
/// from its current position: for a directory fd just opened `O_RDONLY`
/// (an `O_PATH` fd fails with `EBADF`).
pub fn dir_entries_from(dir: BorrowedFd<'_>) -> SysResult<Vec<std::ffi::OsString>> {
    // Straight from this fd into the stack (rustix's `Dir` would open the
    // directory once more and allocate).
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    let mut reader = rustix::fs::RawDir::new(dir, &mut buf);
    let mut names = Vec::new();
    while let Some(entry) = reader.next() {
        let entry = entry.map_err(fail("getdents64", || fd_arg(dir)))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(names)
}

/// `fstatvfs(fd)`: whether the mount (or its superblock) is read-only.
pub fn mount_is_read_only(fd: BorrowedFd<'_>) -> SysResult<bool> {
    let st = rustix::fs::fstatvfs(fd).map_err(fail("fstatvfs", || fd_arg(fd)))?;
    Ok(st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
}

/// `mkdirat(dirfd, path, mode)`.
pub fn mkdir(dirfd: BorrowedFd<'_>, path: &Path, mode: u32) -> SysResult<()> {
    rustix::fs::mkdirat(dirfd, path, Mode::from_raw_mode(mode)).map_err(fail("mkdirat", || {
        format!("{}, {}, 0{mode:o}", fd_arg(dirfd), path_arg(path))
    }))
}

/// `unlinkat(dirfd, name, AT_REMOVEDIR)`: removes an empty directory only.
/// A symlink in the last component is not followed (the call fails ENOTDIR).
pub fn rmdir(dirfd: BorrowedFd<'_>, name: &Path) -> SysResult<()> {
    rustix::fs::unlinkat(dirfd, name, AtFlags::REMOVEDIR).map_err(fail("unlinkat", || {
        format!("{}, {}, AT_REMOVEDIR", fd_arg(dirfd), path_arg(name))
    }))
}

/// `unlinkat(dirfd, name, 0)`: removes a file (never a directory).
pub fn unlink(dirfd: BorrowedFd<'_>, name: &Path) -> SysResult<()> {
    rustix::fs::unlinkat(dirfd, name, AtFlags::empty()).map_err(fail("unlinkat", || {
        format!("{}, {}, 0", fd_arg(dirfd), path_arg(name))
    }))
}

/// How a [`Locked`] holds its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// `LOCK_EX`: nobody else holds any lock on it.
    Exclusive,
    /// `LOCK_SH`: nobody holds an exclusive one.
    Shared,
}

/// An open file description locked with `flock`, let go with `LOCK_UN`
/// when dropped, not only closed: a child forked meanwhile holds a copy of
/// the description, and closing ours alone would leave the lock held until
/// that child exits or execs (everyone else waiting for it). In such a
/// child, dropping its copy of this only closes the fd: the lock is the
/// parent's to let go.
///
/// Only ever taken without waiting: a wait, and how long it may last, is
/// the caller's (`crate::lock_wait`).
pub struct Locked {
    fd: OwnedFd,
    pid: u32,
}

impl Locked {
    /// `flock(fd, LOCK_EX|LOCK_NB)` or `flock(fd, LOCK_SH|LOCK_NB)`: the
    /// lock, or the fd back with the error (`EWOULDBLOCK`: another open
    /// file description holds a lock that conflicts).
    pub fn try_new(fd: OwnedFd, mode: LockMode) -> Result<Locked, (OwnedFd, super::SysError)> {
        let (op, name) = match mode {
            LockMode::Exclusive => (
                rustix::fs::FlockOperation::NonBlockingLockExclusive,
                "LOCK_EX|LOCK_NB",
            ),
            LockMode::Shared => (
                rustix::fs::FlockOperation::NonBlockingLockShared,
                "LOCK_SH|LOCK_NB",
            ),
        };
        match rustix::fs::flock(fd.as_fd(), op) {
            Ok(()) => Ok(Locked {
                fd,
                pid: std::process::id(),
            }),
            Err(e) => {
                let e = fail("flock", || format!("{}, {name}", fd_arg(fd.as_fd())))(e);
                Err((fd, e))
            }
        }
    }

    /// The locked fd.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl std::fmt::Debug for Locked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Locked({})", fd_arg(self.fd.as_fd()))
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        if std::process::id() == self.pid {
            let _ = unlock(self.fd.as_fd());
        }
    }
}

/// `fchmod(fd, mode)`: the permission bits of the file an fd refers to
/// (not subject to the umask).
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> SysResult<()> {
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))
        .map_err(fail("fchmod", || format!("{}, 0{mode:o}", fd_arg(fd))))
}

/// `write(fd, bytes)`, all of it.
pub fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> SysResult<()> {
    while !bytes.is_empty() {
        let n = rustix::io::write(fd, bytes).map_err(fail("write", || {
            format!("{}, {} bytes", fd_arg(fd), bytes.len())
        }))?;
        bytes = &bytes[n..];
    }
    Ok(())
}

/// `fchownat(fd, "", uid, gid, AT_EMPTY_PATH)`: the file an fd refers to
/// (an `O_PATH` fd too) given to `uid:gid`.
pub fn chown_fd(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> SysResult<()> {
    rustix::fs::chownat(
        fd,
        "",
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        AtFlags::EMPTY_PATH,
    )
    .map_err(fail("fchownat", || {
        format!("{}, \"\", {uid}, {gid}, AT_EMPTY_PATH", fd_arg(fd))
    }))
}

/// `fchdir(fd)`: changes the calling thread's working directory. Only call it
/// on a thread that has its own fs struct (after [`unshare_mount_ns`]).
pub fn fchdir(fd: BorrowedFd<'_>) -> SysResult<()> {
    rustix::process::fchdir(fd).map_err(fail("fchdir", || fd_arg(fd)))
}

/// Calls `each` with every name in a directory (without `.` and `..`),
/// read from `dir` itself from its current position into a buffer on the
/// stack (an fd just opened `O_RDONLY`; an `O_PATH` fd fails with `EBADF`).
/// `each` returns false to stop early.
pub fn for_each_entry(dir: BorrowedFd<'_>, mut each: impl FnMut(&[u8]) -> bool) -> SysResult<()> {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    let mut reader = rustix::fs::RawDir::new(dir, &mut buf);
    while let Some(entry) = reader.next() {
        let entry = entry.map_err(fail("getdents64", || fd_arg(dir)))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." && !each(name) {
            break;
        }
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard limit.
pub fn raise_fd_limit() {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if let Some(max) = limit.maximum {
        if limit.current.is_some_and(|cur| cur < max) {
            let _ = rustix::process::setrlimit(
                rustix::process::Resource::Nofile,
                rustix::process::Rlimit {
                    current: Some(max),
                    maximum: Some(max),
                },
            );
        }
    }
}
