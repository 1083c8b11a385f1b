//! The `detached` strategy (kernel 6.15+): idmapped clones that never enter
//! any mount tree, handed to overlay without a temporary mount anywhere.
//!
//! Data flow: plan the layers (layer.rs: shared roots, one per directory
//! holding several layers on one mount) → per shared root one
//! `open_tree(OPEN_TREE_CLONE)` + `mount_setattr(IDMAP|RDONLY|NOSYMFOLLOW)`
//! → each layer named *inside* its clone, and resolved once, by the kernel,
//! where no symlink is followed and no mount can cover a layer → layers
//! planned on their own are opened once (`O_NOFOLLOW`), cloned and idmapped
//! → overlay built → `fsmount`, or mounted straight at the target.
//!
//! How a layer inside a clone is named, fastest first:
//! * relative to a working directory inside the largest clone: for many
//!   layers. The calling thread's, lent for the call, when no other thread
//!   shares it (see [`crate::cwd::fs_struct_of_this_thread`]); else that of a
//!   short-lived thread of ours with its own fs struct;
//! * `/proc/thread-self/fd/CLONE/REL`: any clone, one string per layer;
//! * `FSCONFIG_SET_FD` of the clone itself: layers planned on their own.
//!
//! [`mount_at`] puts all layers in one `mount(2)` `lowerdir=` string from
//! that working directory — the same work the kernel does for a plain
//! overlay mount, plus one clone — and attaches at the target through the
//! target's own fd (`/proc/thread-self/fd/N`), so no path is resolved twice.
//! In a multi-threaded process it hands the clones to the reaper, whose
//! `close` then waits for the RCU grace period instead of the caller.
//!
//! Invariants: the clones live in anonymous mount namespaces and are
//! dissolved when their fds close, after overlay has taken its own private
//! copies; nothing temporary is attached anywhere; no layer byte is written;
//! a working directory inside a clone is never seen by another thread, nor
//! by a signal handler, and the caller's is always given back.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::upper_work::{upper_work_clone, upper_work_mount_data, upper_work_names, UpperWork};
use super::{prepare, retry_on_its_own, Prepared, Request, Share};
use crate::error::{display_path, Error, ErrorKind, Result};
use crate::layer::{OpenedDir, Placement, Role};
use crate::overlayfs::{
    escape_lower, idmapped_clone, push_params_to_mount_data, role_key, OverlayContext,
    FSCONFIG_VALUE_MAX, MOUNT_DATA_MAX,
};
use crate::sys::{self, MountAttrs};

/// Lower layers are read-only, and no symlink is followed inside their
/// clones (layer names are resolved there).
pub(crate) const LAYER_ATTRS: MountAttrs = MountAttrs::READ_ONLY.union(MountAttrs::NOSYMFOLLOW);

/// From this many layers in one clone, naming them relative to a thread's
/// working directory inside it pays for the thread.
const CWD_THREAD_MIN_LAYERS: usize = 24;

/// The clones of one assembly, open until overlay has its own copies.
struct Clones {
    /// One per shared root, in the plan's group order.
    groups: Vec<OwnedFd>,
    /// Per layer planned on its own, its clone (`None` for shared layers);
    /// empty when every layer is shared.
    singles: Vec<Option<OwnedFd>>,
    /// Upper and work reached through one clone (with `--idmap-upper`).
    upper_work: Option<UpperWork>,
}

