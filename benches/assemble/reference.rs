//! containerd's temporary-mount-per-layer algorithm and the kernel's minimum (bench code only).

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------------------
// The containerd-style reference (bench code only)
// ---------------------------------------------------------------------------

/// containerd 2.0-rc's algorithm: per layer, a temp dir and an attached
/// idmapped clone on it; the overlay by those paths; then every temp mount
/// detached and every temp dir removed (the fixed rc.6 cleanup: MNT_DETACH,
/// rmdir only). Names are relative to the cwd (the slot's staging dir).
pub(crate) fn reference_mount(
    layers: &[CString],
    temps: &[CString],
    data: &CString,
    userns: BorrowedFd<'_>,
    target: &Path,
) -> Result<(), String> {
    std::fs::create_dir("t").map_err(|e| format!("mkdir t: {e}"))?;
    let mut attached = 0;
    let mut made = 0;
    let mut result = Ok(());
    for (layer, temp) in layers.iter().zip(temps) {
        if let Err(e) = rustix::fs::mkdir(temp.as_c_str(), 0o700.into()) {
            result = Err(format!("mkdir {temp:?}: {e}"));
            break;
        }
        made += 1;
        if let Err(e) = attach_idmapped(layer, temp, userns) {
            result = Err(e);
            break;
        }
        attached += 1;
    }
    if result.is_ok() {
        result = overlay_mount(target, data).map_err(|e| format!("mount(2) overlay: {e}"));
    }
    let cleanup = reference_cleanup(&temps[..made], attached);
    result.and(cleanup)
}

/// open_tree(CLONE) + mount_setattr(IDMAP) + move_mount onto `temp`.
pub(crate) fn attach_idmapped(
    layer: &CString,
    temp: &CString,
    userns: BorrowedFd<'_>,
) -> Result<(), String> {
    let clone = open_tree(
        rustix::fs::CWD,
        layer.as_c_str(),
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(|e| format!("open_tree {layer:?}: {e}"))?;
    raw::set_idmap(clone.as_fd(), userns).map_err(|e| format!("mount_setattr {layer:?}: {e}"))?;
    move_mount(
        clone.as_fd(),
        c"",
        rustix::fs::CWD,
        temp.as_c_str(),
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| format!("move_mount to {temp:?}: {e}"))
}

/// The kernel's share of an idmapped overlay: `open_tree(OPEN_TREE_CLONE)`
/// of the layers' parent, `mount_setattr(IDMAP)`, the floor's mount(2)
/// with the cwd inside the clone, back to the parent, and the clone closed
/// (which dissolves it). The cwd is the layers' parent on entry.
pub(crate) fn idmap_minimum_mount(
    parent: &CString,
    data: &CString,
    userns: BorrowedFd<'_>,
    target: &Path,
) -> Result<(), String> {
    let clone = open_tree(
        rustix::fs::CWD,
        parent.as_c_str(),
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(|e| format!("open_tree {parent:?}: {e}"))?;
    raw::set_idmap(clone.as_fd(), userns).map_err(|e| format!("mount_setattr {parent:?}: {e}"))?;
    rustix::process::fchdir(clone.as_fd()).map_err(|e| format!("fchdir into the clone: {e}"))?;
    let mounted = overlay_mount(target, data).map_err(|e| format!("mount(2): {e}"));
    rustix::process::chdir(parent.as_c_str()).map_err(|e| format!("chdir back: {e}"))?;
    drop(clone);
    mounted
}

/// Where staged-minimum attaches its clone, inside the slot's stage dir.
pub(crate) const STAGED_AT: &str = "s";

/// The kernel's share of an overlay on attached idmapped layers: the
/// clone of idmap-minimum attached at [`STAGED_AT`] (cwd: the slot's stage
/// dir), the floor's mount(2) naming the layers through it, the clone
/// detached (`umount2(MNT_DETACH)`: an RCU grace period, as every unmount)
/// and closed. Overlay keeps its own private copies of the layers.
pub(crate) fn staged_minimum_mount(
    parent: &CString,
    data: &CString,
    userns: BorrowedFd<'_>,
    target: &Path,
) -> Result<(), String> {
    let staged = cstring(STAGED_AT.to_string());
    attach_idmapped(parent, &staged, userns)?;
    let mounted = overlay_mount(target, data).map_err(|e| format!("mount(2): {e}"));
    unmount(staged.as_c_str(), UnmountFlags::DETACH)
        .map_err(|e| format!("umount2 {STAGED_AT}: {e}"))?;
    mounted
}

/// Detach the first `attached` temp mounts, then rmdir the `temps` made
/// and `t`; like containerd's fix, remove nothing after a failed unmount.
pub(crate) fn reference_cleanup(temps: &[CString], attached: usize) -> Result<(), String> {
    for temp in &temps[..attached] {
        unmount(temp.as_c_str(), UnmountFlags::DETACH)
            .map_err(|e| format!("umount2 {temp:?}: {e}; temp dirs left in place"))?;
    }
    for temp in temps {
        rustix::fs::rmdir(temp.as_c_str()).map_err(|e| format!("rmdir {temp:?}: {e}"))?;
    }
    rustix::fs::rmdir("t").map_err(|e| format!("rmdir t: {e}"))
}
