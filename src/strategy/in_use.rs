//! Whether an upper and work dir already serve another overlay: two
//! overlays writing one upper corrupt each other, and overlay itself only
//! logs "is in-use … undefined behavior" unless `index=on`.
//!
//! Two ways to know, neither touching any filesystem but the pair's own
//! (a path in the mount table may lead into a hung FUSE mount):
//!
//! * idoverlay's own overlays *claim* their pair once mounted: an xattr
//!   `trusted.idoverlay.mount` on the upper and the work dir names the
//!   boot and the overlay's mount id (the unique one, 6.8+). A claim counts
//!   while that mount lives in this mount namespace (`statmount`, or the
//!   mount table before 6.8). The claim is made with `XATTR_CREATE`, so of
//!   two overlays mounted at once on one pair, the second sees the first's
//!   claim and is taken down again.
//! * any other overlay shows its `upperdir=` and `workdir=` in the mount
//!   table: each is located through the table (device and path on its
//!   filesystem, no lookup), and compared with where ours are. Paths that
//!   were renamed since, and names through `/proc/…/fd`, cannot be told.
//!
//! Overlays in other mount namespaces are not seen; nor is a foreign
//! overlay on a pair whose last idoverlay overlay (of this boot) is gone:
//! then the table is not searched, so that a pair used again and again
//! costs two `getxattr` calls however many mounts the node has.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

use crate::error::{display_path, Error, Result};
use crate::layer::{FsLocation, OpenedDir};
use crate::mountinfo::MountEntry;
use crate::state::boot_id;
use crate::sys::{self, XattrSet};

/// The xattr of a claim.
const CLAIM: &CStr = c"trusted.idoverlay.mount";
/// The most bytes a claim takes.
const CLAIM_MAX: usize = 128;

/// Which mount claimed a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MountId {
    /// `STATX_MNT_ID_UNIQUE`, never reused (6.8+).
    Unique(u64),
    /// `STATX_MNT_ID`, reused once the mount is gone.
    Reusable(u64),
}

/// A claim's text: `idoverlay1 BOOT_ID u123 upper` (or `m45`, `work`).
///
/// The last word, the dir's role, is there only to make the upper's and the
/// work dir's claims differ. ext4 keeps xattrs that do not fit the inode in
/// a block it shares between inodes whose xattrs are identical; with one
/// text on both dirs, every claim copied their shared block and freed the
/// old one, a synchronous discard on a filesystem mounted `-o discard`:
/// 145 µs for the pair, against 9–13 µs for texts that differ (measured
/// with 2,000 pairs on this machine's ext4).
///
/// A claim made in a mount namespace that has an id (6.7+) ends with it,
/// `ns123`: the overlay is looked for there (`statmount`, 6.11+), also from
/// another namespace (one attached with `-N`, seen from the caller's).
fn claim_text(id: MountId, role: &str, ns: Option<u64>) -> Option<Vec<u8>> {
    let boot = boot_id()?;
    let ns = ns.map(|n| format!(" ns{n}")).unwrap_or_default();
    Some(
        match id {
            MountId::Unique(n) => format!("idoverlay1 {boot} u{n} {role}{ns}"),
            MountId::Reusable(n) => format!("idoverlay1 {boot} m{n} {role}{ns}"),
        }
        .into_bytes(),
    )
}

/// What a claim says: the mount, and the mount namespace it was made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Claim {
    id: MountId,
    ns: Option<u64>,
}

/// Where a live overlay that claimed a pair is.
enum Seen {
    /// Mounted at this path, in this thread's mount namespace.
    At(PathBuf),
    /// Mounted in another mount namespace, with this id.
    InNamespace(u64),
}

/// The role word of `dir` in claims and messages: `upper` or `work`.
fn role_word(dir: &OpenedDir) -> &'static str {
    dir.role.noun().trim_end_matches(" dir")
}

/// The mount that claimed `dir`, if one of this boot did.
fn claim_of(dir: BorrowedFd<'_>) -> Option<Claim> {
    sys::get_xattr(dir, CLAIM, CLAIM_MAX)
        .ok()
        .flatten()
        .and_then(|bytes| parse_claim(&bytes))
}

