//! Mounts: the new mount API (`open_tree`, `mount_setattr`, `fsopen`,
//! `fsconfig`, `fsmount`, `move_mount`, `statmount`) and the classic one
//! (`mount(2)`, `umount2`).

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MountPropagationFlags, MoveMountFlags,
    OpenTreeFlags, UnmountFlags,
};

use super::{fail, fd_arg, path_arg, SysError, SysResult};

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

bitflags::bitflags! {
    /// Mount attributes (`MOUNT_ATTR_*`): how a mount behaves, not what it
    /// shows. `READ_ONLY` on the overlay also makes its superblock read-only.
    ///
    /// ```
    /// use idoverlay::MountAttrs;
    /// let attrs = MountAttrs::NOSUID | MountAttrs::NODEV;
    /// assert!(attrs.contains(MountAttrs::NOSUID));
    /// ```
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct MountAttrs: u64 {
        /// `MOUNT_ATTR_RDONLY`
        const READ_ONLY = libc::MOUNT_ATTR_RDONLY;
        /// `MOUNT_ATTR_NOSUID`
        const NOSUID = libc::MOUNT_ATTR_NOSUID;
        /// `MOUNT_ATTR_NODEV`
        const NODEV = libc::MOUNT_ATTR_NODEV;
        /// `MOUNT_ATTR_NOEXEC`
        const NOEXEC = libc::MOUNT_ATTR_NOEXEC;
        /// `MOUNT_ATTR_NOSYMFOLLOW`
        const NOSYMFOLLOW = libc::MOUNT_ATTR_NOSYMFOLLOW;
        /// `MOUNT_ATTR_NOATIME` (otherwise the kernel's default, relatime)
        const NOATIME = libc::MOUNT_ATTR_NOATIME;
        /// `MOUNT_ATTR_NODIRATIME`
        const NODIRATIME = libc::MOUNT_ATTR_NODIRATIME;
    }
}

