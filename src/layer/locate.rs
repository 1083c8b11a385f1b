//! Where each directory of the overlay is on its filesystem (device and
//! path from the filesystem's root, seeing through bind mounts), and the
//! refusal of directories that overlap: a layer given twice or inside
//! another, an upper or work dir inside a layer (overlay would write into
//! the image), a target where no overlay belongs.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::clash::{clash_error, first_clash};
use super::{OpenedDir, Plan, Role};
use crate::error::{display_path, Error, Result};
use crate::mountinfo::MountEntry;
use crate::path::{below, join};
use crate::sys;

/// Where a directory is on its filesystem: the device (`major:minor` from
/// the mount table) and its path from the filesystem's root. Two paths
/// name the same directory, or one lies inside the other, exactly when
/// their locations do — whatever bind mounts they were reached through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsLocation {
    device: String,
    path: Vec<u8>,
}

impl FsLocation {
    /// The location of a directory known by its canonical path (as the
    /// kernel names it, e.g. from `/proc/thread-self/fd/N`).
    pub fn of(canonical: &Path, table: &[MountEntry]) -> Option<FsLocation> {
        let canonical = canonical.as_os_str().as_bytes();
        let canonical = match canonical.strip_suffix(b"/") {
            Some(trimmed) if !trimmed.is_empty() => trimmed,
            _ => canonical,
        };
        // The deepest mount holding it; the last of equals is on top.
        let (mount, rest) = table
            .iter()
            .filter_map(|m| Some((m, below(canonical, m.mount_point.as_os_str().as_bytes())?)))
            .max_by_key(|(m, _)| m.mount_point.as_os_str().len())?;
        Some(FsLocation {
            device: mount.device.clone(),
            path: join(mount.root.as_os_str().as_bytes(), rest),
        })
    }

    /// The location of a directory on the mount with id `mnt_id` (as
    /// `statx` reports it), known by its canonical path; `Err` when this
    /// mount namespace's table has no such mount (a detached mount, or
    /// another namespace's, reached through `/proc/PID/fd`), or the
    /// directory's path is not beneath where that mount is: then its
    /// location cannot be told, and no path prefix may stand in for it.
    pub fn on_mount(
        canonical: &Path,
        mnt_id: u64,
        table: &[MountEntry],
    ) -> std::result::Result<FsLocation, NotInTable> {
        let mount = table
            .iter()
            .find(|m| m.mount_id == mnt_id)
            .ok_or(NotInTable)?;
        let canonical = canonical.as_os_str().as_bytes();
        let canonical = match canonical.strip_suffix(b"/") {
            Some(trimmed) if !trimmed.is_empty() => trimmed,
            _ => canonical,
        };
        let rest = below(canonical, mount.mount_point.as_os_str().as_bytes()).ok_or(NotInTable)?;
        Ok(FsLocation {
            device: mount.device.clone(),
            path: join(mount.root.as_os_str().as_bytes(), rest),
        })
    }

    /// The location of a directory on a mount whose root is the device's
    /// root — good for comparing directories on one mount, or on devices
    /// that differ (which never overlap).
    pub fn on_device(dev: (u32, u32), canonical: &Path) -> FsLocation {
        let bytes = canonical.as_os_str().as_bytes();
        let bytes = match bytes.strip_suffix(b"/") {
            Some(trimmed) if !trimmed.is_empty() => trimmed,
            _ => bytes,
        };
        FsLocation {
            device: format!("{}:{}", dev.0, dev.1),
            path: bytes.to_vec(),
        }
    }

    /// The location of `rel` below this one (no mount point in between).
    pub fn child(&self, rel: &Path) -> FsLocation {
        FsLocation {
            device: self.device.clone(),
            path: join(&self.path, rel.as_os_str().as_bytes()),
        }
    }

    /// Whether `self` is `other` or lies inside it.
    pub fn within(&self, other: &FsLocation) -> bool {
        self.device == other.device && below(&self.path, &other.path).is_some()
    }

    /// Whether one of the two is the other or lies inside it.
    pub fn overlaps(&self, other: &FsLocation) -> bool {
        self.within(other) || other.within(self)
    }
}

/// A directory on a mount this mount namespace's table does not show.
#[derive(Debug)]
pub struct NotInTable;

/// The refusal of a directory whose mount is not in the table.
pub(crate) fn not_in_table(role: Role, path: &Path) -> Error {
    Error::invalid_path(
        role.noun(),
        path,
        "is on a mount this mount namespace does not show (a detached mount, or another \
         namespace's, reached through /proc/PID/fd?), so where it lies cannot be checked; \
         give its path in this mount namespace",
    )
}

/// One directory of the overlay, located, for [`check_located`].
#[derive(Debug, Clone)]
pub struct Located<'a> {
    /// As the user gave it.
    pub path: &'a Path,
    /// Its role.
    pub role: Role,
    /// 1-based layer number, for messages (0 for upper and work).
    pub number: usize,
    /// Where it is.
    pub at: FsLocation,
}

/// Layers beneath one shared root, located through the root: they lie
/// below it with no mount point in between (that is how they were grouped),
/// so their relative paths are all that is needed to compare them.
#[derive(Debug)]
pub struct LocatedGroup<'a> {
    /// Where the shared root is.
    pub root: FsLocation,
    /// The layers: number (1-based), path as given, role, path below root.
    pub members: Vec<(usize, &'a Path, Role, &'a [u8])>,
}

/// How two directories overlap.
enum Overlap {
    Same,
    /// The first lies inside the second.
    Inside,
    /// The second lies inside the first.
    Contains,
}

