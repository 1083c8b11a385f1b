//! The mounts a snapshot is used through.
//!
//! Without map labels these are exactly what containerd's overlayfs
//! snapshotter returns (`plugins/snapshots/overlay/overlay.go` `mounts`), so
//! this snapshotter is a drop-in: a bind of `fs` for a snapshot without
//! parents, a read-only bind of the parent for a one-layer view, otherwise
//! one overlay with `lowerdir=`, `upperdir=`, `workdir=` and containerd's
//! `index=off`.
//!
//! With map labels the snapshotter assembles the overlay itself through
//! idoverlay (each layer an idmapped detached clone handed to overlayfs by
//! fd where the kernel can, its safe fallbacks elsewhere), attaches it at
//! `ROOT/mounts/ID`, and hands containerd a bind mount of that. containerd
//! then has nothing to idmap and makes no temporary mount of its own.

use std::path::Path;

use containerd_snapshots::api::types::Mount;
use idoverlay::{Overlay, Strategy};

use crate::error::{Error, Result};
use crate::labels::Maps;
use crate::storage::Storage;
use crate::store::Kind;

/// Overlay options containerd's overlayfs snapshotter adds on this kernel.
#[derive(Debug, Clone, Default)]
pub struct OverlayOptions {
    /// `index=off`, added when the overlay module has an `index` parameter
    /// (containerd's `supportsIndex`).
    pub index_off: bool,
}

impl OverlayOptions {
    /// What containerd would add here.
    pub fn detect() -> Self {
        OverlayOptions {
            index_off: Path::new("/sys/module/overlay/parameters/index").exists(),
        }
    }
}

fn bind(source: &Path, ro: bool) -> Mount {
    Mount {
        r#type: "bind".into(),
        source: source.display().to_string(),
        target: String::new(),
        options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
    }
}

/// containerd's overlayfs snapshotter's mounts for snapshot `id` of `kind`
/// whose ancestors are `parents` (nearest first).
pub fn plain(
    storage: &Storage,
    id: u64,
    kind: Kind,
    parents: &[u64],
    opts: &OverlayOptions,
) -> Vec<Mount> {
    if parents.is_empty() {
        return vec![bind(&storage.upper_path(id), kind == Kind::View)];
    }
    let mut options = Vec::new();
    if kind == Kind::Active {
        options.push(format!("workdir={}", storage.work_path(id).display()));
        options.push(format!("upperdir={}", storage.upper_path(id).display()));
    } else if parents.len() == 1 {
        return vec![bind(&storage.upper_path(parents[0]), true)];
    }
    let lower: Vec<String> = parents
        .iter()
        .map(|p| storage.upper_path(*p).display().to_string())
        .collect();
    options.push(format!("lowerdir={}", lower.join(":")));
    if opts.index_off {
        options.push("index=off".into());
    }
    vec![Mount {
        r#type: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options,
    }]
}

/// The mount containerd gets for an idmapped snapshot: a bind of the
/// overlay attached at `ROOT/mounts/ID`.
pub fn idmapped_bind(storage: &Storage, id: u64, kind: Kind) -> Vec<Mount> {
    vec![bind(&storage.mount_path(id), kind == Kind::View)]
}

/// Whether an overlay is attached at `ROOT/mounts/ID` (in this process's
/// mount namespace). The top-most mount there is the one a lookup reaches.
/// A mount there that is not an overlay is none of this snapshotter's (it
/// attaches nothing else there): refused, neither stacked on nor taken down.
pub fn attached(storage: &Storage, id: u64) -> Result<bool> {
    match storage.mount_point_state(id)? {
        Some((true, false)) => Err(not_ours(&storage.mount_path(id))),
        state => Ok(state.is_some_and(|(_, overlay)| overlay)),
    }
}

fn not_ours(target: &std::path::Path) -> Error {
    Error::FailedPrecondition(format!(
        "{} holds a mount that is not an overlay, which this snapshotter never attaches there; \
         it was left alone: unmount it, then try again",
        target.display()
    ))
}

/// Assembles snapshot `id`'s idmapped overlay and attaches it at
/// `ROOT/mounts/ID`. An active snapshot's `fs` and `work` are the upper and
/// work dirs; a view is read-only, over an empty `fs` of its own (overlay
/// needs two lower layers without one). Returns the strategy used.
pub fn assemble(
    storage: &Storage,
    id: u64,
    kind: Kind,
    parents: &[u64],
    maps: &Maps,
    opts: &OverlayOptions,
) -> Result<Strategy> {
    storage.make_mount_point(id)?;
    let target = storage.mount_path(id);
    // Callers attach only where nothing is (Mounts checks `attached`
    // first): whatever is mounted there now is not to be stacked on.
    if let Some((true, overlay)) = storage.mount_point_state(id)? {
        return Err(match overlay {
            false => not_ours(&target),
            true => Error::FailedPrecondition(format!(
                "{} already holds an overlay; not stacking another on it",
                target.display()
            )),
        });
    }
    let mut overlay = Overlay::new()
        .lowers(parents.iter().map(|p| storage.upper_path(*p)))
        .upper(storage.upper_path(id))
        .work(storage.work_path(id))
        .idmap(maps.uid.clone(), maps.gid.clone())
        .read_only(kind == Kind::View);
    if opts.index_off {
        overlay = overlay.param("index", Some("off"));
    }
    let mounted = overlay.mount(&target)?;
    Ok(mounted.strategy)
}

/// Takes down whatever is mounted at `ROOT/mounts/ID` and removes the
/// then empty directory. An overlay goes through
/// `idoverlay::unmount_overlay` (lazily when busy: nothing is ever deleted
/// through this path, so a lazy detach is safe); anything else found there
/// is a mount the snapshotter did not make: refused and left alone.
pub fn take_down(storage: &Storage, id: u64) -> Result<()> {
    let target = storage.mount_path(id);
    // Mounts can be stacked (a crash between two attaches); bounded.
    for _ in 0..64 {
        match storage.mount_point_state(id)? {
            None | Some((false, _)) => {
                return storage.remove_mount_point(std::ffi::OsStr::new(&id.to_string()))
            }
            Some((true, true)) => {
                if let Err(e) = idoverlay::unmount_overlay(&target, false) {
                    crate::log::warn(&format!(
                        "unmounting {}: {e}; detaching it lazily",
                        target.display()
                    ));
                    idoverlay::unmount_overlay(&target, true)?;
                }
            }
            Some((true, false)) => return Err(not_ours(&target)),
        }
    }
    Err(Error::FailedPrecondition(format!(
        "{} is still mounted after 64 unmounts",
        target.display()
    )))
}