/// The mount a claim names, if it was made in this boot.
fn parse_claim(bytes: &[u8]) -> Option<Claim> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut words = text.split(' ');
    if words.next()? != "idoverlay1" || words.next()? != boot_id()? {
        return None;
    }
    let id = words.next()?;
    let parsed = match id.split_at_checked(1)? {
        ("u", n) => MountId::Unique(n.parse().ok()?),
        ("m", n) => MountId::Reusable(n.parse().ok()?),
        _ => return None,
    };
    // Claims made before the role word was added end after the id; those
    // made before the namespace was, after the role.
    let role = words.next();
    let role_ok = matches!(role, None | Some("upper" | "work"));
    let ns = match (role, words.next()) {
        (_, None) => None,
        (Some(_), Some(ns)) => Some(ns.strip_prefix("ns")?.parse().ok()?),
        (None, Some(_)) => return None,
    };
    (role_ok && words.next().is_none()).then_some(Claim { id: parsed, ns })
}

/// Where a live overlay that claimed a pair is mounted, or `None` when the
/// mount is gone (or elsewhere).
fn live_mount_point(claim: Claim) -> Option<Seen> {
    match claim.id {
        MountId::Unique(n) => match (sys::statmount(n), claim.ns) {
            (Some(here), _) => Some(Seen::At(here.point)),
            // Not in this namespace: in the one it was claimed in?
            (None, Some(ns)) => {
                (sys::mount_exists_in(n, Some(ns)) == Some(true)).then_some(Seen::InNamespace(ns))
            }
            (None, None) => None,
        },
        MountId::Reusable(n) => crate::mountinfo::read_self()
            .ok()?
            .into_iter()
            .find(|m| m.mount_id == n && m.fs_type == "overlay")
            .map(|m| Seen::At(m.mount_point)),
    }
}

/// The id of this thread's mount namespace (6.7+), which a claim names.
pub(crate) fn this_mount_ns_id() -> Option<u64> {
    crate::records::this_mount_ns_ids().and_then(|(_, id)| id)
}

/// The mount id a new claim records for the overlay whose root `root` is.
fn mount_id_of(root: BorrowedFd<'_>) -> Option<MountId> {
    if let Some(n) = sys::stat_fd_unique_mnt_id(root) {
        return Some(MountId::Unique(n));
    }
    sys::stat_fd(root).ok()?.mnt_id.map(MountId::Reusable)
}

fn in_use_error(dir: &OpenedDir, their_role: &str, at: &Seen) -> Error {
    let at = match at {
        Seen::At(path) => format!("mounted at {}", display_path(path)),
        Seen::InNamespace(ns) => format!("mounted in another mount namespace (id {ns})"),
    };
    Error::invalid_path(
        dir.role.noun(),
        &dir.path,
        format!(
            "is in use as the {their_role} dir of the overlay {at}; an upper and work pair \
             serves one overlay at a time: unmount that one first, or give this overlay its own"
        ),
    )
}

/// Refuses an upper or work dir that another overlay in this mount
/// namespace uses now. A fresh pair (no claim, no trace of an earlier
/// overlay: `work/` or `index/` in the work dir, `trusted.overlay.uuid` on
/// the upper, 6.6+) costs two `getxattr` calls.
pub(crate) fn check_not_in_use(upper: &OpenedDir, work: &OpenedDir, work_used: bool) -> Result<()> {
    if check_claims(upper, work)? {
        // Last used by an overlay of idoverlay's in this boot, gone now:
        // the traces of earlier use are its own, and the mount table (whose
        // reading grows with the node's mounts) need not be searched.
        return Ok(());
    }
    let upper_used = || sys::has_xattr(upper.fd.as_fd(), c"trusted.overlay.uuid").unwrap_or(true);
    if !work_used && !upper_used() {
        return Ok(());
    }
    let Ok(table) = crate::mountinfo::read_self() else {
        return Ok(());
    };
    check_against_table(upper, work, &table)
}

