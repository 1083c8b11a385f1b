//! Planning how to reach the layers with as few clones as possible: layers
//! in one directory on one mount share one idmapped clone of it, and are
//! named beneath it.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::clash::{clash_error, first_clash};
use super::Role;
use crate::error::{Error, Result};
use crate::mountinfo::MountEntry;
use crate::path::{below, common_dir_len, common_dir_of, normalize_from};
use crate::sys;

/// A layer as planned: where it will be reached from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Beneath the shared clone of group `group`, at [`Plan::rel`] (no
    /// symlink in it may be followed; empty: the group's root itself).
    Shared {
        /// Index into [`Plan::groups`].
        group: usize,
        /// Where the path below the group's root sits in the layer's
        /// (normalized) path; see [`Plan::rel`].
        rel: std::ops::Range<usize>,
    },
    /// Opened on its own and cloned through its own fd.
    Single,
}

/// A directory whose one clone serves several layers.
#[derive(Debug)]
pub struct SharedRoot {
    /// Its path, as derived from the layers' paths.
    pub path: PathBuf,
    /// `O_PATH` handle, opened once.
    pub fd: OwnedFd,
    /// Clone it with the mounts below it (`AT_RECURSIVE`): the plan did not
    /// read the mount table, and lets the kernel refuse any layer that
    /// turns out to sit on one of those mounts.
    pub recursive: bool,
    /// Its canonical path, when known without asking the kernel.
    pub canonical: Option<PathBuf>,
}

/// How [`plan`] groups layers under shared roots.
#[derive(Debug, Clone, Copy)]
pub enum Grouping<'t> {
    /// Every layer on its own.
    None,
    /// All layers under their common directory, cloned recursively; no
    /// mount table needed. A layer on a mount below that directory makes
    /// the kernel refuse the overlay (it does not clone submounts of a
    /// clone), so the caller falls back to [`Grouping::ByMount`].
    Lexical,
    /// By the mount each layer lives on, from the mount table.
    ByMount(&'t [MountEntry]),
}

/// The layers of an overlay, in order: the lower layers (top-most first),
/// then the data-only layers. Borrowed from the caller's lists as they are
/// (a copy of 500 entries would cost more than reading them).
#[derive(Debug, Clone, Copy)]
pub struct Layers<'a> {
    lowers: &'a [PathBuf],
    data: &'a [PathBuf],
}

impl<'a> Layers<'a> {
    /// Lower layers, then data-only layers.
    pub fn new(lowers: &'a [PathBuf], data: &'a [PathBuf]) -> Self {
        Layers { lowers, data }
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.lowers.len() + self.data.len()
    }

    /// Layer `i`'s path as given, and its role.
    pub fn get(&self, i: usize) -> (&'a Path, Role) {
        match self.lowers.get(i) {
            Some(p) => (p, Role::Lower),
            None => (&self.data[i - self.lowers.len()], Role::Data),
        }
    }

    /// Every layer in order, with its role.
    pub fn iter(&self) -> impl Iterator<Item = (&'a Path, Role)> + 'a {
        let lowers = self.lowers.iter().map(|p| (p.as_path(), Role::Lower));
        lowers.chain(self.data.iter().map(|p| (p.as_path(), Role::Data)))
    }
}

/// How the layers will be reached: shared clones of directories that hold
/// several layers on one mount, and layers cloned one by one.
#[derive(Debug)]
pub struct Plan<'a> {
    /// The layers, in order (top-most lower first, then data layers).
    pub layers: Layers<'a>,
    /// Per layer, its normalized path when that differs from the path given
    /// (empty when no path differs).
    normalized: Vec<Option<Vec<u8>>>,
    /// Per layer, its placement.
    pub placement: Vec<Placement>,
    /// The shared roots.
    pub groups: Vec<SharedRoot>,
}

impl Plan<'_> {
    /// The path below its group's root of a layer placed beneath a shared
    /// clone.
    pub fn rel(&self, layer: usize) -> Option<(usize, &Path)> {
        let Placement::Shared { group, rel } = &self.placement[layer] else {
            return None;
        };
        let bytes = match self.normalized.get(layer) {
            Some(Some(n)) => &n[..],
            _ => self.layers.get(layer).0.as_os_str().as_bytes(),
        };
        Some((*group, Path::new(OsStr::from_bytes(&bytes[rel.clone()]))))
    }
}

