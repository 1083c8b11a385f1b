//! The ways an idmapped overlay can be assembled, and what they share.
//!
//! Every strategy turns the same [`Request`] into a detached overlay mount
//! fd; none of them attaches anything to the caller's mount tree except
//! `host-staged`, the last resort, which keeps its temporary mounts in a
//! root-only private directory and never removes anything still mounted.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::layer::{self, OpenedDir, Role};
use crate::options::OverlayParam;
use crate::overlayfs::OverlayContext;
use crate::sys::{self, MountAttrs};
use crate::userns::UserNamespace;

pub(crate) mod detached;
pub(crate) mod host_staged;
pub(crate) mod in_use;
mod kind;
pub(crate) mod private_ns;
pub(crate) mod staged;
pub(crate) mod staging_ns;
pub(crate) mod upper_work;

pub use kind::Strategy;

/// Receives one line per step when the caller asked for a trace (`-v`).
pub type Trace = Arc<dyn Fn(&str) + Send + Sync>;

/// Everything a strategy needs, validated for shape but not yet opened.
pub(crate) struct Request<'a> {
    pub lowers: &'a [PathBuf],
    pub data_lowers: &'a [PathBuf],
    pub upper: Option<&'a Path>,
    pub work: Option<&'a Path>,
    pub idmap_upper: bool,
    /// Give an empty upper's root to container root first.
    pub chown_upper: bool,
    /// One clone per layer, no shared-parent groups.
    pub per_layer_clones: bool,
    pub params: &'a [OverlayParam],
    pub attrs: MountAttrs,
    pub userns: &'a UserNamespace,
    pub trace: Option<&'a Trace>,
    /// What the kernel can do (from the probe, with pretended gaps).
    pub caps: &'a crate::probe::ProbeReport,
    /// Where the overlay will be mounted, when the caller said
    /// ([`crate::Overlay::mount`]): checked against the layers, upper and work.
    pub target: Option<&'a OpenedDir>,
    /// Receives what the attach needs from the assembly (see [`Kept`]).
    pub kept: &'a std::sync::Mutex<Kept>,
    /// The state dir, opened at most once for the whole call.
    pub state: &'a crate::state::StateDirOnce,
}

/// What an assembly hands on to the attach of its overlay.
#[derive(Debug, Default)]
pub(crate) struct Kept {
    /// Without a target ([`crate::Overlay::assemble`]): what the overlay is
    /// made of, to check the target it is attached at later.
    pub footprint: Option<layer::Footprint>,
    /// The upper and work dirs as opened, to claim once attached
    /// ([`in_use::claim`]).
    pub pair: Option<(OpenedDir, OpenedDir)>,
    /// Where the overlay's directories really are, for its description.
    pub paths: layer::RealPaths,
    /// The usual mistakes noticed (see `mistakes`).
    pub warnings: Vec<String>,
    /// Layers the kernel refused beneath their shared clone, opened on
    /// their own (see [`retry_on_its_own`]): located by these, not by name.
    pub retried: Vec<(usize, OpenedDir)>,
    /// The upper dir `--chown-upper` gave to container root: given back
    /// when the overlay is refused ([`undo_chown`]).
    pub chowned_upper: Option<ChownedUpper>,
    /// Container root's ids on disk, with `--chown-upper`: the owner the
    /// upper's root must have once the overlay claims it (see
    /// [`in_use::claim`]).
    pub upper_owner: Option<(u32, u32)>,
}

/// An upper dir `--chown-upper` gave to container root.
#[derive(Debug)]
pub(crate) struct ChownedUpper {
    pub fd: OwnedFd,
    /// Its owner before.
    pub before: (u32, u32),
    /// The owner given.
    pub given: (u32, u32),
}

