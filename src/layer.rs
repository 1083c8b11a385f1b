//! Layers: opened once, checked, and grouped so that layers sharing a
//! directory on one mount can share one idmapped clone.
//!
//! Invariant: every layer is resolved by path exactly once, here, with
//! `O_NOFOLLOW` on its last component. Everything later derives from that fd
//! or is checked against its identity (device and inode), so the overlay can
//! only ever get the directory that was opened here.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{display_path, Error, Result};
use crate::mountinfo::MountEntry;
use crate::sys::{self, Stat};

/// overlayfs' `OVL_MAX_STACK`: lower plus data-only layers.
pub const MAX_LAYERS: usize = 500;

/// What a directory is used as in the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
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
pub struct OpenedDir {
    /// The path as given (absolute).
    pub path: PathBuf,
    /// What it is used as.
    pub role: Role,
    /// `O_PATH` handle from the one and only resolution of `path`.
    pub fd: OwnedFd,
    /// Its identity and mount at that moment.
    pub stat: Stat,
    /// Its canonical path, when known without asking the kernel (no
    /// symlink on the way: the normalized path as given).
    pub canonical: Option<PathBuf>,
}

/// Opens a directory given by the user: absolute path, normalized first
/// (so a trailing `/`, `/.` or `//` cannot make the last component be
/// followed), no symlink in the last component, a directory. Errors name
/// the path and say what to do.
pub fn open_dir(path: &Path, role: Role) -> Result<OpenedDir> {
    let noun = role.noun();
    let normal =
        crate::path::normalize(path).map_err(|r| Error::invalid_path(noun, path, r.reason()))?;
    // The work dir's entries are read next: opened readable.
    let readable = role == Role::Work;
    // Without a symlink on the way, the normalized path is the canonical
    // one; otherwise (or on any error, explained below) the usual open,
    // of the normalized spelling, never following its last component.
    let lexical = (!crate::path::has_dotdot(&normal))
        .then(|| sys::open_dir_no_symlinks(&normal, readable).ok())
        .flatten();
    let (fd, canonical) = match lexical {
        Some(fd) => (fd, Some(normal.to_path_buf())),
        None => match sys::open_dir_nofollow(sys::cwd(), &normal, readable) {
            Ok(fd) => (fd, None),
            Err(e) => return Err(explain_open_failure(path, &normal, role, e)),
        },
    };
    let stat = sys::stat_fd(fd.as_fd())
        .map_err(|e| Error::os(format!("inspect {noun}"), Some(path), e))?;
    Ok(OpenedDir {
        path: path.to_path_buf(),
        role,
        fd,
        stat,
        canonical,
    })
}

