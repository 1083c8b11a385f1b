//! The ways an idmapped overlay can be assembled, and what they share.
//!
//! Every strategy turns the same [`Request`] into a detached overlay mount
//! fd; none of them attaches anything to the caller's mount tree except
//! `host-staged`, the last resort, which keeps its temporary mounts in a
//! root-only private directory and never removes anything still mounted.

use std::ffi::{CString, OsStr};
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{display_path, Error, Result};
use crate::layer::{self, OpenedDir, Role};
use crate::options::OverlayParam;
use crate::sys::{self, MountAttrs};
use crate::userns::UserNamespace;

pub(crate) mod detached;
pub(crate) mod host_staged;
pub(crate) mod private_ns;
pub(crate) mod staged;

/// How to assemble the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Strategy {
    /// The best the running kernel can do, from a live probe: `detached`,
    /// then `private-ns`, then `host-staged`.
    #[default]
    Auto,
    /// Detached idmapped clones passed to overlay as fds (kernel 6.15+).
    /// Nothing temporary ever enters a mount tree.
    Detached,
    /// Idmapped clones attached in a private mount namespace of a
    /// short-lived thread (kernel 5.19+).
    PrivateNs,
    /// Idmapped clones attached in a root-only staging directory of the
    /// host, detached and removed right after (kernel 5.19+; last resort).
    HostStaged,
}

impl Strategy {
    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Auto => "auto",
            Strategy::Detached => "detached",
            Strategy::PrivateNs => "private-ns",
            Strategy::HostStaged => "host-staged",
        }
    }

    /// All strategies, `auto` first.
    pub const ALL: [Strategy; 4] = [
        Strategy::Auto,
        Strategy::Detached,
        Strategy::PrivateNs,
        Strategy::HostStaged,
    ];
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Strategy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Strategy::ALL
            .into_iter()
            .find(|st| st.name() == s)
            .ok_or_else(|| {
                Error::invalid(
                    "strategy",
                    s,
                    "is not one of auto, detached, private-ns, host-staged",
                )
            })
    }
}

/// fsconfig takes at most 255 bytes per string value.
pub(crate) const FSCONFIG_VALUE_MAX: usize = 255;
/// mount(2) copies one page of options and silently cuts the rest.
pub(crate) const MOUNT_DATA_MAX: usize = 4095;

/// Receives one line per step when the caller asked for a trace (`-v`).
pub type Trace = Arc<dyn Fn(&str) + Send + Sync>;

/// Everything a strategy needs, validated for shape but not yet opened.
pub(crate) struct Request<'a> {
    pub lowers: &'a [PathBuf],
    pub data_lowers: &'a [PathBuf],
    pub upper: Option<&'a Path>,
    pub work: Option<&'a Path>,
    pub idmap_upper: bool,
    /// One clone per layer, no shared-parent groups.
    pub per_layer_clones: bool,
    pub params: &'a [OverlayParam],
    pub attrs: MountAttrs,
    pub userns: &'a UserNamespace,
    pub trace: Option<&'a Trace>,
    /// What the kernel can do (from the probe, with pretended gaps).
    pub caps: &'a crate::probe::ProbeReport,
    /// Where the overlay will be mounted, when the caller said
    /// ([`crate::Overlay::mount`]): checked against the layers, upper and work.
    pub target: Option<&'a OpenedDir>,
}

impl Request<'_> {
    pub fn trace(&self, line: impl FnOnce() -> String) {
        if let Some(trace) = self.trace {
            trace(&line());
        }
    }
}

/// The request's layers planned, and its upper and work opened and checked.
pub(crate) struct Prepared<'a> {
    pub plan: layer::Plan<'a>,
    /// Per layer planned on its own, the layer opened (`None` for shared);
    /// empty when every layer is shared (see [`Prepared::single`]).
    pub singles: Vec<Option<OpenedDir>>,
    pub upper: Option<OpenedDir>,
    pub work: Option<OpenedDir>,
}

impl Prepared<'_> {
    /// Layer `i` opened on its own, when it was planned so.
    pub fn single(&self, i: usize) -> Option<&OpenedDir> {
        self.singles.get(i).and_then(Option::as_ref)
    }
}

