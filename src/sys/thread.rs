//! Threads started with `pthread_create` itself, not `std::thread`.
//!
//! Rust's standard library keeps a process-wide lock that every thread it
//! starts takes as it begins (and as it ends), to record its stack guard
//! for the stack-overflow handler. `fork` copies that lock held when
//! another thread was starting or ending at that moment, and then every
//! `std::thread` the child starts waits for it for ever: a child forked
//! from a busy process hung in private-ns' thread (1 of 24 runs of
//! `fallbacks.rs`' fork test under load, backtrace in
//! `std::sys::pal::unix::stack_overflow::thread_info::set_current_info`).
//! glibc's own `fork` makes `pthread_create` safe in the child, so
//! idoverlay's threads are glibc's: they run Rust code all the same
//! (`std::thread::current`, thread-locals and panics work), without that
//! lock, and without the guard page report on a stack overflow.

use std::ffi::c_void;

/// A thread started by [`spawn`]: joined with [`Thread::join`], or detached
/// when dropped.
pub struct Thread {
    id: Option<libc::pthread_t>,
}

/// What the new thread runs, handed over through `pthread_create`'s
/// argument.
struct Start {
    name: std::ffi::CString,
    body: Box<dyn FnOnce() + Send>,
}

/// The new thread: names itself, runs its body, and says whether it
/// panicked (a non-null return).
extern "C" fn start(arg: *mut c_void) -> *mut c_void {
    // SAFETY: `arg` is the `Box<Start>` that `spawn` leaked for this
    // thread alone; it is taken back exactly once, here.
    let start = unsafe { Box::from_raw(arg.cast::<Start>()) };
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16
    // bytes, which `name` is (truncated by `spawn`).
    unsafe { libc::prctl(libc::PR_SET_NAME, start.name.as_ptr()) };
    let body = start.body;
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(()) => std::ptr::null_mut(),
        Err(_) => std::ptr::NonNull::<c_void>::dangling().as_ptr(),
    }
}

/// `pthread_create` of a thread named `name` (its first 15 bytes) that
/// runs `body`; the signal mask is the caller's, as for any thread.
pub fn spawn(name: &str, body: Box<dyn FnOnce() + Send + 'static>) -> std::io::Result<Thread> {
    let short: Vec<u8> = name.bytes().filter(|b| *b != 0).take(15).collect();
    let name = std::ffi::CString::new(short).expect("no NUL bytes left");
    let arg = Box::into_raw(Box::new(Start { name, body }));
    let mut id: libc::pthread_t = 0;
    // SAFETY: `start` has the signature pthread_create expects; `arg` stays
    // valid until the new thread takes it back (or we do, on failure).
    let rc = unsafe { libc::pthread_create(&mut id, std::ptr::null(), start, arg.cast()) };
    if rc != 0 {
        // SAFETY: no thread was made: `arg` is still ours alone.
        drop(unsafe { Box::from_raw(arg) });
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(Thread { id: Some(id) })
}

impl Thread {
    /// `pthread_join`: waits for the thread; `false` when its body panicked.
    pub fn join(mut self) -> bool {
        let Some(id) = self.id.take() else {
            return true;
        };
        let mut ret: *mut c_void = std::ptr::null_mut();
        // SAFETY: `id` is a joinable thread of ours, joined once.
        let rc = unsafe { libc::pthread_join(id, &mut ret) };
        // A thread that cannot be joined may still be running a body that
        // borrows the caller's stack (see `run`): there is no safe way on.
        if rc != 0 {
            std::process::abort();
        }
        ret.is_null()
    }
}

impl Drop for Thread {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            // SAFETY: `id` is a joinable thread of ours, never joined.
            unsafe { libc::pthread_detach(id) };
        }
    }
}

/// Runs `f` on a new thread (see [`spawn`]) and waits for it: its result,
/// `Ok(None)` when it panicked.
pub fn run<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> std::io::Result<Option<T>> {
    let mut result: Option<T> = None;
    let slot = SendPtr(&mut result as *mut Option<T>);
    let body: Box<dyn FnOnce() + Send + '_> = Box::new(move || {
        let slot = slot;
        let value = f();
        // SAFETY: `slot` points at `result`, which outlives the thread
        // (joined below before `run` returns), and only this thread writes
        // it, before it ends.
        unsafe { *slot.0 = Some(value) };
    });
    // SAFETY: the body borrows from this frame (`f`'s captures, `result`);
    // the thread is joined before this function returns, on every path
    // (`join` aborts rather than return with the thread unjoined), so the
    // borrows outlive it, as `std::thread::scope` guarantees.
    let body: Box<dyn FnOnce() + Send + 'static> = unsafe { std::mem::transmute(body) };
    let finished = spawn(name, body)?.join();
    Ok(if finished { result } else { None })
}

/// A pointer sent to the thread that fills it (see [`run`]).
struct SendPtr<T>(*mut T);

// SAFETY: the pointer is written by one thread while the other waits in
// `pthread_join`; `T: Send` is required by `run`.
unsafe impl<T: Send> Send for SendPtr<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_runs_named_returns_and_reports_a_panic() {
        let borrowed = String::from("borrowed");
        let name = run("idoverlay-test", || {
            let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
            format!("{} {borrowed}", comm.trim())
        })
        .unwrap();
        assert_eq!(name.as_deref(), Some("idoverlay-test borrowed"));
        let panicked = run("idoverlay-test", || -> u32 { panic!("on purpose") }).unwrap();
        assert_eq!(panicked, None);
    }
}
