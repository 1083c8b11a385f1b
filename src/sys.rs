//! Every system call idoverlay makes, as thin typed wrappers.
//!
//! This is the only module allowed `unsafe` (as in libpathrs, where
//! `syscalls.rs` plays this role). Each wrapper returns a [`SysError`] that
//! names the syscall and the arguments it was given, so an error read at
//! 3 a.m. says exactly what the kernel refused. The argument text is built
//! only when a call fails: the success path allocates nothing for it.
//!
//! Most calls go through rustix; `mount_setattr`, the user-namespace helper's
//! `clone` and a few ioctls are not in rustix and use `libc` directly.

use std::ffi::{CStr, OsStr};
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, StatxFlags};
use rustix::io::Errno;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MountPropagationFlags, MoveMountFlags,
    OpenTreeFlags, UnmountFlags,
};

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

fn fail<A: FnOnce() -> String>(syscall: &'static str, args: A) -> impl FnOnce(Errno) -> SysError {
    move |e| SysError {
        syscall,
        args: args(),
        errno: e.raw_os_error(),
    }
}

/// How an fd shows up in error messages.
fn fd_arg(fd: BorrowedFd<'_>) -> String {
    let raw = fd.as_raw_fd();
    if raw == libc::AT_FDCWD {
        "AT_FDCWD".to_string()
    } else {
        format!("fd {raw}")
    }
}

fn path_arg(path: &Path) -> String {
    format!("{:?}", path.as_os_str())
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

// ---------------------------------------------------------------------------
// Opening and inspecting files.

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

/// `openat2(AT_FDCWD, path, O_PATH|O_DIRECTORY|O_CLOEXEC, RESOLVE_NO_MAGICLINKS)`:
/// a directory named by a path that must not go through `/proc`'s magic
/// links (which would name this process's own fds).
pub fn open_dir_no_magiclinks(path: &Path) -> SysResult<OwnedFd> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    rustix::fs::openat2(
        cwd(),
        path,
        flags,
        Mode::empty(),
        ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(fail("openat2", || {
        format!(
            "AT_FDCWD, {}, O_PATH|O_DIRECTORY|O_CLOEXEC, RESOLVE_NO_MAGICLINKS",
            path_arg(path)
        )
    }))
}

/// Where an fd points, as the kernel names it in this thread's mount
/// namespace (`readlink /proc/thread-self/fd/N`); `None` when /proc is not
/// there or the path is not reachable.
pub fn fd_path(fd: BorrowedFd<'_>) -> Option<std::path::PathBuf> {
    let link = format!("/proc/thread-self/fd/{}", fd.as_raw_fd());
    let target = rustix::fs::readlinkat(cwd(), link.as_str(), Vec::new()).ok()?;
    let path = std::path::PathBuf::from(OsStr::from_bytes(target.as_bytes()));
    path.is_absolute().then_some(path)
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

/// `getrandom(8 bytes)`: a random number for names nobody can guess.
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty());
    u64::from_ne_bytes(bytes)
}

/// `getxattr("/proc/thread-self/fd/N", name)`: whether the file `fd` is
/// open on carries the extended attribute `name` (`Ok(false)` for
/// `ENODATA`, and for filesystems without xattrs).
pub fn has_xattr(fd: BorrowedFd<'_>, name: &CStr) -> SysResult<bool> {
    let link = format!("/proc/thread-self/fd/{}", fd.as_raw_fd());
    let mut value = [0u8; 0];
    match rustix::fs::getxattr(link.as_str(), name, &mut value[..]) {
        Ok(_) | Err(Errno::RANGE) => Ok(true),
        Err(Errno::NODATA) | Err(Errno::OPNOTSUPP) => Ok(false),
        Err(e) => Err(fail("getxattr", || format!("{link:?}, {name:?}"))(e)),
    }
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

/// `statx(fd, "", AT_EMPTY_PATH, …)`: the file an fd refers to.
pub fn stat_fd(fd: BorrowedFd<'_>) -> SysResult<Stat> {
    statx_inner(fd, Path::new(""), AtFlags::EMPTY_PATH, "AT_EMPTY_PATH")
}

/// `statx(fd, "", AT_EMPTY_PATH, STATX_MNT_ID_UNIQUE)`: the 64-bit mount
/// id that is never reused (6.8+); `None` on older kernels.
pub fn stat_fd_unique_mnt_id(fd: BorrowedFd<'_>) -> Option<u64> {
    const STATX_MNT_ID_UNIQUE: u32 = 0x4000;
    let mask = StatxFlags::from_bits_retain(STATX_MNT_ID_UNIQUE);
    let st = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, mask).ok()?;
    (st.stx_mask & STATX_MNT_ID_UNIQUE != 0).then_some(st.stx_mnt_id)
}

