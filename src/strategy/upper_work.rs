//! The upper and work dirs: checked (one mount, a work dir holding
//! nothing overlay would delete, not in use by another overlay), and handed
//! to overlay as the very directories checked.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::Request;
use crate::error::{display_path, Error, Result};
use crate::layer::OpenedDir;
use crate::overlayfs::{
    escape_dir_value, fd_link, idmapped_clone, role_key, OverlayContext, FSCONFIG_VALUE_MAX,
};
use crate::sys::{self, MountAttrs};

/// Refuses an upper/work pair overlay cannot use safely.
pub(crate) fn check_upper_work(upper: &OpenedDir, work: &OpenedDir) -> Result<()> {
    if upper.stat.same_inode(&work.stat) {
        return Err(Error::invalid_path(
            "work dir",
            &work.path,
            "is the upper dir itself; give an empty sibling directory of the upper dir",
        ));
    }
    if upper.stat.mnt_id != work.stat.mnt_id || upper.stat.dev != work.stat.dev {
        return Err(Error::invalid_path(
            "work dir",
            &work.path,
            format!(
                "is on another mount than upper dir {}; overlay needs both on one mount \
                 (use sibling directories, e.g. DIR/upper and DIR/work)",
                display_path(&upper.path)
            ),
        ));
    }
    let work_used = check_work_contents(work)?;
    check_not_in_use(upper, work, work_used)
}

/// overlay puts only these entries in its work dir; anything else means the
/// directory belongs to something else.
const OVERLAY_WORK_ENTRIES: [&str; 3] = ["work", "index", "incompat"];

/// Refuses a work dir that holds anything overlay did not put there. Not
/// only a matter of tidiness: when it mounts, overlay empties `work/` of
/// its work dir recursively (a file named `work` it deletes), and with
/// `index=on` removes what it does not recognise in `index/`. So those two
/// must hold nothing but what overlay itself leaves: its temporary names
/// (`#` and hex digits), index entries (hex digits), the `incompat` dir.
///
/// Returns whether an overlay has used the work dir before (it holds
/// overlay's own `work/` or `index/`).
fn check_work_contents(work: &OpenedDir) -> Result<bool> {
    // Read through the fd itself when it was opened readable (see
    // `layer::open_dir`), else through a fresh open of it.
    let names = sys::dir_entries_from(work.fd.as_fd())
        .or_else(|e| match e.errno {
            libc::EBADF => sys::dir_entries(work.fd.as_fd()),
            _ => Err(e),
        })
        .map_err(|e| Error::os("read work dir", Some(&work.path), e))?;
    if let Some(name) = names
        .iter()
        .find(|name| !OVERLAY_WORK_ENTRIES.iter().any(|n| *name == *n))
    {
        return Err(Error::invalid_path(
            "work dir",
            &work.path,
            format!(
                "is not empty (it holds {name:?}, which overlay did not put there); \
                 give an empty directory on the upper dir's mount"
            ),
        ));
    }
    for (dir, overlays_own) in [
        ("work", overlay_temp_name as fn(&[u8]) -> bool),
        ("index", overlay_index_name),
    ] {
        if names.iter().any(|n| n == dir) {
            check_overlays_own(work, dir, overlays_own)?;
        }
    }
    Ok(names.iter().any(|n| n == "work" || n == "index"))
}

