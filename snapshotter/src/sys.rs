//! The syscalls the snapshotter makes on directories, in one place.
//!
//! Everything here works relative to directory fds: a path is resolved once,
//! by the kernel, with `openat2(RESOLVE_BENEATH | RESOLVE_NO_XDEV |
//! RESOLVE_NO_SYMLINKS)`, so another process swapping a component for a
//! symlink or mounting something on it between two calls makes the call
//! fail instead of acting elsewhere. This is the crate's one module allowed
//! `unsafe` (only [`enter_private_mount_ns`] needs it).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags};

/// The resolve flags of every lookup below a directory fd: stay beneath
/// it, never cross a mount, never follow a symlink.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_XDEV)
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

fn io_err(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// Opens an absolute directory path for reading entries, refusing a
/// symlink as the last component (used once, for the snapshotter's root).
pub fn open_dir_abs(path: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err)
}

/// Opens the directory `rel` beneath `dir` (see the module doc for how
/// `rel` is resolved). Fails with `EXDEV` when `rel` is, or passes
/// through, a mount point and `ELOOP` when it has a symlink.
pub fn open_dir_beneath(dir: BorrowedFd<'_>, rel: impl AsRef<Path>) -> io::Result<OwnedFd> {
    rustix::fs::openat2(
        dir,
        rel.as_ref(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        RESOLVE,
    )
    .map_err(io_err)
}

/// Opens `name` (one component) in `dir` as an `O_PATH` fd, landing on the
/// root of whatever is mounted there (the one lookup here that may cross
/// into a mount: it is how a mount point's mount is inspected). No symlink
/// is followed.
pub fn open_mount_point(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    rustix::fs::openat2(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(io_err)
}

/// overlayfs' `f_type` (`OVERLAYFS_SUPER_MAGIC`).
const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

/// Whether an fd is on an overlay filesystem.
pub fn is_overlay(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let st = rustix::fs::fstatfs(fd).map_err(io_err)?;
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between targets
    Ok(st.f_type as i64 == OVERLAYFS_SUPER_MAGIC)
}

/// What an entry of a directory is, without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// Anything else (files, symlinks, devices, sockets, fifos).
    Other,
    /// The root of a mount on the entry (a directory, or a file bind
    /// mount): the lookup of its name ended in another mount. Only where
    /// the kernel tells (`STATX_ATTR_MOUNT_ROOT`, 5.8+); before, a mounted
    /// directory still shows as `EXDEV` when opened beneath its parent.
    MountPoint,
}

/// `statx(AT_SYMLINK_NOFOLLOW)` of one entry of `dir`.
pub fn entry_kind(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Kind> {
    let st = rustix::fs::statx(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        rustix::fs::StatxFlags::TYPE,
    )
    .map_err(io_err)?;
    let root = rustix::fs::StatxAttributes::MOUNT_ROOT;
    Ok(if st.stx_attributes.contains(root) {
        Kind::MountPoint
    } else if FileType::from_raw_mode(st.stx_mode.into()) == FileType::Directory {
        Kind::Dir
    } else {
        Kind::Other
    })
}

/// What [`entry_usage`] tells of one entry.
#[derive(Debug, Clone, Copy)]
pub struct EntryUsage {
    /// What the entry is (see [`entry_kind`]).
    pub kind: Kind,
    /// Bytes of the blocks it has allocated.
    pub bytes: i64,
    /// Its device and inode when more than one name links to it (a hard
    /// link: counted once, as containerd's `fs.DiskUsage` does).
    pub linked: Option<(u64, u64)>,
}

/// `statx(AT_SYMLINK_NOFOLLOW)` of one entry for Usage: its kind, size and,
/// when hard-linked, identity, in one syscall.
pub fn entry_usage(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<EntryUsage> {
    use rustix::fs::StatxFlags;
    let st = rustix::fs::statx(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::TYPE | StatxFlags::NLINK | StatxFlags::BLOCKS | StatxFlags::INO,
    )
    .map_err(io_err)?;
    let is_dir = FileType::from_raw_mode(st.stx_mode.into()) == FileType::Directory;
    let kind = if st
        .stx_attributes
        .contains(rustix::fs::StatxAttributes::MOUNT_ROOT)
    {
        Kind::MountPoint
    } else if is_dir {
        Kind::Dir
    } else {
        Kind::Other
    };
    let dev = (u64::from(st.stx_dev_major) << 32) | u64::from(st.stx_dev_minor);
    let linked = (!is_dir && st.stx_nlink > 1).then_some((dev, st.stx_ino));
    let bytes = i64::try_from(st.stx_blocks.saturating_mul(512)).unwrap_or(i64::MAX);
    Ok(EntryUsage {
        kind,
        bytes,
        linked,
    })
}

/// Owner of a directory fd.
pub fn owner(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    let st = rustix::fs::fstat(fd).map_err(io_err)?;
    Ok((st.st_uid, st.st_gid))
}

/// A directory's names, read one at a time (`getdents64` a buffer of a
/// few KiB at a time, however many names it holds), `.` and `..` left
/// out. Each name comes with the position after it, from which
/// [`Names::seek`] resumes on a new open of the same directory.
pub struct Names(rustix::fs::Dir);

impl Names {
    /// Reads `dir` from its start, through a fresh open of it (`dir`'s own
    /// position is left as it is).
    pub fn read_from(dir: BorrowedFd<'_>) -> io::Result<Self> {
        rustix::fs::Dir::read_from(dir).map(Self).map_err(io_err)
    }

    /// Reads the directory `fd` opens, from `fd`'s position.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        rustix::fs::Dir::new(fd).map(Self).map_err(io_err)
    }

    /// The directory being read.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.fd().expect("a Dir holds its fd")
    }

    /// The next name and the position after it; `None` at the end (or once
    /// the directory was removed).
    pub fn next_name(&mut self) -> io::Result<Option<(OsString, i64)>> {
        loop {
            let Some(entry) = self.0.read() else {
                return Ok(None);
            };
            let entry = entry.map_err(io_err)?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                return Ok(Some((
                    OsStr::from_bytes(name).to_os_string(),
                    entry.offset(),
                )));
            }
        }
    }

    /// Goes on after the name [`Names::next_name`] gave `position` with.
    pub fn seek(&mut self, position: i64) -> io::Result<()> {
        self.0.seek(position).map_err(io_err)
    }
}