impl Clones {
    /// Clones and idmaps every shared root and every layer on its own.
    fn make(req: &Request<'_>, prepared: &Prepared) -> Result<Clones> {
        let userns = req.userns.as_fd();
        let mut groups = Vec::with_capacity(prepared.plan.groups.len());
        for root in &prepared.plan.groups {
            let clone = idmapped_clone(
                root.fd.as_fd(),
                root.recursive,
                Some(userns),
                LAYER_ATTRS,
                &root.path,
                "the layers' parent",
            )?;
            req.trace(|| {
                format!(
                    "open_tree(OPEN_TREE_CLONE) + mount_setattr(IDMAP|RDONLY|NOSYMFOLLOW) of shared root {}: fd {}",
                    root.path.display(),
                    clone.as_raw_fd()
                )
            });
            groups.push(clone);
        }
        let mut singles = Vec::with_capacity(prepared.singles.len());
        for dir in &prepared.singles {
            singles.push(dir.as_ref().map(|d| own_clone(req, d)).transpose()?);
        }
        let upper_work = match (&prepared.upper, &prepared.work) {
            (Some(upper), Some(work)) if req.idmap_upper => {
                Some(upper_work_clone(upper, work, Some(userns))?)
            }
            _ => None,
        };
        Ok(Clones {
            groups,
            singles,
            upper_work,
        })
    }

    /// The shared root holding the most layers: the working directory.
    fn busiest_group(&self, prepared: &Prepared) -> Option<usize> {
        // One shared root (the usual plan): no counting.
        if self.groups.len() <= 1 {
            return (!self.groups.is_empty()).then_some(0);
        }
        let mut counts = vec![0usize; self.groups.len()];
        for p in &prepared.plan.placement {
            if let Placement::Shared { group, .. } = p {
                counts[*group] += 1;
            }
        }
        (0..counts.len()).max_by_key(|&g| counts[g])
    }
}

/// A layer on its own (opened once, `O_NOFOLLOW`): cloned through that
/// fd, idmapped read-only.
fn own_clone(req: &Request<'_>, dir: &OpenedDir) -> Result<OwnedFd> {
    let clone = idmapped_clone(
        dir.fd.as_fd(),
        false,
        Some(req.userns.as_fd()),
        LAYER_ATTRS,
        &dir.path,
        dir.role.noun(),
    )?;
    req.trace(|| {
        format!(
            "clone + idmap of {} on its own: fd {}",
            dir.path.display(),
            clone.as_raw_fd()
        )
    });
    Ok(clone)
}

/// How the kernel is to find a path inside a clone.
fn inside(clone: &OwnedFd, rel: &Path, cwd_clone: Option<&OwnedFd>) -> Vec<u8> {
    let here = cwd_clone.is_some_and(|c| c.as_raw_fd() == clone.as_raw_fd());
    let mut out = if here {
        Vec::new()
    } else {
        // thread-self: the calling thread's fd table (the process's), valid
        // even when the process's main thread has exited.
        format!("/proc/thread-self/fd/{}", clone.as_raw_fd()).into_bytes()
    };
    if !rel.as_os_str().is_empty() {
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(rel.as_os_str().as_bytes());
    } else if out.is_empty() {
        out.push(b'.');
    }
    out
}

/// Runs `f` with a working directory at the root of `clone`: the calling
/// thread's, lent for the call, when no other thread shares it; else on a
/// short-lived thread that unshares its fs struct first (the caller's
/// working directory, and every other thread's, stay as they are). With
/// `None`, runs `f` here. `fs` is what [`crate::cwd::fs_struct_of_this_thread`]
/// said, asked when this call needs it if `None` (an answer from earlier in
/// this assembly holds: only this thread could have started a thread
/// sharing its fs struct since, idoverlay starts none that does, and with a
/// trace callback it is asked again: see [`again_if_traced`]).
fn in_clone_cwd<T: Send>(
    clone: Option<&OwnedFd>,
    fs: Option<crate::cwd::FsStruct>,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    let Some(clone) = clone else { return f() };
    let fs = fs.unwrap_or_else(crate::cwd::fs_struct_of_this_thread);
    if fs != crate::cwd::FsStruct::Shared {
        return crate::cwd::with_cwd_in(clone.as_fd(), f)
            .map_err(|e| Error::os("change into the layers' clone", None, e))?;
    }
    crate::threads::run_on_thread("assemble", || {
        sys::unshare_fs()
            .and_then(|()| sys::fchdir(clone.as_fd()))
            .map_err(|e| Error::os("change into the layers' clone", None, e))?;
        f()
    })
}