/// Plans how to reach `layers` with as few clones as possible, resolving
/// each layer exactly once later, by the kernel, beneath its clone.
///
/// Layers below one directory share one (non-recursive) clone of it, unless
/// a mount point lies on their way: such layers are grouped under the mount
/// they live on (read from the mount table, in canonical paths), so a
/// clone never shows a covered directory in place of a mount. Layers with
/// `..`, or whose path below the shared root `shareable` refuses, are
/// planned one by one. Lexically identical layers are refused here.
///
/// Paths are handled as bytes: with 500 layers this runs on every mount,
/// and path-component iterators cost more than the kernel's own work.
pub fn plan<'a>(
    layers: Layers<'a>,
    shareable: impl Fn(&Path) -> bool,
    grouping: Grouping<'_>,
) -> Result<Plan<'a>> {
    let mut normal: Vec<Option<Cow<'_, [u8]>>> = Vec::with_capacity(layers.len());
    // A leading part of the last layer's path known to be in normal form.
    let mut known_normal_dir: Option<&[u8]> = None;
    for (path, role) in layers.iter() {
        if !path.is_absolute() {
            return Err(Error::invalid_path(
                role.noun(),
                path,
                "is a relative path; give an absolute path (e.g. \"$PWD/...\")",
            ));
        }
        if path.as_os_str().len() >= libc::PATH_MAX as usize {
            return Err(Error::invalid_path(
                role.noun(),
                path,
                "is longer than PATH_MAX (4096 bytes)",
            ));
        }
        let bytes = path.as_os_str().as_bytes();
        // Layers mostly share their directory: that part was checked with
        // the previous layer, one memcmp says so, and only the rest is
        // scanned.
        let from = match known_normal_dir {
            Some(dir)
                if bytes.len() > dir.len() + 1
                    && bytes.starts_with(dir)
                    && bytes[dir.len()] == b'/' =>
            {
                dir.len()
            }
            _ => 0,
        };
        let n = normalize_from(bytes, from);
        known_normal_dir = match &n {
            Some(Cow::Borrowed(_)) => bytes.iter().rposition(|b| *b == b'/').map(|i| &bytes[..i]),
            _ => None,
        };
        normal.push(n);
    }
    let mut eligible = Vec::with_capacity(normal.len());
    let mut paths: Vec<&[u8]> = Vec::with_capacity(normal.len());
    for (i, n) in normal.iter().enumerate() {
        if let Some(n) = n {
            eligible.push(i);
            paths.push(n);
        }
    }
    let mut placement = vec![Placement::Single; layers.len()];
    let mut groups = Vec::new();
    if eligible.len() >= 2 {
        match grouping {
            Grouping::None => {}
            Grouping::Lexical => {
                lexical_group(&paths, &eligible, &shareable, &mut placement, &mut groups)
            }
            Grouping::ByMount(table) => group(
                &paths,
                &eligible,
                &shareable,
                table,
                &mut placement,
                &mut groups,
            ),
        }
    }
    drop(paths);
    // Layers given twice, or one inside another, beneath a shared root: a
    // lexical matter of their names below it (overlaps between roots, with
    // layers on their own and with upper and work are `check_overlaps`').
    for g in 0..groups.len() {
        let members = (0..layers.len())
            .filter(|&i| matches!(placement[i], Placement::Shared { group, .. } if group == g));
        let name = |i: usize| match (&placement[i], &normal[i]) {
            (Placement::Shared { rel, .. }, Some(n)) => &n[rel.clone()],
            _ => unreachable!("a shared layer has a normal form"),
        };
        if let Some(clash) = first_clash(members, layers.len(), name) {
            return Err(clash_error(clash, |i| {
                let (path, role) = layers.get(i);
                (i + 1, path, role)
            }));
        }
    }
    // Kept only when some path was not already in normal form.
    let normalized = match normal.iter().any(|n| matches!(n, Some(Cow::Owned(_)))) {
        true => normal
            .into_iter()
            .map(|n| match n {
                Some(Cow::Owned(v)) => Some(v),
                _ => None,
            })
            .collect(),
        false => Vec::new(),
    };
    Ok(Plan {
        layers,
        normalized,
        placement,
        groups,
    })
}

