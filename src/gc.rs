//! Finishing the cleanup of `host-staged` runs that were interrupted (a
//! crash, a kill, a failed unmount): detach what they left mounted, remove
//! the empty directories they made, report everything else and leave it
//! alone.
//!
//! `gc` acts only on a state directory that is provably idoverlay's (its
//! private tmpfs with idoverlay's marker, see `state.rs`), and inside it only
//! on staging whose record parses and is not locked by a live assembly, and
//! on the temporary files a killed writer left (`.NAME.HEX.tmp`: a record
//! of a mount or a probe report replacing an older one, or a staging
//! record), which nobody holds locked: every writer locks its file before
//! the file has a name (`state::write_atomically`). It
//! unmounts only mounts that its record names and that are idoverlay's own
//! staged mounts (a read-only, `nosymfollow`, idmapped clone; the upper/work
//! clone; the overlay), each exactly through its own fd; it removes only the
//! empty directories the record names, the staging directory when that is
//! then empty, and the record. It never follows a symlink, never crosses a
//! mount (a staging directory that is a mount point is left alone, and it
//! never looks inside a staged mount), and never deletes anything
//! recursively.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::mountinfo::MountEntry;
use crate::state::{self, Record, StateDir};
use crate::sys;

pub use crate::state::DEFAULT_STATE_DIR;

/// What `gc` did with one staging directory, record, or other entry of the
/// state directory.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StagingResult {
    /// The entry (a staging directory, or whatever else was found).
    pub path: PathBuf,
    /// The pid in its record, if it had one.
    pub owner_pid: Option<u32>,
    /// Staged mounts it detached.
    pub detached: Vec<PathBuf>,
    /// Whether the staging directory and its record are gone now.
    pub removed: bool,
    /// Why not, when not.
    pub kept_because: Option<String>,
}

/// What a `gc` run found and did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GcReport {
    /// The state directory looked at.
    pub state_dir: PathBuf,
    /// One entry per staging directory, record, temporary file or unknown
    /// entry found.
    pub staging: Vec<StagingResult>,
}

impl GcReport {
    /// Whether everything found was cleaned up.
    pub fn clean(&self) -> bool {
        self.staging.iter().all(|s| s.removed)
    }
}

/// Cleans up what interrupted `host-staged` runs left in `state_dir`.
///
/// ```no_run
/// let report = idoverlay::gc::collect(idoverlay::gc::DEFAULT_STATE_DIR.as_ref())?;
/// assert!(report.clean());
/// # Ok::<(), idoverlay::Error>(())
/// ```
pub fn collect(state_dir: &Path) -> Result<GcReport> {
    let mut report = GcReport {
        state_dir: state_dir.to_path_buf(),
        staging: Vec::new(),
    };
    // As a writer: a provisional tmpfs' maker is waited for (its staging is
    // its own until then), one a killed maker left is adopted.
    let Some(state) = StateDir::open_existing(state_dir, state::Use::Write)? else {
        return Ok(report);
    };
    let mut names: Vec<Vec<u8>> = sys::dir_entries(state.fd.as_fd())
        .map_err(|e| Error::os("read state dir", Some(state_dir), e))?
        .into_iter()
        .map(OsStringExt::into_vec)
        .collect();
    names.sort();
    let mut table = None;
    let mut ids = Vec::new();
    for name in &names {
        if name == state::MARKER.as_bytes() {
            continue;
        }
        if name == crate::probe_cache::DIR.as_bytes() || name == crate::records::DIR.as_bytes() {
            report.staging.extend(collect_temp_files(&state, name));
            continue;
        }
        if name == crate::strategy::staging_ns::FILE.as_bytes() {
            // The boot's staging namespace stays; the empty file a killed
            // process left where it was to be bound goes.
            match crate::strategy::staging_ns::remove_unbound(&state) {
                Ok(false) => {}
                Ok(true) => report.staging.push(StagingResult {
                    removed: true,
                    kept_because: None,
                    ..left_alone(&state, name, "")
                }),
                Err(e) => report
                    .staging
                    .push(left_alone(&state, name, &e.to_string())),
            }
            continue;
        }
        if let Some(id) = name
            .strip_suffix(b".json")
            .filter(|id| state::is_staging_id(id))
        {
            ids.push(String::from_utf8_lossy(id).into_owned());
        } else if let Some(id) = temp_record_id(name) {
            report.staging.push(collect_temp(&state, name, &id));
        } else if state::is_staging_id(name) {
            if !names.contains(&[name.as_slice(), b".json"].concat()) {
                report.staging.push(left_alone(
                    &state,
                    name,
                    "a staging directory without a record; idoverlay cannot tell what it \
                     holds, so it is left alone",
                ));
            }
        } else {
            report.staging.push(left_alone(
                &state,
                name,
                "not something idoverlay makes; left alone",
            ));
        }
    }
    for id in ids {
        report.staging.push(collect_one(&state, &id, &mut table));
    }
    Ok(report)
}

