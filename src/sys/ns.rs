//! Namespaces, threads and processes: `unshare`, `setns`, `kcmp`, signal
//! masks, and the child parked in a new user namespace.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::{fail, fd_arg, last_errno, SysError, SysResult};

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

/// `setns(fd, CLONE_NEWNS)` for a thread that already has its own fs
/// struct ([`enter_mount_ns`] made it): moves between mount namespaces;
/// root and working directory become the namespace's root.
pub fn set_mount_ns(ns: BorrowedFd<'_>) -> SysResult<()> {
    rustix::thread::move_into_link_name_space(ns, Some(rustix::thread::LinkNameSpaceType::Mount))
        .map_err(fail("setns", || format!("{}, CLONE_NEWNS", fd_arg(ns))))
}

/// `pivot_root(".", ".")`: the mount at the working directory becomes the
/// calling thread's root (and its namespace's), the old root stacked
/// beneath it at "." (then detached by the caller).
pub fn pivot_root_here() -> SysResult<()> {
    rustix::process::pivot_root(".", ".").map_err(fail("pivot_root", || "\".\", \".\"".into()))
}

/// `chroot(".")`: the working directory becomes the calling thread's root
/// (its own fs struct: see [`enter_mount_ns`]).
pub fn chroot_here() -> SysResult<()> {
    rustix::process::chroot(".").map_err(fail("chroot", || "\".\"".into()))
}

/// `unshare(CLONE_FS)`: gives the calling thread its own root and working
/// directory. Only call it on a thread that ends afterwards.
pub fn unshare_fs() -> SysResult<()> {
    // SAFETY: CLONE_FS does not touch the fd table (see unshare_mount_ns).
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }
        .map_err(fail("unshare", || "CLONE_FS".to_string()))
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

/// `rt_sigprocmask(SIG_SETMASK, <all 64>)` on the calling thread: every
/// signal the kernel lets a task block, glibc's own included; returns the
/// mask it had. Only around `clone` of a task glibc does not know (a glibc
/// thread must take glibc's signals: `setuid` waits for every thread to).
fn block_every_signal_raw() -> u64 {
    set_signal_mask_raw(u64::MAX)
}

/// `rt_sigprocmask(SIG_SETMASK, mask)`; returns the mask before.
fn set_signal_mask_raw(mask: u64) -> u64 {
    let mut previous: u64 = 0;
    // SAFETY: the kernel reads 8 bytes of `mask` and writes 8 of `previous`
    // (the kernel's sigset size on Linux's 64-signal architectures).
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &mask as *const u64,
            &mut previous as *mut u64,
            std::mem::size_of::<u64>(),
        )
    };
    previous
}

/// `sched_getaffinity(0)`: the CPUs the calling thread may run on.
pub fn allowed_cpus() -> SysResult<Vec<usize>> {
    let set = rustix::thread::sched_getaffinity(None)
        .map_err(fail("sched_getaffinity", || "0".to_string()))?;
    Ok((0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&cpu| set.is_set(cpu))
        .collect())
}

/// `sched_setaffinity(0, {cpu})`: the calling thread runs on `cpu` only.
/// Only call it on a thread that ends afterwards.
pub fn run_only_on_cpu(cpu: usize) -> SysResult<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set)
        .map_err(fail("sched_setaffinity", || format!("0, {{{cpu}}}")))
}

/// `getcpu()`: the CPU the calling thread runs on.
pub fn current_cpu() -> usize {
    rustix::thread::sched_getcpu()
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
        let errno = last_errno();
        return Err(SysError {
            syscall: "ioctl",
            args: format!("{}, NS_GET_NSTYPE", fd_arg(fd)),
            errno,
        });
    }
    Ok(ret)
}

