//! The reaper: closes layer clones after a mount, off the caller's path.
//!
//! Closing the fd of a layer clone dissolves its anonymous mount namespace,
//! and the kernel then waits for an RCU grace period
//! (`namespace_unlock → synchronize_rcu_expedited`): 0.02–0.1 ms, the
//! longer right after a big mount. Waking a sleeping thread to do it costs
//! about as much on the waker's side (in a VM, kicking an idle CPU). So the
//! reaper is never woken: after work it looks for more every [`POLL`], then
//! every [`SLOW_POLL`], and it ends after [`IDLE`] without any. Handing a
//! clone over is a lock and a push (and, when no reaper runs, a `clone`
//! that is not waited for).
//!
//! Invariants:
//! * What is handed over is closed within about [`SLOW_POLL`] plus a grace
//!   period (the layers' mounts stay pinned that long, never longer), or
//!   at once when the reaper cannot be used: [`MAX_PENDING`] items already
//!   waiting, a thread that cannot be started, or a forked child while
//!   the lock the parent's reaper may have held is taken (the reaper
//!   thread is not copied by `fork`: a child that can take the lock drops
//!   the parent's queue and starts a reaper of its own, see
//!   [`crate::process_local`]).
//! * The reaper unshares its fs struct first thing, blocks every signal,
//!   touches no path and changes nothing but the fd table; so while it
//!   runs, the caller's thread can still lend its working directory
//!   (crate::cwd tells, by comparing fs structs, not by trusting this).
//! * [`settle`] closes everything handed over before it and waits until
//!   no idoverlay thread is left in the process: for callers that need a
//!   single-threaded process next (`unshare(CLONE_NEWUSER)` refuses a
//!   process with more than one thread).

use std::sync::MutexGuard;
use std::time::Duration;

use crate::process_local::ProcessLocal;

use crate::sys;

/// How often a running reaper looks for work, right after some…
pub const POLL: Duration = Duration::from_millis(1);
/// …for this many looks that found none…
pub const FAST_POLLS: u32 = 10;
/// …then this often, so that a burst of mounts (a node starting pods)
/// keeps one reaper instead of starting one per mount.
pub const SLOW_POLL: Duration = Duration::from_millis(10);
/// Without work for this long, the reaper ends.
pub const IDLE: Duration = Duration::from_secs(1);
/// Items waiting beyond this are closed by the caller (back-pressure).
pub const MAX_PENDING: usize = 64;

type Item = Box<dyn Send>;

struct State {
    queue: Vec<Item>,
    /// A reaper runs (or is starting).
    started: bool,
    /// Set by [`settle`]: end once the queue is empty.
    stopping: bool,
}

static STATE: ProcessLocal<State> = ProcessLocal::new(State {
    queue: Vec::new(),
    started: false,
    stopping: false,
});

/// The state, for this process; `None` in a forked child that cannot
/// have it. The queue a child adopts holds its copies of the parent's
/// clones, and no reaper of the child's runs for them.
fn state() -> Option<MutexGuard<'static, State>> {
    STATE.lock(|state| {
        state.started = false;
        state.stopping = false;
        drop(std::mem::take(&mut state.queue));
    })
}

/// Closes `item` soon, on the reaper, or now when the reaper cannot take it.
pub fn hand_over(item: Item) {
    let Some(mut state) = state() else {
        return drop(item);
    };
    if state.queue.len() >= MAX_PENDING {
        drop(state);
        return drop(item);
    }
    state.queue.push(item);
    if !state.started {
        // Not waited for: until the new thread has unshared its fs struct,
        // the fs-struct check sees a thread that shares the caller's, and
        // the next mount takes the slower path.
        match crate::threads::spawn("reap", run) {
            Ok(_) => state.started = true,
            Err(_) => {
                let queue = std::mem::take(&mut state.queue);
                drop(state);
                drop(queue);
            }
        }
    }
}

fn run() {
    let _ = sys::unshare_fs();
    let _ = sys::block_all_signals();
    let mut idle = Duration::ZERO;
    let mut looks = 0;
    loop {
        let work = {
            // The reaper runs in the process that started it: it has the state.
            let Some(mut state) = state() else { return };
            if state.queue.is_empty() && (state.stopping || idle >= IDLE) {
                state.started = false;
                return;
            }
            std::mem::take(&mut state.queue)
        };
        if work.is_empty() {
            let nap = if looks < FAST_POLLS { POLL } else { SLOW_POLL };
            looks += 1;
            idle += nap;
            std::thread::sleep(nap);
        } else {
            idle = Duration::ZERO;
            looks = 0;
            drop(work);
        }
    }
}

/// Closes every layer clone idoverlay still holds from earlier mounts (and
/// private-ns' staging namespace, made once per process) and waits until
/// none of its threads is left in the process (the reaper, and
/// the mounting and private-namespace threads, which finish their teardown
/// a moment after answering): about 10 ms at most. Call it before
/// anything that needs a single-threaded process again, such as
/// `unshare(CLONE_NEWUSER)`, or before unmounting the layers' filesystem
/// without `MNT_DETACH`. Mounts made meanwhile from other threads may start
/// such threads again.
///
/// ```no_run
/// # let overlay = idoverlay::Overlay::new();
/// overlay.mount("/run/c1/rootfs")?;
/// idoverlay::settle();
/// // ... unshare(CLONE_NEWUSER) and the rest of the container setup
/// # Ok::<(), idoverlay::Error>(())
/// ```
pub fn settle() {
    crate::strategy::staging_ns::release();
    // A forked child adopts the state here when it can, dropping its
    // copies of the parent's pending clones.
    if let Some(mut state) = state() {
        state.stopping = true;
    }
    let owner = STATE.is_this_process();
    // Gone from the process, not only done: until the kernel has released
    // a thread, it still counts as one. (A bound, in case a caller names
    // threads of its own like ours.)
    for _ in 0..10_000 {
        if !crate::threads::any_left() {
            break;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    if owner {
        let rest = state().map(|mut state| {
            state.stopping = false;
            std::mem::take(&mut state.queue)
        });
        drop(rest);
    }
}