/// The directories from a shared root down to its layers, and whether
/// anyone but root can rename an entry on the way.
///
/// A layer beneath a shared root is named to the kernel by its path below
/// the root, and resolved then, inside the clone: later than its checks.
/// Where another user can rename a directory on that way (swap two real
/// directories, no symlink needed), the name could then lead to another
/// directory than the one checked, so such a layer is planned on its own
/// (resolved once, by its open, and handed over by fd). A directory lets
/// no one else rename its entries when it is root's and writable by no
/// one else, or sticky with the entry root's.
struct WayDown<'r> {
    root: BorrowedFd<'r>,
    /// Directories below the root (by their path below it) already looked
    /// at; `None`: could not be.
    seen: std::collections::HashMap<Vec<u8>, Option<sys::Stat>>,
    root_stat: Option<sys::Stat>,
}

impl<'r> WayDown<'r> {
    fn new(root: BorrowedFd<'r>) -> Self {
        WayDown {
            root,
            seen: std::collections::HashMap::new(),
            root_stat: sys::stat_fd(root).ok(),
        }
    }

    fn stat(&mut self, rel: &[u8]) -> Option<sys::Stat> {
        if rel.is_empty() {
            return self.root_stat;
        }
        let root = self.root;
        *self
            .seen
            .entry(rel.to_vec())
            .or_insert_with(|| sys::stat_nofollow(root, Path::new(OsStr::from_bytes(rel))).ok())
    }

    /// Whether someone other than root can rename an entry on the way from
    /// the root to the layer at `rel` (the layer's own entry included).
    fn others_can_rename_on(&mut self, rel: &[u8]) -> bool {
        let mut parent_len = 0;
        loop {
            let end = rel[parent_len..]
                .iter()
                .position(|b| *b == b'/')
                .map_or(rel.len(), |p| parent_len + p);
            if end == parent_len {
                return false;
            }
            let Some(parent) = self.stat(&rel[..parent_len.saturating_sub(1)]) else {
                return true;
            };
            let open_to_others = parent.mode & 0o022 != 0;
            if parent.uid != 0 {
                return true;
            }
            if open_to_others {
                let sticky = parent.mode & 0o1000 != 0;
                if !sticky || self.stat(&rel[..end]).is_none_or(|entry| entry.uid != 0) {
                    return true;
                }
            }
            if end == rel.len() {
                return false;
            }
            parent_len = end + 1;
        }
    }
}

/// One group: every layer under the common directory of all of them.
fn lexical_group(
    paths: &[&[u8]],
    index: &[usize],
    shareable: &impl Fn(&Path) -> bool,
    placement: &mut [Placement],
    groups: &mut Vec<SharedRoot>,
) {
    let top_len = common_dir_of(paths);
    let top_bytes = &paths[0][..top_len];
    let top = Path::new(OsStr::from_bytes(if top_len == 0 {
        b"/"
    } else {
        top_bytes
    }));
    // `top` is normalized: reached without a symlink, it is canonical.
    let (fd, canonical) = match sys::open_dir_no_symlinks(top, false) {
        Ok(fd) => (fd, Some(top.to_path_buf())),
        Err(_) => match sys::open_dir_path_follow(sys::cwd(), top) {
            Ok(fd) => (fd, None),
            Err(_) => return,
        },
    };
    let mut any = false;
    let mut way = WayDown::new(fd.as_fd());
    // Every path is `top_bytes`, or it followed by a `/` (`top` itself
    // being `/` when `top_bytes` is empty or `/`): where the rest starts.
    let skip = match top_bytes {
        b"" | b"/" => 1,
        _ => top_len + 1,
    };
    for (k, full) in paths.iter().enumerate() {
        let rel = full.get(skip..).unwrap_or_default();
        debug_assert_eq!(Some(rel), below(full, top_bytes));
        if shareable(Path::new(OsStr::from_bytes(rel))) && !way.others_can_rename_on(rel) {
            placement[index[k]] = Placement::Shared {
                group: groups.len(),
                rel: full.len() - rel.len()..full.len(),
            };
            any = true;
        }
    }
    if any {
        groups.push(SharedRoot {
            path: top.to_path_buf(),
            fd,
            recursive: true,
            canonical,
        });
    }
}