fn left_alone(state: &StateDir, name: &[u8], why: &str) -> StagingResult {
    StagingResult {
        path: state.join(OsStr::from_bytes(name)),
        owner_pid: None,
        detached: Vec::new(),
        removed: false,
        kept_because: Some(why.to_string()),
    }
}

/// The staging id of a temporary record name: `.<id>.json.<hex>.tmp`
/// (`state::temp_name`), or `.<id>.<hex>.tmp` as earlier versions named
/// it.
fn temp_record_id(name: &[u8]) -> Option<String> {
    let inner = name.strip_prefix(b".")?.strip_suffix(b".tmp")?;
    let dot = inner.iter().rposition(|b| *b == b'.')?;
    let id = &inner[..dot];
    let id = id.strip_suffix(b".json").unwrap_or(id);
    state::is_staging_id(id).then(|| String::from_utf8_lossy(id).into_owned())
}

/// A temporary record left by a write that was interrupted before its
/// rename: removed when no one holds it and it is idoverlay's.
fn collect_temp(state: &StateDir, name: &[u8], id: &str) -> StagingResult {
    let mut result = left_alone(state, name, "");
    let path = Path::new(OsStr::from_bytes(name));
    let why = match sys::open_read_nonblocking(state.fd.as_fd(), path, false) {
        // Renamed into place or removed since the listing.
        Err(e) if e.errno == libc::ENOENT => {
            result.kept_because = None;
            result.removed = true;
            return result;
        }
        Err(e) => format!("cannot be opened ({e}); left alone"),
        // A writer locks its record before it has any name, and writes it
        // before it has this one (`state::write_atomically`): unlocked, it
        // is a dead run's. Only an earlier version's writer named it first
        // and locked it then, which a lock taken here in between, for a
        // moment, would refuse: so one that does not read whole is left.
        Ok(fd) => match read_record(&fd, id) {
            Err(why) => format!("a temporary record that {why}; left alone"),
            Ok(_) => match remove_unlocked(&fd, state.fd.as_fd(), path) {
                Ok(_) => {
                    result.kept_because = None;
                    result.removed = true;
                    return result;
                }
                Err(why) => why,
            },
        },
    };
    result.kept_because = Some(why);
    result
}

/// The temporary files killed writers left in the state tmpfs' `subdir`
/// (mount records, probe reports): `.NAME.HEX.tmp`, root's regular files
/// that nobody holds locked, removed (their writers lock them before they
/// have a name, see `state::write_atomically`). Nothing else there is
/// looked at.
fn collect_temp_files(state: &StateDir, subdir: &[u8]) -> Vec<StagingResult> {
    let subdir = Path::new(OsStr::from_bytes(subdir));
    let at = |name: &OsStr| state.path.join(subdir).join(name);
    let result = |name: &OsStr, kept_because: Option<String>| StagingResult {
        path: at(name),
        owner_pid: None,
        detached: Vec::new(),
        removed: kept_because.is_none(),
        kept_because,
    };
    let entries = sys::open_dir_beneath(state.fd.as_fd(), subdir)
        .and_then(|dir| Ok((sys::dir_entries(dir.as_fd())?, dir)));
    let (names, dir) = match entries {
        Ok(found) => found,
        Err(e) if e.errno == libc::ENOENT => return Vec::new(),
        Err(e) => {
            return vec![result(
                subdir.as_os_str(),
                Some(format!("cannot be read ({e})")),
            )]
        }
    };
    let mut found = Vec::new();
    for name in names {
        let bytes = name.as_bytes();
        if !(bytes.starts_with(b".") && bytes.ends_with(b".tmp")) {
            continue;
        }
        let path = Path::new(&name);
        let removed = match sys::open_read_nonblocking(dir.as_fd(), path, false) {
            // Renamed into place since the listing.
            Err(e) if e.errno == libc::ENOENT => Ok(false),
            Err(e) => Err(format!("cannot be opened ({e}); left alone")),
            Ok(fd) => match sys::stat_fd(fd.as_fd()) {
                Err(e) => Err(format!("cannot be inspected ({e}); left alone")),
                Ok(st) if st.mode & libc::S_IFMT != libc::S_IFREG || st.uid != 0 => Err(format!(
                    "is {}, not a temporary file of idoverlay's; left alone",
                    if st.uid != 0 { "not root's" } else { st.kind() }
                )),
                Ok(_) => remove_unlocked(&fd, dir.as_fd(), path),
            },
        };
        match removed {
            Ok(false) => {}
            Ok(true) => found.push(result(&name, None)),
            Err(why) => found.push(result(&name, Some(why))),
        }
    }
    found
}

