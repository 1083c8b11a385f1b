//! The `host-staged` strategy, the last resort when no private mount
//! namespace can be made (e.g. a seccomp policy forbids `unshare`):
//! containerd's fixed algorithm, done right.
//!
//! Invariants, each checked by code below or in `state.rs`:
//! - Everything is validated before anything is made: layers, upper and
//!   work are opened and checked first; only then is the state dir touched.
//! - Staging lives in the state directory (default `/run/idoverlay`), which
//!   must be idoverlay's own private tmpfs, reached once by fd through
//!   directories only root controls (`state.rs`).
//! - A locked record (`<id>.json`) exists before the staging directory,
//!   and names each mount point before anything is attached there, so a
//!   crash leaves something `gc` can finish, and `gc` can tell a live
//!   assembly by its lock.
//! - The staged names are relative to the staging directory (a thread of
//!   ours with its working directory there builds the overlay): no path
//!   above it is looked up again.
//! - Clones are attached read-only (and `nosymfollow`).
//! - Teardown detaches exactly the mounts this run attached, each through
//!   an fd of its own root (`umount2(MNT_DETACH)`); after any failed
//!   unmount nothing at all is removed.
//! - Removal is `rmdir` of the empty directories this run created, by name
//!   relative to the staging directory's fd: never recursive, never through
//!   a symlink, never across a mount.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use super::staged::{self, Stage};
use super::{Prepared, Request};
use crate::error::{display_path, Error, Result};
use crate::overlayfs::OverlayContext;
use crate::state::{self, LiveRecord, StateDir};
use crate::sys;

pub(crate) fn assemble(req: &Request<'_>) -> Result<(OwnedFd, Vec<String>)> {
    // Parameters first, then the layers, upper and work: bad input is
    // refused before the state dir is touched.
    let ctx = OverlayContext::new(req.params)?;
    let (prepared, clones) = staged::prepare_for_staging(req, false)?;
    let state_dir = req.state.path();
    // Provisional when mounted here: taken away again when the assembly
    // fails and it holds nothing else (bad input keeps nothing).
    let state = req.state.get_or_create_for_assembly()?;
    let id = state::new_staging_id();
    let mut record = LiveRecord::create(state, &id, planned_mounts(req, &prepared))?;
    sys::mkdir(state.fd.as_fd(), Path::new(&id), 0o700)
        .map_err(|e| Error::os("create staging dir in", Some(state_dir), e))?;
    let staging = sys::open_dir_beneath(state.fd.as_fd(), Path::new(&id))
        .map_err(|e| Error::os("open staging dir in", Some(state_dir), e))?;
    req.trace(|| format!("host-staged: staging in {}", state.join(&id).display()));

    let (built, attached) = crate::threads::run_on_thread("host-staged", || {
        sys::unshare_fs()
            .and_then(|()| sys::fchdir(staging.as_fd()))
            .map_err(|e| Error::os("change into the staging dir", Some(&state.join(&id)), e))?;
        let mut before_attach = |name: &str| record.ensure(state, name);
        // The stage is in this (the caller's) mount namespace.
        let at_home = |clone: &mut dyn FnMut() -> Result<OwnedFd>| clone();
        let mut stage = Stage {
            dir: staging.as_fd(),
            attached: Vec::new(),
            before_attach: &mut before_attach,
            at_home: &at_home,
        };
        let built = staged::build(req, ctx, &mut stage, &prepared, clones);
        Ok((built, std::mem::take(&mut stage.attached)))
    })?;
    let count = attached.len();
    let cleanup =
        teardown(state, &id, staging.as_fd(), attached).and_then(|()| record.remove(state));
    req.trace(|| match &cleanup {
        Ok(()) => format!("host-staged: {count} staged mount(s) detached, staging removed"),
        Err(e) => format!("host-staged: cleanup incomplete: {e}"),
    });
    match (built, cleanup) {
        (Ok(fd), Ok(())) => Ok((fd, Vec::new())),
        // The overlay is fine; the leftovers are for gc. Say so.
        (Ok(fd), Err(e)) => Ok((fd, vec![e.to_string()])),
        (Err(e), _) => Err(e),
    }
}

/// The names the staging will use, as far as the plan tells: one per
/// shared root and per layer on its own, `u` for an idmapped upper, `o`
/// for an overlay mounted with mount(2). (A layer the kernel refuses
/// beneath its shared root gets a name later; the record is extended
/// before it is attached.)
fn planned_mounts(req: &Request<'_>, prepared: &Prepared<'_>) -> Vec<String> {
    let clones = prepared.plan.groups.len() + prepared.singles.iter().flatten().count();
    let mut names: Vec<String> = (0..clones).map(|n| n.to_string()).collect();
    if req.idmap_upper && prepared.upper.is_some() {
        names.push("u".into());
    }
    names.push("o".into());
    names
}

/// Detaches the staged mounts, newest first, each exactly through an fd of
/// its own root, then removes their empty mount points and the staging
/// directory. Nothing is removed once any unmount has failed.
fn teardown(
    state: &StateDir,
    id: &str,
    staging: BorrowedFd<'_>,
    attached: Vec<(String, OwnedFd)>,
) -> Result<()> {
    let cleanup_err = |detail: String, e: Option<sys::SysError>| {
        Error::from(crate::error::Repr::Cleanup {
            detail,
            path: state.join(id),
            source: e,
        })
    };
    let mut names = Vec::with_capacity(attached.len());
    for (name, root) in attached.into_iter().rev() {
        sys::detach_root_of(root.as_fd()).map_err(|e| {
            cleanup_err(
                format!(
                    "detaching staged mount {} failed; nothing removed",
                    display_path(&state.join(id).join(&name))
                ),
                Some(e),
            )
        })?;
        names.push(name);
    }
    // The mount points this run made, and any it made without attaching.
    let entries = sys::dir_entries(staging)
        .map_err(|e| cleanup_err("reading the staging dir failed".into(), Some(e)))?;
    for name in entries {
        let name = Path::new(&name);
        let st = sys::stat_nofollow(staging, name)
            .map_err(|e| cleanup_err(format!("inspecting {} failed", name.display()), Some(e)))?;
        let ours = name.to_str().is_some_and(state::is_mount_name);
        if !st.is_dir() || !ours {
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
