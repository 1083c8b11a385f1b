//! The `detached` strategy (kernel 6.15+): idmapped clones that never enter
//! any mount tree, handed to overlay as file descriptors.
//!
//! Data flow: open every layer once → group layers below one directory on
//! one mount → per group `open_tree(OPEN_TREE_CLONE)` + `mount_setattr(IDMAP
//! | RDONLY)` → each layer opened beneath its group's clone (no symlink, no
//! mount crossing, same inode as opened at first) → `fsconfig(SET_FD,
//! "lowerdir+")` → `FSCONFIG_CMD_CREATE` → `fsmount`.
//!
//! Invariants: the clones live in anonymous mount namespaces and are
//! dissolved when their fds close, after CREATE has taken overlay's own
//! private copies; nothing is attached anywhere; no layer byte is written.

use std::os::fd::{AsFd, OwnedFd};

use super::{idmap_error, open_layers, OverlayContext, Request};
use crate::error::{Error, Result};
use crate::layer::{self, GroupRoot, OpenedDir};
use crate::sys::{self, MountAttrs};

const LAYER_ATTRS: MountAttrs = MountAttrs {
    read_only: true,
    nosuid: false,
    nodev: false,
    noexec: false,
    nosymfollow: false,
    noatime: false,
    nodiratime: false,
};

/// Assembles the overlay and returns the detached overlay mount.
pub(crate) fn assemble(req: &Request<'_>) -> Result<OwnedFd> {
    let ctx = OverlayContext::new(req)?;
    let opened = open_layers(req)?;
    let userns = req.userns.as_fd();

    // The clone fds must stay open until CREATE: closing one dissolves its
    // anonymous namespace and overlay can no longer clone from it.
    let mut clones: Vec<OwnedFd> = Vec::new();
    let groups = req.groups(&opened.layers, |_| true);
    req.trace(|| {
        format!(
            "detached: {} layer(s) in {} clone group(s)",
            opened.layers.len(),
            groups.len()
        )
    });

    // Per layer, the fd overlay will get: an index into `clones` (the
    // layer is a clone's root) or its own fd beneath a clone.
    let mut sources: Vec<Option<LayerFd>> = (0..opened.layers.len()).map(|_| None).collect();
    for group in &groups {
        match &group.root {
            GroupRoot::Own(i) => {
                let dir = &opened.layers[*i];
                clones.push(idmapped_clone(dir, userns, LAYER_ATTRS)?);
                sources[*i] = Some(LayerFd::CloneRoot(clones.len() - 1));
                req.trace(|| {
                    format!(
                        "open_tree(OPEN_TREE_CLONE) + mount_setattr(IDMAP|RDONLY) of {}: ok",
                        dir.path.display()
                    )
                });
            }
            GroupRoot::Shared { path, fd } => {
                let clone = sys::clone_mount(fd.as_fd(), "".as_ref())
                    .map_err(|e| Error::os("clone layer parent", Some(path), e))?;
                sys::mount_setattr(clone.as_fd(), Some(userns), LAYER_ATTRS)
                    .map_err(|e| idmap_error(&opened.layers[group.members[0].layer], e))?;
                req.trace(|| {
                    format!(
                        "clone + idmap shared parent {} for {} layer(s)",
                        path.display(),
                        group.members.len()
                    )
                });
                clones.push(clone);
                let clone_index = clones.len() - 1;
                for member in &group.members {
                    let dir = &opened.layers[member.layer];
                    sources[member.layer] = Some(if member.rel.as_os_str().is_empty() {
                        LayerFd::CloneRoot(clone_index)
                    } else {
                        match open_beneath(&clones[clone_index], dir, &member.rel) {
                            Some(fd) => LayerFd::Own(fd),
                            None => {
                                // Not reachable as the same directory without a
                                // symlink or mount crossing: clone it on its own.
                                req.trace(|| {
                                    format!(
                                        "{}: own clone (not reachable beneath parent)",
                                        dir.path.display()
                                    )
                                });
                                clones.push(idmapped_clone(dir, userns, LAYER_ATTRS)?);
                                LayerFd::CloneRoot(clones.len() - 1)
                            }
                        }
                    });
                }
            }
        }
    }

    for (dir, source) in opened.layers.iter().zip(sources) {
        let source = source.expect("every layer belongs to a group");
        let fd = match &source {
            LayerFd::CloneRoot(i) => clones[*i].as_fd(),
            LayerFd::Own(fd) => fd.as_fd(),
        };
        ctx.set_layer_fd(dir.role, fd, &dir.path)?;
        req.trace(|| {
            format!(
                "fsconfig(FSCONFIG_SET_FD, {:?}) of {}: ok",
                super::role_key(dir.role),
                dir.path.display()
            )
        });
        // An fd beneath a clone may close now: overlay holds the path, and
        // the clone it lives on stays open.
        drop(source);
    }

    let upper_clone;
    if let (Some(upper), Some(work)) = (&opened.upper, &opened.work) {
        if req.idmap_upper {
            let (clone, upper_fd, work_fd) = idmapped_upper_work(upper, work, userns)?;
            ctx.set_layer_fd(upper.role, upper_fd.as_fd(), &upper.path)?;
            ctx.set_layer_fd(work.role, work_fd.as_fd(), &work.path)?;
            upper_clone = Some(clone);
        } else {
            ctx.set_layer_fd(upper.role, upper.fd.as_fd(), &upper.path)?;
            ctx.set_layer_fd(work.role, work.fd.as_fd(), &work.path)?;
            req.trace(|| "fsconfig(FSCONFIG_SET_FD) of upperdir and workdir: ok".to_string());
            upper_clone = None;
        }
    } else {
        upper_clone = None;
    }

    let mount = super::create(ctx, req, opened.upper.is_some())?;
    req.trace(|| {
        format!(
            "overlay created from {} clone(s)",
            clones.len() + usize::from(upper_clone.is_some())
        )
    });
    drop(upper_clone);
    drop(clones);
    Ok(mount)
}

