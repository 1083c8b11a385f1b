//! The `private-ns` strategy (kernels 5.19–6.14): the idmapped clones are
//! attached, but only in the private mount namespace of a short-lived
//! thread, which the host never sees.
//!
//! Data flow: a dedicated OS thread `unshare(CLONE_NEWNS)` → makes `/`
//! recursively private (before anything else, so nothing it mounts can
//! propagate out) → opens the layers → mounts a fresh tmpfs over `/` of its
//! namespace and changes into it → attaches idmapped clones there under
//! short names → builds the overlay from those names (see `staged`) →
//! `fsmount` → hands the detached overlay fd back and exits. Its namespace,
//! with the tmpfs and every temporary mount in it, is destroyed with it;
//! the detached overlay keeps overlay's own private copies of the layers.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use super::staged::{self, Stage};
use super::Request;
use crate::error::{Error, Result};
use crate::layer::{OpenedDir, Role};
use crate::overlayfs::OverlayContext;
use crate::sys::{self, MountAttrs};

pub(crate) fn assemble(req: &Request<'_>) -> Result<OwnedFd> {
    // Parameters first: a bad -o is refused before anything is made.
    let ctx = OverlayContext::new(req.params)?;
    // The claims on upper and work name mounts of this namespace, which
    // the private one does not show: checked here, on directories the
    // private namespace must then find to be the very same.
    let pair = match (req.upper, req.work) {
        (Some(u), Some(w)) => {
            let (u, w) = (
                crate::layer::open_dir(u, Role::Upper)?,
                crate::layer::open_dir(w, Role::Work)?,
            );
            super::in_use::check_claims(&u, &w)?;
            Some((u, w))
        }
        _ => None,
    };
    crate::threads::run_on_thread("private-ns", || in_private_namespace(req, ctx, pair))
}

/// Runs on the dedicated thread; everything it mounts dies with it.
fn in_private_namespace(
    req: &Request<'_>,
    ctx: OverlayContext,
    checked: Option<(OpenedDir, OpenedDir)>,
) -> Result<OwnedFd> {
    sys::unshare_mount_ns().map_err(|e| {
        Error::os("give a helper thread its own mount namespace", None, e)
            .with_hint("a seccomp policy may forbid unshare")
            .with_advice(crate::Advice::UseHostStaged)
    })?;
    sys::make_private_recursive(Path::new("/"))
        .map_err(|e| Error::os("make the private namespace's mounts private", None, e))?;
    req.trace(|| "private-ns: own mount namespace, / recursively private".to_string());
    // The layers are opened and checked in this namespace (before 6.15
    // overlay takes only mounts of the caller's namespace), before anything
    // is mounted, so bad input changes nothing even here.
    let prepared = staged::prepare_for_staging(req)?;
    if let (Some((u, w)), Some(pu), Some(pw)) = (&checked, &prepared.upper, &prepared.work) {
        for (before, now) in [(u, pu), (w, pw)] {
            if !before.stat.same_inode(&now.stat) {
                return Err(Error::invalid_path(
                    now.role.noun(),
                    &now.path,
                    "changed while it was being opened (renamed meanwhile?); nothing was mounted",
                ));
            }
        }
    }

    // The staging tmpfs, over "/" of this namespace: absolute paths still
    // start at the old root, while names relative to the working directory
    // land in the tmpfs.
    let tmpfs = sys::fsopen(c"tmpfs").map_err(|e| Error::os("open a staging tmpfs", None, e))?;
    let staging = sys::fsconfig_set_string(tmpfs.as_fd(), c"source", c"idoverlay-staging")
        .and_then(|()| sys::fsconfig_set_string(tmpfs.as_fd(), c"mode", c"0700"))
        .and_then(|()| sys::fsconfig_set_string(tmpfs.as_fd(), c"size", c"64k"))
        .and_then(|()| sys::fsconfig_create(tmpfs.as_fd()))
        .and_then(|()| sys::fsmount(tmpfs.as_fd(), MountAttrs::default()))
        .map_err(|e| Error::os("create a staging tmpfs", None, e))?;
    sys::move_mount(staging.as_fd(), sys::cwd(), Path::new("/"))
        .and_then(|()| sys::fchdir(staging.as_fd()))
        .map_err(|e| Error::os("attach the staging tmpfs in the private namespace", None, e))?;
    // Nothing needs recording: everything staged dies with this thread.
    // (The user namespace was made by the caller: a thread whose root is
    // covered counts as chrooted and may not make one.)
    let mut nothing_to_record = |_: &str| Ok(());
    let mut stage = Stage {
        dir: staging.as_fd(),
        attached: Vec::new(),
        before_attach: &mut nothing_to_record,
    };
    let overlay = staged::build(req, ctx, &mut stage, &prepared)?;
    req.trace(|| {
        format!(
            "private-ns: overlay built from {} staged mount(s); they vanish with this thread",
            stage.attached.len()
        )
    });
    Ok(overlay)
}
