//! The upper and work dirs: checked (one mount, a work dir holding
//! nothing overlay would delete, not in use by another overlay), and handed
//! to overlay as the very directories checked.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::Request;
use crate::error::{display_path, Error, Result};
use crate::layer::OpenedDir;
use crate::overlayfs::{escape_dir_value, fd_link, idmapped_clone, role_key, OverlayContext};
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
    super::in_use::check_not_in_use(upper, work, work_used)
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

/// `dir` inside the work dir holds only what overlay itself leaves there,
/// so nothing overlay deletes when it mounts is anyone's data: names
/// overlay gives (`overlays_own`); a directory among them holding nothing
/// but whiteouts (what a crash leaves of a directory overlay was removing);
/// no mount point anywhere. overlay looks these names up without crossing
/// a mount, so a mount on `work/` or on an entry would show this check an
/// empty directory while overlay empties the one beneath it.
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
    // An entry gone between its listing and its look-up: overlay's own
    // temporary names come and go while an overlay uses the work dir.
    let failed = |e: sys::SysError, shown: &str| match e.errno {
        libc::ENOENT => Error::invalid_path(
            "work dir",
            &work.path,
            format!(
                "changed while it was checked ({shown} went away): an overlay is using it; an \
                 upper and work pair serves one overlay at a time: unmount that one first, or \
                 give this overlay its own"
            ),
        ),
        _ => Error::os("read work dir", Some(&work.path), e),
    };
    // Opened without crossing a mount, as overlay looks it up.
    let open = |parent: BorrowedFd<'_>, name: &Path, shown: &str| match sys::open_dir_beneath(
        parent, name,
    ) {
        Ok(fd) => Ok(fd),
        Err(e) if e.errno == libc::EXDEV => Err(refuse(format!(
            "{shown}, a mount point (overlay would empty the directory beneath the mount)"
        ))),
        Err(e) if matches!(e.errno, libc::ENOTDIR | libc::ELOOP) => Err(refuse(format!(
            "{} {shown:?} that is not a directory",
            crate::error::a_or_an(shown)
        ))),
        Err(e) => Err(failed(e, shown)),
    };
    let sub = open(work.fd.as_fd(), Path::new(dir), dir)?;
    let sub_st = sys::stat_fd(sub.as_fd()).map_err(|e| failed(e, dir))?;
    let on_other_mount = |st: &sys::Stat| {
        st.mount_root == Some(true) || st.mnt_id != sub_st.mnt_id || st.dev != sub_st.dev
    };
    for name in sys::dir_entries(sub.as_fd()).map_err(|e| failed(e, dir))? {
        let shown = format!("{dir}/{}", name.to_string_lossy());
        if !overlays_own(name.as_bytes()) {
            return Err(refuse(shown));
        }
        let st =
            sys::stat_nofollow(sub.as_fd(), Path::new(&name)).map_err(|e| failed(e, &shown))?;
        if on_other_mount(&st) {
            return Err(refuse(format!(
                "{shown}, a mount point (overlay would empty what is beneath the mount)"
            )));
        }
        if !st.is_dir() {
            continue;
        }
        let inner = open(sub.as_fd(), Path::new(&name), &shown)?;
        for entry in sys::dir_entries(inner.as_fd()).map_err(|e| failed(e, &shown))? {
            let est = sys::stat_nofollow(inner.as_fd(), Path::new(&entry))
                .map_err(|e| failed(e, &format!("{shown}/{}", entry.to_string_lossy())))?;
            if !est.is_whiteout() || on_other_mount(&est) {
                return Err(refuse(format!("{shown}/{}", entry.to_string_lossy())));
            }
        }
    }
    Ok(())
}