/// `ioctl(fd, NS_GET_MNTNS_ID)` (6.7+): the 64-bit id of a mount namespace,
/// never reused within a boot (what `statmount` takes to look into it);
/// `None` on older kernels or another kind of fd.
pub fn mount_namespace_id(fd: BorrowedFd<'_>) -> Option<u64> {
    /// `_IOR(NSIO, 0x5, __u64)`, include/uapi/linux/nsfs.h.
    const NS_GET_MNTNS_ID: libc::c_ulong = 0x8008_b705;
    let mut id: u64 = 0;
    // SAFETY: NS_GET_MNTNS_ID writes one `__u64` through the pointer, to
    // `id`, which lives across the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_MNTNS_ID, &mut id as *mut u64) };
    (ret == 0).then_some(id)
}

/// `CLONE_NEWUSER`, as [`namespace_type`] reports a user namespace.
pub const CLONE_NEWUSER: i32 = libc::CLONE_NEWUSER;

/// A child process parked in a new user namespace, used only to read its
/// namespace. Dropping it kills and reaps the child.
pub struct UsernsChild {
    pid: i32,
    pidfd: OwnedFd,
    /// The stack the child runs on (it shares our memory). Freed only once
    /// the child can run no more: after it was killed.
    stack: Option<Box<[u8]>>,
}

impl std::fmt::Debug for UsernsChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsernsChild")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl UsernsChild {
    /// The child's pid as `/proc` names it: the pid namespace of the /proc
    /// mounted here need not be the caller's (`unshare -p` without a /proc
    /// of its own), and `/proc/PID` of the caller's number would then be
    /// another process. From the pidfd's `fdinfo`, which the kernel
    /// writes in the /proc instance's pid namespace; `None` where that
    /// /proc does not show the child at all.
    pub fn pid_in_proc(&self) -> SysResult<Option<i32>> {
        let path = format!("/proc/self/fdinfo/{}", self.pidfd.as_raw_fd());
        let fd = super::open_read(super::cwd(), std::path::Path::new(&path))?;
        let text = super::read_at_most(fd.as_fd(), 4096)?;
        let pid = String::from_utf8_lossy(&text)
            .lines()
            .find_map(|l| l.strip_prefix("Pid:"))
            .and_then(|n| n.trim().parse::<i32>().ok());
        Ok(pid.filter(|&n| n > 0))
    }
}