fn relation(a: &FsLocation, b: &FsLocation) -> Option<Overlap> {
    if a == b {
        Some(Overlap::Same)
    } else if a.within(b) {
        Some(Overlap::Inside)
    } else if b.within(a) {
        Some(Overlap::Contains)
    } else {
        None
    }
}

impl LocatedGroup<'_> {
    /// Refuses duplicates and nesting among the members.
    fn check_members(&mut self) -> Result<()> {
        let members = &self.members;
        match first_clash(0..members.len(), members.len(), |k| members[k].3) {
            None => Ok(()),
            Some(clash) => Err(clash_error(clash, |k| {
                (members[k].0, members[k].1, members[k].2)
            })),
        }
    }

    /// A member that `other` overlaps, and how (`Inside`: `other` lies
    /// inside that member). Members are checked ([`Self::check_members`]):
    /// at most one can be `other` or hold it.
    fn find(&self, other: &FsLocation) -> Option<(usize, Overlap)> {
        if let Some(rel) = (other.device == self.root.device)
            .then(|| below(&other.path, &self.root.path))
            .flatten()
        {
            // Below the root: rarely (an upper dir beside the layers), and
            // then one pass over the members.
            let holding = self.members.iter().enumerate().find_map(|(k, m)| {
                let rest = below(rel, m.3)?;
                Some((
                    k,
                    if rest.is_empty() {
                        Overlap::Same
                    } else {
                        Overlap::Inside
                    },
                ))
            });
            return holding.or_else(|| {
                let k = self
                    .members
                    .iter()
                    .position(|m| below(m.3, rel).is_some())?;
                Some((k, Overlap::Contains))
            });
        }
        // `other` above the root holds every member.
        (!self.members.is_empty() && self.root.within(other)).then_some((0, Overlap::Contains))
    }
}

