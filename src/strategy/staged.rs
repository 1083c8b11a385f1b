//! What `private-ns` and `host-staged` share: idmapped clones attached in a
//! staging directory, and the overlay built from their *paths*, for kernels
//! whose overlay cannot take detached layers as fds.
//!
//! Names are short and plain (`0`, `1/snapshots/12/fs`), relative to the
//! calling thread's working directory, which is the staging directory
//! itself (each strategy runs this on a thread of its own whose working
//! directory nobody else shares): no path above the staging directory is
//! ever looked up again. A name is shared-parent relative only when every
//! component is made of `[A-Za-z0-9._+@-]`, so it never needs overlay's
//! escaping and cannot be misparsed; anything else gets a clone of its own
//! under a numeric name. Group clones carry `MOUNT_ATTR_NOSYMFOLLOW`, so no
//! symlink can redirect overlay's own lookup of a name below them. The
//! upper and work dirs are handed over as the very directories opened and
//! checked ([`UpperWorkRefs`]), never by a name.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use kernel_compat::Feature;

use super::detached::LAYER_ATTRS;
use super::upper_work::UpperWorkRefs;
use super::{prepare, retry_on_its_own, Prepared, Request, Share};
use crate::error::{Error, Result};
use crate::layer::OpenedDir;
use crate::overlayfs::{
    idmapped_clone, push_params_to_mount_data, role_key, OverlayContext, FSCONFIG_VALUE_MAX,
    MOUNT_DATA_MAX,
};
use crate::sys::{self, MountAttrs};

/// A directory where clones are attached: the calling thread's working
/// directory, so staged names are relative to it.
pub(crate) struct Stage<'a> {
    /// The staging directory.
    pub dir: BorrowedFd<'a>,
    /// Mounts attached so far, oldest first, each with an fd of its own
    /// root: cleanup unmounts exactly these, through those fds.
    pub attached: Vec<(String, OwnedFd)>,
    /// Told before each name is attached (host-staged records it first).
    pub before_attach: &'a mut dyn FnMut(&str) -> Result<()>,
    /// Runs a clone of a layer the plan did not foresee (the kernel refused
    /// it beneath its shared root) where the layers are: in the caller's
    /// mount namespace, whatever namespace the stage is in.
    pub at_home: &'a AtHome<'a>,
}

/// Runs a clone (the closure) in the caller's mount namespace.
pub(crate) type AtHome<'a> = dyn Fn(&mut dyn FnMut() -> Result<OwnedFd>) -> Result<OwnedFd> + 'a;

/// Every clone staging needs, made in the caller's mount namespace before
/// anything is staged (before 6.15 only a mount of the caller's namespace
/// can be cloned).
pub(crate) struct Clones {
    /// Per shared root, its idmapped clone.
    pub roots: Vec<OwnedFd>,
    /// Per layer planned on its own, its idmapped clone.
    pub singles: Vec<Option<OwnedFd>>,
    /// Upper and work through one clone (idmapped for an idmapped upper),
    /// when they are staged too.
    pub upper_work: Option<super::upper_work::UpperWork>,
}

impl Stage<'_> {
    fn attach(&mut self, mount: &OwnedFd, name: &str) -> Result<()> {
        (self.before_attach)(name)?;
        sys::mkdir(self.dir, Path::new(name), 0o700)
            .map_err(|e| Error::os("create staging mount point", Some(Path::new(name)), e))?;
        // Kept before the attach: a mount that could not be kept track of
        // is not made.
        let kept = sys::dup(mount.as_fd())
            .map_err(|e| Error::os("keep staged clone", Some(Path::new(name)), e))?;
        sys::move_mount(mount.as_fd(), self.dir, Path::new(name))
            .map_err(|e| Error::os("attach staged clone at", Some(Path::new(name)), e))?;
        self.attached.push((name.to_string(), kept));
        Ok(())
    }
}

/// A staged name, and a path below it.
fn staged_name(name: &str, rel: &Path) -> PathBuf {
    let mut p = PathBuf::from(name);
    if !rel.as_os_str().is_empty() {
        p.push(rel);
    }
    p
}

/// Whether a relative path can be part of a staged name as is.
pub(crate) fn plain_rel(rel: &Path) -> bool {
    rel.as_os_str().len() <= 200
        && rel.components().all(|c| match c {
            Component::Normal(name) => name
                .as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"._+@-".contains(b)),
            _ => false,
        })
}

