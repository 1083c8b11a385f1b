//! Credentials: capabilities and the filesystem ids of one thread.

use super::{last_errno, SysError, SysResult};

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAP_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's capability sets, as bit masks by capability number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

/// `capget(v3, this thread)`.
pub fn capabilities() -> SysResult<Capabilities> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget with a v3 header writes two data structs, which we provide.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if ret != 0 {
        return Err(SysError {
            syscall: "capget",
            args: "v3, 0".into(),
            errno: last_errno(),
        });
    }
    let join = |f: fn(&CapData) -> u32| u64::from(f(&data[0])) | u64::from(f(&data[1])) << 32;
    Ok(Capabilities {
        effective: join(|d| d.effective),
        permitted: join(|d| d.permitted),
        inheritable: join(|d| d.inheritable),
    })
}

/// `capset(v3, this thread, caps)`.
pub fn set_capabilities(caps: Capabilities) -> SysResult<()> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let word = |mask: u64, i: usize| (mask >> (32 * i)) as u32;
    let data: [CapData; 2] = std::array::from_fn(|i| CapData {
        effective: word(caps.effective, i),
        permitted: word(caps.permitted, i),
        inheritable: word(caps.inheritable, i),
    });
    // SAFETY: capset with a v3 header reads two data structs, which we provide.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if ret != 0 {
        return Err(SysError {
            syscall: "capset",
            args: format!(
                "v3, 0, {{effective: {:#x}, permitted: {:#x}}}",
                caps.effective, caps.permitted
            ),
            errno: last_errno(),
        });
    }
    Ok(())
}

/// `setfsgid(gid)` then `setfsuid(uid)` on the calling thread only (the raw
/// syscalls, not glibc's process-wide set*id broadcast); returns the ids
/// the thread has afterwards (they report failure only that way).
pub fn set_fs_ids(uid: u32, gid: u32) -> (u32, u32) {
    // SAFETY: setfsuid/setfsgid take an id and return the previous one;
    // called with an invalid id they change nothing and report the current.
    unsafe {
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
        let now_gid = libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32;
        let now_uid = libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32;
        (now_uid, now_gid)
    }
}