/// Up to `limit` names of a directory, `.` and `..` left out, read from a
/// fresh open of it (so from its start). Bounded, so a directory another
/// process keeps filling cannot make one read grow without end; a caller
/// that deletes what it got reads again for the rest.
pub fn read_names(dir: BorrowedFd<'_>, limit: usize) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    let mut reader = Names::read_from(dir)?;
    while names.len() < limit {
        let Some((name, _)) = reader.next_name()? else {
            break;
        };
        names.push(name);
    }
    Ok(names)
}

/// `unlinkat(dir, name)`: a file, symlink (the link itself) or device.
pub fn unlink(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(io_err)
}

/// `unlinkat(dir, name, AT_REMOVEDIR)`: an empty directory. The kernel
/// refuses a mount point (`EBUSY`).
pub fn rmdir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(io_err)
}

/// `mkdirat(dir, name, mode)`.
pub fn mkdir(dir: BorrowedFd<'_>, name: impl AsRef<Path>, mode: u32) -> io::Result<()> {
    rustix::fs::mkdirat(dir, name.as_ref(), Mode::from_raw_mode(mode)).map_err(io_err)?;
    Ok(())
}

/// `fchmod`: mkdir's mode is cut by the umask; this sets it exactly.
pub fn chmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode)).map_err(io_err)
}

/// `renameat2(RENAME_NOREPLACE)` inside one directory: never replaces an
/// existing entry (a plain rename would replace an empty directory).
pub fn rename_noreplace(dir: BorrowedFd<'_>, from: &OsStr, to: &OsStr) -> io::Result<()> {
    move_noreplace(dir, from, dir, to)
}

/// `renameat2(RENAME_NOREPLACE)` from one directory to another (on one
/// mount; a mount point is refused with `EBUSY`).
pub fn move_noreplace(
    from_dir: BorrowedFd<'_>,
    from: &OsStr,
    to_dir: BorrowedFd<'_>,
    to: &OsStr,
) -> io::Result<()> {
    rustix::fs::renameat_with(from_dir, from, to_dir, to, RenameFlags::NOREPLACE).map_err(io_err)
}

/// Device and inode of an open file: which directory an fd names.
pub fn identity(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(fd).map_err(io_err)?;
    #[allow(clippy::unnecessary_cast)] // st_dev's width differs between targets
    Ok((st.st_dev as u64, st.st_ino as u64))
}

/// The parent of an open directory (`openat(fd, "..")`, readable), on the
/// walk back up a tree whose upper levels' fds were closed. The caller
/// checks it is the directory it came from ([`identity`]).
pub fn open_parent(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        "..",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err)
}

/// `fchown` of an open directory.
pub fn chown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .map_err(io_err)
}

/// Whether an fd is the root of a mount (`statx` `STATX_ATTR_MOUNT_ROOT`).
pub fn is_mount_root(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let st = rustix::fs::statx(
        fd,
        "",
        AtFlags::EMPTY_PATH,
        rustix::fs::StatxFlags::BASIC_STATS,
    )
    .map_err(io_err)?;
    let mask = rustix::fs::StatxAttributes::MOUNT_ROOT;
    if !st.stx_attributes_mask.contains(mask) {
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    }
    Ok(st.stx_attributes.contains(mask))
}

/// Gives the calling thread a working directory (and root and umask) of
/// its own, `unshare(CLONE_FS)`. The snapshotter's worker threads do this
/// at start, so idoverlay can mount from the calling thread (lending its
/// working directory for the one `mount(2)`) instead of starting a thread
/// of its own for each overlay (docs/library.md, "The fast path").
#[allow(unsafe_code)]
pub fn unshare_fs() -> io::Result<()> {
    // SAFETY: CLONE_FS separates only cwd, root and umask; the fd table,
    // which is what makes rustix's unshare unsafe in general, stays shared.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }.map_err(io_err)
}

/// Enters a private mount namespace on the calling thread and makes every
/// mount in it private, so nothing mounted afterwards (by this thread or
/// the processes it starts) is seen by the host. For the tests and the
/// test harness; the snapshotter itself runs in containerd's namespace.
#[allow(unsafe_code)]
pub fn enter_private_mount_ns() -> io::Result<()> {
    // SAFETY: CLONE_NEWNS (and the CLONE_FS it implies) leaves the fd table
    // alone, which is what makes rustix's unshare unsafe in general.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
        .map_err(io_err)?;
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::PRIVATE | rustix::mount::MountPropagationFlags::REC,
    )
    .map_err(io_err)
}