impl MountAttrs {
    /// Each attribute with its C name and its `mount(2)` flag.
    const TABLE: [(MountAttrs, &'static str, MountFlags); 7] = [
        (
            MountAttrs::READ_ONLY,
            "MOUNT_ATTR_RDONLY",
            MountFlags::RDONLY,
        ),
        (MountAttrs::NOSUID, "MOUNT_ATTR_NOSUID", MountFlags::NOSUID),
        (MountAttrs::NODEV, "MOUNT_ATTR_NODEV", MountFlags::NODEV),
        (MountAttrs::NOEXEC, "MOUNT_ATTR_NOEXEC", MountFlags::NOEXEC),
        (
            MountAttrs::NOSYMFOLLOW,
            "MOUNT_ATTR_NOSYMFOLLOW",
            MountFlags::NOSYMFOLLOW,
        ),
        (
            MountAttrs::NOATIME,
            "MOUNT_ATTR_NOATIME",
            MountFlags::NOATIME,
        ),
        (
            MountAttrs::NODIRATIME,
            "MOUNT_ATTR_NODIRATIME",
            MountFlags::NODIRATIME,
        ),
    ];

    /// As `mount(2)` flags.
    fn legacy(self) -> MountFlags {
        Self::TABLE
            .iter()
            .filter(|(a, _, _)| self.contains(*a))
            .fold(MountFlags::empty(), |f, (_, _, m)| f | *m)
    }

    /// The C names, `|`-joined, for messages.
    fn names(self, idmap: bool) -> String {
        let mut names: Vec<&str> = Vec::new();
        if idmap {
            names.push("MOUNT_ATTR_IDMAP");
        }
        names.extend(
            Self::TABLE
                .iter()
                .filter(|(a, _, _)| self.contains(*a))
                .map(|(_, n, _)| *n),
        );
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
    let flags = attrs.legacy();
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

/// What `statmount` (6.8+) says of one mount of this mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountStatus {
    /// Its unique id (`STATX_MNT_ID_UNIQUE`).
    pub id: u64,
    /// The unique id of the mount it is attached to (itself at the top).
    pub parent_id: u64,
    /// Its `MOUNT_ATTR_*` flags.
    pub attr: u64,
    /// Which directory of its filesystem it shows at its root (`/` unless
    /// it is a bind mount of a subdirectory).
    pub root: std::path::PathBuf,
    /// Where it is mounted, relative to the caller's root.
    pub point: std::path::PathBuf,
}

/// `MOUNT_ATTR_IDMAP` in [`MountStatus::attr`].
pub const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

const STATMOUNT_MNT_BASIC: u64 = 0x2;
/// `struct statmount`: 512 bytes before its strings.
const STATMOUNT_HEADER: usize = 512;
/// Offsets in `struct statmount` (include/uapi/linux/mount.h).
const STATMOUNT_MASK_AT: usize = 8;
const STATMOUNT_MNT_ID_AT: usize = 40;

/// `statmount(mnt_id, mask)` (6.8+) in the caller's mount namespace: the
/// `struct statmount` and its strings, or the errno.
fn statmount_raw(unique_mnt_id: u64, mask: u64) -> std::result::Result<Vec<u8>, i32> {
    statmount_in(unique_mnt_id, None, mask)
}

/// [`statmount_raw`] in the mount namespace with this id (6.11+:
/// `mnt_id_req.mnt_ns_id`, `MNT_ID_REQ_SIZE_VER1`), or the caller's.
fn statmount_in(
    unique_mnt_id: u64,
    mount_ns_id: Option<u64>,
    mask: u64,
) -> std::result::Result<Vec<u8>, i32> {
    const SYS_STATMOUNT: libc::c_long = 457;
    /// `struct mnt_id_req` as of 6.11 (`MNT_ID_REQ_SIZE_VER1`).
    #[repr(C)]
    struct MntIdReq {
        size: u32,
        spare: u32,
        mnt_id: u64,
        param: u64,
        mnt_ns_id: u64,
    }
    /// `MNT_ID_REQ_SIZE_VER0`: without `mnt_ns_id`, what 6.8 takes.
    const SIZE_VER0: u32 = 24;
    let req = MntIdReq {
        size: match mount_ns_id {
            Some(_) => std::mem::size_of::<MntIdReq>() as u32,
            None => SIZE_VER0,
        },
        spare: 0,
        mnt_id: unique_mnt_id,
        param: mask,
        mnt_ns_id: mount_ns_id.unwrap_or(0),
    };
    let mut buf = vec![0u64; (STATMOUNT_HEADER + 2 * libc::PATH_MAX as usize) / 8];
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
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    Ok(buf.iter().flat_map(|w| w.to_ne_bytes()).collect())
}

/// Whether the mount with this unique id (6.8+) is in this mount
/// namespace, wherever it is mounted and whether or not the caller's root
/// reaches it: `Some(false)` only when the kernel says there is no such
/// mount here (`ENOENT`; unique ids are never reused within a boot), `None`
/// when it cannot tell (no statmount, or any other error).
pub fn mount_exists(unique_mnt_id: u64) -> Option<bool> {
    mount_exists_in(unique_mnt_id, None)
}

/// [`mount_exists`] in the mount namespace with this id (6.11+), or the
/// caller's: `Some(false)` also when that namespace is gone (statmount
/// finds no such namespace: ENOENT).
pub fn mount_exists_in(unique_mnt_id: u64, mount_ns_id: Option<u64>) -> Option<bool> {
    match statmount_in(unique_mnt_id, mount_ns_id, STATMOUNT_MNT_BASIC) {
        Ok(bytes) => {
            let word =
                |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
            let basic = word(STATMOUNT_MASK_AT) & STATMOUNT_MNT_BASIC != 0;
            (basic && word(STATMOUNT_MNT_ID_AT) == unique_mnt_id).then_some(true)
        }
        Err(libc::ENOENT) => Some(false),
        Err(_) => None,
    }
}

/// `statmount(mnt_id, STATMOUNT_MNT_BASIC|STATMOUNT_MNT_ROOT|
/// STATMOUNT_MNT_POINT)` (6.8+) of the mount with this unique id. `None`
/// when the kernel has no statmount, the mount is not in this mount
/// namespace (detached, another namespace's, or gone), or its mount point
/// is not below the caller's root (a chroot: no path to give).
pub fn statmount(unique_mnt_id: u64) -> Option<MountStatus> {
    const STATMOUNT_MNT_ROOT: u64 = 0x8;
    const STATMOUNT_MNT_POINT: u64 = 0x10;
    const WANTED: u64 = STATMOUNT_MNT_BASIC | STATMOUNT_MNT_ROOT | STATMOUNT_MNT_POINT;
    // The offsets of the other fields read.
    const MNT_PARENT_ID_AT: usize = 48;
    const MNT_ATTR_AT: usize = 64;
    const MNT_ROOT_AT: usize = 104;
    const MNT_POINT_AT: usize = 108;
    let bytes = statmount_raw(unique_mnt_id, WANTED).ok()?;
    let word = |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if word(STATMOUNT_MASK_AT) & WANTED != WANTED {
        return None;
    }
    let string = |at: usize| -> Option<std::path::PathBuf> {
        let rest = bytes.get(STATMOUNT_HEADER + u32_at(at) as usize..)?;
        let end = rest.iter().position(|b| *b == 0)?;
        Some(std::path::PathBuf::from(OsStr::from_bytes(&rest[..end])))
    };
    Some(MountStatus {
        id: word(STATMOUNT_MNT_ID_AT),
        parent_id: word(MNT_PARENT_ID_AT),
        attr: word(MNT_ATTR_AT),
        root: string(MNT_ROOT_AT)?,
        point: string(MNT_POINT_AT)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{open_dir_path, stat_fd_unique_mnt_id};
    use std::os::fd::AsFd;

    #[test]
    fn statmount_reads_the_fields_at_their_offsets() {
        let proc_fd = open_dir_path(crate::sys::cwd(), Path::new("/proc")).unwrap();
        let Some(id) = stat_fd_unique_mnt_id(proc_fd.as_fd()) else {
            return; // before 6.8
        };
        let Some(status) = statmount(id) else { return };
        assert_eq!(status.id, id);
        assert_eq!(status.point, Path::new("/proc"));
        assert_eq!(status.root, Path::new("/"));
        assert_eq!(status.attr & MOUNT_ATTR_IDMAP, 0);
        let root_fd = open_dir_path(crate::sys::cwd(), Path::new("/")).unwrap();
        let root_id = stat_fd_unique_mnt_id(root_fd.as_fd()).unwrap();
        let mut parent = statmount(id).unwrap().parent_id;
        // /proc hangs below / (perhaps through mounts in between).
        for _ in 0..16 {
            if parent == root_id {
                return;
            }
            parent = statmount(parent).unwrap().parent_id;
        }
        panic!("/proc's parents never reach /");
    }
}