/// How `prepare` groups layers (see [`layer::Grouping`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Share {
    /// Every layer on its own.
    No,
    /// Under their common directory, cloned recursively (the fast path).
    Lexical,
    /// By mount, from the mount table.
    ByMount,
}

/// Plans the layers, opens the layers planned on their own and the upper
/// and work dirs, and refuses overlaps.
pub(crate) fn prepare<'a>(
    req: &Request<'a>,
    share: Share,
    shareable: impl Fn(&Path) -> bool,
) -> Result<Prepared<'a>> {
    let layers = layer::Layers::new(req.lowers, req.data_lowers);
    let share = if req.per_layer_clones {
        Share::No
    } else {
        share
    };
    let mut table = match share {
        Share::ByMount => crate::mountinfo::read_self().ok(),
        Share::No | Share::Lexical => None,
    };
    let grouping = match (share, &table) {
        (Share::Lexical, _) => layer::Grouping::Lexical,
        (Share::ByMount, Some(t)) => layer::Grouping::ByMount(t),
        _ => layer::Grouping::None,
    };
    let plan = layer::plan(layers, shareable, grouping)?;
    // Most stacks share one root: then no per-layer slots at all (500 of
    // them would be 40 KiB to fill and walk on every mount).
    let mut singles = Vec::new();
    if plan.placement.contains(&layer::Placement::Single) {
        singles.reserve_exact(plan.layers.len());
        for ((path, role), placement) in plan.layers.iter().zip(&plan.placement) {
            singles.push(match placement {
                layer::Placement::Single => Some(layer::open_dir(path, role)?),
                layer::Placement::Shared { .. } => None,
            });
        }
    }
    let upper = req
        .upper
        .map(|p| layer::open_dir(p, Role::Upper))
        .transpose()?;
    let work = req
        .work
        .map(|p| layer::open_dir(p, Role::Work))
        .transpose()?;
    if let (Some(upper), Some(work)) = (&upper, &work) {
        check_upper_work(upper, work)?;
    }
    check_overlaps(
        &plan,
        &singles,
        upper.as_ref(),
        work.as_ref(),
        req.target,
        &mut table,
    )?;
    req.trace(|| {
        let shared = plan
            .placement
            .iter()
            .filter(|p| matches!(p, layer::Placement::Shared { .. }))
            .count();
        format!(
            "planned {} layer(s): {shared} beneath {} shared clone(s), {} on their own{}",
            plan.layers.len(),
            plan.groups.len(),
            plan.layers.len() - shared,
            if upper.is_some() {
                "; upper and work opened"
            } else {
                ""
            }
        )
    });
    Ok(Prepared {
        plan,
        singles,
        upper,
        work,
    })
}

