//! The `host-staged` strategy, the last resort when no private mount
//! namespace can be made (e.g. a seccomp policy forbids `unshare`):
//! containerd's fixed algorithm, done right.
//!
//! Invariants, each checked by code below:
//! - Staging lives in the state directory (default `/run/idoverlay`):
//!   root-owned, mode 0700, never a symlink, never under a world-writable
//!   directory, and itself a private tmpfs, so staged mounts neither
//!   propagate to other namespaces nor ever sit on a filesystem with data.
//! - A record (`<id>.json`) is written before anything is attached, so a
//!   crash leaves something `idoverlay gc` can find.
//! - Clones are attached read-only (and `nosymfollow`).
//! - Teardown is `umount2(MNT_DETACH|UMOUNT_NOFOLLOW)` of each staged mount;
//!   after any failed unmount nothing at all is removed.
//! - Removal is `rmdir` of the empty directories this run created, by name
//!   relative to an `O_NOFOLLOW` directory fd, each checked not to be a mount
//!   point first: never recursive, never through a symlink, never across a
//!   mount.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::staged::{self, Stage};
use super::{OverlayContext, Request};
use crate::error::{display_path, Error, Result};
use crate::sys::{self, MountAttrs};

/// Where host-staged keeps its staging directories unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/idoverlay";

/// What a staging directory's record says; enough for `gc` to decide
/// whether its owner is still running.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// Record format version.
    pub version: u32,
    /// The staging directory's name inside the state directory.
    pub dir: String,
    /// The process that created it.
    pub pid: u32,
    /// That process's start time (clock ticks since boot, /proc/PID/stat field 22).
    pub start_time: u64,
    /// The boot it was created in (/proc/sys/kernel/random/boot_id).
    pub boot_id: String,
    /// Seconds since the epoch when it was created.
    pub created: u64,
}

impl Record {
    fn for_this_process(dir: &str) -> Record {
        let pid = std::process::id();
        Record {
            version: 1,
            dir: dir.to_string(),
            pid,
            start_time: start_time(pid).unwrap_or(0),
            boot_id: boot_id(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }

    /// Whether the process that wrote the record is still running.
    pub fn owner_alive(&self) -> bool {
        self.boot_id == boot_id() && start_time(self.pid) == Some(self.start_time)
    }
}

pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(19)?.parse().ok()
}

pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The state directory, opened and checked: root-owned 0700, not under a
/// world-writable directory, a private tmpfs of its own.
pub(crate) struct StateDir {
    pub path: PathBuf,
    pub fd: OwnedFd,
}

impl StateDir {
    /// Opens (creating if needed) and checks the state directory.
    pub fn open(path: &Path, create: bool) -> Result<StateDir> {
        let refuse = |why: String| Error::invalid_path("state dir", path, why);
        if !path.is_absolute() {
            return Err(refuse("is a relative path; give an absolute path".into()));
        }
        if path
            .components()
            .skip(1)
            .any(|c| !staged::plain_rel(Path::new(c.as_os_str())))
        {
            return Err(refuse(
                "must be a plain path ([A-Za-z0-9._+@-] in every component): staged paths are \
                 passed to overlay as strings"
                    .into(),
            ));
        }
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(refuse("must be a directory below /, not / itself".into()));
        };
        let parent_fd =
            sys::open_dir_path(sys::cwd(), parent).map_err(|e| Error::InvalidInput {
                what: "state dir".into(),
                input: display_path(path),
                reason: format!("its parent {} cannot be opened", display_path(parent)),
                path: Some(path.to_path_buf()),
                source: Some(e),
            })?;
        let parent_st = sys::stat_fd(parent_fd.as_fd())
            .map_err(|e| Error::os("inspect state dir parent", Some(parent), e))?;
        if parent_st.uid != 0 || parent_st.mode & 0o002 != 0 {
            return Err(refuse(format!(
                "sits under {}, which is {}; staging must be under a root-owned directory \
                 others cannot write (the default is {DEFAULT_STATE_DIR})",
                display_path(parent),
                if parent_st.uid != 0 {
                    "not owned by root"
                } else {
                    "world-writable"
                }
            )));
        }
        let fd = match sys::open_dir_path(parent_fd.as_fd(), Path::new(name)) {
            Ok(fd) => fd,
            Err(e) if e.errno == libc::ENOENT && create => {
                sys::mkdir(parent_fd.as_fd(), Path::new(name), 0o700)
                    .map_err(|e| Error::os("create state dir", Some(path), e))?;
                sys::open_dir_path(parent_fd.as_fd(), Path::new(name))
                    .map_err(|e| Error::os("open state dir", Some(path), e))?
            }
            Err(e) if e.errno == libc::ENOTDIR => {
                return Err(refuse(
                    "is not a directory (symlinks are not followed)".into(),
                ))
            }
            Err(e) => return Err(Error::os("open state dir", Some(path), e)),
        };
        let st =
            sys::stat_fd(fd.as_fd()).map_err(|e| Error::os("inspect state dir", Some(path), e))?;
        if st.uid != 0 || st.mode & 0o077 != 0 {
            return Err(refuse(format!(
                "must be owned by root with mode 0700 (it is uid {} mode {:o})",
                st.uid,
                st.mode & 0o7777
            )));
        }
        let mut state = StateDir {
            path: path.to_path_buf(),
            fd,
        };
        if create && st.mount_root != Some(true) {
            // Two assemblies (threads or processes) must not both mount a
            // tmpfs here: the second would cover the first one's staging,
            // and its staged paths would name nothing. The lock is on the
            // parent directory; the check is repeated under it.
            let lock = sys::open_dir_read(parent_fd.as_fd(), Path::new("."))
                .and_then(|fd| sys::lock_exclusive(fd.as_fd()).map(|()| fd))
                .map_err(|e| Error::os("lock the state dir's parent", Some(parent), e))?;
            state.fd = sys::open_dir_path(parent_fd.as_fd(), Path::new(name))
                .map_err(|e| Error::os("open state dir", Some(path), e))?;
            let now = sys::stat_fd(state.fd.as_fd())
                .map_err(|e| Error::os("inspect state dir", Some(path), e))?;
            if now.mount_root != Some(true) {
                state.mount_private_tmpfs()?;
            }
            drop(lock);
        }
        Ok(state)
    }