enum LayerFd {
    CloneRoot(usize),
    Own(OwnedFd),
}

/// `open_tree(OPEN_TREE_CLONE)` of the directory itself, idmapped.
fn idmapped_clone(
    dir: &OpenedDir,
    userns: std::os::fd::BorrowedFd<'_>,
    attrs: MountAttrs,
) -> Result<OwnedFd> {
    let clone = sys::clone_mount(dir.fd.as_fd(), "".as_ref())
        .map_err(|e| Error::os(format!("clone {}", dir.role.noun()), Some(&dir.path), e))?;
    sys::mount_setattr(clone.as_fd(), Some(userns), attrs).map_err(|e| idmap_error(dir, e))?;
    Ok(clone)
}

/// The layer beneath a clone, if it is reachable there without a symlink or
/// mount crossing and is the very directory that was opened at first.
fn open_beneath(clone: &OwnedFd, dir: &OpenedDir, rel: &std::path::Path) -> Option<OwnedFd> {
    let fd = sys::open_dir_beneath(clone.as_fd(), rel).ok()?;
    let st = sys::stat_fd(fd.as_fd()).ok()?;
    st.same_inode(&dir.stat).then_some(fd)
}

/// Upper and work through one idmapped (writable) clone of a directory
/// above both: overlay needs them on one mount.
fn idmapped_upper_work(
    upper: &OpenedDir,
    work: &OpenedDir,
    userns: std::os::fd::BorrowedFd<'_>,
) -> Result<(OwnedFd, OwnedFd, OwnedFd)> {
    let pair = [
        layer::open_dir(&upper.path, upper.role)?,
        layer::open_dir(&work.path, work.role)?,
    ];
    let groups = layer::plan_groups(&pair, |_| true);
    let [group] = &groups[..] else {
        return Err(Error::invalid_path(
            "upper dir",
            &upper.path,
            "with --idmap-upper, upper and work dirs must sit below one directory on one mount",
        ));
    };
    let GroupRoot::Shared { path, fd } = &group.root else {
        unreachable!("two directories form a shared group or two groups");
    };
    let clone = sys::clone_mount(fd.as_fd(), "".as_ref())
        .map_err(|e| Error::os("clone upper/work parent", Some(path), e))?;
    sys::mount_setattr(clone.as_fd(), Some(userns), MountAttrs::default())
        .map_err(|e| idmap_error(upper, e))?;
    let mut fds = Vec::new();
    for (dir, member) in pair.iter().zip(&group.members) {
        let fd = open_beneath(&clone, dir, &member.rel).ok_or_else(|| {
            Error::invalid_path(
                dir.role.noun(),
                &dir.path,
                "is not reachable below its parent without a symlink or mount crossing",
            )
        })?;
        fds.push(fd);
    }
    let work_fd = fds.pop().expect("two fds");
    let upper_fd = fds.pop().expect("two fds");
    Ok((clone, upper_fd, work_fd))
}