/// Assembles the overlay and returns the detached overlay mount: first
/// with the layers beneath their common directory, cloned recursively (no
/// mount table read: its cost grows with the node's mounts); when that is
/// refused (a layer on a mount below, a mount there that takes no idmap),
/// grouped by the mount each layer is on, from the table. Bad input is
/// refused the same either way, and answered at once.
pub(crate) fn assemble(req: &Request<'_>) -> Result<OwnedFd> {
    if req.per_layer_clones {
        return assemble_sharing(req, Share::No);
    }
    match assemble_sharing(req, Share::Lexical) {
        Ok(fd) => Ok(fd),
        Err(e) if matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::Permission) => Err(e),
        Err(e) => {
            req.trace(|| format!("beneath one recursive clone: {e}; grouping by mount instead"));
            assemble_sharing(req, Share::ByMount)
        }
    }
}

fn assemble_sharing(req: &Request<'_>, share: Share) -> Result<OwnedFd> {
    let ctx = OverlayContext::new(req.params)?;
    let prepared = prepare(req, share, |_| true)?;
    let mut clones = Clones::make(req, &prepared)?;
    let busiest = clones.busiest_group(&prepared);
    let shared_in_busiest = prepared
        .plan
        .placement
        .iter()
        .filter(|p| matches!(p, Placement::Shared { group, .. } if Some(*group) == busiest))
        .count();
    let cwd = busiest
        .filter(|_| shared_in_busiest >= CWD_THREAD_MIN_LAYERS)
        .map(|g| &clones.groups[g]);

    // Every layer handed over; the ones the kernel refused beneath their
    // shared clone (a symlink on the way, say) come back to be cloned on
    // their own.
    let refused: Vec<usize> = in_clone_cwd(cwd, None, || {
        let mut refused = Vec::new();
        for (i, (path, role)) in prepared.plan.layers.iter().enumerate() {
            match prepared.plan.rel(i) {
                Some((group, rel)) => {
                    let value = inside(&clones.groups[group], rel, cwd);
                    let accepted = value.len() <= FSCONFIG_VALUE_MAX
                        && CString::new(value.clone())
                            .ok()
                            .is_some_and(|v| ctx.set_string(role_key(role), &v).is_ok());
                    if accepted {
                        req.trace(|| {
                            format!(
                                "fsconfig({:?}, {:?}): ok",
                                role_key(role),
                                OsStr::from_bytes(&value)
                            )
                        });
                    } else {
                        req.trace(|| {
                            format!(
                                "{}: refused beneath its shared clone; on its own",
                                path.display()
                            )
                        });
                        refused.push(i);
                        // Order matters: the rest waits for this layer.
                        break;
                    }
                }
                None => {
                    let clone = clones.singles[i].as_ref().expect("planned on its own");
                    ctx.set_layer_fd(role, clone.as_fd(), path)?;
                    req.trace(|| {
                        format!(
                            "fsconfig(SET_FD, {:?}) of {}: ok",
                            role_key(role),
                            path.display()
                        )
                    });
                }
            }
        }
        Ok(refused)
    })?;
    if let Some(&first) = refused.first() {
        // A layer the kernel refused beneath its clone: the rest of the
        // stack, from it on, layer by layer, each on its own if need be.
        drop(ctx);
        let ctx = OverlayContext::new(req.params)?;
        clones
            .singles
            .resize_with(prepared.plan.layers.len(), || None);
        for (i, (path, role)) in prepared.plan.layers.iter().enumerate() {
            let via_string = match prepared.plan.rel(i) {
                Some((group, rel)) if i < first => {
                    CString::new(inside(&clones.groups[group], rel, None)).ok()
                }
                _ => None,
            };
            if let Some(v) = via_string.filter(|v| v.as_bytes().len() <= FSCONFIG_VALUE_MAX) {
                if ctx.set_string(role_key(role), &v).is_ok() {
                    continue;
                }
            }
            if clones.singles[i].is_none() {
                let dir = retry_on_its_own(req, &prepared, i)?;
                clones.singles[i] = Some(own_clone(req, &dir)?);
            }
            let clone = clones.singles[i].as_ref().expect("just made");
            ctx.set_layer_fd(role, clone.as_fd(), path)?;
        }
        return finish(ctx, req, &prepared, clones);
    }
    finish(ctx, req, &prepared, clones)
}