/// Plans the layers, opens and checks them with upper and work, and makes
/// every clone staging needs ([`Clones`]): before anything is staged, so bad
/// input changes nothing. The layers share one root cloned recursively,
/// without reading the mount table (whose size is the node's), when the
/// kernel idmaps every mount below it; else they are grouped by mount.
/// `stage_upper_work`: upper and work go through a clone too (staging in
/// another namespace).
pub(crate) fn prepare_for_staging<'a>(
    req: &Request<'a>,
    stage_upper_work: bool,
) -> Result<(Prepared<'a>, Clones)> {
    let prepared = plan_for_staging(req, true)?;
    let prepared = match clone_roots(req, &prepared) {
        Ok(roots) => return finish_clones(req, prepared, roots, stage_upper_work),
        Err(e) if prepared.plan.groups.iter().any(|g| g.recursive) => {
            req.trace(|| {
                format!("the layers' shared root, cloned with its submounts: {e}; by mount instead")
            });
            plan_for_staging(req, false)?
        }
        Err(e) => return Err(e),
    };
    let roots = clone_roots(req, &prepared)?;
    finish_clones(req, prepared, roots, stage_upper_work)
}

/// Per shared root, its idmapped clone (with the mounts below it, when
/// the plan was lexical).
fn clone_roots(req: &Request<'_>, prepared: &Prepared<'_>) -> Result<Vec<OwnedFd>> {
    prepared
        .plan
        .groups
        .iter()
        .map(|root| {
            idmapped_clone(
                root.fd.as_fd(),
                root.recursive,
                Some(req.userns.as_fd()),
                LAYER_ATTRS,
                &root.path,
                "the layers' parent",
            )
        })
        .collect()
}

fn finish_clones<'a>(
    req: &Request<'a>,
    prepared: Prepared<'a>,
    roots: Vec<OwnedFd>,
    stage_upper_work: bool,
) -> Result<(Prepared<'a>, Clones)> {
    let singles = prepared
        .singles
        .iter()
        .map(|d| d.as_ref().map(|d| clone_alone(req, d)).transpose())
        .collect::<Result<Vec<_>>>()?;
    let upper_work = match (&prepared.upper, &prepared.work) {
        (Some(u), Some(w)) if req.idmap_upper || stage_upper_work => {
            let userns = req.idmap_upper.then(|| req.userns.as_fd());
            Some(super::upper_work::upper_work_clone(u, w, userns)?)
        }
        _ => None,
    };
    Ok((
        prepared,
        Clones {
            roots,
            singles,
            upper_work,
        },
    ))
}

/// A layer on its own: its idmapped clone.
fn clone_alone(req: &Request<'_>, dir: &OpenedDir) -> Result<OwnedFd> {
    idmapped_clone(
        dir.fd.as_fd(),
        false,
        Some(req.userns.as_fd()),
        LAYER_ATTRS,
        &dir.path,
        dir.role.noun(),
    )
}

/// The plan and the opened directories, lexical (one shared root) or by mount.
fn plan_for_staging<'a>(req: &Request<'a>, lexical: bool) -> Result<Prepared<'a>> {
    let plus = req.caps.observed(Feature::OverlayLowerdirPlus);
    if !plus && !req.data_lowers.is_empty() {
        return Err(Error::from(crate::error::Repr::Unsupported {
            what: "data-only layers".into(),
            needs: format!("kernel 6.7 ({})", Feature::OverlayLowerdirPlus),
            kernel: req.caps.kernel.clone(),
            hint: Some("mount without data layers, or on a newer kernel".into()),
            path: None,
        }));
    }
    // With lowerdir+ each layer is its own string and shared-root names fit;
    // the one-string interface needs the shortest names: a clone per layer.
    let share = match (plus, lexical) {
        (true, true) => Share::Lexical,
        (true, false) => Share::ByMount,
        (false, _) => Share::No,
    };
    prepare(req, share, plain_rel)
}

