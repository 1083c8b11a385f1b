//! Process-wide state that survives `fork` without deadlocking the child.
//!
//! `fork` copies memory but only the calling thread. A lock another thread
//! held at that moment (say, [`crate::UserNamespace::shared`] making a
//! namespace, some 0.15 ms under its lock) stays held in the child forever,
//! and the child's first call that takes it never returns. So every
//! process-wide lock of idoverlay's is a [`ProcessLocal`]: it remembers the
//! process that used it, and a forked child takes it only if it can with
//! `try_lock` (its only thread cannot be the holder, so a lock that is
//! free then was free at the fork) and adopts it then; otherwise the child
//! goes without the state (each caller says what that costs), never waits.
//!
//! The one case it cannot tell: a child whose pid equals its parent's, as
//! the first process of a new pid namespace forked by another pid 1.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

/// A `Mutex<T>` that a forked child never waits for.
pub(crate) struct ProcessLocal<T> {
    /// The process that uses the state (0: none yet).
    owner: AtomicU32,
    state: Mutex<T>,
}

impl<T> ProcessLocal<T> {
    pub(crate) const fn new(state: T) -> Self {
        ProcessLocal {
            owner: AtomicU32::new(0),
            state: Mutex::new(state),
        }
    }

    /// The state, locked; in a process forked from the one that used it,
    /// `None` when the lock was held at the fork (or by a sibling thread
    /// right now), else the state after `adopt` has made it this
    /// process's (what referred to the parent's threads).
    pub(crate) fn lock(&self, adopt: impl FnOnce(&mut T)) -> Option<MutexGuard<'_, T>> {
        let pid = std::process::id();
        // Set before the first lock, so that a fork that copied a held lock
        // always copies an owner that is not the child.
        let owner = match self
            .owner
            .compare_exchange(0, pid, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => pid,
            Err(owner) => owner,
        };
        if owner == pid {
            return Some(self.state.lock().unwrap_or_else(|e| e.into_inner()));
        }
        let mut state = match self.state.try_lock() {
            Ok(state) => state,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        // Under the lock: one thread of the child adopts, once.
        if self
            .owner
            .compare_exchange(owner, pid, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            adopt(&mut state);
        }
        Some(state)
    }

    /// Whether this process uses the state (a child forked from the user
    /// has not adopted it yet).
    pub(crate) fn is_this_process(&self) -> bool {
        self.owner.load(Ordering::Acquire) == std::process::id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_process_to_lock_owns_the_state() {
        let local = ProcessLocal::new(1u32);
        assert!(!local.is_this_process());
        *local.lock(|_| panic!("nothing to adopt")).unwrap() += 1;
        assert!(local.is_this_process());
        assert_eq!(*local.lock(|_| panic!("nothing to adopt")).unwrap(), 2);
    }

    #[test]
    fn a_state_of_another_process_is_adopted_only_when_free() {
        let local = ProcessLocal::new(1u32);
        // As a forked child sees it: another pid, the lock held.
        local.owner.store(std::process::id() + 1, Ordering::Release);
        let held = local.state.lock().unwrap();
        assert!(local.lock(|_| panic!("adopted a held lock")).is_none());
        drop(held);
        let mut adopted = 0;
        *local
            .lock(|s| {
                adopted += 1;
                *s = 10
            })
            .unwrap() += 1;
        assert_eq!(adopted, 1);
        assert!(local.is_this_process());
        assert_eq!(*local.lock(|_| panic!("adopted twice")).unwrap(), 11);
    }
}
