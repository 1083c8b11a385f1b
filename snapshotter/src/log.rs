//! One-line messages on stderr (journald adds the time), with `-v` for
//! more.

use std::sync::atomic::{AtomicU8, Ordering};

static VERBOSITY: AtomicU8 = AtomicU8::new(0);

/// Sets how much is said: 0 warnings, 1 each request, 2 and more details.
pub fn set_verbosity(v: u8) {
    VERBOSITY.store(v, Ordering::Relaxed);
}

/// Whether messages of level `v` are shown.
pub fn enabled(v: u8) -> bool {
    VERBOSITY.load(Ordering::Relaxed) >= v
}

/// Something went wrong but the snapshotter goes on.
pub fn warn(msg: &str) {
    eprintln!("idoverlay-snapshotter: warning: {msg}");
}

/// What was done (shown with `-v`).
pub fn info(msg: &str) {
    if enabled(1) {
        eprintln!("idoverlay-snapshotter: {msg}");
    }
}

/// Always shown: start, stop, recovery.
pub fn notice(msg: &str) {
    eprintln!("idoverlay-snapshotter: {msg}");
}