/// Upper and work, then CREATE and `fsmount`.
fn finish(
    ctx: OverlayContext,
    req: &Request<'_>,
    prepared: &Prepared,
    clones: Clones,
) -> Result<OwnedFd> {
    if let (Some(upper), Some(work)) = (&prepared.upper, &prepared.work) {
        match &clones.upper_work {
            Some(pair) => {
                ctx.set_layer_fd(upper.role, pair.upper.as_fd(), &upper.path)?;
                ctx.set_layer_fd(work.role, pair.work.as_fd(), &work.path)?;
            }
            None => {
                ctx.set_layer_fd(upper.role, upper.fd.as_fd(), &upper.path)?;
                ctx.set_layer_fd(work.role, work.fd.as_fd(), &work.path)?;
            }
        }
        req.trace(|| "fsconfig(FSCONFIG_SET_FD) of upperdir and workdir: ok".to_string());
    }
    let mount = super::create(ctx, req, prepared.upper.is_some())?;
    drop(clones);
    Ok(mount)
}

/// What the mounting thread needs, owned: after sending the result back it
/// closes the clones itself, so the RCU grace period the kernel waits for
/// when it dissolves their namespaces, and the thread's own exit, stay off
/// the caller's path.
struct MountJob {
    clones: Clones,
    cwd_group: Option<usize>,
    data: CString,
    target: PathBuf,
    attrs: MountAttrs,
    creator: Option<(u32, u32)>,
}

/// The thread that mounts: started first, so that its creation (and the
/// copy of its fs struct) overlaps the planning on the caller's thread;
/// it then waits for its [`MountJob`].
struct MountThread {
    jobs: std::sync::mpsc::SyncSender<MountJob>,
    results: std::sync::mpsc::Receiver<sys::SysResult<sys::SysResult<()>>>,
}

impl MountThread {
    fn start() -> Result<MountThread> {
        let (jobs, job_rx) = std::sync::mpsc::sync_channel::<MountJob>(1);
        let (result_tx, results) = std::sync::mpsc::sync_channel(1);
        crate::threads::spawn("mount", move || {
            // Its own working directory, before the job even arrives.
            let own_fs = sys::unshare_fs();
            // No job: the caller took another path.
            let Ok(job) = job_rx.recv() else { return };
            let result = (|| {
                own_fs.clone()?;
                if let Some(g) = job.cwd_group {
                    sys::fchdir(job.clones.groups[g].as_fd())?;
                }
                if let Some((uid, gid)) = job.creator {
                    crate::creds::assume_fs_ids(uid, gid)?;
                }
                Ok(sys::mount_overlay_legacy(&job.target, job.attrs, &job.data))
            })();
            let _ = result_tx.send(result);
            drop(job.clones);
        })?;
        Ok(MountThread { jobs, results })
    }

    /// Hands the job over and waits for mount(2)'s result (the outer result
    /// is about the thread).
    fn run(self, job: MountJob) -> Result<sys::SysResult<()>> {
        if self.jobs.send(job).is_err() {
            return Err(Error::internal("thread idoverlay-mount", "died"));
        }
        match self.results.recv() {
            Ok(Ok(mounted)) => Ok(mounted),
            Ok(Err(e)) => Err(Error::os("prepare the mounting thread", None, e)),
            Err(_) => Err(Error::internal("thread idoverlay-mount", "died")),
        }
    }
}

