//! The threads idoverlay starts, and how [`crate::settle`] finds them.
//!
//! Some steps need a thread of their own: a working directory, mount
//! namespace or fs ids that the caller's thread must not change (see each
//! user). All of them are named `idoverlay-…`, so that `settle` can wait
//! until none is left in the process (a process with more than one thread
//! cannot `unshare(CLONE_NEWUSER)`).

use crate::error::{Error, Result};
use crate::sys;

/// How every thread idoverlay starts is named (`comm` keeps 15 bytes).
pub const PREFIX: &str = "idoverlay-";

/// Starts a thread (`spawn`) with every signal the caller may block
/// blocked, so that it begins that way, and puts the caller's mask back at
/// once: a program's signal handlers never run on a thread of idoverlay's,
/// whose working directory may be inside a layers' clone, whose mount
/// namespace may be the staging one and whose fs ids may be a container's.
pub fn with_signals_blocked<R>(spawn: impl FnOnce() -> R) -> R {
    let mask = sys::block_all_signals();
    let spawned = spawn();
    mask.restore();
    spawned
}

/// Runs `f` on a new thread named `idoverlay-{name}` (signals blocked, see
/// [`with_signals_blocked`]) and waits for it.
pub fn run_on_thread<T: Send>(name: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let thread = format!("{PREFIX}{name}");
    with_signals_blocked(|| sys::thread::run(&thread, f))
        .map_err(|e| spawn_error(name, e))?
        .unwrap_or_else(|| Err(Error::internal(format!("thread {thread}"), "panicked")))
}

/// Starts a thread named `idoverlay-{name}` that runs `f` (signals blocked,
/// see [`with_signals_blocked`]), not waited for. A glibc thread, not a
/// `std::thread` (see `sys::thread`: a forked child must be able to start
/// it).
pub fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<()> {
    let thread = format!("{PREFIX}{name}");
    with_signals_blocked(|| sys::thread::spawn(&thread, Box::new(f)))
        .map(drop)
        .map_err(|e| spawn_error(name, e))
}

/// A thread that could not be started, as the `clone` that failed.
pub fn spawn_error(name: &str, e: std::io::Error) -> Error {
    Error::os(
        format!("start a thread ({PREFIX}{name})"),
        None,
        sys::SysError {
            syscall: "clone",
            args: "CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|…".into(),
            errno: e.raw_os_error().unwrap_or(libc::EAGAIN),
        },
    )
}

/// Whether a thread of idoverlay's is in this process (including one that
/// has finished but that the kernel has not released yet: it still counts).
pub fn any_left() -> bool {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return false;
    };
    tasks.filter_map(|t| t.ok()).any(|t| {
        std::fs::read(t.path().join("comm")).is_ok_and(|name| name.starts_with(PREFIX.as_bytes()))
    })
}