/// Attaches idmapped clones of the `prepared` layers in `stage`, then
/// builds the overlay from their staged names. Returns the detached
/// overlay. Runs on a thread whose working directory is the stage.
pub(crate) fn build(
    req: &Request<'_>,
    ctx: OverlayContext,
    stage: &mut Stage<'_>,
    prepared: &Prepared<'_>,
    clones: Clones,
) -> Result<OwnedFd> {
    let plus = req.caps.observed(Feature::OverlayLowerdirPlus);
    let Clones {
        roots: root_clones,
        mut singles,
        upper_work: upper_work_clone,
    } = clones;
    let mut next = 0usize;
    let mut new_name = || {
        next += 1;
        (next - 1).to_string()
    };
    let mut roots = Vec::with_capacity(prepared.plan.groups.len());
    for (root, clone) in prepared.plan.groups.iter().zip(&root_clones) {
        let name = new_name();
        stage.attach(clone, &name)?;
        req.trace(|| {
            format!(
                "clone + idmap of shared root {} staged as {name}",
                root.path.display()
            )
        });
        roots.push(name);
    }
    // A layer on its own: opened once (O_NOFOLLOW), cloned, staged.
    let mut stage_alone =
        |dir: &OpenedDir, clone: OwnedFd, stage: &mut Stage<'_>| -> Result<PathBuf> {
            let name = new_name();
            stage.attach(&clone, &name)?;
            req.trace(|| format!("clone + idmap of {} staged as {name}", dir.path.display()));
            Ok(staged_name(&name, Path::new("")))
        };

    // Upper and work: the very directories opened and checked. An
    // idmapped pair's clone is attached too: before 6.15 overlay takes
    // only mounts of the caller's namespace.
    let upper_work = match (&prepared.upper, &prepared.work) {
        (Some(upper), Some(work)) => {
            let refs = UpperWorkRefs::new(upper, work, upper_work_clone);
            if let Some(pair) = &refs.cloned {
                stage.attach(&pair.clone, "u")?;
            }
            Some(refs)
        }
        _ => None,
    };

    if plus {
        // Every layer beneath a shared root (the usual case): one mount(2)
        // with one `lowerdir=` string, as a plain overlay mount does, when
        // it fits in one page; 500 `fsconfig` calls cost about a
        // millisecond more. Refused, it is built layer by layer below,
        // which also brings back the kernel's own message.
        if let Some(lowerdir) = one_lowerdir(prepared, &roots) {
            match mount_legacy(req, stage, &lowerdir, upper_work.as_ref(), true)? {
                Some(overlay) => return Ok(overlay),
                None => req.trace(|| "mount(2) refused it; layer by layer".to_string()),
            }
        }
        req.trace(|| "overlay from lowerdir+ strings".to_string());
        let mut retried;
        for (i, (path, role)) in prepared.plan.layers.iter().enumerate() {
            if let Some((group, rel)) = prepared.plan.rel(i) {
                let name = staged_name(&roots[group], rel);
                if name.as_os_str().len() <= FSCONFIG_VALUE_MAX {
                    let value = CString::new(name.as_os_str().as_bytes()).expect("plain names");
                    match ctx.set_string(role_key(role), &value) {
                        Ok(()) => continue,
                        Err(e) => req.trace(|| {
                            format!(
                                "{}: refused as {} ({e}); on its own",
                                path.display(),
                                name.display()
                            )
                        }),
                    }
                }
            }
            let (dir, clone) = match (
                prepared.single(i),
                singles.get_mut(i).and_then(Option::take),
            ) {
                (Some(dir), Some(clone)) => (dir, clone),
                _ => {
                    // Opened and cloned where the layers are.
                    let mut opened = None;
                    let clone = (stage.at_home)(&mut || {
                        let dir = retry_on_its_own(req, prepared, i)?;
                        let clone = clone_alone(req, &dir);
                        opened = Some(dir);
                        clone
                    })?;
                    retried = opened;
                    (retried.as_ref().expect("just opened"), clone)
                }
            };
            let name = stage_alone(dir, clone, stage)?;
            let value = CString::new(name.as_os_str().as_bytes()).expect("plain names");
            ctx.set_string(role_key(role), &value)
                .map_err(|e| e.with_path(path))?;
        }
        if let Some(refs) = &upper_work {
            refs.configure(&ctx, req)?;
        }
        return super::create(ctx, req, upper_work.is_some());
    }

    let mut names = Vec::with_capacity(prepared.plan.layers.len());
    for (dir, clone) in prepared.singles.iter().zip(singles) {
        names.push(stage_alone(
            dir.as_ref().expect("no shared roots without lowerdir+"),
            clone.expect("cloned with its layer"),
            stage,
        )?);
    }
    req.trace(|| {
        format!(
            "staged {} clone(s) for {} layer(s)",
            stage.attached.len(),
            names.len()
        )
    });
    // One `lowerdir=` string: through fsconfig when it fits in one value
    // (the kernel's messages then come back), else through mount(2).
    let lowerdir = names
        .iter()
        .map(|n| n.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":");
    if lowerdir.len() <= FSCONFIG_VALUE_MAX {
        req.trace(|| {
            format!(
                "overlay from one lowerdir= string via fsconfig ({} bytes)",
                lowerdir.len()
            )
        });
        ctx.set_string(c"lowerdir", &CString::new(lowerdir).expect("plain names"))?;
        if let Some(refs) = &upper_work {
            refs.configure(&ctx, req)?;
        }
        return super::create(ctx, req, upper_work.is_some());
    }
    req.trace(|| {
        format!(
            "overlay from one lowerdir= string via mount(2) ({} bytes)",
            lowerdir.len()
        )
    });
    Ok(
        mount_legacy(req, stage, &lowerdir, upper_work.as_ref(), false)?
            .expect("errors are returned when not soft"),
    )
}

