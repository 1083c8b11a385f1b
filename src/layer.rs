//! Layers: opened once, checked, and grouped so that layers sharing a
//! directory on one mount can share one idmapped clone.
//!
//! Invariant: every layer is resolved by path exactly once, here, with
//! `O_NOFOLLOW` on its last component. Everything later derives from that fd
//! or is checked against its identity (device and inode), so the overlay can
//! only ever get the directory that was opened here.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use crate::error::{display_path, Error, Result};
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
}

impl Role {
    /// How the role is named in messages.
    pub fn noun(self) -> &'static str {
        match self {
            Role::Lower => "layer",
            Role::Data => "data layer",
            Role::Upper => "upper dir",
            Role::Work => "work dir",
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
}

/// Opens a directory given by the user: absolute path, no symlink in the
/// last component, a directory. Errors name the path and say what to do.
pub fn open_dir(path: &Path, role: Role) -> Result<OpenedDir> {
    let noun = role.noun();
    if !path.is_absolute() {
        return Err(Error::invalid_path(
            noun,
            path,
            "is a relative path; give an absolute path (e.g. \"$PWD/...\")",
        ));
    }
    if path.as_os_str().len() >= libc::PATH_MAX as usize {
        return Err(Error::invalid_path(
            noun,
            path,
            "is longer than PATH_MAX (4096 bytes)",
        ));
    }
    let fd = match sys::open_dir_path(sys::cwd(), path) {
        Ok(fd) => fd,
        Err(e) => return Err(explain_open_failure(path, role, e)),
    };
    let stat = sys::stat_fd(fd.as_fd())
        .map_err(|e| Error::os(format!("inspect {noun}"), Some(path), e))?;
    Ok(OpenedDir {
        path: path.to_path_buf(),
        role,
        fd,
        stat,
    })
}

/// Turns a failed open into a message about the path rather than the syscall.
fn explain_open_failure(path: &Path, role: Role, e: sys::SysError) -> Error {
    let noun = role.noun();
    let reason = match e.errno {
        libc::ENOENT => match sys::stat_nofollow(sys::cwd(), path) {
            Ok(st) if st.is_symlink() => {
                "is a dangling symlink; give the directory itself".to_string()
            }
            _ => "does not exist".to_string(),
        },
        libc::ENOTDIR => match sys::stat_nofollow(sys::cwd(), path) {
            Ok(st) if st.is_symlink() => "is a symlink; give the directory it points to \
                 (symlinks are never followed in a layer's last component)"
                .to_string(),
            Ok(st) => format!("is {}, not a directory", st.kind()),
            Err(_) => "has a component that is not a directory".to_string(),
        },
        libc::ELOOP => "has too many levels of symlinks".to_string(),
        libc::EACCES => "cannot be searched: permission denied".to_string(),
        libc::ENAMETOOLONG => "is too long".to_string(),
        _ => return Error::os(format!("open {noun}"), Some(path), e),
    };
    Error::InvalidInput {
        what: noun.to_string(),
        input: display_path(path),
        reason,
        path: Some(path.to_path_buf()),
        source: Some(e),
    }
}

/// Checks what can be checked about the set of lower and data layers before
/// the kernel sees them: count, duplicates.
pub fn check_layer_set(layers: &[OpenedDir]) -> Result<()> {
    if layers.len() > MAX_LAYERS {
        return Err(Error::invalid(
            "layers",
            format!("{} layers", layers.len()),
            format!(
                "overlayfs stacks at most {MAX_LAYERS} lower and data layers (OVL_MAX_STACK); \
                 squash some layers or split the image"
            ),
        ));
    }
    let mut seen: HashMap<((u32, u32), u64), usize> = HashMap::with_capacity(layers.len());
    for (i, layer) in layers.iter().enumerate() {
        if let Some(first) = seen.insert((layer.stat.dev, layer.stat.ino), i) {
            return Err(Error::invalid_path(
                layer.role.noun(),
                &layer.path,
                format!(
                    "is the same directory as layer {} ({}); give each layer once",
                    first + 1,
                    display_path(&layers[first].path)
                ),
            ));
        }
    }
    Ok(())
}

/// Layers that will be reached through one idmapped clone.
#[derive(Debug)]
pub struct Group {
    /// The directory to clone: a shared ancestor, or the layer itself.
    pub root: GroupRoot,
    /// The layers reached through it, with their path relative to the root
    /// (empty for the root itself).
    pub members: Vec<Member>,
}

/// What a group clones.
#[derive(Debug)]
pub enum GroupRoot {
    /// A common ancestor directory, opened here (no symlink in its last component).
    Shared {
        /// Its path.
        path: PathBuf,
        /// `O_PATH` handle.
        fd: OwnedFd,
    },
    /// The single layer with this index, cloned through its own fd.
    Own(usize),
}

/// One layer of a group.
#[derive(Debug, Clone)]
pub struct Member {
    /// Index into the layer list.
    pub layer: usize,
    /// Path below the group root (empty: the root itself).
    pub rel: PathBuf,
}

impl Group {
    /// A group of one layer, cloned through its own fd.
    pub fn own(layer: usize) -> Self {
        Group {
            root: GroupRoot::Own(layer),
            members: vec![Member {
                layer,
                rel: PathBuf::new(),
            }],
        }
    }
}

/// Groups layers that sit below one directory on one mount, so that they
/// can share one clone of that directory.
///
/// Layers on a mount of their own, layers whose path has `..`, and layers
/// for which no shared ancestor can be opened get a group (a clone) of their
/// own. `shareable` can veto a layer's relative path (e.g. a strategy that
/// passes paths as strings refuses characters overlay would misparse).
pub fn plan_groups(layers: &[OpenedDir], shareable: impl Fn(&Path) -> bool) -> Vec<Group> {
    let mut by_mount: Vec<(u64, Vec<usize>)> = Vec::new();
    let mut groups = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let plain = layer
            .path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        match layer.stat.mnt_id {
            Some(mnt) if plain => match by_mount.iter_mut().find(|(m, _)| *m == mnt) {
                Some((_, members)) => members.push(i),
                None => by_mount.push((mnt, vec![i])),
            },
            _ => groups.push(Group::own(i)),
        }
    }
    for (mnt_id, members) in by_mount {
        if members.len() < 2 {
            groups.extend(members.into_iter().map(Group::own));
            continue;
        }
        let ancestor = common_ancestor(members.iter().map(|&i| layers[i].path.as_path()));
        let root_fd = sys::open_dir_path(sys::cwd(), &ancestor)
            .ok()
            .filter(|fd| sys::stat_fd(fd.as_fd()).is_ok_and(|st| st.mnt_id == Some(mnt_id)));
        let Some(root_fd) = root_fd else {
            groups.extend(members.into_iter().map(Group::own));
            continue;
        };
        let mut shared = Vec::with_capacity(members.len());
        for i in members {
            let rel = layers[i]
                .path
                .strip_prefix(&ancestor)
                .map(Path::to_path_buf)
                .unwrap_or_default();
            if shareable(&rel) {
                shared.push(Member { layer: i, rel });
            } else {
                groups.push(Group::own(i));
            }
        }
        match shared.len() {
            0 => {}
            1 => groups.push(Group::own(shared[0].layer)),
            _ => groups.push(Group {
                root: GroupRoot::Shared {
                    path: ancestor,
                    fd: root_fd,
                },
                members: shared,
            }),
        }
    }
    groups
}

