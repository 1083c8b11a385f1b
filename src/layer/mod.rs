//! Layers: opened once, checked, and grouped so that layers sharing a
//! directory on one mount can share one idmapped clone.
//!
//! Invariant: every layer is resolved by path exactly once, with
//! `O_NOFOLLOW` on its last component (`open`), or by the kernel beneath a
//! clone of its shared root (`plan`). Everything later derives from that fd
//! or is checked against its identity (device and inode), so the overlay can
//! only ever get the directory that was opened. Overlapping directories are
//! refused by where they are on their filesystem (`locate`), names beneath
//! one root by a linear check (`clash`).

mod clash;
mod footprint;
mod locate;
mod open;
mod plan;

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use crate::sys::Stat;

pub(crate) use footprint::{real_paths, refuse_inside, Footprint, RealPaths};
pub(crate) use locate::{check_overlaps, not_in_table, FsLocation};
pub(crate) use open::open_dir;
pub(crate) use plan::{plan, Grouping, Layers, Placement, Plan};

/// overlayfs' `OVL_MAX_STACK`: lower plus data-only layers.
pub(crate) const MAX_LAYERS: usize = 500;

/// What a directory is used as in the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A lower layer (`lowerdir+`).
    Lower,
    /// A data-only lower layer (`datadir+`).
    Data,
    /// The upper layer.
    Upper,
    /// The work directory.
    Work,
    /// Where the overlay is to be mounted.
    Target,
}

impl Role {
    /// How the role is named in messages.
    pub fn noun(self) -> &'static str {
        match self {
            Role::Lower => "layer",
            Role::Data => "data layer",
            Role::Upper => "upper dir",
            Role::Work => "work dir",
            Role::Target => "target",
        }
    }
}

/// A directory opened for the overlay.
#[derive(Debug)]
pub(crate) struct OpenedDir {
    /// The path as given (absolute).
    pub path: PathBuf,
    /// What it is used as.
    pub role: Role,
    /// Handle from the one and only resolution of `path`: `O_PATH` for a
    /// layer, readable for the upper and work dirs (their entries, claims
    /// and locks are read through it).
    pub fd: OwnedFd,
    /// Its identity and mount at that moment.
    pub stat: Stat,
    /// Its canonical path, when known without asking the kernel (no
    /// symlink on the way: the normalized path as given).
    pub canonical: Option<PathBuf>,
}

impl OpenedDir {
    /// The same directory through a new fd (`dup`).
    pub fn try_clone(&self) -> crate::sys::SysResult<OpenedDir> {
        Ok(OpenedDir {
            path: self.path.clone(),
            role: self.role,
            fd: crate::sys::dup(std::os::fd::AsFd::as_fd(&self.fd))?,
            stat: self.stat,
            canonical: self.canonical.clone(),
        })
    }
}