/// Mounts from the calling thread, its working directory lent to the busiest
/// clone for the one `mount(2)` (see [`crate::cwd::with_cwd_in`]). In a process
/// that has other threads anyway the clones then go to the reaper (their
/// close waits for an RCU grace period the caller need not wait for); a
/// single-threaded process closes them itself and stays single-threaded.
/// An error from lending the directory means nothing was mounted, like a
/// refused mount(2).
fn mount_here(job: MountJob, fs: crate::cwd::FsStruct) -> sys::SysResult<()> {
    let MountJob {
        clones,
        cwd_group,
        data,
        target,
        attrs,
        ..
    } = job;
    let mount = || sys::mount_overlay_legacy(&target, attrs, &data);
    let mounted = match cwd_group {
        Some(g) => crate::cwd::with_cwd_in(clones.groups[g].as_fd(), mount).and_then(|m| m),
        None => mount(),
    };
    match fs {
        crate::cwd::FsStruct::Alone => drop(clones),
        _ => crate::reaper::hand_over(Box::new(clones)),
    }
    mounted
}

/// Mounts the overlay straight at `target` with one `mount(2)` whose
/// `lowerdir=` names the layers relative to a working directory inside
/// their clone. Returns the warnings, or `Ok(None)` when this path does not apply (a
/// parameter mount(2) cannot carry, options over one page, the kernel
/// refusing): the caller then assembles and attaches, which also brings
/// back the kernel's own message for a real error.
pub(crate) fn mount_at(
    req: &Request<'_>,
    target: BorrowedFd<'_>,
    target_path: &Path,
) -> Result<Option<(Vec<String>, Option<OwnedFd>)>> {
    if req
        .params
        .iter()
        .any(|p| p.key.contains(',') || p.value.as_deref().is_some_and(|v| v.contains(',')))
    {
        return Ok(None);
    }
    let with_creator = req.upper.is_some() && req.idmap_upper;
    // The calling thread can lend its working directory when no other
    // thread shares it (a single-threaded process, or a thread that
    // unshared CLONE_FS): then no thread is started or woken. Otherwise a
    // thread of our own mounts, and one that assumes the creator's fs ids
    // must be our own anyway.
    let fs = match with_creator {
        true => crate::cwd::FsStruct::Shared,
        false => crate::cwd::fs_struct_of_this_thread(),
    };
    // With an upper where overlay takes layer fds, fsconfig (below) names
    // the layers from the lent cwd or a thread of its own: no mount(2)
    // thread is needed.
    let by_fsconfig = req.upper.is_some()
        && !with_creator
        && req.caps.observed(kernel_compat::Feature::OverlayFdLayers);
    let thread = match fs {
        crate::cwd::FsStruct::Shared if !by_fsconfig => Some(MountThread::start()?),
        _ => None,
    };
    let prepared = prepare(req, Share::Lexical, |_| true)?;
    // The shared root is cloned with the mounts below it; a layer on one of
    // them, or a mount there that takes no idmap, sends us the careful way.
    let clones = match Clones::make(req, &prepared) {
        Ok(clones) => clones,
        Err(e) => {
            req.trace(|| format!("fast path: {e}; assembling instead"));
            return Ok(None);
        }
    };
    let cwd_group = clones.busiest_group(&prepared);
    let cwd = cwd_group.map(|g| &clones.groups[g]);

    let name = |i: usize| -> std::borrow::Cow<'_, [u8]> {
        match prepared.plan.rel(i) {
            // The common case, written straight into the options.
            Some((group, rel)) if Some(group) == cwd_group && !rel.as_os_str().is_empty() => {
                rel.as_os_str().as_bytes().into()
            }
            Some((group, rel)) => inside(&clones.groups[group], rel, cwd).into(),
            None => inside(
                clones.singles[i].as_ref().expect("planned on its own"),
                Path::new(""),
                None,
            )
            .into(),
        }
    };
    let mut data = Vec::with_capacity(16 + prepared.plan.layers.len() * 16);
    data.extend_from_slice(b"lowerdir=");
    let mut seen_data_layer = false;
    for (i, (_, role)) in prepared.plan.layers.iter().enumerate() {
        if i > 0 {
            data.push(b':');
        }
        if role == Role::Data && !seen_data_layer {
            // `::` before the first data-only layer.
            data.push(b':');
            seen_data_layer = true;
        }
        escape_lower(&name(i), &mut data);
    }
    // With an upper, where overlay takes layer fds (6.13+): the layers
    // through fsconfig, the upper and work by fd, so that the mount table
    // shows their real paths (a name in mount(2)'s data shows as given:
    // their /proc/thread-self/fd links, which tell an operator or a tool
    // reading overlay options nothing). The same lowerdir string when it
    // fits one fsconfig value; a longer stack one lowerdir+ per layer,
    // which costs the kernel about 4 us a layer more than one mount(2)
    // string (1.53x the floor at 500 layers instead of 1.27x, measured):
    // paid for a mount table people and tools can read.
    if let (Some(upper), Some(work), true) = (&prepared.upper, &prepared.work, by_fsconfig) {
        let lowers = &data[b"lowerdir=".len()..];
        let lowers = match lowers.len() <= FSCONFIG_VALUE_MAX {
            true => Lowers::One(lowers),
            false => Lowers::Each(
                (0..prepared.plan.layers.len())
                    .map(|i| (prepared.plan.layers.get(i).1, name(i).into_owned()))
                    .collect(),
            ),
        };
        let form = match lowers {
            Lowers::One(_) => "lowerdir, one string",
            Lowers::Each(_) => "lowerdir+ per layer",
        };
        let fs = again_if_traced(req, fs);
        let mounted = mount_by_fsconfig(req, lowers, upper, work, (cwd, fs), target, target_path);
        match fs {
            crate::cwd::FsStruct::Alone => drop(clones),
            _ => crate::reaper::hand_over(Box::new(clones)),
        }
        return match mounted {
            Ok(overlay) => {
                req.trace(|| {
                    format!(
                        "fsconfig({form}, inside the clone) + upper and work by fd, \
                         fsmount, move_mount to the target: ok"
                    )
                });
                // The overlay's own fd: no path to check it by.
                claim_or_take_down(req, upper, work, overlay, target_path)
                    .map(|root| Some((Vec::new(), Some(root))))
            }
            Err(e) => {
                req.trace(|| format!("fsconfig fast path refused ({e}); assembling instead"));
                Ok(None)
            }
        };
    }
    if let (Some(upper), Some(work)) = (&prepared.upper, &prepared.work) {
        data.push(b',');
        data.extend_from_slice(&upper_work_mount_data(upper_work_names(
            upper,
            work,
            clones.upper_work.as_ref(),
        )));
    }
    if push_params_to_mount_data(req.params, &mut data).is_err() {
        req.trace(|| "fast path: an option holds a comma, which mount(2) cannot carry".into());
        return Ok(None);
    }
    if data.len() > MOUNT_DATA_MAX {
        return Ok(None);
    }
    let Ok(data) = CString::new(data) else {
        return Ok(None);
    };
    let creator = match with_creator {
        true => Some(super::mounter_ids(req.userns)?),
        false => None,
    };
    // The target through its own fd: mount(2) resolves no path again.
    let target_via_fd = PathBuf::from(format!("/proc/thread-self/fd/{}", target.as_raw_fd()));
    let job = MountJob {
        clones,
        cwd_group,
        data,
        target: target_via_fd,
        attrs: req.attrs,
        creator,
    };
    // Never lend a cwd another thread shares.
    let fs = match thread {
        Some(_) => fs,
        None => again_if_traced(req, fs),
    };
    let thread = match (thread, fs) {
        (None, crate::cwd::FsStruct::Shared) => Some(MountThread::start()?),
        (thread, _) => thread,
    };
    let mounted = match thread {
        Some(thread) => thread.run(job)?,
        None => mount_here(job, fs),
    };
    match mounted {
        Ok(()) => {}
        Err(e) => {
            req.trace(|| format!("mount(2) fast path refused ({e}); assembling instead"));
            return Ok(None);
        }
    }
    req.trace(|| {
        let from = match fs {
            crate::cwd::FsStruct::Shared => "from a thread of its own",
            crate::cwd::FsStruct::Alone | crate::cwd::FsStruct::Own => {
                "from this thread, its working directory lent"
            }
        };
        format!("mount(2) at the target, layers named inside their clone, {from}: ok")
    });
    after_mount(req, &prepared, target, target_path).map(Some)
}