/// Gives the upper dir back to its owner before `--chown-upper`, when the
/// request that chowned it failed, unless another overlay uses it now
/// ([`in_use::give_upper_back`]).
pub(crate) fn undo_chown(req: &Request<'_>) {
    let chowned = req
        .kept
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .chowned_upper
        .take();
    if let Some(chowned) = chowned {
        let (uid, gid) = chowned.before;
        match in_use::give_upper_back(&chowned) {
            Ok(None) => {}
            Ok(Some(why)) => req.trace(|| format!("the upper dir keeps its new owner: {why}")),
            Err(e) => req.trace(|| {
                format!("the upper dir's owner could not be put back to {uid}:{gid}: {e}")
            }),
        }
    }
}

impl Request<'_> {
    /// What the assembly kept, for its attach: all of it but the upper's
    /// owner before `--chown-upper`, which stays until the request is done
    /// (an attach that fails undoes the chown too).
    pub fn take_kept(&self) -> Kept {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let chowned_upper = kept.chowned_upper.take();
        let taken = std::mem::take(&mut *kept);
        kept.chowned_upper = chowned_upper;
        taken
    }

    pub fn trace(&self, line: impl FnOnce() -> String) {
        if let Some(trace) = self.trace {
            trace(&line());
        }
    }
}

/// The request's layers planned, and its upper and work opened and checked.
pub(crate) struct Prepared<'a> {
    pub plan: layer::Plan<'a>,
    /// Per layer planned on its own, the layer opened (`None` for shared);
    /// empty when every layer is shared (see [`Prepared::single`]).
    pub singles: Vec<Option<OpenedDir>>,
    pub upper: Option<OpenedDir>,
    pub work: Option<OpenedDir>,
}

impl Prepared<'_> {
    /// Layer `i` opened on its own, when it was planned so.
    pub fn single(&self, i: usize) -> Option<&OpenedDir> {
        self.singles.get(i).and_then(Option::as_ref)
    }
}

/// Whether the calling thread has a mount namespace other than the
/// process's main thread.
fn in_a_mount_ns_of_its_own() -> bool {
    let ns = |p: &str| {
        crate::sys::open_read(crate::sys::cwd(), Path::new(p))
            .and_then(|fd| crate::sys::stat_fd(std::os::fd::AsFd::as_fd(&fd)))
            .map(|st| (st.dev, st.ino))
    };
    match (ns("/proc/thread-self/ns/mnt"), ns("/proc/self/ns/mnt")) {
        (Ok(a), Ok(b)) => a != b,
        _ => true,
    }
}

/// How `prepare` groups layers (see [`layer::Grouping`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Share {
    /// Every layer on its own.
    No,
    /// Under their common directory, cloned recursively (the fast path).
    Lexical,
    /// By mount, from the mount table.
    ByMount,
}

