//! The algorithm that lost data: containerd 2.0.0-rc.5's idmapped overlay
//! (snapshots/overlay + core/mount, before PR #10721), in test code only,
//! for the negative control of the storm test.
//!
//! Per layer: a temporary directory, an `open_tree` clone of the layer,
//! idmapped (and, as there, writable), attached there. overlay is mounted
//! from those paths; then each temporary mount is unmounted with a plain
//! `umount2(…, 0)`, and the temporary directory is removed with a recursive
//! remove whether or not the unmounts succeeded — which walks into a layer
//! whose unmount failed with EBUSY and deletes its files.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::mount::{MoveMountFlags, OpenTreeFlags, UnmountFlags};

/// The temporary mounts of one assembly.
pub struct TempMounts {
    pub dir: PathBuf,
    pub mounts: Vec<PathBuf>,
}

/// Attaches one writable idmapped clone per layer under `tmp`.
pub fn attach_temp_mounts(
    layers: &[PathBuf],
    tmp: &Path,
    userns: &idoverlay::UserNamespace,
) -> std::io::Result<TempMounts> {
    std::fs::create_dir(tmp)?;
    let mut mounts = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let mp = tmp.join(i.to_string());
        std::fs::create_dir(&mp)?;
        let clone = rustix::mount::open_tree(
            rustix::fs::CWD,
            layer,
            OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
        )?;
        super::raw::set_idmap(clone.as_fd(), userns.as_fd())?;
        rustix::mount::move_mount(
            clone.as_fd(),
            "",
            rustix::fs::CWD,
            &mp,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )?;
        mounts.push(mp);
    }
    Ok(TempMounts {
        dir: tmp.to_path_buf(),
        mounts,
    })
}

/// The overlay from the temporary mounts' paths (mount(2), as containerd).
pub fn mount_overlay(temp: &TempMounts, target: &Path) -> std::io::Result<()> {
    let lowerdir: Vec<String> = temp
        .mounts
        .iter()
        .map(|m| m.display().to_string())
        .collect();
    let data = std::ffi::CString::new(format!("lowerdir={}", lowerdir.join(":"))).unwrap();
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        rustix::mount::MountFlags::empty(),
        Some(data.as_c_str()),
    )?;
    Ok(())
}

/// rc.5's cleanup: plain unmounts, errors ignored, then a recursive remove.
/// Returns how many unmounts failed.
pub fn cleanup(temp: &TempMounts) -> usize {
    let failed = temp
        .mounts
        .iter()
        .filter(|m| rustix::mount::unmount(m.as_path(), UnmountFlags::empty()).is_err())
        .count();
    // The bug: this walks through any mount that is still attached.
    let _ = std::fs::remove_dir_all(&temp.dir);
    failed
}