/// Removes `name` in `dir`, open as `fd`, when nobody holds a lock on it
/// and the name still leads to it: whether it did (not when the name went
/// elsewhere meanwhile), or why not.
fn remove_unlocked(
    fd: &OwnedFd,
    dir: std::os::fd::BorrowedFd<'_>,
    name: &Path,
) -> std::result::Result<bool, String> {
    match sys::try_lock_exclusive(fd.as_fd()) {
        Ok(false) => Err("being written by a running process (it is locked)".into()),
        Err(e) => Err(format!("cannot be locked ({e})")),
        // Renamed into place since it was opened: what the name leads to
        // now is someone's finished file.
        Ok(true) if !same_file(fd, dir, name) => Ok(false),
        Ok(true) => sys::unlink(dir, name)
            .map(|()| true)
            .map_err(|e| format!("removing it failed ({e})")),
    }
}

/// Whether `name` exists in the state dir (not followed).
fn exists(state: &StateDir, name: &Path) -> bool {
    !matches!(sys::stat_nofollow(state.fd.as_fd(), name), Err(e) if e.errno == libc::ENOENT)
}

fn collect_one(state: &StateDir, id: &str, table: &mut Option<Vec<MountEntry>>) -> StagingResult {
    let mut result = StagingResult {
        path: state.join(id),
        owner_pid: None,
        detached: Vec::new(),
        removed: false,
        kept_because: None,
    };
    let keep = |mut r: StagingResult, why: String| {
        r.kept_because = Some(why);
        r
    };
    let record_name = Record::file_name(id);
    let record_path = Path::new(&record_name);
    let fd = match sys::open_read_nonblocking(state.fd.as_fd(), record_path, false) {
        Ok(fd) => fd,
        // Its assembly finished and cleaned up since the listing (the
        // record goes last), or another gc did: gone, nothing left.
        Err(e) if e.errno == libc::ENOENT && !exists(state, Path::new(id)) => {
            result.removed = true;
            return result;
        }
        Err(e) => {
            return keep(
                result,
                format!("its record cannot be opened ({e}); left alone"),
            )
        }
    };
    let record = match read_record(&fd, id) {
        Ok(r) => r,
        Err(why) => return keep(result, format!("its record {why}; left alone")),
    };
    result.owner_pid = Some(record.pid);
    match sys::try_lock_exclusive(fd.as_fd()) {
        Ok(true) => {}
        Ok(false) => {
            return keep(
                result,
                format!(
                    "its assembly (process {}) is still running: the record is locked",
                    record.pid
                ),
            )
        }
        Err(e) => return keep(result, format!("its record cannot be locked ({e})")),
    }
    // Locked: its owner is gone. Still the file the name leads to?
    if !same_file(&fd, state.fd.as_fd(), record_path) {
        return keep(result, "its record changed meanwhile; run gc again".into());
    }
    let staging =
        match sys::open_dir_beneath(state.fd.as_fd(), Path::new(id)) {
            Ok(fd) => Some(fd),
            Err(e) if e.errno == libc::ENOENT => None,
            Err(e) if e.errno == libc::EXDEV => return keep(
                result,
                "the staging directory is a mount point, which idoverlay never makes; left alone"
                    .into(),
            ),
            Err(e) => {
                return keep(
                    result,
                    format!("the staging directory cannot be opened ({e}); left alone"),
                )
            }
        };
    if let Some(staging) = &staging {
        if let Err(why) = clean_staging(state, &record, staging, &mut result.detached, table) {
            return keep(result, why);
        }
        if let Err(e) = sys::rmdir(state.fd.as_fd(), Path::new(id)) {
            return keep(
                result,
                format!(
                    "the staging directory still holds something idoverlay did not put there \
                     ({e}); left alone"
                ),
            );
        }
    }
    if let Err(e) = sys::unlink(state.fd.as_fd(), record_path) {
        return keep(result, format!("removing its record failed ({e})"));
    }
    result.removed = true;
    result
}

