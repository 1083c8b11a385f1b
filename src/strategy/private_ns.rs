//! The `private-ns` strategy (kernels 5.19–6.14): the idmapped clones are
//! attached, but only in a staging mount namespace nobody else sees, which
//! holds nothing of the host's mounts (see `staging_ns`).
//!
//! Data flow: on the caller's thread, in its mount namespace, the layers
//! are planned, opened and checked, and every clone is made (idmapped
//! layer clones; upper and work through one clone of a directory above
//! both) — before 6.15 only a mount of the caller's namespace can be cloned
//! → a dedicated thread enters the staging namespace (`setns`: it copies
//! no mount table) and takes a private copy of it (two mounts), makes a
//! stage there (a tmpfs of its own over the copy's root, its working
//! directory), attaches the clones there under short names and builds the
//! overlay from those names (see `staged`) → the detached overlay fd comes
//! back; it keeps overlay's own private copies of the layers. The copy, and
//! everything staged in it, goes with the thread.
//!
//! Nothing temporary is ever attached in the caller's namespace, nor in the
//! staging namespace (shared by every assembly, and kept for the boot by
//! the command line tool): a killed process takes its threads' copies with
//! it.

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
    let (ns, source) = staging_ns::get(for_boot.then_some(req.state))?;
    req.trace(|| format!("private-ns: the staging namespace: {source}"));
    crate::threads::run_on_thread("private-ns", || {
        let ns_stage = match ns {
            Some(ns) => staging_ns::Stage::enter(ns, for_boot)?,
            None => staging_ns::Stage::fresh()?,
        };
        req.trace(|| "private-ns: in the staging namespace, on a stage of its own".to_string());
        // Nothing needs recording: the stage goes with this thread's
        // namespace, when the thread ends or the process is killed.
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
