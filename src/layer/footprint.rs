//! What an assembled overlay is made of — its layers, upper and work dirs,
//! located — kept with the detached overlay, so that a target given only
//! when it is attached is refused where [`Overlay::mount`] refuses it:
//! one of those directories, or inside one.
//!
//! Built from what was opened and planned for the assembly; located only
//! when a target is checked, and then with the mount table only when the
//! target shares a device with one of them through another mount (as
//! [`super::check_overlaps`] does) — unless the assembly had read the
//! table anyway, as the staged strategies do in their own mount namespace
//! (whose mounts the caller's table does not show): then located at once,
//! by device and path on the filesystem, which mean the same in every
//! namespace. The paths are the ones seen at assembly: a directory renamed
//! between assembly and attach is checked where it was.
//!
//! [`Overlay::mount`]: crate::Overlay::mount

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::locate::{dir_id, not_in_table, walk_up, DirId, FdPath, FsLocation, LayerMount};
use super::{OpenedDir, Plan, Role};
use crate::error::{display_path, Error, Result};
use crate::mountinfo::MountEntry;
use crate::path::below;
use crate::sys;

/// Where the overlay's directories really are, as this mount namespace
/// names them (the kernel's names for the fds opened, or the paths that
/// were reached without a symlink), for the record of the mount.
#[derive(Debug, Clone, Default)]
pub(crate) struct RealPaths {
    /// Every layer, top-most first, data-only layers last.
    pub layers: Vec<(Role, PathBuf)>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
}

/// The real paths of an assembly's directories.
pub(crate) fn real_paths(
    plan: &Plan<'_>,
    singles: &[Option<&OpenedDir>],
    upper: Option<&OpenedDir>,
    work: Option<&OpenedDir>,
) -> RealPaths {
    let of = |d: &OpenedDir| {
        d.canonical
            .clone()
            .or_else(|| sys::fd_path(d.fd.as_fd()))
            .unwrap_or_else(|| d.path.clone())
    };
    let roots: Vec<Option<PathBuf>> = plan
        .groups
        .iter()
        .map(|g| g.canonical.clone().or_else(|| sys::fd_path(g.fd.as_fd())))
        .collect();
    let layers = plan
        .layers
        .iter()
        .enumerate()
        .map(|(i, (path, role))| {
            // A layer opened on its own is where its open says.
            let opened = singles.get(i).copied().flatten();
            let real = match plan.rel(i).filter(|_| opened.is_none()) {
                Some((g, rel)) => roots[g].as_ref().map(|root| {
                    if rel.as_os_str().is_empty() {
                        root.clone()
                    } else {
                        root.join(rel)
                    }
                }),
                None => opened.map(of),
            };
            (role, real.unwrap_or_else(|| path.to_path_buf()))
        })
        .collect();
    RealPaths {
        layers,
        upper: upper.map(of),
        work: work.map(of),
    }
}

/// One directory idoverlay opened (a shared root, a layer on its own, the
/// upper or work dir) and the overlay's directories at or beneath it.
#[derive(Debug, Clone)]
struct Base {
    /// Where it really was (the kernel's name for it).
    canonical: PathBuf,
    stat: sys::Stat,
    /// Whether its filesystem reports per-subvolume devices.
    subvolumes: bool,
    /// The overlay's directories here: role, 1-based layer number (0 for
    /// upper and work), path below `canonical` (empty: itself).
    members: Vec<(Role, usize, Vec<u8>)>,
}

/// The overlay's directories, for checking a target later.
#[derive(Debug, Clone, Default)]
pub(crate) struct Footprint {
    bases: Vec<Base>,
    /// One directory on each mount the bases were opened on (device, mount
    /// id, fd), kept for walking their filesystems' own trees from a target
    /// on another mount of them ([`walk_up`]).
    mounts: Vec<((u32, u32), u64, std::sync::Arc<std::os::fd::OwnedFd>)>,
    /// Located at assembly, from the table read then.
    located: Option<Vec<LocatedMember>>,
}

/// A directory of the overlay, located: how it is named, where it is.
#[derive(Debug, Clone)]
pub(crate) struct LocatedMember {
    name: String,
    at: FsLocation,
}

