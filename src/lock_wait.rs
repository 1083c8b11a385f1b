//! Waiting for a lock another call holds in the state dir, never for ever.
//!
//! The locks are held briefly (the covered directory's while a state tmpfs
//! is mounted, the marker's while the boot's staging namespace is made)
//! or for one assembly (a provisional tmpfs' marker, through the first
//! assembly that mounted it). A holder that was stopped (`SIGSTOP`, a
//! debugger), that hangs in a filesystem that does not answer (a layer on
//! a hung NFS or FUSE mount, during that first assembly), or a forked
//! child that kept a copy of the lock would otherwise stall every later
//! mount of the node without a word. Past [`LIMIT`] the wait ends in an
//! error that names the holder as `/proc/locks` shows it, what it is doing
//! (`/proc/PID/stat`), and what to do; nothing is changed.
//!
//! The wait polls (`LOCK_NB`, pauses from 50 µs doubling to 10 ms): there
//! is no `flock` with a timeout, and a signal to interrupt a blocking one
//! would be the caller's. A lock nobody holds costs one `flock`, as a
//! blocking one does.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::sys::{self, LockMode};

/// The longest idoverlay waits for a lock another call holds.
pub(crate) const LIMIT: Duration = Duration::from_secs(30);
const FIRST_PAUSE: Duration = Duration::from_micros(50);
const LONGEST_PAUSE: Duration = Duration::from_millis(10);
/// `/proc/locks` past this is not read (some 20,000 locks).
const LOCKS_MAX: usize = 1 << 20;

/// The end of one call's waiting, shared by its waits and restarts (a
/// state dir another call keeps making and taking away again): [`LIMIT`]
/// from the first time it is asked about, so the common path, which never
/// waits, never reads the clock.
#[derive(Debug, Default)]
pub(crate) struct Deadline(std::cell::OnceCell<Instant>);

impl Deadline {
    pub fn new() -> Deadline {
        Deadline::default()
    }

    fn at(&self) -> Instant {
        *self.0.get_or_init(|| Instant::now() + LIMIT)
    }

    /// Whether the waiting is over.
    pub fn passed(&self) -> bool {
        Instant::now() >= self.at()
    }

    fn left(&self) -> Duration {
        self.at().saturating_duration_since(Instant::now())
    }
}

/// Locks `fd` in `mode`, waiting for whoever holds it at most [`LIMIT`];
/// `op` and `path` say what for, in the error.
pub(crate) fn lock(
    fd: OwnedFd,
    mode: LockMode,
    op: &str,
    path: Option<&Path>,
) -> Result<sys::Locked> {
    lock_until(fd, mode, &Deadline::new(), op, path)
}

/// As [`lock`], until `deadline`.
pub(crate) fn lock_until(
    fd: OwnedFd,
    mode: LockMode,
    deadline: &Deadline,
    op: &str,
    path: Option<&Path>,
) -> Result<sys::Locked> {
    let mut fd = fd;
    let mut pause = FIRST_PAUSE;
    loop {
        match sys::Locked::try_new(fd, mode) {
            Ok(locked) => return Ok(locked),
            Err((back, e)) if e.errno == libc::EINTR => fd = back,
            Err((back, e)) if e.errno == libc::EWOULDBLOCK && !deadline.passed() => {
                std::thread::sleep(pause.min(deadline.left()));
                pause = (pause * 2).min(LONGEST_PAUSE);
                fd = back;
            }
            Err((back, e)) if e.errno == libc::EWOULDBLOCK => {
                let hint = held_too_long(back.as_fd());
                return Err(Error::os(op, path, e).with_hint(hint));
            }
            Err((_, e)) => return Err(Error::os(op, path, e)),
        }
    }
}

/// The error of a wait that went on for [`LIMIT`] while the state dir
/// kept changing under it (made and taken away by other calls).
pub(crate) fn kept_changing(op: &str, path: &Path) -> Error {
    Error::invalid_path(
        "state dir",
        path,
        format!(
            "kept changing for {} s while idoverlay waited to {op} (other calls made and took \
             away its tmpfs again and again); try again once they are done",
            LIMIT.as_secs()
        ),
    )
}