/// The record behind `fd`, if it is a current-format record of `id`.
fn read_record(fd: &OwnedFd, id: &str) -> std::result::Result<Record, String> {
    let st = sys::stat_fd(fd.as_fd()).map_err(|e| format!("cannot be inspected ({e})"))?;
    if st.mode & libc::S_IFMT != libc::S_IFREG {
        return Err(format!("is {}", st.kind()));
    }
    if st.uid != 0 {
        return Err("is not root's".into());
    }
    if st.size > state::RECORD_MAX as u64 {
        return Err("is too large to be idoverlay's".into());
    }
    let bytes = sys::read_at_most(fd.as_fd(), state::RECORD_MAX)
        .map_err(|e| format!("cannot be read ({e})"))?;
    Record::parse(&bytes, id).ok_or_else(|| "does not parse as an idoverlay staging record".into())
}

/// Whether `name` in `dir` still leads to `fd`'s file (not followed).
fn same_file(fd: &OwnedFd, dir: std::os::fd::BorrowedFd<'_>, name: &Path) -> bool {
    match (sys::stat_fd(fd.as_fd()), sys::stat_nofollow(dir, name)) {
        (Ok(a), Ok(b)) => a.same_inode(&b),
        _ => false,
    }
}

/// Detaches the record's staged mounts that are still there and removes
/// their empty mount points; stops at the first thing it cannot prove is
/// idoverlay's.
fn clean_staging(
    state: &StateDir,
    record: &Record,
    staging: &OwnedFd,
    detached: &mut Vec<PathBuf>,
    table: &mut Option<Vec<MountEntry>>,
) -> std::result::Result<(), String> {
    let at = |name: &str| state.join(&record.id).join(name);
    for name in record.mounts.iter().rev() {
        let st = match sys::stat_nofollow(staging.as_fd(), Path::new(name)) {
            Ok(st) => st,
            Err(e) if e.errno == libc::ENOENT => continue,
            Err(e) => return Err(format!("{} cannot be inspected ({e})", at(name).display())),
        };
        if !st.is_dir() {
            return Err(format!(
                "{} is {}, which idoverlay did not create; nothing more removed",
                at(name).display(),
                st.kind()
            ));
        }
        if st.mount_root == Some(true) {
            // The mount's own root, to unmount exactly it.
            let mount = sys::open_dir_path(staging.as_fd(), Path::new(name))
                .map_err(|e| format!("{} cannot be opened ({e})", at(name).display()))?;
            check_staged_mount(state, name, &mount, table).map_err(|why| {
                format!(
                    "{} holds a mount that is not idoverlay's ({why}); left alone, nothing more \
                     removed",
                    at(name).display()
                )
            })?;
            sys::detach_root_of(mount.as_fd()).map_err(|e| {
                format!(
                    "detaching {} failed ({e}); nothing more removed",
                    at(name).display()
                )
            })?;
            detached.push(at(name));
        }
    }
    for name in record.mounts.iter().rev() {
        match sys::rmdir(staging.as_fd(), Path::new(name)) {
            Ok(()) => {}
            Err(e) if e.errno == libc::ENOENT => {}
            Err(e) if e.errno == libc::ENOTEMPTY => {
                return Err(format!(
                    "{} holds something idoverlay did not put there; left alone",
                    at(name).display()
                ))
            }
            Err(e) => return Err(format!("removing {} failed ({e})", at(name).display())),
        }
    }
    Ok(())
}

/// Whether the mount whose root is `mount` is one idoverlay staged at
/// `name`: mounted straight on the state tmpfs, and of the kind the name
/// says (a layer clone: read-only, `nosymfollow`, idmapped; `u`:
/// `nosymfollow` idmapped; `o`: an overlay).
fn check_staged_mount(
    state: &StateDir,
    name: &str,
    mount: &OwnedFd,
    table: &mut Option<Vec<MountEntry>>,
) -> std::result::Result<(), String> {
    let id = sys::stat_fd(mount.as_fd())
        .ok()
        .and_then(|st| st.mnt_id)
        .ok_or("its mount id is unknown")?;
    if table.is_none() {
        *table = crate::mountinfo::read_self().ok();
    }
    let entry = table
        .as_ref()
        .and_then(|t| t.iter().find(|m| m.mount_id == id))
        .ok_or("it is not in the mount table")?;
    if Some(entry.parent_id) != state.mount_id {
        return Err("it is not mounted straight on the state tmpfs".into());
    }
    let has = |opt: &str| entry.mount_options.split(',').any(|o| o == opt);
    let ours = match name {
        "o" => entry.fs_type == "overlay",
        "u" => has("nosymfollow") && has("idmapped"),
        _ => has("ro") && has("nosymfollow") && has("idmapped"),
    };
    if !ours {
        return Err(format!(
            "{} {} mount with options {}",
            crate::error::a_or_an(&entry.fs_type),
            entry.fs_type,
            entry.mount_options
        ));
    }
    Ok(())
}