/// Turns a failed open of `normal` (the normalized `path`) into a message
/// about the path rather than the syscall.
fn explain_open_failure(path: &Path, normal: &Path, role: Role, e: sys::SysError) -> Error {
    let noun = role.noun();
    let reason = match e.errno {
        libc::ENOENT => match sys::stat_nofollow(sys::cwd(), normal) {
            Ok(st) if st.is_symlink() => {
                "is a dangling symlink; give the directory itself".to_string()
            }
            _ => "does not exist".to_string(),
        },
        libc::ENOTDIR => match sys::stat_nofollow(sys::cwd(), normal) {
            Ok(st) if st.is_symlink() => "is a symlink; give the directory it points to \
                 (symlinks are never followed in a layer's last component)"
                .to_string(),
            Ok(st) => format!("is {}, not a directory", st.kind()),
            Err(_) => "has a component that is not a directory".to_string(),
        },
        libc::ELOOP => "has too many levels of symlinks".to_string(),
        libc::EACCES | libc::EPERM => {
            return Error::from(crate::error::Repr::Permission {
                what: format!("opening {noun} {}", display_path(path)),
                needs: "search permission on every directory on its path".into(),
                hint: "root lacks it here: an LSM policy, an NFS root_squash export, or a user \
                       namespace that does not own the filesystem"
                    .into(),
                path: Some(path.to_path_buf()),
                source: Some(e),
            })
        }
        libc::ENAMETOOLONG => "is too long".to_string(),
        _ => return Error::os(format!("open {noun}"), Some(path), e),
    };
    Error::from(crate::error::Repr::InvalidInput {
        what: noun.to_string(),
        input: display_path(path),
        reason,
        path: Some(path.to_path_buf()),
        source: Some(e),
    })
}

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

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    // Every path is `top_bytes`, or it followed by a `/` (`top` itself
    // being `/` when `top_bytes` is empty or `/`): where the rest starts.
    let skip = match top_bytes {
        b"" | b"/" => 1,
        _ => top_len + 1,
    };
    for (k, full) in paths.iter().enumerate() {
        let rel = full.get(skip..).unwrap_or_default();
        debug_assert_eq!(Some(rel), below(full, top_bytes));
        if shareable(Path::new(OsStr::from_bytes(rel))) {
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
        let prefix_bytes = members[0].2[..prefix_len].to_vec();
        for (i, full, rel) in members {
            let rel = below(rel, &prefix_bytes).unwrap_or_default();
            if shareable(Path::new(OsStr::from_bytes(rel))) {
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

/// `/a//b/./c/` → `/a/b/c` (borrowed when already so); `None` when a `..`
/// component makes the path depend on symlinks above it. Knows that
/// `path[..from]` is in normal form and that `path[from]` is a `/` (or
/// `from` is 0).
fn normalize_from(path: &[u8], from: usize) -> Option<Cow<'_, [u8]>> {
    // The common case, checked without splitting: no empty, `.` or `..`
    // component anywhere (every `/` is followed by a byte other than `/`
    // and `.`, and the path does not end in `/`).
    let odd_after_slash = path[from..]
        .windows(2)
        .any(|w| w[0] == b'/' && (w[1] == b'/' || w[1] == b'.'));
    if !odd_after_slash && (path.len() == 1 || !path.ends_with(b"/")) {
        return Some(Cow::Borrowed(path));
    }
    let mut normal = true;
    for c in path[1..].split(|b| *b == b'/') {
        match c {
            b".." => return None,
            b"" | b"." => normal = false,
            _ => {}
        }
    }
    if normal || path == b"/" {
        return Some(Cow::Borrowed(path));
    }
    let mut out = Vec::with_capacity(path.len());
    for c in path[1..]
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
    {
        out.push(b'/');
        out.extend_from_slice(c);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    Some(Cow::Owned(out))
}

/// The part of `path` below `dir` (empty when they are equal), when `path`
/// is `dir` or lies inside it. Both normalized, both absolute or both
/// relative; `dir` may be empty (meaning the starting point itself).
fn below<'p>(path: &'p [u8], dir: &[u8]) -> Option<&'p [u8]> {
    if dir.is_empty() || dir == b"/" {
        return Some(path.strip_prefix(b"/").unwrap_or(path));
    }
    let rest = path.strip_prefix(dir)?;
    match rest.first() {
        None => Some(rest),
        Some(b'/') => Some(&rest[1..]),
        Some(_) => None,
    }
}

/// The length of the longest common leading directory of all `paths`
/// (normalized, at least one).
fn common_dir_of(paths: &[&[u8]]) -> usize {
    paths[1..].iter().fold(paths[0].len(), |n, p| {
        // Most layers share the whole prefix found so far: one memcmp.
        let prefix = &paths[0][..n];
        if p.starts_with(prefix) && (p.len() == n || p[n] == b'/' || n == 1) {
            n
        } else {
            common_dir_len(prefix, p)
        }
    })
}

/// The length of the longest common leading directory of two normalized
/// paths (as bytes, cut at a component boundary).
fn common_dir_len(a: &[u8], b: &[u8]) -> usize {
    let n = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let boundary = |p: &[u8]| n == p.len() || p[n] == b'/';
    if boundary(a) && boundary(b) {
        return n;
    }
    a[..n].iter().rposition(|c| *c == b'/').unwrap_or(0)
}

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

fn join(dir: &[u8], rel: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(dir.len() + rel.len() + 1);
    out.extend_from_slice(dir);
    if !rel.is_empty() {
        if out.last() != Some(&b'/') {
            out.push(b'/');
        }
        out.extend_from_slice(rel);
    }
    out
}

/// One directory of the overlay, located, for [`check_overlaps`].
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

/// Two members that overlap, by index.
#[derive(Debug, PartialEq, Eq)]
enum Clash {
    /// (earlier, later) are the same directory.
    Same(usize, usize),
    /// (outer, inner): the second lies inside the first.
    Inside(usize, usize),
}

/// The first overlap among members' relative names (normalized, below one
/// root, no mount in between): the same name twice, or a name that is a
/// whole-component prefix of another (`""`, the root itself, holds all).
///
/// `count` is at least the number of members (it sizes the table).
///
/// In time linear in the names' length, without sorting (this runs on
/// every mount, and real stacks nest names like `<id>/fs`): every name goes
/// into an open-addressing table over member indices, then every proper
/// directory prefix of every name is looked up in it. The hash is FxHash's
/// multiply-rotate: the names are the caller's own, so a flooding-resistant
/// hash would buy nothing and cost more than the whole check.
fn first_clash<'n>(
    members: impl Iterator<Item = usize> + Clone,
    count: usize,
    name: impl Fn(usize) -> &'n [u8],
) -> Option<Clash> {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    // Byte by byte into 8-byte words (names are short: no memcpy call per
    // name), noting any `/` on the way.
    let hash = |name: &[u8], slash: &mut bool| {
        let mut h = name.len() as u64;
        for chunk in name.chunks(8) {
            let mut word = 0u64;
            for (i, &b) in chunk.iter().enumerate() {
                word |= u64::from(b) << (8 * i);
                *slash |= b == b'/';
            }
            h = (h.rotate_left(5) ^ word).wrapping_mul(K);
        }
        // The high bits are the well-mixed ones.
        (h >> 32) as usize
    };
    let slots = (count * 2).next_power_of_two();
    // 0 is an empty slot; otherwise a member + 1.
    let mut table = vec![0u32; slots];
    let lookup = |table: &[u32], wanted: &[u8], slash: &mut bool| -> Result<usize, usize> {
        let mut i = hash(wanted, slash) & (slots - 1);
        loop {
            match table[i] {
                0 => return Err(i),
                e if name(e as usize - 1) == wanted => return Ok(e as usize - 1),
                _ => i = (i + 1) & (slots - 1),
            }
        }
    };
    let mut nested = false;
    // The root itself (an empty name) holds every other member.
    let (mut root, mut other) = (None, None);
    for k in members.clone() {
        let n = name(k);
        match lookup(&table, n, &mut nested) {
            Ok(first) => return Some(Clash::Same(first, k)),
            Err(slot) => table[slot] = k as u32 + 1,
        }
        match n.is_empty() {
            true => root = Some(k),
            false => other = other.or(Some(k)),
        }
    }
    if let (Some(root), Some(other)) = (root, other) {
        return Some(Clash::Inside(root, other));
    }
    if nested {
        for k in members {
            let full = name(k);
            for (cut, _) in full.iter().enumerate().filter(|(_, b)| **b == b'/') {
                if let Ok(outer) = lookup(&table, &full[..cut], &mut false) {
                    return Some(Clash::Inside(outer, k));
                }
            }
        }
    }
    None
}

/// The one-line refusal for a [`Clash`] between two layers, each described
/// by its 1-based number, path as given and role.
fn clash_error<'p>(clash: Clash, describe: impl Fn(usize) -> (usize, &'p Path, Role)) -> Error {
    let (outer, inner, same) = match clash {
        Clash::Same(first, later) => (first, later, true),
        Clash::Inside(outer, inner) => (outer, inner, false),
    };
    let (n1, p1, _) = describe(outer);
    let (_, p2, role2) = describe(inner);
    let why = if same {
        format!(
            "is the same directory as layer {n1} ({}); give each layer once",
            display_path(p1)
        )
    } else {
        format!(
            "lies inside layer {n1} ({}); overlay needs separate directory trees",
            display_path(p1)
        )
    };
    Error::invalid_path(role2.noun(), p2, why)
}