/// Plans the layers, opens the layers planned on their own and the upper
/// and work dirs, and refuses overlaps.
pub(crate) fn prepare<'a>(
    req: &Request<'a>,
    share: Share,
    shareable: impl Fn(&Path) -> bool,
) -> Result<Prepared<'a>> {
    let layers = layer::Layers::new(req.lowers, req.data_lowers);
    let share = if req.per_layer_clones {
        Share::No
    } else {
        share
    };
    let mut table = match share {
        Share::ByMount => crate::mountinfo::read_self().ok(),
        Share::No | Share::Lexical => None,
    };
    let grouping = match (share, &table) {
        (Share::Lexical, _) => layer::Grouping::Lexical,
        (Share::ByMount, Some(t)) => layer::Grouping::ByMount(t),
        _ => layer::Grouping::None,
    };
    let plan = layer::plan(layers, shareable, grouping).map_err(|e| explain_layer(e, layers))?;
    // Most stacks share one root: then no per-layer slots at all (500 of
    // them would be 40 KiB to fill and walk on every mount).
    let mut singles = Vec::new();
    if plan.placement.contains(&layer::Placement::Single) {
        singles.reserve_exact(plan.layers.len());
        for ((path, role), placement) in plan.layers.iter().zip(&plan.placement) {
            singles.push(match placement {
                layer::Placement::Single => Some(layer::open_dir(path, role)?),
                layer::Placement::Shared { .. } => None,
            });
        }
    }
    let upper = req
        .upper
        .map(|p| layer::open_dir(p, Role::Upper))
        .transpose()?;
    let work = req
        .work
        .map(|p| layer::open_dir(p, Role::Work))
        .transpose()?;
    if let (Some(upper), Some(work)) = (&upper, &work) {
        upper_work::check_upper_work(upper, work)?;
        req.trace(|| "upper and work dirs: not in use by another overlay".into());
    }
    let opened: Vec<Option<&OpenedDir>> = singles.iter().map(Option::as_ref).collect();
    layer::check_overlaps(
        &plan,
        &opened,
        upper.as_ref(),
        work.as_ref(),
        req.target,
        &mut table,
    )
    .map_err(|e| explain_layer(e, layers))?;
    let mut warnings = Vec::new();
    if let Some(upper) = &upper {
        if req.chown_upper {
            let (given, before) = crate::mistakes::chown_upper(upper, req.userns, req.idmap_upper)?;
            let mut kept = req.kept.lock().unwrap_or_else(|e| e.into_inner());
            kept.upper_owner = Some(given);
            if let Some(before) = before {
                // Put back if the kernel refuses the overlay after all:
                // bad input changes nothing (an attempt retried the careful
                // way finds it chowned, and keeps the first owner).
                if kept.chowned_upper.is_none() {
                    kept.chowned_upper = sys::dup(upper.fd.as_fd()).ok().map(|fd| ChownedUpper {
                        fd,
                        before,
                        given,
                    });
                }
            }
        } else if let Some(w) = crate::mistakes::upper_owner(upper, req.userns, req.idmap_upper) {
            warnings.push(w);
        }
    }
    warnings.extend(crate::mistakes::layers_outside_maps(
        &plan, &singles, req.userns,
    ));
    {
        let mut kept = req.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.paths = layer::real_paths(&plan, &opened, upper.as_ref(), work.as_ref());
        kept.warnings = warnings;
        if req.target.is_none() {
            // In a mount namespace of its own (private-ns), the mounts seen
            // here are copies the caller's table will not show: located now.
            let here_only = table.as_deref().filter(|_| in_a_mount_ns_of_its_own());
            kept.footprint = Some(layer::Footprint::of(
                &plan,
                &opened,
                upper.as_ref(),
                work.as_ref(),
                here_only,
            ));
        }
        if let (Some(u), Some(w)) = (&upper, &work) {
            kept.pair = u.try_clone().ok().zip(w.try_clone().ok());
        }
    }
    req.trace(|| {
        let shared = plan
            .placement
            .iter()
            .filter(|p| matches!(p, layer::Placement::Shared { .. }))
            .count();
        format!(
            "planned {} layer(s): {shared} beneath {} shared clone(s), {} on their own{}",
            plan.layers.len(),
            plan.groups.len(),
            plan.layers.len() - shared,
            if upper.is_some() {
                "; upper and work opened"
            } else {
                ""
            }
        )
    });
    Ok(Prepared {
        plan,
        singles,
        upper,
        work,
    })
}

/// An overlap refused by name (`plan`'s clash check, `check_overlaps` on
/// layers reached beneath a shared clone) is about layers not opened yet:
/// when the layer the refusal names is no usable directory (missing, a
/// file, a symlink…), that is what is wrong, and its own explanation is
/// given instead of "lies inside layer N". The open is only for the
/// message; nothing is assembled from it.
fn explain_layer(e: Error, layers: layer::Layers<'_>) -> Error {
    if e.kind() != crate::ErrorKind::InvalidInput {
        return e;
    }
    let Some(named) = e.path() else { return e };
    match layers.iter().find(|(path, _)| *path == named) {
        Some((path, role)) => match layer::open_dir(path, role) {
            Err(better) => better,
            Ok(_) => e,
        },
        None => e,
    }
}