/// Refuses directories that overlap: a layer given twice or inside
/// another, and above all an upper or work dir inside a layer (overlay
/// would write into the image) or a layer inside them. The kernel checks
/// some of this only after it has written to the upper and work dirs, and
/// not an upper dir inside a lower layer at all.
fn check_located(
    groups: &mut [LocatedGroup<'_>],
    singles: &[Located<'_>],
    upper: Option<&Located<'_>>,
    work: Option<&Located<'_>>,
    target: Option<&Located<'_>>,
) -> Result<()> {
    for g in groups.iter_mut() {
        g.check_members()?;
    }
    // Shared roots are few; two that overlap are compared member by member.
    for (i, a) in groups.iter().enumerate() {
        for b in &groups[i + 1..] {
            if relation(&a.root, &b.root).is_some() {
                for &(number, path, role, rel) in &a.members {
                    let at = a.root.child(Path::new(OsStr::from_bytes(rel)));
                    let single = Located {
                        path,
                        role,
                        number,
                        at,
                    };
                    check_one(&single, b)?;
                }
            }
        }
    }
    // Layers on their own, against each other and against every group.
    for (i, a) in singles.iter().enumerate() {
        for b in &singles[i + 1..] {
            let (outer, inner, same) = match relation(&a.at, &b.at) {
                None => continue,
                Some(Overlap::Same) => (a, b, true),
                Some(Overlap::Inside) => (b, a, false),
                Some(Overlap::Contains) => (a, b, false),
            };
            let why = if same {
                format!(
                    "is the same directory as {}; give each layer once",
                    name(outer)
                )
            } else {
                format!(
                    "lies inside {}; overlay needs separate directory trees",
                    name(outer)
                )
            };
            return Err(Error::invalid_path(inner.role.noun(), inner.path, why));
        }
        for g in groups.iter() {
            check_one(a, g)?;
        }
    }
    // The writable directories against every layer.
    for w in upper.into_iter().chain(work) {
        let inside = |what: String, overlap: Overlap| {
            let noun = w.role.noun();
            let (is, give) = match overlap {
                Overlap::Same => ("is the same directory as", "a fresh, empty"),
                _ => ("lies inside", crate::error::a_or_an(noun)),
            };
            Error::invalid_path(
                noun,
                w.path,
                format!(
                    "{is} {what}: writes would land in the image layer; give {give} {noun} \
                     outside every layer"
                ),
            )
        };
        let holds = |path: &Path, role: Role| {
            Error::invalid_path(
                role.noun(),
                path,
                format!(
                    "lies inside {}; a layer cannot be inside the upper or work dir",
                    name(w)
                ),
            )
        };
        for l in singles {
            match relation(&w.at, &l.at) {
                Some(o @ (Overlap::Same | Overlap::Inside)) => return Err(inside(name(l), o)),
                Some(Overlap::Contains) => return Err(holds(l.path, l.role)),
                None => {}
            }
        }
        for g in groups.iter() {
            match g.find(&w.at) {
                Some((k, o @ (Overlap::Same | Overlap::Inside))) => {
                    return Err(inside(member(g, k).0, o))
                }
                Some((k, Overlap::Contains)) => {
                    let (_, path, role) = member(g, k);
                    return Err(holds(path, role));
                }
                None => {}
            }
        }
    }
    if let (Some(u), Some(w)) = (upper, work) {
        if relation(&w.at, &u.at).is_some() {
            return Err(Error::invalid_path(
                w.role.noun(),
                w.path,
                format!(
                    "and {} lie one inside the other; overlay needs them side by side \
                     (e.g. DIR/upper and DIR/work)",
                    name(u)
                ),
            ));
        }
    }
    // The target may hold layers (it covers their paths, not the
    // directories overlay was given), but must not be one of them, nor the
    // upper or work dir, nor lie inside any: the overlay would be mounted
    // into its own layer or into what overlay writes.
    if let Some(t) = target {
        let into = |what: String| {
            Error::invalid_path(
                t.role.noun(),
                t.path,
                format!(
                    "is or lies inside {what}; mount the overlay on a directory of its own, \
                     outside its layers, upper and work dirs"
                ),
            )
        };
        for l in singles.iter().chain(upper).chain(work) {
            if matches!(
                relation(&t.at, &l.at),
                Some(Overlap::Same | Overlap::Inside)
            ) {
                return Err(into(name(l)));
            }
        }
        for g in groups.iter() {
            if let Some((k, Overlap::Same | Overlap::Inside)) = g.find(&t.at) {
                return Err(into(member(g, k).0));
            }
        }
    }
    Ok(())
}

/// How a directory is named in messages.
fn name(l: &Located<'_>) -> String {
    if l.number > 0 {
        format!("layer {} ({})", l.number, display_path(l.path))
    } else {
        format!("the {} {}", l.role.noun(), display_path(l.path))
    }
}

/// A group's member `k`: its name in messages, path and role.
fn member<'g>(g: &LocatedGroup<'g>, k: usize) -> (String, &'g Path, Role) {
    let (number, path, role, _) = g.members[k];
    (
        format!("layer {number} ({})", display_path(path)),
        path,
        role,
    )
}

/// A layer on its own against the members of a group.
fn check_one(single: &Located<'_>, g: &LocatedGroup<'_>) -> Result<()> {
    let Some((k, how)) = g.find(&single.at) else {
        return Ok(());
    };
    let (member_name, member_path, member_role) = member(g, k);
    Err(match how {
        Overlap::Same => Error::invalid_path(
            single.role.noun(),
            single.path,
            format!("is the same directory as {member_name}; give each layer once"),
        ),
        Overlap::Inside => Error::invalid_path(
            single.role.noun(),
            single.path,
            format!("lies inside {member_name}; overlay needs separate directory trees"),
        ),
        Overlap::Contains => Error::invalid_path(
            member_role.noun(),
            member_path,
            format!(
                "lies inside {}; overlay needs separate directory trees",
                name(single)
            ),
        ),
    })
}

/// Locates every directory on its filesystem and refuses overlaps (see
/// [`check_located`]). Directories on different devices cannot
/// overlap, and on one mount their canonical paths say it all; only two
/// mounts of one device (bind mounts) need the mount table, read then.
/// Directories that cannot be located (no /proc) are left to the kernel.
pub(crate) fn check_overlaps(
    plan: &Plan<'_>,
    singles: &[Option<&OpenedDir>],
    upper: Option<&OpenedDir>,
    work: Option<&OpenedDir>,
    target: Option<&OpenedDir>,
    table: &mut Option<Vec<MountEntry>>,
) -> Result<()> {
    // Every directory to compare: canonical path and (device, mount).
    let roots: Vec<Option<(PathBuf, sys::Stat)>> = plan
        .groups
        .iter()
        .map(|g| {
            Some((
                g.canonical.clone().or_else(|| sys::fd_path(g.fd.as_fd()))?,
                sys::stat_fd(g.fd.as_fd()).ok()?,
            ))
        })
        .collect();
    let single_paths: Vec<Option<PathBuf>> =
        singles.iter().map(|d| d.and_then(canonical_path)).collect();
    let upper_path = upper.and_then(canonical_path);
    let work_path = work.and_then(canonical_path);
    let target_path = target.and_then(canonical_path);
    let stats: Vec<sys::Stat> = roots
        .iter()
        .flatten()
        .map(|(_, st)| *st)
        .chain(singles.iter().flatten().map(|d| d.stat))
        .chain(upper.map(|d| d.stat))
        .chain(work.map(|d| d.stat))
        .chain(target.map(|d| d.stat))
        .collect();
    // Devices and paths say it all unless one device is reached through
    // two mounts (a bind mount: its root need not be the device's), or a
    // filesystem's files report their subvolume's device: then the mount
    // table locates each directory, by the mount `statx` says it is on.
    let aliased = stats
        .iter()
        .any(|a| stats.iter().any(|b| a.dev == b.dev && a.mnt_id != b.mnt_id))
        || plan
            .groups
            .iter()
            .map(|g| g.fd.as_fd())
            .chain(singles.iter().flatten().map(|d| d.fd.as_fd()))
            .chain(
                [upper, work, target]
                    .into_iter()
                    .flatten()
                    .map(|d| d.fd.as_fd()),
            )
            .any(crate::fs_type::has_per_subvolume_devices);
    if aliased && table.is_none() {
        *table = crate::mountinfo::read_self().ok();
    }
    let table = table.as_deref();
    let locate =
        |canonical: &Path, st: &sys::Stat| -> std::result::Result<Option<FsLocation>, NotInTable> {
            match (aliased, table, st.mnt_id) {
                (true, Some(t), Some(id)) => FsLocation::on_mount(canonical, id, t).map(Some),
                (true, Some(t), None) => Ok(FsLocation::of(canonical, t)),
                (true, None, _) => Ok(None),
                (false, _, _) => Ok(Some(FsLocation::on_device(st.dev, canonical))),
            }
        };
    let mut writable = [None, None, None];
    for (slot, (d, c)) in writable.iter_mut().zip([
        (upper, &upper_path),
        (work, &work_path),
        (target, &target_path),
    ]) {
        if let (Some(d), Some(c)) = (d, c) {
            // The target may have been opened in the caller's mount
            // namespace while this runs in a private copy of it (private-ns),
            // whose mounts have other ids but the same layout: located by
            // its path there.
            let at = match (locate(c, &d.stat), d.role, table) {
                (Ok(at), _, _) => at,
                (Err(_), Role::Target, Some(t)) => FsLocation::of(c, t),
                (Err(_), _, _) => return Err(not_in_table(d.role, &d.path)),
            };
            *slot = at.map(|at| Located {
                path: &d.path,
                role: d.role,
                number: 0,
                at,
            });
        }
    }
    let [u, w, t] = writable;
    let mut groups: Vec<Option<LocatedGroup<'_>>> = Vec::with_capacity(roots.len());
    for (k, r) in roots.iter().enumerate() {
        let Some((canonical, st)) = r else {
            groups.push(None);
            continue;
        };
        let root = locate(canonical, st).map_err(|_| {
            let (path, role) = plan
                .layers
                .iter()
                .enumerate()
                .find(|(i, _)| plan.rel(*i).is_some_and(|(g, _)| g == k))
                .map(|(_, (path, role))| (path, role))
                .unwrap_or((plan.groups[k].path.as_path(), Role::Lower));
            not_in_table(role, path)
        })?;
        groups.push(root.map(|root| LocatedGroup {
            root,
            members: Vec::new(),
        }));
    }
    // Layers beneath one root were checked against each other by the plan
    // (by name); a group's members are listed only when something else
    // meets its root: the upper or work dir, a layer on its own, another
    // root. Usually nothing does, and 500 layers are not walked again.
    let meets = |g: &LocatedGroup<'_>| {
        let others = groups.iter().flatten().filter(|o| !std::ptr::eq(*o, g));
        !singles.is_empty()
            || [&u, &w, &t]
                .into_iter()
                .flatten()
                .any(|l| g.root.overlaps(&l.at))
            || others.into_iter().any(|o| g.root.overlaps(&o.root))
    };
    let needed: Vec<bool> = groups
        .iter()
        .map(|g| g.as_ref().is_some_and(meets))
        .collect();
    let mut singles_located = Vec::new();
    if needed.contains(&true) || !singles.is_empty() {
        for (i, (path, role)) in plan.layers.iter().enumerate() {
            // A layer opened on its own (planned so, or retried so after the
            // kernel refused its name beneath the shared clone) is located
            // by its open: its name may lead elsewhere than the fd does.
            let opened = singles.get(i).is_some_and(Option::is_some);
            match plan.rel(i).filter(|_| !opened) {
                Some((group, rel)) => {
                    if let (Some(g), true) = (&mut groups[group], needed[group]) {
                        g.members
                            .push((i + 1, path, role, rel.as_os_str().as_bytes()));
                    }
                }
                None => {
                    let at = match (singles.get(i).copied().flatten(), &single_paths[i]) {
                        (Some(d), Some(c)) => {
                            locate(c, &d.stat).map_err(|_| not_in_table(role, path))?
                        }
                        _ => None,
                    };
                    if let Some(at) = at {
                        singles_located.push(Located {
                            path,
                            role,
                            number: i + 1,
                            at,
                        });
                    }
                }
            }
        }
    }
    let mut groups: Vec<LocatedGroup<'_>> = groups.into_iter().flatten().collect();
    check_located(
        &mut groups,
        &singles_located,
        u.as_ref(),
        w.as_ref(),
        t.as_ref(),
    )?;
    check_inside_layers_by_fd(plan, singles, [upper, work, target])
}