/// Refuses an upper or work dir that a live overlay of idoverlay's, in
/// this thread's mount namespace, claimed. (In a namespace of its own, as
/// private-ns runs, the caller's mounts are not seen: that strategy checks
/// the claims before it enters one, on the very same directories.) Returns
/// whether both carry a claim of this boot (of mounts gone now).
pub(crate) fn check_claims(upper: &OpenedDir, work: &OpenedDir) -> Result<bool> {
    let mut both = true;
    for dir in [upper, work] {
        let claim = claim_of(dir.fd.as_fd());
        both &= claim.is_some();
        if let Some(at) = claim.and_then(live_mount_point) {
            return Err(in_use_error(dir, role_word(dir), &at));
        }
    }
    Ok(both)
}

/// The overlays of `table` against our pair, by location.
fn check_against_table(upper: &OpenedDir, work: &OpenedDir, table: &[MountEntry]) -> Result<()> {
    let locate = |d: &OpenedDir| -> Option<FsLocation> {
        let canonical = d.canonical.clone().or_else(|| sys::fd_path(d.fd.as_fd()))?;
        match d.stat.mnt_id {
            Some(id) => FsLocation::on_mount(&canonical, id, table).ok(),
            None => FsLocation::of(&canonical, table),
        }
    };
    let ours: Vec<(&OpenedDir, FsLocation)> = [upper, work]
        .into_iter()
        .filter_map(|d| Some((d, locate(d)?)))
        .collect();
    for entry in table.iter().filter(|m| m.fs_type == "overlay") {
        let (their_upper, their_work) = crate::mountinfo::overlay_upper_work(entry);
        for (theirs, their_role) in [(their_upper, "upper"), (their_work, "work")] {
            let Some(theirs) = theirs.filter(|p| p.is_absolute() && !p.starts_with("/proc")) else {
                continue;
            };
            let Some(at) = FsLocation::of(&theirs, table) else {
                continue;
            };
            if let Some((dir, _)) = ours.iter().find(|(_, loc)| *loc == at) {
                return Err(in_use_error(
                    dir,
                    their_role,
                    &Seen::At(entry.mount_point.clone()),
                ));
            }
        }
    }
    Ok(())
}

/// Claims `upper` and `work` for the overlay whose root is `root`, not
/// attached yet, and attaches it (`attach`) while no other claim can come
/// between. `Err`, and nothing attached, when another live overlay claimed
/// either meanwhile. A pair whose filesystem takes no such xattr, or a
/// kernel that gives no mount id, is not claimed (the overlay is attached
/// all the same).
///
/// Reading a claim, writing ours and attaching is one step to every other
/// claimer: both dirs are locked (`flock`) meanwhile. Without the lock, two
/// overlays mounted at once on a pair used before both found the claim of
/// a mount that is gone, both replaced it, and both stayed (seen in
/// `race.rs`: about one round in fifty). Attached before its claim, under
/// a lock of its own, an overlay refused had to be taken down again, by
/// its `/proc/thread-self/fd/N`, which a mount namespace entered for `-N`
/// whose `/proc` is another pid namespace's does not show: it stayed.
///
/// With `upper_owner` (`--chown-upper`'s container root), the upper's root
/// is given that owner again, under the lock, should it have lost it:
/// another request that had chowned it too, and failed, may have put it
/// back before this overlay claimed the pair (it leaves a claimed upper
/// alone, see [`give_upper_back`]).
pub(crate) fn claim(
    upper: &OpenedDir,
    work: &OpenedDir,
    root: BorrowedFd<'_>,
    upper_owner: Option<(u32, u32)>,
    mount_ns: Option<u64>,
    attach: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let Some(ours) = mount_id_of(root) else {
        return attach();
    };
    let texts = [upper, work].map(|dir| claim_text(ours, role_word(dir), mount_ns));
    let [Some(upper_text), Some(work_text)] = texts else {
        return attach();
    };
    let _locked = lock_pair(upper, work)?;
    claim_one(upper, &upper_text, ours)?;
    claim_one(work, &work_text, ours)?;
    if let Some((uid, gid)) = upper_owner {
        let now = sys::stat_fd(upper.fd.as_fd())
            .map_err(|e| Error::os("inspect", Some(&upper.path), e))?;
        if (now.uid, now.gid) != (uid, gid) {
            crate::mistakes::give_upper(upper, (uid, gid))?;
        }
    }
    attach()
}