impl Footprint {
    /// The footprint of an assembly: the plan's shared roots with their
    /// members, the layers opened on their own, upper and work; located
    /// at once when the assembly read the mount `table`.
    pub fn of(
        plan: &Plan<'_>,
        singles: &[Option<&OpenedDir>],
        upper: Option<&OpenedDir>,
        work: Option<&OpenedDir>,
        table: Option<&[MountEntry]>,
    ) -> Footprint {
        let base = |fd: std::os::fd::BorrowedFd<'_>, canonical: Option<&PathBuf>| {
            let canonical = canonical.cloned().or_else(|| sys::fd_path(fd))?;
            Some(Base {
                canonical,
                stat: sys::stat_fd(fd).ok()?,
                subvolumes: crate::fs_type::has_per_subvolume_devices(fd),
                members: Vec::new(),
            })
        };
        let mut groups: Vec<Option<Base>> = plan
            .groups
            .iter()
            .map(|g| base(g.fd.as_fd(), g.canonical.as_ref()))
            .collect();
        let mut bases = Vec::new();
        for (i, (_, role)) in plan.layers.iter().enumerate() {
            let opened = singles.get(i).copied().flatten();
            match plan.rel(i).filter(|_| opened.is_none()) {
                Some((g, rel)) => {
                    if let Some(b) = &mut groups[g] {
                        b.members
                            .push((role, i + 1, rel.as_os_str().as_bytes().to_vec()));
                    }
                }
                None => {
                    if let Some(d) = opened {
                        if let Some(mut b) = base(d.fd.as_fd(), d.canonical.as_ref()) {
                            b.members.push((role, i + 1, Vec::new()));
                            bases.push(b);
                        }
                    }
                }
            }
        }
        bases.extend(groups.into_iter().flatten());
        for d in upper.into_iter().chain(work) {
            if let Some(mut b) = base(d.fd.as_fd(), d.canonical.as_ref()) {
                b.members.push((d.role, 0, Vec::new()));
                bases.push(b);
            }
        }
        let mut mounts: Vec<((u32, u32), u64, std::sync::Arc<std::os::fd::OwnedFd>)> = Vec::new();
        let opened = singles
            .iter()
            .flatten()
            .chain(upper.iter())
            .chain(work.iter());
        let fds = plan.groups.iter().map(|g| g.fd.as_fd());
        for fd in fds.chain(opened.map(|d| d.fd.as_fd())) {
            let Ok(st) = sys::stat_fd(fd) else { continue };
            let Some(id) = st.mnt_id.filter(|id| mounts.iter().all(|m| m.1 != *id)) else {
                continue;
            };
            if let Ok(kept) = sys::dup(fd) {
                mounts.push((st.dev, id, std::sync::Arc::new(kept)));
            }
        }
        let mut footprint = Footprint {
            bases,
            mounts,
            located: None,
        };
        footprint.located = table.map(|t| footprint.locate_all(t));
        footprint
    }

    /// Every directory of the overlay located through `table` (the mount
    /// table of the namespace the footprint was taken in, or of one with
    /// the same layout), for a target in another mount namespace; as
    /// located at assembly when it was. A directory whose mount the table
    /// does not show is located by its path.
    pub fn locate_all(&self, table: &[MountEntry]) -> Vec<LocatedMember> {
        if let Some(located) = &self.located {
            return located.clone();
        }
        let mut out = Vec::new();
        for b in &self.bases {
            let root = b
                .stat
                .mnt_id
                .and_then(|id| FsLocation::on_mount(&b.canonical, id, table).ok())
                .or_else(|| FsLocation::of(&b.canonical, table));
            let Some(root) = root else { continue };
            for m in &b.members {
                out.push(LocatedMember {
                    name: member_name(b, m),
                    at: root.child(Path::new(OsStr::from_bytes(&m.2))),
                });
            }
        }
        out
    }

    /// Refuses `target` (opened in this mount namespace) when it is one of
    /// the overlay's directories or lies inside one.
    pub fn check_target(&self, target: &OpenedDir) -> Result<()> {
        // As directories first (see `locate::walk_up`): the paths below
        // were each true when their own open resolved them.
        self.check_target_walk(target, &sys::fd_path)?;
        self.check_target_located(target)
    }

    /// Refuses `target` when, walked up from its fd as directories (see
    /// `locate::walk_up`), it is one of the overlay's directories or lies
    /// inside one; in any mount namespace (`fd_path` names fds there).
    pub(crate) fn check_target_walk(&self, target: &OpenedDir, fd_path: FdPath<'_>) -> Result<()> {
        let wanted = |at: &DirId| self.bases.iter().any(|b| dir_id(&b.stat) == *at);
        let through: Vec<LayerMount<'_>> = self
            .mounts
            .iter()
            .map(|(dev, mnt_id, fd)| LayerMount {
                dev: *dev,
                mnt_id: *mnt_id,
                fd: fd.as_fd(),
            })
            .collect();
        let walked = walk_up(target, &through, fd_path, wanted, |at, names_below| {
            self.bases
                .iter()
                .filter(|b| dir_id(&b.stat) == at)
                .find_map(|b| {
                    b.members
                        .iter()
                        .find(|m| below(names_below, &m.2).is_some())
                        .map(|m| member_name(b, m))
                })
        });
        if let Some(name) = walked.map_err(|why| super::locate::unwalkable(target, why))? {
            return Err(Error::invalid_path(
                "target",
                &target.path,
                format!(
                    "is {name}, or lies inside it, as the directories are now (something renamed \
                     a directory above both?); attach the overlay elsewhere"
                ),
            ));
        }
        Ok(())
    }

    /// [`Footprint::check_target`]'s part by location: device and path, or
    /// the mount table where the target's device may not tell.
    fn check_target_located(&self, target: &OpenedDir) -> Result<()> {
        let st = &target.stat;
        let same_device: Vec<&Base> = self
            .bases
            .iter()
            .filter(|b| b.stat.dev == st.dev || b.subvolumes)
            .collect();
        if same_device.is_empty() {
            return Ok(());
        }
        let Some(canonical) = target
            .canonical
            .clone()
            .or_else(|| sys::fd_path(target.fd.as_fd()))
        else {
            return Ok(());
        };
        let needs_table = self.located.is_some()
            || crate::fs_type::has_per_subvolume_devices(target.fd.as_fd())
            || same_device
                .iter()
                .any(|b| b.subvolumes || b.stat.mnt_id != st.mnt_id);
        if needs_table {
            let Ok(table) = crate::mountinfo::read_self() else {
                return Ok(());
            };
            let at = match st.mnt_id {
                Some(id) => FsLocation::on_mount(&canonical, id, &table)
                    .map_err(|_| not_in_table(Role::Target, &target.path))?,
                None => match FsLocation::of(&canonical, &table) {
                    Some(at) => at,
                    None => return Ok(()),
                },
            };
            return refuse_inside(&target.path, &at, &self.locate_all(&table));
        }
        let members: Vec<LocatedMember> = same_device
            .iter()
            .flat_map(|b| {
                let root = FsLocation::on_device(b.stat.dev, &b.canonical);
                b.members.iter().map(move |m| LocatedMember {
                    name: member_name(b, m),
                    at: root.child(Path::new(OsStr::from_bytes(&m.2))),
                })
            })
            .collect();
        refuse_inside(
            &target.path,
            &FsLocation::on_device(st.dev, &canonical),
            &members,
        )
    }
}

/// Refuses a target at `at` that is one of `members` or inside one.
pub(crate) fn refuse_inside(
    target: &Path,
    at: &FsLocation,
    members: &[LocatedMember],
) -> Result<()> {
    match members.iter().find(|m| at.within(&m.at)) {
        Some(m) => Err(Error::invalid_path(
            Role::Target.noun(),
            target,
            format!(
                "is or lies inside {}; mount the overlay on a directory of its own, outside \
                 its layers, upper and work dirs",
                m.name
            ),
        )),
        None => Ok(()),
    }
}

/// How a member is named in messages: its role and number, and where it
/// was.
fn member_name(b: &Base, (role, number, rel): &(Role, usize, Vec<u8>)) -> String {
    let mut at = b.canonical.clone();
    if !rel.is_empty() {
        at.push(OsStr::from_bytes(rel));
    }
    match number {
        0 => format!("the {} {}", role.noun(), display_path(&at)),
        n => format!("layer {n} ({})", display_path(&at)),
    }
}