/// `statmount(mnt_id, STATMOUNT_MNT_ROOT)` (6.8+): which directory of its
/// filesystem the mount with this unique id shows at its root (`/` unless
/// it is a bind mount of a subdirectory). `None` when the kernel has no
/// statmount or the mount is not in this namespace.
pub fn statmount_root(unique_mnt_id: u64) -> Option<std::path::PathBuf> {
    const SYS_STATMOUNT: libc::c_long = 457;
    const STATMOUNT_MNT_ROOT: u64 = 0x8;
    /// `struct mnt_id_req`, first published size.
    #[repr(C)]
    struct MntIdReq {
        size: u32,
        spare: u32,
        mnt_id: u64,
        param: u64,
    }
    /// `struct statmount` is 512 bytes before its strings.
    const HEADER: usize = 512;
    const MASK_AT: usize = 8;
    const MNT_ROOT_AT: usize = 104;
    let req = MntIdReq {
        size: std::mem::size_of::<MntIdReq>() as u32,
        spare: 0,
        mnt_id: unique_mnt_id,
        param: STATMOUNT_MNT_ROOT,
    };
    let mut buf = vec![0u64; (HEADER + libc::PATH_MAX as usize) / 8];
    let len = buf.len() * 8;
    // SAFETY: `req` is a live, correctly sized `struct mnt_id_req`; `buf`
    // is writable for `len` bytes and 8-byte aligned, as the kernel's
    // `struct statmount` needs.
    let ret = unsafe {
        libc::syscall(
            SYS_STATMOUNT,
            &req as *const MntIdReq,
            buf.as_mut_ptr() as *mut libc::c_void,
            len,
            0,
        )
    };
    if ret != 0 {
        return None;
    }
    let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let word = |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if word(MASK_AT) & STATMOUNT_MNT_ROOT == 0 {
        return None;
    }
    let start = HEADER + u32_at(MNT_ROOT_AT) as usize;
    let rest = bytes.get(start..)?;
    let end = rest.iter().position(|b| *b == 0)?;
    Some(std::path::PathBuf::from(OsStr::from_bytes(&rest[..end])))
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

/// `faccessat2(AT_FDCWD, path, W_OK, AT_EACCESS)`: `Ok(false)` when the
/// kernel says the filesystem or mount there is read-only (`EROFS`), so a
/// caller learns it without opening anything or asking the filesystem for
/// its statistics.
pub fn writable_at(path: &Path) -> SysResult<bool> {
    match rustix::fs::accessat(cwd(), path, rustix::fs::Access::WRITE_OK, AtFlags::EACCESS) {
        Ok(()) => Ok(true),
        Err(Errno::ROFS) => Ok(false),
        Err(e) => Err(fail("faccessat2", || {
            format!("AT_FDCWD, {}, W_OK, AT_EACCESS", path_arg(path))
        })(e)),
    }
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

/// `flock(fd, LOCK_EX)`: waits for an exclusive lock, released when the fd
/// (its open file description) is closed.
pub fn lock_exclusive(fd: BorrowedFd<'_>) -> SysResult<()> {
    rustix::fs::flock(fd, rustix::fs::FlockOperation::LockExclusive)
        .map_err(fail("flock", || format!("{}, LOCK_EX", fd_arg(fd))))
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

/// `fchdir(fd)`: changes the calling thread's working directory. Only call it
/// on a thread that has its own fs struct (after [`unshare_mount_ns`]).
pub fn fchdir(fd: BorrowedFd<'_>) -> SysResult<()> {
    rustix::process::fchdir(fd).map_err(fail("fchdir", || fd_arg(fd)))
}

// ---------------------------------------------------------------------------
// The new mount API.

/// `open_tree(dirfd, path, OPEN_TREE_CLONE|OPEN_TREE_CLOEXEC[|AT_EMPTY_PATH])`:
/// a detached copy of the mount at `path` (not its submounts). The copy lives
/// in an anonymous namespace until this fd is closed or it is attached.
pub fn clone_mount(dirfd: BorrowedFd<'_>, path: &Path) -> SysResult<OwnedFd> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    let empty = path.as_os_str().is_empty();
    if empty {
        flags |= OpenTreeFlags::AT_EMPTY_PATH;
    }
    rustix::mount::open_tree(dirfd, path, flags).map_err(fail("open_tree", || {
        format!(
            "{}, {}, OPEN_TREE_CLONE|OPEN_TREE_CLOEXEC{}",
            fd_arg(dirfd),
            path_arg(path),
            if empty { "|AT_EMPTY_PATH" } else { "" }
        )
    }))
}

/// `open_tree(fd, "", OPEN_TREE_CLONE|OPEN_TREE_CLOEXEC|AT_EMPTY_PATH|AT_RECURSIVE)`:
/// a detached copy of the mount at `fd` *and of the mounts below it*.
pub fn clone_mount_tree(fd: BorrowedFd<'_>) -> SysResult<OwnedFd> {
    let flags = OpenTreeFlags::OPEN_TREE_CLONE
        | OpenTreeFlags::OPEN_TREE_CLOEXEC
        | OpenTreeFlags::AT_EMPTY_PATH
        | OpenTreeFlags::AT_RECURSIVE;
    rustix::mount::open_tree(fd, "", flags).map_err(fail("open_tree", || {
        format!(
            "{}, \"\", OPEN_TREE_CLONE|OPEN_TREE_CLOEXEC|AT_EMPTY_PATH|AT_RECURSIVE",
            fd_arg(fd)
        )
    }))
}

/// Mount attributes (`MOUNT_ATTR_*`): how a mount behaves, not what it shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MountAttrs {
    /// `MOUNT_ATTR_RDONLY`
    pub read_only: bool,
    /// `MOUNT_ATTR_NOSUID`
    pub nosuid: bool,
    /// `MOUNT_ATTR_NODEV`
    pub nodev: bool,
    /// `MOUNT_ATTR_NOEXEC`
    pub noexec: bool,
    /// `MOUNT_ATTR_NOSYMFOLLOW`
    pub nosymfollow: bool,
    /// `MOUNT_ATTR_NOATIME` (otherwise the kernel's default, relatime)
    pub noatime: bool,
    /// `MOUNT_ATTR_NODIRATIME`
    pub nodiratime: bool,
}

impl MountAttrs {
    fn bits(&self) -> u64 {
        let mut bits = 0;
        for (on, bit) in [
            (self.read_only, libc::MOUNT_ATTR_RDONLY),
            (self.nosuid, libc::MOUNT_ATTR_NOSUID),
            (self.nodev, libc::MOUNT_ATTR_NODEV),
            (self.noexec, libc::MOUNT_ATTR_NOEXEC),
            (self.nosymfollow, libc::MOUNT_ATTR_NOSYMFOLLOW),
            (self.noatime, libc::MOUNT_ATTR_NOATIME),
            (self.nodiratime, libc::MOUNT_ATTR_NODIRATIME),
        ] {
            if on {
                bits |= bit;
            }
        }
        bits
    }

    fn names(&self, idmap: bool) -> String {
        let mut names = Vec::new();
        if idmap {
            names.push("MOUNT_ATTR_IDMAP");
        }
        for (on, name) in [
            (self.read_only, "MOUNT_ATTR_RDONLY"),
            (self.nosuid, "MOUNT_ATTR_NOSUID"),
            (self.nodev, "MOUNT_ATTR_NODEV"),
            (self.noexec, "MOUNT_ATTR_NOEXEC"),
            (self.nosymfollow, "MOUNT_ATTR_NOSYMFOLLOW"),
            (self.noatime, "MOUNT_ATTR_NOATIME"),
            (self.nodiratime, "MOUNT_ATTR_NODIRATIME"),
        ] {
            if on {
                names.push(name);
            }
        }
        if names.is_empty() {
            "0".to_string()
        } else {
            names.join("|")
        }
    }
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH, {attr_set, userns_fd})` on a detached
/// mount: idmaps it through `userns` (when given) and sets `attrs`.
pub fn mount_setattr(
    mount: BorrowedFd<'_>,
    userns: Option<BorrowedFd<'_>>,
    attrs: MountAttrs,
) -> SysResult<()> {
    setattr(mount, userns, attrs, false)
}

/// As [`mount_setattr`], for the mount and every mount below it
/// (`AT_RECURSIVE`); fails as a whole when one of them refuses.
pub fn mount_setattr_tree(
    mount: BorrowedFd<'_>,
    userns: Option<BorrowedFd<'_>>,
    attrs: MountAttrs,
) -> SysResult<()> {
    setattr(mount, userns, attrs, true)
}

fn setattr(
    mount: BorrowedFd<'_>,
    userns: Option<BorrowedFd<'_>>,
    attrs: MountAttrs,
    recursive: bool,
) -> SysResult<()> {
    let mut attr_set = attrs.bits();
    let mut userns_fd = 0u64;
    if let Some(ns) = userns {
        attr_set |= libc::MOUNT_ATTR_IDMAP;
        userns_fd = ns.as_raw_fd() as u64;
    }
    let attr = libc::mount_attr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd,
    };
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    raw_mount_setattr(mount, flags, &attr).map_err(|errno| SysError {
        syscall: "mount_setattr",
        args: format!(
            "{}, \"\", AT_EMPTY_PATH{}, {{attr_set: {}{}}}",
            fd_arg(mount),
            if recursive { "|AT_RECURSIVE" } else { "" },
            attrs.names(userns.is_some()),
            userns
                .map(|ns| format!(", userns_fd: {}", ns.as_raw_fd()))
                .unwrap_or_default()
        ),
        errno,
    })
}

/// `mount_setattr(mount, "", flags, attr)`; the errno on failure.
fn raw_mount_setattr(
    mount: BorrowedFd<'_>,
    flags: libc::c_uint,
    attr: &libc::mount_attr,
) -> Result<(), i32> {
    // SAFETY: the path is a valid NUL-terminated string, `attr` is a live,
    // correctly sized `struct mount_attr`, and the kernel only reads it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount.as_raw_fd(),
            c"".as_ptr(),
            flags,
            attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    Ok(())
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH, {propagation: MS_PRIVATE})`: stops
/// mount events below this mount from propagating to or from peers.
pub fn make_mount_private(mount: BorrowedFd<'_>) -> SysResult<()> {
    let attr = libc::mount_attr {
        attr_set: 0,
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    raw_mount_setattr(mount, libc::AT_EMPTY_PATH as libc::c_uint, &attr).map_err(|errno| SysError {
        syscall: "mount_setattr",
        args: format!(
            "{}, \"\", AT_EMPTY_PATH, {{propagation: MS_PRIVATE}}",
            fd_arg(mount)
        ),
        errno,
    })
}

/// `fsopen(fs_name, FSOPEN_CLOEXEC)`: a filesystem configuration context.
pub fn fsopen(fs_name: &CStr) -> SysResult<OwnedFd> {
    rustix::mount::fsopen(fs_name, FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(fail("fsopen", || format!("{fs_name:?}, FSOPEN_CLOEXEC")))
}

/// `fsconfig(fs_fd, FSCONFIG_SET_STRING, key, value, 0)`.
pub fn fsconfig_set_string(fs_fd: BorrowedFd<'_>, key: &CStr, value: &CStr) -> SysResult<()> {
    rustix::mount::fsconfig_set_string(fs_fd, key, value).map_err(fail("fsconfig", || {
        format!(
            "{}, FSCONFIG_SET_STRING, {key:?}, {:?}, 0",
            fd_arg(fs_fd),
            OsStr::from_bytes(value.to_bytes())
        )
    }))
}

/// `fsconfig(fs_fd, FSCONFIG_SET_FLAG, key, NULL, 0)`.
pub fn fsconfig_set_flag(fs_fd: BorrowedFd<'_>, key: &CStr) -> SysResult<()> {
    rustix::mount::fsconfig_set_flag(fs_fd, key).map_err(fail("fsconfig", || {
        format!("{}, FSCONFIG_SET_FLAG, {key:?}, NULL, 0", fd_arg(fs_fd))
    }))
}

/// `fsconfig(fs_fd, FSCONFIG_SET_FD, key, NULL, fd)`.
pub fn fsconfig_set_fd(fs_fd: BorrowedFd<'_>, key: &CStr, fd: BorrowedFd<'_>) -> SysResult<()> {
    rustix::mount::fsconfig_set_fd(fs_fd, key, fd).map_err(fail("fsconfig", || {
        format!(
            "{}, FSCONFIG_SET_FD, {key:?}, NULL, {}",
            fd_arg(fs_fd),
            fd.as_raw_fd()
        )
    }))
}

/// `fsconfig(fs_fd, FSCONFIG_CMD_CREATE, NULL, NULL, 0)`: builds the superblock.
pub fn fsconfig_create(fs_fd: BorrowedFd<'_>) -> SysResult<()> {
    rustix::mount::fsconfig_create(fs_fd).map_err(fail("fsconfig", || {
        format!("{}, FSCONFIG_CMD_CREATE, NULL, NULL, 0", fd_arg(fs_fd))
    }))
}

/// The messages the kernel queued on an `fsopen` fd ("e overlay: …"),
/// oldest first, without their one-letter prefix. Reading drains the queue.
pub fn fs_messages(fs_fd: BorrowedFd<'_>) -> Vec<String> {
    let mut messages = Vec::new();
    let mut buf = [0u8; 1024];
    // The queue holds at most 8 messages; the bound guards against a kernel
    // that would keep answering.
    for _ in 0..16 {
        match rustix::io::read(fs_fd, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                let text = text.trim_end();
                let text = text
                    .strip_prefix("e ")
                    .or_else(|| text.strip_prefix("w "))
                    .or_else(|| text.strip_prefix("i "))
                    .unwrap_or(text);
                messages.push(text.to_string());
            }
        }
    }
    messages
}

/// `fsmount(fs_fd, FSMOUNT_CLOEXEC, attrs)`: a detached mount of the created superblock.
pub fn fsmount(fs_fd: BorrowedFd<'_>, attrs: MountAttrs) -> SysResult<OwnedFd> {
    let flags = MountAttrFlags::from_bits_retain(attrs.bits() as u32);
    rustix::mount::fsmount(fs_fd, FsMountFlags::FSMOUNT_CLOEXEC, flags)
        .map_err(fail("fsmount", || {
            format!("{}, FSMOUNT_CLOEXEC, {}", fd_arg(fs_fd), attrs.names(false))
        }))
}

/// `move_mount(mount, "", to_dirfd, to_path, MOVE_MOUNT_F_EMPTY_PATH[|MOVE_MOUNT_T_EMPTY_PATH])`:
/// attaches a detached mount (or moves an attached one) onto `to_path`, or
/// onto `to_dirfd` itself when `to_path` is empty. A symlink in the last
/// component of the target is not followed.
pub fn move_mount(
    mount: BorrowedFd<'_>,
    to_dirfd: BorrowedFd<'_>,
    to_path: &Path,
) -> SysResult<()> {
    let mut flags = MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH;
    let to_empty = to_path.as_os_str().is_empty();
    if to_empty {
        flags |= MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH;
    }
    rustix::mount::move_mount(mount, "", to_dirfd, to_path, flags).map_err(fail(
        "move_mount",
        || {
            format!(
                "{}, \"\", {}, {}, MOVE_MOUNT_F_EMPTY_PATH{}",
                fd_arg(mount),
                fd_arg(to_dirfd),
                path_arg(to_path),
                if to_empty {
                    "|MOVE_MOUNT_T_EMPTY_PATH"
                } else {
                    ""
                }
            )
        },
    ))
}

// ---------------------------------------------------------------------------
// The classic mount API.

/// `mount(NULL, path, NULL, MS_REC|MS_PRIVATE, NULL)`.
pub fn make_private_recursive(path: &Path) -> SysResult<()> {
    rustix::mount::mount_change(
        path,
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(fail("mount", || {
        format!("NULL, {}, NULL, MS_REC|MS_PRIVATE, NULL", path_arg(path))
    }))
}

/// `mount(source, target, fstype, flags, data)` with the legacy option string.
pub fn mount_legacy(
    source: &CStr,
    target: &Path,
    fstype: &CStr,
    read_only: bool,
    data: &CStr,
) -> SysResult<()> {
    let flags = if read_only {
        MountFlags::RDONLY
    } else {
        MountFlags::empty()
    };
    rustix::mount::mount(source, target, fstype, flags, Some(data)).map_err(fail("mount", || {
        format!(
            "{source:?}, {}, {fstype:?}, {}, {:?} ({} bytes)",
            path_arg(target),
            if read_only { "MS_RDONLY" } else { "0" },
            OsStr::from_bytes(data.to_bytes()),
            data.to_bytes().len()
        )
    }))
}

/// `mount("overlay", target, "overlay", flags, data)`: an overlay from one
/// option string (at most one page: the caller checks), mount flags from
/// `attrs`.
pub fn mount_overlay_legacy(target: &Path, attrs: MountAttrs, data: &CStr) -> SysResult<()> {
    let mut flags = MountFlags::empty();
    for (on, flag) in [
        (attrs.read_only, MountFlags::RDONLY),
        (attrs.nosuid, MountFlags::NOSUID),
        (attrs.nodev, MountFlags::NODEV),
        (attrs.noexec, MountFlags::NOEXEC),
        (attrs.noatime, MountFlags::NOATIME),
        (attrs.nodiratime, MountFlags::NODIRATIME),
        (attrs.nosymfollow, MountFlags::NOSYMFOLLOW),
    ] {
        if on {
            flags |= flag;
        }
    }
    rustix::mount::mount(c"overlay", target, c"overlay", flags, Some(data)).map_err(fail(
        "mount",
        || {
            format!(
                "\"overlay\", {}, \"overlay\", {}, ({} bytes of options)",
                path_arg(target),
                attrs.names(false),
                data.to_bytes().len()
            )
        },
    ))
}

/// `umount2("/proc/thread-self/fd/N", MNT_DETACH)`: takes the mount whose
/// root `fd` is (the magic link is followed to exactly that mount) out of
/// its tree, for taking back a mount this process has just made. Detached,
/// since `fd` itself keeps it busy; it is freed when the last fd closes.
pub fn detach_root_of(fd: BorrowedFd<'_>) -> SysResult<()> {
    let path = format!("/proc/thread-self/fd/{}", fd.as_raw_fd());
    rustix::mount::unmount(path.as_str(), UnmountFlags::DETACH)
        .map_err(fail("umount2", || format!("{path:?}, MNT_DETACH")))
}

/// `umount2(target, flags)`, never following a symlink in `target`.
pub fn unmount(target: &Path, lazy: bool) -> SysResult<()> {
    let mut flags = UnmountFlags::NOFOLLOW;
    if lazy {
        flags |= UnmountFlags::DETACH;
    }
    rustix::mount::unmount(target, flags).map_err(fail("umount2", || {
        format!(
            "{}, UMOUNT_NOFOLLOW{}",
            path_arg(target),
            if lazy { "|MNT_DETACH" } else { "" }
        )
    }))
}

// ---------------------------------------------------------------------------
// Namespaces and processes.

/// `unshare(CLONE_NEWNS)`: gives the calling *thread* its own mount namespace
/// (and, implied by it, its own root and working directory).
pub fn unshare_mount_ns() -> SysResult<()> {
    // SAFETY: rustix marks unshare unsafe because CLONE_FILES could make fds
    // seen by other threads invalid in this one. CLONE_NEWNS (with the
    // CLONE_FS it implies) does not touch the fd table.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
        .map_err(fail("unshare", || "CLONE_NEWNS".to_string()))
}

/// `unshare(CLONE_FS)` then `setns(fd, CLONE_NEWNS)`: moves the calling
/// *thread* into another mount namespace (setns needs a thread with its own
/// fs struct). Only call it on a thread that ends afterwards.
pub fn enter_mount_ns(ns: BorrowedFd<'_>) -> SysResult<()> {
    // SAFETY: CLONE_FS does not touch the fd table (see unshare_mount_ns).
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }
        .map_err(fail("unshare", || "CLONE_FS".to_string()))?;
    rustix::thread::move_into_link_name_space(ns, Some(rustix::thread::LinkNameSpaceType::Mount))
        .map_err(fail("setns", || format!("{}, CLONE_NEWNS", fd_arg(ns))))
}

/// `unshare(CLONE_FS)`: gives the calling thread its own root and working
/// directory. Only call it on a thread that ends afterwards.
pub fn unshare_fs() -> SysResult<()> {
    // SAFETY: CLONE_FS does not touch the fd table (see unshare_mount_ns).
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }
        .map_err(fail("unshare", || "CLONE_FS".to_string()))
}

/// Who else uses the calling thread's fs struct (working directory, root,
/// umask).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsStruct {
    /// Nobody: the thread is the process's only one (idoverlay's own
    /// threads aside).
    Alone,
    /// Nobody, in a process with other threads.
    Own,
    /// Another thread, or it cannot be told.
    Shared,
}

/// Who else uses the calling thread's fs struct. Thread `ours` is known to
/// have its own (idoverlay's reaper); every other thread listed in
/// `/proc/self/task` is compared with `kcmp(KCMP_FS)`. [`FsStruct::Shared`] whenever it
/// cannot tell (no /proc, no kcmp, more than 64 threads).
///
/// Race-free for its purpose: a thread started after the check shares the
/// fs struct of the thread that started it, so only this thread could start
/// one that shares ours. Processes that share an fs struct without being
/// threads of one process (`clone(CLONE_FS)` without `CLONE_THREAD`, which
/// no libc call makes) are not seen.
pub fn fs_struct_of_this_thread(ours: Option<i32>) -> FsStruct {
    const KCMP_FS: libc::c_long = 3;
    const MAX_THREADS: usize = 64;
    let Ok(dir) = open_dir_read(cwd(), Path::new("/proc/self/task")) else {
        return FsStruct::Shared;
    };
    // The other threads, read into the stack: no allocation.
    let me = gettid();
    let mut others = [0 as libc::pid_t; MAX_THREADS];
    let mut count = 0;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    let mut tasks = rustix::fs::RawDir::new(&dir, &mut buf);
    while let Some(entry) = tasks.next() {
        let Ok(entry) = entry else {
            return FsStruct::Shared;
        };
        let Some(tid) = std::str::from_utf8(entry.file_name().to_bytes())
            .ok()
            .and_then(|t| t.parse::<libc::pid_t>().ok())
        else {
            continue; // `.` and `..`
        };
        if tid == me || Some(tid) == ours {
            continue;
        }
        if count == MAX_THREADS {
            return FsStruct::Shared;
        }
        others[count] = tid;
        count += 1;
    }
    if count == 0 {
        return FsStruct::Alone;
    }
    for &tid in &others[..count] {
        // SAFETY: kcmp only compares two tasks' kernel objects; no memory
        // of ours is passed.
        let same = unsafe { libc::syscall(libc::SYS_kcmp, me, tid, KCMP_FS, 0, 0) };
        match same {
            0 => return FsStruct::Shared,
            // Gone since the listing: it shares nothing any more.
            -1 if Errno::from_raw_os_error(errno()) == Errno::SRCH => {}
            -1 => return FsStruct::Shared,
            _ => {}
        }
    }
    FsStruct::Own
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Runs `f` with the calling thread's working directory in `dir`, then
/// changes back, with every signal blocked meanwhile (no handler of the
/// caller's runs with the borrowed working directory). Only for a thread
/// whose fs struct is its own ([`fs_struct_of_this_thread`]): no other thread
/// ever sees the change.
///
/// An error means `f` did not run and nothing changed: the way back is
/// tried before leaving. Should it fail all the same afterwards (the
/// working directory's permissions changed meanwhile), the thread is left
/// in `/` rather than inside `dir`, and `f`'s result is returned. Both
/// are given back even when `f` panics.
pub fn with_cwd_in<T>(dir: BorrowedFd<'_>, f: impl FnOnce() -> T) -> SysResult<T> {
    let path_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let home = rustix::fs::openat(cwd(), ".", path_flags, Mode::empty())
        .map_err(fail("openat", || {
            "AT_FDCWD, \".\", O_PATH|O_DIRECTORY|O_CLOEXEC".to_string()
        }))?;
    // fchdir checks search permission: make sure the way back is open.
    fchdir(home.as_fd())?;
    // Given back when this goes out of scope, also if `f` panics.
    let _lent = Lent {
        home,
        mask: block_all_signals(),
    };
    fchdir(dir)?;
    Ok(f())
}

/// The calling thread's working directory and signal mask, given back
/// when dropped (see [`with_cwd_in`]).
struct Lent {
    home: OwnedFd,
    mask: SignalMask,
}

impl Drop for Lent {
    fn drop(&mut self) {
        if fchdir(self.home.as_fd()).is_err() {
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
            if let Ok(root) = rustix::fs::openat(cwd(), "/", flags, Mode::empty()) {
                let _ = fchdir(root.as_fd());
            }
        }
        self.mask.restore();
    }
}

/// A thread's signal mask, as it was before [`block_all_signals`].
pub struct SignalMask(libc::sigset_t);

impl SignalMask {
    /// Puts the mask back on the calling thread.
    pub fn restore(&self) {
        // SAFETY: `self.0` is a mask pthread_sigmask filled in.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// `pthread_sigmask(SIG_SETMASK, <all>)`: blocks every signal the calling
/// thread may block; returns the mask it had.
pub fn block_all_signals() -> SignalMask {
    // SAFETY: sigset_t is plain data, filled by sigfillset; pthread_sigmask
    // only reads `all` and writes `previous`.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
        SignalMask(previous)
    }
}

/// `gettid()`.
pub fn gettid() -> i32 {
    rustix::thread::gettid().as_raw_nonzero().get()
}

/// `ioctl(fd, NS_GET_NSTYPE)`: the `CLONE_NEW*` type of a namespace fd.
pub fn namespace_type(fd: BorrowedFd<'_>) -> SysResult<i32> {
    // SAFETY: NS_GET_NSTYPE takes no argument and returns an int.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if ret < 0 {
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        return Err(SysError {
            syscall: "ioctl",
            args: format!("{}, NS_GET_NSTYPE", fd_arg(fd)),
            errno,
        });
    }
    Ok(ret)
}

/// `CLONE_NEWUSER`, as [`namespace_type`] reports a user namespace.
pub const CLONE_NEWUSER: i32 = libc::CLONE_NEWUSER;

/// A child process parked in a new user namespace, used only to read its
/// namespace. Dropping it kills and reaps the child.
#[derive(Debug)]
pub struct UsernsChild {
    pid: i32,
    pidfd: OwnedFd,
}

impl UsernsChild {
    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl Drop for UsernsChild {
    fn drop(&mut self) {
        // SAFETY: pidfd_send_signal and waitid take the pidfd we own; a pidfd
        // cannot name another process even if the pid was reused.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
            let mut info: libc::siginfo_t = std::mem::zeroed();
            loop {
                let ret = libc::waitid(
                    libc::P_PIDFD,
                    self.pidfd.as_raw_fd() as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::__WALL,
                );
                if ret == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                    break;
                }
            }
        }
    }
}

/// Clones a child into a new user namespace that does nothing but wait to
/// be killed.
///
/// The child shares the caller's fd table (`CLONE_FILES`, so it holds no extra
/// references to the caller's files), has exit signal 0 (a process-wide
/// SIGCHLD reaper never sees it) and `PR_SET_PDEATHSIG(SIGKILL)`, so it dies
/// with the calling thread even if the caller is killed. It is reached only
/// through a pidfd, which cannot be confused by pid reuse.
pub fn spawn_userns_child() -> SysResult<UsernsChild> {
    let parent = std::process::id() as libc::pid_t;
    let mut pidfd: libc::c_int = -1;
    let flags = (libc::CLONE_NEWUSER | libc::CLONE_FILES | libc::CLONE_PIDFD) as libc::c_ulong;
    // SAFETY: a fork-like clone (no CLONE_VM: the child gets a copy-on-write
    // copy of this thread's memory and runs on its own copy of the stack).
    // In the child only raw syscalls follow (prctl, getppid, pause, _exit),
    // all async-signal-safe, so the state of other threads' locks, which the
    // child inherits frozen, is never touched.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            std::ptr::null_mut::<libc::c_void>(),
            &mut pidfd as *mut libc::c_int,
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    if ret == 0 {
        // Child.
        // SAFETY: raw syscalls only; see above.
        unsafe {
            libc::syscall(
                libc::SYS_prctl,
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL,
                0,
                0,
                0,
            );
            // The parent may have died before PR_SET_PDEATHSIG took effect.
            if libc::syscall(libc::SYS_getppid) as libc::pid_t != parent {
                libc::syscall(libc::SYS_exit, 0);
            }
            loop {
                libc::syscall(libc::SYS_pause);
            }
        }
    }
    if ret < 0 {
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        return Err(SysError {
            syscall: "clone",
            args: "CLONE_NEWUSER|CLONE_FILES|CLONE_PIDFD, exit signal 0".to_string(),
            errno,
        });
    }
    // SAFETY: with CLONE_PIDFD the kernel stored a new pidfd we now own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    Ok(UsernsChild {
        pid: ret as i32,
        pidfd,
    })
}