/// Who holds the lock on `fd`'s file, and what to do, for a wait that
/// gave up.
fn held_too_long(fd: BorrowedFd<'_>) -> String {
    let holders = match sys::stat_fd(fd) {
        Ok(st) => crate::procfs::read("locks", LOCKS_MAX)
            .map(|locks| holders_in(&String::from_utf8_lossy(&locks), st.dev, st.ino))
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let who = if holders.is_empty() {
        "another process (not in /proc/locks as seen from here: another pid namespace's, \
         or it let go just now)"
            .to_string()
    } else {
        holders
            .iter()
            .take(3)
            .map(|&pid| describe(pid))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "{who} held it for all the {} s idoverlay waits; let it finish or end it, then \
         try again",
        LIMIT.as_secs()
    )
}

/// The pids `/proc/locks` shows holding (not waiting for) a lock on the
/// file `dev` (major, minor), `ino`. Lines read
/// `N: FLOCK  ADVISORY  WRITE PID MAJ:MIN:INO START END` (major and minor
/// in hex); a waiter's has `->` after `N:`; a pid not in the reader's pid
/// namespace reads 0 or -1.
fn holders_in(locks: &str, dev: (u32, u32), ino: u64) -> Vec<u32> {
    let mut pids = Vec::new();
    for line in locks.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) == Some(&"->") {
            continue;
        }
        let (Some(pid), Some(file)) = (fields.get(4), fields.get(5)) else {
            continue;
        };
        let mut parts = file.split(':');
        let (Some(major), Some(minor), Some(inode), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let same = u32::from_str_radix(major, 16) == Ok(dev.0)
            && u32::from_str_radix(minor, 16) == Ok(dev.1)
            && inode.parse::<u64>() == Ok(ino);
        if let (true, Ok(pid @ 1..)) = (same, pid.parse::<u32>()) {
            if !pids.contains(&pid) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// `pid 1234 (idoverlay, stopped: kill -CONT 1234 resumes it)`.
fn describe(pid: u32) -> String {
    if pid == std::process::id() {
        return format!("pid {pid} (this process)");
    }
    let stat = crate::procfs::read(&format!("{pid}/stat"), 4096).unwrap_or_default();
    match parse_stat(&String::from_utf8_lossy(&stat)) {
        Some((comm, state)) => format!("pid {pid} ({comm}, {})", what_it_does(state, pid)),
        None => format!("pid {pid}"),
    }
}

/// The command name and state of `/proc/PID/stat` (`PID (COMM) S …`; the
/// name may hold spaces and parentheses).
fn parse_stat(stat: &str) -> Option<(&str, char)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    let state = stat.get(close + 1..)?.trim_start().chars().next()?;
    Some((comm, state))
}

fn what_it_does(state: char, pid: u32) -> String {
    match state {
        'T' => format!("stopped: kill -CONT {pid} resumes it"),
        't' => "stopped by a debugger".into(),
        'D' => "waiting in the kernel, often on a filesystem that does not answer".into(),
        'R' => "running".into(),
        'S' | 'I' => "sleeping".into(),
        'Z' => "exited, not yet reaped".into(),
        other => format!("state {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holders_of_one_file_and_not_its_waiters_or_other_files() {
        let locks = "1: FLOCK  ADVISORY  WRITE 2182 00:1b:2 0 EOF\n\
                     1: -> FLOCK  ADVISORY  READ 2189 00:1b:2 0 EOF\n\
                     2: FLOCK  ADVISORY  READ 77 00:1b:20 0 EOF\n\
                     3: POSIX  ADVISORY  WRITE 88 fd:00:2 0 EOF\n\
                     4: OFDLCK ADVISORY  READ -1 00:1b:2 0 EOF\n\
                     5: FLOCK  ADVISORY  READ 0 00:1b:2 0 EOF\n\
                     6: FLOCK  ADVISORY  READ 2182 00:1b:2 0 EOF\n\
                     7: FLOCK  ADVISORY  READ 99 00:1b:2 0 EOF\n\
                     garbage\n";
        assert_eq!(holders_in(locks, (0, 0x1b), 2), vec![2182, 99]);
        assert_eq!(holders_in(locks, (0xfd, 0), 2), vec![88]);
        assert_eq!(holders_in(locks, (0, 0x1b), 3), Vec::<u32>::new());
    }

    #[test]
    fn a_command_name_with_spaces_and_parentheses_is_read_whole() {
        assert_eq!(
            parse_stat("42 (a) b (c) T 1 42 42 0"),
            Some(("a) b (c", 'T'))
        );
        assert_eq!(parse_stat("42 (idoverlay) D 1"), Some(("idoverlay", 'D')));
        assert_eq!(parse_stat("42 idoverlay"), None);
    }

    #[test]
    fn a_lock_nobody_holds_is_taken_at_once_and_a_held_one_names_its_holder() {
        let dir = std::env::temp_dir().join(format!("idoverlay-lock-wait-{}", std::process::id()));
        std::fs::write(&dir, b"").unwrap();
        let open = || sys::open_read(sys::cwd(), &dir).unwrap();
        let held = lock(open(), LockMode::Exclusive, "lock", None).unwrap();
        // Shared beside exclusive: refused at the deadline, naming us.
        let deadline = Deadline::new();
        deadline.0.set(Instant::now()).unwrap();
        let err = lock_until(open(), LockMode::Shared, &deadline, "lock", Some(&dir)).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.errno(), Some(libc::EWOULDBLOCK), "{text}");
        assert!(
            text.contains(&format!("pid {} (this process)", std::process::id())),
            "{text}"
        );
        drop(held);
        lock(open(), LockMode::Shared, "lock", None).unwrap();
        std::fs::remove_file(&dir).unwrap();
    }
}