/// Upper and work reached through one clone of a directory above both
/// (overlay needs them on one vfsmount): idmapped for an idmapped upper, or
/// plain, to stage them in another mount namespace.
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
    userns: Option<BorrowedFd<'_>>,
) -> Result<UpperWork> {
    let refuse = || {
        Error::invalid_path(
            "upper dir",
            &upper.path,
            "and the work dir must sit below one directory on one mount, reachable from it \
             without a symlink, to be idmapped or staged",
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
    // Opened by name after them, it may be on another mount of the same
    // directories by now (a bind, idmapped or read-only): the inodes
    // beneath would match, and overlay would write through that mount.
    let root_st = sys::stat_fd(root.as_fd())
        .map_err(|e| Error::os("inspect the parent of upper and work", Some(&parent), e))?;
    if root_st.mnt_id != upper.stat.mnt_id || root_st.dev != upper.stat.dev {
        return Err(Error::invalid_path(
            "upper dir",
            &upper.path,
            format!(
                "changed while it was opened: its parent {} now leads to another mount; \
                 check who can rename entries on that path, and try again",
                display_path(&parent)
            ),
        ));
    }
    let clone = idmapped_clone(
        root.as_fd(),
        false,
        userns,
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
/// of whatever directory its work dir name leads to). Through their clone
/// when there is one (an idmapped upper, or staging in another namespace).
pub(crate) struct UpperWorkRefs<'a> {
    upper: &'a OpenedDir,
    work: &'a OpenedDir,
    /// The clone and the two beneath it, when they go through one.
    pub cloned: Option<UpperWork>,
}

impl<'a> UpperWorkRefs<'a> {
    /// For `upper` and `work` as opened, or through `cloned`.
    pub fn new(upper: &'a OpenedDir, work: &'a OpenedDir, cloned: Option<UpperWork>) -> Self {
        UpperWorkRefs {
            upper,
            work,
            cloned,
        }
    }

    /// The two fds, for `FSCONFIG_SET_FD`.
    pub fn fds(&self) -> (BorrowedFd<'_>, BorrowedFd<'_>) {
        match &self.cloned {
            Some(pair) => (pair.upper.as_fd(), pair.work.as_fd()),
            None => (self.upper.fd.as_fd(), self.work.fd.as_fd()),
        }
    }

    /// The two names for overlay's string interfaces (see
    /// [`upper_work_names`]).
    pub fn names(&self) -> (Vec<u8>, Vec<u8>) {
        upper_work_names(self.upper, self.work, self.cloned.as_ref())
    }

    /// Hands both to `ctx`: by fd where the kernel takes them (6.13+; then
    /// the mount table shows their real paths), else by [`Self::names`].
    pub fn configure(&self, ctx: &OverlayContext, req: &Request<'_>) -> Result<()> {
        if req.caps.observed(kernel_compat::Feature::OverlayFdLayers) {
            let (up, wk) = self.fds();
            // Before 6.15 (detached layers) the fds must not be O_PATH:
            // reopened through themselves (no name is looked up again).
            let o_path_ok = req
                .caps
                .observed(kernel_compat::Feature::OverlayDetachedLayers);
            for (fd, dir) in [(up, self.upper), (wk, self.work)] {
                if o_path_ok {
                    ctx.set_layer_fd(dir.role, fd, &dir.path)?;
                    continue;
                }
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
        upper_work_mount_data(self.names())
    }
}

/// How overlay's string interfaces name the upper and work dirs: the magic
/// links of the very fds opened and checked (with an idmapped upper, of the
/// two beneath their clone). Never a real path: even one that only root
/// can change is looked up again by the kernel, and a path through an
/// idmapped mount, a rename by root's own tooling, or another mount
/// namespace's view can lead elsewhere by then — and overlay empties
/// `work/` of whatever directory its work dir name leads to.
pub(crate) fn upper_work_names(
    upper: &OpenedDir,
    work: &OpenedDir,
    idmapped: Option<&UpperWork>,
) -> (Vec<u8>, Vec<u8>) {
    match idmapped {
        Some(pair) => (fd_link(pair.upper.as_fd()), fd_link(pair.work.as_fd())),
        None => (fd_link(upper.fd.as_fd()), fd_link(work.fd.as_fd())),
    }
}

/// `upperdir=…,workdir=…` for mount(2) data, escaped.
pub(crate) fn upper_work_mount_data((upper, work): (Vec<u8>, Vec<u8>)) -> Vec<u8> {
    let mut data = b"upperdir=".to_vec();
    data.extend_from_slice(&escape_dir_value(&upper, true));
    data.extend_from_slice(b",workdir=");
    data.extend_from_slice(&escape_dir_value(&work, true));
    data
}
