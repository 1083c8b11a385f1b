//! The credentials idoverlay checks or takes: `CAP_SYS_ADMIN` before
//! anything is done, and the upper layer's owner for a thread that creates
//! an overlay on an idmapped upper.

use crate::sys::{self, SysError, SysResult};

const CAP_SYS_ADMIN: u32 = 21;

/// Whether the calling thread has `CAP_SYS_ADMIN` in its effective set.
pub fn has_cap_sys_admin() -> bool {
    sys::capabilities().is_ok_and(|c| c.effective & (1 << CAP_SYS_ADMIN) != 0)
}

/// Makes the calling thread act on files as `uid`/`gid` (fsuid and fsgid),
/// with its effective capabilities raised back to its permitted set
/// (changing the fsuid away from 0 drops them). Only call it on a thread
/// that ends afterwards: its credentials are its own from then on.
pub fn assume_fs_ids(uid: u32, gid: u32) -> SysResult<()> {
    let (now_uid, now_gid) = sys::set_fs_ids(uid, gid);
    if now_uid != uid || now_gid != gid {
        return Err(SysError {
            syscall: "setfsuid",
            args: format!("{uid} (and setfsgid {gid})"),
            errno: libc::EPERM,
        });
    }
    let caps = sys::capabilities()?;
    sys::set_capabilities(sys::Capabilities {
        effective: caps.permitted,
        ..caps
    })
}
