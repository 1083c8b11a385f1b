//! The `private-ns` strategy (kernels 5.19–6.14): the idmapped clones are
//! attached, but only in a staging mount namespace nobody else sees, which
//! holds nothing of the host's mounts (see `staging_ns`).
//!
//! Data flow: on the caller's thread, in its mount namespace, the layers
//! are planned, opened and checked, and every clone is made (idmapped
//! layer clones; upper and work through one clone of a directory above
//! both) — before 6.15 only a mount of the caller's namespace can be cloned
//! → a dedicated thread enters the staging namespace (`setns`: it copies
//! no mount table), makes a stage (a tmpfs of its own, its working
//! directory), attaches the clones there under short names, builds the
//! overlay from those names (see `staged`), `fsmount`s it and detaches the
//! stage again → the detached overlay fd comes back; it keeps overlay's
//! own private copies of the layers.
//!
//! Nothing temporary is ever attached in the caller's namespace. A killed
//! process takes the staging namespace with it (one per process), or, with
//! the namespace kept for the boot, leaves its stage there, where the next
//! assembly finds its lock free and removes it.

use std::os::fd::{AsFd, OwnedFd};

use super::staged::{self, Stage};
use super::staging_ns;
use super::Request;
use crate::error::Result;
use crate::overlayfs::OverlayContext;

/// Assembles the overlay; `for_boot`: the staging namespace is the boot's,
/// kept in the request's state dir (else this process's).
pub(crate) fn assemble(req: &Request<'_>, for_boot: bool) -> Result<OwnedFd> {
    // Parameters first: a bad -o is refused before anything is made.
    let ctx = OverlayContext::new(req.params)?;
    let (prepared, clones) = staged::prepare_for_staging(req, true)?;
    let ns = staging_ns::get(for_boot.then_some(req.state))?;
    crate::threads::run_on_thread("private-ns", || {
        let ns_stage = match ns {
            Some(ns) => staging_ns::Stage::enter(ns)?,
            None => staging_ns::Stage::fresh()?,
        };
        req.trace(|| "private-ns: in the staging namespace, on a stage of its own".to_string());
        // Nothing needs recording: the stage is detached when this ends,
        // and a dead assembly's stage is found by its free lock.
        let mut nothing_to_record = |_: &str| Ok(());
        let at_home = |clone: &mut dyn FnMut() -> Result<OwnedFd>| ns_stage.at_home(clone);
        let mut stage = Stage {
            dir: ns_stage.dir.as_fd(),
            attached: Vec::new(),
            before_attach: &mut nothing_to_record,
            at_home: &at_home,
        };
        let overlay = staged::build(req, ctx, &mut stage, &prepared, clones)?;
        req.trace(|| {
            format!(
                "private-ns: overlay built from {} staged mount(s); they go with the stage",
                stage.attached.len()
            )
        });
        Ok(overlay)
    })
}