/// `fs` as asked at the start of this mount, or asked again when a trace
/// is set: the caller's trace callback ran in between, and it could have
/// started a thread that shares this thread's fs struct.
fn again_if_traced(req: &Request<'_>, fs: crate::cwd::FsStruct) -> crate::cwd::FsStruct {
    match (req.trace, fs) {
        (Some(_), crate::cwd::FsStruct::Alone | crate::cwd::FsStruct::Own) => {
            crate::cwd::fs_struct_of_this_thread()
        }
        _ => fs,
    }
}

/// The fsconfig form of the fast path: the layers as names inside their
/// clone, one `lowerdir` string or one `lowerdir+`/`datadir+` each
/// (resolved now, from a working directory at the clone's root, lent or on
/// a thread of its own), the very upper and work
/// dirs that were checked by fd, `fsmount`, and `move_mount` onto the
/// target's fd. Any refusal means nothing was attached: the caller then
/// assembles the careful way, which brings back the kernel's message.
fn mount_by_fsconfig(
    req: &Request<'_>,
    lowers: Lowers<'_>,
    upper: &OpenedDir,
    work: &OpenedDir,
    (cwd, fs): (Option<&OwnedFd>, crate::cwd::FsStruct),
    target: BorrowedFd<'_>,
    target_path: &Path,
) -> Result<OwnedFd> {
    let ctx = OverlayContext::new(req.params)?;
    let nul = |_| Error::invalid_path("layer", &upper.path, "contains a NUL byte");
    let ctx = match lowers {
        Lowers::One(lowers) => {
            let lowers = CString::new(lowers).map_err(nul)?;
            in_clone_cwd(cwd, Some(fs), move || {
                ctx.set_string(c"lowerdir", &lowers)?;
                Ok(ctx)
            })?
        }
        Lowers::Each(names) => {
            let names = names
                .into_iter()
                .map(|(role, name)| CString::new(name).map(|n| (role, n)))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(nul)?;
            in_clone_cwd(cwd, Some(fs), move || {
                for (role, name) in &names {
                    ctx.set_string(role_key(*role), name)?;
                }
                Ok(ctx)
            })?
        }
    };
    super::upper_work::UpperWorkRefs::new(upper, work, None).configure(&ctx, req)?;
    let overlay = ctx.create_and_mount(req.attrs, true)?;
    sys::move_mount(overlay.as_fd(), target, "".as_ref())
        .map_err(|e| Error::os("attach the overlay at", Some(target_path), e))?;
    Ok(overlay)
}