/// Refuses directories that overlap: a layer given twice or inside
/// another, and above all an upper or work dir inside a layer (overlay
/// would write into the image) or a layer inside them. The kernel checks
/// some of this only after it has written to the upper and work dirs, and
/// not an upper dir inside a lower layer at all.
pub fn check_overlaps(
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
        let inside = |what: String| {
            Error::invalid_path(
                w.role.noun(),
                w.path,
                format!(
                    "lies inside {what}: writes would land in the image layer; give a {} outside every layer",
                    w.role.noun()
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
                Some(Overlap::Same | Overlap::Inside) => return Err(inside(name(l))),
                Some(Overlap::Contains) => return Err(holds(l.path, l.role)),
                None => {}
            }
        }
        for g in groups.iter() {
            match g.find(&w.at) {
                Some((k, Overlap::Same | Overlap::Inside)) => return Err(inside(member(g, k).0)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_dir_of_cuts_at_component_boundaries() {
        let c = |ps: &[&str]| {
            let ps: Vec<&[u8]> = ps.iter().map(|p| p.as_bytes()).collect();
            let n = common_dir_of(&ps);
            String::from_utf8(ps[0][..n].to_vec()).unwrap()
        };
        assert_eq!(c(&["/a/b/c", "/a/b/d", "/a/b/e/f"]), "/a/b");
        assert_eq!(c(&["/a/bc", "/a/b"]), "/a");
        assert_eq!(c(&["/a/b", "/a/bc"]), "/a");
        assert_eq!(c(&["/x", "/y"]), "");
        assert_eq!(c(&["/a", "/a"]), "/a");
        assert_eq!(c(&["/a/b", "/a"]), "/a");
        assert_eq!(c(&["/", "/a"]), "/");
    }

    #[test]
    fn ancestors_and_normal_forms() {
        let common = |v: &[&str]| {
            let n = v[1..].iter().fold(v[0].len(), |n, p| {
                common_dir_len(&v[0].as_bytes()[..n], p.as_bytes())
            });
            String::from_utf8(v[0].as_bytes()[..n].to_vec()).unwrap()
        };
        assert_eq!(common(&["/a/b/c", "/a/b/d"]), "/a/b");
        assert_eq!(common(&["/a/b/c", "/a/b/c/d"]), "/a/b/c");
        assert_eq!(common(&["/x/1/fs", "/y/2/fs"]), "");
        assert_eq!(common(&["/s/1/fs", "/s/2/fs", "/s/10/fs"]), "/s");
        assert_eq!(common(&["/ab/c", "/a/c"]), "");
        assert_eq!(common(&["/a/bc", "/a/b"]), "/a");
        let n = |p: &str| {
            normalize_from(p.as_bytes(), 0).map(|c| String::from_utf8(c.into_owned()).unwrap())
        };
        assert_eq!(n("/a//b/./c/"), Some("/a/b/c".into()));
        assert_eq!(n("/a/b"), Some("/a/b".into()));
        assert_eq!(n("/"), Some("/".into()));
        assert_eq!(n("/./"), Some("/".into()));
        assert_eq!(n("/a/../b"), None);
        assert_eq!(below(b"/a/b/c", b"/a"), Some(&b"b/c"[..]));
        assert_eq!(below(b"/a/b", b"/a/b"), Some(&b""[..]));
        assert_eq!(below(b"/ab", b"/a"), None);
        assert_eq!(below(b"x/y", b""), Some(&b"x/y"[..]));
        assert_eq!(below(b"/x", b"/"), Some(&b"x"[..]));
    }

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

    /// [`check_overlaps`] without a target.
    fn overlaps(
        groups: &mut [LocatedGroup<'_>],
        singles: &[Located<'_>],
        upper: Option<&Located<'_>>,
        work: Option<&Located<'_>>,
    ) -> Result<()> {
        check_overlaps(groups, singles, upper, work, None)
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
            let e = check_overlaps(&mut group(), &[], Some(&u), Some(&w), Some(&target))
                .unwrap_err()
                .to_string();
            assert!(e.contains(names) && e.contains("target"), "{e}");
        }
        // Beside them, or holding them, is fine.
        for target in ["/tmp/t", "/img"] {
            let target = loc(target, Role::Target, 0);
            check_overlaps(&mut group(), &[], Some(&u), Some(&w), Some(&target)).unwrap();
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
        fn normalizing_from_a_known_normal_directory_changes_nothing(
            dir in "(/[a.]{1,3}){0,3}",
            tail in "/[a./]{1,6}",
        ) {
            let path = format!("{dir}{tail}");
            let dir_is_normal = matches!(normalize_from(dir.as_bytes(), 0), Some(Cow::Borrowed(_)));
            if dir_is_normal && !dir.is_empty() {
                proptest::prop_assert_eq!(
                    normalize_from(path.as_bytes(), dir.len()),
                    normalize_from(path.as_bytes(), 0),
                    "{}", path
                );
            }
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