/// Refuses an upper or work dir that another overlay uses now: overlay
/// itself only logs "is in-use … undefined behavior" unless `index=on`,
/// and two overlays writing one upper corrupt each other. Found by
/// filesystem identity, not by name: the upperdir and workdir of every
/// overlay in this mount namespace's table are resolved (without a magic
/// link) to device and inode, and compared with both of ours.
///
/// The table is read only when the pair shows signs of earlier use: the
/// `work/` or `index/` overlay leaves in a work dir, or the
/// `trusted.overlay.uuid` it puts on an upper (6.6+). A fresh pair costs
/// nothing. Not seen: overlays in other mount namespaces, and ones given
/// their upper by fd magic link (as idoverlay does only when an
/// unprivileged user could redirect the real path).
fn check_not_in_use(upper: &OpenedDir, work: &OpenedDir, work_used: bool) -> Result<()> {
    let upper_used = || sys::has_xattr(upper.fd.as_fd(), c"trusted.overlay.uuid").unwrap_or(true);
    if !work_used && !upper_used() {
        return Ok(());
    }
    let Ok(table) = crate::mountinfo::read_self() else {
        return Ok(());
    };
    for entry in table.iter().filter(|m| m.fs_type == "overlay") {
        let (their_upper, their_work) = crate::mountinfo::overlay_upper_work(entry);
        for (theirs, their_role) in [(their_upper, "upper"), (their_work, "work")] {
            let Some(theirs) = theirs.filter(|p| p.is_absolute() && !p.starts_with("/proc")) else {
                continue;
            };
            let Ok(st) =
                sys::open_dir_no_magiclinks(&theirs).and_then(|fd| sys::stat_fd(fd.as_fd()))
            else {
                continue;
            };
            for ours in [upper, work] {
                if st.same_inode(&ours.stat) {
                    return Err(Error::invalid_path(
                        ours.role.noun(),
                        &ours.path,
                        format!(
                            "is in use as the {their_role} dir of the overlay mounted at {}; an \
                             upper and work pair serves one overlay at a time: unmount that one \
                             first, or give this overlay its own",
                            display_path(&entry.mount_point)
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// overlay's temporary names: `#` and lowercase hex (`ovl_tempname`); and
/// the `incompat` dir of a volatile mount.
fn overlay_temp_name(name: &[u8]) -> bool {
    name == b"incompat"
        || name
            .strip_prefix(b"#")
            .is_some_and(|hex| !hex.is_empty() && hex.iter().all(u8::is_ascii_hexdigit))
}

/// overlay's index entries: hex of a file handle; or a temporary name.
fn overlay_index_name(name: &[u8]) -> bool {
    overlay_temp_name(name) || (!name.is_empty() && name.iter().all(u8::is_ascii_hexdigit))
}

/// `dir` inside the work dir is a directory holding only names overlay
/// gives (anything else there it would delete).
fn check_overlays_own(work: &OpenedDir, dir: &str, overlays_own: fn(&[u8]) -> bool) -> Result<()> {
    let refuse = |what: String| {
        Error::invalid_path(
            "work dir",
            &work.path,
            format!(
                "holds {what}, which overlay would delete when it mounts (it empties {dir}/ \
                 of its work dir); give an empty directory on the upper dir's mount"
            ),
        )
    };
    let sub = match sys::open_dir_read(work.fd.as_fd(), Path::new(dir)) {
        Ok(sub) => sub,
        Err(e) if matches!(e.errno, libc::ENOTDIR | libc::ELOOP) => {
            return Err(refuse(format!("a {dir:?} that is not a directory")))
        }
        Err(e) => return Err(Error::os("read work dir", Some(&work.path), e)),
    };
    let names = sys::dir_entries_from(sub.as_fd())
        .map_err(|e| Error::os("read work dir", Some(&work.path), e))?;
    match names.iter().find(|n| !overlays_own(n.as_bytes())) {
        Some(name) => Err(refuse(format!("{dir}/{}", name.to_string_lossy()))),
        None => Ok(()),
    }
}

/// Upper and work reached through one idmapped clone of a directory above
/// both (overlay needs them on one vfsmount), for an idmapped upper.
pub(crate) struct UpperWork {
    /// The clone; keep it open until the overlay is created.
    pub clone: OwnedFd,
    /// The upper dir beneath the clone, checked to be the one opened.
    pub upper: OwnedFd,
    /// The work dir beneath the clone, checked to be the one opened.
    pub work: OwnedFd,
}

pub(crate) fn upper_work_clone(
    upper: &OpenedDir,
    work: &OpenedDir,
    userns: BorrowedFd<'_>,
) -> Result<UpperWork> {
    let refuse = || {
        Error::invalid_path(
            "upper dir",
            &upper.path,
            "and the work dir must sit below one directory on one mount, reachable from it \
             without a symlink, to be idmapped",
        )
    };
    let normal = |p: &Path| -> PathBuf { p.components().collect() };
    let (u, w) = (normal(&upper.path), normal(&work.path));
    let mut parent = PathBuf::from("/");
    for (a, b) in u.components().zip(w.components()) {
        if a != b {
            break;
        }
        parent.push(a.as_os_str());
    }
    let root = sys::open_dir_path_follow(sys::cwd(), &parent)
        .map_err(|e| Error::os("open the parent of upper and work", Some(&parent), e))?;
    let clone = idmapped_clone(
        root.as_fd(),
        false,
        Some(userns),
        MountAttrs::NOSYMFOLLOW,
        &parent,
        "the upper/work parent",
    )?;
    // The names are looked up once more, beneath the clone: each must
    // lead to the very directory opened at first, or nothing is used.
    let beneath = |dir: &OpenedDir, full: &Path| -> Result<OwnedFd> {
        let rel = full.strip_prefix(&parent).map_err(|_| refuse())?;
        if rel.as_os_str().is_empty() {
            return Err(refuse());
        }
        let fd = sys::open_dir_beneath(clone.as_fd(), rel).map_err(|_| refuse())?;
        let st = sys::stat_fd(fd.as_fd()).map_err(|e| Error::os("inspect", Some(&dir.path), e))?;
        if !st.same_inode(&dir.stat) {
            return Err(refuse());
        }
        Ok(fd)
    };
    let upper_fd = beneath(upper, &u)?;
    let work_fd = beneath(work, &w)?;
    Ok(UpperWork {
        clone,
        upper: upper_fd,
        work: work_fd,
    })
}

/// The upper and work dirs as overlay is given them: exactly the
/// directories that were opened and checked, never by a name that could
/// lead elsewhere by the time overlay looks it up (overlay empties `work/`
/// of whatever directory its work dir name leads to). With an idmapped
/// upper, the two beneath their idmapped clone.
pub(crate) struct UpperWorkRefs<'a> {
    upper: &'a OpenedDir,
    work: &'a OpenedDir,
    /// With an idmapped upper: the clone and the two beneath it.
    pub idmapped: Option<UpperWork>,
}

impl<'a> UpperWorkRefs<'a> {
    /// For `upper` and `work` as opened; with `req.idmap_upper`, through a
    /// fresh idmapped clone.
    pub fn new(req: &Request<'_>, upper: &'a OpenedDir, work: &'a OpenedDir) -> Result<Self> {
        let idmapped = match req.idmap_upper {
            true => Some(upper_work_clone(upper, work, req.userns.as_fd())?),
            false => None,
        };
        Ok(UpperWorkRefs {
            upper,
            work,
            idmapped,
        })
    }

    /// The two fds, for `FSCONFIG_SET_FD`.
    pub fn fds(&self) -> (BorrowedFd<'_>, BorrowedFd<'_>) {
        match &self.idmapped {
            Some(pair) => (pair.upper.as_fd(), pair.work.as_fd()),
            None => (self.upper.fd.as_fd(), self.work.fd.as_fd()),
        }
    }

    /// The two names for overlay's string interfaces (see
    /// [`kernel_name`]); through the idmapped clone, its fds' magic links.
    pub fn names(&self) -> (Vec<u8>, Vec<u8>) {
        match &self.idmapped {
            Some(pair) => (fd_link(pair.upper.as_fd()), fd_link(pair.work.as_fd())),
            None => (kernel_name(self.upper), kernel_name(self.work)),
        }
    }

    /// Hands both to `ctx`: by fd where the kernel takes them (6.13+; then
    /// the mount table shows their real paths), else by [`Self::names`].
    pub fn configure(&self, ctx: &OverlayContext, req: &Request<'_>) -> Result<()> {
        if req.caps.observed(kernel_compat::Feature::OverlayFdLayers) {
            let (up, wk) = self.fds();
            // Before 6.15 the fds must not be O_PATH: reopened through
            // themselves (no name is looked up again).
            for (fd, dir) in [(up, self.upper), (wk, self.work)] {
                let readable = sys::open_dir_read(fd, Path::new(".")).map_err(|e| {
                    Error::os(format!("open {}", dir.role.noun()), Some(&dir.path), e)
                })?;
                ctx.set_layer_fd(dir.role, readable.as_fd(), &dir.path)?;
            }
            return Ok(());
        }
        let (up, wk) = self.names();
        for (name, dir) in [(up, self.upper), (wk, self.work)] {
            let value = escape_dir_value(&name, false);
            let value = CString::new(value).map_err(|_| {
                Error::invalid_path(dir.role.noun(), &dir.path, "contains a NUL byte")
            })?;
            ctx.set_string(role_key(dir.role), &value)?;
        }
        Ok(())
    }

    /// `upperdir=…,workdir=…` for mount(2) data, escaped.
    pub fn mount_data(&self) -> Vec<u8> {
        let (up, wk) = self.names();
        let mut data = b"upperdir=".to_vec();
        data.extend_from_slice(&escape_dir_value(&up, true));
        data.extend_from_slice(b",workdir=");
        data.extend_from_slice(&escape_dir_value(&wk, true));
        data
    }
}

/// How overlay's string interfaces name a directory that was opened and
/// checked: its real path when nobody but root can change what that path
/// leads to (then the mount table shows where it really is), else the
/// magic link of its fd, which leads to exactly it.
pub(crate) fn kernel_name(dir: &OpenedDir) -> Vec<u8> {
    let canonical = dir
        .canonical
        .clone()
        .or_else(|| sys::fd_path(dir.fd.as_fd()));
    match canonical {
        Some(path)
            if escape_dir_value(path.as_os_str().as_bytes(), true).len() <= FSCONFIG_VALUE_MAX
                && only_root_can_redirect(&path, &dir.stat) =>
        {
            path.into_os_string().into_vec()
        }
        _ => fd_link(dir.fd.as_fd()),
    }
}

/// Whether nobody but root can change what `canonical` leads to, and it
/// leads to `expected` now: every directory from `/` down is reached
/// without a symlink, owned by root and writable by nobody else — or
/// sticky, and then what follows in it is root's too (in a sticky
/// directory only an entry's owner may rename it).
fn only_root_can_redirect(canonical: &Path, expected: &sys::Stat) -> bool {
    let bytes = canonical.as_os_str().as_bytes();
    if bytes.first() != Some(&b'/') {
        return false;
    }
    // "/", "/a", "/a/b", …, then the path itself.
    let mut prefixes: Vec<&[u8]> = vec![b"/"];
    prefixes.extend(
        (1..bytes.len())
            .filter(|&i| bytes[i] == b'/')
            .map(|i| &bytes[..i]),
    );
    if bytes.len() > 1 {
        prefixes.push(bytes);
    }
    let mut in_open_sticky_dir = false;
    for (k, prefix) in prefixes.iter().enumerate() {
        let Ok(st) = sys::stat_nofollow(sys::cwd(), Path::new(OsStr::from_bytes(prefix))) else {
            return false;
        };
        if !st.is_dir() || (in_open_sticky_dir && st.uid != 0) {
            return false;
        }
        if k == prefixes.len() - 1 {
            return st.same_inode(expected);
        }
        let open = st.mode & 0o022 != 0;
        if st.uid != 0 || (open && st.mode & 0o1000 == 0) {
            return false;
        }
        in_open_sticky_dir = open;
    }
    false
}