impl Drop for UsernsChild {
    fn drop(&mut self) {
        // SAFETY: pidfd_send_signal and waitid take the pidfd we own; a pidfd
        // cannot name another process even if the pid was reused.
        let killed = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        } == 0;
        if !killed {
            // Never free a stack a live child may still run on.
            std::mem::forget(self.stack.take());
        }
        // SAFETY: see above; `info` is plain data waitid fills in.
        unsafe {
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

/// The child's stack: it only makes four raw syscalls.
const USERNS_CHILD_STACK: usize = 16 * 1024;

/// What the child runs: arm its death with the parent's, then wait to be
/// killed. Raw syscalls only, none of which fails here (so errno, which
/// lives in the parent thread's TLS the child shares, is never written);
/// every signal but SIGKILL is blocked, so `pause` never returns and no
/// handler of ours ever runs in the child.
extern "C" fn userns_child_main(parent: *mut libc::c_void) -> libc::c_int {
    // SAFETY: raw syscalls that take no memory of ours.
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
        if libc::syscall(libc::SYS_getppid) as libc::pid_t != parent as libc::pid_t {
            return 0;
        }
        loop {
            libc::syscall(libc::SYS_pause);
        }
    }
}

/// Clones a child into a new user namespace that does nothing but wait to
/// be killed.
///
/// The child shares the caller's memory (`CLONE_VM`: no copy of the page
/// tables to make and tear down, which made the fork-like helper cost
/// about 0.3 ms in the command line tool) and fd table (`CLONE_FILES`, so it
/// holds no extra references to the caller's files). It runs on a stack
/// of its own and starts with every signal blocked. It has exit signal 0
/// (a process-wide SIGCHLD reaper never sees it) and
/// `PR_SET_PDEATHSIG(SIGKILL)`, so it dies with the calling thread even if
/// the caller is killed. It is reached only through a pidfd, which cannot
/// be confused by pid reuse.
pub fn spawn_userns_child() -> SysResult<UsernsChild> {
    let parent = std::process::id() as libc::pid_t;
    let mut stack = vec![0u8; USERNS_CHILD_STACK].into_boxed_slice();
    // The stack grows down from its 16-byte aligned top.
    let top = (stack.as_mut_ptr() as usize + USERNS_CHILD_STACK) & !15;
    let mut pidfd: libc::c_int = -1;
    let flags = libc::CLONE_VM | libc::CLONE_NEWUSER | libc::CLONE_FILES | libc::CLONE_PIDFD;
    // The child inherits this mask: no handler can run in it, ever. Not
    // pthread_sigmask's, which leaves glibc's two signals (32, 33) open:
    // the child is no thread glibc knows, and a handler of glibc's would run
    // on its small stack with the calling thread's TLS.
    let mask = block_every_signal_raw();
    // SAFETY: glibc's clone runs `userns_child_main` on the stack above,
    // which stays allocated until the child is killed (UsernsChild's
    // drop); the child makes raw syscalls only (see userns_child_main).
    // With CLONE_PIDFD the kernel writes the new pidfd to `pidfd`.
    let ret = unsafe {
        libc::clone(
            userns_child_main,
            top as *mut libc::c_void,
            flags,
            parent as isize as *mut libc::c_void,
            &mut pidfd as *mut libc::c_int,
        )
    };
    let errno = last_errno();
    set_signal_mask_raw(mask);
    if ret < 0 {
        return Err(SysError {
            syscall: "clone",
            args: "CLONE_VM|CLONE_NEWUSER|CLONE_FILES|CLONE_PIDFD, exit signal 0".to_string(),
            errno,
        });
    }
    // SAFETY: with CLONE_PIDFD the kernel stored a new pidfd we now own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    Ok(UsernsChild {
        pid: ret,
        pidfd,
        stack: Some(stack),
    })
}

/// `kcmp(a, b, KCMP_FS)`: whether two threads share one fs struct (working
/// directory, root, umask). `Ok(None)` when `b` is gone.
pub fn kcmp_same_fs(a: i32, b: i32) -> SysResult<Option<bool>> {
    const KCMP_FS: libc::c_long = 3;
    // SAFETY: kcmp only compares two tasks' kernel objects; no memory of
    // ours is passed.
    let same = unsafe { libc::syscall(libc::SYS_kcmp, a, b, KCMP_FS, 0, 0) };
    match same {
        0 => Ok(Some(true)),
        -1 if last_errno() == libc::ESRCH => Ok(None),
        -1 => Err(SysError {
            syscall: "kcmp",
            args: format!("{a}, {b}, KCMP_FS"),
            errno: last_errno(),
        }),
        _ => Ok(Some(false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The helper blocks every signal but the two no task can block, glibc's
    /// included; the caller's mask is back as it was.
    #[test]
    fn the_user_namespace_helper_starts_with_every_signal_blocked() {
        let blocked = |status: &str| {
            let line = status.lines().find(|l| l.starts_with("SigBlk:")).unwrap();
            u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
        };
        let thread = || blocked(&std::fs::read_to_string("/proc/thread-self/status").unwrap());
        let before = thread();
        let child = match spawn_userns_child() {
            Ok(child) => child,
            // Unprivileged where user namespaces are not allowed.
            Err(e) if matches!(e.errno, libc::EPERM | libc::ENOSPC) => return,
            Err(e) => panic!("{e}"),
        };
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.pid)).unwrap();
        let unblockable = (1u64 << (libc::SIGKILL - 1)) | (1u64 << (libc::SIGSTOP - 1));
        assert_eq!(blocked(&status), !unblockable, "{status}");
        assert_eq!(thread(), before);
    }
}