/// Sets the calling thread's fsuid and fsgid and raises its effective
/// capabilities back to its permitted set (changing fsuid away from 0 drops
/// the file capabilities). Only call it on a thread that ends afterwards.
pub fn assume_fs_ids(uid: u32, gid: u32) -> SysResult<()> {
    // SAFETY: setfsuid/setfsgid take an id and return the previous one; they
    // change only this thread's credentials (the raw syscalls, not glibc's
    // process-wide set*id broadcast).
    unsafe {
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
        // Called with an invalid id, they change nothing and report the current one.
        let now_gid = libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32;
        let now_uid = libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32;
        if now_uid != uid || now_gid != gid {
            return Err(SysError {
                syscall: "setfsuid",
                args: format!("{uid} (and setfsgid {gid})"),
                errno: libc::EPERM,
            });
        }
    }
    let mut header = libc_cap_header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut data = [libc_cap_data::default(); 2];
    // SAFETY: capget/capset with a v3 header read/write two data structs.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut libc_cap_header,
            data.as_mut_ptr(),
        )
    };
    if ret == 0 {
        for d in &mut data {
            d.effective = d.permitted;
        }
        // SAFETY: as above.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_capset,
                &mut header as *mut libc_cap_header,
                data.as_ptr(),
            )
        };
        if ret == 0 {
            return Ok(());
        }
    }
    let errno = std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    Err(SysError {
        syscall: "capset",
        args: "effective = permitted".to_string(),
        errno,
    })
}