/// The most directories a walk up from the upper dir, work dir or target
/// goes through (a path as given has at most 2,048 components).
const MAX_WALK: usize = 4096;

/// Refuses an upper dir, work dir or target that *is*, or lies inside, one
/// of the layers, as directories rather than names.
///
/// The checks above compare the paths as given, each true when its own
/// open resolved it. Another process renaming directories above a layer
/// and the upper (swapping two real directories) between those opens makes
/// names that do not overlap lead to an upper inside the layer. So each of
/// the three is walked up from its fd (`..`, through the mount tree), and every
/// directory met is compared with the layers opened on their own (device
/// and inode) and with the shared roots; below a shared root, the names
/// the walk came up through (the last components of the fd's path) with
/// the layers' names there; at the root of another mount of a layer's
/// filesystem, up that filesystem's own tree as well ([`walk_up`]).
/// Sound because neither can change unseen: a directory leaves a layer,
/// or enters it, only by a rename inside that layer; and beneath a shared
/// root the plan shares only layers whose way down no one but root can
/// rename (`plan::others_can_rename_on_the_way`).
fn check_inside_layers_by_fd(
    plan: &Plan<'_>,
    singles: &[Option<&OpenedDir>],
    dirs: [Option<&OpenedDir>; 3],
) -> Result<()> {
    let id = dir_id;
    let group_stats: Vec<Option<sys::Stat>> = plan
        .groups
        .iter()
        .map(|g| sys::stat_fd(g.fd.as_fd()).ok())
        .collect();
    let roots: Vec<Option<DirId>> = group_stats.iter().map(|st| st.map(|st| id(&st))).collect();
    let single_ids: std::collections::HashMap<DirId, usize> = singles
        .iter()
        .enumerate()
        .filter_map(|(i, d)| d.map(|d| (id(&d.stat), i)))
        .collect();
    let inside = |d: &OpenedDir, layer: usize| {
        let (path, role) = plan.layers.get(layer);
        Error::invalid_path(
            d.role.noun(),
            &d.path,
            format!(
                "lies inside {} {} ({}) as the directories are now (something renamed a \
                 directory above both while they were opened?); overlay needs separate \
                 directory trees",
                role.noun(),
                layer + 1,
                display_path(path)
            ),
        )
    };
    let mut through: Vec<LayerMount<'_>> = Vec::new();
    let opened = singles.iter().flatten().map(|d| (d.stat, d.fd.as_fd()));
    let groups = plan.groups.iter().zip(&group_stats);
    let groups = groups.filter_map(|(g, st)| st.map(|st| (st, g.fd.as_fd())));
    for (st, fd) in opened.chain(groups) {
        if let Some(mnt_id) = st
            .mnt_id
            .filter(|id| through.iter().all(|m| m.mnt_id != *id))
        {
            through.push(LayerMount {
                dev: st.dev,
                mnt_id,
                fd,
            });
        }
    }
    for d in dirs.into_iter().flatten() {
        let is_layer_or_root =
            |at: &DirId| single_ids.contains_key(at) || roots.contains(&Some(*at));
        let walked = walk_up(
            d,
            &through,
            &sys::fd_path,
            is_layer_or_root,
            |at, names_below| {
                if let Some(&i) = single_ids.get(&at) {
                    return Some(i);
                }
                let in_group = |g: usize| roots[g] == Some(at);
                (0..plan.layers.len()).find(|&i| {
                    let member = plan
                        .rel(i)
                        .filter(|_| singles.get(i).is_none_or(Option::is_none));
                    member.is_some_and(|(group, name)| {
                        in_group(group) && below(names_below, name.as_os_str().as_bytes()).is_some()
                    })
                })
            },
        );
        if let Some(i) = walked.map_err(|why| unwalkable(d, why))? {
            return Err(inside(d, i));
        }
    }
    Ok(())
}