/// Claims the pair for the overlay just attached whose root `root` is
/// ([`super::in_use::claim`]); a refusal takes that overlay out again,
/// through its own fd, before it returns. Returns `root`.
fn claim_or_take_down(
    req: &Request<'_>,
    upper: &OpenedDir,
    work: &OpenedDir,
    root: OwnedFd,
    target_path: &Path,
) -> Result<OwnedFd> {
    let upper_owner = req
        .kept
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .upper_owner;
    // Attached already (fsmount and move_mount, or mount(2) itself).
    let ns = super::in_use::this_mount_ns_id();
    match super::in_use::claim(upper, work, root.as_fd(), upper_owner, ns, || Ok(())) {
        Ok(()) => Ok(root),
        Err(refusal) => Err(taken_down(&root, target_path, refusal)),
    }
}

/// Takes the overlay just made, whose root `root` is, out again through
/// its own fd, and returns `refusal` (or why it could not be taken out).
fn taken_down(root: &OwnedFd, target_path: &Path, refusal: Error) -> Error {
    match sys::detach_root_of(root.as_fd()) {
        Ok(()) => refusal,
        Err(e) => Error::os("unmount the overlay just made", Some(target_path), e),
    }
}

/// The lower and data layers for fsconfig: one `lowerdir` string when it
/// fits one value, else one `lowerdir+`/`datadir+` name per layer.
enum Lowers<'a> {
    One(&'a [u8]),
    Each(Vec<(Role, Vec<u8>)>),
}