/// After the kernel refused layer `i` reached beneath a shared clone: the
/// layer's own one-line explanation when it is not a usable directory
/// (missing, a file, a symlink…), or the opened layer, to be reached on its
/// own instead (e.g. a symlink on the way, which shared clones never follow).
/// Opened so, it may be somewhere else than its name said, so the overlap
/// checks run again with it located by its open: an upper dir inside it
/// (writes landing in an image layer) is refused as in [`prepare`].
pub(crate) fn retry_on_its_own(
    req: &Request<'_>,
    prepared: &Prepared<'_>,
    i: usize,
) -> Result<OpenedDir> {
    let (path, role) = prepared.plan.layers.get(i);
    let dir = layer::open_dir(path, role)?;
    let mut guard = req.kept.lock().unwrap_or_else(|e| e.into_inner());
    let kept = &mut *guard;
    let mut opened: Vec<Option<&OpenedDir>> = (0..prepared.plan.layers.len())
        .map(|k| prepared.single(k))
        .collect();
    for (k, earlier) in &kept.retried {
        opened[*k] = Some(earlier);
    }
    opened[i] = Some(&dir);
    let (upper, work) = (prepared.upper.as_ref(), prepared.work.as_ref());
    let mut table = None;
    layer::check_overlaps(&prepared.plan, &opened, upper, work, req.target, &mut table)?;
    // What the description and a later attach's check go by, too.
    kept.paths = layer::real_paths(&prepared.plan, &opened, upper, work);
    if kept.footprint.is_some() {
        let here_only = table.as_deref().filter(|_| in_a_mount_ns_of_its_own());
        kept.footprint = Some(layer::Footprint::of(
            &prepared.plan,
            &opened,
            upper,
            work,
            here_only,
        ));
    }
    let copy = dir
        .try_clone()
        .map_err(|e| Error::os("keep the layer opened on its own", Some(path), e))?;
    kept.retried.push((i, copy));
    Ok(dir)
}

/// CREATE and `fsmount`.
pub(crate) fn create(ctx: OverlayContext, req: &Request<'_>, has_upper: bool) -> Result<OwnedFd> {
    let attrs = req.attrs;
    let mount = as_creator(req, has_upper, move || {
        ctx.create_and_mount(attrs, has_upper)
    })?;
    req.trace(|| "fsconfig(FSCONFIG_CMD_CREATE) + fsmount: ok".to_string());
    Ok(mount)
}

/// Runs `make` (the call that creates the overlay's superblock) with the
/// right credentials. overlay records its creator's credentials and does
/// all later upper-layer work with them; with an idmapped upper those must
/// map through the upper's idmap, so `make` then runs on a short-lived
/// thread whose fsuid/fsgid are the host ids of on-disk root. Credentials
/// are per thread: the caller's stay untouched. That thread shares the
/// caller's mount namespace and working directory.
pub(crate) fn as_creator<T: Send>(
    req: &Request<'_>,
    has_upper: bool,
    make: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    if !(has_upper && req.idmap_upper) {
        return make();
    }
    let (uid, gid) = mounter_ids(req.userns)?;
    crate::threads::run_on_thread("creator", move || {
        crate::creds::assume_fs_ids(uid, gid)
            .map_err(|e| Error::os("switch to the upper layer's owner", None, e))?;
        make()
    })
}

/// The host ids of on-disk root in a namespace made from maps.
pub(crate) fn mounter_ids(userns: &UserNamespace) -> Result<(u32, u32)> {
    let uid = userns.uid_map().and_then(|m| m.to_host(0));
    let gid = userns.gid_map().and_then(|m| m.to_host(0));
    match (uid, gid) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => Err(Error::invalid(
            "upper idmap",
            userns.describe(),
            "needs uid and gid maps that map on-disk id 0: overlay writes the upper layer as its \
             creator, whose ids must map through the upper's idmap",
        )
        .with_advice(crate::Advice::GiveMapsOfRoot)),
    }
}