/// Runs `f` (`--chown-upper`'s chown) with `upper` locked as claims lock
/// it, once no live overlay claims it: refused as in use otherwise. The
/// in-use check came earlier, unlocked; an overlay claimed since would
/// have its upper's owner changed under it.
pub(crate) fn unclaimed_upper<T>(upper: &OpenedDir, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let _locked = lock_with_wait(upper.fd.as_fd())
        .map_err(|e| Error::os("lock for its claim", Some(&upper.path), e))?;
    if let Some(at) = claim_of(upper.fd.as_fd()).and_then(live_mount_point) {
        return Err(in_use_error(upper, role_word(upper), &at));
    }
    f()
}

/// Gives an upper dir back to its owner before `--chown-upper`, under the
/// lock claims take, unless another overlay uses it now: a live overlay
/// claims it, or its owner is no longer the one given (someone chowned it
/// since). Two requests on one empty upper both want it chowned; the one
/// refused (its claim came second) must not take the owner away from the
/// other's live overlay. `Ok(Some(why))` when it was left as it is.
pub(crate) fn give_upper_back(
    chowned: &super::ChownedUpper,
) -> std::result::Result<Option<&'static str>, sys::SysError> {
    let fd = chowned.fd.as_fd();
    let _locked = lock_with_wait(fd)?;
    if claim_of(fd).and_then(live_mount_point).is_some() {
        return Ok(Some("another overlay claims it now"));
    }
    let now = sys::stat_fd(fd)?;
    if (now.uid, now.gid) != chowned.given {
        return Ok(Some("its owner changed since"));
    }
    let (uid, gid) = chowned.before;
    sys::chown_fd(fd, uid, gid)?;
    Ok(None)
}

/// Locks taken by [`lock_pair`], given back when dropped.
struct Locks<'a>(Vec<BorrowedFd<'a>>);

impl Drop for Locks<'_> {
    fn drop(&mut self) {
        for fd in &self.0 {
            let _ = sys::unlock(*fd);
        }
    }
}

/// Claims `dir` (locked) unless a live overlay other than `ours` has. The
/// write is conditional (`XATTR_CREATE` where there was none, else
/// `XATTR_REPLACE`): should a claimer that does not lock (a filesystem
/// without `flock`, an older idoverlay) have written or removed one
/// meanwhile, the claim is read again, a few times, then refused.
fn claim_one(dir: &OpenedDir, text: &[u8], ours: MountId) -> Result<()> {
    let fd = dir.fd.as_fd();
    for _ in 0..3 {
        let previous = match sys::get_xattr(fd, CLAIM, CLAIM_MAX) {
            Ok(previous) => previous,
            // Longer than any claim: none, replaced by ours.
            Err(e) if e.errno == libc::ERANGE => Some(Vec::new()),
            // No xattrs to be had here: not claimed.
            Err(_) => return Ok(()),
        };
        if let Some(at) = previous
            .as_deref()
            .and_then(parse_claim)
            .filter(|claim| claim.id != ours)
            .and_then(live_mount_point)
        {
            return Err(in_use_error(dir, role_word(dir), &at));
        }
        // None yet, or a claim of a mount that is gone: ours.
        let how = match previous {
            None => XattrSet::Create,
            Some(_) => XattrSet::Replace,
        };
        match sys::set_xattr(fd, CLAIM, text, how) {
            Ok(()) => return Ok(()),
            Err(e) if matches!(e.errno, libc::EEXIST | libc::ENODATA) => continue,
            // No xattrs to be had here: not claimed.
            Err(_) => return Ok(()),
        }
    }
    Err(Error::invalid_path(
        dir.role.noun(),
        &dir.path,
        "its claim (trusted.idoverlay.mount) changed under us three times: another process \
         is claiming it without locking; give this overlay a pair of its own",
    ))
}

