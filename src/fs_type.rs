//! Filesystem type names from `statfs` magic numbers, for messages and probes.

use std::os::fd::BorrowedFd;
use std::path::Path;

use crate::sys;

/// The name (as in `/proc/filesystems`) of the filesystem an fd lives on,
/// or `unknown (magic 0x…)`.
pub fn of_fd(fd: BorrowedFd<'_>) -> String {
    of_magic(sys::fs_magic(fd))
}

/// The same for the filesystem a path is on (following symlinks); `None`
/// when there is nothing at `path`.
pub fn of_path(path: &Path) -> Option<String> {
    sys::fs_magic_at(path).ok().map(|m| of_magic(Ok(m)))
}

fn of_magic(magic: sys::SysResult<u64>) -> String {
    match magic {
        Ok(magic) => name(magic)
            .map(str::to_string)
            .unwrap_or_else(|| format!("unknown (magic {magic:#x})")),
        Err(_) => "unknown".to_string(),
    }
}

/// Whether files of this filesystem report a device of their subvolume
/// (btrfs, bcachefs), not the filesystem's: one subvolume inside another
/// then shows another device, and only the mount table tells that they
/// lie one inside the other.
pub fn has_per_subvolume_devices(fd: BorrowedFd<'_>) -> bool {
    matches!(sys::fs_magic(fd), Ok(0x9123_683E | 0xca45_1a4e))
}

/// The name of a filesystem by its magic number (`linux/magic.h`).
pub fn name(magic: u64) -> Option<&'static str> {
    Some(match magic {
        0xEF53 => "ext4", // ext2, ext3 and ext4 share the magic
        0x0102_1994 => "tmpfs",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0xca45_1a4e => "bcachefs",
        0xF2F5_2010 => "f2fs",
        0xE0F5_E1E2 => "erofs",
        0x7371_7368 => "squashfs",
        0x4d44 => "vfat",
        0x2011_BAB0 => "exfat",
        0x5346_544e => "ntfs",
        0x9660 => "iso9660",
        0x1501_3346 => "udf",
        0x794c_7630 => "overlay",
        0x9fa0 => "proc",
        0x6265_6572 => "sysfs",
        0x8584_58f6 => "ramfs",
        0x6367_7270 => "cgroup2",
        0x0027_e0eb => "cgroup",
        0x1cd1 => "devpts",
        0x6969 => "nfs",
        0x6573_5546 => "fuse",
        0x6573_5543 => "fusectl",
        0x2fc1_2fc1 => "zfs",
        0x6462_6720 => "debugfs",
        0x7472_6163 => "tracefs",
        0x7363_6673 => "securityfs",
        0xf97c_ff8c => "selinuxfs",
        0xcafe_4a11 => "bpf",
        0x0102_1997 => "9p",
        0x6165_676c => "pstore",
        0x6e73_6673 => "nsfs",
        0xde5e_81e4 => "efivarfs",
        0x9584_58f6 => "hugetlbfs",
        0xFF53_4D42 => "cifs",
        0xFE53_4D42 => "smb2",
        0x0187 => "autofs",
        0x1980_0202 => "mqueue",
        0x3434 => "nilfs2",
        0x00c3_6400 => "ceph",
        0x4249_4e4d => "binfmt_misc",
        0x6265_6570 => "configfs",
        0x0904_1934 => "anon_inodefs",
        0x5049_5045 => "pipefs",
        0x534F_434B => "sockfs",
        _ => return None,
    })
}