/// Locates every directory on its filesystem and refuses overlaps (see
/// [`layer::check_overlaps`]). Directories on different devices cannot
/// overlap, and on one mount their canonical paths say it all; only two
/// mounts of one device (bind mounts) need the mount table, read then.
/// Directories that cannot be located (no /proc) are left to the kernel.
fn check_overlaps(
    plan: &layer::Plan<'_>,
    singles: &[Option<OpenedDir>],
    upper: Option<&OpenedDir>,
    work: Option<&OpenedDir>,
    target: Option<&OpenedDir>,
    table: &mut Option<Vec<crate::mountinfo::MountEntry>>,
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
    let single_paths: Vec<Option<PathBuf>> = singles
        .iter()
        .map(|d| d.as_ref().and_then(canonical_path))
        .collect();
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
    let aliased = stats
        .iter()
        .any(|a| stats.iter().any(|b| a.dev == b.dev && a.mnt_id != b.mnt_id));
    if aliased && table.is_none() {
        *table = crate::mountinfo::read_self().ok();
    }
    let table = table.as_deref();
    let locate = |canonical: &Path, st: &sys::Stat| -> Option<layer::FsLocation> {
        match (aliased, table) {
            (true, Some(t)) => layer::FsLocation::of(canonical, t),
            (true, None) => None,
            (false, _) => Some(layer::FsLocation::on_device(st.dev, canonical)),
        }
    };
    let mut writable = [None, None, None];
    for (slot, (d, c)) in writable.iter_mut().zip([
        (upper, &upper_path),
        (work, &work_path),
        (target, &target_path),
    ]) {
        if let (Some(d), Some(c)) = (d, c) {
            *slot = locate(c, &d.stat).map(|at| layer::Located {
                path: &d.path,
                role: d.role,
                number: 0,
                at,
            });
        }
    }
    let [u, w, t] = writable;
    let mut groups: Vec<Option<layer::LocatedGroup<'_>>> = roots
        .iter()
        .map(|r| {
            let (canonical, st) = r.as_ref()?;
            Some(layer::LocatedGroup {
                root: locate(canonical, st)?,
                members: Vec::new(),
            })
        })
        .collect();
    // Layers beneath one root were checked against each other by the plan
    // (by name); a group's members are listed only when something else
    // meets its root: the upper or work dir, a layer on its own, another
    // root. Usually nothing does, and 500 layers are not walked again.
    let meets = |g: &layer::LocatedGroup<'_>| {
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
            match plan.rel(i) {
                Some((group, rel)) => {
                    if let (Some(g), true) = (&mut groups[group], needed[group]) {
                        g.members
                            .push((i + 1, path, role, rel.as_os_str().as_bytes()));
                    }
                }
                None => {
                    let at = match (singles.get(i).and_then(Option::as_ref), &single_paths[i]) {
                        (Some(d), Some(c)) => locate(c, &d.stat),
                        _ => None,
                    };
                    if let Some(at) = at {
                        singles_located.push(layer::Located {
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
    let mut groups: Vec<layer::LocatedGroup<'_>> = groups.into_iter().flatten().collect();
    layer::check_overlaps(
        &mut groups,
        &singles_located,
        u.as_ref(),
        w.as_ref(),
        t.as_ref(),
    )
}

/// Where an opened directory really is: known from its open, or asked of
/// the kernel.
fn canonical_path(d: &OpenedDir) -> Option<PathBuf> {
    d.canonical.clone().or_else(|| sys::fd_path(d.fd.as_fd()))
}

/// After the kernel refused a layer reached beneath a shared clone: the
/// layer's own one-line explanation when it is not a usable directory
/// (missing, a file, a symlink…), or the opened layer, to be reached on its
/// own instead (e.g. a symlink on the way, which shared clones never follow).
pub(crate) fn retry_on_its_own(path: &Path, role: Role) -> Result<OpenedDir> {
    layer::open_dir(path, role)
}

fn check_upper_work(upper: &OpenedDir, work: &OpenedDir) -> Result<()> {
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

/// An overlay being configured through `fsopen`/`fsconfig`. Errors carry
/// the kernel's own messages from the fd.
pub(crate) struct OverlayContext {
    fd: OwnedFd,
}

impl OverlayContext {
    /// `fsopen("overlay")` and the pass-through parameters.
    pub fn new(req: &Request<'_>) -> Result<Self> {
        let fd = sys::fsopen(c"overlay").map_err(|e| {
            let hint = match e.errno {
                libc::ENODEV => {
                    "the overlay filesystem is not available: load it with `modprobe overlay`"
                }
                libc::ENOSYS => "this kernel has no fsopen (new mount API, Linux 5.2)",
                libc::EPERM => "mounting needs CAP_SYS_ADMIN",
                _ => "the kernel refused to open an overlay context",
            };
            Error::os("open an overlay context", None, e).with_hint(hint)
        })?;
        let ctx = OverlayContext { fd };
        ctx.set_string(c"source", c"overlay")?;
        for param in req.params {
            ctx.set_param(param)?;
        }
        Ok(ctx)
    }

    fn kernel_error(&self, op: String, path: Option<&Path>, e: sys::SysError) -> Error {
        let messages = sys::fs_messages(self.fd.as_fd());
        Error::os(op, path, e).with_kernel_messages(messages)
    }

    fn set_param(&self, param: &OverlayParam) -> Result<()> {
        let key = CString::new(param.key.as_str())
            .map_err(|_| Error::invalid("option", &param.key, "contains a NUL byte"))?;
        let result = match &param.value {
            Some(value) => {
                let value = CString::new(value.as_str())
                    .map_err(|_| Error::invalid("option", value, "contains a NUL byte"))?;
                sys::fsconfig_set_string(self.fd.as_fd(), &key, &value)
            }
            None => sys::fsconfig_set_flag(self.fd.as_fd(), &key),
        };
        result.map_err(|e| {
            let shown = match &param.value {
                Some(v) => format!("{}={}", param.key, v),
                None => param.key.clone(),
            };
            let messages = sys::fs_messages(self.fd.as_fd());
            Error::from(crate::error::Repr::InvalidInput {
                what: "option".into(),
                input: shown,
                reason: if messages.is_empty() {
                    format!("the kernel refused it ({e})")
                } else {
                    format!("the kernel refused it: {}", messages.join("; "))
                },
                path: None,
                source: Some(e),
            })
        })
    }

    pub fn set_string(&self, key: &std::ffi::CStr, value: &std::ffi::CStr) -> Result<()> {
        sys::fsconfig_set_string(self.fd.as_fd(), key, value).map_err(|e| {
            self.kernel_error(
                format!("set overlay parameter {}", key.to_string_lossy()),
                None,
                e,
            )
        })
    }

    /// `FSCONFIG_SET_FD` of a layer, named by `path` in errors.
    pub fn set_layer_fd(&self, role: Role, fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
        let key = role_key(role);
        sys::fsconfig_set_fd(self.fd.as_fd(), key, fd).map_err(|e| {
            self.kernel_error(
                format!("add {} (fsconfig {})", role.noun(), key.to_string_lossy()),
                Some(path),
                e,
            )
        })
    }

    /// `FSCONFIG_CMD_CREATE`, then `fsmount`: the detached overlay.
    pub fn create_and_mount(self, attrs: MountAttrs, expect_writable: bool) -> Result<OwnedFd> {
        if attrs.contains(MountAttrs::READ_ONLY) {
            self.set_flag(c"ro")?;
        }
        sys::fsconfig_create(self.fd.as_fd()).map_err(|e| {
            let hint = match e.errno {
                libc::ELOOP => {
                    "a layer lies inside another layer (or upper/work inside a layer); \
                     overlay needs separate directory trees"
                }
                libc::EBUSY => {
                    "a layer, upper or work dir is in use by another overlay \
                     (an upper/work pair serves one mount at a time)"
                }
                _ => "the kernel log (dmesg) may say more",
            };
            self.kernel_error("create the overlay".into(), None, e)
                .with_hint(hint)
        })?;
        let mount = sys::fsmount(self.fd.as_fd(), attrs)
            .map_err(|e| self.kernel_error("mount the overlay".into(), None, e))?;
        if expect_writable && !attrs.contains(MountAttrs::READ_ONLY) {
            check_writable(&mount)?;
        }
        Ok(mount)
    }

    fn set_flag(&self, key: &std::ffi::CStr) -> Result<()> {
        sys::fsconfig_set_flag(self.fd.as_fd(), key).map_err(|e| {
            self.kernel_error(
                format!("set overlay flag {}", key.to_string_lossy()),
                None,
                e,
            )
        })
    }
}

/// overlay silently falls back to a read-only superblock when it cannot
/// write its work dir (e.g. an idmapped upper that does not map the
/// mounter); a writable overlay was asked for, so say so now.
pub(crate) fn check_writable(mount: &OwnedFd) -> Result<()> {
    let read_only = sys::mount_is_read_only(mount.as_fd())
        .map_err(|e| Error::os("inspect the new overlay", None, e))?;
    if read_only {
        return Err(Error::invalid(
            "upper dir",
            "(upper and work)",
            "overlay could not write its work dir and would have mounted read-only \
             (dmesg says why; with an idmapped upper the map must cover the upper dir's owners)",
        ));
    }
    Ok(())
}

/// The `fsconfig` key for a layer role.
pub(crate) fn role_key(role: Role) -> &'static std::ffi::CStr {
    match role {
        Role::Lower => c"lowerdir+",
        Role::Data => c"datadir+",
        Role::Upper => c"upperdir",
        Role::Work => c"workdir",
        // The target is only ever checked against the others, never handed
        // to overlay as a directory of the overlay.
        Role::Target => unreachable!("the target is not an overlay parameter"),
    }
}

/// Explains a failed idmap of a layer clone.
pub(crate) fn idmap_error(path: &Path, what: &str, on: BorrowedFd<'_>, e: sys::SysError) -> Error {
    let fs = crate::fs_type::of_fd(on);
    let hint = match e.errno {
        libc::EINVAL => format!(
            "filesystem {fs} does not take idmapped mounts on this kernel \
             (ext4, xfs, btrfs and tmpfs 6.3+ do; proc, sysfs and ramfs never)"
        ),
        libc::EPERM if !crate::userns::in_initial_user_namespace() => format!(
            "this process runs in a user namespace, which may idmap only filesystems it \
             mounted itself; {fs} here belongs to another (the host's): run idoverlay on the host"
        ),
        libc::EPERM => "idmapping needs CAP_SYS_ADMIN and a user namespace other than the \
                        caller's own; an already idmapped mount cannot be idmapped again"
            .to_string(),
        libc::ENOSYS => "this kernel has no mount_setattr (Linux 5.12)".to_string(),
        _ => format!("filesystem {fs} refused the idmap"),
    };
    Error::os(format!("idmap {what}"), Some(path), e).with_hint(hint)
}

/// CREATE and `fsmount`.
pub(crate) fn create(ctx: OverlayContext, req: &Request<'_>, has_upper: bool) -> Result<OwnedFd> {
    let attrs = req.attrs;
    let mount = as_creator(req, has_upper, move || {
        ctx.create_and_mount(attrs, has_upper)
    })?;
    req.trace(|| "fsconfig(FSCONFIG_CMD_CREATE) + fsmount: ok".to_string());
    Ok(mount)
}

/// Runs `make` (the call that creates the overlay's superblock) with the
/// right credentials. overlay records its creator's credentials and does
/// all later upper-layer work with them; with an idmapped upper those must
/// map through the upper's idmap, so `make` then runs on a short-lived
/// thread whose fsuid/fsgid are the host ids of on-disk root. Credentials
/// are per thread: the caller's stay untouched. That thread shares the
/// caller's mount namespace and working directory.
pub(crate) fn as_creator<T: Send>(
    req: &Request<'_>,
    has_upper: bool,
    make: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    if !(has_upper && req.idmap_upper) {
        return make();
    }
    let (uid, gid) = mounter_ids(req.userns)?;
    crate::threads::run_on_thread("creator", move || {
        crate::creds::assume_fs_ids(uid, gid)
            .map_err(|e| Error::os("switch to the upper layer's owner", None, e))?;
        make()
    })
}

/// The host ids of on-disk root in a namespace made from maps.
pub(crate) fn mounter_ids(userns: &UserNamespace) -> Result<(u32, u32)> {
    let uid = userns.uid_map().and_then(|m| m.to_host(0));
    let gid = userns.gid_map().and_then(|m| m.to_host(0));
    match (uid, gid) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => Err(Error::invalid(
            "upper idmap",
            userns.describe(),
            "needs uid and gid maps that map on-disk id 0: overlay writes the upper layer as its \
             creator, whose ids must map through the upper's idmap",
        )
        .with_advice(crate::Advice::GiveMapsOfRoot)),
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
    let clone = sys::clone_mount(root.as_fd(), Path::new(""))
        .map_err(|e| Error::os("clone upper/work parent", Some(&parent), e))?;
    let attrs = MountAttrs::NOSYMFOLLOW;
    sys::mount_setattr(clone.as_fd(), Some(userns), attrs)
        .map_err(|e| idmap_error(&parent, "upper/work parent", root.as_fd(), e))?;
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

/// `/proc/thread-self/fd/N`: the magic link that leads to exactly the
/// file `fd` is open on (the calling thread's fd table is the process's).
pub(crate) fn fd_link(fd: BorrowedFd<'_>) -> Vec<u8> {
    format!("/proc/thread-self/fd/{}", fd.as_raw_fd()).into_bytes()
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

/// overlay's escaping for an `upperdir=`/`workdir=` value: it unescapes
/// `\x` to `x` on every kernel, and mount(2) data is split at unescaped
/// commas first. Byte-exact: names need not be UTF-8.
pub(crate) fn escape_dir_value(value: &[u8], in_mount_data: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 4);
    for &b in value {
        if b == b'\\' || (in_mount_data && b == b',') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}