/// Fills `placement` and `groups` for the layers `paths` (normalized,
/// absolute; `index[k]` is the layer number of `paths[k]`).
fn group(
    paths: &[&[u8]],
    index: &[usize],
    shareable: &impl Fn(&Path) -> bool,
    table: &[MountEntry],
    placement: &mut [Placement],
    groups: &mut Vec<SharedRoot>,
) {
    let top_len = common_dir_of(paths);
    let top = Path::new(OsStr::from_bytes(if top_len == 0 {
        b"/"
    } else {
        &paths[0][..top_len]
    }));
    let Ok(top_fd) = sys::open_dir_path_follow(sys::cwd(), top) else {
        return;
    };
    // The mount table speaks in canonical paths: where `top` really is.
    let Some(canonical_top) = sys::fd_path(top_fd.as_fd()) else {
        return;
    };
    let canonical_top = canonical_top.as_os_str().as_bytes();
    // Mount points strictly below `top`, relative to it.
    let mount_points: Vec<(&[u8], u64)> = table
        .iter()
        .filter_map(|m| {
            let rel = below(m.mount_point.as_os_str().as_bytes(), canonical_top)?;
            (!rel.is_empty()).then_some((rel, m.mount_id))
        })
        .collect();
    // Group by the deepest mount point holding each layer (None: top's own).
    type MountGroup<'p> = (Option<usize>, Vec<(usize, &'p [u8], &'p [u8])>);
    let mut by_mount: Vec<MountGroup<'_>> = Vec::new();
    for (k, path) in paths.iter().enumerate() {
        let rel = below(path, &paths[0][..top_len]).expect("below the common ancestor");
        let mount = mount_points
            .iter()
            .enumerate()
            .filter(|(_, (mp, _))| below(rel, mp).is_some())
            .max_by_key(|(_, (mp, _))| mp.len())
            .map(|(m, _)| m);
        match by_mount.iter_mut().find(|(m, _)| *m == mount) {
            Some((_, members)) => members.push((index[k], path, rel)),
            None => by_mount.push((mount, vec![(index[k], path, rel)])),
        }
    }
    // Groups under deeper mounts first: they open their roots beneath
    // `top`, whose fd the group on top's own mount then keeps.
    by_mount.sort_by_key(|(mount, _)| mount.is_none());
    let mut top_fd = Some(top_fd);
    for (mount, members) in by_mount {
        let prefix_len = members[1..]
            .iter()
            .fold(members[0].2.len(), |n, (_, _, r)| {
                common_dir_len(&members[0].2[..n], r)
            });
        let prefix = Path::new(OsStr::from_bytes(&members[0].2[..prefix_len]));
        let root_fd = if prefix_len == 0 && mount.is_none() {
            top_fd.take()
        } else {
            // Below `top`, possibly across the mount point, and without any
            // symlink: the mount table was read in `top`'s canonical terms.
            let base = top_fd.as_ref().map(|fd| fd.as_fd());
            base.and_then(|b| sys::open_dir_beneath_crossing(b, prefix).ok())
        };
        let Some(root_fd) = root_fd else { continue };
        // The root must be on the mount the table says (a race otherwise).
        if let Some(m) = mount {
            let mnt = sys::stat_fd(root_fd.as_fd()).ok().and_then(|st| st.mnt_id);
            if mnt != Some(mount_points[m].1) {
                continue;
            }
        }
        let number = groups.len();
        let mut any = false;
        let mut way = WayDown::new(root_fd.as_fd());
        let prefix_bytes = members[0].2[..prefix_len].to_vec();
        for (i, full, rel) in members {
            let rel = below(rel, &prefix_bytes).unwrap_or_default();
            if shareable(Path::new(OsStr::from_bytes(rel))) && !way.others_can_rename_on(rel) {
                // `rel` is a tail of the layer's normalized path.
                let start = full.len() - rel.len();
                placement[i] = Placement::Shared {
                    group: number,
                    rel: start..full.len(),
                };
                any = true;
            }
        }
        if any {
            groups.push(SharedRoot {
                path: if prefix_len == 0 {
                    top.to_path_buf()
                } else {
                    top.join(prefix)
                },
                fd: root_fd,
                recursive: false,
                canonical: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_refused_and_dotdot_goes_alone() {
        let l = |ps: &[&str]| ps.iter().map(PathBuf::from).collect::<Vec<_>>();
        let relative = l(&["a/b"]);
        let e = plan(Layers::new(&relative, &[]), |_| true, Grouping::None).unwrap_err();
        assert!(e.to_string().contains("relative"), "{e}");
        let two = l(&["/a/../b", "/c"]);
        let p = plan(Layers::new(&two, &[]), |_| true, Grouping::Lexical).unwrap();
        assert_eq!(p.placement, vec![Placement::Single, Placement::Single]);
        assert_eq!(p.rel(0), None);
    }
}