    /// Mounts a small private tmpfs (0700) over the state directory, so that
    /// nothing staged below it propagates anywhere and nothing staged ever
    /// shares a filesystem with data. It stays: it is idoverlay's.
    fn mount_private_tmpfs(&mut self) -> Result<()> {
        let ctx = sys::fsopen(c"tmpfs").map_err(|e| Error::os("open state tmpfs", None, e))?;
        let tmpfs = sys::fsconfig_set_string(ctx.as_fd(), c"source", c"idoverlay-state")
            .and_then(|()| sys::fsconfig_set_string(ctx.as_fd(), c"mode", c"0700"))
            .and_then(|()| sys::fsconfig_set_string(ctx.as_fd(), c"size", c"1m"))
            .and_then(|()| sys::fsconfig_create(ctx.as_fd()))
            .and_then(|()| {
                sys::fsmount(
                    ctx.as_fd(),
                    MountAttrs {
                        nosuid: true,
                        nodev: true,
                        noexec: true,
                        ..MountAttrs::default()
                    },
                )
            })
            .map_err(|e| Error::os("create state tmpfs", Some(&self.path), e))?;
        sys::move_mount(tmpfs.as_fd(), self.fd.as_fd(), Path::new(""))
            .map_err(|e| Error::os("mount state tmpfs on", Some(&self.path), e))?;
        sys::make_mount_private(tmpfs.as_fd())
            .map_err(|e| Error::os("make state tmpfs private", Some(&self.path), e))?;
        // From now on the state dir is the tmpfs' root.
        self.fd = sys::open_dir_path(sys::cwd(), &self.path)
            .map_err(|e| Error::os("open state dir", Some(&self.path), e))?;
        Ok(())
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

pub(crate) fn assemble(req: &Request<'_>, state_dir: &Path) -> Result<(OwnedFd, Vec<String>)> {
    // Parameters first: a bad -o is refused before anything is staged.
    let ctx = OverlayContext::new(req)?;
    let state = StateDir::open(state_dir, true)?;
    // A short id keeps staged paths short: they are passed as strings.
    let id = format!(
        "{:x}-{:x}",
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    );
    let record = Record::for_this_process(&id);
    let record_name = format!("{id}.json");
    let file = sys::create_file(state.fd.as_fd(), Path::new(&record_name), 0o600)
        .map_err(|e| Error::os("write staging record in", Some(state_dir), e))?;
    sys::write_all(
        file.as_fd(),
        serde_json::to_string(&record)
            .expect("serializable")
            .as_bytes(),
    )
    .map_err(|e| Error::os("write staging record in", Some(state_dir), e))?;
    drop(file);
    sys::mkdir(state.fd.as_fd(), Path::new(&id), 0o700)
        .map_err(|e| Error::os("create staging dir in", Some(state_dir), e))?;
    let staging = sys::open_dir_path(state.fd.as_fd(), Path::new(&id))
        .map_err(|e| Error::os("open staging dir in", Some(state_dir), e))?;
    let prefix = state_dir.join(&id);
    req.trace(|| format!("host-staged: staging in {}", prefix.display()));

    let mut stage = Stage {
        dir: staging.as_fd(),
        prefix: prefix.clone(),
        attached: Vec::new(),
    };
    let built = staged::build(req, ctx, &mut stage);
    let attached = std::mem::take(&mut stage.attached);
    let cleanup = teardown(
        &state,
        &id,
        &record_name,
        staging.as_fd(),
        &prefix,
        &attached,
    );
    req.trace(|| match &cleanup {
        Ok(()) => format!(
            "host-staged: {} staged mount(s) detached, staging removed",
            attached.len()
        ),
        Err(e) => format!("host-staged: cleanup incomplete: {e}"),
    });
    match (built, cleanup) {
        (Ok(fd), Ok(())) => Ok((fd, Vec::new())),
        // The overlay is fine; the leftovers are for gc. Say so.
        (Ok(fd), Err(e)) => Ok((fd, vec![e.to_string()])),
        (Err(e), _) => Err(e),
    }
}

/// Detaches the staged mounts, then removes the staging directory, its
/// empty mount points and the record. Nothing is removed once any unmount
/// has failed.
pub(crate) fn teardown(
    state: &StateDir,
    id: &str,
    record_name: &str,
    staging: BorrowedFd<'_>,
    prefix: &Path,
    attached: &[String],
) -> Result<()> {
    for name in attached.iter().rev() {
        let path = prefix.join(name);
        sys::unmount(&path, true).map_err(|e| Error::Cleanup {
            detail: format!(
                "detaching staged mount {} failed; nothing removed",
                display_path(&path)
            ),
            path: prefix.to_path_buf(),
            source: Some(e),
        })?;
    }
    remove_empty_staging(state, id, staging, prefix)?;
    sys::unlink(state.fd.as_fd(), Path::new(record_name)).map_err(|e| Error::Cleanup {
        detail: "removing the staging record failed".into(),
        path: prefix.to_path_buf(),
        source: Some(e),
    })
}

/// `rmdir` of every entry of the staging dir (each must be an empty
/// directory and not a mount point), then of the staging dir itself.
pub(crate) fn remove_empty_staging(
    state: &StateDir,
    id: &str,
    staging: BorrowedFd<'_>,
    prefix: &Path,
) -> Result<()> {
    let cleanup_err = |detail: String, e: Option<sys::SysError>| Error::Cleanup {
        detail,
        path: prefix.to_path_buf(),
        source: e,
    };
    let names = sys::dir_entries(staging)
        .map_err(|e| cleanup_err("reading the staging dir failed".into(), Some(e)))?;
    for name in names {
        let name = Path::new(&name);
        let st = sys::stat_nofollow(staging, name)
            .map_err(|e| cleanup_err(format!("inspecting {} failed", name.display()), Some(e)))?;
        if !st.is_dir() {
            return Err(cleanup_err(
                format!(
                    "{} is {}, which idoverlay did not create; left alone",
                    name.display(),
                    st.kind()
                ),
                None,
            ));
        }
        if st.mount_root != Some(false) {
            return Err(cleanup_err(
                format!("{} is still a mount point; left alone", name.display()),
                None,
            ));
        }
        sys::rmdir(staging, name)
            .map_err(|e| cleanup_err(format!("removing {} failed", name.display()), Some(e)))?;
    }
    sys::rmdir(state.fd.as_fd(), Path::new(id))
        .map_err(|e| cleanup_err("removing the staging dir failed".into(), Some(e)))
}