/// After the mount(2) at the target: overlay falls back to a read-only
/// superblock when it cannot write its work dir, and mount(2) does not say
/// so; and the upper and work dirs are claimed for this overlay
/// ([`in_use::claim`]). Either refusal takes the overlay down again. Only
/// ever the overlay this call mounted: the mount the target path leads to
/// now must be an overlay's whole root, attached to the target fd's own
/// mount, where the target fd's directory is (checked before and after);
/// else it is left alone, and a warning says it could not be checked.
/// Returns the warnings.
fn after_mount(
    req: &Request<'_>,
    prepared: &Prepared<'_>,
    target: BorrowedFd<'_>,
    target_path: &Path,
) -> Result<(Vec<String>, Option<OwnedFd>)> {
    let (Some(upper), Some(work)) = (&prepared.upper, &prepared.work) else {
        return Ok((Vec::new(), None));
    };
    let unchecked = || {
        vec![format!(
            "could not check the overlay mounted at {}: that path no longer leads to it \
             (renamed meanwhile?), so neither that it is writable (overlay mounts read-only \
             when it cannot write its work dir) nor that its upper dir serves it alone",
            display_path(target_path)
        )]
    };
    let Ok(root) = sys::open_dir_path(sys::cwd(), target_path) else {
        return Ok((unchecked(), None));
    };
    if !is_the_overlay_just_mounted(root.as_fd(), target) {
        return Ok((unchecked(), None));
    }
    if !req.attrs.contains(MountAttrs::READ_ONLY) {
        if let Err(refusal) = crate::overlayfs::check_writable(&root) {
            return Err(taken_down(&root, target_path, refusal));
        }
    }
    claim_or_take_down(req, upper, work, root, target_path).map(|root| (Vec::new(), Some(root)))
}

/// Whether `root` is the root of a whole overlay mounted right on the
/// directory `target` is (attached to `target`'s mount, at its path, the
/// path read before and after): the overlay mount(2) at
/// `/proc/thread-self/fd/TARGET` just made, and not whatever a rename put
/// at the target's path since. From `statmount` (6.8+), else the mount
/// table.
pub(crate) fn is_the_overlay_just_mounted(root: BorrowedFd<'_>, target: BorrowedFd<'_>) -> bool {
    let Some(at) = sys::fd_path(target) else {
        return false;
    };
    if crate::fs_type::of_fd(root) != "overlay" {
        return false;
    }
    let attached_there = match (
        sys::stat_fd_unique_mnt_id(root).and_then(sys::statmount),
        sys::stat_fd_unique_mnt_id(target),
    ) {
        (Some(ours), Some(target_mount)) => {
            ours.parent_id == target_mount && ours.point == at && ours.root == Path::new("/")
        }
        _ => {
            let (Ok(ours), Ok(target_st)) = (sys::stat_fd(root), sys::stat_fd(target)) else {
                return false;
            };
            let Ok(table) = crate::mountinfo::read_self() else {
                return false;
            };
            table.iter().any(|m| {
                Some(m.mount_id) == ours.mnt_id
                    && Some(m.parent_id) == target_st.mnt_id
                    && m.mount_point == at
                    && m.root == Path::new("/")
            })
        }
    };
    attached_there && sys::fd_path(target).as_deref() == Some(at.as_path())
}
