//! Lending the calling thread's working directory: the fast path of a
//! mount names layers relative to a working directory inside their clone,
//! and the calling thread's may be used for that one call — only when no
//! other thread could see it change.
//!
//! Invariants, kept here: a working directory inside a clone is never seen
//! by another thread (the fs struct must be this thread's alone, checked
//! with `kcmp(KCMP_FS)` against every other thread), nor by a signal
//! handler (every signal is blocked meanwhile), and the caller's is always
//! given back, also when the closure panics (or the thread is left at `/`,
//! never inside a clone).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use crate::sys::{self, SysResult};

/// Who else uses the calling thread's fs struct (working directory, root,
/// umask).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsStruct {
    /// Nobody: the thread is the process's only one.
    Alone,
    /// Nobody, in a process with other threads.
    Own,
    /// Another thread, or it cannot be told.
    Shared,
}

/// The most threads compared; beyond that the answer is
/// [`FsStruct::Shared`] (lending is only worth it when the check is cheap).
const MAX_THREADS: usize = 64;

/// Who else uses the calling thread's fs struct: every other thread listed
/// in `/proc/self/task` is compared with `kcmp(KCMP_FS)` (idoverlay's own
/// threads too: the reaper, which unshares its fs struct as it starts,
/// counts as sharing until it has). [`FsStruct::Shared`]
/// whenever it cannot tell (no /proc, no kcmp, more than 64 threads).
///
/// Race-free for its purpose: a thread started after the check shares the
/// fs struct of the thread that started it, so only this thread could start
/// one that shares ours. Processes that share an fs struct without being
/// threads of one process (`clone(CLONE_FS)` without `CLONE_THREAD`, which
/// no libc call makes) are not seen.
pub fn fs_struct_of_this_thread() -> FsStruct {
    let Ok(dir) = sys::open_dir_read(sys::cwd(), Path::new("/proc/self/task")) else {
        return FsStruct::Shared;
    };
    let me = sys::gettid();
    // `/proc` numbers threads in the pid namespace it was mounted in, kcmp
    // and gettid in the caller's: only when the two agree (this thread is
    // `/proc/thread-self`) do the listing's numbers name this process's
    // threads. Under `unshare -p` without a /proc of its own they name
    // others, or none (ESRCH), and this thread would not find its sharers.
    let mut own_name = [0u8; 32];
    let own_name = {
        use std::io::Write;
        let mut at = &mut own_name[..];
        let _ = write!(at, "{}/task/{me}", std::process::id());
        let left = at.len();
        &own_name[..32 - left]
    };
    match sys::read_link(sys::cwd(), Path::new("/proc/thread-self")) {
        Ok(name) if name == own_name => {}
        _ => return FsStruct::Shared,
    }
    // The other threads, read into the stack: no allocation.
    let mut others = [0 as libc::pid_t; MAX_THREADS];
    let mut count = 0;
    let mut too_many = false;
    let listed = sys::for_each_entry(dir.as_fd(), |name| {
        let Some(tid) = std::str::from_utf8(name)
            .ok()
            .and_then(|t| t.parse::<libc::pid_t>().ok())
        else {
            return true;
        };
        if tid == me {
            return true;
        }
        if count == MAX_THREADS {
            too_many = true;
            return false;
        }
        others[count] = tid;
        count += 1;
        true
    });
    if listed.is_err() || too_many {
        return FsStruct::Shared;
    }
    if count == 0 {
        return FsStruct::Alone;
    }
    for &tid in &others[..count] {
        match sys::kcmp_same_fs(me, tid) {
            Ok(Some(false)) => {}
            // Gone since the listing: it shares nothing any more.
            Ok(None) => {}
            Ok(Some(true)) | Err(_) => return FsStruct::Shared,
        }
    }
    FsStruct::Own
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
    let home = sys::open_dir_path_follow(sys::cwd(), Path::new("."))?;
    // fchdir checks search permission: make sure the way back is open.
    sys::fchdir(home.as_fd())?;
    // Given back when this goes out of scope, also if `f` panics.
    let _lent = Lent {
        home,
        mask: sys::block_all_signals(),
    };
    sys::fchdir(dir)?;
    Ok(f())
}

/// The calling thread's working directory and signal mask, given back
/// when dropped (see [`with_cwd_in`]).
struct Lent {
    home: OwnedFd,
    mask: sys::SignalMask,
}

impl Drop for Lent {
    fn drop(&mut self) {
        if sys::fchdir(self.home.as_fd()).is_err() {
            if let Ok(root) = sys::open_dir_path_follow(sys::cwd(), Path::new("/")) {
                let _ = sys::fchdir(root.as_fd());
            }
        }
        self.mask.restore();
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
            sys::unshare_fs().unwrap();
            assert_eq!(fs_struct_of_this_thread(), FsStruct::Own);
            let home = std::env::temp_dir();
            std::env::set_current_dir(&home).unwrap();
            let mask = blocked();
            let root = sys::open_dir_path(sys::cwd(), Path::new("/")).unwrap();
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
        assert_eq!(fs_struct_of_this_thread(), FsStruct::Shared);
        std::thread::spawn(|| {
            sys::unshare_fs().unwrap();
            assert_ne!(fs_struct_of_this_thread(), FsStruct::Shared);
            // A thread it starts shares its fs struct with it.
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let sibling = std::thread::spawn(move || {
                let _ = rx.recv();
            });
            assert_eq!(fs_struct_of_this_thread(), FsStruct::Shared);
            drop(tx);
            sibling.join().unwrap();
        })
        .join()
        .unwrap();
    }
}