/// The longest common leading path of absolute, `..`-free paths.
fn common_ancestor<'a>(mut paths: impl Iterator<Item = &'a Path>) -> PathBuf {
    let Some(first) = paths.next() else {
        return PathBuf::from("/");
    };
    let mut common: Vec<Component<'a>> = first.components().collect();
    for path in paths {
        let n = common
            .iter()
            .zip(path.components())
            .take_while(|(a, b)| *a == b)
            .count();
        common.truncate(n);
    }
    // A layer that is itself the ancestor of the others still works: its
    // relative path is empty. The root stays at least "/".
    let mut out = PathBuf::from("/");
    for c in common {
        out.push(c.as_os_str());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors() {
        let p = |v: &[&str]| common_ancestor(v.iter().map(Path::new));
        assert_eq!(p(&["/a/b/c", "/a/b/d"]), Path::new("/a/b"));
        assert_eq!(p(&["/a/b/c", "/a/b/c/d"]), Path::new("/a/b/c"));
        assert_eq!(p(&["/x/1/fs", "/y/2/fs"]), Path::new("/"));
        assert_eq!(p(&["/a//b/./c", "/a/b/d"]), Path::new("/a/b"));
        assert_eq!(p(&["/s/1/fs", "/s/2/fs", "/s/10/fs"]), Path::new("/s"));
        assert_eq!(p(&["/ab/c", "/a/c"]), Path::new("/"));
    }
}
