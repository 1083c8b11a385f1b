//! Finishing the cleanup of `host-staged` runs that were interrupted (a
//! crash, a kill, a failed unmount): detach what is still mounted, remove
//! what is empty, report the rest. Never deletes a non-empty directory,
//! never follows a symlink, never crosses a mount, and leaves alone the
//! staging of processes that are still running.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::strategy::host_staged::{remove_empty_staging, Record, StateDir};
use crate::sys;

pub use crate::strategy::host_staged::DEFAULT_STATE_DIR;

/// What `gc` did with one staging directory.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StagingResult {
    /// The staging directory.
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
    /// One entry per staging directory or record found.
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
    let state = match StateDir::open(state_dir, false) {
        Ok(s) => s,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(report),
        Err(e) => return Err(e),
    };
    let entries = sys::dir_entries(state.fd.as_fd())
        .map_err(|e| Error::os("read state dir", Some(state_dir), e))?;
    let mut ids: Vec<String> = Vec::new();
    for entry in &entries {
        let name = entry.to_string_lossy().into_owned();
        let id = name.strip_suffix(".json").unwrap_or(&name).to_string();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids.sort();
    for id in ids {
        report.staging.push(collect_one(&state, &id));
    }
    Ok(report)
}

fn collect_one(state: &StateDir, id: &str) -> StagingResult {
    let prefix = state.path.join(id);
    let record_name = format!("{id}.json");
    let record: Option<Record> = sys::open_read(state.fd.as_fd(), Path::new(&record_name))
        .and_then(|fd| sys::read_all(fd.as_fd()))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let mut result = StagingResult {
        path: prefix.clone(),
        owner_pid: record.as_ref().map(|r| r.pid),
        detached: Vec::new(),
        removed: false,
        kept_because: None,
    };
    if let Some(r) = &record {
        if r.owner_alive() {
            result.kept_because = Some(format!("its process {} is still running", r.pid));
            return result;
        }
        if r.dir != id {
            result.kept_because = Some(format!("its record names {:?}, not {id:?}", r.dir));
            return result;
        }
    }
    match sys::open_dir_path(state.fd.as_fd(), Path::new(id)) {
        Ok(staging) => {
            // Detach every mount point in it; stop at the first failure.
            let names = match sys::dir_entries(staging.as_fd()) {
                Ok(n) => n,
                Err(e) => {
                    result.kept_because = Some(format!("cannot read it: {e}"));
                    return result;
                }
            };
            for name in names {
                let path = prefix.join(&name);
                let mounted = sys::stat_nofollow(staging.as_fd(), Path::new(&name))
                    .map(|st| st.mount_root == Some(true))
                    .unwrap_or(false);
                if mounted {
                    if let Err(e) = sys::unmount(&path, true) {
                        result.kept_because = Some(format!(
                            "detaching {} failed ({e}); nothing removed",
                            path.display()
                        ));
                        return result;
                    }
                    result.detached.push(path);
                }
            }
            if let Err(e) = remove_empty_staging(state, id, staging.as_fd(), &prefix) {
                result.kept_because = Some(e.to_string());
                return result;
            }
        }
        Err(e) if e.errno == libc::ENOENT => {}
        Err(e) => {
            result.kept_because = Some(format!("cannot open it ({e}); it may not be a directory"));
            return result;
        }
    }
    match sys::unlink(state.fd.as_fd(), Path::new(&record_name)) {
        Ok(()) => {}
        Err(e) if e.errno == libc::ENOENT => {}
        Err(e) => {
            result.kept_because = Some(format!("removing its record failed ({e})"));
            return result;
        }
    }
    result.removed = true;
    result
}