/// A directory as an object: device and inode.
pub(crate) type DirId = ((u32, u32), u64);

/// What [`DirId`] a stat is of.
pub(crate) fn dir_id(st: &sys::Stat) -> DirId {
    (st.dev, st.ino)
}

/// A mount a layer or a shared root was opened on: a way into its
/// filesystem's own tree, for a walk that meets another mount of that
/// filesystem (a bind mount of one of its directories).
#[derive(Clone, Copy)]
pub(crate) struct LayerMount<'a> {
    pub dev: (u32, u32),
    pub mnt_id: u64,
    /// Any directory on that mount.
    pub fd: BorrowedFd<'a>,
}

/// How a walk reads the kernel's name for an fd: [`sys::fd_path`], or,
/// in a mount namespace whose `/proc` does not show this thread (entered
/// for `-N`), through a proc opened before.
pub(crate) type FdPath<'a> = &'a dyn Fn(BorrowedFd<'_>) -> Option<PathBuf>;

/// Walks up from `d`'s fd (`..`, one directory at a time, across mount
/// points as `..` goes, up to this process's root; at most [`MAX_WALK`]
/// of them), `d` itself first, and asks `hit`
/// about each directory `wanted` says may matter, with the names the walk
/// came up through below it (the last components of the fd's path as the
/// kernel names it then; empty for `d` itself). The first answer wins.
///
/// `..` of a mount's root is its mount point: from a bind mount of a
/// directory, the walk goes on in the mount tree, not to that directory's
/// parent. So at the root of a mount on the device of one of `through`
/// (another mount), the walk also goes up the filesystem's own tree: the
/// same directory is opened by its file handle on that mount, and walked
/// up to that mount's root (or until `..` leaves its tree, which tells it
/// lies below none of that mount's directories). Where the filesystem
/// gives no handles, only the location by path (`check_located`) tells.
///
/// A walk that cannot reach the root says why, and the caller refuses:
/// a directory that could lie inside a layer unseen is not taken as
/// lying outside every layer.
///
/// Which directories lie above `d` cannot change while it is walked, for
/// the part that matters: a directory leaves another's tree, or enters it,
/// only by a rename inside that tree.
pub(crate) fn walk_up<T>(
    d: &OpenedDir,
    through: &[LayerMount<'_>],
    fd_path: FdPath<'_>,
    wanted: impl Fn(&DirId) -> bool,
    mut hit: impl FnMut(DirId, &[u8]) -> Option<T>,
) -> std::result::Result<Option<T>, String> {
    let mut d_path: Option<Vec<u8>> = None;
    climb(d.fd.as_fd(), d.stat, None, |st, depth, here| {
        let at = dir_id(st);
        if wanted(&at) {
            let names = last_components(named(&mut d_path, d.fd.as_fd(), fd_path)?, depth);
            if let Some(found) = hit(at, names) {
                return Ok(Some(found));
            }
        }
        if st.mount_root != Some(true) {
            return Ok(None);
        }
        let others = through
            .iter()
            .filter(|m| m.dev == st.dev && st.mnt_id.is_some_and(|id| id != m.mnt_id));
        let mut handle = None;
        for m in others {
            if handle.is_none() {
                let fd = here().map_err(|e| e.to_string())?;
                match sys::file_handle(fd.as_fd()) {
                    Ok(h) => handle = Some(h),
                    Err(e) if no_handles(e.errno) => return Ok(None),
                    Err(e) => return Err(e.to_string()),
                }
            }
            let Some(h) = handle.as_ref() else { break };
            // The handle's anchor must be an open file, not an `O_PATH`
            // handle (which `open_by_handle_at` does not take).
            let anchor = sys::open_dir_read(m.fd, Path::new(".")).map_err(|e| e.to_string())?;
            let there = match sys::open_dir_by_handle(anchor.as_fd(), h) {
                Ok(fd) => fd,
                Err(e) if no_handles(e.errno) => continue,
                Err(e) => return Err(e.to_string()),
            };
            let there_st = sys::stat_fd(there.as_fd()).map_err(|e| e.to_string())?;
            let below_here =
                last_components(named(&mut d_path, d.fd.as_fd(), fd_path)?, depth).to_vec();
            let mut there_path = None;
            let found = climb(there.as_fd(), there_st, Some(m.mnt_id), |st, up, _| {
                let at = dir_id(st);
                if !wanted(&at) {
                    return Ok(None);
                }
                let mut names =
                    last_components(named(&mut there_path, there.as_fd(), fd_path)?, up).to_vec();
                if !names.is_empty() && !below_here.is_empty() {
                    names.push(b'/');
                }
                names.extend_from_slice(&below_here);
                Ok(hit(at, &names))
            })?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    })
}

/// Errors that say a filesystem (or this caller) has no file handles to
/// give or take: the walk through the filesystem's tree is not possible.
fn no_handles(errno: i32) -> bool {
    matches!(errno, libc::EOPNOTSUPP | libc::EOVERFLOW | libc::EPERM)
}

/// The kernel's name for `fd`, read once into `cache`.
fn named<'c>(
    cache: &'c mut Option<Vec<u8>>,
    fd: BorrowedFd<'_>,
    fd_path: FdPath<'_>,
) -> std::result::Result<&'c [u8], String> {
    if cache.is_none() {
        let path = fd_path(fd).ok_or("its path could not be read from /proc/thread-self/fd")?;
        *cache = Some(std::os::unix::ffi::OsStringExt::into_vec(
            path.into_os_string(),
        ));
    }
    Ok(cache.as_deref().unwrap_or_default())
}

/// Up from `start` (whose stat is `st`), one `..` at a time, `visit`ing
/// each directory with how many levels up it is and a way to open it,
/// until a visit answers, this process's root is reached, or — `within`
/// a mount — that mount's root is, or `..` leaves that mount's tree
/// (`ENOENT`: the start lies below no directory of it).
fn climb<T>(
    start: BorrowedFd<'_>,
    st: sys::Stat,
    within: Option<u64>,
    mut visit: impl FnMut(
        &sys::Stat,
        usize,
        &dyn Fn() -> sys::SysResult<std::os::fd::OwnedFd>,
    ) -> std::result::Result<Option<T>, String>,
) -> std::result::Result<Option<T>, String> {
    // Each step is one `statx` of `..`, `../..`, … from `start` (or from
    // an ancestor opened once that string grows long): half the syscalls
    // of opening each parent. Names above the layers may be renamed
    // between two steps; the part of the way that decides cannot be.
    let mut base: Option<std::os::fd::OwnedFd> = None;
    let mut ups: Vec<u8> = Vec::new();
    let mut st = st;
    for depth in 0..MAX_WALK {
        let from = base.as_ref().map_or(start, |fd| fd.as_fd());
        let here = || match ups.is_empty() {
            true => sys::dup(from),
            false => sys::open_dir_path(from, Path::new(OsStr::from_bytes(&ups))),
        };
        if let Some(found) = visit(&st, depth, &here)? {
            return Ok(Some(found));
        }
        if within.is_some() && st.mnt_id == within && st.mount_root == Some(true) {
            return Ok(None);
        }
        if ups.len() >= 3000 {
            let up = Path::new(OsStr::from_bytes(&ups));
            base = Some(sys::open_dir_path(from, up).map_err(|e| e.to_string())?);
            ups.clear();
        }
        if !ups.is_empty() {
            ups.push(b'/');
        }
        ups.extend_from_slice(b"..");
        let from = base.as_ref().map_or(start, |fd| fd.as_fd());
        let parent_st = match sys::stat_nofollow(from, Path::new(OsStr::from_bytes(&ups))) {
            Ok(parent) => parent,
            Err(e) if within.is_some() && e.errno == libc::ENOENT => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        // Up across mount points too (a layer of a clone made with the
        // mounts below its root may lie beyond one), to this process's
        // root, whose `..` is itself.
        if dir_id(&parent_st) == dir_id(&st) {
            return Ok(None);
        }
        st = parent_st;
    }
    Err(format!("more than {MAX_WALK} directories lie above it"))
}

/// The refusal of `d` when [`walk_up`] could not reach the root.
pub(crate) fn unwalkable(d: &OpenedDir, why: String) -> Error {
    Error::invalid_path(
        d.role.noun(),
        &d.path,
        format!(
            "could not be walked up to the root to make sure it lies inside no layer ({why}); \
             give a directory nearer the root"
        ),
    )
}

/// The last `n` components of `path` (all of it when it has fewer).
fn last_components(path: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return b"";
    }
    let mut seen = 0;
    for (i, b) in path.iter().enumerate().rev() {
        if *b == b'/' {
            seen += 1;
            if seen == n {
                return &path[i + 1..];
            }
        }
    }
    path.strip_prefix(b"/").unwrap_or(path)
}

/// Where an opened directory really is: known from its open, or asked of
/// the kernel.
fn canonical_path(d: &OpenedDir) -> Option<PathBuf> {
    d.canonical.clone().or_else(|| sys::fd_path(d.fd.as_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory deeper than a walk goes (reached by fd: no path to it
    /// fits in PATH_MAX) is refused, not taken as lying inside no layer.
    #[test]
    fn a_walk_that_cannot_reach_the_root_says_why() {
        use rustix::fs::{mkdirat, openat, unlinkat, AtFlags, Mode, OFlags};
        let top = std::env::temp_dir().join(format!("idoverlay-deep-{}", std::process::id()));
        std::fs::create_dir(&top).unwrap();
        let dir = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let mut fd = openat(sys::cwd(), &top, dir, Mode::empty()).unwrap();
        for _ in 0..MAX_WALK + 10 {
            mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
            fd = openat(&fd, "d", dir, Mode::empty()).unwrap();
        }
        let d = OpenedDir {
            path: top.join("d"),
            role: Role::Upper,
            stat: sys::stat_fd(fd.as_fd()).unwrap(),
            fd,
            canonical: None,
        };
        let walked = walk_up(&d, &[], &sys::fd_path, |_| false, |_, _| None::<()>);
        // Its path is longer than readlink gives: names cannot be compared.
        let unnamed = walk_up(&d, &[], &sys::fd_path, |_| true, |_, _| None::<()>);
        let OpenedDir { mut fd, .. } = d;
        for _ in 0..MAX_WALK + 10 {
            let parent = openat(&fd, "..", dir, Mode::empty()).unwrap();
            unlinkat(&parent, "d", AtFlags::REMOVEDIR).unwrap();
            fd = parent;
        }
        std::fs::remove_dir(&top).unwrap();
        let why = walked.unwrap_err();
        assert!(why.contains("more than 4096 directories"), "{why}");
        let why = unnamed.unwrap_err();
        assert!(why.contains("its path could not be read"), "{why}");
    }

    /// Up from a directory 1,200 levels deep (past where the walk's `../..`
    /// string is re-based): it reaches the top, and gives the names it came
    /// up through below it.
    #[test]
    fn a_walk_up_goes_through_every_level_and_names_them() {
        let top = std::env::temp_dir().join(format!("idoverlay-walk-{}", std::process::id()));
        let mut deepest = top.clone();
        for _ in 0..1200 {
            deepest.push("d");
        }
        std::fs::create_dir_all(&deepest).unwrap();
        let top_id = dir_id(&sys::stat_nofollow(sys::cwd(), &top).unwrap());
        let d = super::super::open_dir(&deepest, Role::Upper).unwrap();
        let names = walk_up(
            &d,
            &[],
            &sys::fd_path,
            |at| *at == top_id,
            |_, below| Some(below.to_vec()),
        )
        .unwrap();
        let mut p = deepest.as_path();
        while p != top.parent().unwrap() {
            std::fs::remove_dir(p).unwrap();
            p = p.parent().unwrap();
        }
        let want = vec!["d"; 1200].join("/");
        assert_eq!(names.as_deref(), Some(want.as_bytes()));
    }
    use std::path::PathBuf;

    /// [`check_located`] without a target.
    fn overlaps(
        groups: &mut [LocatedGroup<'_>],
        singles: &[Located<'_>],
        upper: Option<&Located<'_>>,
        work: Option<&Located<'_>>,
    ) -> Result<()> {
        check_located(groups, singles, upper, work, None)
    }

    fn table() -> Vec<MountEntry> {
        crate::mountinfo::parse(
            "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\
             2 1 8:1 /img/l1 /bind rw - ext4 /dev/sda1 rw\n\
             3 1 0:5 / /tmp rw - tmpfs tmpfs rw\n",
        )
    }

    #[test]
    fn locations_see_through_bind_mounts() {
        let t = table();
        let at = |p: &str| FsLocation::of(Path::new(p), &t).unwrap();
        assert_eq!(at("/bind/x"), at("/img/l1/x"));
        assert_eq!(at("/bind/x/"), at("/img/l1/x"));
        assert!(at("/bind/x/up").within(&at("/img/l1")));
        assert!(
            !at("/tmp/img/l1").within(&at("/img/l1")),
            "another filesystem"
        );
        assert!(!at("/img/l10").within(&at("/img/l1")));
        assert_eq!(at("/img").child(Path::new("l1/x")), at("/bind/x"));
    }

    #[test]
    fn overlaps_are_refused_with_names() {
        let t = table();
        let at = |p: &str| FsLocation::of(Path::new(p), &t).unwrap();
        let loc = |p: &'static str, role, number| Located {
            path: Path::new(p),
            role,
            number,
            at: at(p),
        };
        let group = |members: Vec<(usize, &'static str, &'static str)>| LocatedGroup {
            root: at("/img"),
            members: members
                .into_iter()
                .map(|(n, p, rel)| (n, Path::new(p), Role::Lower, rel.as_bytes()))
                .collect(),
        };
        let two = || vec![group(vec![(1, "/img/l2", "l2"), (2, "/img/l1", "l1")])];
        // Upper inside a layer, reached through a bind mount of it.
        let upper = loc("/bind/nested", Role::Upper, 0);
        let work = loc("/tmp/w", Role::Work, 0);
        let e = overlaps(&mut two(), &[], Some(&upper), Some(&work)).unwrap_err();
        assert!(
            e.to_string().contains("lies inside layer 2 (\"/img/l1\")"),
            "{e}"
        );
        // A layer inside the upper dir.
        let e = overlaps(
            &mut two(),
            &[],
            Some(&loc("/img", Role::Upper, 0)),
            Some(&work),
        )
        .unwrap_err();
        assert!(e.to_string().contains("a layer cannot be inside"), "{e}");
        // Duplicate through the bind mount (a layer on its own), and nesting.
        let e = overlaps(&mut two(), &[loc("/bind", Role::Lower, 3)], None, None).unwrap_err();
        assert!(e.to_string().contains("same directory as layer 2"), "{e}");
        let mut nested = vec![group(vec![(1, "/img/l1", "l1"), (2, "/img/l1/x", "l1/x")])];
        let e = overlaps(&mut nested, &[], None, None).unwrap_err();
        assert!(e.to_string().contains("lies inside layer 1"), "{e}");
        let e = overlaps(
            &mut two(),
            &[loc("/img/l1/deep", Role::Lower, 3)],
            None,
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("lies inside layer 2"), "{e}");
        let e = overlaps(&mut two(), &[loc("/img", Role::Lower, 3)], None, None).unwrap_err();
        assert!(e.to_string().contains("lies inside layer 3"), "{e}");
        // Work inside upper.
        let e = overlaps(
            &mut two(),
            &[],
            Some(&loc("/tmp/u", Role::Upper, 0)),
            Some(&loc("/tmp/u/w", Role::Work, 0)),
        )
        .unwrap_err();
        assert!(e.to_string().contains("one inside the other"), "{e}");
        // Side by side is fine, and a sibling with a common name prefix too.
        overlaps(
            &mut two(),
            &[loc("/img/l10", Role::Lower, 3)],
            Some(&loc("/tmp/u", Role::Upper, 0)),
            Some(&work),
        )
        .unwrap();
    }

    #[test]
    fn a_target_inside_a_layer_upper_or_work_is_refused() {
        let t = table();
        let at = |p: &str| FsLocation::of(Path::new(p), &t).unwrap();
        let loc = |p: &'static str, role, number| Located {
            path: Path::new(p),
            role,
            number,
            at: at(p),
        };
        let group = || {
            vec![LocatedGroup {
                root: at("/img"),
                members: vec![
                    (1, Path::new("/img/l2"), Role::Lower, &b"l2"[..]),
                    (2, Path::new("/img/l1"), Role::Lower, &b"l1"[..]),
                ],
            }]
        };
        let (u, w) = (loc("/tmp/u", Role::Upper, 0), loc("/tmp/w", Role::Work, 0));
        for (target, names) in [
            ("/img/l1", "layer 2"),
            ("/bind/sub", "layer 2"),
            ("/tmp/u", "upper dir"),
            ("/tmp/w/x", "work dir"),
        ] {
            let target = loc(target, Role::Target, 0);
            let e = check_located(&mut group(), &[], Some(&u), Some(&w), Some(&target))
                .unwrap_err()
                .to_string();
            assert!(e.contains(names) && e.contains("target"), "{e}");
        }
        // Beside them, or holding them, is fine.
        for target in ["/tmp/t", "/img"] {
            let target = loc(target, Role::Target, 0);
            check_located(&mut group(), &[], Some(&u), Some(&w), Some(&target)).unwrap();
        }
    }

    /// The model: two relative names overlap when equal or when one is a
    /// component prefix of the other (`""` is the root and holds all).
    fn model_overlap(a: &[u8], b: &[u8]) -> bool {
        below(a, b).is_some() || below(b, a).is_some()
    }

    /// Checks a group's members, and an upper dir against them, as the
    /// model says.
    fn check_against_model(names: &[String], upper: &str) -> std::result::Result<(), String> {
        let t = table();
        let paths: Vec<PathBuf> = names.iter().map(|n| Path::new("/img").join(n)).collect();
        let mut group = LocatedGroup {
            root: FsLocation::of(Path::new("/img"), &t).unwrap(),
            members: names
                .iter()
                .zip(&paths)
                .enumerate()
                .map(|(i, (n, p))| (i + 1, p.as_path(), Role::Lower, n.as_bytes()))
                .collect(),
        };
        let clash = (0..names.len()).any(|i| {
            (i + 1..names.len()).any(|j| model_overlap(names[i].as_bytes(), names[j].as_bytes()))
        });
        if group.check_members().is_err() != clash {
            return Err(format!("members {names:?}: model says clash={clash}"));
        }
        if clash {
            return Ok(());
        }
        let at = FsLocation::of(&Path::new("/img").join(upper), &t).unwrap();
        let hit = names
            .iter()
            .any(|n| model_overlap(upper.as_bytes(), n.as_bytes()));
        match group.find(&at) {
            None if !hit => Ok(()),
            Some((k, how)) if hit => {
                let member = group.members[k].3;
                let inner = |a: &[u8], b: &[u8]| below(a, b).is_some_and(|r| !r.is_empty());
                let ok = match how {
                    Overlap::Same => member == upper.as_bytes(),
                    Overlap::Inside => inner(upper.as_bytes(), member),
                    Overlap::Contains => inner(member, upper.as_bytes()),
                };
                ok.then_some(())
                    .ok_or_else(|| format!("{names:?} vs {upper}: wrong member {k}"))
            }
            found => Err(format!(
                "{names:?} vs {upper}: found {:?}",
                found.map(|f| f.0)
            )),
        }
    }

    proptest::proptest! {
        #[test]
        fn flat_members_match_the_pairwise_model(
            names in proptest::collection::vec("[abc]{1,2}", 1..14),
            upper in "[abc]{1,2}(/[abc]){0,1}",
        ) {
            proptest::prop_assert_eq!(check_against_model(&names, &upper), Ok(()));
        }

        #[test]
        fn nested_members_match_the_pairwise_model(
            names in proptest::collection::vec("(|[ab]{1,2}(/[ab]{1,2}){0,2})", 1..12),
            upper in "[ab]{1,2}(/[ab]{1,2}){0,2}",
        ) {
            proptest::prop_assert_eq!(check_against_model(&names, &upper), Ok(()));
        }
    }
}
