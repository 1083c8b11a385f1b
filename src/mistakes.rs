//! Warnings for the usual mistakes: calls the kernel accepts whose overlay
//! then does not do what its caller meant. Each says what is wrong and
//! what to do; a correct call gets none, and pays one `statx` for them
//! (of the top layer's root), plus nothing when the upper is right.
//!
//! * An upper whose root is owned by an id the container cannot name:
//!   inside the container `/` shows as nobody and even root cannot create
//!   a file there (runc, crun and podman all fail with EACCES). Asked to
//!   ([`crate::Overlay::chown_upper`]), an empty upper's root is given to
//!   container root instead, as containerd's snapshotter does.
//! * A map under which the top layer's root, and most of what it holds,
//!   fall outside the map: everything shows as nobody. Usually container
//!   and host were swapped (`100000:0:65536` for `0:100000:65536`).

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{display_path, Error, Result};
use crate::idmap::IdMap;
use crate::layer::{OpenedDir, Placement, Plan};
use crate::sys;
use crate::userns::UserNamespace;

/// A uid and gid on disk.
type Owner = (u32, u32);

/// How many entries of the top layer are looked at when its root falls
/// outside the map.
const SAMPLE: usize = 64;

/// The ids on disk of container root: what the upper's root must be owned
/// by for root in the container to use it. A plain upper is written with
/// host ids (container root's host ids); an idmapped one with on-disk ids
/// (0).
fn container_root_on_disk(userns: &UserNamespace, idmap_upper: bool) -> Option<(u32, u32)> {
    if idmap_upper {
        return Some((0, 0));
    }
    let uid = userns.uid_map()?.to_host(0)?;
    let gid = userns.gid_map()?.to_host(0)?;
    Some((uid, gid))
}

/// Whether an id stored on the upper is one the container can name.
fn seen_in_container(map: &IdMap, on_disk: u32, idmap_upper: bool) -> bool {
    match idmap_upper {
        // On-disk ids go through the map on the way out.
        true => map.to_host(on_disk).is_some(),
        // Host ids, which the container's namespace maps back.
        false => map.ranges().iter().any(|r| {
            on_disk
                .checked_sub(r.host)
                .is_some_and(|offset| offset < r.size)
        }),
    }
}

/// The warning for an upper whose root the container's root cannot write,
/// when the maps are known.
pub(crate) fn upper_owner(
    upper: &OpenedDir,
    userns: &UserNamespace,
    idmap_upper: bool,
) -> Option<String> {
    let (uid_map, gid_map) = (userns.uid_map()?, userns.gid_map()?);
    let (uid, gid) = (upper.stat.uid, upper.stat.gid);
    if seen_in_container(uid_map, uid, idmap_upper) && seen_in_container(gid_map, gid, idmap_upper)
    {
        return None;
    }
    let (root_uid, root_gid) = container_root_on_disk(userns, idmap_upper)?;
    Some(format!(
        "the upper dir {} is owned by {uid}:{gid}, which the maps do not map into the \
         container: there its root shows as nobody (65534) and even container root cannot \
         create files in it; make it owned by {root_uid}:{root_gid} (container root{whose}), {}",
        display_path(&upper.path),
        crate::Advice::ChownUpper.phrase(),
        whose = if idmap_upper {
            " on disk, the upper being idmapped"
        } else {
            "'s host ids"
        }
    ))
}