/// The `lowerdir=` value naming every layer beneath its staged shared
/// root (`::` before the data-only layers), when every layer is one and
/// the value fits in mount(2)'s page with room for the rest.
fn one_lowerdir(prepared: &Prepared<'_>, roots: &[String]) -> Option<String> {
    let mut out = String::new();
    let mut seen_data = false;
    for (i, (_, role)) in prepared.plan.layers.iter().enumerate() {
        let (group, rel) = prepared.plan.rel(i)?;
        if i > 0 {
            out.push(':');
        }
        if role == crate::layer::Role::Data && !seen_data {
            out.push(':');
            seen_data = true;
        }
        out.push_str(staged_name(&roots[group], rel).to_str()?);
    }
    (out.len() + 512 <= MOUNT_DATA_MAX).then_some(out)
}

/// The overlay through mount(2) (one page of options), attached at `o` in
/// the stage, then cloned into a detached mount. `soft`: a refusal is
/// `Ok(None)` (the caller builds it another way), not an error.
fn mount_legacy(
    req: &Request<'_>,
    stage: &mut Stage<'_>,
    lowerdir: &str,
    upper_work: Option<&UpperWorkRefs<'_>>,
    soft: bool,
) -> Result<Option<OwnedFd>> {
    let has_upper = upper_work.is_some();
    let mut data = format!("lowerdir={lowerdir}").into_bytes();
    if let Some(refs) = upper_work {
        data.push(b',');
        data.extend_from_slice(&refs.mount_data());
    }
    if let Err(p) = push_params_to_mount_data(req.params, &mut data) {
        if soft {
            return Ok(None);
        }
        return Err(Error::invalid(
            "option",
            &p.key,
            "contains a comma, which mount(2) options cannot carry",
        ));
    }
    if data.len() > MOUNT_DATA_MAX {
        if soft {
            return Ok(None);
        }
        return Err(Error::invalid(
            "layers",
            format!("{} layers", lowerdir.split(':').count()),
            format!(
                "need {} bytes of mount options on this kernel (no lowerdir+ before 6.7), \
                 more than the {MOUNT_DATA_MAX} mount(2) takes; use fewer layers, or the \
                 private-ns strategy",
                data.len()
            ),
        ));
    }
    (stage.before_attach)("o")?;
    match sys::mkdir(stage.dir, Path::new("o"), 0o700) {
        Ok(()) => {}
        // Made by an earlier, refused try.
        Err(e) if e.errno == libc::EEXIST => {}
        Err(e) => {
            return Err(Error::os(
                "create staging mount point",
                Some(Path::new("o")),
                e,
            ))
        }
    }
    let target = Path::new("./o");
    let data_c =
        CString::new(data).map_err(|_| Error::invalid("options", "", "contain a NUL byte"))?;
    let read_only = req.attrs.contains(MountAttrs::READ_ONLY);
    let mounted = super::as_creator(req, has_upper, || {
        Ok(sys::mount_legacy(
            c"overlay", target, c"overlay", read_only, &data_c,
        ))
    })?;
    if let Err(e) = mounted {
        if soft {
            return Ok(None);
        }
        let hint = match e.errno {
            libc::ELOOP => "a layer lies inside another layer",
            _ => "the kernel log (dmesg) says why (mount(2) returns no message)",
        };
        return Err(Error::os("mount the overlay (mount(2))", None, e).with_hint(hint));
    }
    // The overlay just mounted at `o` in the stage (nobody else can reach
    // it): kept by an fd of its root, for cleanup.
    let root = sys::open_dir_path(stage.dir, Path::new("o"))
        .map_err(|e| Error::os("open the staged overlay", Some(target), e))?;
    stage.attached.push(("o".into(), root));
    let overlay = sys::clone_mount(stage.dir, Path::new("o"))
        .map_err(|e| Error::os("clone the staged overlay", Some(target), e))?;
    let attrs = req.attrs - MountAttrs::READ_ONLY;
    if !attrs.is_empty() {
        sys::mount_setattr(overlay.as_fd(), None, attrs)
            .map_err(|e| Error::os("set mount flags on the overlay", None, e))?;
    }
    if has_upper && !req.attrs.contains(MountAttrs::READ_ONLY) {
        crate::overlayfs::check_writable(&overlay)?;
    }
    Ok(Some(overlay))
}