/// Whether the calling thread has `CAP_SYS_ADMIN` in its effective set.
pub fn has_cap_sys_admin() -> bool {
    let mut header = libc_cap_header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut data = [libc_cap_data::default(); 2];
    // SAFETY: capget with a v3 header writes two data structs, which we provide.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut libc_cap_header,
            data.as_mut_ptr(),
        )
    };
    const CAP_SYS_ADMIN: u32 = 21;
    ret == 0 && data[0].effective & (1 << CAP_SYS_ADMIN) != 0
}

#[repr(C)]
struct libc_cap_header {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct libc_cap_data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Raises the soft limit on open files to the hard limit (the CLI does this
/// once: 500 layers need a few hundred fds at once).
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocked-signal mask of the calling thread, as /proc shows it.
    fn blocked() -> String {
        std::fs::read_to_string("/proc/thread-self/status")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("SigBlk:"))
            .unwrap()
            .to_string()
    }

    #[test]
    fn a_lent_working_directory_comes_back_even_after_a_panic() {
        std::thread::spawn(|| {
            unshare_fs().unwrap();
            assert_eq!(fs_struct_of_this_thread(None), FsStruct::Own);
            let home = std::env::temp_dir();
            std::env::set_current_dir(&home).unwrap();
            let mask = blocked();
            let root = open_dir_path(cwd(), Path::new("/")).unwrap();
            let inside = with_cwd_in(root.as_fd(), || {
                (std::env::current_dir().unwrap(), blocked())
            })
            .unwrap();
            assert_eq!(inside.0, Path::new("/"));
            assert_ne!(inside.1, mask, "signals are blocked meanwhile");
            assert_eq!(std::env::current_dir().unwrap(), home);
            let panicked = std::panic::catch_unwind(|| {
                with_cwd_in(root.as_fd(), || panic!("inside")).unwrap();
            });
            assert!(panicked.is_err());
            assert_eq!(std::env::current_dir().unwrap(), home);
            assert_eq!(blocked(), mask);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn threads_sharing_the_working_directory_are_seen() {
        // Threads of this test binary share the fs struct of the main
        // thread; one that unshares it has its own.
        assert_eq!(fs_struct_of_this_thread(None), FsStruct::Shared);
        std::thread::spawn(|| {
            unshare_fs().unwrap();
            assert_ne!(fs_struct_of_this_thread(None), FsStruct::Shared);
            // A thread it starts shares its fs struct with it.
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let sibling = std::thread::spawn(move || {
                let _ = rx.recv();
            });
            assert_eq!(fs_struct_of_this_thread(None), FsStruct::Shared);
            drop(tx);
            sibling.join().unwrap();
        })
        .join()
        .unwrap();
    }
}