/// Gives an empty upper's root to container root, by its fd (exactly the
/// directory that was checked), under the lock claims take and only while
/// no live overlay claims it ([`crate::strategy::in_use::unclaimed_upper`]:
/// another request's overlay, claimed between this one's in-use check and
/// now, keeps its upper's owner). Nothing to do when it is owned so
/// already (as it is now, not as it was opened); an upper that holds
/// anything is refused rather than changed. Returns container root's ids
/// on disk (the owner given) and, when it changed the owner, the owner
/// before.
pub(crate) fn chown_upper(
    upper: &OpenedDir,
    userns: &UserNamespace,
    idmap_upper: bool,
) -> Result<(Owner, Option<Owner>)> {
    let Some((uid, gid)) = container_root_on_disk(userns, idmap_upper) else {
        return Err(Error::invalid_path(
            "upper dir",
            &upper.path,
            "cannot be given to container root: the user namespace's maps are not known, or \
             do not map id 0; give maps that map container root",
        ));
    };
    crate::strategy::in_use::unclaimed_upper(upper, || {
        let now = sys::stat_fd(upper.fd.as_fd())
            .map_err(|e| Error::os("inspect", Some(&upper.path), e))?;
        if (now.uid, now.gid) == (uid, gid) {
            return Ok(((uid, gid), None));
        }
        let entries = sys::dir_entries(upper.fd.as_fd())
            .map_err(|e| Error::os("read", Some(&upper.path), e))?;
        if !entries.is_empty() {
            return Err(Error::invalid_path(
                "upper dir",
                &upper.path,
                format!(
                    "is owned by {}:{} and not empty ({} entries); only an empty upper's root is \
                     given to container root ({uid}:{gid}): chown it yourself if that is meant",
                    now.uid,
                    now.gid,
                    entries.len()
                ),
            ));
        }
        give_upper(upper, (uid, gid))?;
        Ok(((uid, gid), Some((now.uid, now.gid))))
    })
}

/// `fchown` of the upper's root to container root's ids on disk.
pub(crate) fn give_upper(upper: &OpenedDir, (uid, gid): Owner) -> Result<()> {
    sys::chown_fd(upper.fd.as_fd(), uid, gid)
        .map_err(|e| Error::os("give the upper dir to container root", Some(&upper.path), e))
}

/// The warning for a top layer that shows as nobody through the maps: its
/// root outside them, and most of the entries sampled from it too.
pub(crate) fn layers_outside_maps(
    plan: &Plan<'_>,
    singles: &[Option<OpenedDir>],
    userns: &UserNamespace,
) -> Option<String> {
    let (uid_map, gid_map) = (userns.uid_map()?, userns.gid_map()?);
    if plan.layers.len() == 0 {
        return None;
    }
    let (path, _) = plan.layers.get(0);
    let top = match &plan.placement[0] {
        Placement::Single => sys::dup(singles.first()?.as_ref()?.fd.as_fd()).ok()?,
        Placement::Shared { .. } => {
            let (group, rel) = plan.rel(0)?;
            let root = plan.groups[group].fd.as_fd();
            match rel.as_os_str().is_empty() {
                true => sys::dup(root).ok()?,
                false => sys::open_dir_beneath(root, rel).ok()?,
            }
        }
    };
    let outside =
        |st: &sys::Stat| uid_map.to_host(st.uid).is_none() || gid_map.to_host(st.gid).is_none();
    let root = sys::stat_fd(top.as_fd()).ok()?;
    if !outside(&root) {
        return None;
    }
    let dir = sys::open_dir_read(top.as_fd(), Path::new(".")).ok()?;
    let mut names = Vec::new();
    let _ = sys::for_each_entry(dir.as_fd(), |name| {
        names.push(name.to_vec());
        names.len() < SAMPLE
    });
    let sampled: Vec<sys::Stat> = names
        .iter()
        .filter_map(|n| sys::stat_nofollow(top.as_fd(), Path::new(OsStr::from_bytes(n))).ok())
        .collect();
    let out = sampled.iter().filter(|st| outside(st)).count();
    if out * 2 < sampled.len() {
        return None;
    }
    Some(format!(
        "the top layer {} is owned by {}:{}{}, ids the maps (uid {uid_map}, gid {gid_map}) do \
         not cover: through the mount it shows as nobody (65534); are container and host \
         swapped? A map is CONTAINER:HOST:SIZE, the ids on disk first (e.g. 0:100000:65536)",
        display_path(path),
        root.uid,
        root.gid,
        if sampled.is_empty() {
            String::new()
        } else {
            format!(
                ", as are {out} of the {} entries looked at in it",
                sampled.len()
            )
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::seen_in_container;
    use crate::idmap::IdMap;

    #[test]
    fn ids_seen_in_the_container() {
        let map: IdMap = "0:100000:65536".parse().unwrap();
        // A plain upper holds host ids.
        assert!(seen_in_container(&map, 100000, false));
        assert!(seen_in_container(&map, 165535, false));
        assert!(!seen_in_container(&map, 165536, false));
        assert!(!seen_in_container(&map, 0, false));
        // An idmapped upper holds on-disk ids.
        assert!(seen_in_container(&map, 0, true));
        assert!(!seen_in_container(&map, 100000, true));
    }
}