/// How long a claim waits for another one on the same dirs; a claim takes
/// microseconds, so only a process that holds a lock on the dir for
/// other reasons makes it wait this long.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Locks both dirs for a claim, in one order (device, inode) so that two
/// claimers of crossed pairs cannot wait for each other. Returns the locks
/// taken; a filesystem that takes no `flock` is claimed unlocked, as
/// before. `Err` when another process holds a lock for over [`LOCK_WAIT`].
fn lock_pair<'a>(upper: &'a OpenedDir, work: &'a OpenedDir) -> Result<Locks<'a>> {
    let mut dirs = [upper, work];
    dirs.sort_by_key(|d| (d.stat.dev, d.stat.ino));
    let mut locked = Locks(Vec::with_capacity(2));
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    for dir in dirs {
        match lock_until(dir.fd.as_fd(), deadline) {
            Ok(Some(true)) => locked.0.push(dir.fd.as_fd()),
            Ok(Some(false)) => {
                return Err(Error::invalid_path(
                    dir.role.noun(),
                    &dir.path,
                    format!(
                        "is locked (flock) by another process for over {} s; find it with \
                         `fuser -v {}` and let it finish",
                        LOCK_WAIT.as_secs(),
                        display_path(&dir.path)
                    ),
                ));
            }
            Ok(None) => {}
            Err(e) => return Err(Error::os("lock for its claim", Some(&dir.path), e)),
        }
    }
    Ok(locked)
}

/// Locks one dir as a claim does, waiting up to [`LOCK_WAIT`]; `None` on a
/// filesystem that takes no `flock`. `Err` when it stays locked.
fn lock_with_wait(fd: BorrowedFd<'_>) -> std::result::Result<Option<Locks<'_>>, sys::SysError> {
    match lock_until(fd, std::time::Instant::now() + LOCK_WAIT)? {
        Some(true) => Ok(Some(Locks(vec![fd]))),
        Some(false) => Err(sys::SysError {
            syscall: "flock",
            args: format!(
                "LOCK_EX, held by another process for over {} s",
                LOCK_WAIT.as_secs()
            ),
            errno: libc::EWOULDBLOCK,
        }),
        None => Ok(None),
    }
}

/// `flock(LOCK_EX | LOCK_NB)` tried until `deadline`: `Some(true)` locked,
/// `Some(false)` still held by another, `None` no locks on this
/// filesystem.
fn lock_until(
    fd: BorrowedFd<'_>,
    deadline: std::time::Instant,
) -> std::result::Result<Option<bool>, sys::SysError> {
    loop {
        match sys::try_lock_exclusive(fd) {
            Ok(true) => return Ok(Some(true)),
            Ok(false) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Ok(false) => return Ok(Some(false)),
            // Only an fd opened without read access (O_PATH) makes this
            // EBADF: a bug here, not a filesystem without locks.
            Err(e) if e.errno == libc::EBADF => return Err(e),
            Err(_) => return Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_parse_only_for_this_boot_and_in_their_format() {
        let Some(boot) = boot_id() else { return };
        let claim = |id, ns| Some(Claim { id, ns });
        let text = claim_text(MountId::Unique(42), "upper", Some(9)).unwrap();
        assert_eq!(parse_claim(&text), claim(MountId::Unique(42), Some(9)));
        let no_ns = claim_text(MountId::Unique(42), "upper", None).unwrap();
        assert_eq!(parse_claim(&no_ns), claim(MountId::Unique(42), None));
        let old = claim_text(MountId::Reusable(7), "work", None).unwrap();
        assert_eq!(parse_claim(&old), claim(MountId::Reusable(7), None));
        let before_roles = format!("idoverlay1 {boot} u42");
        assert_eq!(
            parse_claim(before_roles.as_bytes()),
            claim(MountId::Unique(42), None)
        );
        for bad in [
            "idoverlay1 00000000-0000-0000-0000-000000000000 u42".to_string(),
            format!("idoverlay2 {boot} u42"),
            format!("idoverlay1 {boot} x42"),
            format!("idoverlay1 {boot} u42 extra"),
            format!("idoverlay1 {boot} u42 upper extra"),
            format!("idoverlay1 {boot} u42 upper ns"),
            format!("idoverlay1 {boot} u42 upper ns9 extra"),
            format!("idoverlay1 {boot} u-1"),
            String::new(),
        ] {
            assert_eq!(parse_claim(bad.as_bytes()), None, "{bad}");
        }
    }
}
